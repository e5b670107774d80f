"""CPU training throughput of the reasoning world's student at two pack lengths: one pack of 1024 tokens per
optimizer step (the default) against two packs of 512 (conf/ablate.yaml's ``train_overrides``).

Both arms hold the same tokens per optimizer step, but CPU attention (sdpa over the block-diagonal packed
mask) costs the square of the pack width, so the shorter packs should train faster. Data: walk-world teacher
solutions from the project's generator (``make_records``, difficulty 1-8, the world's default walk settings)
written as released JSONL; the same records, every one kept (``KeepAllSelector``), go to both arms and each
arm's ``SFTDataModule`` packs them (first-fit-decreasing) at its own ``cutoff_len``. Model: the world student's
shape, built as the world build does (a 640-token byte-level BPE trained on the records, ``init_model`` with
hidden 128, 3 layers, 4 heads, seed 1), saved and loaded back through ``StudentSpec`` (sdpa, float32).

Each run trains with a Lightning Trainer and ``SFTModule`` (as train.py does; ``--loop plain`` uses
train_throughput's hand-written loop instead) over its arm's micro-batches, materialised once from
``train_dataloader()``; only the optimizer steps after ``--warmup-steps`` are timed, tokens are the non-pad
tokens of the timed micro-batches. The arms alternate A/B/A/B… over ``--repeats`` runs; the JSON holds every
run, each arm's median and the ratio of the 512 arm's tokens/s to the 1024 arm's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pack_length.py          # ~2 minutes on one thread
    .venv/bin/python benchmarks/pack_length.py --smoke                    # seconds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import train_throughput as tt
from memory_meters import exit_code, machine, parse_with_smoke, provenance, smoke_out, write_report
from torch.utils.data import DataLoader

from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import KeepAllSelector
from dasd.models.student import StudentSpec, load_student, load_tokenizer
from dasd.training.module import SFTModule
from dasd.training.optim import OptimConfig, build_optimizer
from dasd.utils.run import versions
from dasd.world.generator import make_records, write_jsonl
from dasd.world.models import init_model, train_tokenizer
from dasd.world.walk import WalkSettings

# (cutoff_len, micro_batch_size) of each arm: the same 1024 pack tokens per optimizer step
ARMS = {"cutoff1024_mb1": (1024, 1), "cutoff512_mb2": (512, 2)}
BASE, FAST = "cutoff1024_mb1", "cutoff512_mb2"
# conf/world/default.yaml's student, and the rate the ablation trains it at (conf/ablate.yaml)
STUDENT = {"vocab_size": 640, "split_digits": False, "seed": 1,
           "architecture": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4}}
DIFFICULTY = (1, 8)
OPTIM = OptimConfig(lr=3.0e-3, min_lr=1.0e-4)
NOISY_SPREAD = 1.25  # fastest / slowest run of one arm above this: warn that the machine was busy
SMOKE = {"samples": 120, "steps": 3, "warmup_steps": 1, "repeats": 1}


@dataclass
class RunResult:
    """One timed training run of one arm."""

    arm: str
    order: int  # position in the A/B/A/B… sequence
    seconds: float
    steps: int
    tokens: int
    samples: int
    tokens_per_s: float
    samples_per_s: float
    seconds_per_step: float
    final_loss: float  # mean CE over the supervised tokens of the last optimizer step
    loadavg_1min: float  # at the start of the run


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=1200, help="walk-world teacher records (both arms)")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed optimizer steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="runs per arm (alternating A/B)")
    p.add_argument("--loop", choices=("lightning", "plain"), default="lightning",
                   help="Lightning Trainer + SFTModule (as train.py), or train_throughput's plain loop")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=42, help="pack order and torch seed")
    p.add_argument("--data-seed", type=int, default=0, help="make_records seed")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/pack_length_cpu.json (--smoke: outputs/benchmarks/)")
    args = parse_with_smoke(p, argv, SMOKE)
    args.out = args.out or (smoke_out("pack_length") if args.smoke else "benchmarks/results/pack_length_cpu.json")
    if args.steps < 1 or args.warmup_steps < 0 or args.repeats < 1 or args.samples < 1:
        p.error("--steps, --repeats and --samples must be >= 1, --warmup-steps >= 0")
    args.device, args.accumulate = "cpu", 1  # what train_throughput's helpers read
    return args


# ----------------------------------------------------------------------------------------------- data


def build_world_student(args: argparse.Namespace, folder: Path) -> tuple[Path, Path, int]:
    """Walk-world teacher records as released JSONL, and the world student (tokenizer + init) trained on them
    as ``dasd.recipes.world`` makes it. Returns the data file, the model folder and the parameter count."""
    records = make_records(args.samples, seed=args.data_seed, difficulty=DIFFICULTY, style="teacher",
                           families=["walk"], walk=WalkSettings.from_dict(None))
    data = folder / "walk_teacher.jsonl"
    write_jsonl(records, data)
    texts = [r[f] for r in records for f in ("input", "output")]
    tokenizer = train_tokenizer(texts, STUDENT["vocab_size"], split_digits=STUDENT["split_digits"])
    model = init_model(tokenizer, dict(STUDENT["architecture"]), seed=STUDENT["seed"])
    student = folder / "student"
    tokenizer.save_pretrained(student)
    model.save_pretrained(student)
    return data, student, sum(p.numel() for p in model.parameters())


def spec(student: Path) -> StudentSpec:
    return StudentSpec(name_or_path=str(student), torch_dtype="float32", attn_implementation="sdpa")


def batch_samples(batch: dict, pad_id: int) -> int:
    """Samples in a collated micro-batch: its segments (``cu_seq_lens``) less the pad tail of each padded row
    (a pack shorter than the micro-batch's widest; real tokens never use the pad id)."""
    padded_rows = int((batch["input_ids"][:, -1] == pad_id).sum())
    return len(batch["cu_seq_lens"]) - 1 - padded_rows


def epoch_counts(dm: SFTDataModule, pad_id: int) -> dict:
    """One whole epoch of the loader: micro-batches, samples and non-pad tokens (they must be the packer's)."""
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(0)
    n = samples = tokens = 0
    for b in loader:
        n, samples, tokens = n + 1, samples + batch_samples(b, pad_id), tokens + int(b["num_tokens"])
    return {"micro_batches": n, "samples": samples, "tokens": tokens}


def prepare_arm(data: Path, tokenizer, cutoff_len: int, micro_batch_size: int,
                args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The arm's packed data as a training run builds it (no system prompt, as the world trains), its
    micro-batches for warmup + timed steps, and what they hold."""
    dm = SFTDataModule(str(data), tokenizer, KeepAllSelector(), cutoff_len, micro_batch_size, 1,
                       system_prompt=None, seed=args.seed)
    dm.setup("fit")
    pad = tokenizer.pad_token_id
    batches, epochs = tt.materialize_batches(dm, args.warmup_steps + args.steps)
    timed = batches[args.warmup_steps:]
    packing = dm.report()["packing"]
    lengths = [len(s) for s in dm.samples]
    info = {"cutoff_len": cutoff_len, "micro_batch_size": micro_batch_size, "packing": packing,
            "dropped_overlong": packing["dropped_overlong"],
            "samples_per_pack": packing["samples_packed"] / max(1, packing["num_packs"]),
            "longest_sample_tokens": max(lengths), "mean_sample_tokens": statistics.mean(lengths),
            "epoch": epoch_counts(dm, pad), "micro_batches": len(batches), "epochs_used": epochs,
            "timed_micro_batches": len(timed), "timed_tokens": tt.timed_tokens(batches, args.warmup_steps),
            "timed_pad_tokens": sum(int(b["num_pad"]) for b in timed),
            "timed_samples": sum(batch_samples(b, pad) for b in timed),
            # sdpa's masked attention works on every row's full width: rows × width² per step (its cost driver)
            "attention_rows_x_width_sq_per_step": statistics.mean(
                b["input_ids"].shape[0] * b["input_ids"].shape[1] ** 2 for b in timed),
            "mean_width": statistics.mean(b["input_ids"].shape[1] for b in timed)}
    info["timed_tokens_per_step"] = info["timed_tokens"] / len(timed)
    return batches, info


# ---------------------------------------------------------------------------------------------- runs


def run_lightning(batches: list[dict], student: Path, args: argparse.Namespace) -> tuple[float, float]:
    """train_throughput's Lightning arm on this model: timed seconds and the last step's loss."""
    total_steps = args.warmup_steps + args.steps
    timer = tt.TimingCallback(args.warmup_steps, len(batches) - 1, "cpu")
    torch.manual_seed(args.seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=total_steps, gradient_clip_val=tt.MAX_GRAD_NORM,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(SFTModule(spec(student), OPTIM), train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    if trainer.global_step != total_steps or timer.start is None or timer.end is None:
        raise RuntimeError(f"lightning ran {trainer.global_step}/{total_steps} steps")
    return timer.end - timer.start, timer.final_loss


def run_plain(batches: list[dict], student: Path, args: argparse.Namespace) -> tuple[float, float]:
    """train_throughput's plain loop on this model: timed seconds and the last step's loss."""
    total_steps = args.warmup_steps + args.steps
    torch.manual_seed(args.seed)
    model = load_student(spec(student))
    optimizer, scheduler = build_optimizer(model, OPTIM, total_steps)
    start, loss = None, float("nan")
    for step in range(total_steps):
        if step == args.warmup_steps:
            start = time.perf_counter()
        loss = tt.plain_step(model, optimizer, scheduler, batches[step:step + 1], "cpu")
    return time.perf_counter() - start, loss


def run_repeats(arms: dict[str, tuple[list[dict], dict]], student: Path,
                args: argparse.Namespace) -> dict[str, list[RunResult]]:
    """Alternate the arms A/B/A/B… ``repeats`` times each, printing every run."""
    fn = run_lightning if args.loop == "lightning" else run_plain
    runs: dict[str, list[RunResult]] = {name: [] for name in arms}
    order = 0
    for _ in range(args.repeats):
        for name, (batches, info) in arms.items():
            load = os.getloadavg()[0]
            seconds, loss = fn(batches, student, args)
            tokens, samples = info["timed_tokens"], info["timed_samples"]
            r = RunResult(name, order, seconds, args.steps, tokens, samples, tokens / seconds, samples / seconds,
                          seconds / args.steps, loss, load)
            runs[name].append(r)
            print(f"  run {order}: {name:15s} {r.tokens_per_s:9.1f} tok/s  {r.seconds_per_step * 1e3:7.1f} ms/step "
                  f"({r.seconds:.2f} s, final loss {r.final_loss:.4f}, load {load:.2f})", flush=True)
            order += 1
    return runs


def summarize(runs: dict[str, list[RunResult]], arms: dict[str, dict], n_samples: int) -> dict:
    """Medians (and bests) per arm, the 512 ÷ 1024 ratios, final losses and the sanity checks."""
    def med(rs, key):
        return statistics.median(getattr(r, key) for r in rs)

    results = {name: {"tokens_per_s_median": med(rs, "tokens_per_s"),
                      "tokens_per_s_best": max(r.tokens_per_s for r in rs),
                      "samples_per_s_median": med(rs, "samples_per_s"),
                      "seconds_per_step_median": med(rs, "seconds_per_step"),
                      "seconds_median": med(rs, "seconds"),
                      "spread": max(r.tokens_per_s for r in rs) / min(r.tokens_per_s for r in rs),
                      "runs": [asdict(r) for r in rs]} for name, rs in runs.items()}
    fast, base = results[FAST], results[BASE]
    ratios = {"tokens_per_s": fast["tokens_per_s_median"] / base["tokens_per_s_median"],
              "tokens_per_s_best_over_best": fast["tokens_per_s_best"] / base["tokens_per_s_best"],
              "samples_per_s": fast["samples_per_s_median"] / base["samples_per_s_median"],
              "step_time_1024_over_512": base["seconds_per_step_median"] / fast["seconds_per_step_median"],
              "pairs_tokens_per_s": [a.tokens_per_s / b.tokens_per_s
                                     for a, b in zip(runs[FAST], runs[BASE], strict=True)]}
    final = {name: rs[-1].final_loss for name, rs in runs.items()}
    final_loss = {**final, "abs_diff": abs(final[FAST] - final[BASE]),
                  "all_runs": {name: [r.final_loss for r in rs] for name, rs in runs.items()},
                  "note": "the arms train different packs, so their losses differ a little"}
    checks = {
        "dropped_overlong_zero": all(a["dropped_overlong"] == 0 for a in arms.values()),
        "same_samples_both_arms": all(a["packing"]["samples_packed"] == n_samples for a in arms.values()),
        "epoch_holds_every_sample_and_token": all(
            a["epoch"]["samples"] == a["packing"]["samples_packed"] and a["epoch"]["tokens"] == a["packing"]["tokens"]
            for a in arms.values()),
        "same_loss_every_repeat": all(len({r.final_loss for r in rs}) == 1 for rs in runs.values()),
        "final_loss_finite": all(math.isfinite(r.final_loss) for rs in runs.values() for r in rs),
        "tokens_per_s_positive": all(r.tokens_per_s > 0 for rs in runs.values() for r in rs)}
    return {"results": results, "ratio_512_over_1024": ratios["tokens_per_s"], "ratios": ratios,
            "final_loss": final_loss, "checks": checks}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tt.quiet_lightning()
    wall, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dasd-pack-length-") as tmp:
        data, student, params = build_world_student(args, Path(tmp))
        tokenizer = load_tokenizer(str(student))
        arms = {name: prepare_arm(data, tokenizer, cutoff, mbs, args) for name, (cutoff, mbs) in ARMS.items()}
        infos = {name: info for name, (_, info) in arms.items()}
        for name, info in infos.items():
            print(f"{name}: {info['packing']['num_packs']} packs ({info['samples_per_pack']:.1f} samples each, "
                  f"efficiency {info['packing']['packing_efficiency']:.3f}), {info['timed_tokens']} timed tokens, "
                  f"{info['timed_samples']} timed samples, dropped {info['dropped_overlong']}")
        print(f"{args.samples} samples, longest {infos[BASE]['longest_sample_tokens']} student tokens; "
              f"{params:,} parameters; {torch.get_num_threads()} thread(s), loop {args.loop}", flush=True)
        summary = summarize(run_repeats(arms, student, args), infos, args.samples)
    report = {"benchmark": "pack_length", "smoke": args.smoke, "config": vars(args),
              "model": {"parameters": params, "attn_implementation": "sdpa", "torch_dtype": "float32", **STUDENT},
              "data": {"records": args.samples, "family": "walk", "difficulty": list(DIFFICULTY), "style": "teacher",
                       "format": "released", "selector": "all", "system_prompt": None,
                       "longest_sample_tokens": infos[BASE]["longest_sample_tokens"],
                       "mean_sample_tokens": infos[BASE]["mean_sample_tokens"]},
              "optim": asdict(OPTIM), "arms": infos, **summary, "versions": versions(), "machine": machine(),
              **provenance(__file__, argv), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = write_report(report, args.out)
    spread = max(r["spread"] for r in summary["results"].values())
    if spread > NOISY_SPREAD:
        print(f"warning: runs of one arm differ by up to {spread:.2f}x (machine busy?); the ratio is noisy")
    res, fl = summary["results"], summary["final_loss"]
    print(f"pack_length [cpu, {args.loop}]: 1024x1 {res[BASE]['tokens_per_s_median']:.0f} tok/s, "
          f"512x2 {res[FAST]['tokens_per_s_median']:.0f} tok/s, ratio 512/1024 {summary['ratio_512_over_1024']:.3f}"
          f" | final loss {fl[BASE]:.4f} vs {fl[FAST]:.4f} | {report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
