"""Counting optimizer steps under every Lightning strategy (a step of the data sampler, of checkpoints, of
evaluation and of mixed-policy revision is an optimizer step)."""

from __future__ import annotations

from typing import Any


def micro_batches_per_step(trainer: Any) -> int:
    """Micro-batches per count of ``trainer.global_step``. Lightning counts optimizer steps, except under a
    strategy that accumulates gradients itself (DeepSpeed): it then calls the optimizer step, and counts a
    global step, for every micro-batch, and the engine steps every ``accumulate`` of them."""
    return trainer.accumulate_grad_batches if trainer.strategy.handles_gradient_accumulation else 1


def optimizer_steps(trainer: Any) -> int:
    """Optimizer steps taken so far, under every strategy (``global_step`` counts micro-batches under
    DeepSpeed; dasd's sampler gives every step exactly ``accumulate`` of them there)."""
    return trainer.global_step // micro_batches_per_step(trainer)
