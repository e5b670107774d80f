"""Rank 0 does a long piece of work (a revision round, an evaluation); the other ranks wait for it without a collective.

A collective barrier would time out after the process group's timeout (30 min by default), and a round can
take longer. So rank 0 signals the end of its work with a file beside the work's outputs, the other ranks
poll for that file (a sleep between looks, no collective), and only then meet at a cheap barrier:

* ``<name>.done.json``: the work finished; holds ``key``, ``launch`` and rank 0's summary.
* ``<name>.error.json``: the work failed on rank 0; holds ``key``, ``launch`` and the error, which the waiting
  ranks raise in turn instead of waiting forever.

A waiting rank takes a marker only if both tags are its own:

* ``key``: which piece of work (``stage=mixed``: the training config hash; the callback:
  ``round k at step s``).
* ``launch`` (``launch_id``): which launch of the ranks, when an external launcher started them all at once:
  SLURM (``SLURM_JOB_ID``, ``SLURM_STEP_ID``, ``SLURM_RESTART_COUNT`` of a requeued job) and/or torchrun
  (``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_RESTART_COUNT``, ``MASTER_ADDR:MASTER_PORT``); None otherwise.

Why ``launch``: rank 0 removes stale markers before it starts (``signal``), but under torchrun/srun the other
ranks start at the same moment and may look before it has; a relaunch with the same config (after an OOM, a
requeue) reaches the same ``key``, so without ``launch`` they would take the previous attempt's error (and
raise at once) or its done marker (and read its data). Every rank of one launch has the same ``launch``: srun
tasks share the job and the step, torchrun workers the run id, restart count and master address. Under
Lightning's own launcher (``python train.py trainer.devices=N``) there is no race: rank 0 starts the other
ranks (``_SubprocessScriptLauncher``) in ``trainer.fit``, after ``stage=mixed``'s preparation, and they
inherit its environment (an ``salloc`` shell's SLURM variables included) plus ``MASTER_ADDR``,
``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, none of which counts without torchrun's run
id: the children's ``launch`` is rank 0's, before and after it launched them, so they match its markers.

Left open: outside SLURM, torchrun's static rendezvous (several nodes, or ``--master-port`` given) has run id
``none`` and the same master address at every launch, so its relaunches share ``launch`` and the race remains
(plain single-node torchrun and ``--standalone`` draw a fresh uuid): give such launches ``--rdzv-id`` with a
value new at each launch (the same on every node).

The callback's rounds do not depend on ``launch``: a relaunch resumed from a checkpoint reaches the same
``round k at step s``, but there a process group exists, and rank 0 clears the round's markers before a
barrier that the other ranks pass before they look (``launch`` guards them as well).

Before a process group exists (``stage=mixed``), ``env_rank_zero`` tells rank 0 apart from the launcher's
environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from dasd.utils.logging import get_logger

log = get_logger(__name__)


def launch_id(env: Mapping[str, str] | None = None) -> str | None:
    """The identity of this launch of the ranks from SLURM's and torchrun's variables (see the module
    docstring); None without either (a single process, or Lightning's own launcher outside SLURM). The same
    on every rank of a launch (no rank variable in it); new at each srun, requeue, torchrun and restart."""
    env = os.environ if env is None else env
    parts = []
    if env.get("SLURM_JOB_ID"):
        slurm = f"slurm job {env['SLURM_JOB_ID']} step {env.get('SLURM_STEP_ID', '-')}"
        if env.get("SLURM_RESTART_COUNT"):
            slurm += f" restart {env['SLURM_RESTART_COUNT']}"
        parts.append(slurm)
    if env.get("TORCHELASTIC_RUN_ID"):
        restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        parts.append(f"torchrun {env['TORCHELASTIC_RUN_ID']} restart {restart} "
                     f"at {env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}")
    return "; ".join(parts) or None


class RankZeroWork:
    """The done/error markers of one piece of rank-0 work in ``folder`` (see the module docstring); ``env``:
    the environment ``launch_id`` reads (None: this process's)."""

    def __init__(self, folder: str | Path, name: str, what: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.folder, self.name, self.what = Path(folder), name, what or name
        self.launch = launch_id(env)
        self.done_path = self.folder / f"{name}.done.json"
        self.error_path = self.folder / f"{name}.error.json"

    def clear(self) -> None:
        """Remove the markers of an earlier run (rank 0, before it starts the work)."""
        for p in (self.done_path, self.error_path):
            p.unlink(missing_ok=True)

    def _write(self, path: Path, body: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=2, default=str))
        tmp.replace(path)  # atomic: a waiting rank never reads half a marker

    def finish(self, key: str | None = None, **info) -> None:
        self._write(self.done_path, {"key": key, "launch": self.launch, **info})

    def fail(self, error: BaseException, key: str | None = None) -> None:
        self._write(self.error_path, {"key": key, "launch": self.launch,
                                      "error": f"{type(error).__name__}: {error}",
                                      "traceback": "".join(traceback.format_exception(error))[-6000:]})

    @contextlib.contextmanager
    def signal(self, key: str | None = None) -> Iterator[None]:
        """Rank 0 does the work inside: stale markers go first, then the done marker on success or the error
        marker (and the exception goes on) on failure."""
        self.clear()
        try:
            yield
        except BaseException as e:
            self.fail(e, key)
            raise
        self.finish(key)

    def _read(self, path: Path, key: str | None, foreign: list[Path] | None = None) -> dict | None:
        """The marker at ``path`` if it is this work's (``key``; None: any) of this launch, else None (a stale
        one goes into ``foreign``)."""
        try:
            body = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if (key is None or body.get("key") == key) and body.get("launch") == self.launch:
            return body
        if foreign is not None:
            foreign.append(path)
        return None

    def wait(self, key: str | None = None, poll_s: float = 2.0, timeout_s: float | None = None,
             sleep: Callable[[float], None] = time.sleep) -> dict:
        """Block until rank 0 marks the work (with ``key``) done, and return the done marker. RuntimeError
        if rank 0 marks it failed; TimeoutError after ``timeout_s`` (None: wait as long as the work takes)."""
        start, logged = time.monotonic(), False
        while True:
            foreign: list[Path] = []
            failed = self._read(self.error_path, key, foreign)
            if failed is not None:
                raise RuntimeError(f"{self.what} failed on rank 0 ({self.error_path}): {failed.get('error')}")
            done = self._read(self.done_path, key, foreign)
            if done is not None:
                return done
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise TimeoutError(f"{self.what}: rank 0 marked neither {self.done_path} nor {self.error_path} "
                                   f"within {timeout_s:.0f} s")
            if not logged:
                stale = f"; ignoring the stale {', '.join(p.name for p in foreign)}" if foreign else ""
                log.info("waiting for rank 0 to finish %s (%s; key %r, launch %r)%s", self.what,
                         self.done_path, key, self.launch, stale)
                logged = True
            sleep(poll_s)
