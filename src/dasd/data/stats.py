"""Length statistics to choose ``cutoff_len``: student-token lengths of fully templated samples per domain,
their CDF (PNG), and the share of samples each candidate cutoff would drop (packing drops, never truncates)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from dasd.data.records import Record
from dasd.data.template import ChatTemplater
from dasd.utils.plots import pyplot


def sample_lengths(records: Iterable[Record], templater: ChatTemplater) -> dict[str, list[int]]:
    """Student tokens of each templated sample (prompt + response + end of turn), grouped by domain."""
    out: dict[str, list[int]] = defaultdict(list)
    for r in records:
        out[r.domain].append(len(templater.render(r)))
    return dict(out)


def length_report(lengths: dict[str, list[int]], cutoffs: Sequence[int]) -> dict:
    """Per domain and overall: count, mean, percentiles, max, and the share dropped at each cutoff."""
    groups = {**lengths, "all": [n for v in lengths.values() for n in v]}
    report = {}
    for name, values in groups.items():
        a = np.asarray(values, dtype=np.int64)
        if a.size == 0:
            continue
        report[name] = {"count": int(a.size), "mean": float(a.mean()), "max": int(a.max()),
                        **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)},
                        "dropped_share": {str(c): float((a > c).mean()) for c in cutoffs},
                        "dropped_count": {str(c): int((a > c).sum()) for c in cutoffs}}
    return report


def plot_length_cdf(lengths: dict[str, list[int]], cutoffs: Sequence[int], path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in sorted(lengths.items()):
        a = np.sort(np.asarray(values))
        ax.plot(a, np.arange(1, a.size + 1) / a.size, label=f"{name} (n={a.size})")
    for c in cutoffs:
        ax.axvline(c, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="sample length (student tokens, templated)", ylabel="fraction of samples ≤ length",
           title="length CDF per domain (dashed: candidate cutoff_len)", ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
