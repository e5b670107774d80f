"""Resume: a run stopped at any checkpoint continues the uninterrupted run's trajectory exactly (data position,
per-epoch order, optimizer, schedule, epoch-end work), and no checkpoint given to dasd can run pickled code.

The default tier runs Lightning in this process with dasd's data module, module and checkpoint callbacks (a
crash right after a chosen checkpoint, then a fresh Trainer resumed from it). The slow tier SIGKILLs train.py
at exact checkpoints (mixed-policy rounds, DDP over 2 CPU ranks).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from cli import kill_at_checkpoint, metrics, run_train
from lightning.fabric.utilities.data import _set_sampler_epoch
from test_config import compose_cfg
from torch.utils.data import Dataset

from dasd.data.datamodule import SFTDataModule
from dasd.data.sampler import ResumableDataLoader, StepBatchSampler
from dasd.data.selection import RandomSelector
from dasd.models.student import StudentSpec, asset_path
from dasd.training.callbacks import HFCheckpoint, MetricsFile, ResumeCheckpoint, RunIdentity
from dasd.training.module import SFTModule, planned_steps
from dasd.training.optim import OptimConfig
from dasd.training.stages import latest_checkpoint
from dasd.utils.run import checkpoint_identity

POOL = Path(asset_path("sample_pool")) / "pool_T0.6.jsonl"
EPOCHS, EVERY = 2, 2  # checkpoints every 2 optimizer steps and at each epoch end


# ------------------------------------------------------------------------------------------------ sampler


class _Keys(Dataset):
    def __getitem__(self, key):
        return key

    def __len__(self) -> int:  # pragma: no cover - the batch sampler drives iteration
        return 0


def test_lightnings_set_epoch_reaches_the_pack_order():
    """Lightning calls set_epoch through ``_set_sampler_epoch(loader, epoch)``, which looks at ``loader.sampler``
    and ``loader.batch_sampler.sampler`` only: the epoch must reach the order of the packs from there."""
    sampler = StepBatchSampler(list(range(1, 41)), 2, 2, seed=3)
    loader = ResumableDataLoader(_Keys(), batch_sampler=sampler, collate_fn=list, progress=lambda: (0, 0))
    orders = []
    for epoch in (0, 1, 2, 1):
        _set_sampler_epoch(loader, epoch)
        orders.append([p for mb in loader for p, _ in mb])
    assert sorted(orders[0]) == list(range(40))
    assert orders[0] != orders[1] != orders[2] and orders[1] == orders[3]


# ------------------------------------------------------------------------------------ in-process resume


class Crash(RuntimeError):
    pass


class _CrashAfter(L.Callback):
    """Stop the fit, as a kill would, at the first batch after optimizer step ``step`` (its checkpoint is on
    disk by then: checkpoints are written at the end of a step's batch or of its epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"crash after step {self.step}")


class _Plan(L.Callback):
    """Records Lightning's own estimate of the schedule length next to dasd's (at the start, once the loader is
    built, when asking for it has no side effect)."""

    def on_train_start(self, trainer, module) -> None:
        self.lightning, self.dasd = int(trainer.estimated_stepping_batches), planned_steps(trainer)


def _fit(run_dir: Path, tokenizer, tiny_path: str, ckpt: str | None = None, crash: int | None = None,
         extra: tuple = ()) -> L.Trainer:
    """One fit as train.py builds it (data module, module, checkpoint callbacks; accumulate 2, 2 epochs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    dm = SFTDataModule(str(POOL), tokenizer, RandomSelector(0), cutoff_len=256, micro_batch_size=1, accumulate=2,
                       system_prompt="You are a helpful assistant.", seed=7, max_samples=12,
                       cache_dir=str(run_dir.parent / "cache"), source_format="generated")
    module = SFTModule(StudentSpec(name_or_path=tiny_path), OptimConfig(lr=1e-3, min_lr=1e-4))
    callbacks = [ResumeCheckpoint(run_dir / "checkpoints", EVERY), HFCheckpoint(run_dir / "checkpoints" / "hf", tokenizer),
                 MetricsFile(str(run_dir), plot_every_n_steps=0), RunIdentity("run-id", "config-hash"), *extra]
    if crash is not None:
        callbacks.append(_CrashAfter(crash))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, accumulate_grad_batches=2, logger=False,
                        callbacks=callbacks, gradient_clip_val=1.0, use_distributed_sampler=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(run_dir),
                        log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer, tiny_path) -> tuple[Path, list[dict], _Plan]:
    run_dir = tmp_path_factory.mktemp("resume") / "reference"
    plan = _Plan()
    _fit(run_dir, tokenizer, tiny_path, extra=(plan,))
    return run_dir, metrics(run_dir), plan


def _per_epoch(rows: list[dict], key: str) -> list[list[float]]:
    return [[r[key] for r in rows if r["epoch"] == e] for e in range(EPOCHS)]


def test_reference_run_reshuffles_each_epoch_and_sizes_its_schedule(reference):
    """Every epoch trains the same packs in another seeded order; the schedule length dasd computes without
    building the loader equals Lightning's estimate."""
    _, rows, plan = reference
    tokens = _per_epoch(rows, "train/supervised_tokens")
    assert len(tokens[0]) == len(tokens[1]) >= 4 and len(tokens[0]) % EVERY == 0  # an epoch ends on a checkpoint
    assert sum(tokens[0]) == sum(tokens[1]) and tokens[0] != tokens[1]  # the same packs, paired otherwise
    assert plan.dasd == plan.lightning == len(rows)


def _where(reference) -> dict[str, int]:
    steps = len(_per_epoch(reference[1], "step")[0])
    return {"mid_epoch_0": EVERY, "epoch_end": steps, "mid_epoch_1": steps + EVERY}


@pytest.mark.parametrize("where", ["mid_epoch_0", "epoch_end", "mid_epoch_1"])
def test_resume_reproduces_the_uninterrupted_run(where, reference, tmp_path, tokenizer, tiny_path):
    """Stopped right after a chosen checkpoint (mid-epoch, at an epoch's end, inside the next epoch) and resumed
    by a new Trainer: every step's loss, lr and supervised tokens equal the uninterrupted run's (rel 1e-6),
    and the epoch-end work (HF export) happened once for every epoch."""
    ref_dir, ref_rows, _ = reference
    step = _where(reference)[where]
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        _fit(run_dir, tokenizer, tiny_path, crash=step)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.resolve().name.endswith(f"step={step}.ckpt"), last.resolve().name  # exactly that checkpoint
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, step + 1))
    _fit(run_dir, tokenizer, tiny_path, ckpt=str(last))
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for key in ("train/loss", "train/lr", "train/supervised_tokens"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref_rows], rel=1e-6), key
    hf = sorted(p.name for p in (run_dir / "checkpoints" / "hf").iterdir())
    assert hf == sorted(p.name for p in (ref_dir / "checkpoints" / "hf").iterdir()) == ["epoch_0", "epoch_1", "final"]


def test_epoch_end_checkpoint_is_taken_after_the_epoch_end_work(reference):
    """A step checkpoint that falls on an epoch's last step is left to the epoch-end trigger, which runs after
    the epoch-end hooks: Lightning resumes such a checkpoint in the next epoch, so hooks that had not run yet
    (HF export, a mixed-policy round) would never run."""
    run_dir = reference[0]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == EPOCHS  # after epoch end
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": EPOCHS, "consumed": 0}]


def test_resume_auto_survives_a_dangling_last_link(tmp_path):
    """Lightning deletes the previous checkpoint before it relinks last.ckpt to the new one: after a kill in
    between, resume=auto continues from the newest checkpoint in the folder instead of starting over."""
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "epoch=0-step=8.ckpt").write_bytes(b"new")
    (ckpts / "last.ckpt").symlink_to("epoch=0-step=4.ckpt")  # the previous one, already deleted
    assert latest_checkpoint(ckpts) == str(ckpts / "epoch=0-step=8.ckpt")
    (ckpts / "epoch=0-step=4.ckpt").write_bytes(b"old")
    assert latest_checkpoint(ckpts) == str(ckpts / "last.ckpt")
    assert latest_checkpoint(tmp_path / "missing") is None


# ---------------------------------------------------------------------------------- unpickling user paths


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path, zip_format: bool = True) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload_ran", tmp_path / ("evil.ckpt" if zip_format else "evil_raw.ckpt")
    state = {"dasd": {"config_hash": "x", "wandb_run_id": "y"}, "state_dict": {}, "hook": _Payload(marker)}
    if zip_format:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path, marker


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_identity_refuses_pickled_code(tmp_path, zip_format):
    """checkpoint_identity (resume=auto's last.ckpt, or resume=<path>) refuses a file whose pickle would call
    os.system, naming the file, and the payload never runs."""
    path, marker = _malicious(tmp_path, zip_format)
    with pytest.raises(ValueError, match="refusing to load .*evil"):
        checkpoint_identity(path)
    assert not marker.exists()


def test_checkpoint_identity_vets_every_file_of_a_deepspeed_directory(tmp_path):
    """A DeepSpeed checkpoint directory is loaded by DeepSpeed itself: every file in it is vetted first."""
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    torch.save({"dasd": {"config_hash": "h", "wandb_run_id": "r"}, "module": {"w": torch.ones(2)}},
               ckpt / "checkpoint" / "mp_rank_00_model_states.pt")
    assert checkpoint_identity(ckpt) == {"config_hash": "h", "wandb_run_id": "r"}
    evil, marker = _malicious(tmp_path)
    (ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(evil.read_bytes())
    with pytest.raises(ValueError, match="refusing to load .*optim_states"):
        checkpoint_identity(ckpt)
    assert not marker.exists()


def test_checkpoint_identity_reads_a_dasd_checkpoint(reference):
    """What dasd stores in its checkpoints is plain data: the restricted loader reads all of it."""
    assert checkpoint_identity(reference[0] / "checkpoints" / "last.ckpt") == {"wandb_run_id": "run-id",
                                                                              "config_hash": "config-hash"}


def _train_cfg(root: Path, *overrides: str):
    return compose_cfg(["logger=none", "data.max_samples=8", "train.epochs=1", "trainer.enable_progress_bar=false",
                        *overrides], root)


@pytest.mark.parametrize("how", ["path", "auto"])
def test_resume_refuses_pickled_code(tmp_path, how):
    """train(cfg) with resume=<malicious file>, or with one planted as the run's last.ckpt (resume=auto), stops
    with the file named before anything is trained, and the payload never runs."""
    from dasd.recipes.sft import train

    evil, marker = _malicious(tmp_path)
    if how == "auto":
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        evil = evil.rename(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = _train_cfg(tmp_path, f"resume={evil}" if how == "path" else "resume=auto")
    with pytest.raises(ValueError, match="refusing to load"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_lightnings_own_checkpoint_load_is_restricted(tmp_path, monkeypatch):
    """Past dasd's own check (patched out here), Lightning's load of the resume checkpoint is restricted too,
    even where TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD would make torch.load unpickle anything by default."""
    import dasd.training.stages as stages
    from dasd.recipes.sft import train

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(stages, "checkpoint_identity", lambda path: {})
    evil, marker = _malicious(tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        train(_train_cfg(tmp_path, f"resume={evil}"))
    assert not marker.exists()


# --------------------------------------------------------------------------------------- slow: train.py


def _same_trajectory(rows: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    for key in ("train/loss", "train/lr", "train/supervised_tokens"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in reference], rel=1e-6), key


def _kill_and_resume(tmp_path: Path, kills: list[int], *common: str) -> tuple[list[dict], list[dict], Path]:
    """The uninterrupted run, then a run SIGKILLed right after each checkpoint in ``kills`` in turn (rerun each
    time) and run to its end. Returns (reference rows, resumed rows, the resumed run's dir)."""
    (tmp_path / "a").mkdir()
    run_train(tmp_path / "a", *common)
    reference = metrics(tmp_path / "a" / "outputs" / "default" / "stage1")
    out = tmp_path / "b"
    out.mkdir()
    run_dir = out / "outputs" / "default" / "stage1"
    for step in kills:
        kill_at_checkpoint(out, run_dir, step, *common)
        assert [r["step"] for r in metrics(run_dir)] == list(range(1, step + 1))
    run_train(out, *common)
    return reference, metrics(run_dir), run_dir


@pytest.mark.slow
def test_mixed_policy_resume_at_every_kind_of_checkpoint(tmp_path):
    """callbacks=mixed_policy, killed mid-epoch before the round, at the epoch end after it and inside the
    revised epoch: the same rounds, data, order, losses and schedule as the uninterrupted run."""
    common = ["callbacks=mixed_policy", "train.epochs=2", "train.save_every_n_steps=2", "data.max_samples=48",
              "logger=csv", "mixed.transport=inprocess", "student=tiny_base", "mixed.n_questions=12",
              "mixed.cap_factor=0.5", "mixed.teacher.max_tokens=256"]
    reference, rows, run_dir = _kill_and_resume(tmp_path, [2, 8, 12], *common)
    assert sum(r["epoch"] == 0 for r in reference) == 8  # the kills: mid-epoch 0, its end, inside epoch 1
    _same_trajectory(rows, reference)
    def revised(run: Path) -> list[tuple]:  # the records, less what names the run's folder (uuid, weights path)
        rows = [json.loads(x) for x in (run / "mixed" / "round_1" / "mixed.jsonl").read_text().splitlines()]
        return [(r["input"], r["output"], {k: v for k, v in json.loads(r["meta"]).items() if k != "student_model"})
                for r in rows]

    assert revised(run_dir) == revised(tmp_path / "a" / "outputs" / "default" / "stage1") != []


@pytest.mark.slow
def test_ddp_resume_mid_epoch(tmp_path):
    """DDP over 2 CPU ranks, killed mid-epoch in epoch 0 and again in epoch 1, continues exactly."""
    common = ["strategy=ddp", "trainer.devices=2", "data.max_samples=64", "train.epochs=2",
              "train.save_every_n_steps=2", "logger=csv"]
    reference, rows, run_dir = _kill_and_resume(tmp_path, [2, 8], *common)
    per_epoch = sum(r["epoch"] == 0 for r in reference)
    assert 2 < per_epoch and per_epoch + 2 <= 8 < len(reference), per_epoch  # 8 lies inside epoch 1
    _same_trajectory(rows, reference)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"


def test_hf_exports_ignore_half_written_folders(tmp_path):
    """A kill during an export leaves ``epoch_<e>.tmp``: it is never taken for an epoch (nor crashes the sort)."""
    from dasd.training.callbacks import HFCheckpoint

    for name in ("epoch_0", "epoch_1.tmp", "epoch_10", "epoch_2", "final", "final.tmp"):
        (tmp_path / name).mkdir()
    assert [p.name for p in HFCheckpoint(tmp_path, tokenizer=None).epochs()] == ["epoch_0", "epoch_2", "epoch_10"]
