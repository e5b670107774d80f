"""Divergence-Aware Sampling: sentence segmentation, token alignment, scoring and selection (spec §5)."""
