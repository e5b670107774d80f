"""Build the built-in tiny *teacher* (a small Qwen3 trained with dasd's own SFT on the sample data).

The teacher has its own tokenizer, deliberately different from the tiny student's (``tiny_qwen3``): a
1536-token byte-level BPE whose pre-tokenizer splits every digit into its own piece, so teacher and
student token boundaries disagree (as gpt-oss's o200k and Qwen's tokenizers do). Steps:

1. train the tokenizer on the ``input``/``output`` texts of ``sample_data/*.jsonl``;
2. randomly initialise a ``Qwen3ForCausalLM`` (hidden 192, 6 layers, ~3M parameters) and save it with the
   tokenizer to a temporary directory;
3. fine-tune it with ``train.py`` (dasd's SFT entry point, as a subprocess) on both sample files
   concatenated (T=0.6 and T=1.0 styles, so it has several solution modes);
4. copy the run's ``checkpoints/hf/final`` to the asset directory.

Usage::

    .venv/bin/python scripts/make_tiny_teacher.py --out-dir src/dasd/assets/tiny_teacher --seed 0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = Path(__file__).resolve().parents[1]


def _student_script():
    """scripts/make_tiny_student.py (scripts/ is not a package): the shared ChatML tokenizer and model code."""
    spec = importlib.util.spec_from_file_location("dasd_make_tiny_student", ROOT / "scripts" / "make_tiny_student.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_student = _student_script()
PAD, IM_START, IM_END, THINK_TOKENS = _student.PAD, _student.IM_START, _student.IM_END, _student.THINK_TOKENS
iter_training_text, wrap_tokenizer = _student.iter_training_text, _student.wrap_tokenizer
ASSETS = ROOT / "src" / "dasd" / "assets"
VOCAB_SIZE = 1536  # upper bound given to the BPE trainer (the sample data yields 1030 tokens)
SAMPLE_FILES = ("sample_T0.6.jsonl", "sample_T1.0.jsonl")

ARCHITECTURE = {
    "hidden_size": 192,
    "intermediate_size": 576,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 48,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}

# SFT settings (train.py overrides). No system prompt: generate.py prompts the teacher with the question
# alone (conf/teacher/tiny_teacher.yaml has system_prompt: null), so it is trained the way it is sampled.
EPOCHS = 3
LR = 3.0e-3
MIN_LR = 1.0e-4


def train_bpe(data_dir: Path) -> Tokenizer:
    """A deterministic byte-level BPE that splits digits individually, with ChatML specials and think tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(THINK_TOKENS),
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,  # every merge the data supports (min_frequency=2 gives the same 1030 here)
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_training_text(data_dir), trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    # The sample data supports fewer merges than VOCAB_SIZE asks for: once every word is a single token and
    # every digit its own piece, BPE has nothing left to merge. The vocabulary is what the data gives (1030).
    return tokenizer


def concat_samples(data_dir: Path, out: Path) -> int:
    """Both sample files, one after the other, into one released-format JSONL (uuids are distinct)."""
    n = 0
    with out.open("w", encoding="utf-8") as f:
        for name in SAMPLE_FILES:
            for line in (data_dir / name).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    f.write(line + "\n")
                    n += 1
    return n


def final_loss(run_dir: Path) -> tuple[float | None, float | None]:
    """Loss of the last optimizer step and mean loss of the last epoch, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [(r.get("epoch"), r["train/loss"]) for r in rows if isinstance(r.get("train/loss"), int | float)]
    if not losses:
        return None, None
    last_epoch = losses[-1][0]
    epoch_losses = [v for e, v in losses if e == last_epoch]
    return losses[-1][1], sum(epoch_losses) / len(epoch_losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ASSETS / "sample_data")
    parser.add_argument("--out-dir", type=Path, default=ASSETS / "tiny_teacher")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    parser.add_argument("--train-seed", type=int, default=42, help="train.py seed (data order)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--min-lr", type=float, default=MIN_LR)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the init model, data and training run go (default: a temporary directory)")
    parser.add_argument("--keep-work-dir", action="store_true")
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dasd_tiny_teacher_"))
    work.mkdir(parents=True, exist_ok=True)
    init_dir, data_file, runs_dir = work / "init", work / "sample_T0.6+T1.0.jsonl", work / "runs"
    if runs_dir.exists():
        shutil.rmtree(runs_dir)  # no resume from an older run

    tokenizer = wrap_tokenizer(train_bpe(args.data_dir))
    model = _student.build_model(tokenizer, args.seed, ARCHITECTURE)
    tokenizer.save_pretrained(init_dir)
    model.save_pretrained(init_dir)
    n_params = sum(p.numel() for p in model.parameters())
    n_records = concat_samples(args.data_dir, data_file)
    print(f"init: tokenizer ({len(tokenizer)} tokens), model ({n_params:,} parameters) in {init_dir}; "
          f"{n_records} training records in {data_file}", flush=True)

    # configs may name ${asset:tiny_teacher} (e.g. data.teacher_tokenizer), which must exist to resolve
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train.py",
           f"student.name_or_path={init_dir}", f"data.path={data_file}",
           "experiment_name=tiny_teacher_build", "run_name=sft", "logger=csv", "resume=never",
           "trainer.enable_progress_bar=false", f"seed={args.train_seed}",
           f"train.epochs={args.epochs}", f"optim.lr={args.lr}", f"optim.min_lr={args.min_lr}",
           "train.keep_hf_checkpoints=1", "data.system_prompt=null", "data.cache=false", f"paths.output_dir={runs_dir}"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)

    run_dir = runs_dir / "tiny_teacher_build" / "sft"
    final = run_dir / "checkpoints" / "hf" / "final"
    last, last_epoch = final_loss(run_dir)
    if args.out_dir.exists():
        for p in args.out_dir.iterdir():  # keep a hand-written README.md, replace everything else
            if p.name != "README.md":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(final.iterdir()):
        shutil.copy2(p, args.out_dir / p.name) if p.is_file() else shutil.copytree(p, args.out_dir / p.name)
    print(f"final training loss: last step {last:.4f}, mean of last epoch {last_epoch:.4f} "
          f"(ppl {math.exp(last_epoch):.3f}); copied {final} -> {args.out_dir}", flush=True)
    if not args.keep_work_dir and args.work_dir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
