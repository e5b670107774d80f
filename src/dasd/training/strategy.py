"""Lightning strategies: auto / ddp on any machine, DeepSpeed ZeRO-3 (optionally offloaded) on CUDA.

The ZeRO-3 settings are those of the authors' ``ds_z3_config.json`` (spec §6.2). Its ``"auto"`` values are
resolved here the way the HF Trainer resolves them, because Lightning does not.
"""

from __future__ import annotations

from typing import Any

import torch


def _require_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"strategy={name} needs CUDA GPUs, and this machine has none. "
                         "On CPU use strategy=auto or strategy=ddp (with trainer=cpu).")


OFFLOAD_MODES = {False: (), None: (), "none": (), "optimizer": ("optimizer",), True: ("optimizer", "param"),
                 "all": ("optimizer", "param")}


def offload_targets(offload: Any) -> tuple[str, ...]:
    """``strategy.offload``: false|none (GPU only, the authors' setting), optimizer (ZeRO-Offload of the
    optimizer states and step), true|all (optimizer and parameters)."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"strategy.offload={offload!r}: use false, optimizer or all")
    return OFFLOAD_MODES[offload]


def zero3_config(hidden_size: int, offload: Any = False, **overrides: Any) -> dict:
    """The authors' ZeRO-3 config with HF's "auto" bucket sizes resolved from the model's hidden size.

    ``offload`` adds CPU offload of the optimizer (and of the parameters with ``all``); the authors ran without.
    """
    zero = {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
        "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    for target in offload_targets(offload):
        zero[f"offload_{target}"] = {"device": "cpu", "pin_memory": True}
    zero.update(overrides)
    # dasd builds its own optimizer (DeepSpeedCPUAdam when offloaded, torch AdamW otherwise or as fallback)
    return {"zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
            "bf16": {"enabled": True}, "zero_optimization": zero}


def offloaded(strategy: Any) -> tuple[str, ...]:
    """What the strategy's ZeRO config keeps in host memory: a subset of ("optimizer", "param")."""
    config = getattr(strategy, "config", None)
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    return tuple(t for t in ("optimizer", "param")
                 if (zero.get(f"offload_{t}") or {}).get("device", "none") not in (None, "none"))


def optimizer_offloaded(strategy: Any) -> bool:
    """The strategy keeps the optimizer states in host memory (DeepSpeed ZeRO-Offload)."""
    return "optimizer" in offloaded(strategy)


def build_strategy(name: str, hidden_size: int | None = None, offload: Any = False,
                   zero_overrides: dict | None = None, micro_batch_size: int = 1, **kwargs: Any):
    """Return a Lightning strategy (or its name) for ``strategy=<name>``.

    auto / ddp: passed to the Trainer by name. deepspeed_zero3[_offload]: a ``DeepSpeedStrategy``; fails at
    once without CUDA or without the ``deepspeed`` package. ``timeout_minutes`` (ddp, deepspeed): the process
    group's timeout for a collective (null: Lightning's 30 min).
    """
    if kwargs.get("timeout_minutes") is not None:
        from datetime import timedelta

        kwargs["timeout"] = timedelta(minutes=float(kwargs["timeout_minutes"]))
    kwargs.pop("timeout_minutes", None)
    if name == "ddp" and kwargs:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(**kwargs)
    if name in ("auto", "ddp"):
        return name
    if name.startswith("deepspeed"):
        _require_cuda(name)
        try:
            from lightning.pytorch.strategies import DeepSpeedStrategy
        except ImportError as e:
            raise ImportError(f"strategy={name} needs deepspeed: pip install -e '.[gpu]'") from e
        config = zero3_config(hidden_size or 4096, offload=offload, **(zero_overrides or {}))
        # set here: Lightning would otherwise read it off the data loader's batch sampler
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
        # transformers sees the ZeRO-3 config (HfDeepSpeedConfig) only from SFTModule.configure_model on:
        # made here it would also partition models loaded before training (DAS scoring in dm.setup)
        return DeepSpeedStrategy(config=config, **kwargs)
    raise ValueError(f"unknown strategy {name!r}: use auto, ddp, deepspeed_zero3 or deepspeed_zero3_offload")
