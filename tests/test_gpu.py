"""GPU tier (`pytest -m gpu`): varlen packing, Liger kernels and DeepSpeed ZeRO-3 training.

Skipped without CUDA. Needs `bash scripts/setup.sh gpu` (deepspeed, liger-kernel); the flash_attention_2
case of the varlen test also needs the flash-attn package (torch_varlen needs only torch>=2.10).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from cli import metrics, run_train
from conftest import make_record
from transformers import AutoConfig, AutoModelForCausalLM

from dasd.data.packing import PackCollator, PackedDataset, pack_samples
from dasd.data.records import Record
from dasd.data.template import ChatTemplater
from dasd.models.student import StudentSpec, asset_path, load_student
from dasd.training.module import packed_loss_sum

pytestmark = pytest.mark.gpu


def _packed_batch(tokenizer, n: int = 4):
    templater = ChatTemplater(tokenizer, "You are a helpful assistant.")
    samples = [templater.render(Record(**make_record(i, output="<think>\n" + "go. " * (5 + 7 * i) + "\n</think>\n\nok")))
               for i in range(n)]
    packs, _ = pack_samples(samples, cutoff_len=4096)
    assert len(packs) == 1
    return samples, PackCollator(tokenizer.pad_token_id)([PackedDataset(samples, packs)[0]])


def _cuda(batch: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _loss_and_grads(model, batches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = sum(packed_loss_sum(model, _cuda(b)) for b in batches)
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


def _assert_grads_close(a: dict, b: dict, rel: float) -> None:
    """Every parameter's gradient agrees to ``rel`` in relative L2 norm (per-element tolerances are
    meaningless for bf16 reductions in different orders)."""
    assert a.keys() == b.keys() and a
    for name in a:
        err = float((a[name] - b[name]).norm() / b[name].norm().clamp(min=1e-12))
        assert err < rel, f"{name}: relative gradient error {err:.2e} >= {rel}"


@pytest.mark.parametrize("attn", ["torch_varlen", "flash_attention_2"])
def test_varlen_packing_isolates_samples(attn, tiny_path, tokenizer):
    """Varlen attention (bf16): one pack's loss and gradients equal the sum over each sample alone (with the
    same kernel), and equal sdpa's packed result. Tolerance: bf16, relative 2e-2."""
    from dasd.models.attention import flash_attn_available, torch_varlen_available

    if not (torch_varlen_available() if attn == "torch_varlen" else flash_attn_available()):
        pytest.skip(f"{attn} not available here")
    samples, _ = _packed_batch(tokenizer)
    collate = PackCollator(tokenizer.pad_token_id)
    two = PackedDataset(samples, [[0, 1, 2], [3]])
    batch = collate([two[0], two[1]])  # two rows, the second with a padding tail
    assert int(batch["num_pad"]) > 0
    model = load_student(StudentSpec(name_or_path=tiny_path, torch_dtype="bfloat16", attn_implementation=attn))
    model = model.cuda().eval()
    packed, grads_p = _loss_and_grads(model, [batch])
    alone = PackedDataset(samples, [[i] for i in range(len(samples))])
    singles, grads_s = _loss_and_grads(model, [collate([alone[i]]) for i in range(len(samples))])
    torch.testing.assert_close(packed, singles, rtol=2e-2, atol=0.0)
    _assert_grads_close(grads_p, grads_s, rel=2e-2)
    sdpa = load_student(StudentSpec(name_or_path=tiny_path, torch_dtype="bfloat16")).cuda().eval()
    reference, grads_r = _loss_and_grads(sdpa, [batch])
    torch.testing.assert_close(packed, reference, rtol=2e-2, atol=0.0)
    _assert_grads_close(grads_p, grads_r, rel=2e-2)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel not installed")
def test_liger_loss_and_gradients_match_hf(tiny_path, tokenizer):
    """Liger (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) gives HF's summed loss (relative 1e-4) and
    gradients (relative L2 error < 1e-3 per parameter) in fp32, on a packed micro-batch."""
    _, batch = _packed_batch(tokenizer)
    plain = load_student(StudentSpec(name_or_path=tiny_path)).cuda()
    reference, grads_r = _loss_and_grads(plain, [batch])
    liger = load_student(StudentSpec(name_or_path=tiny_path, liger=True)).cuda()
    assert type(liger.model.norm).__name__.startswith("Liger")  # the kernels are really in place
    loss, grads = _loss_and_grads(liger, [batch])
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=0.0)
    _assert_grads_close(grads, grads_r, rel=1e-3)


def _zero3_run(tmp_path, *overrides):
    from dasd.models.attention import torch_varlen_available

    liger = "true" if importlib.util.find_spec("liger_kernel") else "false"
    attn = "torch_varlen" if torch_varlen_available() else "sdpa"  # DeepSpeed runs the fp32 tiny student in bf16
    proc = run_train(tmp_path, "trainer=gpu", "trainer.devices=1", "data.max_samples=96", "train.epochs=2",
                     f"student.load.liger={liger}", f"student.load.attn_implementation={attn}", "logger=csv",
                     *overrides)
    return tmp_path / "outputs" / "default" / "stage1", proc


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_zero3_stage1_end_to_end(tmp_path):
    """`trainer=gpu strategy=deepspeed_zero3` trains the tiny student (bf16, Liger, varlen attention): the loss
    falls, the engine ran the authors' ZeRO-3 config with Lightning's accumulation and clipping, and the
    gathered 16-bit HF checkpoint equals the engine's fp32 master weights rounded to bf16 and gives their
    logits."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    from dasd.training.strategy import zero3_config

    run_dir, _ = _zero3_run(tmp_path, "strategy=deepspeed_zero3", "train.accumulate=2")
    rows = metrics(run_dir)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.5
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    # one metrics row per optimizer step (Lightning counts DeepSpeed's micro-batches as global steps)
    assert [r["step"] for r in rows] == list(range(1, manifest["final_metrics"]["global_step"] + 1))
    assert len(rows) == 2 * -(-manifest["data"]["packing"]["num_packs"] // 2)  # 2 epochs of full 2-pack steps
    ds = manifest["deepspeed_config"]
    hidden = AutoConfig.from_pretrained(asset_path("tiny_qwen3")).hidden_size
    want = zero3_config(hidden)["zero_optimization"]
    assert {k: ds["zero_optimization"][k] for k in want} == json.loads(json.dumps(want))
    assert (ds["gradient_accumulation_steps"], ds["gradient_clipping"], ds["train_micro_batch_size_per_gpu"]) == \
        (2, 1.0, 1)

    final = run_dir / "checkpoints" / "hf" / "final"
    exported = AutoModelForCausalLM.from_pretrained(final, dtype=torch.bfloat16).cuda().eval()
    fp32 = tmp_path / "fp32.pt"
    convert_zero_checkpoint_to_fp32_state_dict(str((run_dir / "checkpoints" / "last.ckpt").resolve()), str(fp32))
    masters = {k.removeprefix("_forward_module.").removeprefix("model."): v
               for k, v in torch.load(fp32, weights_only=False)["state_dict"].items()}
    params = dict(exported.named_parameters())  # tied weights once
    assert params.keys() <= masters.keys(), sorted(params.keys() - masters.keys())[:5]
    for k, p in params.items():
        assert torch.equal(p.detach().cpu(), masters[k].to(torch.bfloat16)), k
    rebuilt = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    rebuilt.load_state_dict(masters, strict=False)
    ids = torch.tensor([list(range(5, 69))], device="cuda")
    with torch.no_grad():
        got = exported(ids).logits.float()
        want_logits = rebuilt.cuda().eval()(ids).logits
    # bf16 weights against their fp32 masters: a few bf16 ulps of the logits' scale
    assert float((got - want_logits).abs().max() / want_logits.abs().max()) < 3e-2


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_zero3_optimizer_offload_trains(tmp_path):
    """`strategy.offload=optimizer` (ZeRO-Offload: optimizer states and step on the host) trains: the loss falls
    and the engine ran with the optimizer offloaded."""
    run_dir, proc = _zero3_run(tmp_path, "strategy=deepspeed_zero3", "strategy.offload=optimizer")
    assert "DeepSpeedCPUAdam unavailable" not in proc.stderr  # the host step ran DeepSpeed's CPU Adam
    rows = metrics(run_dir)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.5
    ds = json.loads((run_dir / "manifest.json").read_text())["deepspeed_config"]
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in ds["zero_optimization"]


def test_das_student_scoring_on_gpu_is_exact(tiny_path, tokenizer):
    """The HF engine's chunked teacher-forced scoring on a GPU (DAS's student side) equals the log-softmax of
    the full logits of one forward pass (fp32)."""
    from dasd.generation.hf import HFEngine

    prompt = tokenizer.encode("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    completion = tokenizer.encode("<think>\nWe add 2 and 3. The sum is 5.\n</think>\n\n\\boxed{5}") * 40
    engine = HFEngine(tiny_path, device="cuda", dtype="float32", score_chunk_size=64)
    got = torch.tensor(engine.score(prompt, completion))
    ids = torch.tensor([prompt + completion], device="cuda")
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(ids, use_cache=False).logits[0].float(), -1)
    want = logp[len(prompt) - 1:-1].gather(-1, ids[0, len(prompt):, None]).squeeze(-1).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
