"""``callbacks=mixed_policy``: a mixed-policy revision round between epochs (spec §7), on any stage.

At the end of epoch e (when another epoch follows), the weights just exported by ``HFCheckpoint``
(``checkpoints/hf/epoch_<e>``) answer a sample of this stage's training questions; the truncated answers are
cut, continued by the teacher and filtered (``dasd.mixed.revise``), and the surviving samples join the
stage's own (off-policy) data for epoch e+1 (``mixed/round_<e+1>/``). Each round replaces the previous
round's samples. The LR schedule is stretched to the new epoch length (same warmup, cosine to min_lr at
the new end). The round is part of the Lightning checkpoint: a resumed run trains on the same data.

Several ranks: rank 0 runs the round while the others wait for its done (or error) marker in the round folder
(``dasd.utils.sync``), polling, not in a collective, so a round may take longer than the process group's
timeout; a cheap barrier follows. A relaunch resumed from a checkpoint reaches the same marker key
(``round k at step s``): rank 0 removes the markers of an earlier attempt before a barrier that the others
pass before they look (and the markers carry the launch's identity under torchrun/srun as well).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from dasd.data.datamodule import SFTDataModule
from dasd.data.sampler import StepBatchSampler
from dasd.mixed.report import log_round
from dasd.mixed.round import build_spec, draw, run_round
from dasd.training.offload import training_state_offloaded
from dasd.training.optim import OptimConfig, retarget_schedule, warmup_steps
from dasd.utils.logging import get_logger
from dasd.utils.steps import optimizer_steps
from dasd.utils.sync import RankZeroWork

log = get_logger(__name__)


class MixedPolicyRevision(L.Callback):
    """Args:
        datamodule: the stage's data (its selected records give the questions; it receives the new samples).
        run_dir: the run folder (rounds go to ``<run_dir>/mixed/round_<k>``).
        hf_dir: where ``HFCheckpoint`` writes ``epoch_<e>`` (the weights the student engine loads).
        settings: the ``mixed`` config as a dict (conf/mixed/default.yaml).
        filters: the data-curation filter config (dict) applied to the assembled responses.
        optim: the optimizer config (to stretch the schedule).
        every_n_epochs: revise after every n-th epoch.
    """

    def __init__(self, datamodule: SFTDataModule, run_dir: str | Path, hf_dir: str | Path, mixed: dict,
                 filters: dict | None, optim: OptimConfig, every_n_epochs: int = 1) -> None:
        """``mixed``: the ``mixed`` group's settings; ``filters``: the ``filters`` group (None: no filter);
        built from ``conf/callbacks/mixed_policy.yaml`` with the run's values (dasd.recipes.components)."""
        self.dm, self.run_dir, self.hf_dir = datamodule, Path(run_dir), Path(hf_dir)
        self.settings, self.filters, self.optim, self.every = mixed, filters, optim, max(1, every_n_epochs)
        self.round: int | None = None  # the round whose samples the current data holds
        self.total_steps: int | None = None  # the stretched schedule length
        self.warmup: int | None = None

    # ----------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {"round": self.round, "total_steps": self.total_steps, "warmup": self.warmup,
                "epoch_base": list(self.dm.epoch_base)}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.total_steps, self.warmup = state["round"], state["total_steps"], state["warmup"]
        if self.round is not None:  # a resumed run trains on the data it was training on
            self._add(self.round)
            self.dm.epoch_base = tuple(state["epoch_base"])

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.warmup is None:
            self.warmup = warmup_steps(int(trainer.estimated_stepping_batches), self.optim.warmup_ratio)
        if self.total_steps is not None:  # the restored scheduler has the original length
            retarget_schedule(trainer.lr_scheduler_configs[0].scheduler, self.optim, self.total_steps, self.warmup)

    # ------------------------------------------------------------------------------------- revision

    def folder(self, k: int) -> Path:
        return self.run_dir / "mixed" / f"round_{k}"

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        e = trainer.current_epoch
        if e + 1 >= trainer.max_epochs or (e + 1) % self.every:
            return
        k = e + 1
        stats = None
        work = RankZeroWork(self.folder(k), "round", what=f"mixed-policy round {k}")
        key = f"round {k} at step {trainer.global_step}"
        with training_state_offloaded(trainer, module, self.settings.get("offload_training_state", True)):
            if trainer.is_global_zero:
                work.clear()  # a marker left by an earlier attempt at this round must not release the others
            trainer.strategy.barrier("mixed_policy_start")  # cheap: every rank has just finished the epoch
            if trainer.is_global_zero:
                with work.signal(key):
                    stats = self._revise(k, self.hf_dir / f"epoch_{e}")
            else:  # no collective while rank 0 works: a round may outlast the process group's timeout
                work.wait(key)
            trainer.strategy.barrier("mixed_policy_round")  # cheap: the round is over
        self._add(k)
        self.dm.epoch_base = (k, optimizer_steps(trainer))
        self._stretch(trainer)
        if stats is not None:
            log_round(trainer.loggers, stats, self.folder(k) / "cutoff_ratio.png", step=optimizer_steps(trainer))

    def _revise(self, k: int, weights: Path) -> dict:
        if not (weights / "config.json").is_file():
            raise RuntimeError(f"mixed-policy revision needs the HF checkpoint of this epoch at {weights} "
                               "(written by HFCheckpoint before this callback runs)")
        s = self.settings
        questions = draw(self.dm.selected_records(), s["n_questions"], s["seed"] + k)
        t = self.dm.templater
        spec = build_spec(s, round_index=k, student_model=str(weights), system_prompt=t.system_prompt,
                          end_of_turn=t.end_of_turn, filters=self.filters, cutoff_len=self.dm.cutoff_len)
        stats = run_round(self.folder(k), questions, spec, transport=s["transport"], python=s.get("python"))
        log.info("mixed-policy round %d: %d/%d rollouts truncated, %d samples added for epoch %d",
                 k, stats["truncated"], stats["questions"], stats["kept"], k)
        return stats

    def _add(self, k: int) -> None:
        records = self.folder(k) / "mixed.jsonl"
        if not records.is_file() or records.stat().st_size == 0:
            log.warning("mixed-policy round %d kept no samples; the next epoch trains on the stage's data alone", k)
            self.dm.set_extra(None)
        else:
            extra = self.dm.derive(str(records), prefiltered=True)  # the round filtered (and counted) them
            extra.setup("fit")
            self.dm.set_extra(extra, round=k)
        self.round = k

    def _stretch(self, trainer: L.Trainer) -> None:
        """New schedule length: the steps done plus the remaining epochs at the new data's epoch length."""
        sampler = StepBatchSampler([self.dm.dataset.supervised_tokens(p) for p in range(len(self.dm.dataset))],
                                   self.dm.micro_batch_size, self.dm.accumulate, trainer.world_size,
                                   trainer.global_rank, self.dm.seed)
        remaining = trainer.max_epochs - (trainer.current_epoch + 1)
        self.total_steps = optimizer_steps(trainer) + remaining * sampler.steps_per_epoch
        retarget_schedule(trainer.lr_scheduler_configs[0].scheduler, self.optim, self.total_steps, self.warmup)
