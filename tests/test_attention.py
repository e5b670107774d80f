"""Attention selection and the torch_varlen attention function.

PyTorch's varlen FlashAttention kernel runs on CUDA only; here it is replaced by a reference (causal sdpa
per segment) so that dasd's own part — reshaping, boundaries from the packer or from position_ids, GQA,
registration with transformers — is checked on CPU. The GPU tier runs the real kernel (tests/test_gpu.py).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from conftest import make_record
from transformers import AutoModelForCausalLM

from dasd.data.packing import PackCollator, PackedDataset
from dasd.data.records import Record
from dasd.data.template import ChatTemplater
from dasd.models import attention
from dasd.models.student import StudentSpec, load_student
from dasd.training.module import packed_loss_sum


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """Causal attention within each [cu[i], cu[i+1]) segment: the semantics of torch's varlen_attn."""
    assert window_size == (-1, 0), "dasd must ask for causal attention"
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16 and cu_q.dtype == torch.int32
    assert max_q == int(cu_q.diff().max())
    out = torch.empty_like(q)
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                  enable_gqa=enable_gqa).transpose(0, 1)
    return out


@pytest.fixture
def reference_kernel(monkeypatch):
    from torch.nn.attention import varlen

    calls = []

    def kernel(*args, **kwargs):
        calls.append(kwargs)
        return _reference_varlen(*args, **kwargs)

    kernel.__signature__ = inspect.signature(varlen.varlen_attn)  # dasd adapts to the installed signature
    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    attention.register_torch_varlen()
    return calls


def _samples(tokenizer, n=4):
    templater = ChatTemplater(tokenizer, "You are a helpful assistant.")
    return [templater.render(Record(**make_record(i, output="<think>\n" + "step. " * (3 + 5 * i) + "\n</think>\n\nok")))
            for i in range(n)]


def test_auto_resolves_to_sdpa_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert attention.resolve_attn_implementation("auto") == "sdpa"
    assert attention.resolve_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="torch_varlen needs CUDA"):
        attention.resolve_attn_implementation("torch_varlen")


def test_flash_attention_without_package_names_the_fallback():
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed")
    with pytest.raises(ValueError, match="needs the flash-attn package.*auto"):
        attention.resolve_attn_implementation("flash_attention_2")


def test_torch_varlen_packed_loss_and_grads_equal_sdpa_unpacked(reference_kernel, tiny_path, tokenizer):
    """A pack trained through torch_varlen (boundaries from the packer) gives the loss and gradients of each
    sample alone under sdpa; the kernel gets int32 cu_seq_lens and GQA without repeated heads."""
    samples = _samples(tokenizer)
    collate = PackCollator(tokenizer.pad_token_id)
    dataset = PackedDataset(samples, [[0, 1, 2], [3]])
    batch = collate([dataset[0], dataset[1]])  # two rows: the second has a pad tail

    def loss_and_grads(model, batches):
        model.zero_grad(set_to_none=True)
        loss = sum(packed_loss_sum(model, b) for b in batches)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # bf16: the kernel's dtype (torch_varlen refuses fp32 without autocast)
    varlen = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="torch_varlen",
                                                  dtype=torch.bfloat16).eval()
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    assert attention.uses_varlen(varlen) and not attention.uses_varlen(sdpa)
    loss_v, grads_v = loss_and_grads(varlen, [batch])
    alone = PackedDataset(samples, [[i] for i in range(len(samples))])
    loss_s, grads_s = loss_and_grads(sdpa, [collate([alone[i]]) for i in range(len(alone))])
    torch.testing.assert_close(loss_v.float(), loss_s.float(), atol=0.0, rtol=1e-2)
    assert grads_v.keys() == grads_s.keys()
    for name in grads_v:  # relative L2 error per parameter (bf16 sums in different orders)
        a, b = grads_v[name].float(), grads_s[name].float()
        assert float((a - b).norm() / b.norm().clamp(min=1e-12)) < 2e-2, name
    n_layers = varlen.config.num_hidden_layers
    assert len(reference_kernel) == n_layers and all(c.get("enable_gqa") for c in reference_kernel)


def test_torch_varlen_without_packer_boundaries_uses_position_ids(reference_kernel, tiny_path, tokenizer):
    """Called without cu_seq_lens (e.g. a plain forward), the boundaries come from the restarting position_ids,
    so the loss is the one with the packer's boundaries."""
    samples = _samples(tokenizer)
    batch = PackCollator(tokenizer.pad_token_id)([PackedDataset(samples, [[0, 1, 2, 3]])[0]])
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="torch_varlen",
                                                 dtype=torch.bfloat16).eval()
    with torch.no_grad():
        with_cu = packed_loss_sum(model, batch)
        without = packed_loss_sum(model, {k: v for k, v in batch.items() if k not in ("cu_seq_lens", "max_length")})
    torch.testing.assert_close(with_cu, without)


def test_random_init_builds_the_architecture_without_its_weights(tiny_path):
    """student.load.init=random: same architecture and parameter shapes, weights not read from disk."""
    pretrained = load_student(StudentSpec(name_or_path=tiny_path))
    torch.manual_seed(123)  # the shipped tiny student was itself initialised with seed 0
    random_a = load_student(StudentSpec(name_or_path=tiny_path, init="random"))
    torch.manual_seed(123)
    random_b = load_student(StudentSpec(name_or_path=tiny_path, init="random"))
    shapes = {n: p.shape for n, p in pretrained.named_parameters()}
    assert shapes == {n: p.shape for n, p in random_a.named_parameters()}
    emb = "model.embed_tokens.weight"
    assert not torch.equal(dict(pretrained.named_parameters())[emb], dict(random_a.named_parameters())[emb])
    assert all(torch.equal(a, b) for a, b in zip(random_a.parameters(), random_b.parameters(), strict=True))
    with pytest.raises(ValueError, match="init='scratch'"):
        load_student(StudentSpec(name_or_path=tiny_path, init="scratch"))


def test_torch_varlen_runs_fp32_weights_under_bf16_autocast_and_refuses_plain_fp32(reference_kernel, tiny_path,
                                                                                   tokenizer):
    """bf16-mixed training keeps fp32 weights: RoPE leaves q, k in fp32 and v in bf16; the kernel gets all
    three in the autocast dtype. Plain fp32 (no autocast) is refused with the way out."""
    batch = PackCollator(tokenizer.pad_token_id)([PackedDataset(_samples(tokenizer), [[0, 1, 2, 3]])[0]])
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="torch_varlen").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(packed_loss_sum(model, batch))
    with pytest.raises(ValueError, match="runs in bf16/fp16.*attn_implementation=sdpa"), torch.no_grad():
        packed_loss_sum(model, batch)


def test_auto_picks_sdpa_for_fp32_students():
    assert attention.resolve_attn_implementation("auto", "float32") == "sdpa"
