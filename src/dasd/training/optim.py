"""AdamW with decoupled weight decay (norms and biases exempt) and cosine-with-min-lr warmup schedule.

Values of the authors' runs (spec §6.2): lr 5e-5 → min 1e-5, warmup ratio 0.1, betas (0.9, 0.95),
eps 1e-8, weight decay 0.1, grad clip 1.0. The schedule is transformers'
``get_cosine_with_min_lr_schedule_with_warmup`` with ``W = ceil(warmup_ratio · N)`` warmup steps, as the
HF Trainer (and LLaMA-Factory) computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from dasd.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class OptimConfig:
    lr: float = 5.0e-5
    min_lr: float = 1.0e-5
    warmup_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1.0e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and exempt 1-D params (norm weights, biases)."""
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions params; ds_shape is the full shape
        (exempt if ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def _cpu_adamw(groups: list[dict], cfg: OptimConfig):
    """DeepSpeed's CPU AdamW (the optimizer step of ZeRO-Offload runs on the host, vectorised); its C++ op is
    built on first use. Falls back to torch's AdamW (correct, slower) when the op cannot be built."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, adamw_mode=True)
    except Exception as e:  # noqa: BLE001 - any build/import failure: the torch optimizer still trains correctly
        log.warning("DeepSpeedCPUAdam unavailable (%s: %s); the offloaded optimizer step uses torch.optim.AdamW",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int, cpu_offload: bool = False):
    """AdamW and a per-step LR scheduler (Lightning ``interval: step``). ``cpu_offload``: the optimizer states
    live in host memory (ZeRO-Offload), so the step runs on the CPU with DeepSpeed's CPU AdamW."""
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"optim.min_lr={cfg.min_lr} must lie in [0, optim.lr={cfg.lr}]")
    groups = param_groups(model, cfg.weight_decay)
    optimizer = _cpu_adamw(groups, cfg) if cpu_offload else None
    if optimizer is None:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps(total_steps, cfg.warmup_ratio),
        num_training_steps=total_steps, min_lr=cfg.min_lr)
    return optimizer, scheduler


def retarget_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig, total_steps: int,
                      num_warmup_steps: int) -> None:
    """Give a running schedule a new length (the data of later epochs changed size): the same warmup, then
    cosine to ``min_lr`` at ``total_steps``. The step count and the optimizer are untouched."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    fresh = get_cosine_with_min_lr_schedule_with_warmup(dummy, num_warmup_steps=num_warmup_steps,
                                                        num_training_steps=max(total_steps, num_warmup_steps + 1),
                                                        min_lr=cfg.min_lr)
    scheduler.lr_lambdas = [fresh.lr_lambdas[0]] * len(scheduler.optimizer.param_groups)
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * fn(scheduler.last_epoch)
