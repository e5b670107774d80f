"""No secret is ever written: an API key planted in the environment reaches the (stand-in) server and nothing
else. generate, evaluate and a mixed-policy round with ``engine=openai`` write no byte of it to any file (manifest,
summaries, records, spec.json, .hydra/, logs, W&B offline runs); a key in the config or on the command line stops
the run before anything is written, naming the key but never showing it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from test_config import compose_cfg

from dasd.generation.openai_client import OpenAIEngine
from dasd.mixed.round import build_spec, run_round
from dasd.recipes.evaluate import evaluate
from dasd.recipes.generate import generate
from dasd.utils.secrets import RefuseSecrets, find_secrets, refuse_secrets

REPO = Path(__file__).resolve().parent.parent
KEY = f"sk-dasd-planted-{uuid.uuid4().hex}"  # distinctive: found only where it leaked
REPLY = "We add. 2 + 2 = 4.\n</think>\n\nThe answer is \\boxed{4}."


@pytest.fixture(scope="module")
def server(tokenizer):
    ids = tokenizer.encode(REPLY, add_special_tokens=False) + [tokenizer.eos_token_id]
    with FakeOpenAI(ids, REPLY) as fake:
        yield fake


@pytest.fixture
def planted(monkeypatch, tmp_path, server):
    """The key in OPENAI_API_KEY; W&B keeps every file it writes under tmp_path."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    server.auth.clear()
    return server


def leaks(root: Path, secret: str = KEY) -> list[str]:
    """Every file under ``root`` holding the secret's bytes."""
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _used(server) -> bool:
    return f"Bearer {KEY}" in server.auth


def test_generate_writes_no_key(planted, tmp_path):
    cfg = compose_cfg(["engine=openai", f"engine.base_url={planted.url}", "max_questions=2", "samples_per_question=2",
                       "sampling.max_tokens=32", "progress=false", "logger=wandb", "logger.mode=offline"],
                      tmp_path, name="generate")
    result = generate(cfg)
    assert result["samples"] == 4 and _used(planted)  # the key did reach the server
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "no W&B run was written"
    assert leaks(tmp_path) == []


def test_evaluate_writes_no_key(planted, tmp_path):
    cfg = compose_cfg(["engine=openai", f"engine.base_url={planted.url}", "task.limit=2", "k=2",
                       "task.max_tokens=32", "logger=wandb", "logger.mode=offline", "save_responses=true"],
                      tmp_path, name="evaluate")
    summary = evaluate(cfg)
    assert summary["n_samples"] == 4 and _used(planted)
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "no W&B run was written"
    assert leaks(tmp_path) == []


def _mixed_settings(tiny_path: str, engine_args: dict) -> dict:
    return {"seed": 0, "cap_factor": 1.5, "batch_size": 4, "require_finished": True, "require_correct": False,
            "student": {"engine": "hf", "engine_args": {"device": "cpu", "dtype": "float32"}, "temperature": 1.0,
                        "top_p": 1.0},
            "teacher": {"model": tiny_path, "format": "plain", "engine": "openai", "engine_args": engine_args,
                        "system_prompt": None, "chat_template_kwargs": {}, "temperature": 1.0, "top_p": 1.0,
                        "max_tokens": 64},
            "cut": {"snap_to_sentence": False, "min_chars": 3}}


def test_mixed_round_teacher_key_is_read_from_the_environment(planted, tmp_path, tiny_path, monkeypatch):
    """The teacher's engine_args name the variable; spec.json, the records, stats and logs hold no key."""
    monkeypatch.setenv("DASD_TEST_TEACHER_KEY", KEY)
    settings = _mixed_settings(tiny_path, {"base_url": planted.url, "api_key_env": "DASD_TEST_TEACHER_KEY"})
    spec = build_spec(settings, round_index=1, student_model=tiny_path, system_prompt="You are a helpful assistant.",
                      end_of_turn="auto", filters=None)
    questions = [{"uuid": f"q{i}", "input": f"What is {i} + 2?", "domain": "math", "meta": "{}", "response_tokens": 4,
                  "reference": str(i + 2)} for i in range(3)]
    stats = run_round(tmp_path / "round", questions, spec, transport="inprocess")
    assert stats["continued"] > 0 and _used(planted)
    assert '"api_key_env": "DASD_TEST_TEACHER_KEY"' in (tmp_path / "round" / "spec.json").read_text()
    assert leaks(tmp_path) == []


def test_mixed_round_refuses_a_key_in_engine_args(tiny_path):
    settings = _mixed_settings(tiny_path, {"base_url": "http://teacher:8000/v1", "api_key": KEY})
    with pytest.raises(ValueError, match=r"mixed.teacher.engine_args: api_key would hold a secret") as e:
        build_spec(settings, round_index=1, student_model=tiny_path, system_prompt=None, end_of_turn="auto",
                   filters=None)
    assert KEY not in str(e.value) and "api_key_env" in str(e.value)


def test_engine_refuses_a_literal_key_and_reads_the_named_variable(tiny_path, monkeypatch, server):
    with pytest.raises(ValueError, match="engine.api_key: a literal API key is refused") as e:
        OpenAIEngine(tiny_path, base_url=server.url, api_key=KEY)
    assert KEY not in str(e.value)
    monkeypatch.setenv("MY_TEACHER_KEY", KEY)
    assert OpenAIEngine(tiny_path, base_url=server.url, api_key_env="MY_TEACHER_KEY").client.api_key == KEY
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIEngine(tiny_path, base_url=server.url).client.api_key == "EMPTY"  # unset: no key


def test_find_secrets_names_keys_and_values():
    tree = {"engine": {"api_key_env": "X", "max_tokens": 3, "teacher_tokenizer": "t", "pad_token": "<pad>",
                       "api_key": "abc"},
            "logger": {"wandb_api_key": None, "hf_token": "hf_x"},
            "urls": ["http://h/?k=SECRETVALUE1", "ok"], "password": "",
            "paths": {"root": "${oc.env:DASD_ROOT,.}", "auth": "Bearer ${oc.env:OPENAI_API_KEY,x}"}}
    assert find_secrets(tree, ["SECRETVALUE1"]) == ["engine.api_key", "logger.hf_token", "urls[0]", "paths.auth"]


CLI_SECRETS = [("generate", "+engine.api_key=VALUE"), ("train", "+mixed.teacher.engine_args.api_key=VALUE"),
               ("evaluate", "+hydra.job.env_set.OPENAI_API_KEY=VALUE"),
               ("generate", "engine.base_url=http://teacher:8000/v1/VALUE")]


@pytest.mark.parametrize("name,override", CLI_SECRETS, ids=[o.split("=")[0] for _, o in CLI_SECRETS])
def test_hydra_callback_refuses_a_key_on_the_command_line(name, override, tmp_path, monkeypatch, capsys):
    """The callback Hydra runs before writing .hydra/: a secret-named key, or any value holding the value of a
    secret environment variable, stops the run (exit 2); the message names the key, never the value."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = compose_cfg(["engine=openai" if name != "train" else "mixed.teacher.engine=openai",
                       override.replace("VALUE", KEY)], tmp_path, hydra_cfg=True, name=name)
    with pytest.raises(SystemExit) as e:
        RefuseSecrets().on_run_start(config=cfg, config_name=name)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "would hold a secret" in err and KEY not in err


def test_shipped_configs_hold_no_secret(tmp_path, monkeypatch):
    """engine=openai and the mixed-policy teacher name variables; no shipped config carries a key."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name, overrides in (("generate", ["engine=openai"]), ("evaluate", ["engine=openai"]),
                            ("train", ["mixed.teacher.engine=openai"])):
        cfg = compose_cfg(overrides, tmp_path, hydra_cfg=True, name=name)
        RefuseSecrets().on_run_start(config=cfg, config_name=name)
        cfg = compose_cfg(overrides, tmp_path, name=name)
        refuse_secrets(cfg)  # unresolved
        from omegaconf import OmegaConf

        refuse_secrets(OmegaConf.to_container(cfg, resolve=True))  # resolved, as manifests and W&B get it


def test_cli_with_a_key_on_the_command_line_writes_nothing(tmp_path):
    """`generate.py +engine.api_key=...` exits before Hydra writes .hydra/overrides.yaml (or anything else)."""
    env = {**os.environ, "WANDB_MODE": "offline", "OPENAI_API_KEY": KEY}
    cmd = [sys.executable, str(REPO / "generate.py"), f"paths.root_dir={tmp_path}", "engine=openai",
           f"+engine.api_key={KEY}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "+engine.api_key" in proc.stderr and "would hold a secret" in proc.stderr
    assert KEY not in proc.stderr + proc.stdout
    assert not (tmp_path / "outputs").exists() and leaks(tmp_path) == []


@pytest.mark.slow  # two CLI processes (~20 s each on a busy 2-core machine)
@pytest.mark.parametrize("script", ["generate", "evaluate"])
def test_cli_runs_write_no_key(script, planted, tmp_path):
    """The real entry points with the key in the environment: .hydra/, the job log, the manifest, summaries and
    the offline W&B run (its debug logs included) hold no byte of it, and neither does the terminal output."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    size = ["max_questions=2", "samples_per_question=2", "sampling.max_tokens=32", "progress=false"] \
        if script == "generate" else ["task.limit=2", "k=2", "task.max_tokens=32"]
    cmd = [sys.executable, str(REPO / f"{script}.py"), f"paths.root_dir={tmp_path}", "engine=openai",
           f"engine.base_url={planted.url}", *size]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _used(planted) and list(tmp_path.rglob(".hydra/overrides.yaml")) and list(tmp_path.rglob("*.wandb"))
    assert leaks(tmp_path) == [] and KEY not in proc.stdout + proc.stderr


def test_in_process_train_refuses_a_key_before_writing(planted, tmp_path):
    """ablate.py and notebooks call train(cfg) without the CLI's Hydra callback: the check is in train() too."""
    from dasd.recipes.sft import train

    cfg = compose_cfg(["callbacks=mixed_policy", "logger=csv",
                       f"+mixed.teacher.engine_args.api_key={KEY}"], tmp_path / "t")
    with pytest.raises(ValueError, match="api_key") as e:
        train(cfg)
    assert KEY not in str(e.value)
    assert not leaks(tmp_path / "t") and not (tmp_path / "t" / "run").exists()
