"""End-to-end training through the real CLI (Hydra → Lightning → HF → W&B offline), and the loss maths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from cli import QUIET, REPO, kill_at_checkpoint, metrics, run_train
from conftest import make_record, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer
from wandb_offline import read_history, run_files

from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import RandomSelector
from dasd.models.student import StudentSpec
from dasd.training.module import SFTModule
from dasd.training.optim import OptimConfig


@pytest.mark.cli
def test_stage1_then_stage2_end_to_end(tmp_path):
    """`python train.py` then `python train.py stage=2`: the loss falls, stage 2 starts from stage 1's final
    HF checkpoint, checkpoints load with transformers, and the offline W&B run holds the history."""
    common = ["data.max_samples=48", "train.epochs=2"]
    run_train(tmp_path, *common)
    s1 = tmp_path / "outputs" / "default" / "stage1"
    rows = metrics(s1)
    first, last = [r["train/loss"] for r in rows[:3]], [r["train/loss"] for r in rows[-3:]]
    assert sum(last) / 3 < sum(first) / 3 - 0.5, (first, last)
    manifest = json.loads((s1 / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["final_metrics"]["global_step"] == len(rows)
    assert manifest["data"]["read"]["sha256"] and manifest["versions"]["torch"] and manifest["config_hash"]
    assert manifest["data"]["packing"]["samples_packed"] == 48
    assert (s1 / "loss_curve.png").stat().st_size > 1000

    final = s1 / "checkpoints" / "hf" / "final"
    assert sorted(p.name for p in (s1 / "checkpoints" / "hf").iterdir()) == ["epoch_0", "epoch_1", "final"]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.use_cache  # an inference checkpoint: training's cache-off setting is not saved
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template and "<think>" in tok.get_vocab()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4

    history = read_history(run_files(s1)[-1])
    logged = [h for h in history if "train/loss" in h]
    assert len(logged) == len(rows)
    assert [h["train/loss"] for h in logged] == pytest.approx([r["train/loss"] for r in rows], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "train/pad_fraction", "train/epoch"} <= set(logged[0])

    run_train(tmp_path, "stage=2", *common)
    s2 = tmp_path / "outputs" / "default" / "stage2"
    m2 = json.loads((s2 / "manifest.json").read_text())
    assert m2["status"] == "completed" and m2["parent"]["init_from"] == str(final)
    assert m2["parent"]["config_hash"] == manifest["config_hash"]
    assert m2["config"]["data"]["path"].endswith("pool_T1.0.jsonl")
    rows2 = metrics(s2)
    assert rows2[0]["train/lr"] == 0.0  # fresh schedule: warmup starts again from zero
    # it starts from stage 1's weights: its first loss is far below a random model's ln(1024) ≈ 6.9
    assert rows2[0]["train/loss"] < rows[0]["train/loss"] - 1.0


def test_stage2_without_stage1_fails_clearly(tmp_path):
    """Stage 2 with no stage-1 result stops before training and says what to run or set."""
    proc = run_train(tmp_path, "stage=2", check=False)
    assert proc.returncode != 0
    assert "stage.init_from" in proc.stderr and "stage1" in proc.stderr and "missing" in proc.stderr


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(tmp_path):
    """The issue's run (64 samples, 2 epochs of 11 steps, a checkpoint every 4 steps) SIGKILLed right after the
    checkpoints of step 4 (mid-epoch), 11 (the epoch's end) and 16 (mid-epoch 1) in turn, restarted each time
    with resume=auto: every step's loss, lr and supervised tokens equal the uninterrupted run's, epoch 1 trains
    the packs in another order than epoch 0, and both processes wrote to one W&B run."""
    common = ["data.max_samples=64", "train.epochs=2", "train.save_every_n_steps=4"]
    (tmp_path / "a").mkdir()
    run_train(tmp_path / "a", *common)
    reference = metrics(tmp_path / "a" / "outputs" / "default" / "stage1")
    assert [sum(r["epoch"] == e for r in reference) for e in (0, 1)] == [11, 11]
    epochs = [[r["train/supervised_tokens"] for r in reference if r["epoch"] == e] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]  # reshuffled, same packs

    out = tmp_path / "b"
    out.mkdir()
    run_dir = out / "outputs" / "default" / "stage1"
    for step in (4, 11, 16):
        kill_at_checkpoint(out, run_dir, step, *common)  # exactly there, or the test fails
        assert [r["step"] for r in metrics(run_dir)] == list(range(1, step + 1))
    run_train(out, *common)  # resume=auto is the default
    resumed = metrics(run_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for key in ("train/loss", "train/lr", "train/supervised_tokens"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in reference], rel=1e-6), key
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed_from"]
    ids = {f.stem.removeprefix("run-") for f in run_files(run_dir)}
    assert ids == {manifest["wandb_run_id"]}, ids  # every process wrote to one W&B run


@pytest.mark.cli
def test_resume_refuses_changed_training_config(tmp_path):
    """Resuming with a different learning rate is refused (it would silently mix two runs)."""
    run_train(tmp_path, "data.max_samples=8", "train.epochs=1")
    proc = run_train(tmp_path, "data.max_samples=8", "train.epochs=1", "optim.lr=0.5", check=False)
    assert proc.returncode != 0 and "config changed" in proc.stderr


@pytest.mark.cli
def test_multirun_one_dir_per_job(tmp_path):
    """`python train.py -m optim.lr=a,b` runs both jobs with the basic launcher, each in its own folder."""
    run_train(tmp_path, "-m", "optim.lr=1e-3,5e-4", "data.max_samples=8", "train.epochs=1", "logger=csv")
    manifests = sorted((tmp_path / "outputs" / "default" / "multirun").glob("*/*/manifest.json"))
    assert len(manifests) == 2
    lrs = sorted(json.loads(m.read_text())["config"]["optim"]["lr"] for m in manifests)
    assert lrs == [5e-4, 1e-3]
    assert all(json.loads(m.read_text())["status"] == "completed" for m in manifests)


def test_bad_input_names_file_line_and_field(tmp_path):
    """A record missing a field stops the run with file:line and field; data.on_error=skip counts it."""
    bad = write_jsonl(tmp_path / "bad.jsonl", [make_record(1), make_record(2), {"uuid": "x", "input": "q"},
                                               "{not json", make_record(3)])
    proc = run_train(tmp_path, f"data.path={bad}", "data.format=released", check=False)
    assert proc.returncode != 0 and f"{bad}:3: field 'output': missing" in proc.stderr
    run_train(tmp_path, f"data.path={bad}", "data.format=released", "data.on_error=skip", "train.epochs=1", "logger=none")
    manifest = json.loads((tmp_path / "outputs" / "default" / "stage1" / "manifest.json").read_text())
    assert manifest["data"]["read"]["skipped"] == 2 and manifest["data"]["read"]["kept"] == 3


class _GrabGrads(L.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters()}


def _first_step_grads(path: Path, tok, tiny_path: str, micro: int, accumulate: int) -> dict:
    dm = SFTDataModule(str(path), tok, RandomSelector(0), cutoff_len=96, micro_batch_size=micro,
                       accumulate=accumulate, system_prompt="You are a helpful assistant.", seed=0)
    module = SFTModule(StudentSpec(name_or_path=tiny_path), OptimConfig(lr=1e-3))
    grab = _GrabGrads()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[grab])
    trainer.fit(module, datamodule=dm)
    return grab.grads


def test_grad_accumulation_equals_one_big_batch(tmp_path, tokenizer, tiny_path):
    """One optimizer step over 4 packs has the same gradient whether they come as 4 accumulated
    micro-batches, 2×2, or one batch of 4: the gradient of the token mean over the whole step."""
    # 79-95 tokens each with cutoff 96: every sample is its own pack, with 4 different supervised counts
    rows = [make_record(i, output="<think>\n" + "step. " * (12 + 3 * i) + "\n</think>\n\nok") for i in range(4)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    grads = {(m, a): _first_step_grads(path, tokenizer, tiny_path, m, a) for m, a in [(1, 4), (2, 2), (4, 1)]}
    # reference: d/dθ [Σ token CE over all 4 packs / number of supervised tokens], computed directly
    dm = SFTDataModule(str(path), tokenizer, RandomSelector(0), cutoff_len=96, micro_batch_size=4,
                       system_prompt="You are a helpful assistant.")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                shift_labels=batch["labels"], num_items_in_batch=(batch["labels"] != -100).sum(), use_cache=False)
    out.loss.backward()
    assert len(dm.dataset) == 4 and len({dm.dataset.supervised_tokens(p) for p in range(4)}) == 4
    for (m, a), g in grads.items():
        for name, p in model.named_parameters():
            torch.testing.assert_close(g[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"{m}x{a} {name}")


@pytest.mark.slow
def test_default_run_learns(tmp_path):
    """The README's `python train.py` (150 pool samples, 3 epochs) brings the loss from ≈ln(1024) below 3."""
    run_train(tmp_path)
    rows = metrics(tmp_path / "outputs" / "default" / "stage1")
    assert rows[0]["train/loss"] > 6.0 and sum(r["train/loss"] for r in rows[-5:]) / 5 < 3.0


@pytest.mark.cli
def test_ddp_two_ranks_equals_accumulation(tmp_path):
    """DDP over 2 CPU ranks (gloo) follows the same loss trajectory as 1 process accumulating 2 micro-batches:
    the same packs form each optimizer step and the loss is the token mean over the whole step."""
    common = ["data.max_samples=64", "train.epochs=1", "logger=csv", "train.save_every_n_steps=0"]
    run_train(tmp_path, "strategy=ddp", "trainer.devices=2", "experiment_name=ddp", *common)
    run_train(tmp_path, "train.accumulate=2", "experiment_name=single", *common)
    ddp, single = (metrics(tmp_path / "outputs" / name / "stage1") for name in ("ddp", "single"))
    assert len(ddp) == len(single) > 3
    # (the last step may differ: with an odd number of packs DDP repeats one to fill both ranks)
    ddp, single = ddp[:-1], single[:-1]
    assert [r["train/loss"] for r in ddp] == pytest.approx([r["train/loss"] for r in single], rel=1e-5)
    assert [r["train/supervised_tokens"] for r in ddp] == [r["train/supervised_tokens"] for r in single]


@pytest.mark.cli
def test_multirun_from_the_launch_directory_without_overrides(tmp_path):
    """`python train.py -m ...` as the README writes it (no paths override): outputs go under the directory it
    was launched from, one folder per job."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    env.pop("DASD_ROOT", None)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "seed=1,2", "data_only=true", *QUIET],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted((tmp_path / "outputs" / "default" / "multirun").glob("*/stage1_job*/data_report.json"))
    assert [p.parent.name for p in reports] == ["stage1_job0", "stage1_job1"]
