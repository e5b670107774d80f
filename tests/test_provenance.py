"""Three-model provenance labels (method.md §5.3a) and their shares: the table's cases in its order, the
vectorised labels against a sentence-by-sentence reading of the table, per-position shares and Fig. 6's Δ."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dasd.das.provenance import (
    TYPES,
    UNLABELED,
    LabeledResponse,
    area_delta,
    bootstrap,
    overall_shares,
    position_shares,
    provenance_codes,
    summarize,
)


def _reference(pt: float, ps: float, pd: float, alpha: float, beta: float) -> int:
    """The table of method.md §5.3a, read one sentence at a time, in its order."""
    if any(math.isnan(x) for x in (pt, ps, pd)):
        return UNLABELED
    if abs(ps - pd) <= alpha and abs(pt - pd) <= alpha and abs(pt - ps) <= alpha:
        return TYPES.index("shared")
    if pt - ps > beta:
        return TYPES.index("teacher")
    if ps - pt > beta:
        return TYPES.index("student")
    return TYPES.index("boosted")


@pytest.mark.parametrize("pt, ps, pd, alpha, beta, expected", [
    (0.50, 0.52, 0.55, 0.1, 0.1, "shared"),
    (0.55, 0.50, 0.52, 0.1, 0.01, "shared"),  # shared comes first although Δ_TS > β
    (0.90, 0.20, 0.85, 0.1, 0.1, "teacher"),
    (0.20, 0.90, 0.30, 0.1, 0.1, "student"),
    (0.30, 0.30, 0.90, 0.1, 0.1, "boosted"),  # T and S agree, D does not
    (0.60, 0.50, 0.10, 0.1, 0.1, "boosted"),  # |Δ_TS| = β exactly: not a Teacher sentence
    (float("nan"), 0.5, 0.5, 0.1, 0.1, None),
])
def test_the_tables_cases_in_its_order(pt, ps, pd, alpha, beta, expected):
    (code,) = provenance_codes([pt], [ps], [pd], alpha, beta)
    assert code == (UNLABELED if expected is None else TYPES.index(expected))


def test_vectorised_labels_equal_the_table_sentence_by_sentence():
    rng = np.random.default_rng(0)
    p = rng.random((3, 4000))
    p[rng.random(p.shape) < 0.03] = np.nan
    near = rng.random(4000) < 0.3  # many sentences near the thresholds
    p[1, near] = p[0, near] + rng.choice([-0.1, 0.1, 0.05], near.sum())
    for alpha, beta in [(0.1, 0.1), (0.05, 0.15), (0.0, 0.0), (0.2, 0.05)]:
        codes = provenance_codes(*p, alpha, beta)
        assert codes.tolist() == [_reference(*col, alpha, beta) for col in p.T]
        assert set(np.unique(codes)) <= {UNLABELED, 0, 1, 2, 3}


def _response(codes, spans, length, correct):
    return LabeledResponse(np.asarray(codes, np.int8), np.asarray(spans, np.int64).reshape(-1, 2), length, correct)


def test_shares_positions_and_delta():
    """Correct answers: Teacher sentences in the first half, Shared in the second; incorrect: Boosted all
    along. Each curve's bins sum to 1; Δ(teacher) = +0.5, Δ(shared) = +0.5, Δ(boosted) = −1."""
    correct = [_response([1, 1, 0, 0, UNLABELED], [[0, 10], [10, 20], [20, 30], [30, 40], [0, 40]], 40, True)]
    incorrect = [_response([3, 3, 3, 3], [[0, 10], [10, 20], [20, 30], [30, 40]], 40, False)]
    curve_c, curve_i = position_shares(correct, bins=2), position_shares(incorrect, bins=2)
    assert curve_c.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]] and curve_i.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    assert area_delta(curve_c, curve_i) == {"shared": 0.5, "teacher": 0.5, "student": 0.0, "boosted": -1.0}
    assert overall_shares(correct) == {"shared": 0.5, "teacher": 0.5, "student": 0.0, "boosted": 0.0}
    assert overall_shares([_response([UNLABELED], [[0, 3]], 3, True)]) is None
    assert np.isnan(position_shares(correct, bins=4)).sum() == 0
    assert np.isnan(position_shares([_response([1], [[0, 2]], 40, True)], bins=4)[1:]).all()  # empty bins
    s = summarize(correct + incorrect, alpha=0.1, beta=0.1, bins=2)
    for part in ("all", "correct", "incorrect"):
        assert sum(s["shares"][part].values()) == pytest.approx(1.0)
    assert s["counts"] == {"responses": 2, "correct": 1, "incorrect": 1, "sentences": 9, "unlabeled": 1,
                           "shared": 2, "teacher": 2, "student": 0, "boosted": 4}
    assert s["delta"]["boosted"] == -1.0 and json.loads(json.dumps(s)) == s


def test_a_sentence_at_the_very_end_stays_in_the_last_bin_and_bad_input_is_named():
    r = _response([1], [[39, 40]], 40, True)
    assert r.positions()[0] < 1.0 and position_shares([r], bins=10)[9].tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="one value per sentence each"):
        provenance_codes([0.1, 0.2], [0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
        provenance_codes([0.1], [0.1], [0.1], alpha=-0.1)
    with pytest.raises(ValueError, match="no characters"):
        _response([1], [[0, 0]], 0, True).positions()
    assert area_delta(np.full((2, 4), np.nan), np.zeros((2, 4))) == dict.fromkeys(TYPES)


def _resp(codes, correct, n_chars=100):
    codes = np.asarray(codes, np.int8)
    k = len(codes)
    spans = np.stack([np.arange(k) * (n_chars // k), np.arange(k) * (n_chars // k) + 5], axis=1)
    return LabeledResponse(codes, spans, n_chars, correct)


def test_bootstrap_intervals_hold_the_estimate_and_separate_a_clear_difference():
    rng = np.random.default_rng(0)
    responses = [_resp(rng.integers(0, 4, 12) if i % 3 else np.full(12, 1 if i % 2 else 3), i % 2 == 0)
                 for i in range(60)]
    s = summarize(responses, alpha=0.1, beta=0.1, bins=4)
    ci = bootstrap(responses, bins=4, resamples=400, seed=1)
    for t in TYPES:
        lo, hi = ci["delta"][t]
        assert lo <= s["delta"][t] <= hi
        lo, hi = ci["share_gap"][t]
        assert lo <= s["share_gap"][t] <= hi and lo < hi
        for g in ("all", "correct", "incorrect"):
            assert ci["shares"][g][t][0] <= s["shares"][g][t] <= ci["shares"][g][t][1]
    # every correct response all Teacher, every incorrect one all Boosted: the intervals sit at +1 and -1
    clear = [_resp(np.full(6, 1 if c else 3), c) for c in [True, False] * 10]
    ci = bootstrap(clear, bins=3, resamples=200)
    assert ci["delta"]["teacher"] == [1.0, 1.0] and ci["delta"]["boosted"] == [-1.0, -1.0]


def test_bootstrap_moves_a_questions_responses_together():
    """The same responses, once as 40 questions of 1 response and once as 4 questions of 10 identical ones:
    the grouped interval is wider (fewer independent units)."""
    rng = np.random.default_rng(3)
    base = [_resp(rng.integers(0, 4, 8), bool(i % 2)) for i in range(4)]
    responses = [base[i // 10] for i in range(40)]
    alone = bootstrap(responses, bins=2, resamples=500)
    grouped = bootstrap(responses, [str(i // 10) for i in range(40)], bins=2, resamples=500)
    width = lambda ci: ci["shares"]["all"]["teacher"][1] - ci["shares"]["all"]["teacher"][0]  # noqa: E731
    assert width(grouped) > 2 * width(alone) and grouped["groups"] == 4 and alone["groups"] == 40
    with pytest.raises(ValueError, match="3 groups for 40 responses"):
        bootstrap(responses, ["a", "b", "c"])
