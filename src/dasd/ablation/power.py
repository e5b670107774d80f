"""How many seeds a paired contrast needs: variance components of its (seed, question) differences.

A contrast of the ablation report (dasd.ablation.contrasts) is the mean of a [seeds, questions] matrix D of
paired differences b - a, one cell per (seed, question). Its noise has three parts, estimated by the
two-way random-effects analysis of variance without replication (method of moments, negative estimates set
to 0):

- ``seed``: how much the whole difference moves from one seed to the next (the seed draws the teacher pools,
  the selection, the data order and the evaluation samples);
- ``question``: how much the difference differs between questions in the same way in every seed;
- ``residual``: the rest (a question's sampled answer in one seed).

The sampling variance of the mean over S seeds and Q questions is seed/S + question/Q + residual/(S·Q). The
report's interval comes from the pigeonhole bootstrap (seeds and questions resampled independently), which in
this crossed design counts the residual three times: once in the seed means, once in the question means and
once in the cells (Owen 2007, "The pigeonhole bootstrap"), so its variance is about seed/S + question/Q +
3·residual/(S·Q). With one sample per cell (k = 1) the residual dominates and the report's MDE runs up to
about sqrt(3) times the sampling one: conservative. The projections here use the bootstrap's variance, so
that they forecast the MDE the report will print; ``mde_sampling`` gives the estimator's own.

The minimum detectable effect at 80% power (two-sided alpha 0.05) is MDE_Z times the standard error.
``seeds_needed`` is the smallest number of seeds whose projected MDE reaches a target at the same questions,
or None when the question term alone keeps it above the target. With two seeds the seed component rests on
one degree of freedom: the projection is a point estimate, and the report says how many degrees it has.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

#: (z_0.975 + z_0.80): the effect a two-sided test at alpha 0.05 finds with 80% power is this many ses
MDE_Z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)
#: the most seeds a projection searches
MAX_SEEDS = 10_000
#: how many times the pigeonhole bootstrap counts the residual variance (module docstring)
BOOTSTRAP_RESIDUAL = 3.0
#: the default MDE target (points) whose seeds a contrast reports (conf/report.yaml bootstrap.mde_target)
MDE_TARGET = 3.0


def variance_components(D: np.ndarray) -> dict:
    """{seed, question, residual} variance components (points²) of a [S, Q] matrix of paired differences,
    and the degrees of freedom behind the seed part. With one seed, seed and residual cannot be told apart:
    ``seed`` is None and ``residual`` holds both."""
    D = np.asarray(D, dtype=float)
    if D.ndim != 2 or D.size == 0:
        raise ValueError(f"variance_components: expected a non-empty [seeds, questions] matrix, got shape "
                         f"{D.shape}")
    S, Q = D.shape
    g, m_s, c_q = D.mean(), D.mean(axis=1), D.mean(axis=0)
    if S == 1:
        return {"seed": None, "question": None, "residual": float(D.var(ddof=1)) if Q > 1 else None,
                "df_seed": 0, "seeds": S, "questions": Q}
    ms_seed = Q * float(((m_s - g) ** 2).sum()) / (S - 1)
    ms_q = S * float(((c_q - g) ** 2).sum()) / (Q - 1) if Q > 1 else 0.0
    resid = D - m_s[:, None] - c_q[None, :] + g
    ms_e = float((resid ** 2).sum()) / ((S - 1) * (Q - 1)) if Q > 1 else 0.0
    return {"seed": max(0.0, (ms_seed - ms_e) / Q), "question": max(0.0, (ms_q - ms_e) / S),
            "residual": ms_e, "df_seed": S - 1, "seeds": S, "questions": Q}


def projected_mde(comp: dict, seeds: int, questions: int | None = None, *,
                  residual: float = BOOTSTRAP_RESIDUAL) -> float | None:
    """The MDE (points) over ``seeds`` seeds and ``questions`` questions (default: the measured number), as the
    report's bootstrap will measure it (``residual=1``: the estimator's sampling MDE); None when the components
    are not identified (one seed)."""
    if comp.get("seed") is None:
        return None
    q = questions or comp["questions"]
    var = comp["seed"] / seeds + comp["question"] / q + residual * comp["residual"] / (seeds * q)
    return MDE_Z * math.sqrt(var)


def seeds_needed(comp: dict, target: float, questions: int | None = None) -> int | None:
    """The fewest seeds whose projected (bootstrap) MDE is <= ``target`` points at ``questions`` questions;
    None when no number of seeds reaches it (the question term alone is too large) or the components are not
    identified."""
    if comp.get("seed") is None or target <= 0:
        return None
    q = questions or comp["questions"]
    floor = comp["question"] / q
    budget = (target / MDE_Z) ** 2 - floor
    if budget <= 0:
        return None
    per_seed = comp["seed"] + BOOTSTRAP_RESIDUAL * comp["residual"] / q
    n = max(1, math.ceil(per_seed / budget - 1e-12))
    return n if n <= MAX_SEEDS else None


def power(D: np.ndarray, target: float) -> dict:
    """The power block of a contrast: the components as standard deviations (points), the projected MDE at
    the measured seeds (the bootstrap's, and the estimator's sampling one), and the seeds needed for ``target``."""
    comp = variance_components(D)
    sd = {k: (math.sqrt(comp[k]) if comp[k] is not None else None) for k in ("seed", "question", "residual")}
    return {"sd_seed": sd["seed"], "sd_question": sd["question"], "sd_residual": sd["residual"],
            "df_seed": comp["df_seed"], "mde_projected": projected_mde(comp, comp["seeds"]),
            "mde_sampling": projected_mde(comp, comp["seeds"], residual=1.0),
            "mde_target": target, "seeds_for_target": seeds_needed(comp, target)}
