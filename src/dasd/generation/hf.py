"""HF transformers engine: batched sampling and chunked teacher-forced scoring on CPU or GPU (tiny and mid-size
models)."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from dasd.generation.batched import (
    SAMPLER,
    BatchedSampler,
    Job,
    TokenSampler,
    auto_batch_size,
    blas_rows_are_independent,
    install_rowwise_attention,
)
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

log = logging.getLogger(__name__)


class HFEngine(Engine):
    """Batched, KV-cached sampling with per-token logprobs (``dasd.generation.batched``: every sample depends
    only on its prompt, seed and settings, not on its batch), and a scorer whose memory is bounded by
    ``score_chunk_size × vocab`` logits (the full sequence × vocabulary is never materialised).

    Args:
        model: hub id or local HF directory.
        device: "auto" (CUDA if available), "cpu", "cuda", ...
        dtype: torch dtype name or "auto".
        attn_implementation: attention for scoring (sampling attends row by row, through the same kernels).
        score_chunk_size: positions whose logits are computed at once when scoring.
        batch_size: rows (samples) decoded at once; None: sized from free memory, at most
            ``batched.AUTO_BATCH_CAP``.
    """

    name = "hf"
    sampler = SAMPLER  # recorded with generated data: another sampler draws other samples from the same seeds

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
                 score_chunk_size: int = 1024, trust_remote_code: bool = False, batch_size: int | None = None,
                 progress: bool = False) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"engine.batch_size must be >= 1 or null (auto), got {batch_size}")
        self.model_name = model
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype,
                                                          attn_implementation=attn_implementation,
                                                          trust_remote_code=trust_remote_code).to(self.device).eval()
        install_rowwise_attention(self.model, attn_implementation)
        if self.device.type == "cpu" and not blas_rows_are_independent(self.model.config.get_text_config().hidden_size,
                                                                        torch.get_num_threads()):
            log.warning("this machine's BLAS gives a matmul row different results in batches of different sizes "
                        "(%d threads): samples may depend on their batch at float rounding level", torch.get_num_threads())
        self.score_chunk_size, self.batch_size, self.progress = score_chunk_size, batch_size, progress
        self._stop_ids = {i for i in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id)
                          for i in (i if isinstance(i, list) else [i]) if i is not None}

    @torch.inference_mode()
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[list[Sample]]:
        prompts = [render_prompt(self.tokenizer, r) for r in requests]
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"request {i} has an empty prompt: the HF engine needs at least one token")
        n = sampling.n
        jobs = [Job(prompt=tuple(p), max_tokens=request_max_tokens(r, sampling),
                    seeds=tuple(row_seed(request_seed(r, sampling, i), j) for j in range(n)),
                    out=tuple(i * n + j for j in range(n)))
                for i, (r, p) in enumerate(zip(requests, prompts, strict=True))]
        if not jobs:
            return []
        batch = self.batch_size or auto_batch_size(self.model, self.device,
                                                   max(len(j.prompt) + j.max_tokens for j in jobs), len(self.tokenizer))
        bar = tqdm(total=len(jobs) * n, desc="sample", unit="sample", disable=not self.progress)
        drawn = BatchedSampler(
            self.model, TokenSampler(sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p,
                                     sampling.repetition_penalty, sampling.logprob_mode),
            batch_size=batch, stop_ids=self._stop_ids, stop_hit=self._stop_hit(sampling.stop),
            pad_id=self.tokenizer.pad_token_id or 0, progress=bar.update).run(jobs)
        bar.close()
        return [[self._sample(p, drawn[k].tokens, drawn[k].logprobs, sampling) for k in job.out]
                for p, job in zip(prompts, jobs, strict=True)]

    def _stop_hit(self, stops: tuple[str, ...]):
        """Whether a row's text now contains a stop string: only its last tokens are decoded (a string of c
        characters spans at most 4c byte-level tokens)."""
        if not stops:
            return None
        window = 4 * max(len(s) for s in stops) + 4

        def hit(tokens: list[int]) -> bool:
            tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in stops)

        return hit

    def sampling_args(self, sampling: SamplingConfig) -> dict:
        """What the sampler applies: every parameter explicit (the model's generation_config, e.g. Qwen3's
        top_k=20, adds nothing); greedy (temperature 0) takes no sampling warpers."""
        greedy = sampling.temperature == 0
        warpers = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                   "min_p": sampling.min_p}
        return {"sampler": self.sampler, "do_sample": not greedy,
                **{k: None if greedy else v for k, v in warpers.items()},
                "repetition_penalty": sampling.repetition_penalty, "n": sampling.n,
                "stop_strings": list(sampling.stop) or None, "batch_size": self.batch_size or "auto"}

    def _sample(self, prompt: list[int], ids: list[int], lps: list[float], sampling: SamplingConfig) -> Sample:
        """Cut a returned row at its end (EOS or stop string; later positions are padding)."""
        end, reason = len(ids), "length"
        for k, t in enumerate(ids):
            if t in self._stop_ids:
                end, reason = k + 1, "stop"
                break
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        for stop in sampling.stop:
            if stop in text:
                end, reason = self._cut_at_stop(ids[:end], stop), "stop"
                text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
                break
        return Sample(text=text, token_ids=ids[:end], logprobs=lps[:end], finish_reason=reason,
                      prompt_token_ids=prompt, logprob_mode=sampling.logprob_mode)

    def _cut_at_stop(self, ids: list[int], stop: str) -> int:
        """The shortest prefix of ``ids`` whose text contains ``stop``."""
        for k in range(1, len(ids) + 1):
            if stop in self.tokenizer.decode(ids[:k], skip_special_tokens=True):
                return k
        return len(ids)

    @torch.inference_mode()
    def score(self, prompt_token_ids: list[int], completion_token_ids: list[int]) -> list[float]:
        """One forward pass for hidden states; logits and log-softmax only ``score_chunk_size`` rows at a time."""
        if not completion_token_ids:
            return []
        ids = torch.tensor([list(prompt_token_ids) + list(completion_token_ids)], device=self.device)
        hidden_TH = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
        head = self.model.get_output_embeddings()
        start = len(prompt_token_ids) - 1  # position predicting the first completion token
        targets = torch.tensor(completion_token_ids, device=self.device)
        out: list[float] = []
        for a in range(0, len(completion_token_ids), self.score_chunk_size):
            b = min(a + self.score_chunk_size, len(completion_token_ids))
            logits_CV = head(hidden_TH[start + a:start + b]).float()
            out += torch.log_softmax(logits_CV, dim=-1).gather(-1, targets[a:b, None]).squeeze(-1).tolist()
        return out

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
