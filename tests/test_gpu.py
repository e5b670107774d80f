"""GPU tier (`pytest -m gpu`): Liger kernels, flash-attention varlen packing and DeepSpeed ZeRO-3 training.

Skipped without CUDA. Needs `bash scripts/setup.sh gpu` (deepspeed, liger-kernel) and, for the varlen
test, the flash-attn package.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from cli import metrics, run_train
from conftest import make_record
from transformers import AutoModelForCausalLM

from dasd.data.packing import PackCollator, PackedDataset, pack_samples
from dasd.data.records import Record
from dasd.data.template import ChatTemplater

pytestmark = pytest.mark.gpu


def _packed_batch(tokenizer, n: int = 4):
    templater = ChatTemplater(tokenizer, "You are a helpful assistant.")
    samples = [templater.render(Record(**make_record(i, output="<think>\n" + "go. " * (5 + 7 * i) + "\n</think>\n\nok")))
               for i in range(n)]
    packs, _ = pack_samples(samples, cutoff_len=4096)
    assert len(packs) == 1
    return samples, PackCollator(tokenizer.pad_token_id)([PackedDataset(samples, packs)[0]])


def _loss_sum(model, batch) -> torch.Tensor:
    b = {k: v.cuda() for k, v in batch.items()}
    return model(input_ids=b["input_ids"], position_ids=b["position_ids"], labels=b["labels"],
                 shift_labels=b["labels"], num_items_in_batch=torch.ones((), device="cuda"), use_cache=False).loss


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed")
def test_flash_attention_varlen_packing_isolates_samples(tiny_path, tokenizer):
    """With flash-attention-2 the packed loss equals the sum of per-sample losses (bf16 tolerance)."""
    samples, batch = _packed_batch(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16,
                                                 attn_implementation="flash_attention_2").cuda()
    packed = _loss_sum(model, batch)
    singles = sum(_loss_sum(model, PackCollator(tokenizer.pad_token_id)([PackedDataset(samples, [[i]])[0]]))
                  for i in range(len(samples)))
    torch.testing.assert_close(packed.float(), singles.float(), rtol=2e-2, atol=0.5)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel not installed")
def test_liger_fused_loss_matches_hf(tiny_path, tokenizer):
    """Liger's fused linear cross-entropy gives the same summed loss as the plain HF loss."""
    from dasd.models.student import StudentSpec, load_student

    _, batch = _packed_batch(tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(tiny_path).cuda()
    reference = _loss_sum(plain, batch)
    liger = load_student(StudentSpec(name_or_path=tiny_path, liger=True)).cuda()
    torch.testing.assert_close(_loss_sum(liger, batch), reference, rtol=1e-3, atol=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
def test_deepspeed_zero3_stage1_end_to_end(tmp_path):
    """`trainer=gpu strategy=deepspeed_zero3` trains the tiny student (bf16, Liger), the loss falls, and the
    gathered HF checkpoint loads with transformers."""
    liger = "true" if importlib.util.find_spec("liger_kernel") else "false"
    run_train(tmp_path, "trainer=gpu", "strategy=deepspeed_zero3", "trainer.devices=1", "data.max_samples=96",
              "train.epochs=2", f"student.load.liger={liger}", "logger=csv")
    run_dir = tmp_path / "outputs" / "default" / "stage1"
    rows = metrics(run_dir)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.5
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "hf" / "final")
    assert sum(p.numel() for p in model.parameters()) > 0 and all(p.numel() for p in model.parameters())


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
