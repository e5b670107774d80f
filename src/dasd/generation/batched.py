"""Batched sampling for HF causal LMs: one KV-cached decode loop for many requests, each row with its own seed.

A row's tokens and log-probabilities depend only on (model, prompt, seed, sampling settings), never on what
else is in the batch or how big it is. Three things make that true (``tests/test_generation_batched.py``
checks the result bit for bit on CPU in float32):

1. **Row-wise attention.** Every row attends over its own keys only: :func:`rowwise_attention` (registered
   with transformers' ``AttentionInterface``) slices each row's valid span out of the shared cache and calls
   attention by plain matmuls on it (``_attend``), so no padding enters a softmax or a sum. Rows that share a
   start (the n samples of one request, prompts of equal length) share one call.
2. **At least ``min_rows()`` rows in every forward.** CPU BLAS takes another kernel (another summation
   order) for a thread's share of rows when it is small (MKL on 2 threads: fewer than 12 rows); a batch that
   shrinks below the floor is filled with idle rows. :func:`blas_rows_are_independent` checks the premise
   on the running machine (the engine warns once where it fails).
3. **Gumbel-max sampling with a generator per row**: ``argmax(scores + Gumbel noise)``, the noise drawn from
   the row's own ``torch.Generator``, is an exact sample of ``softmax(scores)`` that no other row can move.

The loop batches continuously: requests join as soon as enough rows are free (their prompts prefilled
together, the cache merged right-aligned), finished rows stop costing attention at once and are compacted
away when they outnumber the live ones. On CUDA the samples are reproducible for a given batch, but GPU
matmul kernels are not row-invariant, so there the batch can move them at float rounding level.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PAGE = 256  # cache positions per attention page in decode (a row's result depends on it: part of SAMPLER)
ROWS_PER_THREAD = 8  # min_rows(): rows per forward per BLAS thread (tests/test_generation_batched.py)
ROWWISE = "dasd_rowwise"  # attention implementation name prefix: f"{ROWWISE}_{fallback}"
SAMPLER = "rowwise-gumbel/1"  # names this sampling scheme in generated data (a seed draws other samples elsewhere)
AUTO_BATCH_CAP = 256  # the auto batch size never exceeds this (benchmarks/generation_throughput.py)


# ------------------------------------------------------------------------------------------- attention


@dataclass
class PrefillSpans:
    """Prefill of right-padded prompts: ``groups`` of consecutive rows ``[a, b)`` whose prompts are ``length``
    tokens long. Rows in no group (idle rows) get a zero attention output."""

    groups: list[tuple[int, int, int]]


@dataclass
class DecodeSpans:
    """One decode step: row r sees cache positions ``[0, lengths[r])`` (its own tokens, left-aligned)."""

    lengths: torch.Tensor  # [rows], long
    _bias: dict = field(default_factory=dict)  # built by the first layer, reused by the others

    def reaching(self, start: int) -> int:
        """How many leading rows to compute a page at ``start`` for: up to the last row whose keys reach it
        (the sampler keeps rows ordered by length, so the rest are few)."""
        key = ("reach", start)
        if key not in self._bias:
            reach = (self.lengths > start).nonzero()
            self._bias[key] = int(reach.max()) + 1 if len(reach) else 0
        return self._bias[key]

    def bias(self, start: int, kv_heads: int, sliding_window: int | None, dtype) -> torch.Tensor:
        """``[rows * kv_heads, 1, PAGE]`` for the rows ``reaching(start)``: 0 where a row sees the page's
        position, -inf elsewhere."""
        key = (start, kv_heads, sliding_window, dtype)
        if key not in self._bias:
            n = self.lengths[:self.reaching(start)].view(-1, 1)
            pos = torch.arange(start, start + PAGE, device=n.device).view(1, -1)
            hidden = pos >= n
            if sliding_window is not None:
                hidden |= pos <= n - 1 - sliding_window
            bias = torch.zeros(hidden.shape, dtype=dtype, device=n.device).masked_fill_(hidden, float("-inf"))
            self._bias[key] = bias.repeat_interleave(kv_heads, dim=0).unsqueeze(1)
        return self._bias[key]


def rowwise_attention(fallback: Callable) -> Callable:
    """An attention function that runs ``fallback`` (sdpa, eager, ...) for ordinary masks and row-wise
    attention when handed :class:`PrefillSpans` or :class:`DecodeSpans` (the batched sampler's loop)."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
                  **kwargs):
        if not isinstance(attention_mask, (PrefillSpans, DecodeSpans)):
            return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                            sliding_window=sliding_window, **kwargs)
        if getattr(module, "sinks", None) is not None or kwargs.get("s_aux") is not None:
            raise NotImplementedError(f"{type(module).__name__}: attention sinks are not supported by the HF "
                                      "engine's batched sampler; use engine=vllm for this model")
        scale = scaling or query.shape[-1] ** -0.5
        if isinstance(attention_mask, DecodeSpans):
            out_BHTD = _paged_decode(query, key, value, attention_mask, scale, sliding_window)
        else:
            out_BHTD = query.new_zeros(query.shape)
            for a, b, n in attention_mask.groups:
                out_BHTD[a:b, :, :n] = _prefill(query[a:b, :, :n], key[a:b, :, :n], value[a:b, :, :n], scale,
                                                sliding_window)
        return out_BHTD.transpose(1, 2).contiguous(), None

    return attention


def _prefill(q_BHTD, k_BKTD, v_BKTD, scale: float, sliding_window: int | None) -> torch.Tensor:
    """Causal attention of rows that all hold exactly ``T`` prompt tokens, by plain matmuls: unlike
    ``scaled_dot_product_attention``, whose CPU kernels split work by batch size, a row's result does not
    depend on how many rows share the call."""
    B, H, T, D = q_BHTD.shape
    K = k_BKTD.shape[1]
    q_BKGD = q_BHTD.reshape(B, K, (H // K) * T, D)  # query head h reads key head h // (H / K), as repeat_kv
    scores_BKGT = torch.matmul(q_BKGD, k_BKTD.transpose(-1, -2)) * scale
    i = torch.arange(T, device=q_BHTD.device)
    hidden_TT = i[None, :] > i[:, None]  # key j visible from query i when j <= i (and i - j < sliding_window)
    if sliding_window is not None:
        hidden_TT |= i[None, :] <= i[:, None] - sliding_window
    scores_BKGT = scores_BKGT.masked_fill(hidden_TT.repeat(H // K, 1), float("-inf"))
    probs_BKGT = torch.softmax(scores_BKGT.float(), dim=-1).to(v_BKTD.dtype)
    return torch.matmul(probs_BKGT, v_BKTD).reshape(B, H, T, D)


def _paged_decode(q_BH1D, k_BKCD, v_BKCD, spans: DecodeSpans, scale: float,
                  sliding_window: int | None) -> torch.Tensor:
    """One query per row over its first ``lengths[r]`` cache positions, in pages of ``PAGE`` positions combined
    in order (online softmax). Every row's pages sit at the same buffer positions and have the same shape
    whatever the batch, so its result depends on its own keys only; a page past a row's length adds exactly
    nothing (weight 0). Batched matmuls over (row, key head): each row's product is its own."""
    B, H, _, D = q_BH1D.shape
    K, C = k_BKCD.shape[1], k_BKCD.shape[2]
    q_NGD = q_BH1D.reshape(B * K, H // K, D)  # N = rows x key heads; query head h reads key head h // (H / K)
    k_NCD, v_NCD = k_BKCD.reshape(B * K, C, D), v_BKCD.reshape(B * K, C, D)
    m = total = o = None
    for start in range(0, int(spans.lengths.max()), PAGE):
        n = spans.reaching(start) * K  # rows past it do not reach this page: skipping it is exact
        bias = spans.bias(start, K, sliding_window, torch.float32)
        k_NPD, v_NPD = k_NCD[:n, start:start + PAGE], v_NCD[:n, start:start + PAGE]
        s_NGP = torch.baddbmm(bias, q_NGD[:n].float(), k_NPD.float().transpose(1, 2), alpha=scale)
        m_p = s_NGP.amax(-1, keepdim=True)  # -inf: a page the row does not reach
        e_NGP = torch.exp(s_NGP - torch.where(torch.isinf(m_p), torch.zeros_like(m_p), m_p))
        total_p = e_NGP.sum(-1, keepdim=True)
        o_p = torch.bmm(e_NGP.to(v_NPD.dtype), v_NPD).float()
        if m is None:  # every row reaches the first page
            m, total, o = m_p, total_p, o_p
            continue
        m_new = torch.maximum(m[:n], m_p)  # an unreached page: m_new = m, a = 1, b = 0 (exact no-op)
        a, b = torch.exp(m[:n] - m_new), torch.exp(m_p - m_new)
        m[:n], total[:n], o[:n] = m_new, total[:n] * a + total_p * b, o[:n] * a + o_p * b
    return (o / total).to(q_BH1D.dtype).reshape(B, H, 1, D)


def install_rowwise_attention(model: torch.nn.Module, fallback: str) -> None:
    """Switch ``model`` to row-wise-capable attention: ``fallback`` (its usual implementation) for every
    ordinary call (scoring, training-style forwards), row-wise attention inside the batched sampler."""
    name = f"{ROWWISE}_{fallback}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, rowwise_attention(ALL_ATTENTION_FUNCTIONS[fallback]))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[fallback])
    model.set_attn_implementation(name)


# ------------------------------------------------------------------------------------------- caches


class PrefillCache:
    """Keeps a prefill's keys and values ``[rows, kv_heads, T, head_dim]`` per layer, to be copied into slots."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        self.keys.append(key_states)
        self.values.append(value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


class SlotCache:
    """Preallocated key/value buffers ``[slots, kv_heads, capacity, head_dim]`` per layer; slot r holds its
    row's tokens at positions ``[0, lengths[r])`` (left-aligned), and a decode step writes each row's new
    token at ``lengths[r]``."""

    def __init__(self, slots: int, capacity: int, device) -> None:
        self.slots, self.capacity = slots, -(-capacity // PAGE) * PAGE  # whole pages: every page has PAGE keys
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._rows = torch.arange(slots, device=device)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if layer_idx == len(self.keys):
            B, K, _, D = key_states.shape
            self.keys.append(key_states.new_zeros(B, K, self.capacity, D))
            self.values.append(value_states.new_zeros(B, K, self.capacity, value_states.shape[-1]))
        self.keys[layer_idx][self._rows, :, self.lengths] = key_states[:, :, 0]
        self.values[layer_idx][self._rows, :, self.lengths] = value_states[:, :, 0]
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.lengths.max())

    def fill(self, slots: list[int], prefill: PrefillCache, rows: list[int], lengths: list[int]) -> None:
        """Copy prefill rows ``rows`` into ``slots``."""
        dst = torch.tensor(slots, device=self._rows.device)
        src = torch.tensor(rows, device=self._rows.device)
        width = prefill.keys[0].shape[2]
        for layer, (k, v) in enumerate(zip(prefill.keys, prefill.values, strict=True)):
            if layer == len(self.keys):
                self.keys.append(k.new_zeros(self.slots, k.shape[1], self.capacity, k.shape[3]))
                self.values.append(v.new_zeros(self.slots, v.shape[1], self.capacity, v.shape[3]))
            self.keys[layer][dst, :, :width] = k.index_select(0, src)
            self.values[layer][dst, :, :width] = v.index_select(0, src)
        self.lengths[dst] = torch.tensor(lengths, device=self._rows.device)

    def grow(self, slots: int) -> SlotCache:
        """The same cache with ``slots`` slots (new ones empty)."""
        out = SlotCache(slots, self.capacity, self._rows.device)
        extra = slots - self.slots
        out.keys = [torch.cat([k, k.new_zeros(extra, *k.shape[1:])]) for k in self.keys]
        out.values = [torch.cat([v, v.new_zeros(extra, *v.shape[1:])]) for v in self.values]
        out.lengths[:self.slots] = self.lengths
        return out

    def keep(self, slots: list[int]) -> SlotCache:
        """A smaller cache holding only ``slots`` (in that order)."""
        out = SlotCache(len(slots), self.capacity, self._rows.device)
        index = torch.tensor(slots, device=self._rows.device)
        out.keys = [k.index_select(0, index) for k in self.keys]
        out.values = [v.index_select(0, index) for v in self.values]
        out.lengths = self.lengths.index_select(0, index)
        return out


# ------------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Job:
    """One prompt and its samples: ``seeds[j]`` seeds sample j; results go to ``out[j]``."""

    prompt: tuple[int, ...]
    max_tokens: int
    seeds: tuple[int, ...]
    out: tuple[int, ...]


@dataclass
class Row:
    """One sample being drawn."""

    out: int
    generator: torch.Generator
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt: tuple[int, ...] = ()


@dataclass
class Drawn:
    """A finished sample: its tokens (ending at the end-of-turn token, a stop string or the budget)."""

    tokens: list[int]
    logprobs: list[float]


class TokenSampler:
    """Logits -> (token, log-probability) per row, with transformers' own logits processors in the order
    ``generate`` applies them (repetition penalty; then temperature, top-k, top-p, min-p when sampling)."""

    def __init__(self, temperature: float, top_p: float, top_k: int, min_p: float, repetition_penalty: float,
                 logprob_mode: str) -> None:
        self.greedy = temperature == 0
        self.penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1 else None
        warpers = [] if self.greedy else [
            *([TemperatureLogitsWarper(temperature)] if temperature != 1 else []),
            *([TopKLogitsWarper(top_k)] if top_k else []),
            *([TopPLogitsWarper(top_p)] if top_p < 1 else []),
            *([MinPLogitsWarper(min_p)] if min_p else [])]
        self.warpers = LogitsProcessorList(warpers)
        self.raw = logprob_mode == "raw"

    def __call__(self, logits_BV: torch.Tensor, rows: Sequence[Row]) -> tuple[list[int], list[float]]:
        logits_BV = logits_BV.float()
        scores_BV = logits_BV
        if self.penalty is not None:
            scores_BV = self.penalty(self._history(rows, logits_BV.device), scores_BV)
        if self.warpers:  # temperature, top-k, top-p and min-p read the scores only
            scores_BV = self.warpers(None, scores_BV)
        if self.greedy:
            tokens_B = scores_BV.argmax(-1)
        else:
            noise_BV = torch.stack([torch.rand(scores_BV.shape[-1], generator=r.generator, device=scores_BV.device)
                                    for r in rows])
            tokens_B = (scores_BV - torch.log(-torch.log(noise_BV))).argmax(-1)
        lp_BV = torch.log_softmax(logits_BV if self.raw else scores_BV, dim=-1)
        return tokens_B.tolist(), lp_BV.gather(-1, tokens_B[:, None]).squeeze(-1).tolist()

    @staticmethod
    def _history(rows: Sequence[Row], device) -> torch.Tensor:
        """Prompt + sampled tokens per row, left-filled with the row's first token (a repeat penalises
        nothing new), as the processors' ``input_ids``."""
        seqs = [list(r.prompt) + r.tokens for r in rows]
        width = max(len(s) for s in seqs)
        return torch.tensor([[s[0]] * (width - len(s)) + s for s in seqs], device=device)


def min_rows(device: torch.device | str = "cpu") -> int:
    """Rows every forward has at least on CPU: 16, or 8 per torch thread where there are more than 2 (on CUDA
    matmuls are not row-invariant anyway: 1)."""
    return max(16, ROWS_PER_THREAD * torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


@functools.cache
def blas_rows_are_independent(hidden: int, threads: int, up_to: int = 160) -> bool:
    """Whether, on this machine's float32 matmul with ``threads`` threads, every row of an ``m x hidden``
    by ``hidden x 3 hidden`` product is the same as in a bigger product, for m from ``min_rows()`` to ``up_to``."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(up_to, hidden, generator=g), torch.randn(3 * hidden, hidden, generator=g)
    full = torch.nn.functional.linear(x, w)
    return all(torch.equal(torch.nn.functional.linear(x[:m], w), full[:m]) for m in range(min_rows(), up_to))


class BatchedSampler:
    """Draws samples for many jobs with at most ``batch_size`` rows decoding at once, each in a slot of one
    :class:`SlotCache`. Jobs join whenever enough slots are free (their prompts prefilled together).

    Args:
        model: an HF causal LM whose attention was switched by :func:`install_rowwise_attention`.
        stop_ids: token ids that end a sample (kept as its last token).
        stop_hit: ``(tokens) -> bool``: whether a row's text now contains a stop string (None: no strings).
        pad_id: the id fed at padded prompt positions and idle slots (never attended by a live row).
        progress: called with 1 per finished sample.
    """

    def __init__(self, model, sampler: TokenSampler, *, batch_size: int, stop_ids: set[int],
                 stop_hit: Callable[[list[int]], bool] | None, pad_id: int,
                 progress: Callable[[int], object] | None = None) -> None:
        self.model, self.sampler, self.batch_size = model, sampler, max(1, batch_size)
        self.stop_ids, self.stop_hit, self.pad_id, self.progress = stop_ids, stop_hit, pad_id, progress
        self.device = next(model.parameters()).device
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()

    def run(self, jobs: list[Job]) -> dict[int, Drawn]:
        results: dict[int, Drawn] = {}
        if not jobs:
            return results
        pending = deque(sorted(jobs, key=lambda j: -len(j.prompt)))  # long prompts first, equal ones together
        self.min_rows = min_rows(self.device)
        slots: list[Row | None] = [None] * max(self.min_rows, min(self.batch_size, sum(len(j.seeds) for j in jobs)))
        cache = SlotCache(len(slots), max(len(j.prompt) + j.max_tokens for j in jobs), self.device)
        while pending or any(slots):
            free = [i for i, r in enumerate(slots) if r is None]
            live = len(slots) - len(free)
            if pending and (live == 0 or len(free) >= max(len(pending[0].seeds), len(slots) // 8)):
                admitted, room = [], len(free)
                while pending and (len(pending[0].seeds) <= room or not admitted and live == 0):
                    room -= len(pending[0].seeds)
                    admitted.append(pending.popleft())
                if room < 0:  # one job with more samples than slots: grow
                    cache, slots = cache.grow(len(slots) - room), slots + [None] * -room
                    free = [i for i, r in enumerate(slots) if r is None]
                self._admit(admitted, slots, free, cache, results)
                lengths = cache.lengths.tolist()
                order = sorted(range(len(slots)), key=lambda i: -lengths[i] if slots[i] else 1)
                if order != list(range(len(order))):  # longest first (see reaching()); a copy only when it reorders
                    cache, slots = cache.keep(order), [slots[i] for i in order]
            elif not pending and len(slots) > self.min_rows and 2 * live <= len(slots):
                keep = [i for i, r in enumerate(slots) if r is not None]
                keep += [i for i, r in enumerate(slots) if r is None][:max(0, self.min_rows - len(keep))]
                cache, slots = cache.keep(keep), [slots[i] for i in keep]
            if any(slots):
                self._step(slots, cache, results)
        return results

    def _step(self, slots: list[Row | None], cache: SlotCache, results: dict[int, Drawn]) -> None:
        """Feed every live row its last token; idle slots are fed ``pad_id`` at position 0."""
        live = torch.tensor([r is not None for r in slots], device=self.device)
        cache.lengths.masked_fill_(~live, 0)
        ids = torch.tensor([[r.tokens[-1] if r else self.pad_id] for r in slots], device=self.device)
        hidden = self.decoder(input_ids=ids, position_ids=cache.lengths[:, None].clone(), past_key_values=cache,
                              attention_mask=_masks(DecodeSpans(cache.lengths + 1)), use_cache=True).last_hidden_state
        cache.lengths += 1
        self._sample(self.head(hidden[:, -1]), slots, list(range(len(slots))), results)

    def _sample(self, logits_BV: torch.Tensor, slots: list[Row | None], which: list[int],
                results: dict[int, Drawn]) -> None:
        """Sample the next token of ``slots[i]`` from ``logits_BV[k]`` for the k-th i of ``which``; finished
        rows leave their slot."""
        pairs = [(k, i) for k, i in enumerate(which) if slots[i] is not None]
        index = torch.tensor([k for k, _ in pairs], device=logits_BV.device)
        tokens, logprobs = self.sampler(logits_BV.index_select(0, index), [slots[i] for _, i in pairs])
        for (_, i), t, lp in zip(pairs, tokens, logprobs, strict=True):
            r = slots[i]
            r.tokens.append(t)
            r.logprobs.append(lp)
            if t in self.stop_ids or len(r.tokens) >= r.max_tokens or (self.stop_hit and self.stop_hit(r.tokens)):
                results[r.out] = Drawn(r.tokens, r.logprobs)
                slots[i] = None
                if self.progress:
                    self.progress(1)

    def _admit(self, jobs: list[Job], slots: list[Row | None], free: list[int], cache: SlotCache,
               results: dict[int, Drawn]) -> None:
        """Prefill ``jobs``' prompts together (right-padded, at least ``min_rows()`` rows), sample each job's
        first tokens, and copy the surviving rows' keys and values into free slots."""
        width, n_rows = max(len(j.prompt) for j in jobs), max(len(jobs), self.min_rows)
        ids = [list(j.prompt) + [self.pad_id] * (width - len(j.prompt)) for j in jobs]
        ids += [[self.pad_id] * width] * (n_rows - len(jobs))
        groups: list[tuple[int, int, int]] = []
        for k, j in enumerate(jobs):  # jobs arrive sorted by length: equal lengths are neighbours
            if groups and groups[-1][2] == len(j.prompt):
                groups[-1] = (groups[-1][0], k + 1, len(j.prompt))
            else:
                groups.append((k, k + 1, len(j.prompt)))
        prefill = PrefillCache()
        hidden = self.decoder(input_ids=torch.tensor(ids, device=self.device),
                              position_ids=torch.arange(width, device=self.device).expand(n_rows, width),
                              past_key_values=prefill, attention_mask=_masks(PrefillSpans(groups)),
                              use_cache=True).last_hidden_state
        last = torch.tensor([len(j.prompt) - 1 for j in jobs] + [0] * (n_rows - len(jobs)), device=self.device)
        logits_BV = self.head(hidden[torch.arange(n_rows, device=self.device), last])
        rows, source, targets = [], [], []
        for k, job in enumerate(jobs):
            for seed, out in zip(job.seeds, job.out, strict=True):
                gen = torch.Generator(device=self.device).manual_seed(seed)
                rows.append(Row(out=out, generator=gen, max_tokens=job.max_tokens, prompt=job.prompt))
                source.append(k)
        for slot, row in zip(free, rows, strict=False):
            slots[slot] = row
            targets.append(slot)
        self._sample(logits_BV.index_select(0, torch.tensor(source, device=self.device)), slots, targets, results)
        alive = [(slot, source[n]) for n, slot in enumerate(targets) if slots[slot] is not None]
        if alive:
            cache.fill([s for s, _ in alive], prefill, [k for _, k in alive],
                       [len(jobs[k].prompt) for _, k in alive])


def _masks(spans) -> dict:
    """The per-layer-type mask mapping a decoder accepts as prepared (no mask is built)."""
    return {"full_attention": spans, "sliding_attention": spans}


def auto_batch_size(model, device: torch.device, longest: int, vocab: int, cap: int = AUTO_BATCH_CAP) -> int:
    """Rows to decode at once: half of the free memory over one row's cache (``longest`` positions) and its
    per-step logits buffers, at most ``cap``."""
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    per_row = 2 * cfg.num_hidden_layers * heads * head_dim * longest * elem * 2 + 8 * vocab * 4
    return max(1, min(cap, int(0.5 * free_memory(device) / per_row)))


def free_memory(device: torch.device) -> int:
    """Bytes free for the sampler: CUDA's free memory, else the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
