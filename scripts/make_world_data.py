"""Write the CPU-scale reasoning world's data files (docs/world.md).

* ``teacher_train.jsonl``: training problems, teacher style, strategies drawn from the mixture weights
* ``student_pretrain.jsonl``: training problems (another draw), the student's weak style
* ``heldout.jsonl``: held-out problems (never a training question, each once), teacher-style outputs,
  ``meta.answer`` + ``meta.grader="exact"`` for ``load_task("records", ...)``

Usage::

    python scripts/make_world_data.py --out-dir data/world --seed 0 --n-teacher 3000 --n-student 3000 \\
        --n-heldout 300 --difficulty 1 5 [--tokenizer src/dasd/assets/tiny_teacher]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

from dasd.world.generator import FAMILIES, make_records, write_jsonl


def parse_weights(text: str | None) -> dict | None:
    """``seqsum.running=0.5,seqsum.pairs=0.5`` -> {"seqsum": {"running": 0.5, "pairs": 0.5}}."""
    if not text:
        return None
    weights: dict = {}
    for item in text.split(","):
        name, value = item.split("=")
        family, strategy = name.strip().split(".")
        weights.setdefault(family, {})[strategy] = float(value)
    return weights


def summary(name: str, records: list[dict], tokenizer=None) -> None:
    metas = [json.loads(r["meta"]) for r in records]
    print(f"{name}: {len(records)} records")
    for key in ("family", "difficulty"):
        print(f"  by {key}: {dict(sorted(Counter(m[key] for m in metas).items()))}")
    print(f"  by strategy: {dict(sorted(Counter((m['family'], m['strategy']) for m in metas).items()))}")
    chars = [len(r["output"]) for r in records]
    print(f"  output chars: min {min(chars)} mean {statistics.mean(chars):.0f} max {max(chars)}")
    if tokenizer is not None:
        toks = [len(tokenizer(r["input"] + r["output"])["input_ids"]) for r in records]
        print(f"  input+output tokens: min {min(toks)} mean {statistics.mean(toks):.0f} max {max(toks)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-teacher", type=int, default=3000)
    ap.add_argument("--n-student", type=int, default=3000)
    ap.add_argument("--n-heldout", type=int, default=300)
    ap.add_argument("--difficulty", type=int, nargs=2, default=(1, 5), metavar=("LO", "HI"))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--weights", default=None, help="e.g. seqsum.running=0.5,seqsum.pairs=0.3,seqsum.formula=0.2")
    ap.add_argument("--tokenizer", default=None, help="optional HF tokenizer path for token-length stats")
    args = ap.parse_args(argv)

    common = dict(families=args.families, difficulty=tuple(args.difficulty),
                  strategy_weights=parse_weights(args.weights))
    files = {
        "teacher_train.jsonl": make_records(args.n_teacher, seed=args.seed, style="teacher", split="train",
                                            **common),
        "student_pretrain.jsonl": make_records(args.n_student, seed=args.seed + 1, style="weak",
                                               split="train", **common),
        "heldout.jsonl": make_records(args.n_heldout, seed=args.seed, style="teacher", split="heldout",
                                      **common),
    }
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    for name, records in files.items():
        write_jsonl(records, args.out_dir / name)
        summary(str(args.out_dir / name), records, tokenizer)


if __name__ == "__main__":
    main()
