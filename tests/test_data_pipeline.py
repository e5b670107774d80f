"""The training data pipeline applies the response filters before selection and reports every drop."""

from __future__ import annotations

import json

from conftest import make_record, write_jsonl

from dasd.data.datamodule import SFTDataModule
from dasd.data.filters import FilterConfig
from dasd.data.selection import RandomSelector

LOOP = "Let me check the sum once more, carefully. " * 6  # a 42-char sentence 6 times


def _rows():
    good = [make_record(i) for i in range(6)]
    bad = [make_record(10, output="<think>\n\n</think>\n\nno reasoning"),                    # structure
           make_record(11, output="<think>\nx\n</think>\n\n" + "<|call|>python"),             # tool call
           make_record(12, output=f"<think>\n{LOOP}\n</think>\n\n\\boxed{{1}}"),              # repetition
           make_record(13, output="<think>\n" + "long reasoning step. " * 200 + "\n</think>\n\nok")]  # length
    return good, bad


def _dm(path, tok, tmp_path, cfg=None, fmt="released"):
    cfg = cfg or FilterConfig()
    cfg.length.cutoff_len = 400
    dm = SFTDataModule(str(path), tok, RandomSelector(0), cutoff_len=400, system_prompt="You are a helpful assistant.",
                       filters=cfg, source_format=fmt, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    return dm


def test_filters_drop_and_report_each_reason(tokenizer, tmp_path):
    """Bad responses are dropped under the right reason, with their uuids in the report; good ones stay."""
    good, bad = _rows()
    path = write_jsonl(tmp_path / "d.jsonl", good + bad)
    dm = _dm(path, tokenizer, tmp_path)
    assert sorted(s.uuid for s in dm.samples) == sorted(r["uuid"] for r in good)
    f = dm.report()["filters"]
    dropped = {name: v["dropped"] for name, v in f["filters"].items()}
    assert dropped == {"truncated": 0, "tool_call": 1, "structure": 1, "length": 1, "repetition": 1}
    assert f["total"] == 10 and f["kept"] == 6
    assert {row[1] for row in dm.filter_rows} == {r["uuid"] for r in bad}
    assert dm.packing_report.dropped_overlong == []  # the length filter ran first: nothing left for packing


def test_filter_settings_are_part_of_the_cache_key(tokenizer, tmp_path):
    """Changing a threshold rebuilds the data: a cached, differently filtered set is never reused."""
    good, bad = _rows()
    path = write_jsonl(tmp_path / "d.jsonl", good + bad)
    first = _dm(path, tokenizer, tmp_path)
    loose = FilterConfig.from_dict({"repetition": {"enabled": False}})
    second = _dm(path, tokenizer, tmp_path, cfg=loose)
    assert second.cache_report["hit"] is False and len(second.samples) == len(first.samples) + 1


def test_generated_shards_drop_truncated_samples(tokenizer, tmp_path):
    """For generate.py output the teacher's finish reason counts: a length-truncated sample is dropped."""
    rows = []
    for i, reason in enumerate(["stop", "length", "stop"]):
        r = make_record(i)
        r.update(token_ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3], finish_reason=reason, has_tool_call=False,
                 question_id=f"q{i}", sample_index=0)
        rows.append(r)
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    dm = _dm(path, tokenizer, tmp_path, fmt="generated")
    assert len(dm.samples) == 2 and dm.report()["filters"]["filters"]["truncated"]["dropped"] == 1
    assert json.dumps(dm.report())  # the whole report is JSON (manifest, W&B)


def test_logprob_parquet_is_joined_by_uuid(tokenizer, tmp_path):
    """data.logprobs joins the Logprob Parquet by uuid; a response without a row stops the run naming it,
    or with on_error=skip is skipped and counted."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from dasd.data.records import RecordError

    good, _ = _rows()
    path = write_jsonl(tmp_path / "d.jsonl", good)
    table = pa.table({"sample_uuid": [r["uuid"] for r in good[:-1]],
                      "token_ids": [[1, 2, 3]] * (len(good) - 1), "logprobs": [[-0.5, -0.1, -0.2]] * (len(good) - 1)})
    pq.write_table(table, tmp_path / "lp.parquet", row_group_size=2)

    def dm(on_error):
        d = SFTDataModule(str(path), tokenizer, RandomSelector(0), cutoff_len=400, on_error=on_error,
                          logprobs_path=str(tmp_path / "lp.parquet"), system_prompt="You are a helpful assistant.")
        d.setup()
        return d

    with pytest.raises(RecordError, match=good[-1]["uuid"]):
        dm("raise")
    lenient = dm("skip")
    assert len(lenient.samples) == len(good) - 1
    assert lenient.report()["logprob_join"]["skip_reasons"] == {"missing_logprobs": 1}
