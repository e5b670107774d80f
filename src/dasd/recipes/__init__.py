"""The composition layer: each recipe reads the whole Hydra config of an entry point and builds the library's
objects from it (``sft``: ``train.py``; ``mixed_stage``: ``stage=mixed``'s round 0; ``generate``, ``evaluate``,
``world``: ``build_world.py``; ``ablation``: ``ablate.py``; ``report``: ``report.py``). Nothing below this
layer reads a whole config (docs/architecture.md)."""
