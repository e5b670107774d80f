"""The tokenized-data cache: a second run reuses the work, and any relevant change invalidates it."""

from __future__ import annotations

import copy

from dasd.data import cache
from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import RandomSelector


def _dm(path, tok, cache_dir, system="You are a helpful assistant.", num_proc=1):
    dm = SFTDataModule(str(path), tok, RandomSelector(0), cutoff_len=512, system_prompt=system, cache_dir=str(cache_dir),
                       num_proc=num_proc)
    dm.setup()
    return dm


def _dump(dm):
    return [(s.uuid, list(s.input_ids), list(s.supervised)) for s in dm.samples], dm.dataset.packs


def test_second_run_reuses_the_cache(tokenizer, sample_file, tmp_path, monkeypatch):
    """The second setup loads the cache (no reading or tokenizing: render_stream is never called) and yields
    the same samples, loss masks and packs as the first."""
    first = _dm(sample_file, tokenizer, tmp_path)
    assert first.cache_report["hit"] is False

    def forbidden(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache entry")

    monkeypatch.setattr(cache, "render_stream", forbidden)
    second = _dm(sample_file, tokenizer, tmp_path)
    assert second.cache_report["hit"] is True and _dump(second) == _dump(first)
    assert second.report()["read"] == first.report()["read"]


def test_relevant_changes_invalidate_the_cache(tokenizer, sample_file, tmp_path):
    """Another system prompt, chat template or input file gives a new entry, never a stale one."""
    base = _dm(sample_file, tokenizer, tmp_path)
    other_prompt = _dm(sample_file, tokenizer, tmp_path, system="Be brief.")
    assert other_prompt.cache_report["hit"] is False and _dump(other_prompt) != _dump(base)
    tok2 = copy.deepcopy(tokenizer)
    tok2.chat_template = tok2.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert _dm(sample_file, tok2, tmp_path).cache_report["hit"] is False
    changed = tmp_path / "changed.jsonl"
    changed.write_bytes(sample_file.read_bytes() + b"\n")
    assert _dm(changed, tokenizer, tmp_path).cache_report["hit"] is False


def test_incomplete_entry_is_rebuilt(tokenizer, sample_file, tmp_path):
    """An entry without its report (a kill mid-save) is not used."""
    first = _dm(sample_file, tokenizer, tmp_path)
    (first._cache_folder() / "report.json").unlink()
    again = _dm(sample_file, tokenizer, tmp_path)
    assert again.cache_report["hit"] is False and _dump(again) == _dump(first)


def test_parallel_tokenization_matches_serial(tokenizer, sample_file, tmp_path):
    serial = _dm(sample_file, tokenizer, tmp_path / "a", num_proc=1)
    parallel = _dm(sample_file, tokenizer, tmp_path / "b", num_proc=2)
    assert _dump(parallel) == _dump(serial)
