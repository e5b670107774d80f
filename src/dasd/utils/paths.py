"""Where dasd's own files are: the package's ``src`` folder (what a child process puts on ``PYTHONPATH``) and
the checkout that holds the entry points (``train.py``, ``evaluate.py``) and ``conf/``."""

from __future__ import annotations

import os
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parents[2]  # src/: dasd/utils/paths.py is three levels below it


def _is_checkout(path: Path) -> bool:
    return (path / "train.py").is_file() and (path / "conf").is_dir()


def repo_root() -> Path:
    """The checkout with the entry points and ``conf/``: ``DASD_ROOT`` when set, else the folder above
    ``src/`` (a clone, installed editable), else the working directory."""
    candidates = [Path(os.environ["DASD_ROOT"])] if os.environ.get("DASD_ROOT") else []
    candidates += [SRC_DIR.parent, Path.cwd()]
    for path in candidates:
        if _is_checkout(path):
            return path.resolve()
    raise FileNotFoundError("no dasd checkout (train.py and conf/) at " + ", ".join(map(str, candidates))
                            + ": run from the clone, or set DASD_ROOT to it")


def entry_script(name: str) -> Path:
    """An entry point of the checkout, such as ``evaluate.py``."""
    path = repo_root() / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in the dasd checkout {path.parent}")
    return path


def config_dir() -> Path:
    return repo_root() / "conf"
