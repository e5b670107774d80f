"""Crash-safe, resumable output of one data-parallel generation shard.

Rows are written in parts, each to a temporary file that is fsync'ed and renamed into place, so a kill
never leaves a partial line or a corrupt part. A rerun reads back the finished (question, sample) keys
and skips them. ``finalize`` merges everything into ``shard-<i>-of-<n>.jsonl`` (again by rename).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def _atomic_write(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class ShardWriter:
    def __init__(self, out_dir: str | Path, shard_index: int, shard_count: int) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard index {shard_index} must lie in [0, {shard_count})")
        self.out_dir = Path(out_dir)
        stem = f"shard-{shard_index:05d}-of-{shard_count:05d}"
        self.final = self.out_dir / f"{stem}.jsonl"
        self.parts_dir = self.out_dir / f"{stem}.parts"
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[Path]:
        return ([self.final] if self.final.exists() else []) + sorted(self.parts_dir.glob("part-*.jsonl"))

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
        parts = sorted(self.parts_dir.glob("part-*.jsonl"))
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        _atomic_write(self.parts_dir / f"part-{index:06d}.jsonl", rows)

    def finalize(self) -> Path:
        """Merge the final file and all parts (in question order of writing) into the final file."""
        seen: set[tuple[str, int]] = set()
        rows = []
        for r in self.rows():  # a kill between the rename and the cleanup below leaves rows twice
            key = (r["question_id"], r["sample_index"])
            if key not in seen:
                seen.add(key)
                rows.append(r)
        _atomic_write(self.final, rows)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.final
