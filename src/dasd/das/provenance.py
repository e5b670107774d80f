"""Provenance of a distilled model's sentences (method.md §5.3a; the report's Figs. 5 and 6).

Sentences of responses sampled from the distilled model D are scored by the teacher T, the pre-distillation
student S and D itself (geometric-mean probabilities, as for DAS: ``dasd.das.align``). Each sentence is given
the first of these types that holds, with Δ_XY = p_X − p_Y:

1. Shared: |Δ_SD| ≤ α and |Δ_TD| ≤ α and |Δ_TS| ≤ α
2. Teacher: Δ_TS > β
3. Student: −Δ_TS > β
4. Boosted: otherwise (|Δ_TS| ≤ β, and D differs from T or S by more than α)

A sentence with no token under one of the three tokenizers (a NaN probability) gets no type and is counted
apart. The shares are computed over sentences:

* ``overall_shares``: over all labelled sentences (Fig. 5);
* ``position_shares``: per bin of relative position in the response (a sentence's middle character over the
  response length), for correct and incorrect responses apart (Fig. 6);
* ``area_delta``: per type, the area between the correct and the incorrect curve (the mean over bins of
  correct − incorrect): the "Δ" of Fig. 6. Positive: the type is more frequent in correct answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TYPES = ("shared", "teacher", "student", "boosted")
UNLABELED = -1


def provenance_codes(pt: np.ndarray, ps: np.ndarray, pd: np.ndarray, alpha: float = 0.1,
                     beta: float = 0.1) -> np.ndarray:
    """The type of each sentence as an index into ``TYPES`` (``UNLABELED`` where a probability is NaN)."""
    pt, ps, pd = (np.asarray(x, np.float64) for x in (pt, ps, pd))
    if not pt.shape == ps.shape == pd.shape:
        raise ValueError(f"p_T, p_S and p_D need one value per sentence each, got shapes "
                         f"{pt.shape}, {ps.shape}, {pd.shape}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    labeled = ~(np.isnan(pt) | np.isnan(ps) | np.isnan(pd))
    ts, td, sd = (np.where(labeled, a - b, 0.0) for a, b in ((pt, ps), (pt, pd), (ps, pd)))
    shared = (np.abs(sd) <= alpha) & (np.abs(td) <= alpha) & (np.abs(ts) <= alpha)
    codes = np.select([shared, ts > beta, -ts > beta], [0, 1, 2], default=3)
    return np.where(labeled, codes, UNLABELED).astype(np.int8)


@dataclass
class LabeledResponse:
    """One response of D: each sentence's type code and character span, its length and whether it was
    graded correct."""

    codes: np.ndarray  # (n,) int: TYPES index or UNLABELED
    spans: np.ndarray  # (n, 2) int: [start, end) in the response text
    length: int  # characters of the response text
    correct: bool

    def positions(self) -> np.ndarray:
        """Each sentence's relative position in [0, 1): its middle character over the response length."""
        if self.length <= 0:
            raise ValueError("a response with no characters has no sentence positions")
        middle = (self.spans[:, 0] + self.spans[:, 1]) / 2.0
        return np.clip(middle / self.length, 0.0, np.nextafter(1.0, 0.0))


def _counts(codes: np.ndarray) -> np.ndarray:
    labeled = codes[codes >= 0]
    return np.bincount(labeled, minlength=len(TYPES)).astype(np.float64)


def overall_shares(responses: Sequence[LabeledResponse]) -> dict[str, float] | None:
    """The share of each type over every labelled sentence (None when there is none)."""
    counts = sum((_counts(r.codes) for r in responses), np.zeros(len(TYPES)))
    total = counts.sum()
    return None if total == 0 else dict(zip(TYPES, (counts / total).tolist(), strict=True))


def position_shares(responses: Sequence[LabeledResponse], bins: int = 10) -> np.ndarray:
    """(bins, 4): per bin of relative position, the share of each type among the labelled sentences that
    fall in it; a bin with none is NaN."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    counts = np.zeros((bins, len(TYPES)))
    for r in responses:
        keep = r.codes >= 0
        if not keep.any():
            continue
        which = np.minimum((r.positions()[keep] * bins).astype(int), bins - 1)
        np.add.at(counts, (which, r.codes[keep].astype(int)), 1.0)
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def area_delta(correct: np.ndarray, incorrect: np.ndarray) -> dict[str, float | None]:
    """Per type, the mean over position bins of (correct − incorrect) share, over the bins both curves
    have (None when they share no bin)."""
    both = ~(np.isnan(correct).any(axis=1) | np.isnan(incorrect).any(axis=1))
    if not both.any():
        return dict.fromkeys(TYPES)
    diff = (correct[both] - incorrect[both]).mean(axis=0)
    return dict(zip(TYPES, diff.tolist(), strict=True))


def summarize(responses: Sequence[LabeledResponse], *, alpha: float, beta: float, bins: int = 10) -> dict:
    """The content of ``provenance_summary.json``: ``shares`` ({all, correct, incorrect} -> type -> share,
    each summing to 1, or None without labelled sentences), ``share_gap`` (per type, the correct − incorrect
    overall share), ``delta`` (per type), the per-position curves, counts and settings."""
    correct = [r for r in responses if r.correct]
    incorrect = [r for r in responses if not r.correct]
    curves = {"correct": position_shares(correct, bins), "incorrect": position_shares(incorrect, bins)}
    n_sentences = int(sum(len(r.codes) for r in responses))
    n_unlabeled = int(sum(int((r.codes < 0).sum()) for r in responses))
    shares = {"all": overall_shares(responses), "correct": overall_shares(correct),
              "incorrect": overall_shares(incorrect)}
    gap = dict.fromkeys(TYPES) if shares["correct"] is None or shares["incorrect"] is None else \
        {t: shares["correct"][t] - shares["incorrect"][t] for t in TYPES}
    return {
        "shares": shares,
        "share_gap": gap,
        "delta": area_delta(curves["correct"], curves["incorrect"]),
        "position_shares": {k: [[None if np.isnan(x) else float(x) for x in row] for row in v]
                            for k, v in curves.items()},
        "counts": {"responses": len(responses), "correct": len(correct), "incorrect": len(incorrect),
                   "sentences": n_sentences, "unlabeled": n_unlabeled,
                   **{t: int(sum(int((r.codes == i).sum()) for r in responses)) for i, t in enumerate(TYPES)}},
        "settings": {"alpha": alpha, "beta": beta, "bins": bins, "types": list(TYPES)},
    }


def bootstrap(responses: Sequence[LabeledResponse], groups: Sequence[str] | None = None, *, bins: int = 10,
              resamples: int = 1000, seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals of the overall shares ({all, correct, incorrect} -> type), the
    per-type gap in overall share (correct − incorrect) and Δ, resampling ``groups`` with replacement (the
    responses to one question move together; default: each response its own group). A resample in which a
    quantity is undefined (no correct response, say) is left out of that quantity's interval."""
    n = len(responses)
    groups = list(range(n)) if groups is None else list(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} responses")
    index = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    member = np.asarray([index[g] for g in groups], dtype=np.int64)
    counts = np.zeros((n, bins, len(TYPES)))
    for i, r in enumerate(responses):
        keep = r.codes >= 0
        if keep.any():
            which = np.minimum((r.positions()[keep] * bins).astype(int), bins - 1)
            np.add.at(counts[i], (which, r.codes[keep].astype(int)), 1.0)
    correct = np.asarray([r.correct for r in responses], dtype=bool)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(index), size=(resamples, len(index)))
    weight_g = np.stack([np.bincount(d, minlength=len(index)) for d in draws]).astype(np.float64)  # (B, G)
    weight = weight_g[:, member]  # (B, n): each response counted as often as its group was drawn
    flat = counts.reshape(n, -1)

    def pooled(mask: np.ndarray) -> np.ndarray:  # (B, bins, types)
        return (weight[:, mask] @ flat[mask]).reshape(resamples, bins, len(TYPES))

    with np.errstate(invalid="ignore", divide="ignore"):
        per = {"all": pooled(np.ones(n, bool)), "correct": pooled(correct), "incorrect": pooled(~correct)}
        overall = {g: c.sum(axis=1) / c.sum(axis=(1, 2))[:, None] for g, c in per.items()}  # (B, types)
        curve = {g: per[g] / per[g].sum(axis=2, keepdims=True) for g in ("correct", "incorrect")}
    both = ~(np.isnan(curve["correct"]).any(axis=2) | np.isnan(curve["incorrect"]).any(axis=2))  # (B, bins)
    diff = np.where(both[..., None], curve["correct"] - curve["incorrect"], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = diff.sum(axis=1) / both.sum(axis=1)[:, None]  # (B, types): NaN where no bin is shared

    def interval(x: np.ndarray) -> dict[str, list[float] | None]:
        out = {}
        for j, t in enumerate(TYPES):
            v = x[:, j][~np.isnan(x[:, j])]
            out[t] = None if len(v) == 0 else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        return out

    return {"shares": {g: interval(v) for g, v in overall.items()},
            "share_gap": interval(overall["correct"] - overall["incorrect"]), "delta": interval(delta),
            "resamples": resamples, "groups": len(index), "seed": seed, "method": "percentile bootstrap over "
            "questions (a question's responses resampled together)"}
