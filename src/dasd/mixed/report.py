"""What a revision round shows: the cut-off ratio against the teacher response length (the paper's Fig. 7),
the cut positions, and the same numbers for W&B (scalars, the PNG, a line plot and a table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dasd.utils.plots import pyplot

SCALARS = ("questions", "truncated", "truncation_rate", "continued", "continuation_finished", "kept", "keep_rate",
           "cut_fraction_raw_mean", "cut_fraction_mean", "snapped", "student_share_of_output_mean",
           "rollout_tokens_mean", "teacher_tokens_mean")


def cutoff_curve(per_question: list[dict], bins: int = 8) -> list[dict]:
    """Share of rollouts cut off at the budget per teacher-length bin (equal-count bins; at most ``bins``)."""
    if not per_question:
        return []
    lengths = np.array([q["teacher_tokens"] for q in per_question], dtype=np.float64)
    truncated = np.array([q["truncated"] for q in per_question], dtype=bool)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([lengths.min(), lengths.max() + 1])
    which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        mine = which == b
        if mine.any():
            rows.append({"teacher_tokens_lo": float(edges[b]), "teacher_tokens_hi": float(edges[b + 1]),
                         "teacher_tokens_mean": float(lengths[mine].mean()), "questions": int(mine.sum()),
                         "cutoff_ratio": float(truncated[mine].mean())})
    return rows


def plot_round(stats: dict, path: str | Path) -> None:
    """Fig. 7 (cut-off ratio vs teacher length) and the distribution of the cut position as a fraction of L."""
    curve = cutoff_curve(stats["per_question"])
    plt = pyplot()
    fig, (ax, ax_cut) = plt.subplots(1, 2, figsize=(10, 3.6))
    if curve:
        x = [c["teacher_tokens_mean"] for c in curve]
        ax.plot(x, [c["cutoff_ratio"] for c in curve], marker="o")
        for c, xi in zip(curve, x, strict=True):
            ax.annotate(str(c["questions"]), (xi, c["cutoff_ratio"]), textcoords="offset points", xytext=(0, 5),
                        fontsize=7, ha="center")
    ax.set(xlabel="teacher response length (student tokens)", ylabel="cut-off ratio", ylim=(-0.02, 1.02),
           title=f"round {stats['round']}: {stats['truncated']}/{stats['questions']} hit "
                 f"{stats.get('cap_factor', 1.5)}× budget")
    fr = stats["cut_fractions"]
    ax_cut.hist([fr["raw"], fr["final"]], bins=np.linspace(0, 1, 21), label=["uniform draw", "after snap"])
    ax_cut.set(xlabel="cut position / rollout length", ylabel="rollouts",
               title=f"cuts: {stats['snapped']} snapped, {stats['kept']} kept")
    ax_cut.legend(fontsize=8)
    for a in (ax, ax_cut):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_round(loggers, stats: dict, png: str | Path, step: int | None = None, prefix: str = "mixed") -> None:
    """Scalars to every logger; to W&B also the PNG, the Fig. 7 line plot and the per-reason filter counts."""
    from lightning.pytorch.loggers import WandbLogger

    scalars = {f"{prefix}/{k}": float(stats[k]) for k in SCALARS if stats.get(k) is not None}
    scalars[f"{prefix}/round"] = float(stats["round"])
    for k, v in (stats.get("seconds") or {}).items():
        if v is not None:
            scalars[f"{prefix}/seconds/{k}"] = float(v)
    for lg in loggers:
        lg.log_metrics(scalars, step=step)
        if not isinstance(lg, WandbLogger):
            continue
        import wandb

        curve = cutoff_curve(stats["per_question"])
        table = wandb.Table(columns=["teacher_tokens", "cutoff_ratio", "questions"],
                            data=[[c["teacher_tokens_mean"], c["cutoff_ratio"], c["questions"]] for c in curve])
        drops = [[name, f["dropped"], f["checked"]] for name, f in stats["filters"]["filters"].items()]
        lg.experiment.log({
            f"{prefix}/cutoff_ratio_plot": wandb.plot.line(table, "teacher_tokens", "cutoff_ratio",
                                                           title="cut-off ratio vs teacher length (Fig. 7)"),
            f"{prefix}/round_{stats['round']}": wandb.Image(str(png)),
            f"{prefix}/filter_drops": wandb.Table(columns=["filter", "dropped", "checked"], data=drops),
        })
