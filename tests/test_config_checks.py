"""Bad config values stop train.py, generate.py and evaluate.py before any work: one line per problem naming the
key, the value and what is expected, exit status 2, no traceback, nothing written (dasd.config_checks)."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from test_config import compose_cfg

from dasd.config_checks import CHECKS, ConfigError

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
# Inputs the user supplies (downloaded data, benchmark files): a shipped preset may name one that is not there yet.
USER_FILES = ("data.path", "task.path")


def compose_app(app: str, overrides: list[str], root: Path):
    return compose_cfg(overrides, root, name=app)


@functools.cache
def _composed(app: str, groups: tuple[str, ...], root: Path):
    return compose_app(app, list(groups), root)


def configured(app: str, overrides: list[str], root: Path):
    """``compose_app``, faster: the group choices are composed once; ``key=value`` overrides (parsed by Hydra's
    own grammar, as on the command line) are set on a copy."""
    parsed = [OverridesParser.create().parse_override(o) for o in overrides]
    groups = tuple(o for o, p in zip(overrides, parsed, strict=True) if (CONF / p.key_or_group).is_dir())
    cfg = copy.deepcopy(_composed(app, groups, root))
    for p in parsed:
        if not (CONF / p.key_or_group).is_dir():
            OmegaConf.update(cfg, p.key_or_group, p.value(), merge=False)
    return cfg


def problems(app: str, overrides: list[str], root: Path, fast: bool = True) -> list:
    try:
        CHECKS[app]((configured if fast else compose_app)(app, overrides, root))
    except ConfigError as e:
        return e.problems
    return []


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("root")


# (app, overrides, the key named, the value shown); the four cases first
BAD = [
    ("train", ["optim.lr=abc"], "optim.lr", "'abc'"),
    ("train", ["data.path=/nonexistent.jsonl"], "data.path", "'/nonexistent.jsonl'"),
    ("train", ["student.name_or_path=/nonexistent"], "student.name_or_path", "'/nonexistent'"),
    ("train", ["train.epochs=-1"], "train.epochs", "-1"),
    ("train", ["train.nonfinite=ignore"], "train.nonfinite", "'ignore'"),
    ("train", ["data.temperature_check=maybe"], "data.temperature_check", "'maybe'"),
    ("generate", ["sampling.top_k=-1"], "sampling.top_k", "-1"),
    ("train", ["stage.epochs=0"], "stage.epochs", "0"),  # train.epochs=${stage.epochs} is not named twice
    ("train", ["optim.min_lr=0.01"], "optim.min_lr", "0.01"),  # above optim.lr (tiny: 1e-3)
    ("train", ["optim.weight_decay=-0.1"], "optim.weight_decay", "-0.1"),
    ("train", ["optim.warmup_ratio=1.5"], "optim.warmup_ratio", "1.5"),
    ("train", ["optim.betas=[0.9,1.0]"], "optim.betas[1]", "1.0"),
    ("train", ["optim.max_grad_norm=-1"], "optim.max_grad_norm", "-1"),
    ("train", ["optim.lr=inf"], "optim.lr", "inf"),
    ("train", ["train.micro_batch_size=0"], "train.micro_batch_size", "0"),
    ("train", ["train.accumulate=2.5"], "train.accumulate", "2.5"),
    ("train", ["train.save_every_n_steps=-5"], "train.save_every_n_steps", "-5"),
    ("train", ["train.keep_hf_checkpoints=0"], "train.keep_hf_checkpoints", "0"),
    ("train", ["data.cutoff_len=0"], "data.cutoff_len", "0"),
    ("train", ["data.on_error=ignore"], "data.on_error", "'ignore'"),
    ("train", ["data.format=jsonl"], "data.format", "'jsonl'"),
    ("train", ["seed=-1"], "seed", "-1"),  # sampler.seed=${seed} is not named twice
    ("train", ["seed=abc"], "seed", "'abc'"),
    ("train", ["resume=sometimes"], "resume", "'sometimes'"),
    ("train", ["sampler=divergence", "sampler.beta=high"], "sampler.beta", "'high'"),
    ("train", ["logger=wandb", "logger.mode=loud"], "logger.mode", "'loud'"),
    ("train", ["trainer.precision=bf17"], "trainer.precision", "'bf17'"),
    ("train", ["trainer.devices=0"], "trainer.devices", "0"),
    ("train", ["student.name_or_path=runs/exp/final"], "student.name_or_path", "'runs/exp/final'"),
    ("train", ["stage.init_from=./nope"], "stage.init_from", "'./nope'"),
    ("train", ["data.path=${oc.env:DASD_NO_SUCH_VAR}"], "data.path", "'${oc.env:DASD_NO_SUCH_VAR}'"),
    ("generate", ["samples_per_question=0"], "samples_per_question", "0"),
    ("generate", ["temperature=warm"], "temperature", "'warm'"),  # sampling.temperature is not named twice
    ("generate", ["sampling.top_p=0"], "sampling.top_p", "0"),
    ("generate", ["sampling.top_p=1.5"], "sampling.top_p", "1.5"),
    ("generate", ["sampling.max_tokens=0"], "sampling.max_tokens", "0"),
    ("generate", ["questions=/nonexistent.jsonl"], "questions", "'/nonexistent.jsonl'"),
    ("generate", ["shard.index=2", "shard.count=2"], "shard.index", "2"),
    ("generate", ["teacher.name_or_path=/nonexistent"], "teacher.name_or_path", "'/nonexistent'"),
    ("evaluate", ["k=0"], "k", "0"),
    ("evaluate", ["task.k=0"], "task.k", "0"),  # k=${task.k} is not named twice
    ("evaluate", ["model=/nonexistent"], "model", "'/nonexistent'"),
    ("evaluate", ["task.path=/nonexistent.jsonl"], "task.path", "'/nonexistent.jsonl'"),
    ("evaluate", ["bootstrap=0"], "bootstrap", "0"),
]


@pytest.mark.parametrize("app,overrides,key,value", BAD, ids=[" ".join(c[1]) for c in BAD])
def test_bad_value_is_one_line_naming_key_value_and_expectation(app, overrides, key, value, root):
    found = problems(app, overrides, root)
    assert [p.key for p in found] == [key], [str(p) for p in found]
    line = str(found[0])
    assert "\n" not in line and line.startswith(f"config error: {key}={value}: ")
    assert any(w in line for w in ("should be", "no such", "does not resolve")), line


def test_several_bad_values_are_all_named(root):
    found = problems("train", ["optim.lr=abc", "data.on_error=ignore", "train.accumulate=0"], root, fast=False)
    assert sorted(p.key for p in found) == ["data.on_error", "optim.lr", "train.accumulate"]


def _shipped_options() -> list[tuple[str, str]]:
    """Every (app, option) the configs ship: each group option (with its app) and each experiment. Not the
    sweeps (they set only ``hydra.sweeper.params``), ``hydra`` or ``world`` (ablate.py's own group)."""
    apps = {"teacher": "generate", "engine": "generate", "task": "evaluate"}
    out = []
    for group in sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "world", "sweep")):
        for f in sorted((CONF / group).glob("*.yaml")):
            out.append((apps.get(group, "train"), f"{group}={f.stem}"))
    return out + [("generate", ""), ("evaluate", ""), ("train", "")]


@pytest.mark.parametrize("app,option", _shipped_options(), ids=[f"{a}:{o}" for a, o in _shipped_options()])
def test_every_shipped_config_passes(app, option, root):
    """The schema accepts every shipped option and experiment; a preset may only miss an input file the user
    downloads (the released SFT data, a benchmark)."""
    found = problems(app, [option] if option else [], root)
    assert all(p.key in USER_FILES and "no such file" in p.why for p in found), [str(p) for p in found]


def test_stage_mixed_does_not_need_its_training_file_yet(root):
    """stage=mixed trains on mixed/train.jsonl, which its revision round writes: data.path is not checked."""
    assert problems("train", ["stage=mixed", "data.path=/not/yet.jsonl"], root) == []


def test_hub_ids_and_served_models(root, tmp_path, monkeypatch):
    """A hub id passes (it may be downloaded); offline, one not in the cache does not; with engine=openai the
    model is a name on the server."""
    assert problems("train", ["student.name_or_path=Qwen/Qwen3-4B-Instruct-2507"], root) == []
    import huggingface_hub

    monkeypatch.setattr(sys.modules[huggingface_hub.is_offline_mode.__module__], "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    found = problems("train", ["student.name_or_path=dasd-test/not-cached"], root)
    assert [p.key for p in found] == ["student.name_or_path"] and "Hugging Face cache" in found[0].why
    assert problems("evaluate", ["engine=openai", "model=my-served-model"], root) == []
    assert problems("generate", ["engine=openai", "teacher.name_or_path=/served/name"], root) == []


def test_value_sets_equal_their_owners():
    """The schema restates value sets of modules too slow to import before the check; they must not drift."""
    from lightning.fabric.plugins.precision import precision as lightning_precision

    from dasd import config_schema as s
    from dasd.das.selector import RULES
    from dasd.data.records import ON_ERROR
    from dasd.eval.tasks import TASKS
    from dasd.generation.engine import LOGPROB_MODES
    from dasd.generation.registry import ENGINES
    from dasd.utils.wandb import WANDB_MODES

    lightning = [v for part in get_args(lightning_precision._PRECISION_INPUT) for v in get_args(part)]
    assert sorted(map(str, s.PRECISIONS)) == sorted(map(str, lightning))
    assert (s.ON_ERROR, s.TASKS, s.LOGPROB_MODES, s.DAS_RULES, s.WANDB_MODES) == (
        tuple(ON_ERROR), tuple(TASKS), tuple(LOGPROB_MODES), tuple(RULES), tuple(WANDB_MODES))
    assert sorted(s.ENGINES) == sorted(ENGINES)
    from dasd.data.datamodule import TEMPERATURE_CHECKS
    from dasd.training.nonfinite import MODES

    fields = s.TrainConfig.model_fields
    assert get_args(s.Train.model_fields["nonfinite"].annotation) == MODES
    assert get_args(s.Data.model_fields["temperature_check"].annotation) == TEMPERATURE_CHECKS
    assert "train" in fields and "data" in fields


def test_train_refuses_before_writing(tmp_path):
    """In-process (a multirun job, ablate.py, a notebook): train() raises ConfigError before its first file."""
    from dasd.recipes.sft import train

    cfg = compose_app("train", ["optim.lr=abc", "logger=csv"], tmp_path)
    with pytest.raises(ConfigError, match=r"optim.lr='abc'"):
        train(cfg)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def _cli(script: str, root: Path, *overrides: str, flags: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess,
                                                                                          float]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / script), *flags, f"paths.root_dir={root}", *overrides],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("script,override,line", [
    ("train.py", "optim.lr=abc", "config error: optim.lr='abc': should be a valid number"),
    ("generate.py", "samples_per_question=0", "config error: samples_per_question=0: should be greater than"),
    ("evaluate.py", "model=/nonexistent", "config error: model='/nonexistent': no such directory"),
])
def test_cli_stops_at_once_and_writes_nothing(script, override, line, tmp_path):
    """The CLI: exit status 2, one line, no traceback (even with HYDRA_FULL_ERROR=1), in seconds (before torch
    is imported), and no file at all: Hydra's callback runs before Hydra creates the run dir."""
    proc, seconds = _cli(script, tmp_path, override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().startswith(line) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []
    assert seconds < 30, seconds  # ~2 s on an idle machine; a generous bound for a busy CI box


@pytest.mark.slow
def test_multirun_job_stops_before_its_first_file(tmp_path):
    """-m: Hydra makes the sweep and job folders (.hydra/, the job log) before the job runs; train() then
    stops the job with the same line, before any manifest, metric or checkpoint."""
    proc, _ = _cli("train.py", tmp_path, "optim.lr=abc", "logger=csv", flags=("-m",))
    assert proc.returncode == 2 and "config error: optim.lr='abc'" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    names = {p.name for p in (tmp_path / "outputs").rglob("*")}
    assert not names & {"manifest.json", "metrics.jsonl", "checkpoints", "wandb", "csv", "data_report.json"}, names


def test_resume_takes_a_checkpoint_file_or_a_deepspeed_checkpoint_directory(tmp_path):
    """Under DeepSpeed Lightning saves a checkpoint as a directory: resume=<that dir> is valid; any other
    directory is not."""
    ds = tmp_path / "epoch=0-step=4.ckpt"
    (ds / "checkpoint").mkdir(parents=True)
    (ds / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert problems("train", [f"resume='{ds}'"], tmp_path) == []
    assert problems("train", [f"resume={tmp_path / 'last.ckpt'}"], tmp_path) == []
    found = problems("train", [f"resume={tmp_path}"], tmp_path)
    assert [p.key for p in found] == ["resume"] and "not a DeepSpeed checkpoint directory" in found[0].why


def test_every_engine_config_is_the_registrys():
    """conf/engine/<name>.yaml builds the engine the registry names (the mixed round and DAS scoring build
    theirs from the registry): one table of engines."""
    from dasd.generation.registry import ENGINE_TARGETS

    conf = Path(__file__).resolve().parent.parent / "conf" / "engine"
    assert sorted(p.stem for p in conf.glob("*.yaml")) == sorted(ENGINE_TARGETS)
    for name, target in ENGINE_TARGETS.items():
        assert OmegaConf.load(conf / f"{name}.yaml")["_target_"] == target
