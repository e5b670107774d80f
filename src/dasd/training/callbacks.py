"""Callbacks: HF-format checkpoints per epoch, a metrics JSONL + loss-curve PNG, run identity in checkpoints.

Both checkpoint kinds are written only from finite weights (``dasd.training.nonfinite``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dasd.training.nonfinite import require_finite_weights
from dasd.utils.logging import get_logger
from dasd.utils.plots import plot_training_curves
from dasd.utils.steps import micro_batches_per_step, optimizer_steps

log = get_logger(__name__)


def _hf_state_dict(trainer: L.Trainer, module: L.LightningModule) -> dict | None:
    """Full (unsharded) state dict of the HF model; under ZeRO-3 gathered to 16-bit on rank 0."""
    engine = getattr(trainer.strategy, "deepspeed_engine", None)
    if engine is not None and engine.zero_optimization_stage() == 3:
        full = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank must call it
        return {k.removeprefix("model."): v for k, v in full.items()} if trainer.is_global_zero else None
    return None  # the module's own parameters are complete


class HFCheckpoint(L.Callback):
    """Write an HF model directory (weights, config, tokenizer, chat template) at each epoch end.

    ``<dir>/epoch_<e>`` per epoch, and ``<dir>/final`` after the last one: loadable by
    ``AutoModelForCausalLM.from_pretrained`` and by vLLM.
    """

    def __init__(self, dirpath: str, tokenizer, keep: int | None = None) -> None:
        self.dirpath, self.tokenizer, self.keep = Path(dirpath), tokenizer, keep

    def export(self, trainer: L.Trainer, module: L.LightningModule, target: Path) -> None:
        require_finite_weights(trainer, module, f"HF checkpoint {target.name}", optimizer_steps(trainer))
        state = _hf_state_dict(trainer, module)
        if trainer.is_global_zero:
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            config, use_cache = module.model.config, module.model.config.use_cache
            config.use_cache = True  # the checkpoint is for inference; training turns the cache off itself
            try:
                module.model.save_pretrained(tmp, state_dict=state)
            finally:
                config.use_cache = use_cache
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)  # a kill mid-save never leaves a half-written checkpoint under the real name
            log.info("HF checkpoint: %s", target)
        trainer.strategy.barrier("hf_checkpoint")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.export(trainer, module, self.dirpath / f"epoch_{trainer.current_epoch}")
        if self.keep and trainer.is_global_zero:
            for old in self.epochs()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epochs = self.epochs()
        if trainer.is_global_zero and epochs:
            final, tmp = self.dirpath / "final", self.dirpath / "final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(epochs[-1], tmp)  # then renamed: a kill never leaves half a final checkpoint
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        trainer.strategy.barrier("hf_final")

    def epochs(self) -> list[Path]:
        """The finished epoch exports, oldest first (never a half-written ``epoch_<e>.tmp``)."""
        done = [p for p in self.dirpath.glob("epoch_*") if p.name.removeprefix("epoch_").isdigit()]
        return sorted(done, key=lambda p: int(p.name.removeprefix("epoch_")))


class MetricsFile(L.Callback):
    """Append every optimizer step's logged metrics to ``metrics.jsonl``; plot ``loss_curve.png``.

    On resume the file is cut back to the restored step, so it holds one trajectory with no duplicates.
    """

    def __init__(self, run_dir: str, plot_every_n_steps: int = 50) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.png = Path(run_dir) / "loss_curve.png"
        self.plot_every = plot_every_n_steps
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last_step = optimizer_steps(trainer)
        if trainer.is_global_zero and self.path.exists():
            rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
            kept = [r for r in rows if r["step"] <= self._last_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = optimizer_steps(trainer)  # under DeepSpeed a batch end is a micro-batch end
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        row = {"step": step, "epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items()
                    if k.startswith("train/") and torch.as_tensor(v).numel() == 1})
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.plot_every and step % self.plot_every == 0:
            self.plot()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.path.exists():
            self.plot()
            for lg in trainer.loggers:
                if hasattr(lg, "log_image"):
                    lg.log_image(key="train/loss_curve", images=[str(self.png)], step=optimizer_steps(trainer))

    def plot(self) -> None:
        rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        plot_training_curves(rows, self.png)


class RunIdentity(L.Callback):
    """Store the W&B run id and config hash in every Lightning checkpoint (resume continues the same run)."""

    def __init__(self, wandb_run_id: str | None, config_hash: str) -> None:
        self.wandb_run_id, self.config_hash = wandb_run_id, config_hash

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["dasd"] = {"wandb_run_id": self.wandb_run_id, "config_hash": self.config_hash}


class ResumeCheckpoint(ModelCheckpoint):
    """Lightning checkpoint (for resume) every N optimizer steps *and* at every epoch end.

    ``ModelCheckpoint`` takes one trigger; both are set here so that ``last.ckpt`` always links the newest
    step- or epoch-end checkpoint (two callbacks would fight over ``last.ckpt``).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None) -> None:
        super().__init__(dirpath=dirpath, filename="{epoch}-{step}", save_last="link", save_top_k=1,
                         every_n_train_steps=every_n_train_steps or None, save_on_train_epoch_end=True)
        self._every_n_epochs = 1
        self._every_n_optimizer_steps = self._every_n_train_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Lightning's trigger counts global steps, which are micro-batches under DeepSpeed: save every N
        # optimizer steps, at a step boundary (a checkpoint inside an accumulation would lose its gradients)
        self._every_n_train_steps = self._every_n_optimizer_steps * micro_batches_per_step(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # An epoch's last step is saved by the epoch-end trigger, after the epoch-end hooks (HF export, a
        # mixed-policy round): Lightning resumes a checkpoint of an epoch's last batch in the next epoch, and
        # those hooks would never run for it (no hf/epoch_<e>, no round; a stale hf/final after the last epoch)
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        # checked before writing, so that save_top_k=1 never rotates the last finite checkpoint out for a
        # non-finite one, and last.ckpt keeps linking a finite one
        require_finite_weights(trainer, trainer.lightning_module, f"checkpoint {Path(filepath).name}",
                               optimizer_steps(trainer))
        super()._save_checkpoint(trainer, filepath)
