"""Mixed-policy samples in the data pipeline: the student/teacher boundary survives tokenization, the two loss
masks, keeping every record, adding samples for later epochs, and stretching the LR schedule."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_record, write_jsonl
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from dasd.data.datamodule import SFTDataModule
from dasd.data.records import Record
from dasd.data.sampler import ResumableDataLoader, StepBatchSampler
from dasd.data.selection import KeepAllSelector, RandomSelector
from dasd.data.template import STUDENT_PREFIX_KEY, ChatTemplater
from dasd.training.optim import OptimConfig, retarget_schedule

OUTPUT = ("<think>\nFirst I add 12 and 30, which gives 42. Then I halve it: 21 — done ✓.\n</think>\n\n"
          "The answer is \\boxed{21}.")


def mixed_record(boundary: int, output: str = OUTPUT, uuid: str = "m-0") -> Record:
    meta = json.dumps({"kind": "mixed_policy", STUDENT_PREFIX_KEY: boundary})
    return Record(uuid=uuid, input="What is (12 + 30) / 2?", output=output, domain="math", meta=meta)


def supervised_ids(sample) -> list[int]:
    return [t for t, s in zip(sample.input_ids, sample.supervised, strict=True) if s]


@pytest.mark.parametrize("boundary", [9, 30, 57, 58, len(OUTPUT) - 3])
def test_boundary_is_a_token_boundary_and_masks_cover_exactly_their_part(tokenizer, boundary):
    """no-mask trains on the whole response; mask trains on exactly the teacher's characters + end-of-turn,
    and the student's tokens decode to exactly output[:b] (a split multi-byte character never straddles)."""
    record = mixed_record(boundary)
    full = ChatTemplater(tokenizer).render(record)
    masked = ChatTemplater(tokenizer, mask_student_prefix=True).render(record)
    assert full.input_ids == masked.input_ids  # the mask changes labels, never tokens
    eot = tokenizer.decode(ChatTemplater(tokenizer).end_ids)  # "<|im_end|>\n" (data.supervise_eot_newline)
    assert tokenizer.decode(supervised_ids(full)) == OUTPUT + eot
    assert tokenizer.decode(supervised_ids(masked)) == OUTPUT[boundary:] + eot
    n_prompt = full.supervised.index(True)
    n_student = len(full.input_ids) - n_prompt - len(supervised_ids(masked))
    assert tokenizer.decode(full.input_ids[n_prompt:n_prompt + n_student]) == OUTPUT[:boundary]
    assert masked.supervised[n_prompt:n_prompt + n_student] == [False] * n_student


def test_plain_records_render_as_before(tokenizer):
    """A record without the boundary key is tokenized in one piece, with or without the mask setting."""
    r = make_record(3)
    record = Record(uuid=r["uuid"], input=r["input"], output=r["output"], domain="math", meta=r["meta"])
    a, b = ChatTemplater(tokenizer).render(record), ChatTemplater(tokenizer, mask_student_prefix=True).render(record)
    assert a == b
    end = len(ChatTemplater(tokenizer).end_ids)
    assert a.input_ids[a.supervised.index(True):-end] == tokenizer.encode(r["output"], add_special_tokens=False)


@pytest.mark.parametrize("bad", [0, len(OUTPUT), -1, "12"])
def test_bad_boundary_names_the_field(tokenizer, bad):
    meta = json.dumps({STUDENT_PREFIX_KEY: bad})
    record = Record(uuid="u", input="q", output=OUTPUT, domain="math", meta=meta, source="data.jsonl:7")
    with pytest.raises(ValueError, match=rf"data.jsonl:7: field 'meta.{STUDENT_PREFIX_KEY}'"):
        ChatTemplater(tokenizer).render(record)


def test_keep_all_keeps_two_samples_of_one_question():
    a = Record("a", "q", "x", "math", json.dumps({"question_id": "1"}))
    b = Record("b", "q", "y", "math", json.dumps({"question_id": "1"}))
    kept, report = KeepAllSelector().select([a, b])
    assert [r.uuid for r in kept] == ["a", "b"] and report["selected"] == 2 and report["questions"] == 1
    assert len(RandomSelector().select([a, b])[0]) == 1


def _dm(tokenizer, path, tmp_path, **kw) -> SFTDataModule:
    return SFTDataModule(path=str(path), tokenizer=tokenizer, selector=KeepAllSelector(), cutoff_len=256,
                         cache_dir=str(tmp_path / "cache"), **kw)


def test_selected_records_and_added_samples(tokenizer, tmp_path):
    """The cache entry lists its selected records with the response length in student tokens; samples added
    for later epochs extend the packed data and show up in the report."""
    base = write_jsonl(tmp_path / "base.jsonl", [make_record(i) for i in range(6)])
    dm = _dm(tokenizer, base, tmp_path)
    dm.setup("fit")
    rows = dm.selected_records()
    assert [r["uuid"] for r in rows] == [make_record(i)["uuid"] for i in range(6)]
    for r, s in zip(rows, dm.samples, strict=True):
        assert r["response_tokens"] == s.num_supervised - len(dm.templater.end_ids)  # without the end tokens
        assert r["reference"].endswith("\\boxed{" + str(2 * int(r["input"].split()[2])) + "}.")
    mixed = {**make_record(99), "output": OUTPUT,
             "meta": json.dumps({"kind": "mixed_policy", STUDENT_PREFIX_KEY: 30})}
    extra = dm.derive(str(write_jsonl(tmp_path / "mixed.jsonl", [mixed])))
    extra.setup("fit")
    tokens_before = dm.packing_report.tokens
    dm.set_extra(extra, round=1)
    assert len(dm.samples) == 7 and dm.report()["extra"]["samples"] == 1
    assert dm.packing_report.tokens == tokens_before + len(extra.samples[0])
    dm.set_extra(None)
    assert len(dm.samples) == 6 and dm.report()["extra"] is None


def test_resume_position_after_the_data_grew():
    """With (epoch, step) of the last data change as the base, a checkpoint's position in the epoch is right
    even though earlier epochs had another length."""
    sampler = StepBatchSampler([10] * 12, micro_batch_size=1, accumulate=2)  # 6 steps per epoch
    progress = {"step": 0, "epoch": 0}
    loader = ResumableDataLoader(list(range(12)), batch_sampler=sampler,
                                 progress=lambda: (progress["step"], progress["epoch"]), base=lambda: (1, 4))
    progress.update(step=4 + 6 + 2, epoch=2)  # epoch 0 had 4 steps; epochs 1, 2 have 6: 2 steps into epoch 2
    assert loader.state_dict() == {"epoch": 2, "consumed": 4}


def test_retarget_schedule_matches_a_fresh_schedule_of_the_new_length():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20,
                                                        min_lr=cfg.min_lr)
    for _ in range(10):
        opt.step()
        sched.step()
    retarget_schedule(sched, cfg, total_steps=50, num_warmup_steps=3)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=cfg.lr)
    ref = get_cosine_with_min_lr_schedule_with_warmup(ref_opt, num_warmup_steps=3, num_training_steps=50,
                                                      min_lr=cfg.min_lr)
    for step in range(10, 50):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref.lr_lambdas[0](step) * cfg.lr)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.min_lr)


def test_references_are_computed_for_the_selected_records_only(tokenizer, tmp_path, monkeypatch):
    """Two candidates per question, one selected: one reference per selected record, read back from its line."""
    import dasd.data.datamodule as datamodule

    rows = []
    for i in range(4):
        for k in range(2):
            rows.append({**make_record(10 * i + k), "input": f"question {i}",
                         "meta": json.dumps({"question_id": str(i), "answer": f"{i}-{k}"})})
    path = write_jsonl(tmp_path / "two.jsonl", rows)
    calls, reference_answer = [], datamodule.reference_answer

    def counted(output, meta=None):
        calls.append(output)
        return reference_answer(output, meta)

    monkeypatch.setattr(datamodule, "reference_answer", counted)
    dm = SFTDataModule(path=str(path), tokenizer=tokenizer, selector=RandomSelector(), cutoff_len=256,
                       cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    selected = dm.selected_records()
    assert len(selected) == 4 and len(calls) == 4
    by_uuid = {r["uuid"]: r for r in rows}
    for r in selected:
        assert r["reference"] == json.loads(by_uuid[r["uuid"]]["meta"])["answer"]


def test_response_tokens_do_not_depend_on_the_loss_mask(tokenizer, tmp_path):
    """The rollout budget of a mixed-policy record is its whole response, whether or not the prefix is masked."""
    mixed = {**make_record(7), "output": OUTPUT, "meta": json.dumps({"kind": "mixed_policy", STUDENT_PREFIX_KEY: 30})}
    path = write_jsonl(tmp_path / "m.jsonl", [make_record(1), mixed])
    counts = []
    for mask in (False, True):
        dm = _dm(tokenizer, path, tmp_path, mask_student_prefix=mask)
        dm.setup("fit")
        counts.append([r["response_tokens"] for r in dm.selected_records()])
    assert counts[0] == counts[1]
    whole = ChatTemplater(tokenizer).render(Record(mixed["uuid"], mixed["input"], OUTPUT, "math", mixed["meta"]))
    assert counts[0][1] == whole.num_supervised - len(ChatTemplater(tokenizer).end_ids)


def test_derive_keeps_every_setting_and_skips_filters_for_filtered_rounds(tokenizer, tmp_path):
    import inspect

    from dasd.data.filters import FilterConfig

    base = write_jsonl(tmp_path / "base.jsonl", [make_record(i) for i in range(3)])
    dm = _dm(tokenizer, base, tmp_path, filters=FilterConfig(), mask_student_prefix=True, seed=5)
    params = set(inspect.signature(SFTDataModule.__init__).parameters) - {"self"}
    assert set(dm._args) == params  # every constructor argument, by name
    # a record the filters would drop (no </think>): a round's output is not filtered, nor counted, twice
    bad = {**make_record(50), "output": "no think block at all",
           "meta": json.dumps({"kind": "mixed_policy", STUDENT_PREFIX_KEY: 3})}
    records = write_jsonl(tmp_path / "round.jsonl", [bad])
    again = dm.derive(str(records))
    assert again.filter_cfg is not None and again.templater.mask_student_prefix and again.seed == 5
    filtered = dm.derive(str(records), prefiltered=True)
    filtered.setup("fit")
    assert filtered.report()["filters"] is None and len(filtered.samples) == 1
