"""Stable digests: of JSON-able values (config hashes, cache keys, spec hashes) and of model weights.

Every cache key, record uuid and resume check of dasd comes from here, so a digest must never change for the
same input: tests/test_golden.py pins them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def stable_hash(obj: Any, n: int = 16, *, sort_keys: bool = True, ensure_ascii: bool = True) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj`` as JSON (values JSON cannot hold, such as paths,
    as ``str``)."""
    body = json.dumps(obj, sort_keys=sort_keys, ensure_ascii=ensure_ascii, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:n]


def _feed(digest, path: Path, limit: int | None = None) -> None:
    """Update ``digest`` with a file's bytes: all of them, or the first ``limit``."""
    with path.open("rb") as fh:
        if limit is not None:
            digest.update(fh.read(limit))
            return
        while block := fh.read(1 << 22):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    _feed(digest, Path(path))
    return digest.hexdigest()


def model_fingerprint(name_or_path: str, *, full: bool = False) -> str:
    """Identifies a model's weights by content; for a hub id ``hub:<id>`` (pin a revision by passing a local
    snapshot path). A local folder: ``config.json`` and each weight file's name and size, plus

    * ``full=False`` (``dir:<16 hex>``): each file's first MiB. Cheap, for keys that are computed often
      (DAS score stores, teacher identities, round specs); two checkpoints that differ only past the first
      MiB of every file would share it.
    * ``full=True`` (``sha256:<16 hex>``): every byte (about a second per GB). For keys that must tell any
      two checkpoints apart: an evaluation's resume key, an ablation step's parent.

    Neither depends on where the folder is or when its files were written: a copied checkpoint is the same
    model."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"hub:{name_or_path}"
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name == "config.json" or f.suffix in WEIGHT_SUFFIXES:
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
            _feed(digest, f, None if full else 1 << 20)
    return f"{'sha256' if full else 'dir'}:{digest.hexdigest()[:16]}"


def weights_digest(folder: str | Path) -> str:
    """The sha256 (16 hex digits) of every byte of a folder's ``*.safetensors``/``*.bin`` files and their
    names: the full-content check, for evidence that rows were run on the very same weights."""
    folder = Path(folder)
    files = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))
    if not files:
        raise ValueError(f"{folder} has no weight files (*.safetensors, *.bin)")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        _feed(digest, f)
    return digest.hexdigest()[:16]
