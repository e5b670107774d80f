"""Build the built-in candidate pool: K=4 samples of the tiny teacher per question, via dasd's generate.py.

For each temperature of the schedule (T=0.6 ``temperature=low`` on the first N questions of
``sample_T0.6.jsonl``, T=1.0 ``temperature=high`` on the first N of ``sample_T1.0.jsonl``) this runs
``generate.py teacher=tiny_teacher`` as a subprocess, then copies the finished shard to
``src/dasd/assets/sample_pool/pool_T<t>.jsonl``. To keep the files small it drops ``prompt_token_ids`` from
every record and rounds ``logprobs`` to 6 decimals; no other field is changed. It then checks the pool
(finish reasons, ``<think>`` + ``\\boxed{}`` structure, correctness against ``meta.answer``, and that the
teacher tokenizer decodes ``token_ids`` back to ``output``) and prints the statistics as JSON.

Usage (vLLM CPU build; ``--engine hf`` with ``.venv/bin/python`` works too, slower)::

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python scripts/make_sample_pool.py --engine vllm
    .venv/bin/python scripts/make_sample_pool.py --stats-only      # check the shipped pool
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "dasd" / "assets"
# (pool temperature, generate.py temperature=, question file)
POOLS = (("0.6", "low", "sample_T0.6.jsonl"), ("1.0", "high", "sample_T1.0.jsonl"))
TEACHER_REL = "src/dasd/assets/tiny_teacher"
DROPPED_FIELDS = ("prompt_token_ids",)
LOGPROB_DECIMALS = 6
THINK_THEN_BOXED = re.compile(r"^<think>.*?</think>.*\\boxed\{", re.S)


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def run_generate(python: str, engine: str, temperature: str, questions: Path, n_questions: int, k: int,
                 max_tokens: int, seed: int, work: Path, run_name: str) -> Path:
    run_dir = work / "sample_pool" / run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # generate.py resumes from finished parts; start clean
    # the asset by its path relative to the repository root (generate.py runs there), so the records' model /
    # meta.teacher field and their uuids do not depend on where the repository is checked out
    cmd = [python, "generate.py", "teacher=tiny_teacher", f"teacher.name_or_path={TEACHER_REL}",
           f"engine={engine}", f"temperature={temperature}", f"questions={questions}", f"max_questions={n_questions}", f"samples_per_question={k}",
           f"sampling.max_tokens={max_tokens}", f"seed={seed}", "logger=none", "progress=false",
           "experiment_name=sample_pool", f"run_name={run_name}", f"paths.output_dir={work}"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    shard = run_dir / "data" / "shard-00000-of-00001.jsonl"
    if not shard.is_file():
        raise FileNotFoundError(f"generate.py finished without {shard}")
    return shard


def compact(shard: Path, out: Path) -> int:
    """Copy ``shard`` to ``out`` without ``prompt_token_ids`` and with logprobs rounded; other fields as is."""
    n = 0
    with shard.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for line in src:
            record = json.loads(line)
            for name in DROPPED_FIELDS:
                record.pop(name, None)
            record["logprobs"] = [round(x, LOGPROB_DECIMALS) for x in record["logprobs"]]
            dst.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def pool_stats(path: Path, tokenizer) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    stop = [r for r in rows if r["finish_reason"] == "stop"]
    structured = [r for r in rows if THINK_THEN_BOXED.search(r["output"])]
    boxed = [(r, boxed_answer(r["output"])) for r in rows]
    boxed = [(r, a) for r, a in boxed if a is not None]
    correct = [r for r, a in boxed if a == str(json.loads(r["meta"]).get("answer"))]
    mismatches = [r["uuid"] for r in rows
                  if tokenizer.decode(r["token_ids"], skip_special_tokens=True) != r["output"]]
    by_question: dict[str, int] = {}
    for r in correct:
        by_question[r["question_id"]] = by_question.get(r["question_id"], 0) + 1
    questions = {r["question_id"] for r in rows}
    distinct = {q: len({r["output"] for r in rows if r["question_id"] == q}) for q in questions}
    lengths = [len(r["token_ids"]) for r in rows]
    return {
        "file": path.name, "bytes": path.stat().st_size, "records": len(rows), "questions": len(questions),
        "finish_stop": len(stop), "finish_length": len(rows) - len(stop),
        "think_then_boxed": len(structured),
        "stop_and_think_then_boxed": sum(1 for r in stop if THINK_THEN_BOXED.search(r["output"])),
        "boxed": len(boxed), "correct": len(correct),
        "accuracy_of_boxed": round(len(correct) / max(1, len(boxed)), 4),
        "accuracy_of_all": round(len(correct) / max(1, len(rows)), 4),
        "questions_with_a_correct_candidate": len(by_question),
        "questions_all_4_correct": sum(1 for v in by_question.values() if v == 4),
        "distinct_outputs_per_question_mean": round(sum(distinct.values()) / max(1, len(distinct)), 3),
        "tokens_mean": round(sum(lengths) / max(1, len(lengths)), 1), "tokens_max": max(lengths, default=0),
        "decode_mismatches": len(mismatches), "decode_mismatch_uuids": mismatches[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    parser.add_argument("--python", default=None,
                        help="interpreter for generate.py (default: this one)")
    parser.add_argument("--data-dir", type=Path, default=ASSETS / "sample_data")
    parser.add_argument("--out-dir", type=Path, default=ASSETS / "sample_pool")
    parser.add_argument("--questions", type=int, default=150, help="first N questions of each sample file")
    parser.add_argument("--samples-per-question", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", type=Path, default=None, help="generate.py's paths.output_dir (default: temp)")
    parser.add_argument("--only", choices=[t for t, _, _ in POOLS], default=None, help="build one pool only")
    parser.add_argument("--stats-only", action="store_true", help="only check the pool files in --out-dir")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny_teacher")
    pools = [p for p in POOLS if args.only in (None, p[0])]
    if not args.stats_only:
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="dasd_sample_pool_"))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for t, temperature, questions in pools:
            shard = run_generate(args.python or sys.executable, args.engine, temperature, args.data_dir / questions,
                                 args.questions, args.samples_per_question, args.max_tokens, args.seed, work,
                                 f"T{t}")
            n = compact(shard, args.out_dir / f"pool_T{t}.jsonl")
            print(f"wrote {n} records to {args.out_dir / f'pool_T{t}.jsonl'}", flush=True)
        if args.work_dir is None:
            shutil.rmtree(work)
    stats = [pool_stats(args.out_dir / f"pool_T{t}.jsonl", tokenizer) for t, _, _ in pools]
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
