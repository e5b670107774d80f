"""JSON Lines files written atomically (a temporary file, fsynced, renamed into place: a kill never leaves a
partial file) and read back."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of a file dasd wrote itself (user files go through ``dasd.data.records``, which
    names the file, line and field of a bad row)."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
