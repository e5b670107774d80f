"""The benchmarks stay runnable and their results traceable.

* ``pytest -m bench``: every script in benchmarks/ at ``--smoke`` size, each in a subprocess (as a user runs it),
  writing its JSON to a tmp dir; the JSON must hold the provenance (git revision, exact command) and its own
  sanity checks must hold (the arms agree on the loss, the scorers agree, the memory meters read something).
  The vLLM arms run in the vLLM tier (``pytest -m vllm`` in .venv-vllm).
* default tier: the committed results in benchmarks/results all record where they came from, and the smoke
  helpers never write there.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
SMOKE_TIMEOUT = 600  # seconds per script; each takes well under a minute on 2 idle cores

# the checks each script must report (a script that drops one fails here, not silently)
EXPECTED_CHECKS = {
    "memory_meters": {"host_peak_sees_allocation", "host_current_sees_allocation", "host_peak_reset_works"},
    "pack_length": {"dropped_overlong_zero", "same_samples_both_arms", "epoch_holds_every_sample_and_token",
                    "same_loss_every_repeat", "final_loss_finite", "tokens_per_s_positive"},
    "train_throughput": {"final_loss_close", "every_pair_final_loss_close", "final_loss_finite", "same_timed_tokens"},
    "data_pipeline": {"cold_run_missed_the_cache", "warm_run_hit_the_cache", "tokens_cached", "filters_add_up",
                      "peak_rss_above_baseline"},
    "das_scoring": {"scoring_every_length_ran", "scores_finite", "scores_same_every_repeat", "scores_near_uniform",
                    "memory_meter_reads", "every_sentence_has_tokens", "alignment_conserves_logprob"},
    "generation_throughput": {"every_arm_produced_tokens", "batched_equals_alone", "vllm_ran_where_installed"},
    "scoring_throughput": {"scorers_agree", "every_arm_produced_tokens", "vllm_ran_where_installed",
                           "memory_every_chunk_ran", "memory_meter_reads", "memory_head_grows_with_chunk"},
    "mixed_round": {"same_counts_every_repeat", "every_question_answered", "no_negative_part",
                    "student_and_teacher_tokens", "kept_records_become_samples", "derived_data_built_afresh",
                    "some_records_kept"},
    "provenance_scoring": {"scores_finite", "every_response_scored", "every_token_scored",
                           "store_reload_scores_nothing", "relabel_faster_than_scoring", "memory_meter_reads"},
    "train_mfu": {"every_arm_ran", "step_split_adds_up", "matmul_params_match_linears", "mfu_finite",
                  "flop_formula_6n_matches_counter", "flop_formula_attention_matches_counter",
                  "qwen3_4b_matmul_params"},
}
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def meters():
    """benchmarks/memory_meters.py (the benchmarks' shared helpers), loaded from its file."""
    spec = importlib.util.spec_from_file_location("memory_meters", BENCH / "memory_meters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_smoke(script: str, tmp_path: Path, *extra: str) -> dict:
    """``python benchmarks/<script>.py --smoke --out <tmp>`` from a tmp working directory; its JSON."""
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(BENCH / f"{script}.py"), "--smoke", *extra, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SMOKE_TIMEOUT)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert out.is_file(), f"{script} wrote no JSON (exit {proc.returncode}):\n{log}"
    report = json.loads(out.read_text())
    assert report["benchmark"] == script and report["smoke"] is True
    assert report["git"] and report["argv"][1:] == [str(BENCH / f"{script}.py"), "--smoke", *extra, "--out", str(out)]
    missing = EXPECTED_CHECKS[script] - set(report["checks"])
    assert not missing, f"{script} no longer reports the checks {sorted(missing)}"
    assert meters().failed_checks(report) == [], f"{script}: {report['checks']}\n{log}"
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{log}"
    return report


# ------------------------------------------------------------------------------------------- bench tier


@pytest.mark.bench
def test_memory_meters_smoke(tmp_path):
    r = run_smoke("memory_meters", tmp_path)
    assert r["meters"]["host"]["peak_above_baseline_mb"] >= 0.9 * r["meters"]["host"]["allocated_mb"] > 0


@pytest.mark.bench
def test_train_throughput_smoke(tmp_path):
    """The Lightning arm and the plain loop train the same batches to the same last-step loss."""
    r = run_smoke("train_throughput", tmp_path)
    fl = r["final_loss"]
    assert math.isfinite(fl["lightning"]) and abs(fl["lightning"] - fl["plain"]) <= 1e-3 * max(1.0, abs(fl["plain"]))
    assert r["ratio_lightning_over_plain"] > 0 and r["config"]["accumulate"] == 2


@pytest.mark.bench
def test_pack_length_smoke(tmp_path):
    """Both packings train every sample, none dropped as over-long, with a measured ratio."""
    r = run_smoke("pack_length", tmp_path)
    assert set(r["results"]) == {"cutoff1024_mb1", "cutoff512_mb2"} and r["ratio_512_over_1024"] > 0
    assert all(a["dropped_overlong"] == 0 for a in r["arms"].values())


@pytest.mark.bench
def test_data_pipeline_smoke(tmp_path):
    r = run_smoke("data_pipeline", tmp_path)
    assert [x["records"] for x in r["results"]] == [24, 48]
    assert all(x["cache_hit"] and x["peak_rss_above_baseline_mb"] > 0 for x in r["results"])


@pytest.mark.bench
def test_das_scoring_smoke(tmp_path):
    r = run_smoke("das_scoring", tmp_path)
    assert all(x["peak_above_baseline_mb"] > 0 and x["repeats_done"] == 2 for x in r["scoring"]["results"])
    assert all(x["conserves_logprob"] for x in r["alignment"]["results"])


@pytest.mark.bench
def test_provenance_scoring_smoke(tmp_path):
    r = run_smoke("provenance_scoring", tmp_path)
    assert all(set(x["models"]) == {"teacher", "student", "distilled"} and x["sentences"] > 0 for x in r["results"])


@pytest.mark.bench
def test_generation_throughput_smoke(tmp_path):
    """Every cell has the batched and one-at-a-time HF arms with a ratio, a batched sample equals the same
    request alone, and the batch-size sweep ran; without vLLM in this interpreter its arm is skipped with the
    reason."""
    r = run_smoke("generation_throughput", tmp_path)
    assert [(c["prompts"], c["n"]) for c in r["cells"]] == [(12, 1), (3, 4)]
    assert all({"hf_batched", "hf_single"} <= set(c["arms"]) and c["batch_invariant"] for c in r["cells"])
    assert all(c["ratios"]["hf_batched_over_hf_single"] > 0 for c in r["cells"])
    assert list(next(iter(r["sweeps"].values()))["hf_batch_size"]) == ["16"]
    if not HAS_VLLM:
        assert "not installed" in r["vllm"]["tiny_teacher"]["skipped"]


@pytest.mark.bench
def test_scoring_throughput_smoke(tmp_path):
    """HF scores agree at every chunk size, the head's peak grows with the chunk; without vLLM in this interpreter
    its arm is skipped with the reason."""
    r = run_smoke("scoring_throughput", tmp_path)
    assert set(r["scoring"]["results"]) >= {"hf_c64", "hf_c256"} and "generation" not in r
    assert all(a["close"] for a in r["scoring"]["agreement"].values())
    assert [c["chunk"] for c in r["memory"]["configs"]] == [64, 512]
    assert all(c["peak_above_baseline_mb"] > 0 for c in r["memory"]["configs"])
    if not HAS_VLLM:
        assert "not installed" in r["vllm"]["skipped"]


@pytest.mark.bench
def test_mixed_round_smoke(tmp_path):
    r = run_smoke("mixed_round", tmp_path)
    assert r["counts"]["questions"] == 4 and r["counts"]["kept"] > 0


@pytest.mark.bench
def test_train_mfu_smoke(tmp_path):
    """What a CPU can run of the MFU benchmark: the FLOP formula against torch's counter and one tiny arm; the
    GPU-only parts are listed as skipped."""
    r = run_smoke("train_mfu", tmp_path)
    assert r["flop_check"]["six_n_over_counted_mm"] == pytest.approx(1, rel=0.01)
    assert any("ZeRO-3" in s for s in r["skipped"]) and len(r["arms"]) == 1


# -------------------------------------------------------------------------------------------- vLLM tier


@pytest.mark.vllm
@pytest.mark.bench
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
def test_generation_throughput_smoke_vllm(tmp_path):
    """The vLLM arm: vLLM started with its CPU settings and every cell has its ratio to the batched HF arm."""
    r = run_smoke("generation_throughput", tmp_path)
    assert r["vllm"]["tiny_teacher"]["skipped"] is None and r["vllm"]["tiny_teacher"]["enable_chunked_prefill"] is False
    assert all("vllm_over_hf_batched" in c["ratios"] for c in r["cells"])


@pytest.mark.vllm
@pytest.mark.bench
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
def test_scoring_throughput_smoke_vllm(tmp_path):
    """The vLLM scoring arm: vLLM started, its prompt logprobs agree with HF's (2e-3), and it has a ratio."""
    r = run_smoke("scoring_throughput", tmp_path)
    assert r["vllm"]["skipped"] is None and r["scoring"]["agreement"]["vllm"]["close"]
    assert "vllm" in r["scoring"]["ratios_over_hf_c64"]


@pytest.mark.vllm
@pytest.mark.bench
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed")
def test_mixed_round_smoke_vllm(tmp_path):
    r = run_smoke("mixed_round", tmp_path, "--engine", "vllm")
    assert r["config"]["engine"] == "vllm" and r["counts"]["kept"] > 0


# ------------------------------------------------------------------------------------------ default tier


def committed_results() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.stem for p in BENCH.glob("*.py")}
    assert scripts == set(EXPECTED_CHECKS), "a benchmark without a smoke test (or a test without its script)"


@pytest.mark.parametrize("path", committed_results(), ids=lambda p: p.name)
def test_committed_results_record_their_provenance(path):
    """Every committed result names its git revision and the command that produced it (or says, for the runs
    made before that was recorded, that it is unknown and which commit added the file); none is a smoke run;
    the sanity checks of those that carry them hold."""
    r = json.loads(path.read_text())
    for key in ("git", "command"):
        assert isinstance(r.get(key), str) and r[key], f"{path.name}: no {key}"
        if r[key].startswith("unknown"):
            assert r["provenance_note"]["committed_in"], f"{path.name}: unknown {key} without the committing revision"
    assert not r.get("smoke"), f"{path.name} is a --smoke result"
    if "checks" in r:
        assert meters().failed_checks(r) == [], f"{path.name}: {r['checks']}"


def test_smoke_results_never_go_to_benchmarks_results(tmp_path):
    m = meters()
    with pytest.raises(ValueError, match="smoke result refused"):
        m.write_report({"smoke": True}, RESULTS / "anything.json")
    assert m.write_report({"smoke": True}, tmp_path / "x.json").is_file()


def test_smoke_defaults_yield_to_explicit_flags():
    import argparse

    m = meters()

    def parse(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--steps", type=int, default=60)
        p.add_argument("--repeats", type=int, default=3)
        return m.parse_with_smoke(p, argv, {"steps": 3, "repeats": 1})

    assert (parse([]).steps, parse([]).repeats, parse([]).smoke) == (60, 3, False)
    assert (parse(["--smoke"]).steps, parse(["--smoke"]).repeats) == (3, 1)
    assert parse(["--smoke", "--steps", "7"]).steps == 7


def test_provenance_is_the_command_main_parsed(monkeypatch, tmp_path):
    """The command is the interpreter, the script and the arguments main() parsed (not pytest's argv), prefixed
    with the environment settings that change a measurement."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = meters().provenance(str(BENCH / "train_throughput.py"), ["--smoke", "--out", "a b.json"])
    assert p["command"].startswith("OMP_NUM_THREADS=1 ")
    assert p["command"].endswith("train_throughput.py --smoke --out 'a b.json'")
    assert p["argv"][-3:] == ["--smoke", "--out", "a b.json"] and p["git"]
