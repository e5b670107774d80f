"""OpenAI-compatible HTTP engine: a teacher served by ``vllm serve`` or SGLang, too big for the training cluster.

Prompts are rendered locally with the model's own chat template and sent as token ids to the
completions endpoint, so what the server continues is exactly what dasd rendered. Sampled-token ids and
logprobs come back with vLLM's ``return_tokens_as_token_ids``; scoring uses vLLM's ``prompt_logprobs``.
The official ``openai`` client provides timeouts and retries with exponential backoff; requests run
concurrently on a thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from dasd.generation.engine import (
    Engine,
    Request,
    Sample,
    SamplingConfig,
    render_prompt,
    request_max_tokens,
    request_seed,
)
from dasd.models.student import load_tokenizer


class OpenAIEngine(Engine):
    """Args:
        model: the served model name (``--served-model-name``; by default the path/id it was started with).
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        tokenizer: hub id or local dir of the model's tokenizer (default: ``model``).
        logprob_mode: what the server returns: vLLM's default ``--logprobs-mode raw_logprobs`` is "raw".
        max_concurrency: requests in flight at once. timeout (s) and max_retries go to the client.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str, api_key: str = "EMPTY", tokenizer: str | None = None,
                 logprob_mode: str = "raw", max_concurrency: int = 16, timeout: float = 600.0,
                 max_retries: int = 5) -> None:
        self.model_name, self.base_url, self.logprob_mode = model, base_url, logprob_mode
        self.tokenizer = load_tokenizer(tokenizer or model)
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.max_concurrency = max_concurrency

    def _call(self, **kwargs):
        try:
            return self.client.completions.create(model=self.model_name, **kwargs)
        except openai.APIConnectionError as e:
            raise ConnectionError(f"cannot reach the OpenAI-compatible server at {self.base_url} ({e}). "
                                  "Is it running (e.g. `vllm serve <model>`), and is engine.base_url right?") from e

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[list[Sample]]:
        if sampling.logprob_mode != self.logprob_mode:
            raise ValueError(f"the server returns {self.logprob_mode!r} logprobs (engine.logprob_mode); "
                             f"sampling asks for {sampling.logprob_mode!r}")
        prompts = [render_prompt(self.tokenizer, r) for r in requests]
        seeds = [request_seed(r, sampling, i) for i, r in enumerate(requests)]
        budgets = [request_max_tokens(r, sampling) for r in requests]
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(lambda a: self._complete(*a, sampling), zip(prompts, seeds, budgets, strict=True)))

    def _complete(self, prompt: list[int], seed: int | None, max_tokens: int, sampling: SamplingConfig) -> list[Sample]:
        resp = self._call(prompt=prompt, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                          max_tokens=max_tokens, seed=seed, stop=list(sampling.stop) or None, logprobs=1,
                          extra_body={"return_tokens_as_token_ids": True, "include_stop_str_in_output": True})
        return [self._sample(c, prompt) for c in sorted(resp.choices, key=lambda c: c.index)]

    def _sample(self, choice, prompt: list[int]) -> Sample:
        lp = choice.logprobs
        if lp is None or lp.token_logprobs is None or lp.tokens is None:
            raise ValueError(f"the server at {self.base_url} returned no logprobs; it must support "
                             "`logprobs` on /v1/completions (vLLM, SGLang)")
        ids = [_token_id(t, self.base_url) for t in lp.tokens]
        return Sample(text=choice.text, token_ids=ids, logprobs=[float(x) for x in lp.token_logprobs],
                      finish_reason="length" if choice.finish_reason == "length" else "stop",
                      prompt_token_ids=prompt, logprob_mode=self.logprob_mode)

    def score(self, prompt_token_ids: list[int], completion_token_ids: list[int]) -> list[float]:
        if not completion_token_ids:
            return []
        resp = self._call(prompt=list(prompt_token_ids) + list(completion_token_ids), max_tokens=1, temperature=0.0,
                          extra_body={"prompt_logprobs": 0})
        steps = (resp.choices[0].model_extra or {}).get("prompt_logprobs")
        if steps is None:
            raise ValueError(f"the server at {self.base_url} returned no prompt_logprobs (scoring needs vLLM's "
                             "`prompt_logprobs` extension of /v1/completions)")
        steps = steps[len(prompt_token_ids):]
        return [float(step[str(t)]["logprob"]) for step, t in zip(steps, completion_token_ids, strict=True)]

    def close(self) -> None:
        self.client.close()


def _token_id(token: str, base_url: str) -> int:
    """vLLM writes sampled tokens as ``token_id:<id>`` when asked for ``return_tokens_as_token_ids``."""
    if not token.startswith("token_id:"):
        raise ValueError(f"the server at {base_url} returned token strings, not ids ({token!r}); "
                         "it must honour `return_tokens_as_token_ids` (vLLM)")
    return int(token.removeprefix("token_id:"))
