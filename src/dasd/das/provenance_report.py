"""Figures and the example page of a provenance analysis (``dasd.das.provenance``): the overall shares of the
four types (the report's Fig. 5), the per-position shares for correct and incorrect responses with each
type's area difference Δ (Fig. 6), and responses with every sentence coloured by type and p_T, p_S, p_D on
hover."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dasd.das.provenance import TYPES
from dasd.das.report import _CARD_STYLE, _OUTPUT_STYLE, write_page
from dasd.utils.plots import pyplot

DPI = 120
COLOURS = {"shared": "#9e9e9e", "teacher": "#1f77b4", "student": "#ff7f0e", "boosted": "#2ca02c"}
SPAN_COLOURS = {"shared": "#e6e6e6", "teacher": "#c6dbef", "student": "#fdd0a2", "boosted": "#c7e9c0",
                "unlabeled": "#ffffff"}
GROUPS = ("all", "correct", "incorrect")


def plot_overall(summary: Mapping, path: str | Path, title: str = "") -> Path:
    """Stacked bars: the share of each type over all, correct and incorrect responses (Fig. 5)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    counts = summary["counts"]
    names = [f"{g}\n({counts['responses'] if g == 'all' else counts[g]} responses)" for g in GROUPS]
    bottom = np.zeros(len(GROUPS))
    for t in TYPES:
        vals = np.asarray([(summary["shares"][g] or {}).get(t, np.nan) for g in GROUPS], dtype=float)
        ax.bar(names, np.nan_to_num(vals), bottom=bottom, color=COLOURS[t], label=t.capitalize(), width=0.6)
        for i, v in enumerate(vals):
            if not np.isnan(v) and v >= 0.04:
                ax.text(i, bottom[i] + v / 2, f"{100 * v:.0f}%", ha="center", va="center", fontsize=8)
        bottom += np.nan_to_num(vals)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of sentences")
    s = summary["settings"]
    ax.set_title(title or f"sentence provenance (alpha={s['alpha']:g}, beta={s['beta']:g})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_positions(summary: Mapping, path: str | Path, title: str = "") -> Path:
    """One panel per type: its share per relative-position bin for correct and incorrect responses, the area
    between them shaded and Δ (mean over bins of correct − incorrect) in the panel title (Fig. 6)."""
    plt = pyplot()
    bins = int(summary["settings"]["bins"])
    x = (np.arange(bins) + 0.5) / bins
    fig, axes = plt.subplots(1, len(TYPES), figsize=(13, 3.4), sharex=True)
    curves = {k: np.asarray([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
              for k, rows in summary["position_shares"].items()}
    for j, (t, ax) in enumerate(zip(TYPES, axes, strict=True)):
        good, bad = curves["correct"][:, j], curves["incorrect"][:, j]
        ax.plot(x, good, "-o", ms=3, color=COLOURS[t], label="correct")
        ax.plot(x, bad, "--s", ms=3, color=COLOURS[t], alpha=0.6, label="incorrect")
        ok = ~(np.isnan(good) | np.isnan(bad))
        ax.fill_between(x[ok], good[ok], bad[ok], color=COLOURS[t], alpha=0.15)
        d = summary["delta"].get(t)
        ax.set_title(f"{t.capitalize()}: Δ = {'n/a' if d is None else f'{100 * d:+.1f} pts'}", fontsize=10)
        ax.set_xlabel("relative position in the response")
        ax.set_xlim(0, 1)
        if j == 0:
            ax.set_ylabel("share of sentences")
            ax.legend(fontsize=8)
    fig.suptitle(title or "sentence provenance by position, correct vs incorrect responses", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _fmt(p: float | None) -> str:
    return "n/a" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3f}"


def example_html(example: Mapping) -> str:
    """One response as a self-contained HTML fragment (inline styles: usable in ``wandb.Html``): a header
    (question id, sample, correct, counts per type), the question (collapsible), and the response with each
    sentence coloured by type and ``type: p_T=… p_S=… p_D=…`` on hover."""
    text, spans, labels = example["text"], example["spans"], example["labels"]
    if not len(spans) == len(labels) == len(example["p_teacher"]) == len(example["p_student"]) \
            == len(example["p_distilled"]):
        raise ValueError(f"example {example.get('id')}: spans, labels and probabilities differ in length")
    parts, prev = [], 0
    for (a, b), label, pt, ps, pd in zip(spans, labels, example["p_teacher"], example["p_student"],
                                        example["p_distilled"], strict=True):
        if not prev <= a <= b <= len(text):
            raise ValueError(f"example {example.get('id')}: span {[a, b]} is not sorted inside the text")
        tip = f"{label}: p_T={_fmt(pt)} p_S={_fmt(ps)} p_D={_fmt(pd)}"
        parts.append(html.escape(text[prev:a]))
        parts.append(f'<span class="sent sent-{label}" style="background: {SPAN_COLOURS[label]};" '
                     f'title="{html.escape(tip)}">{html.escape(text[a:b])}</span>')
        prev = b
    parts.append(html.escape(text[prev:]))
    counts = " &middot; ".join(f"{t.capitalize()} {labels.count(t)}" for t in (*TYPES, "unlabeled"))
    verdict = "correct" if example["correct"] else "incorrect"
    header = (f"<b>{verdict}</b> &middot; question <code>{html.escape(str(example['id']))}</code> sample "
              f"{int(example['sample'])} &middot; {counts}")
    return (f'<div class="prov-example prov-{verdict}" style="{_CARD_STYLE}">'
            f'<div style="margin-bottom: 6px;">{header}</div>'
            f'<details style="margin-bottom: 6px;"><summary>question</summary>'
            f'<div style="white-space: pre-wrap;">{html.escape(str(example["question"]))}</div></details>'
            f'<div class="prov-output" style="{_OUTPUT_STYLE}">{"".join(parts)}</div></div>')


def render_examples_html(examples: Sequence[Mapping], path: str | Path, summary: Mapping,
                         title: str = "Sentence provenance: examples") -> Path:
    """A self-contained page: the legend (types and colours, alpha and beta, the overall shares) and one
    card per example."""
    cards = [example_html(ex) for ex in examples]  # validates before anything is written
    s = summary["settings"]
    shares = summary["shares"]["all"] or {}
    legend = " ".join(f'<span style="background: {SPAN_COLOURS[t]}; padding: 1px 6px; border-radius: 3px;">'
                      f"{t.capitalize()} {100 * shares.get(t, float('nan')):.1f}%</span>" for t in TYPES)
    return write_page(path, title, f"<p>alpha = {s['alpha']:g}, beta = {s['beta']:g}; share of all labelled "
                      f"sentences: {legend}. Hover a sentence for p_T, p_S and p_D.</p>" + "\n".join(cards))
