"""Read the history of an offline W&B run straight from its ``run-<id>.wandb`` file (no sync, no network).

The file is W&B's record log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, length, type: 1 full, 2 first, 3 middle, 4 last) holding serialized ``wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7


def _chunks(data: bytes):
    off, partial = HEADER, b""
    while off + HEADER <= len(data):
        left = BLOCK - off % BLOCK
        if left < HEADER:
            off += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[off:off + HEADER])
        if length == 0 and kind == 0:  # zero padding up to the block end
            off += left
            continue
        chunk, off = data[off + HEADER:off + HEADER + length], off + HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            yield partial + chunk


def read_records(path: str | Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records = []
    for chunk in _chunks(data):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(chunk)
        records.append(rec)
    return records


def read_history(path: str | Path) -> list[dict]:
    """One dict per logged history row: metric name -> value."""
    rows = []
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def run_files(run_dir: str | Path) -> list[Path]:
    """The offline W&B run files under a dasd run dir, oldest first."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
