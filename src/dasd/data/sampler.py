"""Seeded, resumable, optimizer-step-aware batching of packs.

Each micro-batch carries the number of supervised tokens in its whole optimizer step (all gradient
accumulation micro-batches on all data-parallel ranks), so the loss can be a token mean over the whole
step (lessons §1.3). The order depends only on (seed, epoch); the loader can resume mid-epoch.

Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler`` only
(``lightning.fabric.utilities.data._set_sampler_epoch``), never on the batch sampler itself, so the per-epoch
order lives in ``StepBatchSampler.sampler`` (an ``EpochOrder``), where that call reaches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler


class EpochOrder(Sampler[int]):
    """The order of ``n`` packs in one epoch: a permutation seeded by (seed, epoch), or index order."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)  # (seed, epoch) pairs never collide
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class StepBatchSampler:
    """Yields this rank's micro-batches as lists of ``(pack_index, step_supervised_tokens)``.

    The global order of packs is a seeded permutation per epoch. Consecutive ``micro_batch_size × world``
    packs form one micro-step (rank r takes its slice); ``accumulate`` micro-steps form one optimizer step.
    When the last micro-step cannot give every rank a full slice, packs from the start of the epoch are
    repeated to fill it, as ``DistributedSampler`` does; ``repeated`` counts them. ``full_steps``: the last
    optimizer step is filled the same way to exactly ``accumulate`` micro-steps. A strategy that accumulates
    by itself (DeepSpeed counts micro-steps, never epochs) needs this: a short last step would leave its
    gradients waiting and shift every later step boundary.
    """

    def __init__(self, pack_tokens: Sequence[int], micro_batch_size: int, accumulate: int,
                 world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 full_steps: bool = False) -> None:
        if micro_batch_size < 1 or accumulate < 1:
            raise ValueError("micro_batch_size and accumulate must be >= 1")
        self.pack_tokens = list(pack_tokens)
        self.micro, self.accumulate = micro_batch_size, accumulate
        self.world, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.sampler = EpochOrder(len(self.pack_tokens), seed, shuffle)  # Lightning's set_epoch reaches it here
        self.batch_size = micro_batch_size  # packs per micro-batch (read by Lightning's DeepSpeed strategy)
        self._skip: tuple[int, int] | None = None  # (epoch, micro-batches already consumed)
        n, width = len(self.pack_tokens), micro_batch_size * world_size
        if full_steps:
            self.repeated = (-n) % (width * accumulate) if n else 0
        else:
            self.repeated = (-n) % width if world_size > 1 else 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip(self, epoch: int, consumed: int) -> None:
        """On the next iteration over ``epoch``, skip its first ``consumed`` micro-batches (resume)."""
        self._skip = (epoch, consumed)

    def _global_order(self) -> list[int]:
        n, order = len(self.pack_tokens), list(self.sampler)
        return order + (order * -(-self.repeated // n))[: self.repeated] if self.repeated else order

    def _micro_steps(self) -> list[list[int]]:
        order, width = self._global_order(), self.micro * self.world
        return [order[i:i + width] for i in range(0, len(order), width)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        steps = self._micro_steps()
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None
        for g in range(0, len(steps), self.accumulate):
            group = steps[g:g + self.accumulate]
            tokens = sum(self.pack_tokens[p] for micro_step in group for p in micro_step)
            for k, micro_step in enumerate(group, start=g):
                if k < start:
                    continue
                per_rank = len(micro_step) // self.world
                mine = micro_step[self.rank * per_rank:(self.rank + 1) * per_rank] if self.world > 1 else micro_step
                yield [(p, tokens) for p in mine]

    def __len__(self) -> int:
        return -(-(len(self.pack_tokens) + self.repeated) // (self.micro * self.world))

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self) // self.accumulate)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position Lightning saves in (and restores from) its checkpoints.

    Checkpoints are taken at optimizer-step boundaries, so the position is derived from the trainer's
    progress (``progress() -> (global_step, epoch)``), not from the iterator, which Lightning prefetches.
    ``base() -> (epoch, step)``: the epoch since which the data has its current size, and the step it began
    at (``(0, 0)`` unless samples were added between epochs).

    The state is the next pass: ``{"epoch": e, "consumed": k}`` iterates epoch e's order from its k-th
    micro-batch. A checkpoint at an epoch's end names the next epoch from its start, since the data of that
    epoch may have another size (a mixed-policy round adds samples between epochs). Lightning loads the
    state before it first iterates the resumed fit's loader (``_FitLoop.setup_data``), and ``set_epoch``
    comes only after that first iteration began, so ``load_state_dict`` sets the epoch itself.
    """

    def __init__(self, *args, progress: Callable[[], tuple[int, int]],
                 base: Callable[[], tuple[int, int]] = lambda: (0, 0), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._progress, self._base = progress, base

    def state_dict(self) -> dict:
        sampler: StepBatchSampler = self.batch_sampler
        global_step, epoch = self._progress()
        epoch0, step0 = self._base()  # from epoch0 on (begun at step0) every epoch has this sampler's length
        steps_done = global_step - step0 - (epoch - epoch0) * sampler.steps_per_epoch
        consumed = min(len(sampler), steps_done * sampler.accumulate)
        return {"epoch": epoch + 1, "consumed": 0} if consumed >= len(sampler) else {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: dict) -> None:
        sampler: StepBatchSampler = self.batch_sampler
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(sampler):  # an epoch's end as checkpoints before the next-pass form recorded it
            epoch, consumed = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip(epoch, consumed)
