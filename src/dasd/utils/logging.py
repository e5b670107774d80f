"""One rank-zero-aware logger for the whole package."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_only


def _lightning_lines_once() -> None:
    """Lightning gives its package logger a console handler (stderr) of its own when imported, and its
    subpackages propagate to it; when logging was configured before (Hydra's handlers: the entry points import
    Lightning inside the job, after a fast config check), they propagate on to the root logger's handlers too,
    and every Lightning line would print twice. Its own handler is enough, as when Lightning came first."""
    if logging.getLogger().handlers:
        logging.getLogger("lightning").propagate = False


_lightning_lines_once()


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0


def get_logger(name: str) -> logging.Logger:
    """A logger that only emits on global rank 0 (Hydra configures handlers and files)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
