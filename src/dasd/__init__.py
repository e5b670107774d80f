"""dasd: Distribution-Aligned Sequence Distillation."""

__version__ = "0.1.0"
