"""Attention for packed batches: which implementation a student trains with, and a varlen one built on torch.

Packed micro-batches hold several samples in one row, separated by restarting ``position_ids``. No sample may
attend to another. Three implementations keep them apart:

* ``flash_attention_2``: FlashAttention-2's varlen kernel (needs the ``flash-attn`` package and CUDA). The
  packer's ``cu_seq_lens``/``max_length`` are passed through the model's forward, so transformers need not
  recompute them from ``position_ids`` in every layer.
* ``torch_varlen``: the same idea with PyTorch's own FlashAttention varlen kernel
  (``torch.nn.attention.varlen.varlen_attn``, CUDA, bf16/fp16), registered with transformers'
  ``AttentionInterface`` under this name. No extra package.
* ``sdpa``: transformers builds a block-diagonal causal mask from the restarting ``position_ids`` (only with
  ``use_cache=False``, which the trainer sets). Correct everywhere, but the mask is O(L²) and rules out
  the flash kernel, so long packs are slow.

``attn_implementation: auto`` picks the first of these that this machine can run.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

from dasd.utils.logging import get_logger

log = get_logger(__name__)

TORCH_VARLEN = "torch_varlen"
VARLEN_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", TORCH_VARLEN)
_registered = False


def torch_varlen_available() -> bool:
    """PyTorch ships ``torch.nn.attention.varlen`` (2.10+) and a CUDA device is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("torch.nn.attention.varlen") is not None


def flash_attn_available() -> bool:
    """flash-attn is installed *and* imports (a build against another torch fails at import)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken build: fall back, and say why
        log.warning("flash-attn is installed but does not import (%s); not using it", e)
        return False
    return True


def resolve_attn_implementation(requested: str, dtype: str | None = None) -> str:
    """``auto`` → flash_attention_2, torch_varlen or sdpa (the first this machine can run; the varlen kernels
    only for 16-bit weights, ``dtype`` being ``student.load.torch_dtype``); any other name is checked and
    returned. ``torch_varlen`` is registered with transformers on the way."""
    if requested == "auto":
        half = dtype in (None, "auto", "bfloat16", "float16")
        if half and flash_attn_available():
            chosen = "flash_attention_2"
        elif half and torch_varlen_available():
            chosen = TORCH_VARLEN
        else:
            chosen = "sdpa"
        log.info("attention: auto -> %s", chosen)
        requested = chosen
    if requested == TORCH_VARLEN:
        if not torch_varlen_available():
            raise ValueError("attn_implementation=torch_varlen needs CUDA and torch>=2.10 "
                             "(torch.nn.attention.varlen); use sdpa or auto")
        register_torch_varlen()
    elif requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(f"attn_implementation={requested} needs the flash-attn package; "
                         "use auto (falls back to torch_varlen on CUDA, else sdpa)")
    return requested


def uses_varlen(model) -> bool:
    """The model's attention takes the packer's ``cu_seq_lens``/``max_length`` keyword arguments."""
    return getattr(model.config, "_attn_implementation", None) in VARLEN_IMPLEMENTATIONS


def varlen_kwargs(batch: dict) -> dict:
    """The forward keyword arguments (transformers' FlashAttentionKwargs) that carry the packer's boundaries."""
    cu, m = batch["cu_seq_lens"], int(batch["max_length"])
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}


_VARLEN_CALL: dict = {}


def _varlen_call():
    """``varlen_attn`` with this torch's spelling of "causal" and of GQA (the signature changed across
    releases): returns f(q, k, v, cu, max_len, scale) on (tokens, heads, head_dim) tensors. Built once per
    kernel function (the signature is read once, not in every layer)."""
    from torch.nn.attention.varlen import varlen_attn

    if varlen_attn in _VARLEN_CALL:
        return _VARLEN_CALL[varlen_attn]
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = "enable_gqa" in params

    def call(q, k, v, cu, max_len, scale):
        if k.shape[1] != q.shape[1]:
            if gqa:
                return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, enable_gqa=True, **causal)
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal)

    _VARLEN_CALL[varlen_attn] = call
    return call


def torch_varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                   scaling: float | None = None, sliding_window: int | None = None,
                                   cu_seq_lens_q=None, max_length_q=None, position_ids=None, **kwargs):
    """transformers attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out.

    Sample boundaries come from the packer (``cu_seq_lens_q``/``max_length_q``) or, when a caller passes
    none, from the restarting ``position_ids``. A padding mask is not supported: packed training has none.
    """
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise ValueError("torch_varlen attention takes packed batches without a padding mask; "
                         "use attn_implementation=sdpa for padded batches")
    if sliding_window is not None:
        raise ValueError("torch_varlen attention does not implement sliding windows; use sdpa")
    if dropout:
        raise ValueError("torch_varlen attention does not implement attention dropout")
    batch, heads, seq, dim = query.shape
    half = query.dtype if query.dtype in (torch.float16, torch.bfloat16) else None
    if half is None and torch.is_autocast_enabled(query.device.type):  # bf16-mixed: RoPE leaves q, k in fp32
        half = torch.get_autocast_dtype(query.device.type)
    if half is None:
        raise ValueError("torch_varlen attention runs in bf16/fp16: use 16-bit weights, bf16-mixed precision, "
                         "or attn_implementation=sdpa")
    query, key, value = (x.to(half) for x in (query, key, value))
    if cu_seq_lens_q is None:
        if position_ids is None:
            position_ids = torch.arange(seq, device=query.device).expand(batch, seq)
        from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

        (cu_seq_lens_q, _), (max_length_q, _) = prepare_fa_kwargs_from_position_ids(position_ids)
        max_length_q = int(max_length_q)
    q, k, v = (x.transpose(1, 2).reshape(batch * seq, x.shape[1], dim) for x in (query, key, value))
    out = _varlen_call()(q, k, v, cu_seq_lens_q.to(torch.int32), int(max_length_q), scaling)
    return out.view(batch, seq, heads, dim), None


def register_torch_varlen() -> None:
    """Register ``torch_varlen`` with transformers (attention function; no mask is built for it)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention_forward)
    # like flash attention: a 2-D padding mask at most, never an O(L²) one
    ALL_MASK_ATTENTION_FUNCTIONS.register(TORCH_VARLEN, flash_attention_mask)
    _registered = True
