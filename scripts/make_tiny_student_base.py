"""Build the built-in *pre-trained* tiny student (src/dasd/assets/tiny_qwen3_base) shipped with dasd.

Divergence-aware sampling compares the teacher's sentence probabilities with those of the student *before*
distillation. The random ``tiny_qwen3`` gives every token about 1/1024, so every teacher sentence looks like a
"Teacher Sentence". This script gives the tiny student habits of its own:

1. it writes a "student-style" corpus: NEW word problems from the generator of ``scripts/make_sample_data.py``
   (another seed and uuid namespace; no question of ``sample_data`` or ``sample_pool`` is reused), solved in a
   terse, weaker style (take the first two numbers of the question, apply one operation, and get the result
   slightly wrong about two times out of three); about 30% of traces open with the teacher's
   "Let me solve this step by step." so that Shared sentences exist;
2. it pre-trains ``tiny_qwen3`` on that corpus with dasd's own entry point (``train.py``, as a subprocess);
3. it copies the final HF checkpoint into the output folder, keeping the tokenizer files of ``tiny_qwen3``
   byte-identical, and writes the corpus next to it (``pretrain_corpus.jsonl``);
4. it measures the mean per-token log-probability of own-style and teacher-pool responses under the random and
   the pre-trained student (``--measure-only`` runs just this step).

Usage::

    python scripts/make_tiny_student_base.py --out-dir src/dasd/assets/tiny_qwen3_base --epochs 5
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "dasd" / "assets"
BASE_MODEL = ASSETS / "tiny_qwen3"
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "dasd-synthetic/student-base")
SYSTEM_PROMPT = "You are a helpful assistant."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")


def _load_sample_data_module():
    """Import scripts/make_sample_data.py by path (scripts/ is not a package)."""
    path = ROOT / "scripts" / "make_sample_data.py"
    spec = importlib.util.spec_from_file_location("dasd_make_sample_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


msd = _load_sample_data_module()

# ---------------------------------------------------------------------------------------------------------------
# The student's own style: terse, naive (first two numbers of the question, one operation), often slightly wrong.
# ---------------------------------------------------------------------------------------------------------------
OPS = {  # symbol -> (verb, noun, function); the symbols are the teacher's, so the tokenizer knows them
    "+": ("add", "addition", lambda a, b: a + b),
    "−": ("subtract", "subtraction", lambda a, b: a - b),
    "×": ("multiply", "multiplication", lambda a, b: a * b),
    "÷": ("divide", "division", lambda a, b: a // b if b else 0),
}
EQUATION = re.compile(r"(\d+) ([+−×÷]) (\d+) = (\d+)")
STUDENT_BODIES = (  # the student's own phrasings, one picked per trace
    "The question gives {a} and {b}.\nI think we should {verb}.\n{a} {op} {b} is {c}.",
    "The numbers are {a} and {b}.\nThis looks like {noun}.\nSo {a} {op} {b} = {c}.",
    "We have {a} and {b}.\nJust {verb} them.\nThat makes {c}.",
)
STUDENT_FINALS = ("The answer is \\boxed{{{c}}}.", "Answer: \\boxed{{{c}}}", "So it is \\boxed{{{c}}}.")
SHARED_OPENING = "Let me solve this step by step."  # the teacher's (T=0.6) opening
SHARED_OPENING_P = 0.3
SHARED_GOAL_P = 0.6  # "I need to find {goal}.": the teacher's (T=0.6) second sentence, a habit both share
WRONG_P = 0.65
ERRORS = (-10, -2, -1, 1, 2, 10)


def student_solution(problem, rng: random.Random) -> tuple[str, int, bool]:
    """Render ``problem`` in the student's style; return (output, the student's answer, whether it is right)."""
    op = EQUATION.search(problem.conclusion).group(2)  # the operation of the teacher's last step
    a, b = (int(x) for x in re.findall(r"\d+", problem.question)[:2])  # naive: the first two numbers
    verb, noun, fn = OPS[op]
    c = fn(a, b)
    if rng.random() < WRONG_P:
        c += rng.choice(ERRORS)
    lines = []
    if rng.random() < SHARED_OPENING_P:
        lines.append(SHARED_OPENING)
    if rng.random() < SHARED_GOAL_P:
        lines.append(f"I need to find {problem.goal}.")
    lines.append(rng.choice(STUDENT_BODIES).format(a=a, b=b, op=op, c=c, verb=verb, noun=noun))
    final = rng.choice(STUDENT_FINALS).format(c=c)
    output = "<think>\n" + "\n".join(lines) + "\n</think>\n\n" + final
    return output, c, c == problem.answer


def existing_questions() -> set[str]:
    """The questions of the shipped teacher data, which the student corpus must not reuse."""
    seen: set[str] = set()
    for folder in (ASSETS / "sample_data", ASSETS / "sample_pool"):
        for path in sorted(folder.glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    text = json.loads(line)["input"]
                    seen.add(text.removesuffix(" " + msd.INSTRUCTION))
    return seen


def generate_corpus(n: int, seed: int, seen: set[str]) -> list[dict[str, str]]:
    """``n`` student-style records in the released format, on questions not in ``seen`` (which is updated)."""
    rng = random.Random(f"dasd-student-base:{seed}")
    voice = msd.Voice(rng, diverse=False)
    records: list[dict[str, str]] = []
    while len(records) < n:
        problem = rng.choice(msd.KINDS)(rng, voice)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        output, answer, correct = student_solution(problem, rng)
        meta = {"source": "dasd-synthetic-student", "style": "student-base", "seed": seed, "kind": problem.kind,
                "answer": str(problem.answer), "student_answer": str(answer), "correct": correct}
        records.append({
            "uuid": str(uuid.uuid5(UUID_NAMESPACE, f"{seed}-{len(records)}")),
            "input": f"{problem.question} {msd.INSTRUCTION}",
            "output": output,
            "domain": "math",
            "meta": json.dumps(meta, ensure_ascii=False),
        })
    return records


# ---------------------------------------------------------------------------------------------------------------
# Pre-training with dasd's own entry point.
# ---------------------------------------------------------------------------------------------------------------
def pretrain(corpus: Path, work_dir: Path, epochs: int, seed: int, threads: int) -> Path:
    """Run ``train.py`` on ``corpus``; return the run folder."""
    cmd = [
        sys.executable, str(ROOT / "train.py"), f"data.path={corpus}", "experiment_name=tiny_base_build",
        "logger=csv", "trainer.enable_progress_bar=false", f"train.epochs={epochs}",
        f"paths.output_dir={work_dir}", f"seed={seed}", "resume=never", "data.format=released",
    ]
    print("+", " ".join(cmd), flush=True)
    # One thread: on a small shared CPU box, two OpenMP threads fighting other jobs made each step ~3x slower.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return work_dir / "tiny_base_build" / "stage1"


def read_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train loss) rows from the csv logger's metrics files under ``run_dir``."""
    rows: list[tuple[int, float]] = []
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for key in ("train/loss", "train/loss_step", "loss"):
                    if row.get(key):
                        rows.append((int(float(row.get("step") or 0)), float(row[key])))
                        break
    return rows


def install(final_dir: Path, out_dir: Path) -> None:
    """Copy the weights and config of ``final_dir`` and the (unchanged) tokenizer of ``tiny_qwen3``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(final_dir / name, out_dir / name)
    # Training saves use_cache=false; ship tiny_qwen3's inference setting so generate() uses the KV cache.
    config = json.loads((out_dir / "config.json").read_text())
    config["use_cache"] = json.loads((BASE_MODEL / "config.json").read_text()).get("use_cache", True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        if (final_dir / name).exists() and not filecmp.cmp(final_dir / name, BASE_MODEL / name, shallow=False):
            print(f"note: the checkpoint's {name} differs from tiny_qwen3's; shipping tiny_qwen3's", flush=True)
        shutil.copyfile(BASE_MODEL / name, out_dir / name)


# ---------------------------------------------------------------------------------------------------------------
# Measurement: mean per-token log-probability of responses (the DAS scorer's view).
# ---------------------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def mean_logprob(model_dir: Path, records: list[dict]) -> float:
    """Token-weighted mean log p(token) of ``output`` + end-of-turn, given the chat-templated ``input``."""
    from dasd.generation.hf import HFEngine

    engine = HFEngine(str(model_dir), device="cpu", dtype="float32")
    tok = engine.tokenizer
    total, count = 0.0, 0
    for r in records:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["input"]}]
        prompt = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)
        completion = tok.encode(r["output"], add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
        lps = engine.score(prompt, completion)
        total += sum(lps)
        count += len(lps)
    engine.close()
    return total / count


def measure(out_dir: Path, heldout: list[dict], train_corpus: list[dict]) -> dict:
    sets = {
        "own style, held out": heldout,
        "own style, training corpus": train_corpus,
        "teacher pool_T0.6": read_jsonl(ASSETS / "sample_pool" / "pool_T0.6.jsonl"),
        "teacher pool_T1.0": read_jsonl(ASSETS / "sample_pool" / "pool_T1.0.jsonl"),
    }
    results: dict[str, dict[str, float]] = {}
    for model in (BASE_MODEL, out_dir):
        results[model.name] = {name: round(mean_logprob(model, recs), 3) for name, recs in sets.items()}
    print(f"{'mean log p / token':30s}" + "".join(f"{m:>16s}" for m in results))
    for name in sets:
        print(f"{name:30s}" + "".join(f"{results[m][name]:16.3f}" for m in results))
    print(f"(uniform over 1024 tokens: {-math.log(1024):.3f})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ASSETS / "tiny_qwen3_base")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/dasd_tiny_base_build"))
    parser.add_argument("--n", type=int, default=800, help="student-style records to pre-train on")
    parser.add_argument("--n-heldout", type=int, default=100, help="held-out student-style records to measure on")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads for training and scoring")
    parser.add_argument("--corpus-only", action="store_true", help="write the corpus, then stop")
    parser.add_argument("--measure-only", action="store_true", help="only measure an existing --out-dir")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    seen = existing_questions()
    corpus = generate_corpus(args.n, args.seed, seen)
    heldout = generate_corpus(args.n_heldout, args.seed + 1, seen)
    n_right = sum(json.loads(r["meta"])["correct"] for r in corpus)
    n_shared = sum(SHARED_OPENING in r["output"] for r in corpus)
    print(f"corpus: {len(corpus)} records, {n_right / len(corpus):.1%} correct, "
          f"{n_shared / len(corpus):.1%} open with {SHARED_OPENING!r}", flush=True)
    corpus_path = args.out_dir / "pretrain_corpus.jsonl"
    if not args.measure_only:
        msd.write_jsonl(corpus_path, corpus)
        print(f"wrote {corpus_path}", flush=True)
        if args.corpus_only:
            return
        if args.work_dir.exists():
            shutil.rmtree(args.work_dir)
        run_dir = pretrain(corpus_path, args.work_dir, args.epochs, args.seed, args.threads)
        losses = read_losses(run_dir)
        if losses:
            tail = [loss for _, loss in losses[-10:]]
            print(f"train loss: first {losses[0][1]:.3f}, last {losses[-1][1]:.3f}, "
                  f"mean of last {len(tail)} logged {sum(tail) / len(tail):.3f}", flush=True)
        install(run_dir / "checkpoints" / "hf" / "final", args.out_dir)
        print(f"installed the pre-trained student in {args.out_dir}", flush=True)
    measure(args.out_dir, heldout, corpus)


if __name__ == "__main__":
    main()
