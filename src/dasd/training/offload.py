"""Park the training state in CPU memory while a child process uses the GPU (a mixed-policy revision round,
the evaluation at the end of a stage)."""

from __future__ import annotations

import contextlib

import lightning as L
import torch

from dasd.training.strategy import offloaded
from dasd.utils.logging import get_logger

log = get_logger(__name__)


def offload_plan(strategy, module_on_cuda: bool) -> str:
    """How ``offload_training_state`` parks the training state for a round: ``"none"`` (not on a GPU),
    ``"deepspeed"`` (ZeRO-3's ``offload_states``), ``"already_offloaded"`` (a ZeRO config that offloads the
    optimizer or the parameters to the CPU already: DeepSpeed's ``offload_states`` refuses to move those, and
    what it would move is in host memory anyway) or ``"module"`` (``.cpu()`` of the module and optimizer state)."""
    if not module_on_cuda:
        return "none"
    engine = getattr(strategy, "deepspeed_engine", None)
    if engine is None or engine.zero_optimization_stage() != 3:
        return "module"
    return "already_offloaded" if offloaded(strategy) else "deepspeed"


@contextlib.contextmanager
def training_state_offloaded(trainer: L.Trainer, module: L.LightningModule, enabled: bool):
    """On a GPU, park the model and optimizer state in CPU memory while a child process generates."""
    on_cuda = enabled and torch.cuda.is_available() and module.device.type == "cuda"
    plan = offload_plan(trainer.strategy, on_cuda)
    if plan == "none":
        yield
        return
    if plan == "already_offloaded":
        log.info("mixed.offload_training_state: the ZeRO config already keeps the optimizer/parameters in CPU "
                 "memory; nothing more is moved for the revision round (%.1f GiB allocated)",
                 torch.cuda.memory_allocated() / 2**30)
        yield
        return
    if plan == "deepspeed":
        engine = trainer.strategy.deepspeed_engine
        engine.offload_states()  # DeepSpeed >= 0.15: parameters, gradients and optimizer states to CPU
        torch.cuda.empty_cache()
        try:
            yield
        finally:
            engine.reload_states()
        return
    device = module.device
    moves = [(opt, k, p) for opt in trainer.optimizers for p, st in opt.state.items() for k in st
             if torch.is_tensor(st[k]) and st[k].device.type == "cuda"]
    for opt, k, p in moves:
        opt.state[p][k] = opt.state[p][k].cpu()
    module.cpu()
    torch.cuda.empty_cache()
    log.info("training state offloaded to CPU for the revision round (%.1f GiB left allocated)",
             torch.cuda.memory_allocated() / 2**30)
    try:
        yield
    finally:
        module.to(device)
        for opt, k, p in moves:
            opt.state[p][k] = opt.state[p][k].to(device)
