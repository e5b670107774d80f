"""HF transformers engine: sampling and chunked teacher-forced scoring on CPU or GPU (tiny and mid-size models)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

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


class HFEngine(Engine):
    """``AutoModelForCausalLM.generate`` with per-token logprobs, and a scorer whose memory is bounded by
    ``score_chunk_size × vocab`` logits (the full sequence × vocabulary is never materialised).

    Args:
        model: hub id or local HF directory.
        device: "auto" (CUDA if available), "cpu", "cuda", ...
        dtype: torch dtype name or "auto".
        score_chunk_size: positions whose logits are computed at once when scoring.
    """

    name = "hf"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", attn_implementation: str = "sdpa",
                 score_chunk_size: int = 1024, trust_remote_code: bool = False) -> None:
        self.model_name = model
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype,
                                                          attn_implementation=attn_implementation,
                                                          trust_remote_code=trust_remote_code).to(self.device).eval()
        self.score_chunk_size = score_chunk_size
        self._stop_ids = {i for i in (self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id)
                          for i in (i if isinstance(i, list) else [i]) if i is not None}

    @torch.inference_mode()
    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[list[Sample]]:
        return [self._generate_one(render_prompt(self.tokenizer, r), sampling, request_seed(r, sampling, i),
                                   request_max_tokens(r, sampling))
                for i, r in enumerate(requests)]

    def _generate_one(self, prompt: list[int], sampling: SamplingConfig, seed: int | None,
                      max_tokens: int) -> list[Sample]:
        if seed is not None:
            torch.manual_seed(seed)
        out = self.model.generate(
            torch.tensor([prompt], device=self.device), max_new_tokens=max_tokens, **self.sampling_args(sampling),
            return_dict_in_generate=True, output_logits=True, output_scores=True, tokenizer=self.tokenizer,
            eos_token_id=sorted(self._stop_ids), pad_token_id=self.tokenizer.pad_token_id, use_cache=True)
        steps = out.logits if sampling.logprob_mode == "raw" else out.scores  # per step: [n, vocab]
        logprobs_NS = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1)  # [n, S, V]
        new_NS = out.sequences[:, len(prompt):]
        token_lp = logprobs_NS.gather(-1, new_NS.unsqueeze(-1)).squeeze(-1)
        return [self._sample(prompt, new_NS[i].tolist(), token_lp[i].tolist(), sampling) for i in range(sampling.n)]

    def sampling_args(self, sampling: SamplingConfig) -> dict:
        """``generate`` keyword arguments: every parameter explicit, so the model's generation_config (e.g.
        Qwen3's top_k=20) adds nothing. Greedy (temperature 0) takes no sampling warpers."""
        greedy = sampling.temperature == 0
        warpers = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                   "min_p": sampling.min_p}
        return {"do_sample": not greedy, **{k: None if greedy else v for k, v in warpers.items()},
                "repetition_penalty": sampling.repetition_penalty, "num_return_sequences": sampling.n,
                "stop_strings": list(sampling.stop) or None}

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
