"""Observability of divergence-aware sampling (DAS, method.md §5): plots and numbers that compare the
DAS selection with the random-sampling baseline (RS) on the same filtered pool, and an HTML view of
selected responses with every sentence coloured by its type.

Input of the plots and of :func:`summary` is ``details``: one entry per candidate response of the
filtered pool, every array of the same length N.

================  =====  ===========================================================================
key               dtype  meaning
================  =====  ===========================================================================
``uuid``          str    candidate id
``question``      str    question key (candidates of one question share it)
``n_teacher``     int    Teacher sentences at the chosen beta (p_T − p_S > beta)
``n_student``     int    Student sentences (p_S − p_T > beta)
``n_shared``      int    Shared / common sentences (otherwise)
``n_unlabeled``   int    sentences without tokens under one of the two tokenizers (§5.2)
``num_tokens``    int    response length in student tokens
``p_teacher``     float  response probability under the teacher (geometric mean, §2.2), in [0, 1]
``p_student``     float  the same under the pre-distillation student
``das``           bool   selected by DAS
``random``        bool   selected by the RS baseline (same pool, same seed)
================  =====  ===========================================================================

Every plot function writes one PNG at ``path``, closes its figure and returns ``Path(path)``.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dasd.utils.plots import pyplot

DPI = 120

#: sentence types in display order: (details key, display name, label used in examples).
SENTENCE_TYPES = (("n_teacher", "Teacher", "teacher"), ("n_shared", "Shared", "shared"),
                  ("n_student", "Student", "student"), ("n_unlabeled", "unlabeled", "unlabeled"))
LABELS = tuple(label for _, _, label in SENTENCE_TYPES)

#: groups compared everywhere: (name, display name, colour).
GROUPS = (("all", "all candidates", "0.55"), ("das", "DAS", "tab:blue"), ("random", "random", "tab:orange"))

#: background colours of sentence spans in the HTML view (unlabeled: none).
SPAN_COLOURS = {"teacher": "#cfe2ff", "student": "#ffd8a8", "shared": "#e9ecef", "unlabeled": "transparent"}

DETAIL_KEYS = ("uuid", "question", "n_teacher", "n_student", "n_shared", "n_unlabeled", "num_tokens",
               "p_teacher", "p_student", "das", "random")


# ----------------------------------------------------------------------------------------------- helpers


def _as_arrays(details: Mapping[str, Sequence], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The requested columns as numpy arrays; ValueError when a key is missing or lengths differ."""
    missing = [k for k in keys if k not in details]
    if missing:
        raise ValueError(f"details lacks {missing}")
    out = {k: np.asarray(details[k]) for k in keys}
    lengths = {k: (a.shape[0] if a.ndim else -1) for k, a in out.items()}
    if len(set(lengths.values())) > 1 or any(n < 0 for n in lengths.values()):
        raise ValueError(f"details arrays must be 1-D and of one length, got {lengths}")
    for k in ("das", "random"):
        if k in out:
            out[k] = out[k].astype(bool)
    return out


def _masks(d: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(d.values())))
    return {"all": np.ones(n, dtype=bool), "das": d["das"], "random": d["random"]}


def _num(x) -> float | None:
    """A JSON-able float: NaN and infinities become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _median(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else float("nan")


def _save(fig, path) -> Path:
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _int_bins(values: Sequence[np.ndarray], max_bins: int = 100) -> np.ndarray:
    """Bin edges centred on integers (width > 1 when the range would need more than ``max_bins``)."""
    top = max((int(v.max()) for v in values if v.size), default=0)
    width = max(1, math.ceil((top + 1) / max_bins))
    return np.arange(0, top + width + 1, width) - 0.5


# ----------------------------------------------------------------------------------------------- numbers


def summary(details: Mapping[str, Sequence]) -> dict:
    """JSON-able numbers comparing all candidates, the DAS selection and the RS selection.

    ``agreement`` counts the questions where both samplers picked something and picked the same candidate
    set (one row each, normally); ``das_more_teacher_fraction`` is, over those questions, the share where
    DAS's pick has strictly more Teacher sentences than RS's (``..._fewer_...`` and ``..._tie_...``
    complete it). Means over empty groups are None.
    """
    d = _as_arrays(details, DETAIL_KEYS)
    masks = _masks(d)
    out: dict = {"candidates": int(d["uuid"].shape[0]),
                 "questions": int(np.unique(d["question"].astype(str)).size),
                 "selected": {"das": int(d["das"].sum()), "random": int(d["random"].sum())},
                 "groups": {}}
    for name, mask in masks.items():
        g = {"responses": int(mask.sum()),
             "sentences": {label: int(d[key][mask].sum()) for key, _, label in SENTENCE_TYPES}}
        total = sum(g["sentences"].values())
        g["sentence_share"] = {k: (_num(v / total) if total else None) for k, v in g["sentences"].items()}
        g["teacher_mean"] = _num(_mean(d["n_teacher"][mask]))
        g["teacher_median"] = _num(_median(d["n_teacher"][mask]))
        g["length_mean"] = _num(_mean(d["num_tokens"][mask]))
        g["length_median"] = _num(_median(d["num_tokens"][mask]))
        g["p_teacher_mean"] = _num(_mean(d["p_teacher"][mask]))
        g["p_student_mean"] = _num(_mean(d["p_student"][mask]))
        out["groups"][name] = g
    out["length_ratio_das_over_random"] = _num(_ratio(_mean(d["num_tokens"][d["das"]]),
                                                      _mean(d["num_tokens"][d["random"]])))

    # per question: DAS pick vs RS pick (grouped in one pass over the selected rows: O(N))
    questions = d["question"].astype(str)
    n_teacher = d["n_teacher"].astype(np.int64)
    picks: dict[str, tuple[list[int], list[int]]] = {}
    for i in np.flatnonzero(d["das"] | d["random"]):
        das_rows, rs_rows = picks.setdefault(questions[i], ([], []))
        if d["das"][i]:
            das_rows.append(int(i))
        if d["random"][i]:
            rs_rows.append(int(i))
    both = agree = more = fewer = 0
    for das_rows, rs_rows in picks.values():
        if not das_rows or not rs_rows:
            continue
        both += 1
        agree += das_rows == rs_rows
        diff = int(n_teacher[das_rows].sum()) - int(n_teacher[rs_rows].sum())
        more += diff > 0
        fewer += diff < 0
    out["questions_with_both"] = both
    out["agreement"] = agree
    out["agreement_fraction"] = _num(agree / both) if both else None
    out["das_more_teacher_fraction"] = _num(more / both) if both else None
    out["das_fewer_teacher_fraction"] = _num(fewer / both) if both else None
    out["das_tie_teacher_fraction"] = _num((both - more - fewer) / both) if both else None
    return out


# ----------------------------------------------------------------------------------------------- plots


def plot_sentence_types(details: Mapping[str, Sequence], path, beta: float) -> Path:
    """Grouped bars: share of Teacher / Shared / Student / unlabeled sentences in all candidates, the DAS
    selection and the RS selection (bar labels: sentence counts)."""
    plt = pyplot()
    keys = ("n_teacher", "n_student", "n_shared", "n_unlabeled", "das", "random")
    d = _as_arrays(details, keys)
    masks = _masks(d)
    x = np.arange(len(SENTENCE_TYPES))
    width = 0.8 / len(GROUPS)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    lines = []
    for i, (name, display, colour) in enumerate(GROUPS):
        counts = np.array([int(d[key][masks[name]].sum()) for key, _, _ in SENTENCE_TYPES])
        total = int(counts.sum())
        shares = counts / total if total else np.zeros(len(counts))
        bars = ax.bar(x + (i - (len(GROUPS) - 1) / 2) * width, shares, width, color=colour,
                      label=f"{display} ({int(masks[name].sum())} responses, {total} sentences)")
        ax.bar_label(bars, labels=[f"{c}" for c in counts], fontsize=7, padding=1, rotation=90)
        lines.append(f"{display}: Teacher {_fmt(100 * shares[0], '.1f')}%")
    ax.set_xticks(x, [display for _, display, _ in SENTENCE_TYPES])
    ax.set(xlabel="sentence type", ylabel="share of the group's sentences",
           title=f"sentence types at beta = {beta:g} (bar labels: sentence counts)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.text(0.99, 0.97, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(GROUPS), frameon=False)
    return _save(fig, path)


def plot_teacher_counts(details: Mapping[str, Sequence], path) -> Path:
    """Step histograms (integer bins, fraction of each group's responses) of the Teacher Sentence count per
    response for all candidates, DAS and RS; the means in the legend and as dashed lines."""
    plt = pyplot()
    d = _as_arrays(details, ("n_teacher", "das", "random"))
    masks = _masks(d)
    values = {name: d["n_teacher"][masks[name]].astype(np.int64) for name, _, _ in GROUPS}
    bins = _int_bins(list(values.values()))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, display, colour in GROUPS:
        v = values[name]
        m = _mean(v)
        weights = np.full(v.size, 1.0 / v.size) if v.size else None
        ax.hist(v, bins=bins, weights=weights, histtype="step", lw=1.6, color=colour,
                label=f"{display} (n={v.size}, mean {_fmt(m, '.2f')}, median {_fmt(_median(v), '.1f')})")
        if math.isfinite(m):
            ax.axvline(m, color=colour, ls="--", lw=1)
    means = {name: _mean(values[name]) for name, _, _ in GROUPS}
    ax.set(xlabel="Teacher sentences per response", ylabel="fraction of the group's responses",
           title=f"Teacher Sentence count per response (mean: DAS {_fmt(means['das'], '.2f')}, "
                 f"random {_fmt(means['random'], '.2f')}, all {_fmt(means['all'], '.2f')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_lengths(details: Mapping[str, Sequence], path) -> Path:
    """Response length (student tokens) of the DAS and RS selections: histograms with mean (solid) and
    median (dotted) lines; the title states the mean length ratio DAS/random, since the Teacher Sentence
    count grows with length (§5.4 caveat)."""
    plt = pyplot()
    d = _as_arrays(details, ("num_tokens", "das", "random"))
    groups = [g for g in GROUPS if g[0] != "all"]
    values = {name: d["num_tokens"][d[name]].astype(np.float64) for name, _, _ in groups}
    pooled = np.concatenate(list(values.values()))
    lo, hi = (float(pooled.min()), float(pooled.max())) if pooled.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, display, colour in groups:
        v = values[name]
        m, med = _mean(v), _median(v)
        ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.35, color=colour, edgecolor=colour,
                label=f"{display} (n={v.size}, mean {_fmt(m, '.0f')}, median {_fmt(med, '.0f')})")
        if v.size:
            ax.axvline(m, color=colour, lw=1.5)
            ax.axvline(med, color=colour, lw=1.5, ls=":")
    ratio = _ratio(_mean(values["das"]), _mean(values["random"]))
    ax.plot([], [], color="k", lw=1.5, label="mean")
    ax.plot([], [], color="k", lw=1.5, ls=":", label="median")
    ax.set(xlabel="response length (student tokens)", ylabel="responses",
           title=f"selected response lengths: mean DAS/random = {_fmt(ratio, '.3f')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_response_probability(details: Mapping[str, Sequence], path) -> Path:
    """The report's Fig. 10: density of the response probability (geometric mean of token probabilities,
    §2.2) on [0, 1] for the DAS and RS selections, under the teacher (left) and the student (right)."""
    plt = pyplot()
    d = _as_arrays(details, ("p_teacher", "p_student", "das", "random"))
    groups = [g for g in GROUPS if g[0] != "all"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0.0, 1.0, 41)
    for ax, key, who in zip(axes, ("p_teacher", "p_student"), ("teacher", "student"), strict=True):
        for name, display, colour in groups:
            v = d[key][d[name]].astype(np.float64)
            v = v[np.isfinite(v)]
            ax.hist(v, bins=bins, density=v.size > 0, histtype="stepfilled", alpha=0.35, color=colour,
                    edgecolor=colour, label=f"{display} (n={v.size}, mean {_fmt(_mean(v), '.3f')})")
        ax.set(xlabel=f"response probability under the {who} (geometric mean)", ylabel="density",
               title=f"P̄_{who[0].upper()}(y|x)", xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("response probability of the selected data, DAS vs random (cf. report Fig. 10)")
    return _save(fig, path)


def write_report(details: Mapping[str, Sequence], out_dir, beta: float) -> dict[str, Path]:
    """All four plots and ``summary.json`` under ``out_dir``; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"sentence_types": plot_sentence_types(details, out_dir / "das_sentence_types.png", beta),
             "teacher_counts": plot_teacher_counts(details, out_dir / "das_teacher_counts.png"),
             "lengths": plot_lengths(details, out_dir / "das_lengths.png"),
             "response_probability": plot_response_probability(details, out_dir / "das_response_probability.png")}
    paths["summary"] = out_dir / "das_summary.json"
    paths["summary"].write_text(json.dumps({"beta": beta, **summary(details)}, indent=2))
    return paths


# ----------------------------------------------------------------------------------------------- HTML

_OUTPUT_STYLE = ("white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; "
                 "font-size: 13px; line-height: 1.45; border: 1px solid #ddd; padding: 8px; "
                 "border-radius: 4px; background: #fff;")
_CARD_STYLE = "border: 1px solid #bbb; border-radius: 6px; padding: 10px; margin: 12px 0;"


def _check_example(example: Mapping) -> tuple[str, list[tuple[int, int]], list[str], list, list]:
    """Validated (output, spans, labels, p_teacher, p_student); ValueError on any inconsistency."""
    for key in ("output", "spans", "labels"):
        if key not in example:
            raise ValueError(f"example lacks {key!r}")
    output = str(example["output"])
    spans = [tuple(s) for s in example["spans"]]
    labels = [str(label) for label in example["labels"]]
    if len(labels) != len(spans):
        raise ValueError(f"{len(labels)} labels for {len(spans)} spans")
    bad = sorted(set(labels) - set(LABELS))
    if bad:
        raise ValueError(f"unknown labels {bad}; expected one of {LABELS}")
    probs = []
    for key in ("p_teacher", "p_student"):
        p = example.get(key)
        p = [None] * len(spans) if p is None else list(p)
        if len(p) != len(spans):
            raise ValueError(f"{len(p)} {key} values for {len(spans)} spans")
        probs.append(p)
    prev = 0
    for i, s in enumerate(spans):
        if len(s) != 2:
            raise ValueError(f"span {i} is not a [start, end) pair: {s}")
        a, b = s
        if not (isinstance(a, int | np.integer) and isinstance(b, int | np.integer)):
            raise ValueError(f"span {i} has non-integer offsets: {s}")
        if not 0 <= a < b <= len(output):
            raise ValueError(f"span {i} = [{a}, {b}) is empty or outside the output (length {len(output)})")
        if a < prev:
            raise ValueError(f"span {i} = [{a}, {b}) overlaps or precedes the previous span (ends at {prev})")
        prev = b
    return output, [(int(a), int(b)) for a, b in spans], labels, probs[0], probs[1]


def _prob(p) -> str:
    return "n/a" if p is None or not math.isfinite(float(p)) else f"{float(p):.3f}"


def _span_title(pt, ps) -> str:
    ok = all(p is not None and math.isfinite(float(p)) for p in (pt, ps))
    delta = f"{float(pt) - float(ps):+.3f}" if ok else "n/a"
    return f"p_T={_prob(pt)} p_S={_prob(ps)} Δ={delta}"


def _output_html(output: str, spans, labels, p_teacher, p_student) -> str:
    parts, prev = [], 0
    for (a, b), label, pt, ps in zip(spans, labels, p_teacher, p_student, strict=True):
        parts.append(html.escape(output[prev:a]))
        parts.append(f'<span class="sent sent-{label}" style="background: {SPAN_COLOURS[label]};" '
                     f'title="{html.escape(label + ": " + _span_title(pt, ps))}">'
                     f"{html.escape(output[a:b])}</span>")
        prev = b
    parts.append(html.escape(output[prev:]))
    return "".join(parts)


def example_html(example: Mapping) -> str:
    """One example as a self-contained HTML fragment (inline styles, usable in ``wandb.Html``): a header
    with uuid, sampler and sentence counts, the question (collapsible) and the output with each sentence
    span coloured by type and a hover title ``p_T=… p_S=… Δ=…``."""
    output, spans, labels, p_teacher, p_student = _check_example(example)
    counts = {label: labels.count(label) for label in LABELS}
    n_teacher = example.get("n_teacher", counts["teacher"])
    n_student = example.get("n_student", counts["student"])
    sampler = str(example.get("sampler", "?"))
    header = (f"<b>{html.escape(sampler)}</b> &middot; uuid <code>{html.escape(str(example.get('uuid', '')))}"
              f"</code> &middot; Teacher {html.escape(str(n_teacher))} &middot; Student "
              f"{html.escape(str(n_student))} &middot; Shared {counts['shared']} &middot; unlabeled "
              f"{counts['unlabeled']} &middot; {len(spans)} sentences")
    question = html.escape(str(example.get("question", "")))
    css = re.sub(r"[^A-Za-z0-9_-]", "", sampler)
    return (f'<div class="das-example das-{css}" style="{_CARD_STYLE}">'
            f'<div class="das-header" style="margin-bottom: 6px;">{header}</div>'
            f'<details class="das-question" style="margin-bottom: 6px;"><summary>question</summary>'
            f'<div style="white-space: pre-wrap;">{question}</div></details>'
            f'<div class="das-output" style="{_OUTPUT_STYLE}">'
            f"{_output_html(output, spans, labels, p_teacher, p_student)}</div></div>")


def _legend_html(examples: Sequence[Mapping], beta: float) -> str:
    totals = dict.fromkeys(LABELS, 0)
    for ex in examples:
        for label in ex["labels"]:
            totals[label] += 1
    samplers: dict[str, int] = {}
    for ex in examples:
        s = str(ex.get("sampler", "?"))
        samplers[s] = samplers.get(s, 0) + 1
    swatches = " ".join(
        f'<span class="sent sent-{label}" style="background: {SPAN_COLOURS[label]}; padding: 1px 6px; '
        f'border: 1px solid #ccc;">{display}: {totals[label]}</span>'
        for _, display, label in SENTENCE_TYPES)
    rule = (f"Teacher: p_T &minus; p_S &gt; {beta:g}; Student: p_S &minus; p_T &gt; {beta:g}; Shared: "
            f"otherwise; unlabeled: no tokens under one tokenizer. Hover a sentence for p_T, p_S and "
            f"&Delta; = p_T &minus; p_S (geometric-mean sentence probabilities).")
    per_sampler = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(samplers.items()))
    return (f'<div class="das-legend"><p>beta = {beta:g} &middot; {len(examples)} examples '
            f"({per_sampler})</p><p>sentences: {swatches}</p><p style=\"font-size: 12px;\">{rule}</p></div>")


def render_examples_html(examples: Sequence[Mapping], path, beta: float,
                         title: str = "DAS selected examples") -> Path:
    """A self-contained HTML page: a legend (beta, sentence counts per type over all examples, examples
    per sampler) and one card per example (:func:`example_html`). Every example is validated first."""
    cards = [example_html(ex) for ex in examples]  # validates before anything is written
    return write_page(path, title, _legend_html(examples, beta) + "\n".join(cards))


def write_page(path, title: str, body: str) -> Path:
    """A self-contained HTML page of sentence cards: ``title`` as heading, then ``body``; returns the path."""
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>"
            "body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 20px auto; padding: 0 12px; }"
            " .sent { border-radius: 2px; } .sent:hover { outline: 1px solid #555; }"
            f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
