"""OpenAI-compatible HTTP engine: a teacher served by ``vllm serve`` or SGLang, too big for the training cluster.

Prompts are rendered locally with the model's own chat template and sent as token ids to the
completions endpoint, so what the server continues is exactly what dasd rendered. Sampled-token ids and
logprobs come back with vLLM's ``return_tokens_as_token_ids``; scoring uses vLLM's ``prompt_logprobs``.
The official ``openai`` client provides timeouts and retries with exponential backoff; requests run
concurrently on a thread pool.
"""

from __future__ import annotations

import os
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
from dasd.utils.secrets import HOW


class OpenAIEngine(Engine):
    """Args:
        model: the served model name (``--served-model-name``; by default the path/id it was started with).
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: the environment variable holding the server's API key, read here (when the client is
            built); unset or None: no key (a vLLM server started without ``--api-key``). A key itself is never
            taken (``api_key``): it would be written wherever the config goes (manifest, .hydra/, W&B).
        tokenizer: hub id or local dir of the model's tokenizer (default: ``model``).
        logprob_mode: what the server returns: vLLM's default ``--logprobs-mode raw_logprobs`` is "raw".
        max_concurrency: requests in flight at once. timeout (s) and max_retries go to the client.
    """

    name = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str | None = "OPENAI_API_KEY",
                 tokenizer: str | None = None, logprob_mode: str = "raw", max_concurrency: int = 16,
                 timeout: float = 600.0, max_retries: int = 5, api_key: str | None = None) -> None:
        if api_key is not None:
            raise ValueError(f"engine.api_key: a literal API key is refused. {HOW}")
        self.model_name, self.base_url, self.logprob_mode = model, base_url, logprob_mode
        self.api_key_env = api_key_env
        self.tokenizer = load_tokenizer(tokenizer or model)
        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout,
                                    max_retries=max_retries)
        self.max_concurrency = max_concurrency

    def _call(self, **kwargs):
        try:
            return self.client.completions.create(model=self.model_name, **kwargs)
        except openai.APIConnectionError as e:
            raise ConnectionError(f"cannot reach the OpenAI-compatible server at {self.base_url} ({e}). "
                                  "Is it running (e.g. `vllm serve <model>`), and is engine.base_url right?") from e
        except openai.AuthenticationError as e:
            raise PermissionError(f"the server at {self.base_url} refused the request (401): export its API key "
                                  f"in the environment variable engine.api_key_env names "
                                  f"({self.api_key_env or 'none set'})") from e

    def sampling_args(self, sampling: SamplingConfig) -> dict:
        """Every sampling parameter of a completion request (besides prompt, seed and max_tokens), so the server
        fills in none of the model's generation_config defaults. ``top_k`` off (0) is sent as -1, which vLLM
        (old: 0 is an error; new: -1 means off) and SGLang both read as the whole vocabulary."""
        return {"n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": list(sampling.stop) or None,
                "extra_body": {"top_k": sampling.top_k or -1, "min_p": sampling.min_p,
                               "repetition_penalty": sampling.repetition_penalty}}

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
        args = self.sampling_args(sampling)
        extra = {**args.pop("extra_body"), "return_tokens_as_token_ids": True, "include_stop_str_in_output": True}
        resp = self._call(prompt=prompt, max_tokens=max_tokens, seed=seed, logprobs=1, extra_body=extra, **args)
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
        neutral = self.sampling_args(SamplingConfig(temperature=0.0))  # no server default touches the scores
        extra = {**neutral.pop("extra_body"), "prompt_logprobs": 0}
        resp = self._call(prompt=list(prompt_token_ids) + list(completion_token_ids), max_tokens=1,
                          extra_body=extra, **neutral)
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
