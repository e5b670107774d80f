"""Crash-safe, resumable output of one data-parallel generation shard.

Rows are written in parts, each to a temporary file that is fsync'ed and renamed into place, so a kill
never leaves a partial line or a corrupt part. A rerun reads back the finished (question, sample) keys
and skips them. ``finalize`` merges everything into ``shard-<i>-of-<n>.jsonl`` (again by rename).

The settings that determine a sample are recorded at the first write (``shard-<i>-of-<n>.settings.json``);
a rerun with other settings, or into a folder holding shards of another shard count, is refused with the
differences named (``claim``), so one data set never mixes two settings.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from dasd.utils.io import write_jsonl
from dasd.utils.run import write_json

SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.(jsonl|parts|settings\.json)$")


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: tree}


def differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs (nested keys dotted)."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


class ShardWriter:
    def __init__(self, out_dir: str | Path, shard_index: int, shard_count: int) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard index {shard_index} must lie in [0, {shard_count})")
        self.out_dir, self.count = Path(out_dir), shard_count
        stem = f"shard-{shard_index:05d}-of-{shard_count:05d}"
        self.final = self.out_dir / f"{stem}.jsonl"
        self.parts_dir = self.out_dir / f"{stem}.parts"
        self.settings_file = self.out_dir / f"{stem}.settings.json"
        self.settings: dict | None = None

    def _other_counts(self) -> list[Path]:
        """Shard files of another shard count in this folder (another split of the questions)."""
        found = [(p, SHARD_FILE.match(p.name)) for p in self.out_dir.glob("shard-*")] if self.out_dir.is_dir() else []
        return sorted(p for p, m in found if m and int(m.group(2)) != self.count)

    def claim(self, settings: dict, overwrite: bool = False) -> None:
        """Tie this shard's samples to ``settings`` (what determines a sample). The first claim records them; a
        claim with other settings, on samples written without a record, or in a folder holding shards of another
        count is refused (``overwrite=True``: those samples and shards are deleted first)."""
        settings = json.loads(json.dumps(settings, default=str))  # compared as stored (lists, not tuples)
        old = json.loads(self.settings_file.read_text()) if self.settings_file.is_file() else None
        others, written = self._other_counts(), bool(self._files())
        problems = [f"it holds shards of another shard count ({', '.join(p.name for p in others[:3])}); this run "
                    f"splits the questions into {self.count}"] if others else []
        if old is not None and old != settings and written:  # a record without samples: nothing to mix
            problems.append("its samples were generated with other settings (theirs -> this run's): "
                            + "; ".join(differences(old, settings)))
        elif old is None and written:
            problems.append("its samples were written without a record of their settings (an older dasd)")
        if problems and not overwrite:
            raise ValueError(f"{self.out_dir}: " + ". Also, ".join(problems) + ". Reusing them would mix two "
                             "settings in one data set: choose another output_dir (or run_name), or set "
                             "overwrite=true to delete them and start over")
        if problems:  # overwrite
            for path in others:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            self.clear()
        if old != settings or problems:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.settings_file, settings)
        self.settings = settings

    def _files(self) -> list[Path]:
        return ([self.final] if self.final.exists() else []) + sorted(self.parts_dir.glob("part-*.jsonl"))

    def clear(self) -> None:
        """Delete this shard's samples (its settings record stays until the next claim)."""
        self.final.unlink(missing_ok=True)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def rows(self) -> Iterable[dict]:
        for path in self._files():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)

    def done_keys(self) -> set[tuple[str, int]]:
        """(question_id, sample_index) of every row already written."""
        return {(r["question_id"], r["sample_index"]) for r in self.rows()}

    def write_part(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        parts = sorted(self.parts_dir.glob("part-*.jsonl"))
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        write_jsonl(self.parts_dir / f"part-{index:06d}.jsonl", rows)

    def finalize(self) -> Path:
        """Merge the final file and all parts (in question order of writing) into the final file."""
        seen: set[tuple[str, int]] = set()
        rows = []
        for r in self.rows():  # a kill between the rename and the cleanup below leaves rows twice
            key = (r["question_id"], r["sample_index"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(self.final, rows)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.final
