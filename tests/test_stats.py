"""Length statistics predict exactly what packing will drop at a given cutoff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dasd.data.datamodule import SFTDataModule
from dasd.data.records import read_records
from dasd.data.selection import RandomSelector
from dasd.data.stats import length_report, sample_lengths
from dasd.data.template import ChatTemplater

REPO = Path(__file__).resolve().parent.parent


def test_report_numbers():
    rep = length_report({"math": [10, 20, 30, 40], "code": [100]}, cutoffs=[25, 100])
    assert rep["math"]["dropped_count"] == {"25": 2, "100": 0} and rep["all"]["dropped_count"]["100"] == 0
    assert rep["all"]["count"] == 5 and rep["all"]["max"] == 100 and rep["math"]["mean"] == 25
    assert rep["math"]["dropped_share"]["25"] == 0.5


@pytest.mark.parametrize("cutoff", [150, 170])
def test_stats_predict_packing_drops(cutoff, tokenizer, sample_file):
    """The share `stats` reports for a cutoff is exactly what the training data pipeline drops."""
    records, _ = read_records(sample_file)
    templater = ChatTemplater(tokenizer, "You are a helpful assistant.")
    predicted = length_report(sample_lengths(records, templater), [cutoff])["all"]["dropped_count"][str(cutoff)]
    dm = SFTDataModule(str(sample_file), tokenizer, RandomSelector(0), cutoff_len=cutoff,
                       system_prompt="You are a helpful assistant.")
    dm.setup()
    assert 0 < predicted < len(records) and len(dm.packing_report.dropped_overlong) == predicted


def test_stats_cli(tmp_path):
    """`python stats.py` writes the per-domain report and the CDF plot."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "stats.py"), f"paths.root_dir={tmp_path}", "cutoffs=[150]"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "default" / "stats_sample"
    report = json.loads((run_dir / "length_stats.json").read_text())
    assert report["lengths"]["math"]["count"] == 600 and "150" in report["lengths"]["all"]["dropped_share"]
    assert (run_dir / "length_cdf.png").stat().st_size > 1000
