"""Run the real `train.py` CLI in a subprocess (shared by the CPU and GPU end-to-end tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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


def _wait_for_checkpoint(run_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    last, deadline = run_dir / "checkpoints" / "last.ckpt", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and int(last.resolve().stem.split("step=")[-1]) >= min_step:
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {min_step} (process exit {proc.poll()})")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), including ones that left its process group, such as
    W&B's service process."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        out += kids
        frontier = kids
    return out


def kill_after_checkpoint(out: Path, run_dir: Path, min_step: int, *overrides: str) -> int:
    """Start train.py, SIGKILL it (and its children) once it has saved a checkpoint at step >= min_step;
    returns the step of the checkpoint a resume starts from."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(train_cmd(out, *overrides), cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_checkpoint(run_dir, min_step=min_step, proc=proc)
    finally:
        # the whole tree, W&B's service process included: a surviving one still holds the run id, and the
        # resumed run would be refused ("run ID ... is in use") on a busy machine
        _kill_tree(proc)
    return int((run_dir / "checkpoints" / "last.ckpt").resolve().stem.split("step=")[-1])


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and every descendant (W&B's service included), and wait until they are gone."""
    tree = _descendants(proc.pid)
    for kill, pid in [(os.killpg, proc.pid)] + [(os.kill, pid) for pid in tree]:
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone
            pass
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in tree):
        time.sleep(0.1)


def kill_at_checkpoint(out: Path, run_dir: Path, step: int, *overrides: str, timeout: float = 300) -> None:
    """Start train.py and SIGKILL it (and its children) as soon as ``last.ckpt`` links the checkpoint of exactly
    optimizer step ``step``. A run that got past that checkpoint first, or ended, fails the test: it would
    resume from somewhere else (a test must not pass by landing on another checkpoint)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen(train_cmd(out, *overrides), cwd=out, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last, deadline, seen = run_dir / "checkpoints" / "last.ckpt", time.time() + timeout, None
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                seen = int(os.readlink(last).rsplit("step=", 1)[1].removesuffix(".ckpt"))
            except (OSError, IndexError, ValueError):
                seen = None
            if seen is not None and seen >= step:
                break
            time.sleep(0.005)
    finally:
        _kill_tree(proc)
    assert seen == step, f"wanted a kill right after the checkpoint of step {step}, got {seen} (exit {proc.returncode})"
