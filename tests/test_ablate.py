"""The ablation runner (`python ablate.py`, dasd.recipes.ablation): rows of method.md §10's Tables 1, 3, 5 and 7
at a tiny budget in a stand-in world (the built-in tiny teacher as both teachers, the tiny student), the step
cache, and every shipped row and sweep file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli import REPO
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from wandb_offline import read_history, run_files

from dasd.ablation.steps import check_overrides, parse_steps
from dasd.config import register_resolvers
from dasd.models.student import asset_path
from dasd.recipes.ablation import resolve_world, run_row
from dasd.world.generator import make_records, write_jsonl

CONF = REPO / "conf"
PAPER_ROWS = {1: "abcdefg", 3: "abcdefg", 5: "abc", 7: "abcd"}  # method.md §10: the rows of each table
CONTROLS = {"T1h": "T1b", "T5d": "T3b"}  # issue 17's control rows -> the row whose step they start from
ROWS = {1: "abcdefgh", 3: "abcdefg", 5: "abcd", 7: "abcd"}  # the paper's rows and the controls
ROW_FILES = sorted((REPO / "experiments" / "world").glob("t*.yaml"))
# method.md §10, AIME24 / AIME25 (avg@64); None where the paper reports "-"
PAPER = {"T1a": (81.7, 71.9), "T1b": (83.1, 76.1), "T1c": (83.1, 78.9), "T1d": (85.2, 81.3),
         "T1e": (79.0, 71.3), "T1f": (82.9, 70.2), "T1g": (83.1, 73.1), "T3a": (81.7, 71.9),
         "T3b": (83.3, 74.2), "T3c": (83.1, 76.1), "T3d": (83.1, 78.9), "T3e": (85.0, 79.2),
         "T3f": (79.0, 71.3), "T3g": (82.5, 71.9), "T5a": (83.3, 74.2), "T5b": (80.8, 72.3),
         "T5c": (83.3, 74.8), "T7a": (None, 47.4), "T7b": (84.2, 74.0), "T7c": (87.7, 83.0),
         "T7d": (88.5, 83.3)}
SAME = {"T3a": "T1a", "T3c": "T1b", "T3d": "T1c", "T3f": "T1e", "T5a": "T3b"}  # rows the paper says are equal
# a tiny budget: 8 questions x 2 candidates, 1 epoch, k=1 on the 8 held-out questions, short generations; the
# stand-in teacher knows nothing of the world, so its samples are kept unfiltered; rounds run in-process
TINY = ["budget.questions=8", "budget.samples_per_question=2", "budget.epochs=1", "budget.eval.k=1",
        "budget.teacher_max_tokens=48", "budget.eval.max_tokens=48",
        'train_overrides=["filters=none","mixed.transport=inprocess"]']
RS_06 = {"stage": 1, "teacher": "a", "temperature": 0.6, "sampler": "random", "questions": 1}
TEST_ROWS = {  # rows in the test search path (experiment=test/<name>)
    "two": {"row": {"table": 3, "id": "TT", "label": "RS T=0.6 -> DAS T=1.0"},
            "steps": [RS_06, {"stage": 2, "teacher": "a", "temperature": 1.0, "sampler": "divergence",
                              "questions": 1}]},
    "mix": {"row": {"table": 5, "id": "TM", "label": "RS T=0.6 -> mixed"},
            "steps": [RS_06, {"stage": "mixed", "mask_student_prefix": False}]},
    "one": {"row": {"table": 1, "id": "TO", "label": "RS T=0.6"}, "steps": [RS_06]},
    "offpol": {"row": {"table": 5, "id": "TD", "label": "RS T=0.6 -> off-policy samples alone"},
               "steps": [RS_06, {"stage": "mixed", "offpolicy_only": True}]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A stand-in world with the layout of dasd.recipes.world.ensure_world's: 24 training and 8 held-out
    questions (difficulty 1), the tiny teacher as teacher_a and teacher_b, the tiny student."""
    w = tmp_path_factory.mktemp("world")
    write_jsonl(make_records(24, seed=0, difficulty=1, split="train"), w / "data" / "questions.jsonl")
    write_jsonl(make_records(8, seed=0, difficulty=1, split="heldout"), w / "data" / "heldout.jsonl")
    for name, asset in (("teacher_a", "tiny_teacher"), ("teacher_b", "tiny_teacher"),
                        ("student", "tiny_qwen3")):
        (w / name).symlink_to(asset_path(asset))
    (w / "world.json").write_text(json.dumps({"key": "standin", "settings": {},
                                              "accuracy": {"student": 0.0}, "seconds": 0}))
    return w


@pytest.fixture(scope="module")
def search(tmp_path_factory) -> Path:
    """A Hydra search path holding the test rows (experiment=test/<name>)."""
    d = tmp_path_factory.mktemp("conf")
    (d / "experiment" / "test").mkdir(parents=True)
    for name, row in TEST_ROWS.items():
        (d / "experiment" / "test" / f"{name}.yaml").write_text(f"# @package _global_\n{json.dumps(row)}\n")
    return d


def overrides(search: Path, world: Path | None, *more: str) -> list[str]:
    return [f"hydra.searchpath=[file://{search}]", *([f"world_dir={world}"] if world else []), *more]


def run_cli(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "ablate.py"), f"paths.root_dir={out}", *args], cwd=out,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"ablate.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def compose_ablate(args: list[str]):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("ablate", overrides=args)


def run_inprocess(out: Path, args: list[str]) -> dict:
    """run_row in this process, as the Hydra app runs it (the nested train/evaluate configs compose in it)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("ablate", overrides=[f"paths.root_dir={out}", *args])
        cfg.paths.run_dir = str(out / "outputs" / "ablate" / str(cfg.run_name))
        return run_row(cfg)


def final_ckpt(entry: dict) -> Path:
    return Path(entry["dir"]) / "checkpoints" / "hf" / "final" / "model.safetensors"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def two_step(tmp_path_factory, world, search) -> tuple[Path, dict]:
    """`python ablate.py experiment=test/two logger=wandb`: stage 1 (RS, T=0.6) then stage 2 (DAS, T=1.0),
    seed 1; W&B offline (no API key), several training runs in one process."""
    out = tmp_path_factory.mktemp("run")
    run_cli(out, *overrides(search, world, "experiment=test/two", "logger=wandb", *TINY))
    return out, read(out / "outputs" / "ablate" / "TT_seed1" / "row_result.json")


@pytest.mark.cli
def test_two_step_row_through_the_cli(two_step, world):
    """Each step trains in its own content-addressed folder from its parent's final weights, on its own
    teacher pool and sampler, and is evaluated; row_result.json has each step's evaluation and data counts."""
    out, result = two_step
    assert (result["id"], result["table"], result["seed"]) == ("TT", 3, 1)
    assert result["world"]["key"] == "standin" and result["world"]["accuracy"] == {"student": 0.0}
    s1, s2 = result["steps"]
    assert (s1["stage"], s2["stage"]) == ("1", "2") and not s1["reused"] and not s2["reused"]
    for s in (s1, s2):
        assert s["eval"]["k"] == 1 and s["eval"]["n_questions"] == 8 and 0 <= s["eval"]["avg@k"] <= 100
        assert s["data"]["questions"] == 8 and s["data"]["selected"] == 8 and s["data"]["candidates"] == 16
        assert Path(s["dir"]).parent == out / "outputs" / "ablate" / "steps" / "seed1"
        assert final_ckpt(s).is_file() and (Path(s["dir"]) / "eval" / "summary.json").is_file()
    assert result["final"] == {**s2["eval"], "results": "questions.jsonl.gz"} and s1["dir"] != s2["dir"]
    step2 = read(Path(s2["dir"]) / "step.json")
    assert step2["parent"] == s1["key"] and step2["settings"]["sampler"] == "divergence"
    assert step2["rows"] == ["TT"]
    m2 = read(Path(s2["dir"]) / "manifest.json")
    assert m2["status"] == "completed" and m2["parent"]["init_from"] == str(final_ckpt(s1).parent)
    assert m2["data"]["selection"]["sampler"] == "divergence" and m2["config"]["train"]["epochs"] == 1
    assert m2["config"]["student"]["name_or_path"].endswith("student")  # DAS scores with the raw student
    assert m2["config"]["data"]["teacher_tokenizer"].endswith("teacher_a")
    pools = {read(Path(s["dir"]) / "step.json")["pool"] for s in (s1, s2)}
    assert len(pools) == 2 and all("/ablate/pools/" in p for p in pools)  # one pool per temperature
    # each pool is sampled once over budget.pool_questions.a x 8 = 16 questions; a step reads its first 8
    questions = [json.loads(line)["uuid"] for line in (world / "data" / "questions.jsonl").open()]
    for p in map(Path, pools):
        assert p.name == "first8.jsonl"
        whole = [json.loads(line) for line in next((p.parent.parent / "data").glob("*.jsonl")).open()]
        assert sorted({r["question_id"] for r in whole}) == sorted(questions[:16])
        assert [json.loads(x) for x in p.open()] == [r for r in whole if r["question_id"] in questions[:8]]
    job = out / "outputs" / "ablate" / "TT_seed1"
    assert read(job / "manifest.json")["status"] == "completed"
    assert result["config"]["row"]["id"] == "TT" and result["versions"]["torch"]
    # W&B offline: a run per stage (with its loss history) and one for the row (each step's avg@k)
    for s in (s1, s2):
        assert any("train/loss" in h for h in read_history(run_files(s["dir"])[-1]))
    (row_run,) = run_files(job)
    logged = [h for h in read_history(row_run) if "final/avg@k" in h]
    assert logged and logged[-1]["final/avg@k"] == result["final"]["avg@k"] and "step2/avg@k" in logged[-1]


@pytest.mark.cli
def test_shared_prefix_is_reused_and_another_seed_is_not(two_step, world, search):
    """A row starting with the same step reuses it (not retrained) and adds a mixed-policy step on top; the
    same row with another seed trains its own step."""
    out, first = two_step
    s1 = first["steps"][0]
    mtime = final_ckpt(s1).stat().st_mtime_ns
    mixed = run_inprocess(out, overrides(search, world, "experiment=test/mix", *TINY))
    m1, m2 = mixed["steps"]
    assert m1["reused"] and m1["dir"] == s1["dir"] and m1["eval_reused"] and m1["eval"] == s1["eval"]
    assert final_ckpt(s1).stat().st_mtime_ns == mtime
    assert read(Path(s1["dir"]) / "step.json")["rows"] == ["TM", "TT"]
    assert m2["stage"] == "mixed" and not m2["reused"] and m2["eval"]["n_questions"] == 8
    assert m2["data"]["mixed"]["questions"] == 8 and m2["data"]["mixed"]["off_policy"] == 3  # 0.4 x 8
    step = read(Path(m2["dir"]) / "step.json")
    assert step["question_runs"] == [s1["dir"]] and step["parent"] == s1["key"]
    assert read(Path(m2["dir"]) / "manifest.json")["config"]["mixed"]["question_runs"] == [s1["dir"]]

    other = run_inprocess(out, overrides(search, world, "experiment=test/one", "seed=2", *TINY))
    o1 = other["steps"][0]
    assert not o1["reused"] and o1["key"] != s1["key"] and Path(o1["dir"]).parent.name == "seed2"
    pool = {seed: read(Path(s["dir"]) / "step.json")["pool"] for seed, s in ((1, s1), (2, o1))}
    assert pool[1] != pool[2]  # budget.pool_seed null: the teacher pool is resampled with the row's seed
    assert final_ckpt(s1).stat().st_mtime_ns == mtime
    again = run_inprocess(out, overrides(search, world, "experiment=test/one", *TINY))  # seed 1: free
    assert again["steps"][0]["reused"] and again["steps"][0]["dir"] == s1["dir"]


@pytest.mark.cli
def test_offpolicy_only_step_trains_on_the_mixed_steps_offpolicy_draw_alone(two_step, world, search):
    """{stage: mixed, offpolicy_only: true} (the control T5d): no revision round, one epoch from the parent on
    the off-policy samples a mixed step would add (0.4 x 8 = 3), the same draw."""
    out, first = two_step
    result = run_inprocess(out, overrides(search, world, "experiment=test/offpol", *TINY))
    s1, only = result["steps"]
    assert s1["reused"] and s1["dir"] == first["steps"][0]["dir"] and not only["reused"]
    assert only["data"]["mixed"]["questions"] == 0 and only["data"]["mixed"]["mixed_policy"] == 0
    assert only["data"]["mixed"]["off_policy"] == 3 and only["eval"]["n_questions"] == 8
    assert not (Path(only["dir"]) / "mixed" / "round_0" / "stats.json").exists()  # no round ran
    manifest = read(Path(only["dir"]) / "manifest.json")
    assert manifest["status"] == "completed" and manifest["config"]["mixed"]["n_questions"] == 0


def test_base_row_evaluates_the_untrained_student(tmp_path, world, search):
    """T7a: no training step, the untrained student's evaluation is the row's result."""
    result = run_inprocess(tmp_path, overrides(search, world, "experiment=world/t7a", *TINY))
    assert result["steps"] == [] and result["base"]["stage"] == "base"
    assert result["final"] == {**result["base"]["eval"], "results": "questions.jsonl.gz"}  # in the row folder
    assert result["final"]["k"] == 1
    assert result["final"]["n_questions"] == 8 and result["paper"]["AIME25"] == 47.4


def compose_row(name: str, search: Path):
    return compose_ablate(overrides(search, None, f"experiment=world/{name}", "paths.run_dir=/tmp/unused"))


@pytest.mark.parametrize("path", ROW_FILES, ids=[p.stem for p in ROW_FILES])
def test_every_row_composes(path, search):
    """Each experiments/world/<row>.yaml composes with conf/ablate.yaml; its id is its file name, its table
    the id's, its AIME numbers method.md §10's, and its steps a valid chain."""
    cfg = compose_row(path.stem, search)
    row = OmegaConf.to_container(cfg.row, resolve=True)
    assert row["id"].lower() == path.stem and row["table"] == int(row["id"][1]) and row["label"]
    if row["id"] in CONTROLS:  # not the paper's: no numbers to compare with
        assert row["paper"] == {} and row["label"].startswith("control:")
    else:
        assert (row["paper"]["AIME24"], row["paper"]["AIME25"]) == PAPER[row["id"]]
    steps = parse_steps(OmegaConf.to_container(cfg.steps, resolve=True))
    assert steps or cfg.eval_base
    assert cfg.run_name == f"{row['id']}_seed1" and cfg.experiment_name == "ablate"


def _steps(row_id: str, search: Path) -> list:
    return parse_steps(OmegaConf.to_container(compose_row(row_id.lower(), search).steps, resolve=True))


def test_every_table_row_has_one_file_and_shared_rows_share_steps(search):
    """Every row id of Tables 1, 3, 5, 7 has exactly one file; the rows the paper says are equal have the same
    steps (the step cache runs them once), and the rows built on another start with its steps."""
    assert sorted(p.stem for p in ROW_FILES) == sorted(f"t{t}{c}" for t, cs in ROWS.items() for c in cs)
    for row, same in SAME.items():
        assert _steps(row, search) == _steps(same, search), row
    for row, base in (("T1d", "T1a"), ("T1g", "T1e"), ("T5b", "T3b"), ("T5c", "T3b"), ("T7c", "T7b"),
                      ("T7d", "T7c"), *CONTROLS.items()):
        prefix = _steps(base, search)
        assert _steps(row, search)[:len(prefix)] == prefix, row
    assert [s.mask_student_prefix for s in _steps("T5b", search)[1:]] == [True]
    assert [s.mask_student_prefix for s in _steps("T5c", search)[1:]] == [False]


@pytest.mark.parametrize("table", [*ROWS, "all"])
def test_sweeps_list_their_tables_rows_and_seeds(table):
    """sweeps/world_table<N>.yaml runs exactly that table's rows, world_all.yaml every row, >= 3 seeds."""
    sweep = OmegaConf.load(REPO / "sweeps" / f"world_{'all' if table == 'all' else f'table{table}'}.yaml")
    assert sweep.hydra.mode == "MULTIRUN"
    params = sweep.hydra.sweeper.params
    rows = params.experiment.split(",")
    tables = ROWS if table == "all" else {table: ROWS[table]}
    assert sorted(rows) == sorted(f"world/t{t}{c}" for t, cs in tables.items() for c in cs)
    assert len(rows) == len(set(rows)) and len(set(str(params.seed).split(","))) >= 5  # issue 17: >= 5 seeds


def test_bad_steps_fail_early():
    """Malformed rows stop before any work, naming the step and the field."""
    cases = [([{**RS_06, "stage": 2}], "starts with one stage-1 step"),
             ([RS_06, RS_06], "starts with one stage-1 step"),
             ([{**RS_06, "teacher": "c"}], "steps[1].teacher"),
             ([{**RS_06, "sampler": "das"}], "steps[1].sampler"),
             ([{**RS_06, "temperature": None}], "steps[1].temperature"),
             ([{**RS_06, "questions": 0}], "steps[1].questions"),
             ([{**RS_06, "epochs": 2}], "unknown keys ['epochs']"),
             ([RS_06, {"stage": "mixed", "temperature": 1.0}], "drop ['temperature']"),
             ([{**RS_06, "mask_student_prefix": True}], "only for stage: mixed"),
             ([{**RS_06, "offpolicy_only": True}], "steps[1].offpolicy_only: only for stage: mixed"),
             ([RS_06, {"stage": "mixed", "offpolicy_only": "yes"}], "steps[2].offpolicy_only: expected true")]
    for steps, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_steps(steps)
    assert parse_steps([RS_06, {"stage": "mixed"}])[1].teacher == "a"  # the previous step's teacher
    with pytest.raises(ValueError, match="train_overrides"):
        check_overrides(["optim.lr=1e-4", "data.path=/x.jsonl"])
    check_overrides(["optim.lr=1e-4", "filters=none", "+student.load.attn_implementation=eager"])


def test_a_row_larger_than_the_world_fails_clearly(tmp_path, world, search):
    """A step asking for more questions than the world has stops before sampling, naming the numbers; the
    job's manifest says failed."""
    args = overrides(search, world, "experiment=world/t1c", *TINY[1:], "budget.questions=20")  # 2 x 20 > 24
    with pytest.raises(ValueError, match=r"needs 40 training questions .* the world has 24"):
        run_inprocess(tmp_path, args)
    assert read(tmp_path / "outputs" / "ablate" / "T1c_seed1" / "manifest.json")["status"] == "failed"
    assert not (tmp_path / "outputs" / "ablate" / "pools").exists()


def test_world_is_built_through_ensure_world_unless_given(world, search, monkeypatch, tmp_path):
    """Without world_dir, the world comes from dasd.recipes.world.ensure_world(cfg.world, paths.output_dir);
    with it, that directory is used as it is (a directory without a world's layout is refused)."""
    import dasd.recipes.world

    calls = []
    monkeypatch.setattr(dasd.recipes.world, "ensure_world", lambda w, out: calls.append((w, out)) or world)
    cfg = compose_ablate(overrides(search, None, "experiment=world/t1a", f"paths.root_dir={tmp_path}",
                                   "paths.run_dir=/tmp/unused"))
    assert resolve_world(cfg) == world and calls == [(cfg.world, tmp_path / "outputs")]
    cfg.world_dir = str(world)
    assert resolve_world(cfg) == world.resolve() and len(calls) == 1
    cfg.world_dir = str(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        resolve_world(cfg)


# method.md §10, transcribed row by row: (stage, teacher, temperature, sampler, questions) per step, a mixed step
# as ("mixed", mask_student_prefix). a = gpt-oss-120b, b = Qwen3-Next-80B-A3B-Thinking; 50K = 1, 100K = 2,
# 25K = 0.5; T7's 105K / 330K = 2 (the world's question bank; docs/ablations.md).
EXPECTED = {
    "T1a": [("1", "a", 0.6, "random", 1)], "T1b": [("1", "a", 1.0, "random", 1)],
    "T1c": [("1", "a", 1.0, "random", 2)],
    "T1d": [("1", "a", 0.6, "random", 1), ("2", "a", 1.0, "random", 1)],
    "T1e": [("1", "b", 0.6, "random", 0.5)], "T1f": [("1", "b", 1.0, "random", 0.5)],
    "T1g": [("1", "b", 0.6, "random", 0.5), ("2", "b", 1.0, "random", 0.5)],
    "T3a": [("1", "a", 0.6, "random", 1)], "T3b": [("1", "a", 0.6, "divergence", 1)],
    "T3c": [("1", "a", 1.0, "random", 1)], "T3d": [("1", "a", 1.0, "random", 2)],
    "T3e": [("1", "a", 1.0, "divergence", 1)], "T3f": [("1", "b", 0.6, "random", 0.5)],
    "T3g": [("1", "b", 0.6, "divergence", 0.5)],
    "T5a": [("1", "a", 0.6, "divergence", 1)],
    "T5b": [("1", "a", 0.6, "divergence", 1), ("mixed", True)],
    "T5c": [("1", "a", 0.6, "divergence", 1), ("mixed", False)],
    "T1h": [("1", "a", 1.0, "random", 1), ("2", "a", 1.0, "random", 1)],  # control: no temperature change
    "T5d": [("1", "a", 0.6, "divergence", 1), ("mixed", "offpolicy_only")],  # control: no revision round
    "T7a": [],
    "T7b": [("1", "a", 0.6, "divergence", 2)],
    "T7c": [("1", "a", 0.6, "divergence", 2), ("2", "a", 1.0, "divergence", 2)],
    "T7d": [("1", "a", 0.6, "divergence", 2), ("2", "a", 1.0, "divergence", 2), ("mixed", False)],
}


def test_every_row_is_the_papers_row(search):
    """Each row file's chain is the paper's row: stage, teacher, temperature, RS/DAS, data size, mask."""
    assert sorted(EXPECTED) == sorted(f"T{t}{c}" for t, cs in ROWS.items() for c in cs)
    for row_id, expected in EXPECTED.items():
        got = [("mixed", "offpolicy_only" if s.offpolicy_only else s.mask_student_prefix) if s.stage == "mixed" else
               (s.stage, s.teacher, s.temperature, s.sampler, s.questions) for s in _steps(row_id, search)]
        assert got == expected, row_id


def test_learning_curve_row_and_sweep(search):
    """experiments/world/curve.yaml: one stage-1 step (teacher a, T=0.6, RS) at curve_questions x the unit
    budget, its id and run name carrying the budget; sweeps/world_curve.yaml runs >= 5 budgets up to the
    world's whole question pool."""
    cfg = compose_ablate(overrides(search, None, "experiment=world/curve", "curve_questions=0.25",
                                   "paths.run_dir=/tmp/unused"))
    assert (cfg.row.id, cfg.run_name, cfg.row.table) == ("LC0.25", "LC0.25_seed1", 0)
    (step,) = parse_steps(OmegaConf.to_container(cfg.steps, resolve=True))
    assert (step.stage, step.teacher, step.temperature, step.sampler, step.questions) == ("1", "a", 0.6,
                                                                                         "random", 0.25)
    sweep = OmegaConf.load(REPO / "sweeps" / "world_curve.yaml")
    assert sweep.hydra.sweeper.params.experiment == "world/curve"  # curve_questions exists only in that row
    budgets = [float(x) for x in str(sweep.hydra.sweeper.params.curve_questions).split(",")]
    assert len(budgets) >= 5 and max(budgets) == sweep.budget.pool_questions.a


def test_world_all_runs_two_rows_side_by_side_one_thread_each():
    """sweep=world_all: Hydra's joblib launcher with two jobs at a time, one torch thread per job, seeds inner
    (so the two running jobs are other seeds of one row) and Table 7 first."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("ablate", ["sweep=world_all"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2 and int(cfg.hydra.launcher.batch_size) == 1 and cfg.threads == 1
    params = cfg.hydra.sweeper.params
    assert list(params)[-1] == "seed" and params.experiment.split(",")[:4] == [f"world/t7{c}" for c in "abcd"]
