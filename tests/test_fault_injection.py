"""Fault injection (slow tier): train.py, generate.py and evaluate.py are SIGKILLed at seeded random points,
rerun, killed again, and finally run to the end. After every process ends, killed or not, what it left on
disk must be a consistent part of the uninterrupted run's output: nothing duplicated, nothing changed; at the
end nothing is lost either. At least 20 kills land inside a running process in all.

    pytest -m slow tests/test_fault_injection.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli import QUIET, REPO, _kill_tree
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
       "OMP_NUM_THREADS": "1"}
SEED = 20261206  # the kill points; a failure names the attempt and its delay, so it can be replayed


def _cmd(script: str, root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / script), f"paths.root_dir={root}", *overrides]


def _run(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return time.perf_counter() - start, proc


def _run_or_kill(cmd: list[str], cwd: Path, delay: float) -> bool:
    """Start ``cmd``; if it still runs after ``delay`` seconds, SIGKILL it and every descendant (W&B's
    service included) and wait until they are gone. Returns whether the kill landed in a running process.
    A process that ends by itself must end well."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace")
        assert proc.returncode == 0, f"exit {proc.returncode} without a kill:\n{err[-4000:]}"
        return False
    _kill_tree(proc)
    return True


def _lines(path: Path) -> list[dict]:
    """The complete JSON lines of ``path`` (a line cut by a kill has no newline and is not a row yet)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(x) for x in text.split("\n")[:-1] if x.strip()]


def _torture(name: str, cmd: list[str], cwd: Path, reference_seconds: float, kills: int,
             check, rng: random.Random) -> list[float]:
    """Kill ``cmd`` ``kills`` times at random points, starting it again after each kill, and check what is on
    disk after every process. A run that completes before its kill is checked, then its outputs are removed, so
    the next attempt starts afresh. At the end the run goes to completion. Returns the delays of the kills."""
    landed, delays, attempt = 0, [], 0
    while landed < kills:
        attempt += 1
        assert attempt < 4 * kills, f"{name}: only {landed} of {kills} kills landed in {attempt} attempts"
        delay = rng.uniform(0.3, 1.1) * reference_seconds
        hit = _run_or_kill(cmd, cwd, delay)
        landed += hit
        if hit:
            delays.append(round(delay, 2))
        check(f"{name} attempt {attempt} (kill after {delay:.2f} s: {'landed' if hit else 'finished first'})")
        if not hit:
            shutil.rmtree(cwd / "outputs")
    _run(cmd, cwd)
    return delays


# ---- train.py ------------------------------------------------------------------------------------------------

TRAIN = ["data.max_samples=64", "train.epochs=2", "train.save_every_n_steps=3", "logger=csv", *QUIET]
TRAIN_KEYS = ("train/loss", "train/lr", "train/supervised_tokens", "train/grad_norm")


def _check_metrics(rows: list[dict], reference: list[dict], where: str) -> None:
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, len(rows) + 1)), f"{where}: steps {steps} (duplicated or lost)"
    for r in rows:
        ref = reference[r["step"] - 1]
        for k in TRAIN_KEYS:
            assert r[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), f"{where}: step {r['step']} {k}"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_train_survives_random_kills(tmp_path):
    rng = random.Random(SEED)
    (tmp_path / "ref").mkdir()
    seconds, _ = _run(_cmd("train.py", tmp_path / "ref", *TRAIN), tmp_path / "ref")
    ref_dir = tmp_path / "ref" / "outputs" / "default" / "stage1"
    reference = _lines(ref_dir / "metrics.jsonl")
    ref_weights = _weights(ref_dir / "checkpoints" / "hf" / "final")

    runs: list[Path] = []
    for i in range(2):  # two runs killed four times each: kills land early and late in a run's life
        root = tmp_path / f"run{i}"
        root.mkdir()
        run_dir = root / "outputs" / "default" / "stage1"
        runs.append(run_dir)

        def check(where: str, run_dir=run_dir) -> None:
            _check_metrics(_lines(run_dir / "metrics.jsonl"), reference, where)
            for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
                if ckpt.is_symlink():  # last.ckpt may dangle after a kill between Lightning's delete and relink:
                    continue  # a resume then starts from the newest step checkpoint (stages.latest_checkpoint)
                assert ckpt.stat().st_size > 0, f"{where}: empty checkpoint {ckpt.name}"

        _torture(f"train run {i}", _cmd("train.py", root, *TRAIN), root, seconds, 4, check, rng)
        rows = _lines(run_dir / "metrics.jsonl")
        _check_metrics(rows, reference, f"train run {i} at the end")
        assert len(rows) == len(reference), "steps lost"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "completed"
        final = _weights(run_dir / "checkpoints" / "hf" / "final")
        for k, v in ref_weights.items():
            torch.testing.assert_close(final[k], v, rtol=1e-5, atol=1e-6, msg=f"final weights differ at {k}")


# ---- generate.py ---------------------------------------------------------------------------------------------

GENERATE = ["max_questions=24", "samples_per_question=2", "sampling.max_tokens=48", "batch_size=4",
            "progress=false", "logger=none"]
SHARD = "shard-00000-of-00001"


def _shard_rows(run_dir: Path) -> list[dict]:
    data = run_dir / "data"
    rows = _lines(data / f"{SHARD}.jsonl")
    for part in sorted((data / f"{SHARD}.parts").glob("part-*.jsonl")):
        rows += _lines(part)
    return rows


def _check_rows(rows: list[dict], reference: dict, key, where: str, fields) -> None:
    keys = [key(r) for r in rows]
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"{where}: duplicated {sorted(dupes)[:5]}"
    for r in rows:
        ref = reference.get(key(r))
        assert ref is not None, f"{where}: a row the uninterrupted run does not have: {key(r)}"
        for f in fields:
            assert r[f] == ref[f], f"{where}: {key(r)} field {f} changed"


def test_generate_survives_random_kills(tmp_path):
    rng = random.Random(SEED + 1)
    (tmp_path / "ref").mkdir()
    seconds, _ = _run(_cmd("generate.py", tmp_path / "ref", *GENERATE), tmp_path / "ref")
    run_name = "generate_T0.6_shard0"
    reference_rows = _lines(tmp_path / "ref" / "outputs" / "default" / run_name / "data" / f"{SHARD}.jsonl")
    key = lambda r: (r["question_id"], r["sample_index"])  # noqa: E731
    reference = {key(r): r for r in reference_rows}
    assert len(reference) == 48
    fields = ("uuid", "output", "token_ids", "logprobs", "seed", "finish_reason")

    root = tmp_path / "run"
    root.mkdir()
    run_dir = root / "outputs" / "default" / run_name
    check = lambda where: _check_rows(_shard_rows(run_dir), reference, key, where, fields)  # noqa: E731
    _torture("generate", _cmd("generate.py", root, *GENERATE), root, seconds, 8, check, rng)
    final = _lines(run_dir / "data" / f"{SHARD}.jsonl")
    _check_rows(final, reference, key, "generate at the end", fields)
    assert len(final) == len(reference), "samples lost"
    assert not (run_dir / "data" / f"{SHARD}.parts").exists()


# ---- evaluate.py ---------------------------------------------------------------------------------------------

EVALUATE = ["task.limit=24", "k=2", "task.max_tokens=48", "batch_size=2", "logger=none"]


def test_evaluate_survives_random_kills(tmp_path):
    rng = random.Random(SEED + 2)
    (tmp_path / "ref").mkdir()
    seconds, _ = _run(_cmd("evaluate.py", tmp_path / "ref", *EVALUATE), tmp_path / "ref")
    ref_dir = tmp_path / "ref" / "outputs" / "default" / "eval" / "sample_k2"
    reference = {r["id"]: r for r in _lines(ref_dir / "results.jsonl")}
    ref_summary = json.loads((ref_dir / "summary.json").read_text())
    assert len(reference) == 24
    fields = ("qhash", "correct", "response_tokens", "finish_reasons", "accuracy")

    root = tmp_path / "run"
    root.mkdir()
    run_dir = root / "outputs" / "default" / "eval" / "sample_k2"
    key = lambda r: r["id"]  # noqa: E731
    check = lambda where: _check_rows(_lines(run_dir / "results.jsonl"), reference, key, where, fields)  # noqa: E731
    _torture("evaluate", _cmd("evaluate.py", root, *EVALUATE), root, seconds, 8, check, rng)
    rows = _lines(run_dir / "results.jsonl")
    _check_rows(rows, reference, key, "evaluate at the end", fields)
    assert len(rows) == len(reference), "questions lost"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["avg@k"] == ref_summary["avg@k"] and summary["n_samples"] == ref_summary["n_samples"]
