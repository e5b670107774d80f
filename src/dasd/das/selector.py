"""Divergence-aware sampling (spec §5): score every filtered candidate sentence by sentence under the teacher
and the pre-distillation student, and keep per question the candidate richest in Teacher Sentences.

The data module drives a selector in three calls: ``bind`` (data identity and chat settings), ``observe`` for
each candidate that passed the filters (scores it unless the score store has it), then ``select``. Scores
live in a ``ScoreStore`` keyed by the scoring student, the teacher tokenizer, the data files, the template
settings and the segmentation version, so another β or rule re-selects without rescoring.

Per candidate:
1. sentences: ``segment(output)`` (character spans; think tags belong to no sentence);
2. teacher: the stored token ids and logprobs, each token placed at its first character (harmony
   ``token_spans`` when the record has them, else the teacher tokenizer's byte-level decode, which must
   reproduce ``output``), summed per sentence;
3. student: the scoring student teacher-forced on the fully templated sample (system prompt + question
   through the chat template, then the response verbatim and the end-of-turn token) through the engine's
   ``score_batch`` (HF chunked or vLLM prompt logprobs), placed by the student tokenizer's offsets;
4. labels at β: Teacher (p_T − p_S > β), Student (p_S − p_T > β), Shared otherwise; a sentence without a
   token under either tokenizer is unlabeled and not counted.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dasd.das import align
from dasd.das.forced import PlainRendering
from dasd.das.report import summary as details_summary
from dasd.das.scores import CandidateScores, ScoreStore, Summary, store_key
from dasd.das.segment import SEGMENTATION_VERSION, segment
from dasd.data.cache import tokenizer_fingerprint
from dasd.data.records import Record
from dasd.data.selection import RandomSelector, question_key
from dasd.generation.registry import SCORING_ENGINES, build_engine
from dasd.models.student import load_tokenizer
from dasd.text.harmony import parse_harmony
from dasd.utils.hashing import model_fingerprint
from dasd.utils.logging import get_logger

log = get_logger(__name__)

ALIGNMENT_VERSION = 1
RULES = ("teacher_count", "teacher_share", "longest", "min_teacher_count")


@dataclass
class _Pending:
    uuid: str
    spans: np.ndarray
    owner: np.ndarray
    teacher: align.SentenceLogprobs
    prompt_ids: list[int]
    completion_ids: list[int]
    student_starts: np.ndarray


class DivergenceSelector:
    """Keep per question the candidate with the best score under ``rule`` (ties: fewer Student Sentences,
    then a seeded random draw).

    Args:
        beta: the threshold on p_T − p_S of a Teacher Sentence (and p_S − p_T of a Student Sentence).
        rule: ``teacher_count`` (most Teacher Sentences: DAS), ``teacher_share`` (highest share of Teacher
            Sentences among labeled sentences), ``longest`` (most student tokens), ``min_teacher_count``
            (fewest Teacher Sentences): the provenance paper's ablation.
        seed: the tie-break draws; with the same seed, a β so large that nothing is labeled picks exactly
            what ``RandomSelector(seed)`` picks.
        scoring_student: the model that scores the student side; the pre-distillation student by default,
            also for stage 2 (spec §5.3b).
        teacher_tokenizer: decodes teacher token ids into character offsets (not needed for records that carry
            harmony ``token_spans``).
        teacher_format: ``plain`` (token ids decode to ``output``) or ``harmony`` (gpt-oss channels, converted
            to ``<think>`` form; used for the released Logprob data, whose ids carry no spans).
        engine: ``hf`` or ``vllm``; ``engine_args`` go to its constructor (device, dtype, score_chunk_size, ...).
        batch_size: candidates per ``score_batch`` call. ``flush_every``: candidates per store part.
        store_dir: root of the score stores (one sub-folder per key).
        min_chars: the segmentation's minimum sentence length.
        num_examples: questions whose candidates are kept for the HTML example view.
        on_error: ``raise`` stops at a candidate whose teacher tokens do not decode to its output; ``skip``
            drops it from the pool and counts it.
    """

    name = "divergence"

    def __init__(self, beta: float = 0.1, rule: str = "teacher_count", seed: int = 42,
                 scoring_student: str | None = None, teacher_tokenizer: str | None = None,
                 teacher_format: str = "plain", engine: str = "hf", engine_args: dict | None = None,
                 batch_size: int = 8, flush_every: int = 512, store_dir: str | None = None, min_chars: int = 3,
                 num_examples: int = 6, on_error: str = "raise", name: str = "divergence") -> None:
        if rule not in RULES:
            raise ValueError(f"sampler.rule must be one of {RULES}, got {rule!r}")
        if engine not in SCORING_ENGINES:
            raise ValueError(f"sampler.engine must be one of {SCORING_ENGINES}, got {engine!r}")
        if teacher_format not in ("plain", "harmony"):
            raise ValueError(f"sampler.teacher_format must be plain or harmony, got {teacher_format!r}")
        if scoring_student is None:
            raise ValueError("sampler.scoring_student is required (the pre-distillation student)")
        self.name, self.beta, self.rule, self.seed = name, float(beta), rule, seed
        self.scoring_student, self.teacher_tokenizer_name = scoring_student, teacher_tokenizer
        self.teacher_format, self.engine_name, self.engine_args = teacher_format, engine, dict(engine_args or {})
        self.batch_size, self.flush_every, self.min_chars = batch_size, flush_every, min_chars
        self.store_dir, self.num_examples, self.on_error = store_dir, num_examples, on_error
        self.store: ScoreStore | None = None
        self._engine = None
        self._teacher_tok = None
        self._pending: list[_Pending] = []
        self._done: list[CandidateScores] = []
        self._scored: set[str] = set()
        self._failed: dict[str, str] = {}
        self._examples: dict[str, list[Record]] = {}
        self.stats = Counter()
        self.details: dict[str, np.ndarray] | None = None
        self.examples: list[dict] = []

    # ------------------------------------------------------------------ identity and setup

    def cache_identity(self) -> dict:
        """What the selection depends on (the data module's cache key): not the engine or batch sizes."""
        return {"name": self.name, "beta": self.beta, "rule": self.rule, "seed": self.seed,
                "scoring_student": model_fingerprint(self.scoring_student), "teacher_format": self.teacher_format,
                "teacher_tokenizer": self.teacher_tokenizer_name, "min_chars": self.min_chars,
                "segmentation": SEGMENTATION_VERSION, "alignment": ALIGNMENT_VERSION}

    def bind(self, *, data: dict, system_prompt: str | None, end_of_turn: str,
             tokenizer_fingerprint_of_samples: str | None = None) -> None:
        """Open the score store for this data and chat settings; load the scoring student's tokenizer. When the
        data module's samples were tokenized by the same tokenizer (``tokenizer_fingerprint_of_samples``),
        ``observe`` takes the prompt and response ids from the rendered sample instead of templating again."""
        self.tokenizer = load_tokenizer(self.scoring_student)
        self.rendering = PlainRendering(self.tokenizer, system_prompt, end_of_turn)
        self.templater = self.rendering.templater
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        self._reuse_samples = fingerprint == tokenizer_fingerprint_of_samples
        parts = {"scoring_student": model_fingerprint(self.scoring_student),
                 "student_tokenizer": fingerprint, "data": data,
                 "system_prompt": system_prompt, "end_of_turn": self.templater.end_of_turn,
                 "teacher_tokenizer": self.teacher_tokenizer_name, "teacher_format": self.teacher_format,
                 "segmentation": SEGMENTATION_VERSION, "min_chars": self.min_chars, "alignment": ALIGNMENT_VERSION,
                 "logprobs": "raw"}
        key = store_key(**parts)
        root = Path(self.store_dir) if self.store_dir else Path.cwd() / ".dasd_scores"
        self.store = ScoreStore(root / key, meta={**parts, "scoring_student_path": self.scoring_student,
                                                  "engine": self.engine_name})
        from filelock import FileLock

        self._lock = FileLock(str(self.store.folder / ".lock"))  # one scorer per store; released by select()
        self._lock.acquire()
        self._scored = self.store.scored_uuids()
        self.stats = Counter(from_store=0, scored=0, student_tokens=0)
        self._t0 = time.perf_counter()
        log.info("DAS scores: %s (%d candidates already scored)", self.store.folder, len(self._scored))

    def _teacher_tokenizer(self):
        if self._teacher_tok is None:
            if not self.teacher_tokenizer_name:
                raise ValueError("sampler.teacher_tokenizer is required to decode teacher token ids (set it to the "
                                 "teacher's hub id or local folder)")
            from transformers import AutoTokenizer

            self._teacher_tok = AutoTokenizer.from_pretrained(self.teacher_tokenizer_name)
        return self._teacher_tok

    def _engine_instance(self):
        if self._engine is None:
            log.info("DAS: loading the scoring student %s (%s engine)", self.scoring_student, self.engine_name)
            self._engine = build_engine(self.engine_name, self.scoring_student, self.engine_args,
                                        allowed=SCORING_ENGINES, what="sampler.engine")
        return self._engine

    # ------------------------------------------------------------------ scoring

    def observe(self, item, sample=None) -> None:
        """Score one filtered candidate (a ``TeacherRecord``, and its rendered ``TokenizedSample``) unless the
        store already has it."""
        record: Record = item.record
        key = question_key(record)
        if key in self._examples or len(self._examples) < self.num_examples:
            self._examples.setdefault(key, []).append(record)
        if record.uuid in self._scored:
            self.stats["from_store"] += 1
            return
        if item.token_ids is None or item.logprobs is None:
            raise ValueError(f"{record.source}: sampler=divergence needs the teacher's token ids and logprobs "
                             "(data.format=generated shards, or the released data with data.logprobs=<Parquet>)")
        try:
            starts = self._teacher_starts(item)
        except align.AlignmentError as e:
            if self.on_error == "raise":
                raise align.AlignmentError(f"{record.source} (uuid {record.uuid}): {e}") from None
            self._failed[record.uuid] = str(e)
            return
        spans = segment(record.output, min_chars=self.min_chars)
        owner = align.owner_of_chars(record.output, spans)
        teacher = align.aggregate(starts, np.asarray(item.logprobs, np.float64), owner, len(spans))
        forced = self.rendering.render(record.input, record.output)  # the student's side (dasd.das.forced)
        prompt, completion = forced.prompt_ids, forced.completion_ids
        if sample is not None and self._reuse_samples:  # the training sample is exactly what is scored
            n_prompt = len(sample.input_ids) - sample.num_supervised
            prompt = list(sample.input_ids[:n_prompt])
            if list(sample.input_ids[n_prompt:n_prompt + len(completion)]) != completion:  # end tokens may follow
                raise align.AlignmentError(f"{record.source} (uuid {record.uuid}): the offsets tokenization of "
                                           "the response differs from the training sample's")
        self._pending.append(_Pending(record.uuid, spans, owner, teacher, prompt, completion, forced.starts))
        self._scored.add(record.uuid)
        if len(self._pending) >= self.batch_size:
            self._score_pending()

    def _teacher_starts(self, item) -> np.ndarray:
        output, ids = item.record.output, [int(i) for i in item.token_ids]
        spans = item.extra.get("token_spans") if item.extra else None
        if spans is None and self.teacher_format == "harmony":
            h = parse_harmony(ids, self._teacher_tokenizer())
            if h.output != output:
                raise align.AlignmentError("the harmony conversion of the teacher tokens differs from output")
            spans = h.token_spans
        return align.teacher_token_starts(output, ids, None if spans is not None else self._teacher_tokenizer(),
                                          token_spans=spans)

    def _score_pending(self) -> None:
        if not self._pending:
            return
        engine = self._engine_instance()
        results = engine.score_batch([(p.prompt_ids, p.completion_ids) for p in self._pending])
        for p, lps in zip(self._pending, results, strict=True):
            student = align.aggregate(p.student_starts, np.asarray(lps, np.float64), p.owner, len(p.spans))
            t = p.teacher
            self._done.append(CandidateScores(
                p.uuid, p.spans, t.sum_logprob, t.num_tokens, student.sum_logprob, student.num_tokens,
                t.total_logprob, int(t.num_tokens.sum() + t.unassigned_tokens), student.total_logprob,
                len(p.completion_ids)))
            self.stats["student_tokens"] += len(p.completion_ids)
        self.stats["scored"] += len(self._pending)
        self._pending = []
        if len(self._done) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if self._done:
            self.store.write(self._done)
            self._done = []
            dt = time.perf_counter() - self._t0
            log.info("DAS: scored %d candidates (%d student tokens, %.0f tokens/s)", self.stats["scored"],
                     self.stats["student_tokens"], self.stats["student_tokens"] / max(dt, 1e-9))

    def finish(self) -> None:
        """Score what is queued, write it, and release the engine."""
        self._score_pending()
        self._flush()
        self.stats["seconds"] = round(time.perf_counter() - getattr(self, "_t0", time.perf_counter()), 3)
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # ------------------------------------------------------------------ selection

    def _key(self, i: int, s: Summary) -> tuple:
        nt, ns = int(s.n_teacher[i]), int(s.n_student[i])
        labeled = nt + ns + int(s.n_shared[i])
        if self.rule == "teacher_count":
            return (nt, -ns)
        if self.rule == "teacher_share":
            return (nt / labeled if labeled else 0.0, -ns)
        if self.rule == "longest":
            return (int(s.num_tokens[i]),)
        return (-nt, ns)  # min_teacher_count

    def select(self, records: list[Record]) -> tuple[list[Record], dict]:
        try:
            self.finish()
        finally:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()
        summary = self.store.summarize(self.beta)
        index = summary.index()
        pool = [r for r in records if r.uuid not in self._failed]
        missing = [r.uuid for r in pool if r.uuid not in index]
        if missing:
            raise RuntimeError(f"DAS: {len(missing)} candidates have no scores in {self.store.folder} "
                               f"(first: {missing[:3]}); delete the folder to rescore")
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in pool:
            groups[question_key(r)].append(r)
        rng = random.Random(self.seed)
        chosen: list[Record] = []
        for cands in groups.values():
            if len(cands) == 1:
                chosen.append(cands[0])
                continue
            keys = [self._key(index[r.uuid], summary) for r in cands]
            best = max(keys)
            tied = [r for r, k in zip(cands, keys, strict=True) if k == best]
            chosen.append(tied[rng.randrange(len(tied))])
        random_pick, _ = RandomSelector(self.seed).select(pool)
        self.details = self._details(pool, summary, index, {r.uuid for r in chosen}, {r.uuid for r in random_pick})
        self.examples = self._example_cards({r.uuid for r in chosen}, {r.uuid for r in random_pick})
        report = {"sampler": self.name, "rule": self.rule, "beta": self.beta, "candidates": len(records),
                  "questions": len(groups), "selected": len(chosen), "not_selected": len(pool) - len(chosen),
                  "alignment_skipped": len(self._failed),
                  "alignment_skip_examples": list(self._failed.items())[:5],
                  "scoring": {"store": str(self.store.folder), "scored_now": self.stats["scored"],
                              "from_store": self.stats["from_store"],
                              "student_tokens": self.stats["student_tokens"],
                              "seconds": self.stats.get("seconds", 0.0), "engine": self.engine_name,
                              "scoring_student": self.scoring_student},
                  "das_vs_random": details_summary(self.details)}
        log.info("DAS (%s, beta=%g): %d of %d candidates kept for %d questions; scored %d now, %d from the store",
                 self.rule, self.beta, len(chosen), len(records), len(groups), self.stats["scored"],
                 self.stats["from_store"])
        return chosen, report

    def _details(self, pool: list[Record], s: Summary, index: dict[str, int], das: set[str],
                 rnd: set[str]) -> dict[str, np.ndarray]:
        rows = np.asarray([index[r.uuid] for r in pool], dtype=np.int64)
        return {"uuid": np.asarray([r.uuid for r in pool], dtype=str),
                "question": np.asarray([question_key(r) for r in pool], dtype=str),
                "n_teacher": s.n_teacher[rows], "n_student": s.n_student[rows], "n_shared": s.n_shared[rows],
                "n_unlabeled": s.n_unlabeled[rows], "num_tokens": s.num_tokens[rows],
                "p_teacher": s.p_teacher[rows].astype(np.float64), "p_student": s.p_student[rows].astype(np.float64),
                "das": np.asarray([r.uuid in das for r in pool]), "random": np.asarray([r.uuid in rnd for r in pool])}

    def _example_cards(self, das: set[str], rnd: set[str]) -> list[dict]:
        wanted = {r.uuid: r for recs in self._examples.values() for r in recs if r.uuid in das or r.uuid in rnd}
        scores = self.store.get(wanted)
        cards = []
        for recs in self._examples.values():
            for r in recs:
                if r.uuid not in scores:
                    continue
                sc = scores[r.uuid]
                pt, ps = sc.probabilities()
                labels = sc.labels(self.beta)
                samplers = [n for n, chosen in (("das", das), ("random", rnd)) if r.uuid in chosen]
                cards.append({"uuid": r.uuid, "question": r.input, "output": r.output, "spans": sc.spans.tolist(),
                              "labels": labels, "p_teacher": [None if np.isnan(x) else float(x) for x in pt],
                              "p_student": [None if np.isnan(x) else float(x) for x in ps],
                              "sampler": "+".join(samplers), "n_teacher": labels.count("teacher"),
                              "n_student": labels.count("student")})
        return cards

    def write_artifacts(self, folder: Path) -> None:
        """Selection details (one row per candidate) and example cards, next to the cached selection."""
        if self.details is None:
            return
        np.savez_compressed(folder / "das_details.npz", **self.details)
        (folder / "das_examples.json").write_text(json.dumps(self.examples))
