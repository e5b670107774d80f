"""Training throughput of the tiny student: our LightningModule against a plain PyTorch loop.

Both arms train the same HF model (same weights, same seed) on the *same* list of packed micro-batches,
materialised once from ``SFTDataModule.train_dataloader()``, with the same optimizer, schedule, gradient
clipping and loss normalisation. Only the optimizer steps after ``--warmup-steps`` are timed; tokens are the
non-pad tokens (``batch["num_tokens"]``) of the timed micro-batches. The arms alternate A/B/A/B… over
``--repeats`` runs to cancel drift; the JSON holds every run, the median of each arm and their ratio.

    .venv/bin/python benchmarks/train_throughput.py            # CPU, defaults
    .venv/bin/python benchmarks/train_throughput.py --smoke    # seconds: 3 steps of 2 micro-batches, 1 repeat
    .venv/bin/python benchmarks/train_throughput.py --device cuda --out benchmarks/results/train_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from memory_meters import exit_code, parse_with_smoke, provenance, smoke_out, write_report
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import RandomSelector
from dasd.models.student import StudentSpec, asset_path, load_student, load_tokenizer
from dasd.training.module import SFTModule, packed_loss_sum
from dasd.training.optim import OptimConfig, build_optimizer
from dasd.utils.run import versions

SYSTEM_PROMPT = "You are a helpful assistant."
OPTIM = OptimConfig(lr=1.0e-3, min_lr=1.0e-4)  # conf/optim/tiny.yaml
MAX_GRAD_NORM = 1.0
LOSS_RTOL = 1.0e-3  # final losses of the two arms must agree to this relative tolerance
NOISY_SPREAD = 1.25  # fastest / slowest run of one arm above this: warn that the machine was busy
# --smoke: the same code at a size of seconds; accumulation on, so that the loss normalisation is checked too
SMOKE = {"steps": 3, "warmup_steps": 1, "accumulate": 2, "repeats": 1, "cutoff_len": 512}


@dataclass
class RunResult:
    """One timed training run of one arm."""

    arm: str
    order: int  # position in the A/B/A/B… sequence
    seconds: float
    tokens: int
    tokens_per_s: float
    final_loss: float  # mean CE over the supervised tokens of the last optimizer step


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps per run")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed optimizer steps before timing")
    p.add_argument("--cutoff-len", type=int, default=1024, help="pack capacity in tokens")
    p.add_argument("--micro-batch-size", type=int, default=1, help="packs per micro-batch")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--repeats", type=int, default=3, help="runs per arm (alternating A/B)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=42, help="selection, pack order and torch seed")
    p.add_argument("--data", default=str(Path(asset_path("sample_data")) / "sample_T0.6.jsonl"))
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/train_throughput_<device>.json (--smoke: outputs/benchmarks/)")
    args = parse_with_smoke(p, argv, SMOKE)
    args.out = args.out or (smoke_out("train_throughput") if args.smoke
                            else f"benchmarks/results/train_throughput_{args.device}.json")
    if args.steps < 1 or args.warmup_steps < 0 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1, --warmup-steps >= 0")
    return args


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock timestamps bracket it."""
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- data


def build_datamodule(args: argparse.Namespace) -> SFTDataModule:
    """The packed training data exactly as a training run builds it."""
    tokenizer = load_tokenizer(asset_path("tiny_qwen3"))
    dm = SFTDataModule(args.data, tokenizer, RandomSelector(args.seed), args.cutoff_len,
                       args.micro_batch_size, args.accumulate, system_prompt=SYSTEM_PROMPT, seed=args.seed)
    dm.setup("fit")
    return dm


def materialize_batches(dm: SFTDataModule, n_micro: int) -> tuple[list[dict], int]:
    """The first ``n_micro`` micro-batches of the training loader, over as many epochs as that takes.

    No trainer is attached, so the loader is world 1, rank 0. Each epoch contributes only whole optimizer
    steps (a short last accumulation group would carry a ``step_tokens`` for fewer micro-batches than the
    arms group together). Returns the batches and the epochs used.
    """
    loader, accumulate = dm.train_dataloader(), dm.accumulate
    per_epoch = len(loader) // accumulate * accumulate
    if per_epoch == 0:
        raise ValueError(f"{len(loader)} micro-batches per epoch: fewer than --accumulate={accumulate}")
    batches: list[dict] = []
    epoch = 0
    while len(batches) < n_micro:
        loader.batch_sampler.set_epoch(epoch)
        take = min(per_epoch, n_micro - len(batches))
        batches.extend(b for _, b in zip(range(take), loader, strict=False))
        epoch += 1
    return batches, epoch


def timed_tokens(batches: list[dict], first_timed: int) -> int:
    """Non-pad tokens of the timed micro-batches."""
    return sum(int(b["num_tokens"]) for b in batches[first_timed:])


def data_summary(dm: SFTDataModule, batches: list[dict], epochs: int, first_timed: int) -> dict:
    """What the runs train on: the packing report plus counts of the materialised micro-batches."""
    return {"path": dm.path, "packing": dm.report()["packing"], "packs": len(dm.dataset),
            "micro_batches": len(batches), "epochs_used": epochs,
            "tokens": sum(int(b["num_tokens"]) for b in batches),
            "pad_tokens": sum(int(b["num_pad"]) for b in batches),
            "timed_micro_batches": len(batches) - first_timed,
            "timed_tokens": timed_tokens(batches, first_timed)}


# ------------------------------------------------------------------------------------------ lightning


class TimingCallback(L.Callback):
    """Wall time from the start of micro-batch ``first_timed`` to the end of the last micro-batch."""

    def __init__(self, first_timed: int, last: int, device: str) -> None:
        self.first_timed, self.last, self.device = first_timed, last, device
        self.start = self.end = None
        self.final_loss = float("nan")

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.first_timed:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if batch_idx == self.last:
            sync(self.device)
            self.end = time.perf_counter()
            self.final_loss = float(trainer.callback_metrics["train/loss"])


def run_lightning(batches: list[dict], args: argparse.Namespace, order: int) -> RunResult:
    """Train ``SFTModule`` with a Lightning Trainer over the materialised batches; time the tail."""
    total_steps = args.warmup_steps + args.steps
    first_timed = args.warmup_steps * args.accumulate
    timer = TimingCallback(first_timed, len(batches) - 1, args.device)
    torch.manual_seed(args.seed)
    module = SFTModule(StudentSpec(name_or_path=asset_path("tiny_qwen3"), torch_dtype="float32",
                                   attn_implementation="sdpa"), OPTIM)
    trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, max_steps=total_steps,
                        accumulate_grad_batches=args.accumulate, gradient_clip_val=MAX_GRAD_NORM,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    if trainer.global_step != total_steps or timer.start is None or timer.end is None:
        raise RuntimeError(f"lightning arm ran {trainer.global_step}/{total_steps} steps")
    tokens = timed_tokens(batches, first_timed)
    seconds = timer.end - timer.start
    return RunResult("lightning", order, seconds, tokens, tokens / seconds, timer.final_loss)


# ---------------------------------------------------------------------------------------------- plain


def plain_step(model: torch.nn.Module, optimizer, scheduler, micro: list[dict], device: str) -> float:
    """One optimizer step over its accumulation micro-batches; returns the step's mean token CE.

    The backward loss is ``SFTModule.training_step``'s ``loss_sum · accumulate / step_tokens`` times
    the ``1/accumulate`` that Lightning applies under gradient accumulation.
    """
    accumulate, total = len(micro), 0.0
    for batch in micro:
        # tensors to the device, plain values (the packer's ``max_length``) as they are, as Lightning moves them
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        s = packed_loss_sum(model, batch)  # SFTModule.forward_loss_sum's call
        total += float(s.detach())
        step_tokens = batch["step_tokens"].clamp(min=1).to(s.dtype)
        (s * accumulate / step_tokens / accumulate).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(1, int(micro[0]["step_tokens"]))


def run_plain(batches: list[dict], args: argparse.Namespace, order: int) -> RunResult:
    """Train the same HF model with a hand-written loop over the same batches; time the tail."""
    total_steps, acc = args.warmup_steps + args.steps, args.accumulate
    torch.manual_seed(args.seed)
    model = load_student(StudentSpec(name_or_path=asset_path("tiny_qwen3"), torch_dtype="float32",
                                     attn_implementation="sdpa")).to(args.device)
    optimizer, scheduler = build_optimizer(model, OPTIM, total_steps)
    start, loss = None, float("nan")
    for step in range(total_steps):
        if step == args.warmup_steps:
            sync(args.device)
            start = time.perf_counter()
        loss = plain_step(model, optimizer, scheduler, batches[step * acc:(step + 1) * acc], args.device)
    sync(args.device)
    seconds = time.perf_counter() - start
    tokens = timed_tokens(batches, args.warmup_steps * acc)
    return RunResult("plain", order, seconds, tokens, tokens / seconds, loss)


# -------------------------------------------------------------------------------------------- driver


def run_repeats(batches: list[dict], args: argparse.Namespace) -> dict[str, list[RunResult]]:
    """Alternate the arms A/B/A/B… ``repeats`` times each, printing every run."""
    arms = {"lightning": run_lightning, "plain": run_plain}
    runs: dict[str, list[RunResult]] = {name: [] for name in arms}
    order = 0
    for _ in range(args.repeats):
        for name, fn in arms.items():
            r = fn(batches, args, order)
            runs[name].append(r)
            print(f"  run {order}: {name:9s} {r.tokens_per_s:10.1f} tok/s  ({r.seconds:.2f} s, "
                  f"final loss {r.final_loss:.5f})", flush=True)
            order += 1
    return runs


def summarize(runs: dict[str, list[RunResult]]) -> dict:
    """Medians (and bests) per arm, their ratios, the per-pair ratios and the final-loss sanity check."""
    results = {name: {"tokens_per_s_median": statistics.median(r.tokens_per_s for r in rs),
                      "tokens_per_s_best": max(r.tokens_per_s for r in rs),
                      "seconds_median": statistics.median(r.seconds for r in rs),
                      "spread": max(r.tokens_per_s for r in rs) / min(r.tokens_per_s for r in rs),
                      "runs": [asdict(r) for r in rs]} for name, rs in runs.items()}
    ratio = results["lightning"]["tokens_per_s_median"] / results["plain"]["tokens_per_s_median"]
    best_ratio = results["lightning"]["tokens_per_s_best"] / results["plain"]["tokens_per_s_best"]
    pair_ratios = [a.tokens_per_s / b.tokens_per_s for a, b in zip(runs["lightning"], runs["plain"], strict=True)]
    lf, pf = runs["lightning"][-1].final_loss, runs["plain"][-1].final_loss
    final_loss = {"lightning": lf, "plain": pf, "abs_diff": abs(lf - pf), "rtol": LOSS_RTOL,
                  "close": abs(lf - pf) <= LOSS_RTOL * max(1.0, abs(pf)),
                  "all_runs": {name: [r.final_loss for r in rs] for name, rs in runs.items()}}
    pairs = list(zip(runs["lightning"], runs["plain"], strict=True))
    checks = {  # both arms do the same work, or the ratio means nothing
        "final_loss_close": final_loss["close"],
        "every_pair_final_loss_close": all(abs(a.final_loss - b.final_loss) <= LOSS_RTOL * max(1.0, abs(b.final_loss))
                                           for a, b in pairs),
        "final_loss_finite": all(math.isfinite(r.final_loss) for rs in runs.values() for r in rs),
        "same_timed_tokens": len({r.tokens for rs in runs.values() for r in rs}) == 1,
        "tokens_per_s_positive": all(r.tokens_per_s > 0 for rs in runs.values() for r in rs)}
    return {"results": results, "ratio_lightning_over_plain": ratio, "ratio_best_over_best": best_ratio,
            "pair_ratios": pair_ratios, "final_loss": final_loss, "checks": checks}


def quiet_lightning() -> None:
    """Silence per-run banners, HF weight-loading bars and the few-workers hint (batches are in memory)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    wall, load_before = time.perf_counter(), os.getloadavg()
    dm = build_datamodule(args)
    first_timed = args.warmup_steps * args.accumulate
    batches, epochs = materialize_batches(dm, (args.warmup_steps + args.steps) * args.accumulate)
    data = data_summary(dm, batches, epochs, first_timed)
    print(f"data: {data['packs']} packs, {len(batches)} micro-batches ({epochs} epoch(s)), "
          f"{data['timed_tokens']} timed tokens per run; {torch.get_num_threads()} threads, {args.device}")
    summary = summarize(run_repeats(batches, args))
    report = {"benchmark": "train_throughput", "smoke": args.smoke, "config": vars(args), "data": data, **summary,
              "versions": versions(), **provenance(__file__, argv),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = write_report(report, args.out)
    spreads = {name: r["spread"] for name, r in summary["results"].items()}
    if max(spreads.values()) > NOISY_SPREAD:
        print(f"warning: runs of one arm differ by up to {max(spreads.values()):.2f}x (machine busy?); "
              "the ratio is noisy")
    fl, res = summary["final_loss"], summary["results"]
    print(f"train_throughput [{args.device}]: lightning {res['lightning']['tokens_per_s_median']:.0f} tok/s, "
          f"plain {res['plain']['tokens_per_s_median']:.0f} tok/s, ratio {summary['ratio_lightning_over_plain']:.3f}"
          f" | final loss {fl['lightning']:.5f} vs {fl['plain']:.5f} ({'close' if fl['close'] else 'MISMATCH'})"
          f" | {report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
