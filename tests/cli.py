"""Run the real `train.py` CLI in a subprocess (shared by the CPU and GPU end-to-end tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUIET = ["trainer.enable_progress_bar=false"]


def train_cmd(out: Path, *overrides: str) -> list[str]:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra flags (-m) come before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    return [sys.executable, str(REPO / "train.py"), *flags, f"paths.root_dir={out}", *QUIET, *rest]


def run_train(out: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(train_cmd(out, *overrides), cwd=out, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
