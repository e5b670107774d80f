"""Document-isolated packing: FFD bins, nothing truncated, labels stay inside samples, packed loss == unpacked."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_record
from transformers import AutoModelForCausalLM

from dasd.data.packing import PackCollator, PackedDataset, first_fit_decreasing, pack_samples
from dasd.data.records import Record
from dasd.data.template import IGNORE_INDEX, ChatTemplater, TokenizedSample
from dasd.training.module import packed_loss_sum


def _fake(length: int, n_prompt: int = 1, uuid: str = "") -> TokenizedSample:
    """A tokenized sample of ``length`` tokens whose first ``n_prompt`` tokens are the (unsupervised) prompt."""
    return TokenizedSample(input_ids=[(7 * t + length) % 1000 + 1 for t in range(length)],
                           supervised=[t >= n_prompt for t in range(length)], uuid=uuid or f"u{length}")


def _rendered(tokenizer, n: int = 4) -> list[TokenizedSample]:
    """n real templated samples of clearly different lengths."""
    templater = ChatTemplater(tokenizer, system_prompt="You are a helpful assistant.")
    samples = []
    for i in range(1, n + 1):
        rec = make_record(i)
        samples.append(templater.render(Record(**make_record(i, output=rec["output"] * i))))
    assert len({len(s) for s in samples}) == n
    return samples


# ---------------------------------------------------------------- first_fit_decreasing


def _check_ffd(lengths: list[int], capacity: int, bins: list[list[int]]) -> None:
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each index exactly once
    assert all(b and sum(lengths[i] for i in b) <= capacity for b in bins)
    where = {i: j for j, b in enumerate(bins) for i in b}
    remaining: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # decreasing, stable ties
        first = next((j for j, r in enumerate(remaining) if r >= lengths[item]), len(remaining))
        assert where[item] == first, f"item {item} (len {lengths[item]}) went to bin {where[item]}, not {first}"
        if first == len(remaining):
            remaining.append(capacity)
        remaining[first] -= lengths[item]
    assert len(bins) == len(remaining)


def test_ffd_property_random():
    """Over many random inputs: every index once, no bin over capacity, each item in the first bin with room."""
    for seed in range(400):
        rng = random.Random(seed)
        capacity = rng.choice([1, 2, 7, 16, 100, 1024])
        n = rng.randint(0, 80)
        hi = rng.choice([1, max(1, capacity // 4), capacity])
        lengths = [rng.randint(1, hi) for _ in range(n)]
        _check_ffd(lengths, capacity, first_fit_decreasing(lengths, capacity))


def test_ffd_edge_cases():
    """Empty input gives no bins; all-full items each get a bin; ties keep input order."""
    assert first_fit_decreasing([], 10) == []
    assert first_fit_decreasing([10, 10, 10], 10) == [[0], [1], [2]]
    assert first_fit_decreasing([3, 3, 3, 3], 6) == [[0, 1], [2, 3]]
    _check_ffd([5, 5, 5, 5, 5], 10, first_fit_decreasing([5, 5, 5, 5, 5], 10))


@pytest.mark.parametrize("lengths", [[0], [3, 0, 2], [-1, 4], [11], [2, 11, 3]])
def test_ffd_invalid_lengths_raise(lengths):
    """A length outside [1, capacity] is a ValueError."""
    with pytest.raises(ValueError):
        first_fit_decreasing(lengths, 10)


def test_ffd_deterministic():
    """The same lengths always give the same bins."""
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(500)]
    assert first_fit_decreasing(lengths, 64) == first_fit_decreasing(list(lengths), 64)


# ---------------------------------------------------------------- pack_samples


def test_pack_samples_drops_overlong_and_counts():
    """Over-long samples are dropped (listed with uuid and length), kept ones are packed whole; counts add up."""
    cutoff = 32
    lengths = [5, 40, 32, 17, 33, 1, 12, 20, 100, 9]
    samples = [_fake(n, n_prompt=min(3, n - 1), uuid=f"id{i}") for i, n in enumerate(lengths)]
    packs, report = pack_samples(samples, cutoff)
    assert sorted(report.dropped_overlong) == sorted((f"id{i}", n) for i, n in enumerate(lengths) if n > cutoff)
    packed = sorted(i for p in packs for i in p)
    assert packed == [i for i, n in enumerate(lengths) if n <= cutoff]
    assert report.samples_in == len(samples) == report.samples_packed + len(report.dropped_overlong)
    assert report.num_packs == len(packs)
    assert report.tokens == sum(len(samples[i]) for i in packed)
    assert report.supervised_tokens == sum(samples[i].num_supervised for i in packed)
    assert report.efficiency == pytest.approx(report.tokens / (report.num_packs * cutoff))
    assert 0 < report.efficiency <= 1
    summary = report.summary()
    assert summary["dropped_overlong"] == 3 and summary["samples_packed"] == len(packed)
    dataset = PackedDataset(samples, packs)
    for p, pack in enumerate(packs):  # never truncated: each pack is its samples' full ids, within cutoff
        item = dataset[p]
        assert item["input_ids"] == [t for i in pack for t in samples[i].input_ids]
        assert len(item["input_ids"]) <= cutoff


def test_pack_samples_all_overlong():
    """If every sample is too long there are no packs, and every sample is reported as dropped."""
    packs, report = pack_samples([_fake(50, uuid="a"), _fake(60, uuid="b")], 10)
    assert packs == [] and report.num_packs == 0 and report.tokens == 0
    assert report.dropped_overlong == [("a", 50), ("b", 60)]


# ---------------------------------------------------------------- labels in a pack


def test_labels_stay_inside_samples(tokenizer):
    """In a pack: position ids restart at 0 per sample, a sample's last label is ignored, every label is the
    next token of the same sample, and each supervised token is predicted exactly once."""
    samples = _rendered(tokenizer, 4)
    item = PackedDataset(samples, [[2, 0, 3, 1]])[0]
    assert item["seq_lens"] == [len(samples[i]) for i in (2, 0, 3, 1)]
    assert len(item["input_ids"]) == len(item["labels"]) == len(item["position_ids"]) == sum(item["seq_lens"])
    start = 0
    for i in (2, 0, 3, 1):
        s, n = samples[i], len(samples[i])
        ids, labels = item["input_ids"][start:start + n], item["labels"][start:start + n]
        assert ids == s.input_ids
        assert item["position_ids"][start:start + n] == list(range(n))
        assert labels[-1] == IGNORE_INDEX
        assert not s.supervised[0]  # position 0 is prompt, so no supervised token is lost to the shift
        predicted = [t + 1 for t in range(n) if labels[t] != IGNORE_INDEX]
        assert predicted == [t for t in range(n) if s.supervised[t]]
        assert all(labels[t - 1] == ids[t] for t in predicted)
        start += n
    assert sum(lab != IGNORE_INDEX for lab in item["labels"]) == sum(s.num_supervised for s in samples)


# ---------------------------------------------------------------- packed loss == unpacked loss


_loss_sum = packed_loss_sum  # summed token CE, as SFTModule.forward_loss_sum computes it


def _loss_and_grads(model, batches) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total = sum(_loss_sum(model, b) for b in batches)
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total.detach(), grads


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_path):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation=request.param, dtype=torch.float32)
    m.config.use_cache = False
    return m.eval()  # eval: no dropout, so packed and unpacked forwards are comparable


def test_packed_loss_and_grads_equal_unpacked(model, tokenizer):
    """One pack of several samples gives the same summed loss and gradients as each sample alone."""
    samples = _rendered(tokenizer, 4)
    collate = PackCollator(tokenizer.pad_token_id)
    packed = collate([PackedDataset(samples, [[0, 1, 2, 3]])[0]])
    assert packed["input_ids"].shape == (1, sum(len(s) for s in samples)) and int(packed["num_pad"]) == 0
    alone = PackedDataset(samples, [[i] for i in range(len(samples))])
    loss_p, grads_p = _loss_and_grads(model, [packed])
    loss_u, grads_u = _loss_and_grads(model, [collate([alone[i]]) for i in range(len(alone))])
    assert loss_u > 0
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=1e-4)
    assert grads_p.keys() == grads_u.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_u[name], atol=1e-5, rtol=1e-4, msg=name)


def test_contaminated_pack_differs(model, tokenizer):
    """Control: if position ids run across the whole pack (no per-sample restart), samples see each other
    and the loss moves away from the unpacked one, so the equality test above can fail."""
    samples = _rendered(tokenizer, 4)
    collate = PackCollator(tokenizer.pad_token_id)
    packed = collate([PackedDataset(samples, [[0, 1, 2, 3]])[0]])
    contaminated = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    alone = PackedDataset(samples, [[i] for i in range(len(samples))])
    with torch.no_grad():
        loss_c = _loss_sum(model, contaminated)
        loss_u = sum(_loss_sum(model, collate([alone[i]])) for i in range(len(alone)))
    assert abs(float(loss_c) - float(loss_u)) > 1e-4


def test_padding_never_changes_the_loss(model, tokenizer):
    """Two packs of different lengths in one micro-batch: padding has ignored labels, is counted in num_pad,
    and the batch loss equals the sum of the packs' own losses."""
    samples = _rendered(tokenizer, 4)
    dataset = PackedDataset(samples, [[3, 0], [1]])
    collate = PackCollator(tokenizer.pad_token_id)
    items = [dataset[0], dataset[1]]
    lens = [len(it["input_ids"]) for it in items]
    assert lens[0] != lens[1]
    batch = collate(items)
    width = max(lens)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (2, width)
    for row, n in enumerate(lens):
        assert batch["input_ids"][row, :n].tolist() == items[row]["input_ids"]
        assert batch["labels"][row, :n].tolist() == items[row]["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    assert int(batch["num_pad"]) == 2 * width - sum(lens) > 0
    assert int(batch["num_tokens"]) == sum(lens)
    with torch.no_grad():
        loss_batch = _loss_sum(model, batch)
        loss_each = sum(_loss_sum(model, collate([it])) for it in items)
    torch.testing.assert_close(loss_batch, loss_each, atol=1e-5, rtol=1e-4)


def test_collator_sample_boundaries_match_position_ids(tokenizer):
    """The collator's cu_seq_lens/max_length (what varlen attention gets) are the boundaries transformers
    derives from the restarting position_ids, pad tails included as segments of their own."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    samples = _rendered(tokenizer, 4)
    dataset = PackedDataset(samples, [[3, 0], [1], [2]])
    batch = PackCollator(tokenizer.pad_token_id)([dataset[0], dataset[1], dataset[2]])
    (cu, _), (max_len, _) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert batch["cu_seq_lens"].dtype == torch.int32
    assert batch["cu_seq_lens"].tolist() == cu.tolist()
    assert batch["max_length"] == int(max_len)
    assert int(batch["cu_seq_lens"][-1]) == batch["input_ids"].numel()
    lens = [len(s) for s in samples]
    width = batch["input_ids"].shape[1]
    expected = [lens[3], lens[0]] + [lens[1]] + ([width - lens[1]] if width > lens[1] else []) + [lens[2]] + (
        [width - lens[2]] if width > lens[2] else [])
    assert batch["cu_seq_lens"].diff().tolist() == expected


@pytest.mark.parametrize("accumulate", [1, 4])
def test_step_loss_is_the_token_mean_under_every_strategy(tokenizer, tiny_path, accumulate):
    """What reaches backward after the divisions each strategy applies is the micro-batch's share of the
    step's token-mean CE: Lightning divides by `accumulate`; DeepSpeed's engine divides once more."""
    from types import SimpleNamespace

    from dasd.models.student import StudentSpec
    from dasd.training.module import SFTModule
    from dasd.training.optim import OptimConfig

    samples = _rendered(tokenizer, 2)
    batch = PackCollator(tokenizer.pad_token_id)([PackedDataset(samples, [[0, 1]])[(0, 1000)]])
    module = SFTModule(StudentSpec(name_or_path=tiny_path), OptimConfig())
    module.configure_model()
    want = float(packed_loss_sum(module.model, batch)) / 1000
    for handles, divisions in ((False, accumulate), (True, accumulate * accumulate)):
        module._trainer = SimpleNamespace(accumulate_grad_batches=accumulate, world_size=1,
                                          strategy=SimpleNamespace(handles_gradient_accumulation=handles))
        got = float(module.training_step(batch, 0)) / divisions
        assert got == pytest.approx(want, rel=1e-6), handles
