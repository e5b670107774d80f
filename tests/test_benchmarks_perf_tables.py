"""scripts/perf_tables.py: the performance figures in README.md, benchmarks/README.md and docs/ are the ones the
committed results in benchmarks/results give (CI fails when a region drifts from its JSON)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "perf_tables.py"


@pytest.fixture(scope="module")
def perf():
    spec = importlib.util.spec_from_file_location("perf_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_region_is_current():
    """The CI guard: ``perf_tables.py --check`` on this checkout (every region current, every renderer used)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_names_a_stale_region_and_the_rewrite_mends_it(perf, tmp_path):
    """A figure edited by hand inside a region, or a result re-measured without regenerating, is stale (file and
    line named); the rewrite restores what the JSON gives."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "benchmarks" / "results", root / "benchmarks" / "results")
    shutil.copy(REPO / "README.md", root / "README.md")
    shutil.copy(REPO / "benchmarks" / "README.md", root / "benchmarks" / "README.md")
    assert perf.main(["--check", "--root", str(root)]) == 0

    readme = root / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace("32.8% at 32K", "42.8% at 32K", 1))
    results = perf.Results(root / "benchmarks" / "results")
    [where] = perf.stale(readme.read_text(), results, "README.md")
    assert where.startswith("README.md:") and where.endswith("perf:readme_mfu_throughput")
    assert perf.main(["--check", "--root", str(root)]) == 1

    # a re-measured result: the region that quotes it goes stale until the script runs
    path = root / "benchmarks" / "results" / "train_throughput_cpu.json"
    d = json.loads(path.read_text())
    d["ratio_lightning_over_plain"] = 0.5
    path.write_text(json.dumps(d))
    assert perf.main(["--check", "--root", str(root)]) == 1
    assert perf.main(["--root", str(root)]) == 0  # the rewrite
    assert perf.main(["--check", "--root", str(root)]) == 0
    assert "32.8% at 32K" in readme.read_text() and "= 0.500**" in (root / "benchmarks" / "README.md").read_text()


def test_bad_markers_are_named_with_their_line(perf):
    results = perf.Results(REPO / "benchmarks" / "results")
    with pytest.raises(ValueError, match=r"doc.md:2: unknown perf region 'nope'"):
        perf.render("x\n<!-- perf:nope -->\n<!-- /perf:nope -->\n", results, "doc.md")
    with pytest.raises(ValueError, match=r"doc.md:1: perf:train_mfu_h200 is never closed"):
        perf.render("<!-- perf:train_mfu_h200 -->\ntext\n", results, "doc.md")
    # a marker mentioned inside a sentence is text, not a region
    assert perf.render("see `<!-- perf:nope -->` here\n", results, "doc.md") == "see `<!-- perf:nope -->` here\n"


def test_a_region_without_its_result_file_says_which(perf, tmp_path):
    with pytest.raises(FileNotFoundError, match="train_throughput_cpu.json"):
        perf.render("<!-- perf:train_throughput_cpu -->\n<!-- /perf:train_throughput_cpu -->\n",
                    perf.Results(tmp_path), "doc.md")
