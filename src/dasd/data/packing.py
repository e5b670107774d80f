"""Document-isolated sequence packing (spec §6.3; lessons §1.2).

Samples are packed into bins of at most ``cutoff_len`` tokens by first-fit-decreasing. Every sample keeps
its own position ids (restarting at 0), and labels never cross a sample boundary, so with
``use_cache=False`` (eager/sdpa) or flash-attention varlen no sample attends to another. Over-long samples
are dropped, never truncated, and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dasd.data.template import IGNORE_INDEX, TokenizedSample


@dataclass
class PackingReport:
    """Counts of a packing pass: nothing is dropped without being listed here."""

    cutoff_len: int
    samples_in: int = 0
    samples_packed: int = 0
    dropped_overlong: list[tuple[str, int]] = field(default_factory=list)  # (uuid, length)
    num_packs: int = 0
    tokens: int = 0
    supervised_tokens: int = 0

    @property
    def efficiency(self) -> float:
        """Fraction of the packs' capacity (num_packs × cutoff_len) holding real tokens."""
        return self.tokens / max(1, self.num_packs * self.cutoff_len)

    def summary(self) -> dict:
        return {"cutoff_len": self.cutoff_len, "samples_in": self.samples_in,
                "samples_packed": self.samples_packed, "dropped_overlong": len(self.dropped_overlong),
                "num_packs": self.num_packs, "tokens": self.tokens,
                "supervised_tokens": self.supervised_tokens, "packing_efficiency": round(self.efficiency, 4)}


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Pack items (by index) into bins of ``capacity``: longest first, each into the first bin it fits.

    O(n log n): a max segment tree over the bins' remaining capacity finds the leftmost bin that fits.
    Every length must be in [1, capacity]. Ties keep input order, so the result is deterministic.
    """
    n = len(lengths)
    if n == 0:
        return []
    if min(lengths) < 1 or max(lengths) > capacity:
        raise ValueError(f"lengths must lie in [1, {capacity}]")
    size = 1 << max(1, (n - 1).bit_length())
    tree = np.zeros(2 * size, dtype=np.int64)
    tree[size:size + n] = capacity  # leaf i: remaining capacity of bin i (bins open in order)
    for i in range(size - 1, 0, -1):
        tree[i] = max(tree[2 * i], tree[2 * i + 1])
    bins: list[list[int]] = []
    for item in sorted(range(n), key=lambda i: -lengths[i]):
        length, node = lengths[item], 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if tree[2 * node] >= length else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(item)
        tree[node] -= length
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return bins


def pack_samples(samples: Sequence[TokenizedSample], cutoff_len: int) -> tuple[list[list[int]], PackingReport]:
    """Pack tokenized samples; returns packs (lists of sample indices) and the report."""
    report = PackingReport(cutoff_len=cutoff_len, samples_in=len(samples))
    keep = []
    for i, s in enumerate(samples):
        if len(s) > cutoff_len:
            report.dropped_overlong.append((s.uuid, len(s)))
        else:
            keep.append(i)
    bins = first_fit_decreasing([len(samples[i]) for i in keep], cutoff_len)
    packs = [[keep[j] for j in b] for b in bins]
    report.samples_packed = len(keep)
    report.num_packs = len(packs)
    report.tokens = sum(len(samples[i]) for i in keep)
    report.supervised_tokens = sum(samples[i].num_supervised for i in keep)
    return packs, report


def shifted_labels(sample: TokenizedSample) -> list[int]:
    """labels[t] = the token position t predicts (ids[t+1]) where supervised, else IGNORE_INDEX.

    Shifting per sample means the last token of a sample never predicts the next sample's first token.
    """
    ids, sup = sample.input_ids, sample.supervised
    return [ids[t + 1] if sup[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


class PackedDataset(torch.utils.data.Dataset):
    """Packs of tokenized samples. Item: input_ids, labels (already shifted), position_ids, seq_lens."""

    def __init__(self, samples: Sequence[TokenizedSample], packs: list[list[int]]) -> None:
        self.samples, self.packs = samples, packs

    def __len__(self) -> int:
        return len(self.packs)

    def supervised_tokens(self, pack: int) -> int:
        return sum(self.samples[i].num_supervised for i in self.packs[pack])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        pack, step_tokens = key if isinstance(key, tuple) else (key, -1)
        ids, labels, pos, lens = [], [], [], []
        for i in self.packs[pack]:
            s = self.samples[i]
            ids += s.input_ids
            labels += shifted_labels(s)
            pos += range(len(s))
            lens.append(len(s))
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lens": lens,
                "step_tokens": step_tokens}


class PackCollator:
    """Stack packs into a micro-batch, right-padding to the longest pack.

    Padding is its own position-0 segment with ignored labels, so no real token attends to it or
    is supervised by it. Adds counts used for loss normalisation and throughput logging.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            ids[row, :n] = torch.tensor(it["input_ids"])
            labels[row, :n] = torch.tensor(it["labels"])
            pos[row, :n] = torch.tensor(it["position_ids"])
            pos[row, n:] = torch.arange(width - n)
        real = sum(len(it["input_ids"]) for it in items)
        # sample boundaries over the flattened micro-batch (pad tails are segments of their own), for
        # varlen attention: cu_seq_lens = [0, s1, s1+s2, ...], max_length = the longest segment
        segments = []
        for it in items:
            segments += it["seq_lens"] + ([width - len(it["input_ids"])] if len(it["input_ids"]) < width else [])
        cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
        cu[1:] = torch.tensor(segments, dtype=torch.int32).cumsum(0)
        return {"input_ids": ids, "labels": labels, "position_ids": pos,
                "cu_seq_lens": cu, "max_length": max(segments),
                "num_tokens": torch.tensor(real), "num_pad": torch.tensor(ids.numel() - real),
                "step_tokens": torch.tensor(items[0]["step_tokens"])}
