"""Response filters applied to every teacher candidate before DAS (spec §4.3).

Filters run in a configurable order (default: truncated, tool_call, structure, length, repetition); the first
one that fails rejects the item, so every rejected item is counted once, under its first reason. Each filter
is a small class with a ``name`` and ``check(x) -> str | None`` (a rejection detail, or None to keep).

Defaults are those of spec §4.3:

* ``truncated``: ``finish_reason == "length"``, or ``has_final`` is False (no final-channel answer);
  an unknown finish reason / flag passes.
* ``tool_call``: the ``has_tool_call`` flag; for items without the flag, harmony tool-call markers in the
  text (``<|call|>``, a ``to=python`` / ``to=functions.*`` / ``to=browser.*`` / ``to=container.*`` recipient).
* ``structure``: starts with ``<think>``, exactly one ``</think>``, non-empty reasoning and final answer.
* ``length``: student tokens of the fully templated sample <= ``cutoff_len`` = 65,536.
* ``repetition``: five rules, each reported by name:
  ``regex`` (a unit of >= 20 chars repeated back-to-back >= 5 times, ``(.{20,}?)\\1{4,}`` with DOTALL),
  ``paragraph`` (a paragraph >= 50 chars occurring >= 3 times), ``sentence`` (a sentence >= 30 chars
  occurring >= 5 times), ``ngram`` (duplicated share of whitespace 20-grams > 0.3) and ``tail`` (the last
  2,000 chars compress with zlib to < 10% of their size).

The regex rule is not run with ``re`` (its cost is quadratic or worse on long texts); :func:`find_tandem_repeat`
decides the same thing with hashed blocks in O(n/k) vectorised work per candidate period (see there).
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from dasd.data.records import Record
from dasd.text.think import THINK_CLOSE_TAG, THINK_OPEN_TAG

DEFAULT_ORDER = ("truncated", "tool_call", "structure", "length", "repetition")
REPETITION_RULES = ("regex", "paragraph", "sentence", "ngram", "tail")
_TOOL_MARKERS = re.compile(r"<\|call\|>|(?:^|[\s>])to=(?:python\b|functions\.|browser\.|container\.)")
_SENTENCE_SPLIT = re.compile(r"\n|(?<=[.!?])\s+")
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n")


# ----------------------------------------------------------------------------------------------- input


@dataclass
class FilterInput:
    """What the filters see of one candidate.

    ``output`` is the converted response (``<think>...</think>`` form). The teacher fields are optional:
    None means unknown, and an unknown value never rejects (except that ``tool_call`` then scans the text,
    and ``length`` then needs a token counter). ``input`` (the question) is only used to count tokens.
    """

    uuid: str
    output: str
    input: str = ""
    finish_reason: str | None = None
    has_tool_call: bool | None = None
    has_final: bool | None = None
    num_student_tokens: int | None = None

    @classmethod
    def from_record(cls, record: Record, **teacher) -> FilterInput:
        """From a Record plus optional teacher fields (finish_reason, has_tool_call, ...)."""
        return cls(uuid=record.uuid, output=record.output, input=record.input, **teacher)

    @classmethod
    def from_row(cls, row: dict) -> FilterInput:
        """From a row written by ``generate.py`` (record fields plus teacher fields); extra keys are ignored."""
        keep = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in keep})


def token_counter(templater) -> Callable[[FilterInput], int]:
    """Counts student tokens of the fully templated sample with a ``ChatTemplater`` (spec §4.3.4)."""

    def count(x: FilterInput) -> int:
        return len(templater.render(Record(uuid=x.uuid, input=x.input, output=x.output, domain="", meta="")))

    return count


# ---------------------------------------------------------------------------------------------- config


@dataclass
class TruncatedConfig:
    enabled: bool = True
    require_final: bool = True  # reject has_final == False (no final-channel answer)


@dataclass
class ToolCallConfig:
    enabled: bool = True


@dataclass
class StructureConfig:
    enabled: bool = True


@dataclass
class LengthConfig:
    enabled: bool = True
    cutoff_len: int = 65536


@dataclass
class RepetitionConfig:
    enabled: bool = True
    rules: list[str] = field(default_factory=lambda: list(REPETITION_RULES))  # run in this order
    regex_min_unit: int = 20
    regex_min_repeats: int = 5
    regex_max_unit: int | None = None  # None: no cap (as the spec's regex); a cap bounds the cost further
    paragraph_min_chars: int = 50
    paragraph_min_count: int = 3
    sentence_min_chars: int = 30
    sentence_min_count: int = 5
    ngram_n: int = 20
    ngram_max_dup_fraction: float = 0.3
    tail_chars: int = 2000
    tail_max_ratio: float = 0.1


@dataclass
class FilterConfig:
    """Which filters run, in what order, with which thresholds (defaults: spec §4.3)."""

    order: list[str] = field(default_factory=lambda: list(DEFAULT_ORDER))
    truncated: TruncatedConfig = field(default_factory=TruncatedConfig)
    tool_call: ToolCallConfig = field(default_factory=ToolCallConfig)
    structure: StructureConfig = field(default_factory=StructureConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    max_examples: int = 20  # example uuids kept per filter in the report

    @classmethod
    def from_dict(cls, d: dict | None) -> FilterConfig:
        """From a plain (e.g. ``OmegaConf.to_container``) dict; unknown keys raise a TypeError."""
        d = dict(d or {})
        kinds = {"truncated": TruncatedConfig, "tool_call": ToolCallConfig, "structure": StructureConfig,
                 "length": LengthConfig, "repetition": RepetitionConfig}
        for name, kind in kinds.items():
            if name in d:
                d[name] = kind(**d[name])
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown filter config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- filters


class TruncatedFilter:
    """Rejects responses that hit their token budget (and, with ``require_final``, have no final answer).
    ``name`` reports it under another reason (the mixed-policy round: ``continuation_unfinished``)."""

    name = "truncated"

    def __init__(self, cfg: TruncatedConfig | None = None, name: str | None = None) -> None:
        self.cfg = cfg or TruncatedConfig()
        if name is not None:
            self.name = name

    def check(self, x: FilterInput) -> str | None:
        if x.finish_reason == "length":
            return "finish_reason=length"
        if self.cfg.require_final and x.has_final is False:
            return "no final-channel answer"
        return None


class ToolCallFilter:
    name = "tool_call"

    def __init__(self, cfg: ToolCallConfig | None = None) -> None:
        self.cfg = cfg or ToolCallConfig()

    def check(self, x: FilterInput) -> str | None:
        if x.has_tool_call:
            return "has_tool_call flag"
        if x.has_tool_call is None:
            m = _TOOL_MARKERS.search(x.output)
            if m:
                return f"tool-call marker {m.group().strip()!r} at char {m.start()}"
        return None


class StructureFilter:
    name = "structure"

    def __init__(self, cfg: StructureConfig | None = None) -> None:
        self.cfg = cfg or StructureConfig()

    def check(self, x: FilterInput) -> str | None:
        out = x.output
        if not out.startswith(THINK_OPEN_TAG):
            return "does not start with <think>"
        n_close = out.count(THINK_CLOSE_TAG)
        if n_close != 1:
            return f"{n_close} </think> tags (expected 1)"
        reasoning, final = out[len(THINK_OPEN_TAG):].split(THINK_CLOSE_TAG)
        if not reasoning.strip():
            return "empty reasoning"
        if not final.strip():
            return "empty final answer"
        return None


class LengthFilter:
    """Rejects samples longer than ``cutoff_len`` student tokens.

    Uses ``x.num_student_tokens`` when set, else ``count(x)`` (e.g. :func:`token_counter`).
    """

    name = "length"

    def __init__(self, cfg: LengthConfig | None = None, count: Callable[[FilterInput], int] | None = None) -> None:
        self.cfg = cfg or LengthConfig()
        self.count = count

    def check(self, x: FilterInput) -> str | None:
        n = x.num_student_tokens
        if n is None:
            if self.count is None:
                raise ValueError(f"{x.uuid}: num_student_tokens is unset and the length filter has no counter")
            n = self.count(x)
        return f"{n} student tokens > cutoff_len {self.cfg.cutoff_len}" if n > self.cfg.cutoff_len else None


class RepetitionFilter:
    """Five repetition rules (spec §4.3.5); a rejection detail starts with the rule name: ``"ngram: ..."``."""

    name = "repetition"

    def __init__(self, cfg: RepetitionConfig | None = None) -> None:
        self.cfg = cfg or RepetitionConfig()
        unknown = set(self.cfg.rules) - set(REPETITION_RULES)
        if unknown:
            raise ValueError(f"unknown repetition rules {sorted(unknown)}; known: {REPETITION_RULES}")
        self.subrules = list(self.cfg.rules)

    def check(self, x: FilterInput) -> str | None:
        for rule in self.subrules:
            detail = getattr(self, f"_{rule}")(x.output)
            if detail:
                return f"{rule}: {detail}"
        return None

    def _regex(self, text: str) -> str | None:
        c = self.cfg
        hit = find_tandem_repeat(text, c.regex_min_unit, c.regex_min_repeats, c.regex_max_unit)
        if hit is None:
            return None
        start, unit = hit
        return f"{unit}-char unit repeated >= {c.regex_min_repeats} times at char {start}: {text[start:start + unit][:60]!r}"

    def _paragraph(self, text: str) -> str | None:
        paras = (p.strip() for p in _PARAGRAPH_SPLIT.split(text))
        return _most_common(Counter(p for p in paras if len(p) >= self.cfg.paragraph_min_chars),
                            self.cfg.paragraph_min_count, "paragraph")

    def _sentence(self, text: str) -> str | None:
        sents = (s.strip() for s in split_sentences(text))
        return _most_common(Counter(s for s in sents if len(s) >= self.cfg.sentence_min_chars),
                            self.cfg.sentence_min_count, "sentence")

    def _ngram(self, text: str) -> str | None:
        frac = ngram_duplicate_fraction(text.split(), self.cfg.ngram_n)
        if frac > self.cfg.ngram_max_dup_fraction:
            return f"{frac:.3f} of {self.cfg.ngram_n}-grams are duplicates > {self.cfg.ngram_max_dup_fraction}"
        return None

    def _tail(self, text: str) -> str | None:
        if len(text) < self.cfg.tail_chars:  # only full windows: short texts compress poorly anyway
            return None
        tail = text[-self.cfg.tail_chars:].encode("utf-8")
        ratio = len(zlib.compress(tail, 9)) / len(tail)
        if ratio < self.cfg.tail_max_ratio:
            return f"last {self.cfg.tail_chars} chars compress to {ratio:.3f} < {self.cfg.tail_max_ratio}"
        return None


Filter = TruncatedFilter | ToolCallFilter | StructureFilter | LengthFilter | RepetitionFilter


def build_filters(cfg: FilterConfig | None = None, count: Callable[[FilterInput], int] | None = None) -> list[Filter]:
    """The enabled filters in ``cfg.order``; ``count`` is the length filter's token counter (optional)."""
    cfg = cfg or FilterConfig()
    makers: dict[str, Callable[[], Filter]] = {
        "truncated": lambda: TruncatedFilter(cfg.truncated), "tool_call": lambda: ToolCallFilter(cfg.tool_call),
        "structure": lambda: StructureFilter(cfg.structure), "length": lambda: LengthFilter(cfg.length, count),
        "repetition": lambda: RepetitionFilter(cfg.repetition)}
    unknown = [n for n in cfg.order if n not in makers]
    if unknown or len(set(cfg.order)) != len(cfg.order):
        raise ValueError(f"filter order {cfg.order} has unknown or repeated names; known: {list(makers)}")
    return [makers[n]() for n in cfg.order if getattr(cfg, n).enabled]


# ---------------------------------------------------------------------------------------------- report


@dataclass
class FilterStats:
    checked: int = 0
    dropped: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (uuid, detail), capped
    subrules: Counter = field(default_factory=Counter)  # repetition: drops per rule


@dataclass
class FilterReport:
    """Per-filter counts (each rejected item counted once, under its first failing filter)."""

    order: list[str]
    max_examples: int = 20
    total: int = 0
    kept: int = 0
    stats: dict[str, FilterStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.order:
            self.stats.setdefault(name, FilterStats())

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.stats.values())

    def record_drop(self, name: str, uuid: str, detail: str, subrule: str | None = None) -> None:
        s = self.stats[name]
        s.dropped += 1
        if subrule:
            s.subrules[subrule] += 1
        if len(s.examples) < self.max_examples:
            s.examples.append((uuid, detail))

    def summary(self) -> dict:
        """JSON-serialisable counts: total, kept, dropped, and per filter checked/dropped/examples/subrules."""
        return {"total": self.total, "kept": self.kept, "dropped": self.dropped, "order": list(self.order),
                "filters": {n: {"checked": s.checked, "dropped": s.dropped, "subrules": dict(s.subrules),
                                "examples": [{"uuid": u, "detail": d} for u, d in s.examples]}
                            for n, s in self.stats.items()}}

    def table_rows(self) -> list[list[str]]:
        """Rows ``[reason, uuid, detail]`` of the example rejections, e.g. for a W&B table."""
        return [[n, u, d] for n, s in self.stats.items() for u, d in s.examples]


def apply_filters(items: Iterable[FilterInput], filters: Sequence[Filter], max_examples: int = 20,
                  report: FilterReport | None = None) -> tuple[list[FilterInput], FilterReport]:
    """Keep the items every filter passes; the first failing filter rejects (and counts) an item.

    Pass the ``report`` of earlier calls to filter a stream chunk by chunk into one report.
    """
    report = report or FilterReport(order=[f.name for f in filters], max_examples=max_examples)
    kept: list[FilterInput] = []
    for x in items:
        report.total += 1
        for f in filters:
            report.stats[f.name].checked += 1
            detail = f.check(x)
            if detail is not None:
                subrule = detail.split(":", 1)[0] if getattr(f, "subrules", None) else None
                report.record_drop(f.name, x.uuid, detail, subrule)
                break
        else:
            kept.append(x)
    report.kept += len(kept)
    return kept, report


# ----------------------------------------------------------------------------------------- text helpers


def split_sentences(text: str) -> list[str]:
    """A simple sentence splitter: on newlines, and after ``.``, ``!`` or ``?`` followed by whitespace."""
    return [s for s in _SENTENCE_SPLIT.split(text) if s.strip()]


def ngram_duplicate_fraction(tokens: Sequence[str], n: int) -> float:
    """(count - unique) / count over the n-grams of ``tokens``; 0.0 when there are none."""
    count = len(tokens) - n + 1
    if count <= 0:
        return 0.0
    unique = len(set(zip(*(tokens[i:] for i in range(n)), strict=False)))
    return (count - unique) / count


def _most_common(counts: Counter, min_count: int, what: str) -> str | None:
    if not counts:
        return None
    text, n = counts.most_common(1)[0]
    return f"{what} occurs {n} times (>= {min_count}): {text[:60]!r}" if n >= min_count else None


def _block_hashes(a: np.ndarray, k: int) -> np.ndarray:
    """Polynomial hash (mod 2**64) of every k-character window of code points ``a``."""
    h = np.zeros(len(a) - k + 1, dtype=np.uint64)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for t in range(k):
            h = h * base + a[t:len(a) - k + 1 + t]
    return h


def _has_run(eq: np.ndarray, length: int) -> int | None:
    """Start of the first run of ``length`` consecutive True values in ``eq``, or None."""
    if length <= 0:
        return 0
    if len(eq) < length:
        return None
    cs = np.concatenate(([0], np.cumsum(eq, dtype=np.int64)))
    hits = np.flatnonzero(cs[length:] - cs[:-length] == length)
    return int(hits[0]) if len(hits) else None


def find_tandem_repeat(text: str, min_unit: int = 20, min_repeats: int = 5,
                       max_unit: int | None = None) -> tuple[int, int] | None:
    """Where ``re.search(r"(.{min_unit,}?)\\1{min_repeats-1,}", text, re.DOTALL)`` would find a repeat.

    Returns ``(start, unit_length)`` of some back-to-back repeat (not necessarily the regex's leftmost one),
    or None. A unit of length p repeated r times exists iff ``text[j] == text[j+p]`` for a run of
    ``(r-1)*p`` consecutive j. Such a run contains at least ``ceil(((r-1)p - 2k + 2) / k)`` whole k-blocks
    aligned at multiples of ``k = min_unit``, whose hashes then equal those p characters later; and any
    ``blocks`` consecutive aligned blocks include one at a multiple of ``blocks * k``. So per period p we
    first compare only those sparse blocks (n/(k*blocks) hashes, blocks ~ (r-1)p/k), then all n/k aligned
    blocks, and only if a long enough run of equal blocks shows up do we compare characters exactly (which
    also rules out hash collisions). All comparisons are vectorised numpy, nothing backtracks: the cost is
    O(n*k) to hash plus O(n log n / k) for the sparse pass over all p (typical texts stop there), and at
    most O(n) per period p <= min(max_unit, n/r) in the worst case (O(n^2/r) in total without a cap).
    """
    k, r = min_unit, min_repeats
    n = len(text)
    p_max = n // r if max_unit is None else min(max_unit, n // r)
    if k <= 0 or r < 2 or p_max < k:
        return None
    a = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    h = _block_hashes(a, k)
    for p in range(k, p_max + 1):
        need, last = (r - 1) * p, n - p - k + 1  # block starts j < last have a partner block at j + p
        blocks = math.ceil((need - 2 * k + 2) / k)  # whole k-blocks (at multiples of k) such a run contains
        if blocks > 0:
            sparse = blocks * k  # any `blocks` consecutive aligned blocks include one at a multiple of this
            if not np.any(h[0:last:sparse] == h[p:last + p:sparse]):
                continue
            if _has_run(h[0:last:k] == h[p:last + p:k], blocks) is None:
                continue
        start = _has_run(a[p:] == a[:-p], need)
        if start is not None:
            return start, p
    return None
