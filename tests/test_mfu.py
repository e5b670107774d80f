"""benchmarks/train_mfu.py: its FLOP count agrees with torch's FLOP counter; the benchmark runs end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import train_mfu  # noqa: E402


def test_flop_formula_matches_torch_flop_counter(tiny_path):
    """One unpacked 257-token sequence through the tiny student (eager attention, so that its matmuls are
    visible to FlopCounterMode), forward + backward:

    * every aten.mm/addmm (the Linear layers and the LM head: forward, grad-input, grad-weight) sums to
      6 · N · tokens, with N = ``matmul_params(config)``;
    * the attention term ``attention_flops`` = 6 · L · H · hd · s² is half of every aten.bmm counted (eager
      QKᵀ and AV over the full s × s, forward and the two backward products each): the causal half.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from dasd.models.student import StudentSpec, load_student

    torch.manual_seed(0)
    model = load_student(StudentSpec(tiny_path, torch_dtype="float32", attn_implementation="eager"))
    s = 257
    ids = torch.randint(1, model.config.vocab_size, (1, s))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(counts) <= {"aten.mm", "aten.addmm", "aten.bmm"}, counts
    linear = counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)
    assert linear == pytest.approx(6 * train_mfu.matmul_params(model.config) * s, rel=0.01)
    assert train_mfu.attention_flops(model.config, [s]) == pytest.approx(counts["aten.bmm"] / 2, rel=0.01)
    # N = the Linear weights of the layers + the (tied) LM head: the embedding counts once, as the head
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert train_mfu.matmul_params(model.config) == n_linear
    f = train_mfu.model_flops(model.config, s, s * s)
    assert f["total"] == f["six_n"] + f["attention"]
    assert f["attention"] == train_mfu.attention_flops(model.config, [s])


def test_qwen3_4b_matmul_params_and_peaks():
    """The benchmark model's N counted on a meta-device Qwen3-4B (no memory), and the GPU peak table."""
    from das_scoring import QWEN3_4B
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert train_mfu.matmul_params(QWEN3_4B) == n_linear == 4_022_272_000
    assert train_mfu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4
    assert train_mfu.peak_tflops_for("NVIDIA H200") == 989.4
    assert train_mfu.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert train_mfu.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert train_mfu.peak_tflops_for("Tesla V100-SXM2-32GB") is None


def test_cpu_smoke_run_writes_the_result(tmp_path, capsys):
    """The documented CPU smoke command (plus shorter samples, so that packs hold several): one arm in a child
    process, trained by Lightning + SFTModule; tokens/s > 0, a finite MFU, and forward+backward + optimizer
    time within 5% of the step time (the rest runs between steps)."""
    out = tmp_path / "mfu.json"
    argv = ["--arch", "tiny", "--strategy", "auto", "--device", "cpu", "--contexts", "512", "--liger", "off",
            "--offload", "none", "--steps", "2", "--warmup-steps", "1", "--peak-tflops", "1",
            "--sample-lengths", "64,512", "--out", str(out)]
    report = train_mfu.main(argv)
    assert json.loads(out.read_text())["arms"] == json.loads(json.dumps(report["arms"]))
    assert report["command"].endswith("--out " + str(out)) and report["versions"]["torch"]
    [arm] = report["arms"]
    r = arm["result"]
    assert r["ok"], r.get("error")
    th, t, d = r["throughput"], r["timing"], r["data"]
    assert th["tokens_per_s"] > 0 and math.isfinite(th["mfu"]) and 0 < th["mfu_6n"] < th["mfu"]
    assert t["split_measured"] and len(t["steps"]) == 2
    assert t["fwd_bwd_seconds"] + t["optimizer_seconds"] == pytest.approx(t["step_seconds"], rel=0.05)
    # the FLOPs are those of the packs that were timed: several samples per pack, Σ s² below tokens × context
    assert d["samples_per_pack"]["max"] > 1 and d["timed_sum_sq"] < d["timed_tokens"] * 512
    flops = train_mfu.model_flops(report["model_config"], d["timed_tokens"], d["timed_sum_sq"])
    assert th["model_flops"] == flops
    assert r["model"]["matmul_params"] == r["model"]["matmul_params_counted_from_linears"]
    assert "cu_seq_lens" in r["model"]["batch_keys"]
    assert "| 512 | off | none |" in capsys.readouterr().out
