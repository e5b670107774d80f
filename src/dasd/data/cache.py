"""On-disk cache of the tokenized training set, keyed by the input file's hash and the relevant config.

A cache entry is a folder of flat arrays (token ids, loss mask, per-sample offsets), the uuids, the
indices of the selected samples and the pipeline report. It is written while the data streams in, to a
temporary folder renamed into place at the end. Loading memory-maps the token arrays: a sample's tokens
are read only when its pack is built, so the training set need not fit in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dasd.data.records import Record
from dasd.data.template import ChatTemplater, TokenizedSample
from dasd.utils.hashing import stable_hash


def tokenizer_fingerprint(tokenizer) -> str:
    """Changes whenever the vocabulary, merges, special tokens or chat template change."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((body + str(tokenizer.chat_template)).encode()).hexdigest()[:16]


def cache_key(**parts) -> str:
    return stable_hash(parts, 20)


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
    """The selected samples of a cache entry; token arrays stay on disk (memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        self.offsets = np.load(folder / "offsets.npy")
        total = int(self.offsets[-1])
        self.ids = _memmap(folder / "ids.bin", np.int32, total)
        self.supervised = _memmap(folder / "supervised.bin", np.uint8, total)
        self.num_supervised = np.load(folder / "num_supervised.npy")
        self.uuids = json.loads((folder / "uuids.json").read_text())
        self.selected = np.load(folder / "selected.npy")

    def __len__(self) -> int:
        return len(self.selected)

    def __getitem__(self, i: int) -> CachedSample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return CachedSample(self, int(self.selected[i]))


def _memmap(path: Path, dtype, n: int) -> np.ndarray:
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


class CacheWriter:
    """Appends tokenized samples to a cache entry on disk as they are produced, so memory is bounded by the
    per-sample metadata, not the token count; ``finish`` records the selection and renames into place."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.tmp = folder, folder.with_name(folder.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self._ids = (self.tmp / "ids.bin").open("wb")
        self._sup = (self.tmp / "supervised.bin").open("wb")
        self.offsets, self.num_supervised, self.uuids = [0], [], []

    def add(self, sample: TokenizedSample) -> int:
        """Append one sample; returns its index in the entry."""
        self._ids.write(np.asarray(sample.input_ids, dtype=np.int32).tobytes())
        self._sup.write(np.asarray(sample.supervised, dtype=np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(sample))
        self.num_supervised.append(sample.num_supervised)
        self.uuids.append(sample.uuid)
        return len(self.uuids) - 1

    def finish(self, selected: Sequence[int], report: dict) -> Path:
        self._ids.close()
        self._sup.close()
        np.save(self.tmp / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        np.save(self.tmp / "num_supervised.npy", np.asarray(self.num_supervised, dtype=np.int64))
        np.save(self.tmp / "selected.npy", np.asarray(selected, dtype=np.int64))
        (self.tmp / "uuids.json").write_text(json.dumps(self.uuids))
        (self.tmp / "report.json").write_text(json.dumps(report, indent=2))  # last: marks a complete entry
        shutil.rmtree(self.folder, ignore_errors=True)
        self.tmp.rename(self.folder)
        return self.folder


def load(folder: Path) -> tuple[CachedSamples, dict] | None:
    """The cached samples and report, or None when there is no complete entry."""
    if not (folder / "report.json").is_file():
        return None
    return CachedSamples(folder), json.loads((folder / "report.json").read_text())


def _render_chunk(args: tuple[ChatTemplater, list[Record]]) -> list[TokenizedSample]:
    templater, records = args
    return [templater.render(r) for r in records]


def render_stream(templater: ChatTemplater, items: Iterable, num_proc: int = 1, chunk: int = 64,
                  record_of: Callable[[Any], Record] = lambda r: r) -> Iterator[tuple[Any, TokenizedSample]]:
    """Template and tokenize a stream in order on ``num_proc`` processes, yielding ``(item, sample)``;
    ``record_of(item)`` is the Record to render. At most ``2 × num_proc`` chunks of ``chunk`` records are
    in flight, so memory does not grow with the stream (it grows with chunk × response length)."""
    chunks = _chunked(items, chunk)
    if num_proc <= 1:
        for part in chunks:
            yield from ((item, templater.render(record_of(item))) for item in part)
        return
    with ProcessPoolExecutor(num_proc) as pool:
        while wave := list(itertools.islice(chunks, 2 * num_proc)):
            jobs = [(templater, [record_of(item) for item in part]) for part in wave]
            for part, samples in zip(wave, pool.map(_render_chunk, jobs), strict=True):
                yield from zip(part, samples, strict=True)


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while part := list(itertools.islice(it, size)):
        yield part
