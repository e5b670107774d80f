"""One process per run directory: ``train``, ``generate`` and ``evaluate`` hold a lock on their run dir.

Two processes writing one run dir interleave ``metrics.jsonl``, open two W&B runs and fight over
checkpoints, so the second one stops at once, naming the holder. The lock is an OS lock (``flock`` through
the ``filelock`` library) on ``<run_dir>/.dasd.lock``: the kernel releases it when its process dies, however
it dies (SIGKILL, OOM killer), and forked children (DataLoader workers) do not keep it. Beside it
``<run_dir>/.dasd.lock.json`` names the holder (what, host, pid, start time) for the message.

A holder record left behind while nobody holds the OS lock comes from a process that did not exit cleanly:

* same host, and its pid no longer runs (or now belongs to another process): taken over, with a warning;
* the same SLURM job after a requeue (another ``SLURM_RESTART_COUNT``): taken over, on any node;
* another host: refused. Whether a network file system shares ``flock`` between hosts depends on its mount,
  so this host cannot tell that the holder has stopped; the message says which file to delete once it has.

Only global rank 0 locks (``env_rank_zero``): the other ranks of the same job run in the same dir by design.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dasd.utils.ranks import env_rank_zero

log = logging.getLogger(__name__)  # not dasd.utils.logging: it imports Lightning, and this runs before any check

LOCK_NAME = ".dasd.lock"
HOLDER_NAME = ".dasd.lock.json"


class RunDirInUse(SystemExit):
    """Another process holds the run dir (or may: a record left on another host). A ``SystemExit``: the
    command line prints its one-line message and exits with status 1, with no traceback."""

    def __init__(self, message: str, holder: Holder | None = None) -> None:
        super().__init__(f"error: {message}")
        self.holder = holder


def _proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass
class Holder:
    """Who holds a run dir: the command (train/generate/evaluate), where and since when."""

    what: str
    host: str
    pid: int
    started_at: str
    proc_start: int | None = None
    slurm_job: str | None = None
    slurm_restart: str | None = None

    @classmethod
    def me(cls, what: str) -> Holder:
        return cls(what=what, host=socket.gethostname(), pid=os.getpid(),
                   started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), proc_start=_proc_start(os.getpid()),
                   slurm_job=os.environ.get("SLURM_JOB_ID"), slurm_restart=os.environ.get("SLURM_RESTART_COUNT"))

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # none, half-written or foreign: described as unknown
            return None

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid} on host {self.host}, started {self.started_at})"

    def gone(self) -> bool:
        """Whether this holder has certainly stopped, as far as this process can tell (module docstring)."""
        if self.slurm_job and self.slurm_job == os.environ.get("SLURM_JOB_ID") \
                and self.slurm_restart != os.environ.get("SLURM_RESTART_COUNT"):
            return True  # a requeued job: SLURM ended the earlier attempt before starting this one
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid() or not _alive(self.pid):
            return True
        start = _proc_start(self.pid)
        return start is not None and self.proc_start is not None and start != self.proc_start  # pid reused


def _busy(run_dir: Path, holder: Holder | None) -> RunDirInUse:
    who = holder.describe() if holder else "another process (its record is not written yet)"
    return RunDirInUse(f"run directory {run_dir} is in use by {who}: two processes would interleave its "
                       "outputs. Wait for it to finish or stop it, or use another experiment_name/run_name.", holder)


def _left_behind(run_dir: Path, holder: Holder) -> RunDirInUse:
    here = socket.gethostname()
    why = (f"this host ({here}) cannot tell whether it still runs" if holder.host != here else
           "that process still runs but holds no lock (was the lock file deleted?)")
    return RunDirInUse(f"run directory {run_dir} is marked in use by {holder.describe()}, which did not release "
                       f"it, and {why}. If it has stopped, delete {run_dir / HOLDER_NAME} and rerun.", holder)


def _write_holder(path: Path, holder: Holder) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(holder), indent=2))
    os.replace(tmp, path)  # a reader never sees half a record


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str) -> Iterator[Holder | None]:
    """Hold ``run_dir`` for this process while the block runs (yields the holder record; None on ranks > 0,
    which do not lock). Raises ``RunDirInUse`` at once if another process holds it."""
    if not env_rank_zero():
        yield None
        return
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path, holder_path = run_dir / LOCK_NAME, run_dir / HOLDER_NAME
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(run_dir, Holder.read(holder_path)) from None
    me = None
    try:
        left = Holder.read(holder_path)
        if left is not None:
            if not left.gone():
                raise _left_behind(run_dir, left)
            log.warning("run directory %s: taking over from %s, which did not release it", run_dir,
                        left.describe())
        me = Holder.me(what)
        _write_holder(holder_path, me)
        yield me
    finally:
        if me is not None and Holder.read(holder_path) == me:
            holder_path.unlink(missing_ok=True)
            # a clean exit leaves no lock files; a contender that opened the old file just now is refused, as it
            # would have been a moment earlier (filelock does not take a lock on an unlinked file)
            lock_path.unlink(missing_ok=True)
        lock.release()


def refuse_if_busy(run_dir: str | Path) -> None:
    """Raise ``RunDirInUse`` if another live process holds ``run_dir`` now; take nothing and create nothing.
    (The lock itself is ``run_lock``; this is the early look that spares a busy dir Hydra's own writes.)"""
    lock_path = Path(run_dir).resolve() / LOCK_NAME
    if not env_rank_zero() or not lock_path.exists():
        return
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy(lock_path.parent, Holder.read(lock_path.parent / HOLDER_NAME)) from None
    lock.release()


class RefuseBusyRunDir(Callback):
    """Hydra callback: a single run whose run dir another process holds stops before Hydra writes its
    ``.hydra/`` and log there (they would replace the holder's). Multirun jobs rely on ``run_lock`` alone."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            run_dir = str(config.hydra.run.dir)
        except Exception:  # noqa: BLE001 - an interpolation this early cannot resolve: run_lock still guards
            return
        refuse_if_busy(run_dir)  # RunDirInUse is a SystemExit: Hydra lets it through (unlike an Exception)
