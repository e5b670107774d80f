"""How many seeds a contrast needs (dasd.ablation.power): the variance components recover known seed, question
and residual spreads, the projected MDE at the measured seeds agrees with the paired bootstrap's, and the
seeds needed for a target follow the components (more seed spread: more seeds; a question term above the
target: no number of seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from dasd.ablation.contrasts import paired_contrast
from dasd.ablation.power import MDE_Z, power, projected_mde, seeds_needed, variance_components


def crossed(S: int, Q: int, sd_seed: float, sd_q: float, sd_e: float, seed: int = 0) -> np.ndarray:
    """[S, Q] differences with independent seed, question and residual parts of known spread (points)."""
    rng = np.random.default_rng(seed)
    return (2.0 + rng.normal(0, sd_seed, (S, 1)) + rng.normal(0, sd_q, (1, Q)) + rng.normal(0, sd_e, (S, Q)))


def test_components_recover_known_spreads():
    comp = variance_components(crossed(40, 2000, 4.0, 10.0, 30.0))
    assert np.sqrt(comp["seed"]) == pytest.approx(4.0, rel=0.3)
    assert np.sqrt(comp["question"]) == pytest.approx(10.0, rel=0.1)
    assert np.sqrt(comp["residual"]) == pytest.approx(30.0, rel=0.02)
    assert (comp["df_seed"], comp["seeds"], comp["questions"]) == (39, 40, 2000)
    # no seed part in the data: estimated near 0 (never negative), the residual's share of the seed means
    # (residual / questions = 1.8 here) taken out
    assert 0 <= variance_components(crossed(40, 2000, 0.0, 10.0, 60.0))["seed"] < 0.9


def test_projection_matches_the_bootstrap_and_the_sampling_spread():
    """At the measured seeds and questions the projected MDE is the report's bootstrap MDE, and the sampling
    MDE is the true spread of the estimate over repeated experiments; with the residual dominant the bootstrap
    is the larger (conservative)."""
    S, Q, spreads = 6, 1000, (3.0, 8.0, 80.0)
    D = crossed(S, Q, *spreads, seed=3)
    a = {s: {f"q{q}": 0.0 for q in range(Q)} for s in range(S)}
    b = {s: {f"q{q}": float(D[s, q]) / 100.0 for q in range(Q)} for s in range(S)}
    c = paired_contrast(a, b, resamples=4000)
    assert c["power"]["mde_projected"] == pytest.approx(c["mde"], rel=0.15)
    assert c["power"]["df_seed"] == 5 and c["power"]["mde_target"] == 3.0
    true_sd = np.std([crossed(S, Q, *spreads, seed=100 + r).mean() for r in range(300)], ddof=1)
    sampling = np.mean([power(crossed(S, Q, *spreads, seed=500 + r), 3.0)["mde_sampling"] for r in range(40)])
    assert sampling == pytest.approx(MDE_Z * true_sd, rel=0.15)
    assert c["mde"] > 1.2 * MDE_Z * true_sd


def test_seeds_needed_follow_the_components():
    comp = {"seed": 9.0, "question": 0.0, "residual": 0.0, "questions": 1000, "seeds": 2, "df_seed": 1}
    # the residual enters as the bootstrap counts it: 3 x residual / (seeds x questions)
    assert projected_mde({**comp, "seed": 0.0, "residual": 1000.0}, 1) == pytest.approx(MDE_Z * np.sqrt(3.0))
    # MDE(n) = MDE_Z * 3 / sqrt(n) <= 3  <=>  n >= MDE_Z**2
    n = seeds_needed(comp, 3.0)
    assert n == int(np.ceil(MDE_Z ** 2)) and projected_mde(comp, n) <= 3.0 < projected_mde(comp, n - 1)
    assert seeds_needed({**comp, "seed": 36.0}, 3.0) == int(np.ceil(4 * MDE_Z ** 2))
    # a question term whose MDE alone is above the target: no number of seeds reaches it
    assert seeds_needed({**comp, "question": 1000.0 * (3.0 / MDE_Z) ** 2 * 1.01}, 3.0) is None
    # with more questions the same question term fits
    assert seeds_needed({**comp, "question": 1000.0 * (3.0 / MDE_Z) ** 2 * 1.01}, 3.0, questions=4000) is not None


def test_one_seed_is_not_projected():
    p = power(crossed(1, 500, 0.0, 5.0, 30.0), 3.0)
    assert p["sd_seed"] is None and p["seeds_for_target"] is None and p["mde_projected"] is p["mde_sampling"] is None
    assert p["df_seed"] == 0 and p["sd_residual"] > 0
    with pytest.raises(ValueError, match="non-empty"):
        variance_components(np.zeros((0, 3)))
