"""The training data pipeline as a LightningDataModule: read → select → template → pack → batch."""

from __future__ import annotations

import lightning as L
from transformers import PreTrainedTokenizerBase

from dasd.data.packing import PackCollator, PackedDataset, PackingReport, pack_samples
from dasd.data.records import ReadReport, read_records
from dasd.data.sampler import ResumableDataLoader, StepBatchSampler
from dasd.data.template import ChatTemplater, TokenizedSample
from dasd.utils.logging import get_logger

log = get_logger(__name__)


class SFTDataModule(L.LightningDataModule):
    """Packed SFT data from a file of records.

    Args:
        path: JSONL file in the released record format.
        tokenizer: the student's tokenizer.
        selector: picks the training response(s) per question (``select(records) -> (records, report)``).
        cutoff_len: pack capacity in tokens; longer samples are dropped and counted.
        micro_batch_size: packs per micro-batch per device.
        accumulate: gradient-accumulation micro-batches per optimizer step.
        system_prompt / end_of_turn: see ``ChatTemplater``.
        on_error: "raise" (stop at the first bad record) or "skip" (skip, count, report).
        seed: order of packs per epoch.
        max_samples: keep only the first N selected records (debugging); None keeps all.
    """

    def __init__(self, path: str, tokenizer: PreTrainedTokenizerBase, selector, cutoff_len: int,
                 micro_batch_size: int = 1, accumulate: int = 1, system_prompt: str | None = None,
                 end_of_turn: str = "auto", on_error: str = "raise", seed: int = 42,
                 max_samples: int | None = None, num_workers: int = 0) -> None:
        super().__init__()
        self.path, self.tokenizer, self.selector = path, tokenizer, selector
        self.cutoff_len, self.micro_batch_size, self.accumulate = cutoff_len, micro_batch_size, accumulate
        self.templater = ChatTemplater(tokenizer, system_prompt=system_prompt, end_of_turn=end_of_turn)
        self.on_error, self.seed, self.max_samples, self.num_workers = on_error, seed, max_samples, num_workers
        self.samples: list[TokenizedSample] = []
        self.dataset: PackedDataset | None = None
        self.read_report: ReadReport | None = None
        self.selection_report: dict = {}
        self.packing_report: PackingReport | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        records, self.read_report = read_records(self.path, on_error=self.on_error)
        for skip in self.read_report.skipped:
            log.warning("skipped record: %s", skip)
        records, self.selection_report = self.selector.select(records)
        if self.max_samples is not None:
            records = records[: self.max_samples]
        if not records:
            raise ValueError(f"{self.path}: no records left to train on ({self.read_report.summary()})")
        self.samples = [self.templater.render(r) for r in records]
        packs, self.packing_report = pack_samples(self.samples, self.cutoff_len)
        if not packs:
            raise ValueError(f"{self.path}: every sample is longer than cutoff_len={self.cutoff_len}")
        for uuid, length in self.packing_report.dropped_overlong:
            log.warning("dropped over-long sample %s: %d tokens > cutoff_len %d", uuid, length, self.cutoff_len)
        self.dataset = PackedDataset(self.samples, packs)
        log.info("data: %s | selection: %s | packing: %s", self.read_report.summary(), self.selection_report,
                 self.packing_report.summary())

    def report(self) -> dict:
        """Counts of every stage of the pipeline (for the manifest and the logger)."""
        return {"read": self.read_report.summary() if self.read_report else None,
                "selection": self.selection_report,
                "packing": self.packing_report.summary() if self.packing_report else None}

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = StepBatchSampler([self.dataset.supervised_tokens(p) for p in range(len(self.dataset))],
                                   self.micro_batch_size, self.accumulate, world, rank, self.seed)
        if sampler.repeated:
            log.warning("%d packs repeated to give each of %d ranks full micro-batches", sampler.repeated, world)
        progress = (lambda: (trainer.global_step, trainer.current_epoch)) if trainer else (lambda: (0, 0))
        return ResumableDataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                   collate_fn=PackCollator(self.tokenizer.pad_token_id), progress=progress)
