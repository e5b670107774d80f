"""Teacher-forced sentence scores of given responses under any model: DAS's student side and the provenance
analysis's three models (method.md §5.2, §5.3a).

A **rendering** turns (question, response) into what a model is scored on: prompt ids, completion ids, and
each completion token's first character in the response (-1 for a token with no text in it):

* ``PlainRendering``: the model's chat template up to the assistant turn (``ChatTemplater.prompt_text``,
  whose overlap rule keeps a ``<think>`` the generation prompt already opened written once), the response
  verbatim, then the end-of-turn token: exactly how dasd trains a model and how DAS scores the student.
* ``HarmonyRendering`` (gpt-oss): the chat template's generation prompt (ending ``<|start|>assistant``), then
  the response as harmony messages, ``<|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant
  <|channel|>final<|message|>{answer}<|return|>`` (analysis only while the think block is open; final only
  when the response has no ``<think>``). Token positions come from ``parse_harmony``'s spans in the
  converted text, carried onto the response through their common non-whitespace characters.

``SentenceStore`` keeps one model's per-sentence log-probability sums of scored responses (Parquet parts,
written atomically, keyed by the response), so another threshold relabels without scoring and an interrupted
run resumes; ``score_responses`` fills it through an engine's ``score_batch``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from dasd.das import align
from dasd.das.scores import part_files, write_part
from dasd.das.segment import _TAG, whitespace_mask
from dasd.data.template import ChatTemplater
from dasd.text.harmony import HARMONY_TOKENS, encode_parts, parse_harmony
from dasd.text.think import THINK_CLOSE_TAG, THINK_OPEN_TAG
from dasd.utils.logging import get_logger

log = get_logger(__name__)

FORMATS = ("plain", "harmony")
GENERATION_END = "<|start|>assistant"  # how a harmony generation prompt ends
SCHEMA = pa.schema([("key", pa.string()), ("starts", pa.list_(pa.int32())), ("ends", pa.list_(pa.int32())),
                    ("sum", pa.list_(pa.float64())), ("num", pa.list_(pa.int32())),
                    ("total", pa.float64()), ("tokens", pa.int32()), ("unassigned", pa.int32())])


@dataclass(frozen=True)
class Forced:
    """What one model is scored on for one response."""

    prompt_ids: list[int]
    completion_ids: list[int]
    starts: np.ndarray  # (len(completion_ids),) int64: each token's first character in the response, or -1


class PlainRendering:
    """The model's own chat template (``ChatTemplater``), the response verbatim, the end-of-turn token."""

    kind = "plain"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None, end_of_turn: str = "auto") -> None:
        self.tokenizer = tokenizer
        self.templater = ChatTemplater(tokenizer, system_prompt=system_prompt, end_of_turn=end_of_turn)

    def identity(self) -> dict:
        return {"format": self.kind, "system_prompt": self.templater.system_prompt,
                "end_of_turn": self.templater.end_of_turn}

    def render(self, question: str, text: str) -> Forced:
        ids, starts = align.student_token_starts(self.tokenizer, text)
        prompt = self.tokenizer.encode(self.templater.prompt_text(question, text), add_special_tokens=False)
        return Forced(prompt, list(ids) + [self.templater.end_of_turn_id], np.append(starts, -1))


def _solid(text: str) -> np.ndarray:
    """Indices of the characters that are neither whitespace nor part of a think tag."""
    mask = ~whitespace_mask(text)
    for m in _TAG.finditer(text):
        mask[m.start():m.end()] = False
    return np.flatnonzero(mask)


def carry_positions(src: str, dst: str, positions: np.ndarray) -> np.ndarray:
    """Map character positions of ``src`` onto ``dst``, two renderings of one text that differ only in
    whitespace and think tags (-1 stays -1). A solid character (neither whitespace nor a tag's) goes to the
    same solid character of ``dst``; a position in the whitespace run just before one goes to that character
    (``align.owner_of_chars`` gives both to the same sentence); any other (a tag, whitespace before a tag or
    at the end) to -1, as it belongs to no sentence."""
    si, di = _solid(src), _solid(dst)
    if len(si) != len(di) or any(src[a] != dst[b] for a, b in zip(si.tolist(), di.tolist(), strict=True)):
        raise align.AlignmentError("the two renderings of the response differ in more than whitespace and think "
                                   "tags")
    positions = np.asarray(positions, np.int64)
    nonws = np.flatnonzero(~whitespace_mask(src))
    k = np.searchsorted(si, positions)  # the first solid character at or after each position
    first_solid = np.append(si, -1)[k]  # -1: none after it
    first_nonws = np.append(nonws, -2)[np.searchsorted(nonws, positions)]
    out = np.where((first_solid >= 0) & (first_solid == first_nonws), np.append(di, -1)[k], -1)
    return np.where(positions < 0, -1, out).astype(np.int64)


class HarmonyRendering:
    """gpt-oss's harmony rendering of a ``<think>``-form response (see the module docstring)."""

    kind = "harmony"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None,
                 chat_template_kwargs: dict | None = None) -> None:
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def identity(self) -> dict:
        return {"format": self.kind, "system_prompt": self.system_prompt,
                "chat_template_kwargs": self.chat_template_kwargs}

    def render(self, question: str, text: str) -> Forced:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        rendered = self.tokenizer.apply_chat_template(system + [{"role": "user", "content": question}], tokenize=False,
                                                      add_generation_prompt=True, **self.chat_template_kwargs)
        if not rendered.endswith(GENERATION_END):
            raise ValueError(f"format=harmony: the chat template's generation prompt must end with "
                             f"{GENERATION_END!r}, got ...{rendered[-40:]!r}")
        prompt = self.tokenizer.encode(rendered, add_special_tokens=False)
        start, end, message, channel, _, ret = HARMONY_TOKENS[:6]
        body = text.lstrip()
        if body.startswith(THINK_OPEN_TAG):
            reasoning, closed, answer = body[len(THINK_OPEN_TAG):].partition(THINK_CLOSE_TAG)
            parts = [channel, "analysis", message, reasoning.strip() if closed else reasoning.lstrip("\n")]
            if closed:
                parts += [end, start, "assistant", channel, "final", message, answer.strip(), ret]
        else:
            parts = [channel, "final", message, body.strip(), ret]
        completion = encode_parts(self.tokenizer, parts)
        converted = parse_harmony(completion, self.tokenizer)
        spans = align.teacher_token_starts(converted.output, completion, None, token_spans=converted.token_spans)
        return Forced(prompt, completion, carry_positions(converted.output, text, spans))


def build_rendering(fmt: str, tokenizer: PreTrainedTokenizerBase, *, system_prompt: str | None,
                    chat_template_kwargs: dict | None = None):
    if fmt == "plain":
        if chat_template_kwargs:
            raise ValueError("format=plain renders with dasd's training template, which takes no "
                             f"chat_template_kwargs (got {chat_template_kwargs})")
        return PlainRendering(tokenizer, system_prompt)
    if fmt == "harmony":
        return HarmonyRendering(tokenizer, system_prompt, chat_template_kwargs)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


@dataclass
class SentenceScores:
    """One model's scores of one response's sentences."""

    key: str
    spans: np.ndarray  # (n, 2)
    sum_logprob: np.ndarray
    num_tokens: np.ndarray
    total_logprob: float
    tokens: int  # completion tokens scored (the end tokens included)
    unassigned: int

    @property
    def probability(self) -> np.ndarray:
        return align.sentence_probability(self.sum_logprob, self.num_tokens)

    def row(self) -> dict:
        return {"key": self.key, "starts": self.spans[:, 0].tolist(), "ends": self.spans[:, 1].tolist(),
                "sum": self.sum_logprob.tolist(), "num": self.num_tokens.tolist(), "total": float(self.total_logprob),
                "tokens": int(self.tokens), "unassigned": int(self.unassigned)}

    @classmethod
    def from_row(cls, r: dict) -> SentenceScores:
        spans = np.stack([np.asarray(r["starts"], np.int64), np.asarray(r["ends"], np.int64)], axis=1) \
            if r["starts"] else np.zeros((0, 2), np.int64)
        return cls(r["key"], spans, np.asarray(r["sum"], np.float64), np.asarray(r["num"], np.int64),
                   float(r["total"]), int(r["tokens"]), int(r["unassigned"]))


class SentenceStore:
    """A folder of one model's sentence scores (``meta.json`` + ``part-NNNNN.parquet``), one row per response
    keyed by what was scored (question, response, segmentation)."""

    def __init__(self, folder: str | Path, meta: dict) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if not meta_file.exists():
            tmp = meta_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, meta_file)
        self.meta = json.loads(meta_file.read_text())

    def parts(self) -> list[Path]:
        return part_files(self.folder)

    def __iter__(self) -> Iterator[SentenceScores]:
        for p in self.parts():
            for r in pq.read_table(p).to_pylist():
                yield SentenceScores.from_row(r)

    def load(self) -> dict[str, SentenceScores]:
        return {s.key: s for s in self}

    def write(self, scores: Sequence[SentenceScores]) -> None:
        write_part(self.folder, [s.row() for s in scores], SCHEMA)


@dataclass(frozen=True)
class Response:
    """A response to score: its key, question, text and sentence spans (``segment(text)``)."""

    key: str
    question: str
    text: str
    spans: np.ndarray


def score_responses(responses: Sequence[Response], store: SentenceStore, rendering, engine_factory: Callable,
                    *, batch_size: int = 8, flush_every: int = 256, what: str = "model") -> tuple[dict, dict]:
    """Every response's ``SentenceScores`` under one model: from ``store`` where it has them, the rest scored
    through ``engine_factory()`` (built only if something is left) and written to the store in parts.
    Returns key -> scores and stats (from_store, scored, tokens, seconds, tokens_per_s)."""
    have = store.load()
    todo = [r for r in responses if r.key not in have]
    stats = {"from_store": len(responses) - len(todo), "scored": 0, "tokens": 0, "seconds": 0.0}
    if not todo:
        return {r.key: have[r.key] for r in responses}, stats
    t0 = time.perf_counter()
    engine = engine_factory()
    done: list[SentenceScores] = []
    try:
        for a in range(0, len(todo), batch_size):
            batch = todo[a:a + batch_size]
            forced = [rendering.render(r.question, r.text) for r in batch]
            lps = engine.score_batch([(f.prompt_ids, f.completion_ids) for f in forced])
            for r, f, lp in zip(batch, forced, lps, strict=True):
                owner = align.owner_of_chars(r.text, r.spans)
                agg = align.aggregate(f.starts, np.asarray(lp, np.float64), owner, len(r.spans))
                s = SentenceScores(r.key, np.asarray(r.spans, np.int64).reshape(-1, 2), agg.sum_logprob,
                                   agg.num_tokens, agg.total_logprob, len(f.completion_ids), agg.unassigned_tokens)
                have[r.key] = s
                done.append(s)
                stats["tokens"] += len(f.completion_ids)
            stats["scored"] += len(batch)
            if len(done) >= flush_every:
                store.write(done)
                done = []
            dt = time.perf_counter() - t0
            log.info("%s: scored %d/%d responses (%d tokens, %.0f tokens/s)", what, stats["scored"], len(todo),
                     stats["tokens"], stats["tokens"] / max(dt, 1e-9))
        store.write(done)
    finally:
        engine.close()
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["tokens_per_s"] = stats["tokens"] / max(stats["seconds"], 1e-9)
    return {r.key: have[r.key] for r in responses}, stats
