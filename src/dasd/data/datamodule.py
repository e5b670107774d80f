"""The training data pipeline as a LightningDataModule: read (streamed, validated) → template and tokenize →
filter → on-disk cache → select → pack → batch."""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
from filelock import FileLock
from transformers import PreTrainedTokenizerBase

from dasd.data import cache
from dasd.data.filters import FilterConfig, FilterInput, FilterReport, apply_filters, build_filters
from dasd.data.packing import PackCollator, PackedDataset, PackingReport, pack_samples
from dasd.data.records import Record, decode_line, jsonl_lines, think_output
from dasd.data.sampler import ResumableDataLoader, StepBatchSampler
from dasd.data.selection import KeepAllSelector, question_key
from dasd.data.sources import SourceReport, TeacherRecord, iter_generated, iter_released, join_logprobs
from dasd.data.template import ChatTemplater, TokenizedSample, student_prefix_chars
from dasd.text.grading import reference_answer
from dasd.utils.hashing import file_sha256
from dasd.utils.logging import get_logger
from dasd.utils.steps import optimizer_steps

log = get_logger(__name__)

CACHE_VERSION = 3  # bump when the tokenized format or the rendering changes (3: "\n" after end-of-turn)
SELECTED_FILE = "selected.jsonl"  # the selected records (no response text) of a cache entry


TEMPERATURE_CHECKS = ("warn", "error", "off")


def _record_of(item: TeacherRecord):
    return item.record


@dataclass(frozen=True)
class TemperatureCheck:
    """The stage's temperature against the one each record says it was sampled at (``temperature``, else
    ``meta.temperature``). mode: "warn" (once, with counts), "error" (stop) or "off"."""

    expected: float
    stage: str = ""
    mode: str = "warn"

    def __post_init__(self) -> None:
        if self.mode not in TEMPERATURE_CHECKS:
            raise ValueError(f"data.temperature_check must be one of {TEMPERATURE_CHECKS}, got {self.mode!r}")

    def run(self, temperatures: dict[str, int], path: str) -> dict:
        """Compare; warn or raise per ``mode``; the result for the data report. ``temperatures``: the read
        report's counts ("0.6" / "unknown" -> records)."""
        other = {t: n for t, n in temperatures.items()
                 if t != "unknown" and not math.isclose(float(t), self.expected, abs_tol=1e-6)}
        total, mismatched = sum(temperatures.values()), sum(other.values())
        result = {"expected": self.expected, "mode": self.mode, "records": total, "mismatched": mismatched,
                  "unknown": temperatures.get("unknown", 0), "temperatures": dict(temperatures)}
        if mismatched and self.mode != "off":
            at = (f"T={next(iter(other))}" if len(other) == 1 else
                  "other temperatures (" + ", ".join(f"T={t}: {n}" for t, n in sorted(other.items())) + ")")
            msg = (f"stage {self.stage} expects T={self.expected} but {mismatched} of {total} records were sampled "
                   f"at {at} (data.path={path})")
            if self.mode == "error":
                raise ValueError(msg + "; set data.temperature_check=warn (or off) to train on them anyway")
            log.warning("%s; data.temperature_check=error stops instead", msg)
        return result


def _selector_identity(selector) -> tuple:
    """What the cached selection depends on: ``cache_identity()`` when the selector has one, else its fields."""
    identity = getattr(selector, "cache_identity", None)
    return (type(selector).__name__, identity() if identity else vars(selector))


class SFTDataModule(L.LightningDataModule):
    """Packed SFT data from a file of records.

    Args:
        path: JSONL file (released record format, or generate.py shards with source_format="generated").
        tokenizer: the student's tokenizer.
        selector: picks the training response(s) per question (``select(records) -> (records, report)``).
        cutoff_len: pack capacity in tokens; longer samples are dropped and counted.
        micro_batch_size: packs per micro-batch per device.
        accumulate: gradient-accumulation micro-batches per optimizer step.
        system_prompt / end_of_turn: see ``ChatTemplater``.
        on_error: "raise" (stop at the first bad record) or "skip" (skip, count, report).
        seed: order of packs per epoch.
        max_samples: keep only the first N selected records (debugging); None keeps all.
        cache_dir: where tokenized datasets are cached (keyed by the file's sha256, the tokenizer, the
            template settings, the filters and the selector); None builds into a temporary folder.
        num_proc: processes that tokenize in parallel.
        filters: response filters (spec §4.3) applied before selection; None applies none.
        source_format: "released" (uuid, input, output, domain, meta) or "generated" (generate.py shards,
            whose finish reason and tool-call flags the filters use).
        logprobs_path: the released ``...-Logprob`` Parquet; its rows are joined to the records by uuid,
            and missing joins are errors (or skipped and counted with on_error="skip").
        mask_student_prefix: mixed-policy records train only on the teacher continuation (``ChatTemplater``).
        supervise_eot_newline: a "\n" after the end-of-turn token, supervised (``ChatTemplater``).
        temperature_check: compare the stage's temperature with the records' (``TemperatureCheck``); None: no check.

    Each cache entry also lists its selected records without their responses (``selected.jsonl``: uuid,
    question, domain, meta, source, the response length in student tokens and a reference answer), which
    the mixed-policy revision draws its questions from (``selected_records``).
    """

    def __init__(self, path: str, tokenizer: PreTrainedTokenizerBase, selector, cutoff_len: int,
                 micro_batch_size: int = 1, accumulate: int = 1, system_prompt: str | None = None,
                 end_of_turn: str = "auto", on_error: str = "raise", seed: int = 42,
                 max_samples: int | None = None, num_workers: int = 0, cache_dir: str | None = None,
                 num_proc: int = 1, filters: FilterConfig | None = None, source_format: str = "released",
                 logprobs_path: str | None = None, mask_student_prefix: bool = False,
                 supervise_eot_newline: bool = True, temperature_check: TemperatureCheck | None = None) -> None:
        super().__init__()
        self._args = dict(path=path, tokenizer=tokenizer, selector=selector, cutoff_len=cutoff_len,
                          micro_batch_size=micro_batch_size, accumulate=accumulate, system_prompt=system_prompt,
                          end_of_turn=end_of_turn, on_error=on_error, seed=seed, max_samples=max_samples,
                          num_workers=num_workers, cache_dir=cache_dir, num_proc=num_proc, filters=filters,
                          source_format=source_format, logprobs_path=logprobs_path,
                          mask_student_prefix=mask_student_prefix, supervise_eot_newline=supervise_eot_newline,
                          temperature_check=temperature_check)  # what ``derive`` starts from
        self.path, self.tokenizer, self.selector = path, tokenizer, selector
        self.cutoff_len, self.micro_batch_size, self.accumulate = cutoff_len, micro_batch_size, accumulate
        self.templater = ChatTemplater(tokenizer, system_prompt=system_prompt, end_of_turn=end_of_turn,
                                       mask_student_prefix=mask_student_prefix,
                                       supervise_eot_newline=supervise_eot_newline)
        self.temperature_check, self.temperature_report = temperature_check, None
        self.on_error, self.seed, self.max_samples, self.num_workers = on_error, seed, max_samples, num_workers
        self.cache_dir, self.num_proc = cache_dir, num_proc
        if source_format not in ("released", "generated"):
            raise ValueError(f"data.format must be released or generated, got {source_format!r}")
        self.filter_cfg, self.source_format, self.logprobs_path = filters, source_format, logprobs_path
        self.join_summary: dict | None = None
        self.filter_report: dict | None = None
        self.filter_rows: list[list[str]] = []
        self.samples: Sequence[TokenizedSample] = []
        self.dataset: PackedDataset | None = None
        self.read_summary: dict | None = None
        self.selection_report: dict = {}
        self.cache_report: dict = {"enabled": cache_dir is not None}
        self.packing_report: PackingReport | None = None
        self._hashes: dict[str, str] = {}
        self.folder: Path | None = None  # the cache entry (selection artifacts such as DAS details live there)
        self.base_samples: Sequence[TokenizedSample] = []
        self.extra_report: dict | None = None  # samples added for later epochs (mixed-policy revision)
        self.epoch_base: tuple[int, int] = (0, 0)  # (epoch, global step) since which the data has its size

    def _cache_folder(self) -> Path:
        """The cache entry for these inputs and settings (a private temporary folder when caching is off)."""
        if self.cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dasd-data-")
            return Path(self._tmp.name) / "data"
        key = cache.cache_key(file=self._sha256(self.path), tokenizer=cache.tokenizer_fingerprint(self.tokenizer),
                              system_prompt=self.templater.system_prompt, end_of_turn=self.templater.end_of_turn,
                              mask_student_prefix=self.templater.mask_student_prefix,
                              supervise_eot_newline=self.templater.supervise_eot_newline,
                              selector=_selector_identity(self.selector),
                              max_samples=self.max_samples, on_error=self.on_error, format=self.source_format,
                              filters=self.filter_cfg.to_dict() if self.filter_cfg else None,
                              logprobs=self._sha256(self.logprobs_path) if self.logprobs_path else None,
                              version=CACHE_VERSION)
        return Path(self.cache_dir) / key

    def _stream(self) -> tuple[Iterator[TeacherRecord], SourceReport, SourceReport | None]:
        report = SourceReport(self.path)
        reader = iter_generated if self.source_format == "generated" else iter_released
        items = reader(self.path, on_error=self.on_error, report=report)
        joined = None
        if self.logprobs_path:  # the released Logprob Parquet: teacher token ids and logprobs by uuid
            joined = SourceReport(str(self.logprobs_path))
            items = join_logprobs(items, self.logprobs_path, on_error=self.on_error, report=joined)
        return items, report, joined

    def _build(self, folder: Path) -> None:
        """Stream read → tokenize → filter into a cache entry, then select. Memory holds the questions and
        per-sample metadata, never all responses or all tokens."""
        items, read, joined = self._stream()
        filters = build_filters(self.filter_cfg) if self.filter_cfg else []
        freport = FilterReport(order=[f.name for f in filters],
                               max_examples=self.filter_cfg.max_examples if self.filter_cfg else 0)
        writer, index, light, info = cache.CacheWriter(folder), {}, [], {}
        observe = getattr(self.selector, "observe", None)  # DAS scores each kept candidate as it streams by
        if hasattr(self.selector, "bind"):
            self.selector.bind(data=self._data_identity(), system_prompt=self.templater.system_prompt,
                               end_of_turn=self.templater.end_of_turn,
                               tokenizer_fingerprint_of_samples=cache.tokenizer_fingerprint(self.tokenizer))
        for t, sample in cache.render_stream(self.templater, items, self.num_proc, record_of=_record_of):
            x = FilterInput.from_record(t.record, finish_reason=t.finish_reason, has_tool_call=t.has_tool_call,
                                        has_final=t.extra.get("has_final"), num_student_tokens=len(sample))
            if apply_filters([x], filters, report=freport)[0]:
                index[t.record.uuid] = writer.add(sample)
                light.append(replace(t.record, output=""))  # selection needs the question, not the response
                info[t.record.uuid] = response_tokens(self.templater, t.record, sample)
                if observe is not None:
                    observe(t, sample)
        selected, selection = self.selector.select(light)
        selected = selected[: self.max_samples] if self.max_samples is not None else selected
        report = {"read": read.summary(), "logprob_join": joined.summary() if joined else None,
                  "filters": freport.summary() if filters else None, "filter_rows": freport.table_rows(),
                  "selection": selection}
        if not selected:
            raise ValueError(f"{self.path}: no records left to train on ({report['read']}, filters: "
                             f"{report['filters']})")
        if read.skipped:
            log.warning("skipped records of %s: %s", self.path, dict(read.skipped))
        if read.converted or read.with_logprobs:
            log.info("%s: %d harmony outputs converted to <think> form, %d records with teacher token logprobs",
                     self.path, read.converted, read.with_logprobs)
        if filters:
            log.info("filters: kept %d of %d (%s)", freport.kept, freport.total,
                     {n: st.dropped for n, st in freport.stats.items()})
        if hasattr(self.selector, "write_artifacts"):
            self.selector.write_artifacts(writer.tmp)
        references = [""] * len(selected)  # of the selected records only: their responses are read back once
        for i, row in iter_source_rows([r.source for r in selected]):
            references[i] = reference_answer(think_output(row["output"]), row.get("meta"))
        with (writer.tmp / SELECTED_FILE).open("w", encoding="utf-8") as f:
            for r, reference in zip(selected, references, strict=True):
                f.write(json.dumps({"uuid": r.uuid, "question_key": question_key(r), "input": r.input,
                                    "domain": r.domain, "meta": r.meta, "source": r.source,
                                    "response_tokens": info[r.uuid], "reference": reference},
                                   ensure_ascii=False) + "\n")
        writer.finish([index[r.uuid] for r in selected], report)

    def _data_identity(self) -> dict:
        return {"file": self._sha256(self.path), "format": self.source_format,
                "logprobs": self._sha256(self.logprobs_path) if self.logprobs_path else None}

    def _sha256(self, path: str) -> str:
        """Each input file is hashed once (the cache key and the DAS score store both need it)."""
        if path not in self._hashes:
            self._hashes[path] = file_sha256(path)
        return self._hashes[path]

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        folder = self._cache_folder()
        cached = cache.load(folder) if self.cache_dir is not None else None
        self.cache_report = {"enabled": self.cache_dir is not None, "hit": cached is not None, "dir": str(folder)}
        if cached is None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder) + ".lock"):  # concurrent ranks/jobs: one builds, the others load its result
                cached = cache.load(folder) if self.cache_dir is not None else None
                if cached is None:
                    self._build(folder)
                    cached = cache.load(folder)
        else:
            log.info("tokenized data from cache %s", folder)
        self.folder = folder
        self.base_samples, saved = cached
        self.read_summary, self.join_summary = saved["read"], saved["logprob_join"]
        self.filter_report, self.filter_rows = saved["filters"], saved["filter_rows"]
        self.selection_report = saved["selection"]
        if self.temperature_check is not None:  # on a cache hit too: the counts are in the saved read report
            self.temperature_report = self.temperature_check.run(self.read_summary.get("temperatures", {}), self.path)
        self._pack(self.base_samples)
        log.info("data: %s | selection: %s | packing: %s", self.read_summary, self.selection_report,
                 self.packing_report.summary())

    def _pack(self, samples: Sequence[TokenizedSample]) -> None:
        packs, self.packing_report = pack_samples(samples, self.cutoff_len)
        if not packs:
            raise ValueError(f"{self.path}: every sample is longer than cutoff_len={self.cutoff_len}")
        for uuid, length in self.packing_report.dropped_overlong:
            log.warning("dropped over-long sample %s: %d tokens > cutoff_len %d", uuid, length, self.cutoff_len)
        self.samples = samples
        self.dataset = PackedDataset(samples, packs)

    def selected_records(self) -> list[dict]:
        """The selected records of this data without their responses (see the class docstring)."""
        with (self.folder / SELECTED_FILE).open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def derive(self, path: str, source_format: str = "released", selector=None,
               prefiltered: bool = False) -> SFTDataModule:
        """Another data module over ``path`` with this one's tokenizer, template, filters and cache settings.
        ``prefiltered``: the records passed the filters where they were made (a mixed-policy round, which
        counts its drops in its ``stats.json``), so they are not filtered, nor counted, a second time."""
        args = {**self._args, "path": path, "source_format": source_format, "logprobs_path": None,
                "selector": selector or KeepAllSelector(), "max_samples": None, "temperature_check": None}
        if prefiltered:
            args["filters"] = None
        return SFTDataModule(**args)

    def set_extra(self, extra: SFTDataModule | None, **info) -> None:
        """Train on this data plus ``extra``'s samples from the next dataloader on (None: this data alone)."""
        samples = self.base_samples if extra is None else _Concat(self.base_samples, extra.samples)
        self._pack(samples)
        self.extra_report = None if extra is None else {**info, "path": extra.path, "samples": len(extra.samples),
                                                         "data": extra.report(), "total": len(samples)}
        log.info("training data: %d samples (%d added) | packing: %s", len(samples),
                 0 if extra is None else len(extra.samples), self.packing_report.summary())

    def report(self) -> dict:
        """Counts of every stage of the pipeline (for the manifest and the logger)."""
        return {"read": self.read_summary, "logprob_join": self.join_summary, "filters": self.filter_report,
                "selection": self.selection_report, "temperature": self.temperature_report,
                "cache": self.cache_report, "extra": self.extra_report,
                "packing": self.packing_report.summary() if self.packing_report else None}

    def batch_sampler(self) -> StepBatchSampler:
        """This rank's batches of the current data (world, rank and DeepSpeed's full steps from the trainer)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        full_steps = bool(trainer and trainer.strategy.handles_gradient_accumulation)  # DeepSpeed
        return StepBatchSampler([self.dataset.supervised_tokens(p) for p in range(len(self.dataset))],
                                self.micro_batch_size, self.accumulate, world, rank, self.seed, full_steps=full_steps)

    def micro_batches_per_epoch(self) -> int:
        """Micro-batches per epoch on each rank, without building a dataloader: the LR schedule is sized from
        it before a resumed fit restores its data position (``dasd.training.module.planned_steps``)."""
        return len(self.batch_sampler())

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = self.trainer
        sampler = self.batch_sampler()
        if trainer:  # a loader built at an epoch start (reload) must not iterate in epoch 0's order: Lightning
            sampler.set_epoch(trainer.current_epoch)  # starts iterating it before it calls set_epoch
        if sampler.repeated:
            log.warning("%d packs repeated to give each of %d ranks full micro-batches%s", sampler.repeated,
                        sampler.world, f" and every optimizer step its {self.accumulate} micro-batches"
                        if trainer and trainer.strategy.handles_gradient_accumulation else "")
        progress = (lambda: (optimizer_steps(trainer), trainer.current_epoch)) if trainer else (lambda: (0, 0))
        return ResumableDataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                   collate_fn=PackCollator(self.tokenizer.pad_token_id), progress=progress,
                                   base=lambda: self.epoch_base)


def response_tokens(templater: ChatTemplater, record: Record, sample: TokenizedSample) -> int:
    """Student tokens of the record's response without the end tokens, whatever the loss mask: the
    supervised tokens less the end tokens (``templater.end_ids``), plus a mixed-policy record's student prefix when
    ``mask_student_prefix`` leaves it unsupervised (tokenized on its own, as ``ChatTemplater.render`` does)."""
    n = sample.num_supervised - len(templater.end_ids)
    if templater.mask_student_prefix:
        boundary = student_prefix_chars(record)
        if boundary is not None:
            n += len(templater.tokenizer.encode(record.output[:boundary], add_special_tokens=False))
    return n


def iter_source_rows(sources: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """``(i, row)`` for each ``sources[i]`` = ``file:line`` (``Record.source``): the JSON object on that line,
    in file order, each file streamed once, by the readers' own line reader (``records.jsonl_lines``), so the
    line numbers are the ones the records were read with. ValueError names the locations that are not in their
    file (was it changed?)."""
    wanted: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, src in enumerate(sources):
        path, _, line = src.rpartition(":")
        if not path or not line.isdigit():
            raise ValueError(f"not a file:line location: {src!r}")
        wanted[path][int(line)].append(i)
    found: set[int] = set()
    for path, lines in wanted.items():
        last = max(lines)
        for n, raw in jsonl_lines(path):
            if n in lines:
                row = decode_line(raw, path, n)
                for i in lines[n]:
                    found.add(i)
                    yield i, row
            if n >= last:
                break
    missing = [sources[i] for i in range(len(sources)) if i not in found]
    if missing:
        raise ValueError(f"records not found at their source lines (was the file changed?): {missing[:5]}")


def source_rows(sources: Sequence[str]) -> list[dict]:
    """The JSON objects at ``sources`` (``file:line``), in the given order (``iter_source_rows``)."""
    out: list[dict | None] = [None] * len(sources)
    for i, row in iter_source_rows(sources):
        out[i] = row
    return out


class _Concat(Sequence):
    """Two sample sequences as one (the base data and the samples added for later epochs)."""

    def __init__(self, a: Sequence[TokenizedSample], b: Sequence[TokenizedSample]) -> None:
        self.a, self.b = a, b

    def __len__(self) -> int:
        return len(self.a) + len(self.b)

    def __getitem__(self, i: int) -> TokenizedSample:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]
