"""Teacher sampling: K candidates per question at a scheduled temperature, written as training records.

Each (question, sample) has a stable seed derived from the base seed, the question id and the sample
index, so data-parallel shards never share seeds and a resumed run draws the same samples it would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from dasd.generation.engine import Engine, Request, Sample, SamplingConfig
from dasd.generation.questions import Question
from dasd.generation.shards import ShardWriter
from dasd.text.harmony import parse_harmony
from dasd.utils.hashing import stable_hash

OUTPUT_NAMESPACE = uuid.UUID("0b7d7a8e-52a4-4f59-8c0e-5f3a2f4c9d11")


@dataclass
class TeacherFormat:
    """How the teacher is prompted and how its completion becomes a training ``output``.

    kind: "plain" (the completion text is the output) or "harmony" (gpt-oss channels → ``<think>…</think>``).
    """

    kind: str = "plain"
    system_prompt: str | None = None
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {"reasoning_effort": "high"}


def sample_seed(base: int, question_id: str, sample_index: int) -> int:
    digest = hashlib.sha256(f"{base}/{question_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shard_questions(questions: list[Question], index: int, count: int) -> list[Question]:
    """Questions of data-parallel shard ``index`` of ``count`` (round robin, so shards stay balanced)."""
    return [q for i, q in enumerate(questions) if i % count == index]


def _convert(sample: Sample, fmt: TeacherFormat, tokenizer) -> tuple[str, dict]:
    if fmt.kind == "plain":
        return sample.text, {"has_tool_call": False}
    if fmt.kind == "harmony":
        h = parse_harmony(sample.token_ids, tokenizer)
        return h.output, {"has_tool_call": h.has_tool_call, "has_analysis": h.has_analysis,
                          "has_final": h.has_final, "token_spans": h.token_spans}
    raise ValueError(f"teacher.format must be plain or harmony, got {fmt.kind!r}")


def question_hash(q: Question) -> str:
    """A question as asked (id, text, domain, meta): a stored sample counts only for the question it answers."""
    return stable_hash([q.id, q.input, q.domain, q.meta], 16, ensure_ascii=False)


def shard_settings(model: str, sampling: SamplingConfig, seed: int, fmt: TeacherFormat,
                   engine: dict | None = None) -> dict:
    """Everything besides its question that determines a sample: a rerun reuses finished samples only when these
    are equal (``ShardWriter.claim``). ``engine``: what else identifies the teacher (its engine config, weights)."""
    knobs = {k: list(v) if k == "stop" else v for k, v in sampling.__dict__.items() if k not in ("n", "seed")}
    return {"model": model, "seed": seed, "sampling": knobs,
            "format": {"kind": fmt.kind, "system_prompt": fmt.system_prompt,
                       "chat_template_kwargs": fmt.chat_template_kwargs}, "engine": engine}


def make_record(q: Question, k: int, sample: Sample, seed: int, sampling: SamplingConfig, model: str,
                fmt: TeacherFormat, tokenizer) -> dict:
    """A record in the released format (uuid, input, output, domain, meta) plus the teacher fields."""
    output, flags = _convert(sample, fmt, tokenizer)
    knobs = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
             "min_p": sampling.min_p, "repetition_penalty": sampling.repetition_penalty}
    meta = {**q.meta, "question_id": q.id, "sample_index": k, "teacher": model, **knobs, "seed": seed,
            "finish_reason": sample.finish_reason, "logprob_mode": sample.logprob_mode}
    return {"uuid": str(uuid.uuid5(OUTPUT_NAMESPACE, f"{q.id}/{k}/{sampling.temperature}/{model}")),
            "input": q.input, "output": output, "domain": q.domain, "meta": json.dumps(meta),
            "question_id": q.id, "question_hash": question_hash(q), "sample_index": k, "model": model, **knobs,
            "seed": seed, "max_tokens": sampling.max_tokens,
            "finish_reason": sample.finish_reason, "logprob_mode": sample.logprob_mode,
            "prompt_token_ids": sample.prompt_token_ids, "token_ids": sample.token_ids,
            "logprobs": sample.logprobs, "format": fmt.kind, **flags}


def finished_pairs(writer: ShardWriter, questions: list[Question], samples_per_question: int,
                   overwrite: bool = False) -> set[tuple[str, int]]:
    """The (question, sample) pairs already written, each for a question and sample this run asks for; a stored
    sample of any other (another questions file, fewer questions or samples) stops the run: never mixed in
    (``overwrite``: the shard's samples are deleted instead)."""
    wanted = {(q.id, k): question_hash(q) for q in questions for k in range(samples_per_question)}
    done, stray = set(), []
    for r in writer.rows():
        key = (r["question_id"], r["sample_index"])
        if wanted.get(key) == r.get("question_hash"):
            done.add(key)
        else:
            stray.append(key)
    if stray and overwrite:
        writer.clear()
        return set()
    if stray:
        raise ValueError(f"{writer.final.parent} holds {len(stray)} samples of questions this run does not ask as "
                         f"they were asked (e.g. question {stray[0][0]!r}, sample {stray[0][1]}): another questions "
                         "file, fewer questions (max_questions) or samples_per_question, or changed question "
                         "text. Choose another output_dir (or run_name), or overwrite=true to replace them")
    return done


def generate_shard(engine: Engine, questions: list[Question], writer: ShardWriter, *, samples_per_question: int,
                   sampling: SamplingConfig, seed: int, fmt: TeacherFormat, batch_size: int = 64,
                   progress: bool = True, done: set[tuple[str, int]] | None = None) -> dict:
    """Sample every missing (question, sample) pair of this shard; returns counts for the run summary. Finished
    samples are reused only under the same settings (``shard_settings``; a writer not yet claimed is claimed
    with them here) and for the same questions. ``done``: ``finished_pairs`` when the caller already read them."""
    one = replace(sampling, n=1)
    if writer.settings is None:
        writer.claim(shard_settings(engine.model_name, one, seed, fmt))
    if done is None:
        done = finished_pairs(writer, questions, samples_per_question)
    todo = [(q, k) for q in questions for k in range(samples_per_question) if (q.id, k) not in done]
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    bar = tqdm(total=len(todo), desc="generate", unit="sample", disable=not progress)
    tokens, start = 0, time.perf_counter()
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        seeds = [sample_seed(seed, q.id, k) for q, k in batch]
        requests = [Request(messages=tuple(system + [{"role": "user", "content": q.input}]),
                            chat_template_kwargs=fmt.chat_template_kwargs, seed=s) for (q, _), s in zip(batch, seeds, strict=True)]
        outputs = engine.generate(requests, one)
        rows = [make_record(q, k, out[0], s, one, engine.model_name, fmt, engine.tokenizer)
                for (q, k), s, out in zip(batch, seeds, outputs, strict=True)]
        writer.write_part(rows)
        tokens += sum(len(r["token_ids"]) for r in rows)
        bar.update(len(rows))
        bar.set_postfix(tokens_per_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    bar.close()
    return {"questions": len(questions), "samples_per_question": samples_per_question,
            "already_done": len(done), "generated": len(todo), "generated_tokens": tokens,
            "seconds": round(time.perf_counter() - start, 3)}


def summarize(rows: list[dict]) -> dict:
    """Response lengths, truncation rate and response probabilities (geometric mean of token probabilities)."""
    lengths = [len(r["token_ids"]) for r in rows]
    probs = [math.exp(sum(r["logprobs"]) / len(r["logprobs"])) for r in rows if r["logprobs"]]
    truncated = sum(r["finish_reason"] == "length" for r in rows)
    return {"samples": len(rows), "truncated": truncated, "truncation_rate": truncated / max(1, len(rows)),
            "tool_calls": sum(bool(r.get("has_tool_call")) for r in rows),
            "length_mean": sum(lengths) / max(1, len(lengths)), "length_max": max(lengths, default=0),
            "response_probability_mean": sum(probs) / max(1, len(probs)), "lengths": lengths,
            "response_probabilities": probs}
