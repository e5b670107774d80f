"""The non-finite guard: a NaN/inf loss or gradient norm never trains on, and non-finite weights are never saved.

* ``train.nonfinite=stop`` (default): the step whose loss or gradient norm is not finite stops the run before
  its optimizer update (``NonFiniteError``); ``train`` marks the manifest ``failed`` with the step and reason.
* ``train.nonfinite=skip``: that step's gradients are dropped, so the optimizer leaves the weights (and its
  moments) as they were; the step still counts (the LR schedule moves on) and is logged with
  ``train/skipped_steps``. More than ``train.max_skipped_steps`` skipped steps stop the run as above.
* Every Lightning checkpoint and HF export first checks that the weights are finite (``require_finite_weights``),
  so checkpoint rotation never replaces the last finite checkpoint with a non-finite one.

Under DeepSpeed the engine owns (and partitions) the gradients and steps inside ``engine.step``: the guard sees
the loss only, so ``skip`` is refused there; a non-finite gradient with a finite loss shows up as non-finite
weights, which the checkpoint and export checks refuse.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from dasd.utils.logging import get_logger

log = get_logger(__name__)

MODES = ("stop", "skip")
_CHUNK = 1 << 24  # elements per isfinite pass: bounded extra memory for a large embedding matrix


class NonFiniteError(RuntimeError):
    """Training met a non-finite loss, gradient norm or weights at optimizer step ``step`` (counted from 1)."""

    def __init__(self, step: int, reason: str) -> None:
        self.step, self.reason = step, reason
        super().__init__(f"{reason} at optimizer step {step}")


class TrainingFailed(RuntimeError):
    """The run stopped at a non-finite step and its manifest says ``failed``. ``train.py`` prints its one-line
    message and exits with status 1 (``exit_on_failure``); in a sweep the job fails and the sweep goes on."""

    def __init__(self, error: NonFiniteError, last_checkpoint: str | None, manifest: str | Path) -> None:
        self.step, self.reason, self.last_checkpoint = error.step, error.reason, last_checkpoint
        kept = f"the last finite checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved"
        super().__init__(f"error: training failed at optimizer step {error.step}: {error.reason}. Nothing "
                         f"non-finite was saved; {kept} (manifest {manifest}: failed). Lower optim.lr or check the "
                         "data; train.nonfinite=skip skips such steps (at most train.max_skipped_steps).")


@dataclass(frozen=True)
class NonFiniteConfig:
    """``train.nonfinite`` (stop | skip) and ``train.max_skipped_steps`` (skip mode's limit per run)."""

    mode: str = "stop"
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"train.nonfinite={self.mode!r}: expected one of {', '.join(MODES)}")
        if isinstance(self.max_skipped_steps, bool) or not isinstance(self.max_skipped_steps, int) \
                or self.max_skipped_steps < 0:
            raise ValueError(f"train.max_skipped_steps={self.max_skipped_steps!r}: expected an integer >= 0")


def nonfinite_reason(loss: float, grad_norm: float | None) -> str | None:
    """What is not finite in a step's (rank-reduced) loss and gradient norm; None when both are finite."""
    bad = [f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm))
           if value is not None and not math.isfinite(value)]
    return f"non-finite {' and '.join(bad)}" if bad else None


@dataclass
class NonFiniteGuard:
    """Decides each optimizer step: go on, skip the update, or stop. ``skipped`` lists the skipped steps
    (kept in Lightning checkpoints, so the limit holds across a resume)."""

    config: NonFiniteConfig = field(default_factory=NonFiniteConfig)
    skipped: list[dict] = field(default_factory=list)

    def check(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """True: skip this step's update. Raises ``NonFiniteError`` to stop."""
        reason = nonfinite_reason(loss, grad_norm)
        if reason is None:
            return False
        if self.config.mode == "stop":
            raise NonFiniteError(step, reason)
        self.skipped.append({"step": step, "reason": reason})
        if len(self.skipped) > self.config.max_skipped_steps:
            raise NonFiniteError(step, f"{reason} ({len(self.skipped)} non-finite steps, more than "
                                       f"train.max_skipped_steps={self.config.max_skipped_steps})")
        log.warning("optimizer step %d: %s; skipping its update (%d of at most %d skipped)", step, reason,
                    len(self.skipped), self.config.max_skipped_steps)
        return True


def _finite(t: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: every element of ``t`` is finite (in chunks, not one full-size mask)."""
    flat = t.detach().reshape(-1)
    ok = torch.ones((), dtype=torch.bool, device=t.device)
    for chunk in flat.split(_CHUNK):
        ok &= torch.isfinite(chunk).all()
    return ok


def weights_finite(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether every weight of ``module`` is finite on every rank (a collective: all ranks must call it).
    Under ZeRO-3 each rank checks its own partition (``ds_tensor``)."""
    bad = torch.zeros((), device=module.device)
    for p in module.parameters():
        t = getattr(p, "ds_tensor", p)
        if t.numel():
            bad += (~_finite(t)).to(bad.device, torch.float32)
    return float(trainer.strategy.reduce(bad, reduce_op="sum")) == 0.0


def require_finite_weights(trainer: L.Trainer, module: L.LightningModule, what: str, step: int) -> None:
    """Raise ``NonFiniteError`` (nothing written) unless the weights are finite; ``what``: what was to be saved."""
    if not weights_finite(trainer, module):
        raise NonFiniteError(step, f"non-finite weights ({what} not written)")


@contextlib.contextmanager
def exit_on_failure(multirun: bool) -> Iterator[None]:
    """A single run that failed prints ``TrainingFailed``'s one line and exits 1, with no traceback. A sweep
    job re-raises it: Hydra marks that job failed, runs the others and reports the failure at the end (an
    exit here would end the whole sweep at its first diverging job)."""
    try:
        yield
    except TrainingFailed as e:
        if multirun:
            raise
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
