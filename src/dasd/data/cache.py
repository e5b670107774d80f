"""On-disk cache of the tokenized training set, keyed by the input file's hash and the relevant config.

A cache entry is a folder of flat arrays (token ids, loss mask, per-sample offsets) plus the uuids and the
pipeline report, written to a temporary folder and renamed into place. Loading memory-maps the arrays:
a sample's tokens are read only when its pack is built, so the training set need not fit in memory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dasd.data.records import Record
from dasd.data.template import ChatTemplater, TokenizedSample


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the vocabulary, merges, special tokens or chat template change."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((body + str(tokenizer.chat_template)).encode()).hexdigest()[:16]


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CachedSample:
    """A TokenizedSample read lazily from the memory-mapped arrays of a cache entry."""

    __slots__ = ("_store", "_i")

    def __init__(self, store: CachedSamples, i: int) -> None:
        self._store, self._i = store, i

    def _span(self) -> slice:
        return slice(int(self._store.offsets[self._i]), int(self._store.offsets[self._i + 1]))

    @property
    def input_ids(self) -> list[int]:
        return self._store.ids[self._span()].tolist()

    @property
    def supervised(self) -> list[bool]:
        return self._store.supervised[self._span()].astype(bool).tolist()

    @property
    def uuid(self) -> str:
        return self._store.uuids[self._i]

    @property
    def num_supervised(self) -> int:
        return int(self._store.num_supervised[self._i])

    def __len__(self) -> int:
        return int(self._store.offsets[self._i + 1] - self._store.offsets[self._i])


class CachedSamples(Sequence):
    def __init__(self, folder: Path) -> None:
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self.supervised = np.load(folder / "supervised.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.num_supervised = np.load(folder / "num_supervised.npy")
        self.uuids = json.loads((folder / "uuids.json").read_text())

    def __len__(self) -> int:
        return len(self.uuids)

    def __getitem__(self, i: int) -> CachedSample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return CachedSample(self, i)


def save(folder: Path, samples: Sequence[TokenizedSample], report: dict) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    np.save(tmp / "ids.npy", np.fromiter((t for s in samples for t in s.input_ids), dtype=np.int32,
                                         count=int(lengths.sum())))
    np.save(tmp / "supervised.npy", np.fromiter((m for s in samples for m in s.supervised), dtype=np.uint8,
                                                count=int(lengths.sum())))
    np.save(tmp / "num_supervised.npy", np.array([s.num_supervised for s in samples], dtype=np.int64))
    (tmp / "uuids.json").write_text(json.dumps([s.uuid for s in samples]))
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load(folder: Path) -> tuple[CachedSamples, dict] | None:
    """The cached samples and report, or None when there is no complete entry."""
    if not (folder / "report.json").is_file():
        return None
    return CachedSamples(folder), json.loads((folder / "report.json").read_text())


def _render_chunk(args: tuple[ChatTemplater, list[Record]]) -> list[TokenizedSample]:
    templater, records = args
    return [templater.render(r) for r in records]


def render_all(templater: ChatTemplater, records: list[Record], num_proc: int = 1,
               chunk: int = 512) -> list[TokenizedSample]:
    """Template and tokenize every record, on ``num_proc`` processes (order kept)."""
    if num_proc <= 1 or len(records) < 2:
        return [templater.render(r) for r in records]
    chunk = max(1, min(chunk, -(-len(records) // (4 * num_proc))))  # several chunks per process
    chunks = [(templater, records[i:i + chunk]) for i in range(0, len(records), chunk)]
    with ProcessPoolExecutor(num_proc) as pool:
        return [s for part in pool.map(_render_chunk, chunks) for s in part]
