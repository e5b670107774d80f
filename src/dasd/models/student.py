"""Load a student (hub name or local directory) with ``AutoModelForCausalLM``/``AutoTokenizer``.

The built-in tiny student under ``dasd/assets/tiny_qwen3`` is a regular HF model directory, so it takes
exactly the path a hub name takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dasd.models.attention import resolve_attn_implementation
from dasd.utils.assets import ASSETS, asset_path  # noqa: F401 - re-exported (notebooks, benchmarks)
from dasd.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class StudentSpec:
    """How to load the student. ``name_or_path``: hub id or local HF directory."""

    name_or_path: str
    torch_dtype: str = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    liger: bool = False
    trust_remote_code: bool = False
    init: str = "pretrained"  # "random": the architecture of name_or_path's config, randomly initialised


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def apply_liger(model_type: str) -> None:
    """Patch the HF modeling code with Liger kernels (GPU only): RMSNorm, SwiGLU, RoPE, fused linear CE.

    The fused linear cross-entropy then runs inside the model's own forward, which is what the DeepSpeed
    engine wraps, so ZeRO-3 gathers ``lm_head`` for it (lessons §1.4).
    """
    if not torch.cuda.is_available():
        raise ValueError("student.liger=true needs a CUDA GPU (Liger's Triton kernels); set student.liger=false")
    try:
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel
    except ImportError as e:
        raise ImportError("student.liger=true needs liger-kernel: pip install -e '.[gpu]'") from e
    _apply_liger_kernel(model_type)


def load_student(spec: StudentSpec) -> PreTrainedModel:
    """Load the student for training (``use_cache`` off: packed samples must not attend to each other)."""
    from transformers import AutoConfig

    if spec.init not in ("pretrained", "random"):
        raise ValueError(f"student.load.init={spec.init!r}: use pretrained or random")
    config = AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
    if spec.liger:
        apply_liger(config.model_type)
    attn = resolve_attn_implementation(spec.attn_implementation, spec.torch_dtype)
    dtype = spec.torch_dtype if spec.torch_dtype == "auto" else getattr(torch, spec.torch_dtype)
    if spec.init == "random":  # the same architecture, no weights read (benchmarks, from-scratch runs)
        model = AutoModelForCausalLM.from_config(config, dtype=None if dtype == "auto" else dtype,
                                                 attn_implementation=attn,
                                                 trust_remote_code=spec.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, dtype=dtype, attn_implementation=attn,
                                                     trust_remote_code=spec.trust_remote_code)
    model.config.use_cache = False
    model.train()
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    log.info("student %s (%s): %.2fM parameters, %s, attention=%s", spec.name_or_path, spec.init,
             sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) / 1e6, dtype, attn)
    return model
