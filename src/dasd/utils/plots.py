"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(rows: list[dict], path: str | Path) -> None:
    """Loss and learning rate against the optimizer step, one PNG."""
    steps = [r["step"] for r in rows if "train/loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, [r["train/loss"] for r in rows if "train/loss" in r], lw=1)
    ax_loss.set(xlabel="optimizer step", ylabel="train loss (token mean)", title="loss")
    ax_lr.plot([r["step"] for r in rows if "train/lr" in r], [r["train/lr"] for r in rows if "train/lr" in r])
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="schedule")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
