"""PNG plots of training curves (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported on first use (an entry point that never plots
    does not pay for matplotlib's import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(rows: list[dict], path: str | Path) -> None:
    """Loss and learning rate against the optimizer step, one PNG."""
    plt = pyplot()
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


def plot_generation_summary(lengths: list[int], probabilities: list[float], path: str | Path, title: str) -> None:
    """Histograms of response length (tokens) and response probability (geometric mean of token
    probabilities, as in the DASD report's Fig. 3a)."""
    plt = pyplot()
    fig, (ax_len, ax_p) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_len.hist(lengths, bins=40, color="tab:blue")
    ax_len.set(xlabel="response length (teacher tokens)", ylabel="responses", title="length")
    ax_p.hist(probabilities, bins=40, range=(0.0, 1.0), density=True, color="tab:orange")
    ax_p.set(xlabel="response probability (geometric mean)", ylabel="density", title="probability", xlim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
