"""Shared fixtures: the shipped tiny student and sample data, and helpers to write record files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dasd.models.student import asset_path, load_tokenizer

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")  # tests never touch the network
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _no_shared_wandb_service(monkeypatch):
    """A test that ran W&B in this process leaves WANDB_SERVICE set, and a child process (train.py) would then
    join this process's W&B service: a killed child's run stays registered there and its resume is refused
    ("run ID ... is in use"). Every child gets its own service, as it would from a shell."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


@pytest.fixture(scope="session")
def tiny_path() -> str:
    return asset_path("tiny_qwen3")


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    return load_tokenizer(tiny_path)


@pytest.fixture(scope="session")
def sample_file() -> Path:
    return Path(asset_path("sample_data")) / "sample_T0.6.jsonl"


def make_record(i: int = 0, **fields) -> dict:
    rec = {"uuid": f"00000000-0000-0000-0000-{i:012d}", "input": f"What is {i} + {i}?",
           "output": f"<think>\nWe add {i} and {i}.\n{i} + {i} = {2 * i}.\n</think>\n\nThe answer is \\boxed{{{2 * i}}}.",
           "domain": "math", "meta": json.dumps({"source": "test"})}
    rec.update(fields)
    return rec


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as-is) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pytest_collection_modifyitems(config, items):
    """`gpu` tests skip (not fail) on machines without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
