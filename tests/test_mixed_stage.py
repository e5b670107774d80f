"""Mixed-policy plumbing around the rounds: rank 0's done/error markers and the ranks that wait for them, the
callback's use of them between epochs, the training-state offload decision, the training-config hash of the
mixed and callbacks groups, and the stage=mixed start-up (completed runs, ranks > 0, off-policy duplicates)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_record, write_jsonl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dasd.config import quote_numeric_choices, register_resolvers
from dasd.data.datamodule import iter_source_rows, source_rows
from dasd.data.records import iter_jsonl
from dasd.mixed import callback as callback_mod
from dasd.mixed.callback import MixedPolicyRevision
from dasd.mixed.round import build_spec
from dasd.models.student import asset_path
from dasd.recipes import mixed_stage as stage_mod
from dasd.recipes.stage import stage_settings
from dasd.training.offload import offload_plan
from dasd.training.stages import NON_TRAINING_KEYS, plan_stage, training_config_hash
from dasd.training.strategy import zero3_config
from dasd.utils.ranks import env_rank_zero
from dasd.utils.sync import RankZeroWork, launch_id

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


def compose_cfg(tmp_path: Path, *overrides: str):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=quote_numeric_choices(
            [*overrides, f"paths.root_dir={tmp_path}", f"paths.run_dir={tmp_path}/run"]))


def config_hash(tmp_path: Path, *overrides: str) -> str:
    return training_config_hash(OmegaConf.to_container(compose_cfg(tmp_path, *overrides), resolve=True))


def later(seconds: float, fn) -> threading.Thread:
    def run():
        time.sleep(seconds)
        fn()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- rank 0's markers


def test_wait_returns_once_rank_zero_marks_the_work_done(tmp_path):
    work = RankZeroWork(tmp_path / "round_1", "round")
    t0 = time.monotonic()
    thread = later(0.3, lambda: work.finish("k1", kept=3))
    assert work.wait("k1", poll_s=0.02, timeout_s=30)["kept"] == 3
    assert time.monotonic() - t0 >= 0.3  # it waited for the marker, not for a collective
    thread.join()


def test_wait_raises_rank_zeros_error(tmp_path):
    work = RankZeroWork(tmp_path, "round", what="mixed-policy round 1")
    later(0.2, lambda: work.fail(ValueError("the teacher died"), "k1"))
    with pytest.raises(RuntimeError, match="mixed-policy round 1 failed on rank 0.*ValueError: the teacher died"):
        work.wait("k1", poll_s=0.02, timeout_s=30)


def test_signal_clears_stale_markers_and_marks_the_outcome(tmp_path):
    work = RankZeroWork(tmp_path, "prepared")
    work.finish("k")
    work.fail(RuntimeError("old failure"), "k")
    with work.signal("k"):  # rank 0 clears stale markers before it works
        assert not work.done_path.exists() and not work.error_path.exists()
    assert work.wait("k", timeout_s=1)["key"] == "k"
    with pytest.raises(KeyError), work.signal("k"):
        raise KeyError("boom")
    assert json.loads(work.error_path.read_text())["key"] == "k" and not work.done_path.exists()


# Two launches of one stage=mixed run with the same config (the second after the first failed), as the
# external launchers start them: every rank at once, each with its rank variables (``ranks``) on top of the
# launch's.
TORCHRUN = {"TORCHELASTIC_RUN_ID": "3f2a", "TORCHELASTIC_RESTART_COUNT": "0", "MASTER_ADDR": "node1",
            "MASTER_PORT": "29500"}
SRUN = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2"}
RELAUNCHES = {
    "torchrun": (TORCHRUN, {**TORCHRUN, "TORCHELASTIC_RUN_ID": "9c1d", "MASTER_PORT": "41877"}),
    "torchrun, elastic restart": (TORCHRUN, {**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "1"}),
    "srun": (SRUN, {**SRUN, "SLURM_JOB_ID": "4243"}),
    "srun, next step of the job": (SRUN, {**SRUN, "SLURM_STEP_ID": "1"}),
    "srun, requeued job": (SRUN, {**SRUN, "SLURM_RESTART_COUNT": "1"}),
    "torchrun under srun, same run id": ({**SRUN, **TORCHRUN}, {**SRUN, **TORCHRUN, "SLURM_STEP_ID": "1"}),
}


def ranks(launch: dict, rank: int) -> dict:
    if "TORCHELASTIC_RUN_ID" in launch:  # under srun: one torchrun per node, its SLURM_PROCID the node's
        return {**launch, "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0",
                **({"SLURM_PROCID": "0"} if "SLURM_JOB_ID" in launch else {})}
    return {**launch, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}


def stage_mixed(tmp_path):
    """A stage=mixed config and the key ``train`` gives its markers (``plan.config_hash``)."""
    cfg = compose_cfg(tmp_path, "stage=mixed", f"stage.init_from={asset_path('tiny_qwen3')}")
    return cfg, plan_stage(stage_settings(stage_mod.mixed_training_config(cfg))).config_hash


@pytest.mark.parametrize("stale", ["error", "done"])
@pytest.mark.parametrize("previous, relaunch", RELAUNCHES.values(), ids=RELAUNCHES)
def test_a_relaunch_ignores_the_previous_launchs_markers(tmp_path, monkeypatch, previous, relaunch, stale):
    """The same config gives the same key (the training config hash). The previous attempt's error marker (its
    round ran out of memory) or done marker (its training did) is still there when the relaunch's rank 1
    looks, before its rank 0 clears it: rank 1 must neither raise it nor take it, but wait for its own rank 0.
    The ranks of one launch do take their rank 0's markers."""
    cfg, key = stage_mixed(tmp_path)
    fast_polls(monkeypatch)
    attempts = []

    def prepare(cfg):
        attempts.append(time.monotonic())
        if stale == "error" and len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return {"kept": len(attempts)}

    monkeypatch.setattr(stage_mod, "_prepare", prepare)
    assert launch_id(ranks(previous, 0)) != launch_id(ranks(relaunch, 0))
    # the previous launch: rank 0 fails or finishes, and its rank 1 takes that marker at once
    if stale == "error":
        with pytest.raises(torch.OutOfMemoryError):
            stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(previous, 0))
        with pytest.raises(RuntimeError, match="stage=mixed round 0 failed on rank 0.*CUDA out of memory"):
            stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(previous, 1))
    else:
        assert stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(previous, 0)) == {"kept": 1}
        assert stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(previous, 1)) is None
    assert (Path(cfg.paths.run_dir) / "mixed" / f"prepared.{stale}.json").is_file()
    # the relaunch: rank 1 looks first (the stale marker is there) and returns after its rank 0 is done
    rank_zero = later(0.3, lambda: stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(relaunch, 0)))
    assert stage_mod.prepare_mixed_stage(cfg, key=key, env=ranks(relaunch, 1)) is None
    returned = time.monotonic()
    rank_zero.join()
    assert len(attempts) == 2 and returned >= attempts[1]
    done = json.loads((Path(cfg.paths.run_dir) / "mixed" / "prepared.done.json").read_text())
    assert done["key"] == key and done["launch"] == launch_id(ranks(relaunch, 1))


@pytest.mark.parametrize("salloc", [False, True])
def test_lightnings_launcher_starts_ranks_that_take_rank_zeros_markers(tmp_path, monkeypatch, salloc):
    """``python train.py trainer.devices=3`` (in an salloc shell or not): rank 0 builds the data, then
    Lightning's launcher starts ranks 1 and 2 with its environment; they must take rank 0's marker (else they
    would wait forever), and later its round markers too, when rank 0 has exported MASTER_PORT & co."""
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers import subprocess_script

    for k in ["MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
              *[k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]]:
        monkeypatch.setenv(k, "0")  # restored after the test, although Lightning sets them again below
        monkeypatch.delenv(k)
    if salloc:
        for k, v in {"SLURM_JOB_ID": "77", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "interactive"}.items():
            monkeypatch.setenv(k, v)
    cfg, key = stage_mixed(tmp_path)
    monkeypatch.setattr(stage_mod, "_prepare", lambda cfg: {"kept": 1})
    wait = RankZeroWork.wait
    monkeypatch.setattr(RankZeroWork, "wait",
                        lambda self, key=None, **kw: wait(self, key, poll_s=0.02, timeout_s=2))
    launch = launch_id()
    assert stage_mod.prepare_mixed_stage(cfg, key=key) == {"kept": 1}
    children = []
    monkeypatch.setattr(subprocess_script.subprocess, "Popen", lambda cmd, env, cwd: children.append(env))
    subprocess_script._SubprocessScriptLauncher(LightningEnvironment(), num_processes=3,
                                                num_nodes=1)._call_children_scripts()
    assert len(children) == 2 and os.environ["MASTER_PORT"] and launch_id() == launch
    assert (launch is not None) is salloc
    for env in children:
        assert not env_rank_zero(env) and launch_id(env) == launch
        assert stage_mod.prepare_mixed_stage(cfg, key=key, env=env) is None


@pytest.mark.parametrize("env, zero", [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "3"}, False),
    ({"LOCAL_RANK": "1", "SLURM_PROCID": "0"}, False),  # a child of Lightning's launcher inside an salloc shell
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"SLURM_PROCID": "5"}, False), ({"SLURM_PROCID": "0"}, True),
])
def test_rank_zero_from_the_environment(env, zero):
    assert env_rank_zero(env) is zero


# ---------------------------------------------------------------- the callback between epochs


class Strategy:
    handles_gradient_accumulation = False

    def __init__(self, log: list) -> None:
        self.log = log

    def barrier(self, name: str) -> None:
        self.log.append(("barrier", name, time.monotonic()))


def epoch_end(tmp_path, monkeypatch, zero: bool, revise):
    """on_train_epoch_end of epoch 0 of 2 on one rank, with the data side stubbed out."""
    log: list = []
    cb = MixedPolicyRevision(SimpleNamespace(), tmp_path, tmp_path / "hf", {"offload_training_state": True},
                             None, None)
    monkeypatch.setattr(cb, "_revise", revise)
    monkeypatch.setattr(cb, "_add", lambda k: log.append(("add", k, time.monotonic())))
    monkeypatch.setattr(cb, "_stretch", lambda trainer: None)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=2, global_step=7, is_global_zero=zero,
                              strategy=Strategy(log), loggers=[])
    module = SimpleNamespace(device=torch.device("cpu"))
    cb.on_train_epoch_end(trainer, module)
    return cb, log


def fast_polls(monkeypatch) -> None:
    wait = RankZeroWork.wait
    monkeypatch.setattr(RankZeroWork, "wait", lambda self, key=None, **kw: wait(self, key, poll_s=0.02, timeout_s=30))


def test_other_ranks_wait_for_the_round_marker_then_meet_at_a_barrier(tmp_path, monkeypatch):
    fast_polls(monkeypatch)
    work = RankZeroWork(tmp_path / "mixed" / "round_1", "round")
    written = {}
    later(0.3, lambda: (work.finish("round 1 at step 7"), written.setdefault("at", time.monotonic())))

    def revise(k, weights):
        raise AssertionError("only rank 0 runs the round")

    _, log = epoch_end(tmp_path, monkeypatch, zero=False, revise=revise)
    assert [x[1] for x in log] == ["mixed_policy_start", "mixed_policy_round", 1]  # barrier, wait, barrier, add
    assert log[1][2] >= written["at"]  # the closing barrier only after rank 0's marker


@pytest.mark.parametrize("stale", ["error", "done"])
def test_a_resumed_relaunch_takes_no_marker_of_an_earlier_attempt_at_its_round(tmp_path, monkeypatch, stale):
    """A relaunch resumed from the checkpoint before round 1 reaches the same key (round 1 at step 7). Rank 0
    removes the previous attempt's markers before the barrier that the other ranks pass before they look (the
    protection under any launcher), and under torchrun rank 1 would not take them anyway (another launch)."""
    folder = tmp_path / "mixed" / "round_1"
    previous, relaunch = RELAUNCHES["torchrun"]
    stale_work = RankZeroWork(folder, "round", env=ranks(previous, 0))
    key = "round 1 at step 7"
    write_stale = {"error": lambda: stale_work.fail(RuntimeError("teacher out of memory"), key),
                   "done": lambda: stale_work.finish(key)}[stale]
    write_stale()
    seen = []
    def barrier(self, name):
        self.log.append(("barrier", name, time.monotonic()))
        seen.append((name, sorted(os.listdir(folder))))

    monkeypatch.setattr(Strategy, "barrier", barrier)
    monkeypatch.setattr(callback_mod, "log_round", lambda *a, **k: None)
    for k, v in ranks(relaunch, 0).items():
        monkeypatch.setenv(k, v)
    epoch_end(tmp_path, monkeypatch, zero=True, revise=lambda k, weights: {"round": k})
    assert seen[0] == ("mixed_policy_start", [])  # gone before the first barrier
    stale_work.clear()
    write_stale()
    for k, v in ranks(relaunch, 1).items():
        monkeypatch.setenv(k, v)
    fast_polls(monkeypatch)
    own = RankZeroWork(folder, "round", env=ranks(relaunch, 0))
    written = {}
    later(0.3, lambda: (own.clear(), own.finish(key), written.setdefault("at", time.monotonic())))
    _, log = epoch_end(tmp_path, monkeypatch, zero=False, revise=None)
    assert [x[1] for x in log] == ["mixed_policy_start", "mixed_policy_round", 1]
    assert log[1][2] >= written["at"]  # rank 1 waited for the relaunch's rank 0


def test_rank_zero_marks_its_round_failed(tmp_path, monkeypatch):
    def revise(k, weights):
        raise RuntimeError("teacher out of memory")

    with pytest.raises(RuntimeError, match="teacher out of memory"):
        epoch_end(tmp_path, monkeypatch, zero=True, revise=revise)
    error = json.loads((tmp_path / "mixed" / "round_1" / "round.error.json").read_text())
    assert error["key"] == "round 1 at step 7" and "teacher out of memory" in error["error"]


def test_rank_zero_marks_its_round_done(tmp_path, monkeypatch):
    monkeypatch.setattr(callback_mod, "log_round", lambda *a, **k: None)
    _, log = epoch_end(tmp_path, monkeypatch, zero=True, revise=lambda k, weights: {"round": k})
    assert [x[1] for x in log] == ["mixed_policy_start", "mixed_policy_round", 1]
    assert json.loads((tmp_path / "mixed" / "round_1" / "round.done.json").read_text())["key"] == "round 1 at step 7"


# ---------------------------------------------------------------- offloading the training state for a round


def ds(stage: int, config: dict | None):
    return SimpleNamespace(deepspeed_engine=SimpleNamespace(zero_optimization_stage=lambda: stage), config=config)


@pytest.mark.parametrize("offload, plan", [(False, "deepspeed"), ("optimizer", "already_offloaded"),
                                           ("all", "already_offloaded")])
def test_offload_plan_under_zero3(offload, plan):
    """DeepSpeed's offload_states refuses states the ZeRO config already offloads: skipped then."""
    assert offload_plan(ds(3, zero3_config(64, offload=offload)), module_on_cuda=True) == plan
    only_params = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    assert offload_plan(ds(3, only_params), module_on_cuda=True) == "already_offloaded"
    assert offload_plan(ds(3, {"zero_optimization": {"offload_optimizer": {"device": "none"}}}), True) == "deepspeed"


def test_offload_plan_elsewhere():
    assert offload_plan(ds(3, zero3_config(64, offload="all")), module_on_cuda=False) == "none"
    assert offload_plan(ds(2, {}), module_on_cuda=True) == "module"
    assert offload_plan("ddp", module_on_cuda=True) == "module"


# ---------------------------------------------------------------- the training-config hash


def test_mixed_settings_enter_the_hash_only_where_they_act(tmp_path):
    base = config_hash(tmp_path)
    assert config_hash(tmp_path, "mixed.n_questions=7", "mixed.teacher.max_tokens=9", "callbacks=none") == base
    revised = config_hash(tmp_path, "callbacks=mixed_policy")
    assert revised != base
    assert config_hash(tmp_path, "callbacks=mixed_policy", "mixed.n_questions=7") != revised
    assert config_hash(tmp_path, "stage=mixed", "mixed.n_questions=7") != config_hash(tmp_path, "stage=mixed")
    assert config_hash(tmp_path, "mixed.mask_student_prefix=true") != base  # changes the loss of mixed records


# a changed value of each ``mixed.*`` key a resume may change (the training hash's NON_TRAINING_KEYS)
RESUMABLE_MIXED = {"mixed.batch_size": "8", "mixed.transport": "inprocess",
                   "mixed.python": "/usr/bin/python3", "mixed.offload_training_state": "false"}


@pytest.mark.parametrize("key", RESUMABLE_MIXED)
def test_what_a_resume_may_change_keeps_round_0(tmp_path, key):
    """A resumed stage=mixed run may change the keys the training hash ignores; then round 0's spec hash must
    not change either, or the resume would rerun round 0 and continue last.ckpt on other data (other record
    uuids)."""
    assert set(RESUMABLE_MIXED) == {k for k in NON_TRAINING_KEYS if k.startswith("mixed.")}

    def hashes(*overrides):
        cfg = compose_cfg(tmp_path, "stage=mixed", f"stage.init_from={asset_path('tiny_qwen3')}", *overrides)
        plain = OmegaConf.to_container(stage_mod.mixed_training_config(cfg), resolve=True)
        spec = build_spec(OmegaConf.to_container(cfg.mixed, resolve=True), round_index=0,
                          student_model=asset_path("tiny_qwen3"), system_prompt=cfg.data.system_prompt,
                          end_of_turn=cfg.data.end_of_turn, cutoff_len=cfg.data.cutoff_len,
                          filters=OmegaConf.to_container(cfg.filters, resolve=True))
        trained = training_config_hash(plain)
        return trained, spec.hash()

    assert hashes(f"{key}={RESUMABLE_MIXED[key]}") == hashes()
    changed, base = hashes("mixed.cap_factor=2.0"), hashes()  # what the round does counts on both sides
    assert changed[0] != base[0] and changed[1] != base[1]


def test_a_stage_config_from_before_the_mixed_groups_keeps_its_hash(tmp_path):
    for stage in ("1", "2"):
        config = OmegaConf.to_container(compose_cfg(tmp_path, f"stage={stage}"), resolve=True)
        old = json.loads(json.dumps(config))
        for key in ("mixed", "callbacks"):
            del old[key]
        del old["stage"]["epochs"], old["data"]["teacher_chat_template_kwargs"]
        assert training_config_hash(old) == training_config_hash(config)


# ---------------------------------------------------------------- stage=mixed start-up


def test_keep_all_sampler_is_conf_sampler_all():
    assert stage_mod.keep_all_sampler() == OmegaConf.to_container(OmegaConf.load(CONF / "sampler" / "all.yaml"))
    assert type(instantiate(stage_mod.keep_all_sampler())).__name__ == "KeepAllSelector"


def _no_rebuild(*args, **kwargs):
    raise AssertionError("the parents' data must not be rebuilt")


def test_completed_stage_mixed_returns_before_its_round(tmp_path, monkeypatch):
    from dasd.recipes.sft import train

    cfg = compose_cfg(tmp_path, "stage=mixed", "logger=csv")
    run = Path(cfg.paths.run_dir)
    run.mkdir(parents=True)
    trained = OmegaConf.to_container(stage_mod.mixed_training_config(cfg), resolve=True)
    (run / "manifest.json").write_text(json.dumps({"status": "completed", "config_hash": training_config_hash(trained),
                                                   "final_metrics": {"train/loss": 0.5}}))
    monkeypatch.setattr(stage_mod, "prepare_mixed_stage", _no_rebuild)
    monkeypatch.setattr(stage_mod, "parent_selection", _no_rebuild)
    assert train(cfg) == {"train/loss": 0.5}


def test_other_ranks_wait_for_stage_mixed_data(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, "stage=mixed")
    monkeypatch.setattr(stage_mod, "parent_selection", _no_rebuild)
    monkeypatch.setenv("LOCAL_RANK", "1")
    work = RankZeroWork(Path(cfg.paths.run_dir) / "mixed", "prepared")
    work.finish("stale")
    later(0.3, lambda: work.finish("run-key"))
    fast_polls(monkeypatch)
    t0 = time.monotonic()
    assert stage_mod.prepare_mixed_stage(cfg, key="run-key") is None
    assert time.monotonic() - t0 >= 0.3
    later(0.1, lambda: work.fail(ValueError("no stage-2 checkpoint"), "run-key2"))
    with pytest.raises(RuntimeError, match="stage=mixed round 0 failed on rank 0.*no stage-2 checkpoint"):
        stage_mod.prepare_mixed_stage(cfg, key="run-key2")


def test_offpolicy_records_are_unique_and_verbatim(tmp_path, monkeypatch):
    """One file behind both parent runs: each selected record is in both selections; train.jsonl holds it once
    and composition.json counts the duplicates."""
    rows = [make_record(i) for i in range(6)]
    data = write_jsonl(tmp_path / "pool.jsonl", rows)
    selection = [{"uuid": r["uuid"], "input": r["input"], "source": f"{data}:{i + 1}", "response_tokens": 20,
                  "domain": "math", "meta": r["meta"]} for i, r in enumerate(rows)]
    pool = [{**r, "run": "stage1"} for r in selection] + [{**r, "run": "stage2"} for r in selection]
    monkeypatch.setattr(stage_mod, "parent_selection", lambda cfg, tok: pool)

    def fake_round(folder, questions, spec, **kw):
        assert len({q["uuid"] for q in questions}) == len(questions)  # no question revised twice
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mixed.jsonl").write_text("")
        return {"round": 0, "kept": 0, "per_question": [], "cut_fractions": {"raw": [], "final": []}}

    monkeypatch.setattr(stage_mod, "run_round", fake_round)
    cfg = compose_cfg(tmp_path, "stage=mixed", f"stage.init_from={asset_path('tiny_qwen3')}",
                      "mixed.extra_offpolicy=100", "mixed.n_questions=4")
    stats = stage_mod.prepare_mixed_stage(cfg, rank_zero=True)
    train = [json.loads(x) for x in (Path(cfg.paths.run_dir) / "mixed" / "train.jsonl").read_text().splitlines()]
    assert train == rows  # each once, verbatim, in pool order
    composition = json.loads((Path(cfg.paths.run_dir) / "mixed" / "composition.json").read_text())
    assert composition["pool_duplicates_dropped"] == 6 and composition["off_policy"] == 6
    assert composition["questions_pool"] == 6 and composition == stats["composition"]
    assert "per_question" not in stage_mod.round_summary(stats)


def test_source_rows_count_lines_as_the_readers_do(tmp_path):
    """A raw carriage return (JSON whitespace) or a U+2028 inside a line starts no new line."""
    rows = [make_record(i) for i in range(4)]
    lines = [json.dumps(r) for r in rows]
    lines[0] = lines[0].replace(", ", ",\r ", 1)
    lines[1] = json.dumps({**rows[1], "input": "a\u2028b"}, ensure_ascii=False)
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    report = SimpleNamespace(read=0, kept=0, skip=None, sha256="")
    sources = list(iter_jsonl(path, lambda obj, p, n: f"{p}:{n}", "raise", report))
    assert sources == [f"{path}:{n}" for n in range(1, 5)]
    got = source_rows(sources[::-1])
    assert [r["uuid"] for r in got] == [r["uuid"] for r in rows[::-1]] and got[2]["input"] == "a\u2028b"
    with pytest.raises(ValueError, match="not found at their source lines"):
        list(iter_source_rows([f"{path}:9"]))
