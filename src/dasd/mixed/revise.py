"""One mixed-policy revision round (spec §7), in two phases that each load one model.

``rollout``: the student (the current weights, an HF directory) answers each question through the engine
interface with the training system prompt and chat template, with a budget of
``floor(cap_factor × |y_T|)`` tokens (|y_T| = the selected teacher response's length in student tokens).
Rollouts that stopped on that limit are the truncated set.

``continue``: each truncated rollout is cut at a seeded point in [⌈L/2⌉, L−1] (``cut.choose_cut``), the
teacher continues from the student's prefix in token space (``continuation``) with at most the tokens the
sample has left under ``cutoff_len`` (``continuation_budget``; a prefix leaving none is dropped and counted
as ``prefix_too_long``), and the assembled
responses pass the data-curation filters plus "the continuation ended on its own" (and, optionally,
"the answer equals the reference"); the survivors are written as training records in the released format
(``mixed.jsonl``), each with ``meta.student_prefix_chars`` marking the student/teacher boundary.

Each phase is a function of the round folder's ``spec.json`` and writes its own outputs there, so a
phase can run in a child process that exits afterwards (``python -m dasd.mixed.worker <phase> <spec>``),
returning all of its memory, and a finished phase is never rerun.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dasd.data.filters import (
    FilterConfig,
    FilterInput,
    FilterReport,
    TruncatedConfig,
    TruncatedFilter,
    apply_filters,
    build_filters,
    token_counter,
)
from dasd.data.template import STUDENT_PREFIX_KEY, ChatTemplater
from dasd.generation.engine import Engine, Request, SamplingConfig
from dasd.generation.pipeline import TeacherFormat, sample_seed
from dasd.generation.registry import build_engine
from dasd.mixed.continuation import assemble, continuation_prompt
from dasd.mixed.cut import choose_cut
from dasd.mixed.spec import RoundSpec
from dasd.models.student import load_tokenizer
from dasd.text.grading import math_equal
from dasd.utils.io import read_jsonl, write_jsonl
from dasd.utils.logging import get_logger

log = get_logger(__name__)

MIXED_NAMESPACE = uuid.UUID("3f0c6c3e-2b8e-4a51-9f6e-7d1c0a9b5e21")
PHASES = ("rollout", "continue")


@dataclass
class RoundPaths:
    folder: Path

    @property
    def spec(self) -> Path:
        return self.folder / "spec.json"

    @property
    def questions(self) -> Path:
        return self.folder / "questions.jsonl"

    @property
    def rollouts(self) -> Path:
        return self.folder / "rollouts.jsonl"

    @property
    def records(self) -> Path:
        return self.folder / "mixed.jsonl"

    @property
    def stats(self) -> Path:
        return self.folder / "stats.json"

    def done(self, phase: str) -> Path:
        return self.folder / f"{phase}.done.json"


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _generate(engine: Engine, requests: list[Request], sampling: SamplingConfig, batch_size: int, desc: str):
    out, bar = [], tqdm(total=len(requests), desc=desc, unit="req", disable=not requests)
    for part in _batches(requests, batch_size):
        out += [samples[0] for samples in engine.generate(part, sampling)]
        bar.update(len(part))
    bar.close()
    return out


def run_rollout(spec: RoundSpec, folder: Path) -> dict:
    """Phase 1: student rollouts with per-question budgets; writes ``rollouts.jsonl``."""
    paths, s = RoundPaths(folder), spec.student
    questions = read_jsonl(paths.questions)
    t0 = time.perf_counter()
    engine = build_engine(s.engine, s.model, s.engine_args)
    load_s = time.perf_counter() - t0
    templater = ChatTemplater(engine.tokenizer, system_prompt=s.system_prompt, end_of_turn=s.end_of_turn)
    requests, leads = [], []
    for q in questions:
        ids, lead = templater.generation_prompt_ids(q["input"])
        cap = max(1, math.floor(spec.cap_factor * q["response_tokens"]))
        requests.append(Request(prompt_token_ids=tuple(ids), max_tokens=cap,
                                seed=sample_seed(spec.seed, q["uuid"], spec.round)))
        leads.append(lead)
    sampling = SamplingConfig(temperature=s.temperature, top_p=s.top_p,
                              max_tokens=max((r.max_tokens for r in requests), default=1), seed=spec.seed)
    t1 = time.perf_counter()
    try:
        samples = _generate(engine, requests, sampling, spec.batch_size, "student rollouts")
        gen_s = time.perf_counter() - t1
    finally:
        engine.close()
    rows = [{"uuid": q["uuid"], "teacher_tokens": q["response_tokens"], "cap": r.max_tokens, "lead": lead,
             "length": len(x.token_ids), "finish_reason": x.finish_reason, "seed": r.seed, "text": x.text,
             "token_ids": x.token_ids}
            for q, r, lead, x in zip(questions, requests, leads, samples, strict=True)]
    write_jsonl(paths.rollouts, rows)
    info = {"phase": "rollout", "questions": len(rows), "truncated": sum(r["finish_reason"] == "length" for r in rows),
            "generated_tokens": sum(r["length"] for r in rows), "load_s": round(load_s, 3),
            "generate_s": round(gen_s, 3), "spec_hash": spec.hash()}
    paths.done("rollout").write_text(json.dumps(info, indent=2))
    log.info("rollouts: %d questions, %d truncated (%.1f%%) in %.1f s", info["questions"], info["truncated"],
             100 * info["truncated"] / max(1, info["questions"]), gen_s)
    return info


def continuation_budget(max_tokens: int, cutoff_len: int | None, prefix_tokens: int) -> int:
    """The teacher's token budget for continuing one prefix: ``max_tokens`` (``mixed.teacher.max_tokens``), and
    at most the room the sample has left under ``cutoff_len``: ``cutoff_len - prefix_tokens - 1`` (the
    end-of-turn token). A result < 1 means the prefix leaves no room (the round drops it as ``prefix_too_long``).

    ``prefix_tokens`` is counted in the *student's* tokenization: the rollout's prompt ids (the training
    template, the response lead included) plus the ``cut.index`` tokens of the rollout the student kept. The
    room is then spent in *teacher* tokens, which need not match one to one, so an assembled sample can still
    end up a little over ``cutoff_len``; the ``length`` filter checks its exact student-token length."""
    return max_tokens if cutoff_len is None else min(max_tokens, cutoff_len - prefix_tokens - 1)


class _Correct:
    """The final answer equals the reference (math-verify); off by default (spec §7.7)."""

    name = "incorrect"

    def __init__(self, references: dict[str, str]) -> None:
        self.references = references

    def check(self, x: FilterInput) -> str | None:
        reference = self.references.get(x.uuid, "")
        return None if reference and math_equal(x.output, reference) else f"reference {reference[-80:]!r}"


def run_continue(spec: RoundSpec, folder: Path) -> dict:
    """Phase 2: cut the truncated rollouts, let the teacher continue, assemble, filter; writes ``mixed.jsonl``
    and ``stats.json``."""
    paths, t = RoundPaths(folder), spec.teacher
    questions = {q["uuid"]: q for q in read_jsonl(paths.questions)}
    rollouts = read_jsonl(paths.rollouts)
    student_tok = load_tokenizer(spec.student.model)
    templater = ChatTemplater(student_tok, system_prompt=spec.student.system_prompt,
                              end_of_turn=spec.student.end_of_turn)
    truncated = [r for r in rollouts if r["finish_reason"] == "length" and r["length"] >= 2]
    cuts, skipped = {}, {"no_clean_cut": [], "prefix_too_long": [], "prefix_format": []}
    for r in truncated:
        rng = random.Random(sample_seed(spec.seed, r["uuid"], 1_000_003 + spec.round))
        try:
            cuts[r["uuid"]] = choose_cut(r["token_ids"], student_tok, rng, lead=r["lead"],
                                         snap_to_sentence=spec.cut.snap_to_sentence,
                                         min_chars=spec.cut.min_chars)
        except ValueError as e:  # e.g. a rollout of continuation bytes only: counted, never silently lost
            skipped["no_clean_cut"].append({"uuid": r["uuid"], "detail": str(e)})
    budgets = {}
    for u, c in cuts.items():
        prefix_tokens = len(templater.generation_prompt_ids(questions[u]["input"])[0]) + c.index
        budget = continuation_budget(t.max_tokens, spec.cutoff_len, prefix_tokens)
        if budget >= 1:
            budgets[u] = budget
        else:  # the prefix alone fills the sample: counted, never silently lost
            skipped["prefix_too_long"].append({"uuid": u, "detail": f"{prefix_tokens} student tokens of prompt and "
                                               f"prefix leave no room under cutoff_len {spec.cutoff_len}"})
    fmt = TeacherFormat(kind=t.format, system_prompt=t.system_prompt,
                        chat_template_kwargs=dict(t.chat_template_kwargs or {}))
    t0 = time.perf_counter()
    engine = build_engine(t.engine, t.model, t.engine_args)
    load_s = time.perf_counter() - t0
    prompts = {}
    for u in budgets:
        try:
            prompts[u] = continuation_prompt(engine.tokenizer, questions[u]["input"], cuts[u].prefix_text, fmt)
        except ValueError as e:  # harmony needs a prefix opening with "<think>\n"
            skipped["prefix_format"].append({"uuid": u, "detail": str(e)})
    order = list(prompts)
    requests = [Request(prompt_token_ids=tuple(prompts[u].token_ids), max_tokens=budgets[u],
                        seed=sample_seed(spec.seed, u, 2_000_003 + spec.round)) for u in order]
    sampling = SamplingConfig(temperature=t.temperature, top_p=t.top_p, max_tokens=t.max_tokens,
                              seed=spec.seed)
    t1 = time.perf_counter()
    try:
        conts = dict(zip(order, _generate(engine, requests, sampling, spec.batch_size, "teacher continuations"),
                         strict=True))
        gen_s = time.perf_counter() - t1
        t2 = time.perf_counter()  # assembly, filters and records from here
        assembled = {u: assemble(prompts[u], conts[u], engine.tokenizer, fmt) for u in order}
        teacher_name = engine.model_name
    finally:
        engine.close()
    # filters on the assembled responses: continuation finished, the curation filters, optional correctness
    # "finished" = the continuation stopped on its own (finish_reason), for harmony with a final answer too
    # (has_final): the curation filter ``truncated``, reported under its own name
    unfinished = TruncatedFilter(TruncatedConfig(require_final=fmt.kind == "harmony"), name="continuation_unfinished")
    filters = [unfinished] if spec.require_finished else []
    if spec.filters and spec.filters.get("order"):
        filters += build_filters(FilterConfig.from_dict(spec.filters), count=token_counter(templater))
    if spec.require_correct:
        filters.append(_Correct({u: questions[u].get("reference") or "" for u in order}))
    report = FilterReport(order=[f.name for f in filters])
    inputs = [FilterInput(uuid=u, output=assembled[u].output, input=questions[u]["input"],
                          finish_reason=conts[u].finish_reason, has_tool_call=assembled[u].has_tool_call,
                          has_final=assembled[u].has_final) for u in order]
    kept, report = apply_filters(inputs, filters, report=report)
    caps = {r["uuid"]: r["cap"] for r in rollouts}
    records = [_record(spec, questions[x.uuid], cuts[x.uuid], assembled[x.uuid], conts[x.uuid], teacher_name,
                       caps[x.uuid], budgets[x.uuid]) for x in kept]
    write_jsonl(paths.records, records)
    filter_s = time.perf_counter() - t2
    info = {"phase": "continue", "truncated": len(truncated), "continued": len(order),
            "skipped": {k: len(v) for k, v in skipped.items()}, "skipped_examples": {k: v[:5] for k, v in skipped.items()},
            "continuation_finished": sum(c.finish_reason == "stop" for c in conts.values()),
            "kept": len(records), "filters": report.summary(), "load_s": round(load_s, 3),
            "generate_s": round(gen_s, 3), "filter_s": round(filter_s, 3),
            "continuation_tokens": sum(len(c.token_ids) for c in conts.values()), "spec_hash": spec.hash()}
    paths.done("continue").write_text(json.dumps(info, indent=2))
    stats = round_stats(spec, rollouts, cuts, assembled, info, read_done(folder, "rollout"))
    paths.stats.write_text(json.dumps(stats, indent=2))
    log.info("mixed-policy round %d: %d truncated, %d continued, %d kept (%s)", spec.round, len(truncated),
             len(order), len(records), {n: v["dropped"] for n, v in report.summary()["filters"].items()})
    return info


def _record(spec: RoundSpec, q: dict, cut, a, cont, teacher_name: str, cap: int, budget: int) -> dict:
    """A training record in the released format; the provenance and the boundary live in ``meta``."""
    try:
        meta = json.loads(q["meta"]) if q.get("meta") else {}
    except json.JSONDecodeError:
        meta = {"raw": q["meta"]}
    meta = {**(meta if isinstance(meta, dict) else {}), "kind": "mixed_policy", "round": spec.round,
            "source_uuid": q["uuid"], STUDENT_PREFIX_KEY: a.boundary,
            "cut": {"length": cut.length, "raw": cut.raw, "index": cut.index, "snapped": cut.snapped},
            "student_model": spec.student.model, "teacher_model": teacher_name,
            "teacher_response_tokens": q["response_tokens"],
            "cap": cap, "continuation_budget": budget}
    return {"uuid": str(uuid.uuid5(MIXED_NAMESPACE, f"{q['uuid']}/{spec.round}/{spec.hash()}")),
            "input": q["input"], "output": a.output, "domain": q["domain"], "meta": json.dumps(meta),
            "finish_reason": cont.finish_reason, "has_tool_call": a.has_tool_call,
            "teacher_token_ids": cont.token_ids, "teacher_logprobs": cont.logprobs}


def read_done(folder: Path, phase: str) -> dict | None:
    p = RoundPaths(folder).done(phase)
    return json.loads(p.read_text()) if p.is_file() else None


def round_stats(spec: RoundSpec, rollouts: list[dict], cuts: dict, assembled: dict, cont: dict,
                rollout: dict | None) -> dict:
    """Everything a user checks about a round: truncation against teacher length (Fig. 7), cut positions,
    the filter funnel and the time of each part."""
    n = len(rollouts)
    trunc = [r for r in rollouts if r["finish_reason"] == "length"]
    raw = [c.raw / c.length for c in cuts.values()]
    final = [c.index / c.length for c in cuts.values()]
    boundary = [a.boundary / max(1, len(a.output)) for a in assembled.values()]
    return {
        "round": spec.round, "student": spec.student.model, "teacher": spec.teacher.model,
        "cap_factor": spec.cap_factor, "questions": n, "truncated": len(trunc), "truncation_rate": len(trunc) / max(1, n),
        "rollout_tokens_mean": sum(r["length"] for r in rollouts) / max(1, n),
        "teacher_tokens_mean": sum(r["teacher_tokens"] for r in rollouts) / max(1, n),
        "continued": cont["continued"], "skipped": cont["skipped"],
        "continuation_finished": cont["continuation_finished"],
        "kept": cont["kept"], "keep_rate": cont["kept"] / max(1, cont["continued"]),
        "cut_fraction_raw_mean": sum(raw) / max(1, len(raw)), "cut_fraction_mean": sum(final) / max(1, len(final)),
        "snapped": sum(c.snapped for c in cuts.values()),
        "student_share_of_output_mean": sum(boundary) / max(1, len(boundary)),
        "filters": cont["filters"],
        "seconds": {"student_load": (rollout or {}).get("load_s"), "student_rollout": (rollout or {}).get("generate_s"),
                    "teacher_load": cont["load_s"], "teacher_continuation": cont["generate_s"],
                    "assemble_filter": cont["filter_s"]},
        "per_question": [{"teacher_tokens": r["teacher_tokens"], "length": r["length"],
                          "truncated": r["finish_reason"] == "length"} for r in rollouts],
        "cut_fractions": {"raw": raw, "final": final},
    }


def run_phase(phase: str, spec_path: str | Path) -> dict:
    """Run one phase from a round folder's ``spec.json`` unless it already finished with this spec."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    folder = Path(spec_path).parent
    spec = RoundSpec.from_json(json.loads(Path(spec_path).read_text()))
    done = read_done(folder, phase)
    if done is not None and done.get("spec_hash") == spec.hash():
        log.info("mixed-policy %s phase already done in %s", phase, folder)
        return done
    return run_rollout(spec, folder) if phase == "rollout" else run_continue(spec, folder)
