"""Where dasd finds its checkout (entry points and conf/): the folder above src/ (a clone, installed editable),
DASD_ROOT for an installed package run elsewhere, and a clear error when there is none."""

from __future__ import annotations

from pathlib import Path

import pytest

from dasd.utils import paths

REPO = Path(__file__).resolve().parent.parent


def test_the_clone_is_found_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("DASD_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.repo_root() == REPO
    assert paths.entry_script("evaluate.py") == REPO / "evaluate.py" and paths.config_dir() == REPO / "conf"


def test_dasd_root_names_another_checkout_and_a_missing_one_is_an_error(tmp_path, monkeypatch):
    other = tmp_path / "checkout"
    (other / "conf").mkdir(parents=True)
    (other / "train.py").write_text("")
    monkeypatch.setenv("DASD_ROOT", str(other))
    assert paths.repo_root() == other.resolve()
    with pytest.raises(FileNotFoundError, match="evaluate.py not found in the dasd checkout"):
        paths.entry_script("evaluate.py")
    monkeypatch.setattr(paths, "SRC_DIR", tmp_path / "site-packages")  # an installed package, not a clone
    monkeypatch.setenv("DASD_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no dasd checkout .* set DASD_ROOT"):
        paths.repo_root()
