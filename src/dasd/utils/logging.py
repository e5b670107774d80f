"""One rank-zero-aware logger for the whole package."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_only


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0


def get_logger(name: str) -> logging.Logger:
    """A logger that only emits on global rank 0 (Hydra configures handlers and files)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
