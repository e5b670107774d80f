"""Callbacks and loggers from the config (dasd.recipes.components): any Lightning callback or a second logger
is added from YAML or the command line, dasd's own get the run's values by parameter name, the built-in
order is kept, bad entries fail early, and only the mixed-policy settings reach the training hash."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import OmegaConf
from test_config import compose_cfg

from dasd.config_checks import ConfigError, check_train
from dasd.eval.callback import EvaluateAtEnd
from dasd.mixed.callback import MixedPolicyRevision
from dasd.recipes import sft
from dasd.recipes.components import instantiate_entries
from dasd.recipes.stage import stage_settings
from dasd.training.callbacks import HFCheckpoint, MetricsFile, ResumeCheckpoint, RunIdentity
from dasd.training.stages import plan_stage, training_config_hash

QUICK = ["debug=fast", "data.max_samples=8", "trainer.enable_progress_bar=false"]


def _hash(tmp_path: Path, *overrides: str) -> str:
    return training_config_hash(OmegaConf.to_container(compose_cfg(list(overrides), tmp_path), resolve=True))


def test_callbacks_keep_their_order_and_get_the_runs_values(tmp_path, tokenizer, tiny_path):
    """Built-ins first, then the callbacks group's entries (mixed_policy: right after HFCheckpoint, whose
    epoch export it revises), then the evaluation at the end and the progress bar: the order of before."""
    cfg = compose_cfg(["stage=2", f"stage.init_from={tiny_path}", "callbacks=mixed_policy", "eval=default", "logger=none",
                       "trainer.enable_progress_bar=true"], tmp_path)
    plan = plan_stage(stage_settings(cfg))
    dm = object()
    callbacks = sft._callbacks(cfg, plan, tokenizer, dm)
    assert [type(c) for c in callbacks] == [ResumeCheckpoint, HFCheckpoint, MetricsFile, RunIdentity,
                                            MixedPolicyRevision, EvaluateAtEnd, TQDMProgressBar]
    revision = callbacks[4]
    assert revision.dm is dm and revision.run_dir == plan.run_dir and revision.every == 1
    assert revision.hf_dir == plan.run_dir / "checkpoints" / "hf"
    assert revision.settings == OmegaConf.to_container(cfg.mixed, resolve=True) and type(revision.settings) is dict
    assert type(revision.filters) is dict  # plain, as spec.json and the manifest need them
    assert revision.optim.lr == cfg.optim.lr and revision.filters["order"] == list(cfg.filters.order)


def test_an_lr_monitor_and_a_second_logger_from_config(tmp_path):
    """`callbacks=lr_monitor logger=wandb_csv`: Lightning's LearningRateMonitor logs the learning rate, and the
    CSV logger beside W&B (offline) writes the same steps' loss."""
    cfg = compose_cfg([*QUICK, "callbacks=lr_monitor", "logger=wandb_csv", "seed=3"], tmp_path)
    sft.train(cfg)
    run = Path(cfg.paths.run_dir)
    rows = list(csv.DictReader((run / "csv_extra" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]  # one column per param group
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == [s["train/loss"] for s in steps if "train/loss" in s] and len(lrs) == len(losses)
    assert lrs == pytest.approx([s["train/lr"] for s in steps if "train/lr" in s])
    assert list((run / "wandb").glob("offline-run-*"))  # the main logger still runs


def test_third_party_entries_get_plain_arguments_and_bad_ones_fail_early(tmp_path):
    """An entry's own YAML arguments are passed as they are; a context value goes only to a parameter the
    target has and the entry leaves unset; a missing or unimportable _target_ is named."""
    node = OmegaConf.create({"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path),
                                     "name": "x"},
                             "name": "wandb", "mode": "auto"})
    (lg,) = instantiate_entries(node, {"run_dir": "/elsewhere", "tokenizer": None}, "logger",
                                skip=("name", "mode"))
    assert isinstance(lg, CSVLogger) and lg.save_dir == str(tmp_path) and lg.name == "x"
    with pytest.raises(ValueError, match=r"callbacks\.bad\._target_='no.such.Callback' cannot be imported"):
        instantiate_entries(OmegaConf.create({"bad": {"_target_": "no.such.Callback"}}), {}, "callbacks")
    with pytest.raises(ConfigError, match="x: an entry here is built from its _target_"):
        check_train(compose_cfg(["+callbacks.x.every=1"], tmp_path))
    assert not isinstance(lg, WandbLogger | LearningRateMonitor)


def test_only_mixed_policy_reaches_the_training_hash(tmp_path):
    """A learning-rate monitor or another logger may be added on a resume; the mixed-policy round changes the
    data, so its settings count, as they did before callbacks had a _target_ (the golden hash pins that)."""
    base = _hash(tmp_path, "stage=2")
    assert _hash(tmp_path, "stage=2", "callbacks=lr_monitor") == base
    assert _hash(tmp_path, "stage=2", "logger=wandb_csv") == base
    revised = _hash(tmp_path, "stage=2", "callbacks=mixed_policy")
    assert revised != base
    assert _hash(tmp_path, "stage=2", "callbacks=mixed_policy", "callbacks.mixed_policy.every_n_epochs=2") != revised
