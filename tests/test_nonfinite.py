"""The non-finite guard: a NaN/inf loss or gradient norm stops the run at that step (or skips that step's
update), nothing non-finite is ever checkpointed or exported, the manifest says failed, and a later stage
refuses the failed run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from cli import run_train
from conftest import make_record, write_jsonl
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dasd.config import quote_numeric_choices, register_resolvers
from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import RandomSelector
from dasd.models.student import StudentSpec
from dasd.recipes.stage import stage_settings
from dasd.training.callbacks import HFCheckpoint, ResumeCheckpoint
from dasd.training.module import SFTModule
from dasd.training.nonfinite import NonFiniteConfig, NonFiniteError, TrainingFailed
from dasd.training.optim import OptimConfig
from dasd.training.stages import resolve_init
from dasd.utils.steps import optimizer_steps

NAN = float("nan")
CONF = Path(__file__).resolve().parent.parent / "conf"


def _compose(overrides: list[str], root: Path, run_name: str):
    """The train config of ``outputs/default/<run_name>`` under ``root`` (as train.py would run it)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=quote_numeric_choices(
            [*overrides, f"paths.root_dir={root}", f"paths.run_dir={root}/outputs/default/{run_name}"]))


class Faulty(SFTModule):
    """An SFTModule whose loss (``kind="loss"``) or one gradient (``kind="grad"``) is NaN at given steps."""

    def __init__(self, *args, bad_steps=(), kind="loss", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_steps, self.kind = set(bad_steps), kind

    def _bad(self) -> bool:
        return optimizer_steps(self.trainer) + 1 in self.bad_steps

    def forward_loss_sum(self, batch: dict) -> torch.Tensor:
        loss = super().forward_loss_sum(batch)
        return loss * NAN if self.kind == "loss" and self._bad() else loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.kind == "grad" and self._bad():  # the loss stays finite: only the gradient norm shows it
            next(p for p in self.parameters() if p.grad is not None).grad.view(-1)[0] = NAN
        super().on_before_optimizer_step(optimizer)


class Snapshots(L.Callback):
    """The weights after each optimizer step (step -> {name: tensor}); step 0: before training."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def _take(self, module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.model.named_parameters()}

    def on_train_start(self, trainer, module) -> None:
        self.weights[0] = self._take(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.weights[optimizer_steps(trainer)] = self._take(module)


class Poison(L.Callback):
    """Set one weight to NaN after optimizer step ``step`` (before the checkpoint callbacks run) or at the
    end of the epoch (``step=None``), as an update that overflowed would."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def _poison(self, module) -> None:
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] = NAN

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.step is not None and optimizer_steps(trainer) == self.step:
            self._poison(module)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.step is None:
            self._poison(module)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("d") / "d.jsonl", [make_record(i) for i in range(6)])


def _fit(tmp_path: Path, data: Path, tokenizer, tiny_path, *callbacks, nonfinite: NonFiniteConfig | None = None,
         **faults) -> SFTModule:
    """Train the tiny student on six one-pack steps per epoch with a checkpoint after every step."""
    dm = SFTDataModule(str(data), tokenizer, RandomSelector(0), cutoff_len=96,
                       system_prompt="You are a helpful assistant.", seed=0)
    module = Faulty(StudentSpec(name_or_path=tiny_path), OptimConfig(lr=1e-3), nonfinite, **faults)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(tmp_path),
                        gradient_clip_val=1.0, callbacks=[*callbacks, ResumeCheckpoint(tmp_path / "ckpt", 1)])
    trainer.fit(module, datamodule=dm)
    return module


def _ckpt_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in b)  # b: named parameters (a checkpoint adds tied ones)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_stop_before_the_update_of_the_nonfinite_step(kind, tmp_path, data, tokenizer, tiny_path):
    """Default (stop): a NaN loss or gradient norm at step 3 stops there, before its update; step 2's
    checkpoint is the last one, finite, and last.ckpt links it."""
    snaps = Snapshots()
    with pytest.raises(NonFiniteError) as info:
        _fit(tmp_path, data, tokenizer, tiny_path, snaps, bad_steps={3}, kind=kind)
    assert info.value.step == 3 and ("loss nan" if kind == "loss" else "gradient norm nan") in info.value.reason
    assert max(snaps.weights) == 2  # step 3 never finished
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert (tmp_path / "ckpt" / "last.ckpt").resolve().name == "epoch=0-step=2.ckpt"
    weights = _ckpt_weights(tmp_path / "ckpt" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in weights.values()) and _same(weights, snaps.weights[2])


def test_skip_drops_only_that_steps_update(tmp_path, data, tokenizer, tiny_path):
    """train.nonfinite=skip: the weights and the optimizer state after a NaN step equal those before it;
    the other steps train; the skipped steps are counted, logged and kept in the checkpoint."""
    snaps = Snapshots()
    module = _fit(tmp_path, data, tokenizer, tiny_path, snaps, nonfinite=NonFiniteConfig("skip", 2),
                     bad_steps={2, 4})
    w = snaps.weights
    assert sorted(w) == list(range(7))
    assert _same(w[2], w[1]) and _same(w[4], w[3])  # no update (weight decay included)
    assert not _same(w[3], w[2]) and not _same(w[5], w[4])
    steps = {int(s["step"]) for s in module.trainer.optimizers[0].state.values()}
    assert steps == {4}  # AdamW took 6 - 2 steps: the skipped ones left its moments alone
    assert [s["step"] for s in module.guard.skipped] == [2, 4]
    assert module.trainer.callback_metrics["train/skipped_steps"] == 2
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert [s["step"] for s in ckpt["dasd_nonfinite"]["skipped"]] == [2, 4]  # the limit holds across a resume


def test_skip_stops_after_max_skipped_steps(tmp_path, data, tokenizer, tiny_path):
    with pytest.raises(NonFiniteError, match="more than train.max_skipped_steps=1") as info:
        _fit(tmp_path, data, tokenizer, tiny_path, nonfinite=NonFiniteConfig("skip", 1), bad_steps={2, 3})
    assert info.value.step == 3


def test_checkpoint_rotation_never_replaces_the_last_finite_checkpoint(tmp_path, data, tokenizer, tiny_path):
    """Weights that became non-finite (an update that overflowed) are not checkpointed: save_top_k=1 keeps
    step 2's checkpoint and last.ckpt still links it."""
    with pytest.raises(NonFiniteError, match="non-finite weights .checkpoint epoch=0-step=3.ckpt not written"):
        _fit(tmp_path, data, tokenizer, tiny_path, Poison(step=3))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert (tmp_path / "ckpt" / "last.ckpt").resolve().name == "epoch=0-step=2.ckpt"


def test_hf_export_refuses_nonfinite_weights(tmp_path, data, tokenizer, tiny_path):
    """An epoch's HF export (and so hf/final) is never written from non-finite weights."""
    with pytest.raises(NonFiniteError, match="HF checkpoint epoch_0 not written"):
        _fit(tmp_path, data, tokenizer, tiny_path, Poison(step=None), HFCheckpoint(tmp_path / "hf", tokenizer))
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_diverged_run_fails_and_later_stages_refuse_it(tmp_path):
    """`train.py optim.lr=1e6` (in-process): the run stops at its first non-finite step with a one-line
    error, the manifest says failed with the step and reason, nothing non-finite is written, and stage 2
    (stage.init_from=auto or a path into the failed run) refuses to start from it."""
    from dasd.recipes.sft import train

    cfg = _compose(["optim.lr=1e6", "data.max_samples=16", "train.save_every_n_steps=1", "logger=none",
                    "trainer.enable_progress_bar=false"], tmp_path, "stage1")
    with pytest.raises(TrainingFailed) as info:
        train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    failure = manifest["failure"]
    assert manifest["status"] == "failed" and failure["step"] == info.value.step >= 2
    assert "non-finite" in failure["reason"] and "\n" not in str(info.value)
    assert str(info.value).startswith(f"error: training failed at optimizer step {failure['step']}")
    kept = Path(failure["last_finite_checkpoint"])
    assert kept.name == f"epoch=0-step={failure['step'] - 1}.ckpt"
    assert all(torch.isfinite(v).all() for v in _ckpt_weights(kept).values())
    assert not (run_dir / "checkpoints" / "hf").exists()

    with pytest.raises(ValueError, match=f"that run failed at optimizer step {failure['step']}"):
        resolve_init(stage_settings(_compose(["stage=2"], tmp_path, "stage2")))
    export = run_dir / "checkpoints" / "hf" / "epoch_0"  # as if an earlier epoch had been exported
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="copy that directory out of"):
        resolve_init(stage_settings(_compose(["stage=2", f"stage.init_from={export}"], tmp_path, "stage2")))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="train.nonfinite='ignore'"):
        NonFiniteConfig("ignore")
    with pytest.raises(ValueError, match="train.max_skipped_steps=-1"):
        NonFiniteConfig("skip", -1)


@pytest.mark.slow
def test_cli_lr_1e6_exits_nonzero_with_one_line(tmp_path):
    """The issue's command: exit status 1, one `error:` line, manifest failed, no HF export."""
    proc = run_train(tmp_path, "optim.lr=1e6", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training failed at optimizer step" in errors[0] and "Traceback" not in proc.stderr
    run_dir = tmp_path / "outputs" / "default" / "stage1"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert not (run_dir / "checkpoints" / "hf").exists()


@pytest.mark.slow
def test_a_diverging_sweep_job_fails_alone(tmp_path):
    """`train.py -m optim.lr=1e6,1e-3`: the diverging first job is marked failed and the sweep still runs the
    second one to completion; the sweep as a whole then exits non-zero."""
    proc = run_train(tmp_path, "-m", "optim.lr=1e6,1e-3", "data.max_samples=16", "logger=csv", check=False)
    assert proc.returncode != 0
    manifests = sorted((tmp_path / "outputs" / "default" / "multirun").glob("*/*/manifest.json"))
    status = {m.parent.name: json.loads(m.read_text())["status"] for m in manifests}
    assert sorted(status.values()) == ["completed", "failed"], (status, proc.stderr[-3000:])
