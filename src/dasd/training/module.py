"""The LightningModule: a HF causal LM trained with token-level cross-entropy on packed teacher responses."""

from __future__ import annotations

import time

import lightning as L
import torch

from dasd.models.attention import uses_varlen, varlen_kwargs
from dasd.models.student import StudentSpec, load_student
from dasd.training.nonfinite import NonFiniteConfig, NonFiniteGuard
from dasd.training.optim import OptimConfig, build_optimizer
from dasd.training.strategy import optimizer_offloaded
from dasd.utils.steps import micro_batches_per_step, optimizer_steps


def packed_loss_sum(model, batch: dict) -> torch.Tensor:
    """Sum of the token cross-entropies of a packed micro-batch.

    Labels are pre-shifted per sample (``shift_labels``) and ``num_items_in_batch=1`` turns HF's (and Liger's
    fused linear) mean into a sum. Varlen attention gets the packer's sample boundaries; sdpa/eager derive a
    block-diagonal mask from the restarting ``position_ids`` (``use_cache=False`` is what makes them do so).
    """
    extra = varlen_kwargs(batch) if uses_varlen(model) and "cu_seq_lens" in batch else {}
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                shift_labels=batch["labels"], num_items_in_batch=torch.ones((), device=batch["input_ids"].device),
                use_cache=False, **extra)
    return out.loss


class SFTModule(L.LightningModule):
    """Full-parameter SFT of a student on packed samples.

    The loss of an optimizer step is the mean cross-entropy over *all* supervised tokens of that step
    (every accumulation micro-batch on every rank). Each micro-batch carries ``step_tokens`` (that count),
    so ``training_step`` returns ``sum_CE · accumulate · world / step_tokens``: after Lightning's 1/accumulate
    and DDP's rank averaging, the gradient is exactly d(mean over the step's tokens).

    A step whose loss or gradient norm is not finite stops the run or skips its update (``nonfinite``,
    ``dasd.training.nonfinite``).
    """

    def __init__(self, student: StudentSpec, optim: OptimConfig, nonfinite: NonFiniteConfig | None = None) -> None:
        super().__init__()
        self.student_spec, self.optim_cfg = student, optim
        self.guard = NonFiniteGuard(nonfinite or NonFiniteConfig())
        self.model = None
        self._step_sums = {"loss": 0.0, "tokens": 0, "pad": 0, "supervised": 0}
        self._step_start = None

    def configure_model(self) -> None:
        # Called by Lightning inside the strategy's sharded context (DeepSpeed ZeRO-3 zero.Init).
        if self.model is None:
            config = getattr(self.trainer.strategy, "config", None) if self._trainer is not None else None
            if isinstance(config, dict) and config.get("zero_optimization", {}).get("stage") == 3:
                from transformers.integrations import HfDeepSpeedConfig

                # transformers must see the ZeRO-3 config before from_pretrained so that each rank loads only
                # its shard (lessons §4.8); it must stay alive for the run, hence kept on the module
                self._hf_ds_config = HfDeepSpeedConfig(config)
            self.model = load_student(self.student_spec)

    def forward_loss_sum(self, batch: dict) -> torch.Tensor:
        """Sum of token cross-entropies of a packed micro-batch (labels are pre-shifted per sample)."""
        return packed_loss_sum(self.model, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss_sum = self.forward_loss_sum(batch)
        step_tokens = batch["step_tokens"].clamp(min=1).to(loss_sum.dtype)
        s = self._step_sums
        s["loss"] += float(loss_sum.detach())
        s["tokens"] += int(batch["num_tokens"])
        s["pad"] += int(batch["num_pad"])
        s["supervised"] += int((batch["labels"] != -100).sum())
        # Lightning divides by accumulate; a strategy that accumulates itself (DeepSpeed's engine.backward)
        # divides by it once more, which the extra factor undoes.
        scale = self.trainer.accumulate_grad_batches * micro_batches_per_step(self.trainer) * self.trainer.world_size
        return loss_sum * scale / step_tokens

    def on_train_start(self) -> None:
        if self.guard.config.mode == "skip" and getattr(self.trainer.strategy, "deepspeed_engine", None):
            raise ValueError("train.nonfinite=skip is not supported under DeepSpeed (its engine owns the gradients "
                             "and steps itself): use train.nonfinite=stop")
        self._step_start = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["dasd_nonfinite"] = {"skipped": list(self.guard.skipped)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.guard.skipped = list(checkpoint.get("dasd_nonfinite", {}).get("skipped", []))

    def on_before_optimizer_step(self, optimizer) -> None:
        """Check and log the step: runs after the backward of its last micro-batch, before the update (and
        before gradient clipping). Under DeepSpeed Lightning calls it after every micro-batch; only the engine's
        accumulation boundary is a step. A non-finite loss or gradient norm stops here, before the update, or
        (``train.nonfinite=skip``) drops the gradients, so that the optimizer leaves every weight as it is."""
        engine = getattr(self.trainer.strategy, "deepspeed_engine", None)
        if engine is not None and not engine.is_gradient_accumulation_boundary():
            return
        now, s = time.perf_counter(), self._step_sums
        totals = torch.tensor([s["loss"], s["tokens"], s["pad"], s["supervised"]], dtype=torch.float64,
                              device=self.device)
        loss, tokens, pad, supervised = self.trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        metrics = {"train/loss": loss / max(1.0, supervised),
                   "train/tokens_per_s": tokens / max(now - self._step_start, 1e-9),
                   "train/pad_fraction": pad / max(1.0, tokens + pad), "train/supervised_tokens": supervised,
                   "train/lr": optimizer.param_groups[0]["lr"], "train/epoch": float(self.current_epoch)}
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:  # under DeepSpeed the engine owns (and clips) the partitioned gradients
            metrics["train/grad_norm"] = float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        if torch.cuda.is_available():
            metrics["train/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        # the loss and norm are reduced over ranks, so every rank takes the same decision; under fp16 AMP
        # the GradScaler skips a step with overflowing gradients itself (and lowers its scale)
        grad_norm = None if getattr(self.trainer.precision_plugin, "scaler", None) else metrics.get("train/grad_norm")
        if self.guard.check(optimizer_steps(self.trainer) + 1, metrics["train/loss"], grad_norm):
            self.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
        if self.guard.config.mode == "skip":
            metrics["train/skipped_steps"] = float(len(self.guard.skipped))
        loss = metrics.pop("train/loss")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, rank_zero_only=True)
        self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._step_sums = {"loss": 0.0, "tokens": 0, "pad": 0, "supervised": 0}
        self._step_start = now

    def configure_optimizers(self):
        total = planned_steps(self.trainer)
        optimizer, scheduler = build_optimizer(self.model, self.optim_cfg, total,
                                               cpu_offload=optimizer_offloaded(self.trainer.strategy))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def planned_steps(trainer: L.Trainer) -> int:
    """The fit's optimizer-step count, as ``trainer.estimated_stepping_batches`` computes it, but from the
    datamodule's ``micro_batches_per_epoch()`` when it has one. Lightning's property builds the train
    dataloader when called in ``configure_optimizers``, before a resumed fit restores its loops; the fit then
    keeps that loader and never loads the checkpoint's data position into it (Lightning issue #20550), so a
    resumed epoch replayed its first batches. A datamodule without that method gets Lightning's estimate."""
    per_epoch = getattr(trainer.datamodule, "micro_batches_per_epoch", None)
    if per_epoch is None or trainer.limit_train_batches != 1.0 or trainer.overfit_batches:
        return int(trainer.estimated_stepping_batches)
    if trainer.max_epochs == -1:  # step-limited
        return trainer.max_steps
    total = -(-per_epoch() // trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
    return min(total, trainer.max_steps) if trainer.max_steps != -1 else total
