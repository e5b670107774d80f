"""Step-aware batching: every pack once per epoch across ranks, step token counts, seeded order, resume."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from torch.utils.data import Dataset

from dasd.data.sampler import ResumableDataLoader, StepBatchSampler


def _tokens(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 1000) for _ in range(n)]


def _all_ranks(tokens, micro, accumulate, world, seed=0, epoch=0) -> list[list[list[tuple[int, int]]]]:
    """Every rank's micro-batches for one epoch: out[rank][k] = list of (pack, step_tokens)."""
    out = []
    for rank in range(world):
        s = StepBatchSampler(tokens, micro, accumulate, world_size=world, rank=rank, seed=seed)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def _check_epoch(tokens, micro, accumulate, world, seed=0, epoch=0) -> None:
    n = len(tokens)
    ranks = _all_ranks(tokens, micro, accumulate, world, seed, epoch)
    sampler = StepBatchSampler(tokens, micro, accumulate, world_size=world, rank=0, seed=seed)
    # every rank runs the same number of micro-batches, and len() says how many
    assert all(len(r) == len(sampler) for r in ranks)
    # every micro-batch on every rank is full when there is more than one rank (the last one may be short
    # on a single rank)
    for r in ranks:
        for k, mb in enumerate(r):
            if world > 1 or k < len(r) - 1:
                assert len(mb) == micro
    # every pack once; with padding for ranks, `repeated` extra packs (repeats of packs seen this epoch)
    counts = Counter(p for r in ranks for mb in r for p, _ in mb)
    assert set(counts) == set(range(n))
    assert sum(counts.values()) == n + sampler.repeated
    if n % (micro * world) == 0 or world == 1:
        assert sampler.repeated == 0 and set(counts.values()) == {1}
    # ranks get disjoint slices of every micro-step (fillers never duplicate a pack of their micro-step)
    if n >= micro * world:
        for k in range(len(sampler)):
            seen = [p for r in ranks for p, _ in r[k]]
            assert len(seen) == len(set(seen))
    # step_tokens = supervised tokens of the whole optimizer step, over all ranks, computed independently
    for k in range(len(sampler)):
        group = range(k - k % accumulate, min(k - k % accumulate + accumulate, len(sampler)))
        expected = sum(tokens[p] for r in ranks for j in group for p, _ in r[j])
        for r in ranks:
            assert {t for _, t in r[k]} == {expected}
    assert sampler.steps_per_epoch == -(-len(sampler) // accumulate)


@pytest.mark.parametrize("n, micro, accumulate, world", [
    (24, 2, 3, 2),  # divisible, whole accumulation groups
    (24, 1, 5, 4),  # divisible, last accumulation group short
    (17, 2, 2, 1),  # single rank, last micro-batch short
    (13, 2, 3, 2),  # repeats needed
    (10, 3, 2, 3),  # repeats needed
    (1, 1, 4, 1),
])
def test_epoch_covers_every_pack_with_step_tokens(n, micro, accumulate, world):
    """Per epoch every pack appears once across ranks (plus `repeated` fillers), ranks are disjoint, and
    each micro-batch's step_tokens is the supervised-token total of its whole optimizer step on all ranks."""
    tokens = _tokens(n, seed=n)
    for epoch in (0, 1):
        _check_epoch(tokens, micro, accumulate, world, seed=3, epoch=epoch)


def test_epoch_invariants_random():
    """The same invariants over many random configurations."""
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 60)
        micro, accumulate, world = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 4)
        _check_epoch(_tokens(n, seed=n), micro, accumulate, world, seed=rng.randint(0, 99), epoch=rng.randint(0, 3))


def test_fewer_packs_than_one_micro_step():
    """Even with fewer packs than micro_batch_size × world, every rank gets a full micro-batch, and step_tokens
    equals the tokens actually trained on (3 packs, micro 2, 4 ranks)."""
    _check_epoch(_tokens(3), micro=2, accumulate=1, world=4)


def test_order_depends_only_on_seed_and_epoch():
    """Same (seed, epoch) gives the same order, whatever happened before; another epoch or seed reorders."""
    tokens = _tokens(40)

    def order(seed, epoch, warmup_epochs=()):
        s = StepBatchSampler(tokens, 2, 2, seed=seed)
        for e in warmup_epochs:
            s.set_epoch(e)
            list(s)
        s.set_epoch(epoch)
        return [p for mb in s for p, _ in mb]

    assert order(7, 2) == order(7, 2, warmup_epochs=(0, 5, 1))
    assert sorted(order(7, 2)) == list(range(40))
    assert order(7, 2) != order(7, 3)
    assert order(7, 2) != order(8, 2)


def test_no_shuffle_is_input_order():
    """shuffle=False yields the packs in index order, every epoch."""
    s = StepBatchSampler(_tokens(7), 3, 1, shuffle=False)
    s.set_epoch(4)
    assert [[p for p, _ in mb] for mb in s] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("world", [1, 2])
def test_skip_resumes_mid_epoch(world):
    """skip(epoch, k) makes the next pass over that epoch yield exactly its tail after k micro-batches, once."""
    tokens = _tokens(29)
    for rank in range(world):
        s = StepBatchSampler(tokens, 2, 3, world_size=world, rank=rank, seed=5)
        s.set_epoch(1)
        full = list(s)
        for k in (0, 1, 3, 4, len(full) - 1, len(full)):
            s.skip(1, k)
            assert list(s) == full[k:]
        assert list(s) == full  # a skip applies to one pass only


def test_skip_for_another_epoch_is_ignored():
    """A skip recorded for epoch e does not shorten an iteration over a different epoch."""
    s = StepBatchSampler(_tokens(20), 2, 2, seed=1)
    s.set_epoch(0)
    full0 = list(s)
    s.skip(1, 3)
    assert list(s) == full0


@pytest.mark.parametrize("n, micro, accumulate, world", [(20, 2, 3, 1), (21, 2, 2, 2), (8, 4, 1, 2), (5, 1, 7, 1)])
def test_len_and_steps_per_epoch(n, micro, accumulate, world):
    """len() is the number of micro-batches yielded and steps_per_epoch = ceil(len / accumulate)."""
    s = StepBatchSampler(_tokens(n), micro, accumulate, world_size=world, rank=world - 1)
    assert len(list(s)) == len(s) == -(-(n + s.repeated) // (micro * world))
    assert s.steps_per_epoch == -(-len(s) // accumulate)


def test_invalid_sizes_raise():
    """micro_batch_size or accumulate below 1 is a ValueError."""
    with pytest.raises(ValueError):
        StepBatchSampler(_tokens(4), 0, 1)
    with pytest.raises(ValueError):
        StepBatchSampler(_tokens(4), 1, 0)


class _Keys(Dataset):
    def __getitem__(self, key):
        return key

    def __len__(self):  # pragma: no cover - the batch sampler drives iteration
        return 0


def _loader(tokens, progress, micro=2, accumulate=3, seed=4):
    sampler = StepBatchSampler(tokens, micro, accumulate, seed=seed)
    return ResumableDataLoader(_Keys(), batch_sampler=sampler, collate_fn=list, progress=progress)


@pytest.mark.parametrize("global_step, epoch", [(0, 0), (2, 0), (4, 0), (4, 1), (5, 1), (7, 1), (9, 2)])
def test_loader_state_round_trip(global_step, epoch):
    """state_dict records consumed = (global_step − epoch·steps_per_epoch)·accumulate micro-batches of the
    current epoch, or at the epoch's end the next epoch from its start; a fresh loader restored from it
    resumes exactly there."""
    tokens = _tokens(22)  # 11 micro-batches of 2, accumulate 3 -> 4 steps per epoch
    loader = _loader(tokens, progress=lambda: (global_step, epoch))
    sampler = loader.batch_sampler
    assert sampler.steps_per_epoch == 4 and len(sampler) == 11
    state = loader.state_dict()
    consumed = (global_step - epoch * sampler.steps_per_epoch) * 3
    assert (state["epoch"], state["consumed"]) == ((epoch, consumed) if consumed < len(sampler) else (epoch + 1, 0))
    epoch = state["epoch"]

    reference = _loader(tokens, progress=lambda: (0, 0))
    reference.batch_sampler.set_epoch(epoch)
    full = list(reference)
    assert len(full) == len(sampler)

    resumed = _loader(tokens, progress=lambda: (0, 0))
    resumed.load_state_dict(state)
    resumed.batch_sampler.set_epoch(epoch)
    assert list(resumed) == full[state["consumed"]:]
    assert list(resumed) == full  # the restored skip applies to one pass only


@pytest.mark.parametrize("n,micro,accumulate,world", [(10, 1, 4, 1), (11, 2, 3, 2), (8, 1, 4, 2), (3, 2, 2, 1)])
def test_full_steps_give_every_optimizer_step_accumulate_micro_batches(n, micro, accumulate, world):
    """full_steps (a strategy that accumulates by itself, DeepSpeed): every optimizer step has exactly
    `accumulate` micro-batches on every rank, every pack appears, the repeats come from the epoch's start and
    each micro-batch's step_tokens are its step's total (repeats included)."""
    tokens = [10 + 7 * i for i in range(n)]
    ranks = [list(StepBatchSampler(tokens, micro, accumulate, world, r, seed=3, full_steps=True)) for r in range(world)]
    sampler = StepBatchSampler(tokens, micro, accumulate, world, 0, seed=3, full_steps=True)
    for batches in ranks:
        assert len(batches) == len(sampler) and len(batches) % accumulate == 0
        assert all(len(b) == micro for b in batches)
    seen = Counter(p for batches in ranks for b in batches for p, _ in b)
    assert set(seen) == set(range(n)) and sum(seen.values()) == n + sampler.repeated
    for g in range(0, len(ranks[0]), accumulate):
        step = [b for batches in ranks for b in batches[g:g + accumulate]]
        total = sum(tokens[p] for b in step for p, _ in b)
        assert {t for b in step for _, t in b} == {total}
    assert sampler.steps_per_epoch * accumulate == len(sampler)


def test_optimizer_steps_count_micro_batches_only_under_self_accumulating_strategies():
    """Lightning's global_step counts micro-batches when the strategy accumulates (DeepSpeed); dasd's step
    count (metrics, checkpoints, data position, mixed rounds) is optimizer steps either way."""
    from types import SimpleNamespace

    from dasd.utils.steps import micro_batches_per_step, optimizer_steps

    ds = SimpleNamespace(global_step=12, accumulate_grad_batches=4,
                         strategy=SimpleNamespace(handles_gradient_accumulation=True))
    plain = SimpleNamespace(global_step=3, accumulate_grad_batches=4,
                            strategy=SimpleNamespace(handles_gradient_accumulation=False))
    assert (micro_batches_per_step(ds), optimizer_steps(ds)) == (4, 3)
    assert (micro_batches_per_step(plain), optimizer_steps(plain)) == (1, 3)
