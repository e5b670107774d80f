"""Rank 0 does a long piece of work (a revision round); the other ranks wait for it without a collective.

A collective barrier would time out after the process group's timeout (30 min by default), and a round can
take longer. So rank 0 signals the end of its work with a file beside the work's outputs, the other ranks
poll for that file (a sleep between looks, no collective), and only then meet at a cheap barrier:

* ``<name>.done.json``: the work finished; holds ``key`` (which piece of work) and rank 0's summary.
* ``<name>.error.json``: the work failed on rank 0; holds ``key`` and the error, which the waiting ranks
  raise in turn instead of waiting forever.

``key`` tells a marker of this piece of work from a stale one left by an earlier run in the same folder
(rank 0 also removes stale markers before it starts). Before a process group exists (``stage=mixed``),
``env_rank_zero`` tells rank 0 apart from the launcher's environment.
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

# the launchers' rank variables: torchrun/Lightning (RANK, LOCAL_RANK, NODE_RANK / GROUP_RANK), SLURM (srun)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def env_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (no process group needed):
    every rank variable that is set (``RANK_VARIABLES``) is 0. A single process (none set) is rank 0.

    All of them, not the first one set: the children Lightning's launcher starts inherit the parent's
    ``SLURM_PROCID`` (0 in an ``salloc`` shell) and differ in ``LOCAL_RANK`` / ``NODE_RANK`` only."""
    env = os.environ if env is None else env
    return all(int(env[k]) == 0 for k in RANK_VARIABLES if str(env.get(k, "")).strip())


class RankZeroWork:
    """The done/error markers of one piece of rank-0 work in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, name: str, what: str | None = None) -> None:
        self.folder, self.name, self.what = Path(folder), name, what or name
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
        self._write(self.done_path, {"key": key, **info})

    def fail(self, error: BaseException, key: str | None = None) -> None:
        self._write(self.error_path, {"key": key, "error": f"{type(error).__name__}: {error}",
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

    def _read(self, path: Path, key: str | None) -> dict | None:
        try:
            body = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return body if key is None or body.get("key") == key else None

    def wait(self, key: str | None = None, poll_s: float = 2.0, timeout_s: float | None = None,
             sleep: Callable[[float], None] = time.sleep) -> dict:
        """Block until rank 0 marks the work (with ``key``) done, and return the done marker. RuntimeError
        if rank 0 marks it failed; TimeoutError after ``timeout_s`` (None: wait as long as the work takes)."""
        start, logged = time.monotonic(), False
        while True:
            failed = self._read(self.error_path, key)
            if failed is not None:
                raise RuntimeError(f"{self.what} failed on rank 0 ({self.error_path}): {failed.get('error')}")
            done = self._read(self.done_path, key)
            if done is not None:
                return done
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise TimeoutError(f"{self.what}: rank 0 marked neither {self.done_path} nor {self.error_path} "
                                   f"within {timeout_s:.0f} s")
            if not logged:
                log.info("waiting for rank 0 to finish %s (%s)", self.what, self.done_path)
                logged = True
            sleep(poll_s)
