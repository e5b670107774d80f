"""One process per run directory: a second train/generate/evaluate on a held run dir stops at once naming the
holder; a lock left by a killed process is taken over; ranks > 0 of one job are never refused."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import metrics, train_cmd
from test_config import compose_cfg

from dasd.utils.runlock import HOLDER_NAME, LOCK_NAME, Holder, RunDirInUse, run_lock

HOLD = "import sys, time\nfrom dasd.utils.runlock import run_lock\nwith run_lock(sys.argv[1], 'train'):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"


def _holder_process(run_dir: Path) -> subprocess.Popen:
    """A child process that holds ``run_dir`` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _plant(run_dir: Path, **fields) -> None:
    """A holder record as a process that did not exit cleanly leaves it (no OS lock held)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"what": "train", "host": socket.gethostname(), "pid": os.getpid(), "started_at": "2026-01-01T00:00:00",
              "proc_start": None, "slurm_job": None, "slurm_restart": None, **fields}
    (run_dir / HOLDER_NAME).write_text(json.dumps(record))


def test_second_process_refused_naming_the_holder(tmp_path):
    """While one holder runs, another lock attempt fails at once with its pid, host and command; a clean exit
    leaves no lock files behind."""
    with run_lock(tmp_path / "run", "train") as me:
        assert json.loads((tmp_path / "run" / HOLDER_NAME).read_text())["pid"] == os.getpid()
        t0 = time.perf_counter()
        with pytest.raises(RunDirInUse) as info, run_lock(tmp_path / "run", "evaluate"):
            pass
        assert time.perf_counter() - t0 < 1.0
    message = str(info.value)
    assert message.startswith("error: run directory") and info.value.holder == me
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "train" in message
    assert not (tmp_path / "run" / HOLDER_NAME).exists() and not (tmp_path / "run" / LOCK_NAME).exists()
    with run_lock(tmp_path / "run", "train"):  # free again
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    """A holder killed with SIGKILL cannot clean up; its OS lock dies with it, and the next process takes over
    its record (a live holder in another process is refused)."""
    run_dir = tmp_path / "run"
    proc = _holder_process(run_dir)
    try:
        with pytest.raises(RunDirInUse, match=f"pid {proc.pid} on host"), run_lock(run_dir, "train"):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((run_dir / HOLDER_NAME).read_text())["pid"] == proc.pid  # left behind
    with run_lock(run_dir, "train") as me:
        assert Holder.read(run_dir / HOLDER_NAME) == me
    assert f"taking over from train (pid {proc.pid}" in caplog.text


def test_record_left_on_another_host_is_refused_until_deleted(tmp_path):
    """This host cannot tell whether a holder on another host has stopped: refused, saying which file to
    delete; once deleted, the lock is taken."""
    _plant(tmp_path, host="node-elsewhere", pid=12345)
    with pytest.raises(RunDirInUse) as info, run_lock(tmp_path, "train"):
        pass
    assert "pid 12345 on host node-elsewhere" in str(info.value)
    assert f"delete {tmp_path.resolve() / HOLDER_NAME}" in str(info.value)
    (tmp_path / HOLDER_NAME).unlink()
    with run_lock(tmp_path, "train"):
        pass


def test_requeued_slurm_job_takes_over_on_another_node(tmp_path, monkeypatch):
    """The same SLURM job after a requeue (another restart count) takes over its earlier attempt's record,
    whatever node it lands on; the same attempt on another node does not."""
    _plant(tmp_path, host="node-elsewhere", pid=12345, slurm_job="777", slurm_restart=None)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    with pytest.raises(RunDirInUse), run_lock(tmp_path, "train"):
        pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with run_lock(tmp_path, "train") as me:
        assert me.slurm_job == "777" and me.slurm_restart == "1"


def test_live_process_named_in_a_record_without_the_lock_is_refused(tmp_path):
    """A record naming a live process of this host that holds no OS lock (its lock file deleted by hand) is
    not taken over; a pid that now belongs to another process (a reused pid) is."""
    parent = os.getppid()
    start = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19])
    _plant(tmp_path, pid=parent, proc_start=start)
    with pytest.raises(RunDirInUse, match="still runs but holds no lock"), run_lock(tmp_path, "train"):
        pass
    _plant(tmp_path, pid=parent, proc_start=start + 1)  # the same pid, started at another time
    with run_lock(tmp_path, "train"):
        pass


def test_other_ranks_of_the_job_are_not_refused(tmp_path, monkeypatch):
    """Ranks > 0 (Lightning's children, torchrun, srun) run in rank 0's run dir by design: they do not lock."""
    with run_lock(tmp_path, "train"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with run_lock(tmp_path, "train") as other:
            assert other is None


TINY_TRAIN = ["data.max_samples=4", "train.epochs=1"]  # cheap runs, should the lock ever let them through


@pytest.mark.parametrize("name,overrides", [
    ("train", TINY_TRAIN), ("train", [*TINY_TRAIN, "data_only=true"]), ("train", [*TINY_TRAIN, "stage=mixed"]),
    ("generate", ["max_questions=1", "samples_per_question=1", "sampling.max_tokens=4"]),
    ("evaluate", ["task.limit=1", "k=1", "task.max_tokens=4"]),
], ids=["train", "train-data_only", "train-stage_mixed", "generate", "evaluate"])
def test_entry_points_refuse_a_held_run_dir_before_any_work(name, overrides, tmp_path):
    """train (stage=mixed's revision round and data_only included), generate and evaluate stop before they
    write anything into a run dir another process holds."""
    from dasd.recipes.evaluate import evaluate
    from dasd.recipes.generate import generate
    from dasd.recipes.sft import train

    run = {"train": train, "generate": generate, "evaluate": evaluate}[name]
    cfg = compose_cfg([*overrides, "logger=none"], tmp_path, name=name)
    run_dir = Path(cfg.paths.run_dir)
    with run_lock(run_dir, "train"):
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()}"):
            run(cfg)
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME, HOLDER_NAME]


@pytest.mark.slow
def test_two_trainings_on_one_run_dir(tmp_path):
    """`train.py experiment_name=x` twice at once: one trains, the other exits at once (non-zero) naming the
    first's pid and host; one metrics trajectory, one W&B run, no last-v1.ckpt."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = ["experiment_name=x", "data.max_samples=64", "train.epochs=2", "train.save_every_n_steps=2"]
    procs = [subprocess.Popen(train_cmd(tmp_path, *args), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], (codes, [e[-2000:] for e in errs])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    lines = [x for x in errs[loser].splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and f"in use by train (pid {procs[winner].pid} on host {socket.gethostname()}" in lines[0]
    run_dir = tmp_path / "outputs" / "x" / "stage1"
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(1, len(steps) + 1))
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert not list((run_dir / "checkpoints").glob("*-v1.ckpt"))


def test_cli_refuses_a_held_run_dir_before_hydra_writes_into_it(tmp_path):
    """`python train.py` on a run dir another process holds exits (1) before Hydra writes `.hydra/` and the
    log into it: the holder's own job files are never replaced."""
    run_dir = tmp_path / "outputs" / "default" / "stage1"
    holder = _holder_process(run_dir)
    try:
        env = {**os.environ, "WANDB_MODE": "disabled"}
        proc = subprocess.run(train_cmd(tmp_path, *TINY_TRAIN), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1 and f"pid {holder.pid}" in lines[0], proc.stderr[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME, HOLDER_NAME]


def test_generate_runs_sharing_an_output_dir_lock_their_shard(tmp_path):
    """Two generate.py runs with their own run dirs but one output_dir= and shard: the second stops before it
    writes (they would mix seeds in one shard); another shard of the same output_dir is free."""
    from dasd.recipes.generate import generate

    out = tmp_path / "pool"
    common = ["max_questions=1", "samples_per_question=1", "sampling.max_tokens=4", "logger=none",
              f"output_dir={out}"]
    with run_lock(out / ".locks" / "shard-00000-of-00001", "generate"):
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()}"):
            generate(compose_cfg(common, tmp_path / "b", name="generate"))
        assert not list(out.glob("shard-*"))
    with run_lock(out / ".locks" / "shard-00001-of-00002", "generate"):
        generate(compose_cfg([*common, "shard.count=2", "shard.index=0"], tmp_path / "c", name="generate"))
    assert (out / "shard-00000-of-00002.jsonl").exists()
