"""Child processes of a run (an evaluation, a mixed-policy phase, a world-building step) and the Hydra
override values they are given."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from dasd.utils.paths import SRC_DIR

_BACKSLASHES_BEFORE_QUOTE = re.compile(r"(\\+)(?='|$)")


def hydra_literal(value) -> str:
    """``value`` as a quoted Hydra override value, read back exactly (paths and prompts may hold spaces,
    commas, quotes and backslashes); None as ``null``. Hydra keeps a backslash literal except before a quote
    or at the end of the string, so only those are doubled."""
    if value is None:
        return "null"
    text = _BACKSLASHES_BEFORE_QUOTE.sub(lambda m: m.group(1) * 2, str(value))
    return "'" + text.replace("'", "\\'") + "'"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with dasd's ``src`` first on ``PYTHONPATH`` (the child imports this very
    checkout, installed or not) and ``extra`` set."""
    path = os.pathsep.join([str(SRC_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


@dataclass
class ChildResult:
    returncode: int
    output: str  # stdout and stderr together ("" when not captured)
    seconds: float

    def tail(self, n: int = 3000) -> str:
        return self.output[-n:]


def run_child(cmd: list[str], *, log_file: str | Path | None = None, env: dict | None = None,
              cwd: str | Path | None = None) -> ChildResult:
    """Run ``cmd`` to its end. With ``log_file`` its output is captured and written there; without, it goes
    to this process's stdout and stderr. Never raises on a non-zero exit: the caller decides."""
    t0 = time.perf_counter()
    if log_file is None:
        proc = subprocess.run(cmd, env=env, cwd=cwd)
        return ChildResult(proc.returncode, "", time.perf_counter() - t0)
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    Path(log_file).write_text(proc.stdout)
    return ChildResult(proc.returncode, proc.stdout, time.perf_counter() - t0)
