"""A local stand-in for an OpenAI-compatible server (``vllm serve``): ``/v1/completions`` with vLLM's extensions.

Each prompt is answered with a fixed reply (token ids, cut at the request's ``max_tokens``), one choice per ``n``,
with ``token_id:<id>`` tokens and logprobs; a ``prompt_logprobs`` request gets a score per prompt token. Every
request body and its ``Authorization`` header are recorded, so a test can check what dasd sent.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """Serve on 127.0.0.1 (a free port) in a daemon thread; ``url`` is the ``base_url``; use as a context manager."""

    def __init__(self, reply_ids: list[int], reply_text: str) -> None:
        self.reply_ids, self.reply_text = list(reply_ids), reply_text
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict) -> dict:
        """The completion of one request body."""
        if body.get("prompt_logprobs") is not None:
            prompt = body["prompt"]
            steps = [None] + [{str(t): {"logprob": -1.0, "rank": 1}} for t in prompt[1:]]
            return {"choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None,
                                 "prompt_logprobs": steps}]}
        ids = self.reply_ids[:body.get("max_tokens") or len(self.reply_ids)]
        reason = "stop" if len(ids) == len(self.reply_ids) else "length"
        choice = {"text": self.reply_text if reason == "stop" else "", "finish_reason": reason,
                  "logprobs": {"tokens": [f"token_id:{t}" for t in ids], "token_logprobs": [-0.5] * len(ids),
                               "text_offset": [0] * len(ids), "top_logprobs": None}}
        return {"choices": [{"index": i, **choice} for i in range(body.get("n") or 1)]}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.bodies.append(body)
                    fake.auth.append(self.headers.get("Authorization"))
                out = {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body.get("model"),
                       "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                       **fake.answer(body)}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # quiet
                pass

        return Handler
