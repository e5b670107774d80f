"""Token → sentence alignment across tokenizers (spec §5.2) and per-sentence log-probabilities (§2.3).

A token belongs to the sentence holding its **first character**; a token starting in the whitespace just
before a sentence belongs to that sentence; tokens starting anywhere else (a think tag, whitespace after
the last sentence of a region, a special token with no text) are unassigned. Token starts are character
offsets into the response text: the teacher's come from decoding its byte-level BPE tokens (or from the
harmony converter's ``token_spans``), the student's from the fast tokenizer's ``offset_mapping``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from dasd.das.segment import whitespace_mask
from dasd.text.harmony import char_positions, token_items


class AlignmentError(ValueError):
    """Tokens and text (or tokens and log-probabilities) do not line up."""


@dataclass
class SentenceLogprobs:
    """Per-sentence sums of token log-probabilities; tokens owned by no sentence are counted apart."""

    sum_logprob: np.ndarray  # float64 (n_sentences,)
    num_tokens: np.ndarray  # int64 (n_sentences,)
    unassigned_logprob: float
    unassigned_tokens: int
    total_logprob: float

    @property
    def probability(self) -> np.ndarray:
        """Geometric-mean token probability per sentence (NaN for a sentence with no tokens)."""
        return sentence_probability(self.sum_logprob, self.num_tokens)


def owner_of_chars(text: str, spans: np.ndarray) -> np.ndarray:
    """int32 array (len(text) + 1,): the sentence a token starting at each character belongs to, or -1.

    Span ``j`` owns its own characters and the whitespace-only run directly before it; position
    ``len(text)`` and everything else (think tags, whitespace before a tag or at the end) is -1.
    """
    n = len(text)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if len(spans) and (spans[0, 0] < 0 or spans[-1, 1] > n or np.any(spans[1:, 0] < spans[:-1, 1])):
        raise AlignmentError(f"spans must be sorted, disjoint and inside the text of length {n}")
    solid = ~whitespace_mask(text)
    # solid_end[i]: one past the last non-whitespace character before position i (0 if none)
    solid_end = np.concatenate([[0], np.maximum.accumulate(np.where(solid, np.arange(1, n + 1), 0))])
    first = solid_end[spans[:, 0]]  # start of the whitespace run before each span
    first[1:] = np.maximum(first[1:], spans[:-1, 1])
    label = np.arange(1, len(spans) + 1, dtype=np.int64)
    delta = np.zeros(n + 2, dtype=np.int64)
    np.add.at(delta, first, label)
    np.add.at(delta, spans[:, 1], -label)
    return (np.cumsum(delta[: n + 1]) - 1).astype(np.int32)


def byte_level_token_starts(token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> tuple[str, np.ndarray]:
    """Decode byte-level BPE tokens; return the text and each token's start offset (int64, -1 if no text).

    A token that begins inside a multi-byte character (continuation bytes) takes that character's offset.
    """
    items = token_items(list(token_ids), tokenizer)
    buf = bytearray()
    byte_start = np.full(len(items), -1, dtype=np.int64)
    for control, data, k in items:
        if control is None and data:
            byte_start[k] = len(buf)
            buf += data
    text, positions = char_positions(bytes(buf))
    pos = np.asarray(positions, dtype=np.int64)
    has = byte_start >= 0
    bs = byte_start[has]
    starts = np.full(len(items), -1, dtype=np.int64)
    # a byte that begins no character (a continuation byte) lies in the character started before it
    starts[has] = pos[bs] - (pos[bs + 1] == pos[bs])
    return text, starts


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.frombuffer(a[:n].encode("utf-32-le", "surrogatepass"), "<u4")
                          != np.frombuffer(b[:n].encode("utf-32-le", "surrogatepass"), "<u4"))
    return int(diff[0]) if len(diff) else n


def teacher_token_starts(output: str, token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase | None,
                         token_spans: Sequence[Sequence[int] | None] | None = None) -> np.ndarray:
    """Start offset in ``output`` of each teacher token (int64, -1 for tokens with no text in it).

    With ``token_spans`` (harmony records: ``[start, end]`` or None per token) the starts come from them; an
    empty span ``[a, a]`` (a token of continuation bytes only) starts at the character it completes,
    ``a - 1``. Otherwise the tokens are decoded and must reproduce ``output`` exactly.
    """
    if token_spans is not None:
        if len(token_spans) != len(token_ids):
            raise AlignmentError(f"{len(token_spans)} token_spans for {len(token_ids)} teacher tokens")
        starts = np.full(len(token_spans), -1, dtype=np.int64)
        for k, span in enumerate(token_spans):
            if span is not None:
                a, b = int(span[0]), int(span[1])
                if not 0 <= a <= b <= len(output):
                    raise AlignmentError(f"token {k} span {[a, b]} is outside the output of length {len(output)}")
                starts[k] = a - 1 if a == b and a > 0 else a
        return starts
    if tokenizer is None:
        raise AlignmentError("need a tokenizer to decode teacher tokens when token_spans is not given")
    text, starts = byte_level_token_starts(token_ids, tokenizer)
    if text != output:
        i = _first_difference(text, output)
        raise AlignmentError(f"decoded teacher tokens differ from the output at character {i} "
                             f"(decoded {len(text)} chars, output {len(output)}): "
                             f"decoded {text[max(0, i - 20):i + 20]!r} vs output {output[max(0, i - 20):i + 20]!r}")
    return starts


def student_token_starts(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], np.ndarray]:
    """Tokenize ``text`` (no special tokens added); the ids and each token's start offset (-1: special)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    starts = np.where(np.isin(np.asarray(ids, dtype=np.int64), list(special)), -1, offsets[:, 0])
    return ids, starts.astype(np.int64)


def aggregate(starts: np.ndarray, logprobs: np.ndarray, owner: np.ndarray, n_sentences: int) -> SentenceLogprobs:
    """Sum token log-probabilities per sentence: token k goes to ``owner[starts[k]]`` (unassigned if -1)."""
    starts = np.asarray(starts, dtype=np.int64)
    logprobs = np.asarray(logprobs, dtype=np.float64)
    owner = np.asarray(owner)
    if starts.shape != logprobs.shape or starts.ndim != 1:
        raise AlignmentError(f"{starts.shape} token starts but {logprobs.shape} log-probabilities")
    if len(owner) == 0:
        raise AlignmentError("owner is empty; it has len(text) + 1 entries")
    if len(starts) and starts.max() >= len(owner):
        raise AlignmentError(f"a token starts at {starts.max()}, past the text (owner has {len(owner)} entries)")
    if len(owner) and owner.max() >= n_sentences:
        raise AlignmentError(f"owner names sentence {owner.max()} but n_sentences is {n_sentences}")
    sentence = np.where(starts >= 0, owner[np.maximum(starts, 0)], -1)
    mine = sentence >= 0
    return SentenceLogprobs(
        sum_logprob=np.bincount(sentence[mine], weights=logprobs[mine], minlength=n_sentences).astype(np.float64),
        num_tokens=np.bincount(sentence[mine], minlength=n_sentences).astype(np.int64),
        unassigned_logprob=float(logprobs[~mine].sum()),
        unassigned_tokens=int((~mine).sum()),
        total_logprob=float(logprobs.sum()),
    )


def sentence_probability(sum_logprob: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
    """``exp(sum / num)`` per sentence: the geometric-mean token probability, NaN where ``num_tokens == 0``."""
    sum_logprob = np.asarray(sum_logprob, dtype=np.float64)
    num = np.asarray(num_tokens)
    mean = np.divide(sum_logprob, num, out=np.full(sum_logprob.shape, np.nan), where=num > 0)
    return np.exp(mean)
