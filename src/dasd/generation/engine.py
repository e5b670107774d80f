"""The engine interface shared by every generator and scorer.

Log-probability semantics are explicit: ``logprob_mode="raw"`` (default) gives log-probabilities of the
model's untempered distribution (log-softmax of the raw logits), whatever the sampling temperature;
``"processed"`` gives them after temperature and top-p (the distribution actually sampled from). Every
sample records which one it carries.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

LOGPROB_MODES = ("raw", "processed")
FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``seed``: base seed; request i gets ``seed + i`` unless it carries its own seed.

    Every engine applies every field, explicitly: a server (vLLM, SGLang) or an HF model would otherwise fill
    in the model's generation_config defaults (Qwen3: top_k=20). The defaults are neutral: ``top_k=0`` (off:
    the whole vocabulary), ``min_p=0`` (off), ``repetition_penalty=1`` (off).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    logprob_mode: str = "raw"
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"sampling: n ({self.n}) and max_tokens ({self.max_tokens}) must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"sampling: temperature {self.temperature} must be >= 0 and top_p {self.top_p} in (0, 1]")
        if self.top_k < 0 or not 0 <= self.min_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"sampling: top_k {self.top_k} must be >= 0 (0: off), min_p {self.min_p} in [0, 1] "
                             f"(0: off) and repetition_penalty {self.repetition_penalty} > 0 (1: off)")
        if self.logprob_mode not in LOGPROB_MODES:
            raise ValueError(f"sampling.logprob_mode must be one of {LOGPROB_MODES}, got {self.logprob_mode!r}")


@dataclass(frozen=True)
class Request:
    """A prompt: chat ``messages`` (rendered with the model's own chat template) or raw ``prompt_token_ids``
    (e.g. a rendered prompt plus a student prefix the model must continue)."""

    messages: tuple[dict, ...] | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    seed: int | None = None  # overrides SamplingConfig.seed + index (stable per question, e.g. for resume)
    max_tokens: int | None = None  # overrides SamplingConfig.max_tokens (a per-question budget)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt_token_ids is None):
            raise ValueError("a Request takes exactly one of messages or prompt_token_ids")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"a Request's max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Sample:
    """One generated continuation: text, token ids, the log-probability of each sampled token."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (end of turn, EOS or a stop string) or "length" (hit max_tokens)
    prompt_token_ids: list[int]
    logprob_mode: str

    def __post_init__(self) -> None:
        assert len(self.token_ids) == len(self.logprobs), "one logprob per sampled token"
        assert self.finish_reason in FINISH_REASONS, self.finish_reason


def request_seed(request: Request, sampling: SamplingConfig, index: int) -> int | None:
    """The seed of request ``index`` of a call: its own, else the base seed + index."""
    if request.seed is not None:
        return request.seed
    return None if sampling.seed is None else sampling.seed + index


def row_seed(seed: int | None, sample: int) -> int:
    """The generator seed of sample ``sample`` (of n) of a request seeded ``seed``: a stable 63-bit mix, so
    that no two (request, sample) pairs share a random stream (``None``: a fresh random seed)."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    return int.from_bytes(hashlib.blake2b(f"{seed}/{sample}".encode(), digest_size=8).digest(), "little") >> 1


def request_max_tokens(request: Request, sampling: SamplingConfig) -> int:
    """The token budget of a request: its own, else the sampling config's."""
    return sampling.max_tokens if request.max_tokens is None else request.max_tokens


def render_prompt(tokenizer: PreTrainedTokenizerBase, request: Request) -> list[int]:
    """Token ids of a request's prompt: its ids as given, or its messages through the chat template."""
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    text = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True,
                                         **request.chat_template_kwargs)
    return tokenizer.encode(text, add_special_tokens=False)


class Engine(ABC):
    """Generate from and score with one model."""

    name: str = "engine"
    sampler: str | None = None  # the sampling scheme, where it is the engine's own (recorded with generated data)
    model_name: str
    tokenizer: PreTrainedTokenizerBase

    @abstractmethod
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[list[Sample]]:
        """``sampling.n`` samples for each request, in request order."""

    @abstractmethod
    def score(self, prompt_token_ids: list[int], completion_token_ids: list[int]) -> list[float]:
        """Teacher-forced log-probability (raw distribution) of each completion token given everything before it."""

    def score_batch(self, items: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """``score`` for many (prompt, completion) pairs; engines that batch (vLLM) override it."""
        return [self.score(prompt, completion) for prompt, completion in items]

    def sampling_args(self, sampling: SamplingConfig) -> dict:
        """The sampling parameters this engine hands its backend for ``sampling`` (recorded in run manifests)."""
        return dict(sampling.__dict__)

    def close(self) -> None:  # noqa: B027 (optional hook: engines without resources keep the default)
        """Release the model (memory, processes)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
