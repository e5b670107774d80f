"""Training MFU of the paper student: tokens/s, model FLOP utilisation and peak memory of the Qwen3-4B
architecture (random init, nothing downloaded) on packed 8K/16K/32K contexts, one GPU, DeepSpeed ZeRO-3.

Every arm is one (context, Liger on/off, offload) combination, trained through the framework's own path: a
Lightning ``Trainer`` with dasd's ``SFTModule`` (``StudentSpec(init="random", attn_implementation="auto")``,
loaded by ``configure_model`` inside the ZeRO-3 init) and ``build_strategy("deepspeed_zero3", offload=...)``,
bf16-mixed, micro-batch one pack, ``--accumulate`` packs per optimizer step, gradient clipping 1.0 and the
default ``OptimConfig``. Each arm runs in its own child process (``--worker``), so GPU memory and Liger's
process-global patches never leak from one arm into the next; an arm that fails (OOM, missing package)
records its error and the next arm runs.

Data: synthetic samples whose lengths are log-uniform in [1K, 16K] tokens (capped at the context; a long
reasoning response), random token ids, the first min(128, len/4) tokens unsupervised (the prompt), packed into
``context``-token packs by ``dasd.data.packing`` (``pack_samples`` → ``PackedDataset`` → ``PackCollator``).

FLOPs per optimizer step (the model FLOPs of MFU, the PaLM convention):

    6 · N · tokens  +  6 · n_layers · n_heads · head_dim · Σ_i s_i²

N = the parameters that do a matmul per token: every ``Linear`` weight of the decoder layers (q, k, v, o,
gate, up, down) + the LM head (V × d, counted even when it is tied to the embedding); the embedding lookup
and the norms are not matmuls. The attention term is causal QKᵀ and AV over each packed sample (length s_i;
samples do not attend to each other): forward 2 · 2 · n_layers · n_heads · head_dim · s_i² / 2, and training
is 3× the forward. MFU = model FLOPs / (step seconds · peak dense bf16 FLOP/s of the GPU); ``mfu_6n`` leaves
the attention term out. Gradient checkpointing recomputes the forward (hardware FLOPs 8N per token, plus a
second attention forward), which MFU by convention does not count; ``hfu`` does.

Each optimizer step is timed with ``torch.cuda.synchronize`` + ``perf_counter`` in a callback and split into
forward+backward (first micro-batch start → ``on_before_optimizer_step``: the backward, and ZeRO-3's gradient
reduce/partition/offload copies), optimizer (→ ``on_train_batch_end``: dasd's step logging, gradient
clipping, the (CPU) Adam step, parameter copy-back, scheduler, zero_grad) and other (between steps: data
loader, host→device copy, Lightning's loop). ``--profile`` adds one profiled step after the timed ones: the
top-15 CUDA kernels by self time.

    .venv/bin/python benchmarks/train_mfu.py --smoke    # CPU: the FLOP formula against torch's counter, one tiny
                                                        # arm (the GPU-only parts are listed as skipped)
    python benchmarks/train_mfu.py --device cuda --offload optimizer none       # GPU: all arms
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path

from memory_meters import (
    CudaMemory,
    HostMemory,
    exit_code,
    machine,
    parse_with_smoke,
    provenance,
    smoke_out,
    write_report,
)

GIB = 2**30
SCRIPT = Path(__file__).resolve()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched in order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = ((("H100", "PCIe"), 756.0), (("H100", "NVL"), 835.0), (("H200", "NVL"), 835.0),
                    (("H100",), 989.4), (("H200",), 989.4), (("GH200",), 989.4), (("A100",), 312.0))
MIN_SAMPLE, MAX_SAMPLE, PROMPT_TOKENS = 1024, 16384, 128  # synthetic response lengths (log-uniform), prompt
OFFLOADS = {"none": False, "optimizer": "optimizer", "all": "all"}  # --offload → build_strategy(offload=...)
# --smoke: what a CPU can run of it: the tiny student's config, one 512-token arm, no DeepSpeed
SMOKE = {"device": "cpu", "arch": "tiny", "strategy": "auto", "contexts": [512], "liger": "off",
         "offload": ["none"], "steps": 2, "warmup_steps": 1, "peak_tflops": 1.0, "sample_lengths": (64, 512)}
SMOKE_SKIPS = ("the Qwen3-4B architecture (--arch qwen3_4b) and its peak memory",
               "DeepSpeed ZeRO-3 (--strategy deepspeed_zero3) and its offload arms (--offload optimizer|all)",
               "Liger kernels (--liger on)", "bf16 varlen attention (flash_attention_2 / torch_varlen on CUDA)",
               "MFU against a real GPU peak (--peak-tflops 1 here: the CPU figure means nothing)",
               "the CUDA kernel profile (--profile)")
QWEN3_4B_N = 4_022_272_000  # N of the Qwen3-4B architecture, counted from its Linear layers (README)


# ------------------------------------------------------------------------------------------------ FLOPs


def _get(cfg, key: str, default=None):
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def arch_dims(cfg) -> dict[str, int]:
    """Layer count and widths of a Qwen/Llama-style decoder config (a dict or a ``PretrainedConfig``)."""
    d, heads = int(_get(cfg, "hidden_size")), int(_get(cfg, "num_attention_heads"))
    return {"hidden": d, "layers": int(_get(cfg, "num_hidden_layers")), "heads": heads,
            "kv_heads": int(_get(cfg, "num_key_value_heads") or heads),
            "head_dim": int(_get(cfg, "head_dim") or d // heads),
            "intermediate": int(_get(cfg, "intermediate_size")), "vocab": int(_get(cfg, "vocab_size"))}


def matmul_params(cfg) -> int:
    """N: weights that do a matmul per token. Per layer q (d × H·hd), k and v (d × KV·hd each), o (H·hd × d),
    gate, up, down (3 · d × I); plus the LM head V × d (tied or not). No embedding lookup, no norms."""
    a = arch_dims(cfg)
    d, q, kv = a["hidden"], a["heads"] * a["head_dim"], a["kv_heads"] * a["head_dim"]
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * a["intermediate"]
    return a["layers"] * per_layer + a["vocab"] * d


def attention_flops(cfg, seq_lens: Iterable[int] | None = None, sum_sq: int | None = None) -> int:
    """Training FLOPs of causal attention over samples of lengths s_i: 6 · L · n_heads · head_dim · Σ s_i²
    (forward QKᵀ + AV = 2 · 2 · L · H · hd · s_i² halved by the causal mask; training is 3× that)."""
    if sum_sq is None:
        sum_sq = sum(int(s) ** 2 for s in seq_lens)
    a = arch_dims(cfg)
    return 6 * a["layers"] * a["heads"] * a["head_dim"] * int(sum_sq)


def model_flops(cfg, tokens: int, sum_sq: int) -> dict[str, int]:
    """Model FLOPs of training on ``tokens`` tokens in samples with Σ s_i² = ``sum_sq``."""
    six_n, attn = 6 * matmul_params(cfg) * int(tokens), attention_flops(cfg, sum_sq=sum_sq)
    return {"six_n": six_n, "attention": attn, "total": six_n + attn}


def hardware_flops(cfg, tokens: int, sum_sq: int, checkpointing: bool) -> int:
    """Model FLOPs plus the forward that gradient checkpointing recomputes (8N, and 4/3 of the attention)."""
    f = model_flops(cfg, tokens, sum_sq)
    return f["total"] + (2 * matmul_params(cfg) * int(tokens) + f["attention"] // 3 if checkpointing else 0)


def peak_tflops_for(device_name: str | None) -> float | None:
    """Dense bf16 peak TFLOP/s of a known GPU, or None."""
    for needles, tflops in PEAK_BF16_TFLOPS:
        if device_name and all(n.lower() in device_name.lower() for n in needles):
            return tflops
    return None


def flop_check(seq: int = 257) -> dict:
    """The FLOP formula against ``torch.utils.flop_counter`` on the tiny student (CPU, eager attention, so that
    its matmuls are visible; one unpacked ``seq``-token sequence, forward + backward): all mm = 6·N·tokens and
    the attention term = half of all bmm (eager computes the full s × s); and N of the Qwen3-4B architecture
    counted from its Linear layers on the meta device (no memory). ``tests/test_mfu.py`` checks the same."""
    import torch
    from das_scoring import QWEN3_4B
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    from dasd.models.student import StudentSpec, asset_path, load_student

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    model = load_student(StudentSpec(asset_path("tiny_qwen3"), torch_dtype="float32", attn_implementation="eager"))
    ids = torch.randint(1, model.config.vocab_size, (1, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    counts = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    with torch.device("meta"):
        big = Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B))
    return {"sequence_tokens": seq, "counted": counts,
            "six_n_over_counted_mm": 6 * matmul_params(model.config) * seq
            / max(1, counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)),
            "attention_over_half_counted_bmm": attention_flops(model.config, [seq])
            / max(1, counts.get("aten.bmm", 0) / 2),
            "qwen3_4b_matmul_params": matmul_params(QWEN3_4B),
            "qwen3_4b_linear_weights": sum(m.weight.numel() for m in big.modules() if isinstance(m, torch.nn.Linear))}


def sanity(report: dict) -> dict[str, bool]:
    """The run's own checks: every arm ran, its step split adds up (forward+backward + optimizer within 5% of
    the step; the rest runs between steps), N from the config equals the model's Linear weights, MFU is finite;
    with ``--smoke`` also the FLOP formula against torch's counter (1%) and the Qwen3-4B N."""
    ok = [a["result"] for a in report["arms"] if a["result"].get("ok")]
    checks = {"every_arm_ran": len(ok) == len(report["arms"]) > 0,
              "step_split_adds_up": all(abs(r["timing"]["fwd_bwd_seconds"] + r["timing"]["optimizer_seconds"]
                                            - r["timing"]["step_seconds"]) <= 0.05 * r["timing"]["step_seconds"]
                                        for r in ok),
              "matmul_params_match_linears": all(r["model"]["matmul_params"]
                                                 == r["model"]["matmul_params_counted_from_linears"] for r in ok),
              "mfu_finite": all(r["throughput"]["mfu"] is not None and math.isfinite(r["throughput"]["mfu"])
                                and r["throughput"]["tokens_per_s"] > 0 for r in ok)}
    f = report.get("flop_check")
    if f:
        checks["flop_formula_6n_matches_counter"] = abs(f["six_n_over_counted_mm"] - 1) < 0.01
        checks["flop_formula_attention_matches_counter"] = abs(f["attention_over_half_counted_bmm"] - 1) < 0.01
        checks["qwen3_4b_matmul_params"] = f["qwen3_4b_matmul_params"] == f["qwen3_4b_linear_weights"] == QWEN3_4B_N
    return checks


# ------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--arch", choices=("qwen3_4b", "tiny"), default="qwen3_4b",
                   help="qwen3_4b: the Qwen3-4B architecture (benchmarks/das_scoring.py QWEN3_4B); tiny: the "
                        "built-in tiny student's config (CPU smoke test)")
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[8192, 16384, 32768],
                   help="pack sizes in tokens, comma-separated")
    p.add_argument("--liger", choices=("both", "on", "off"), default="both")
    p.add_argument("--offload", nargs="+", choices=sorted(OFFLOADS), default=None,
                   help="ZeRO-3 offload of each arm (several: one arm each); default optimizer (auto: none)")
    p.add_argument("--strategy", choices=("deepspeed_zero3", "auto"), default=None,
                   help="default deepspeed_zero3 on cuda, auto on cpu")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per arm")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed optimizer steps before timing")
    p.add_argument("--accumulate", type=int, default=1, help="packs (micro-batches) per optimizer step")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--attn", default="auto", help="StudentSpec.attn_implementation (default auto)")
    p.add_argument("--dtype", default=None,
                   help="StudentSpec.torch_dtype (default bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak dense bf16 TFLOP/s of the device (default: by GPU name; required elsewhere)")
    p.add_argument("--profile", action="store_true", help="profile one extra step: top-15 CUDA kernels")
    p.add_argument("--sample-lengths", type=lambda s: tuple(int(x) for x in s.split(",")),
                   default=(MIN_SAMPLE, MAX_SAMPLE),
                   help="MIN,MAX of the log-uniform sample lengths (capped at the context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arm-timeout", type=float, default=1200.0,
                   help="seconds before an arm's process is killed")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: arms that would start after it are recorded as skipped")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/train_mfu_cpu.json or train_mfu_cuda_<gpu>.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one arm (JSON), run in this process
    args = parse_with_smoke(p, argv, SMOKE)
    if args.worker:
        return args
    if args.steps < 1 or args.warmup_steps < 0 or args.accumulate < 1 or min(args.contexts) < 2:
        p.error("--steps and --accumulate must be >= 1, --warmup-steps >= 0, contexts >= 2")
    if len(args.sample_lengths) != 2 or not 1 <= args.sample_lengths[0] <= args.sample_lengths[1]:
        p.error("--sample-lengths takes MIN,MAX with 1 <= MIN <= MAX")
    args.strategy = args.strategy or ("deepspeed_zero3" if args.device == "cuda" else "auto")
    args.offload = args.offload or (["optimizer"] if args.strategy.startswith("deepspeed") else ["none"])
    if args.strategy == "auto" and set(args.offload) != {"none"}:
        p.error("--strategy auto has no offload: use --offload none")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


# ------------------------------------------------------------------------------------------------ data


def synthetic_packs(context: int, n_packs: int, vocab: int, seed: int,
                    lengths: tuple[int, int] = (MIN_SAMPLE, MAX_SAMPLE)) -> tuple[list, object, dict]:
    """``n_packs`` packs drawn at random from a pool packed by ``pack_samples``: the pool holds about
    max(8·n_packs, 64) packs' worth of samples with log-uniform ``lengths`` (default [1K, 16K]) capped at
    ``context``. Seeded by (seed, context): every arm of one context trains on the same packs."""
    import numpy as np

    from dasd.data.packing import PackedDataset, pack_samples
    from dasd.data.template import TokenizedSample

    rng = np.random.default_rng([seed, context])
    target, total, samples = max(8 * n_packs, 64) * context, 0, []
    while total < target:
        n = min(int(round(math.exp(rng.uniform(math.log(lengths[0]), math.log(lengths[1]))))), context)
        prompt = min(PROMPT_TOKENS, n // 4)
        samples.append(TokenizedSample(input_ids=rng.integers(1, vocab, n).tolist(),
                                       supervised=[False] * prompt + [True] * (n - prompt),
                                       uuid=f"syn-{len(samples)}"))
        total += n
    packs, report = pack_samples(samples, context)
    chosen = sorted(int(i) for i in rng.choice(len(packs), size=n_packs, replace=n_packs > len(packs)))
    dataset = PackedDataset(samples, [packs[i] for i in chosen])
    return samples, dataset, report.summary()


def build_batches(dataset, accumulate: int, pad_id: int) -> tuple[list[dict], list[dict]]:
    """Collated micro-batches (one pack each) with their optimizer step's supervised-token count, and per
    micro-batch metadata: tokens, Σ s_i², samples."""
    from dasd.data.packing import PackCollator

    collate, batches, meta = PackCollator(pad_id), [], []
    for first in range(0, len(dataset), accumulate):
        group = range(first, min(first + accumulate, len(dataset)))
        step_tokens = sum(dataset.supervised_tokens(i) for i in group)
        for i in group:
            item = dataset[(i, step_tokens)]
            batches.append(collate([item]))
            meta.append({"tokens": len(item["input_ids"]), "sum_sq": sum(s * s for s in item["seq_lens"]),
                         "samples": len(item["seq_lens"])})
    return batches, meta


# ----------------------------------------------------------------------------------------------- worker


def step_timer(device: str, accumulate: int, first_timed: int, n_timed: int, profile: bool):
    """The step-timing callback (a Lightning callback; lightning is imported only in the worker)."""
    import lightning as L

    timer = type("StepTimer", (_Timer, L.Callback), {})()
    timer.setup_timer(device, accumulate, first_timed, n_timed, profile)
    return timer


class _Timer:
    """Per optimizer step: start (first micro-batch), end of forward+backward (``on_before_optimizer_step``),
    end (last micro-batch); peaks reset at the first timed step; an optional profiled step after them."""

    def setup_timer(self, device: str, accumulate: int, first_timed: int, n_timed: int,
                    profile: bool) -> None:
        self.device, self.acc, self.first_timed, self.n_timed = device, accumulate, first_timed, n_timed
        self.profile_step = first_timed + n_timed if profile else None
        self.steps: list[dict] = []
        self.marks: dict[str, float] = {}
        self.pre_timing_peaks: dict = {}
        self.timed_peaks: dict = {}
        self.profiler = None
        self.profile_table = self.profile_kernels = None
        self._t0 = self._t1 = None

    def now(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self.marks["train_start"] = self.now()

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if batch_idx % self.acc:
            return
        step = batch_idx // self.acc
        if step == self.first_timed:
            self.pre_timing_peaks = _memory_peaks(self.device, reset=True)
        if step == self.profile_step:
            self._start_profiler()
        self._t0, self._t1 = self.now(), None

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # the last call of a step (DeepSpeed calls it every micro-batch) comes after the step's last backward
        self._t1 = self.now()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.acc:
            return
        t2, step = self.now(), batch_idx // self.acc
        t1 = self._t1 if self._t1 is not None else t2
        self.steps.append({"step": step, "start": self._t0, "fwd_bwd_end": t1, "end": t2,
                           "split_measured": self._t1 is not None})
        if step == self.first_timed + self.n_timed - 1:
            self.timed_peaks = _memory_peaks(self.device)
        if step == self.profile_step:
            self._stop_profiler()

    def _start_profiler(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.profiler = profile(activities=acts)
        self.profiler.__enter__()
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _stop_profiler(self) -> None:
        """Top-15 by self time: CUDA kernels on a GPU (the launching ops' rows, which repeat the kernels' time,
        are left out of ``top`` and ``categories``; the text table shows both), else CPU ops."""
        self.profiler.__exit__(None, None, None)
        try:
            from torch.autograd import DeviceType

            events = self.profiler.key_averages()
            cuda = self.device == "cuda"
            key = "self_device_time_total" if cuda else "self_cpu_time_total"
            self.profile_table = events.table(sort_by=key, row_limit=15, max_name_column_width=70)
            rows = [e for e in events if getattr(e, key) > 0 and (not cuda or e.device_type == DeviceType.CUDA)]
            rows.sort(key=lambda e: -getattr(e, key))
            total = sum(getattr(e, key) for e in rows) or 1.0
            self.profile_kernels = {
                "sorted_by": key, "kernels_only": cuda, "total_ms": total / 1e3,
                "top": [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3,
                         "share": getattr(e, key) / total} for e in rows[:15]],
                "categories": _kernel_categories([(e.key, getattr(e, key)) for e in rows], total)}
        except Exception as e:  # noqa: BLE001 - a profiler problem must not lose the arm's timings
            self.profile_kernels = {"error": f"{type(e).__name__}: {e}"}


def _kernel_categories(rows: list[tuple[str, float]], total: float) -> dict[str, float]:
    """Share of self time by kind of kernel, from its name (rough: matmul, attention, memcpy, comm, other)."""
    # attention first: flash kernels' names also mention cutlass
    kinds = {"attention": ("flash", "fmha", "attention", "attn"),
             "matmul": ("gemm", "nvjet", "cutlass", "xmma", "addmm", "aten::mm", "aten::bmm", "matmul"),
             "memcpy": ("memcpy", "memset"),
             "comm": ("nccl", "all_gather", "reduce_scatter", "allgather"),
             "optimizer": ("adam", "multi_tensor")}
    out = dict.fromkeys([*kinds, "other"], 0.0)
    for name, t in rows:
        low = name.lower()
        kind = next((k for k, needles in kinds.items() if any(n in low for n in needles)), "other")
        out[kind] += t / total
    return out


def _memory_peaks(device: str, reset: bool = False) -> dict:
    host = HostMemory()
    out = {"host_peak_rss_gib": host.peak() / GIB}
    if device == "cuda":
        cuda = CudaMemory()
        out.update(peak_allocated_gib=cuda.peak() / GIB, peak_reserved_gib=cuda.reserved_peak() / GIB)
        if reset:
            cuda.reset()
    if reset:
        host.reset()
    return out


def _quiet() -> None:
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message=msg)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_arm(arm: dict) -> dict:
    """Train one arm in this process and return its numbers."""
    t_start = time.perf_counter()
    import lightning as L
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoConfig

    from dasd.models.student import StudentSpec, load_tokenizer
    from dasd.training.module import SFTModule
    from dasd.training.optim import OptimConfig
    from dasd.training.strategy import build_strategy

    _quiet()
    t_imported = time.perf_counter()
    device, acc = arm["device"], arm["accumulate"]
    cfg = AutoConfig.from_pretrained(arm["model_dir"])
    torch.manual_seed(arm["seed"])
    n_steps = arm["warmup_steps"] + arm["steps"] + (1 if arm["profile"] else 0)
    _, dataset, pool = synthetic_packs(arm["context"], n_steps * acc, cfg.vocab_size, arm["seed"],
                                       tuple(arm["sample_lengths"]))
    batches, meta = build_batches(dataset, acc, load_tokenizer(arm["model_dir"]).pad_token_id)
    t_data = time.perf_counter()

    strategy = "auto" if arm["strategy"] == "auto" else build_strategy(
        arm["strategy"], hidden_size=cfg.hidden_size, offload=OFFLOADS[arm["offload"]], micro_batch_size=1)
    optim = OptimConfig()
    spec = StudentSpec(name_or_path=arm["model_dir"], torch_dtype=arm["dtype"],
                       attn_implementation=arm["attn"], gradient_checkpointing=arm["gradient_checkpointing"],
                       liger=arm["liger"], init="random")
    module = SFTModule(spec, optim)  # configure_model loads the student inside the strategy's (ZeRO-3) init
    timer = step_timer(device, acc, arm["warmup_steps"], arm["steps"], arm["profile"])
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, strategy=strategy,
                        precision="bf16-mixed" if device == "cuda" else "32-true", max_epochs=1, max_steps=-1,
                        accumulate_grad_batches=acc, gradient_clip_val=optim.max_grad_norm,
                        gradient_clip_algorithm="norm", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        num_sanity_val_steps=0, callbacks=[timer])
    t_fit = time.perf_counter()
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    t_end = time.perf_counter()
    phases = {"imports_seconds": t_imported - t_start, "data_seconds": t_data - t_imported,
              "setup_seconds": timer.marks.get("train_start", t_end) - t_fit, "fit_seconds": t_end - t_fit}
    result = summarize_arm(arm, cfg, timer, meta, phases)
    model = module.model
    result["model"] = {
        "matmul_params": matmul_params(cfg),
        "matmul_params_counted_from_linears": sum(
            getattr(m.weight, "ds_numel", m.weight.numel()) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ("layers." in name or name.endswith("lm_head"))),
        "parameters": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "norm_class": type(model.model.norm).__name__,  # LigerRMSNorm when Liger patched the model
        "dtype": arm["dtype"], "gradient_checkpointing": arm["gradient_checkpointing"], "liger": arm["liger"],
        "batch_keys": sorted(batches[0])}
    result["device_name"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    if device == "cuda":
        result["memory"]["device_total_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
    result["data"]["pool"] = pool
    opt = trainer.optimizers[0] if trainer.optimizers else None
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO-3 optimizer wraps dasd's (CPU) AdamW
    result["optimizer"] = {"class": type(opt).__name__, "inner_class": type(inner).__name__,
                           "strategy": type(trainer.strategy).__name__,
                           "deepspeed_config": getattr(trainer.strategy, "config", None)}
    return result


def summarize_arm(arm: dict, cfg, timer, meta: list[dict], phases: dict) -> dict:
    """Throughput, MFU, the time split and memory of the timed steps."""
    acc, first, n = arm["accumulate"], arm["warmup_steps"], arm["steps"]
    timed = [s for s in timer.steps if first <= s["step"] < first + n]
    if len(timed) != n:
        raise RuntimeError(f"{len(timed)} of {n} timed steps ran ({len(timer.steps)} steps in all)")
    steps = []
    for s in timed:
        group = meta[s["step"] * acc:(s["step"] + 1) * acc]
        steps.append({"step": s["step"], "seconds": s["end"] - s["start"],
                      "fwd_bwd_seconds": s["fwd_bwd_end"] - s["start"],
                      "optimizer_seconds": s["end"] - s["fwd_bwd_end"],
                      "tokens": sum(m["tokens"] for m in group), "sum_sq": sum(m["sum_sq"] for m in group),
                      "samples": sum(m["samples"] for m in group)})
    tokens, sum_sq = sum(s["tokens"] for s in steps), sum(s["sum_sq"] for s in steps)
    seconds = timed[-1]["end"] - timed[0]["start"]  # includes what runs between steps ("other")
    fwd_bwd, opt = sum(s["fwd_bwd_seconds"] for s in steps), sum(s["optimizer_seconds"] for s in steps)
    flops = model_flops(cfg, tokens, sum_sq)
    peak = arm["peak_tflops"] * 1e12 if arm["peak_tflops"] else None
    per_pack = [m["samples"] for m in meta]
    pre, during = timer.pre_timing_peaks, timer.timed_peaks  # peaks before the timed steps; over them
    memory = {"timed_" + k: v for k, v in during.items()}
    memory.update({k: max(v, during.get(k, 0.0)) for k, v in pre.items()})
    return {
        "ok": True, "error": None,
        "data": {"context": arm["context"], "packs": len(meta), "timed_packs": n * acc,
                 "samples_per_pack": {"mean": sum(per_pack) / len(per_pack), "min": min(per_pack),
                                      "max": max(per_pack), "all": per_pack},
                 "packing_efficiency": sum(m["tokens"] for m in meta) / (len(meta) * arm["context"]),
                 "timed_tokens": tokens, "timed_sum_sq": sum_sq,
                 "sum_sq_per_pack": [m["sum_sq"] for m in meta],
                 "attention_share_of_model_flops": flops["attention"] / flops["total"]},
        "timing": {"timed_seconds": seconds, "step_seconds": seconds / n, "fwd_bwd_seconds": fwd_bwd / n,
                   "optimizer_seconds": opt / n, "other_seconds": (seconds - fwd_bwd - opt) / n,
                   "fwd_bwd_share": fwd_bwd / seconds, "optimizer_share": opt / seconds,
                   "other_share": (seconds - fwd_bwd - opt) / seconds,
                   "split_measured": all(s["split_measured"] for s in timed), **phases,
                   "warmup_seconds": timed[0]["start"] - timer.marks.get("train_start", timed[0]["start"]),
                   "steps": steps},
        "throughput": {"tokens_per_s": tokens / seconds, "model_flops": flops,
                       "model_tflops_per_s": flops["total"] / seconds / 1e12,
                       "mfu": flops["total"] / seconds / peak if peak else None,
                       "mfu_6n": flops["six_n"] / seconds / peak if peak else None,
                       "hfu": hardware_flops(cfg, tokens, sum_sq, arm["gradient_checkpointing"])
                       / seconds / peak if peak else None,
                       "peak_tflops": arm["peak_tflops"]},
        "memory": memory,
        "profile": ({"table": timer.profile_table, **(timer.profile_kernels or {})}
                    if arm["profile"] else None),
    }


def worker_main(arm_json: str) -> None:
    arm = json.loads(arm_json)
    try:
        result = run_arm(arm)
    except BaseException as e:  # noqa: BLE001 - every failure (OOM included) is a recorded result
        result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()[-6000:]}
        try:
            result["memory"] = _memory_peaks(arm["device"])
        except Exception:  # noqa: BLE001
            pass
    Path(arm["result_path"]).write_text(json.dumps(result, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------- parent


def write_model_dir(folder: Path, arch: str) -> dict:
    """config.json of the benchmark model + the tiny student's tokenizer (for its pad id); no weights. Plain
    JSON (``AutoConfig`` fills in the defaults), so that this process need not import transformers."""
    import importlib.util

    tiny = Path(importlib.util.find_spec("dasd").origin).parent / "assets" / "tiny_qwen3"
    if arch == "tiny":
        config = json.loads((tiny / "config.json").read_text())
    else:
        from das_scoring import QWEN3_4B

        config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **QWEN3_4B,
                  "dtype": "bfloat16"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, folder / name)
    return config


def plan_arms(args: argparse.Namespace) -> list[dict]:
    ligers = {"both": (True, False), "on": (True,), "off": (False,)}[args.liger]
    return [{"context": c, "offload": o, "liger": lg}
            for c in args.contexts for o in args.offload for lg in ligers]


def arm_name(arm: dict) -> str:
    return f"ctx{arm['context']}_offload-{arm['offload']}_liger-{'on' if arm['liger'] else 'off'}"


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    """Settings of the arms' processes (the allocator's expandable segments keep long-context peaks from
    fragmenting, as a long-context training run would set them), unless this environment sets them."""
    return {"TOKENIZERS_PARALLELISM": "false",
            "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}


def run_child(arm: dict, log_path: Path, timeout: float) -> dict:
    """Run one arm in a fresh interpreter; a crash, a kill or a timeout becomes an error result."""
    env = {**os.environ, **child_env()}
    cmd = [sys.executable, str(SCRIPT), "--worker", json.dumps(arm)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:  # a timeout, or this process interrupted: never leave the arm running on the GPU
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    result_path = Path(arm["result_path"])
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"process exited with code {rc}"
        result = {"ok": False, "error": f"{why} before writing a result"}
    if not result["ok"]:
        result["log_tail"] = _tail(log_path)
    result["process_wall_seconds"] = wall
    result["returncode"] = rc
    return result


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def table(arms: list[dict]) -> str:
    head = ("| context | liger | offload | tokens/s | step s | fwd+bwd / optim / other | MFU | MFU 6N | "
            "peak alloc / reserved GiB | host RSS GiB | samples/pack | attn |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for a in arms:
        r, lig = a["result"], "on" if a["liger"] else "off"
        if not r.get("ok"):
            err = (r.get("error") or "").replace("|", "/").replace("\n", " ")[:90]
            rows.append(f"| {a['context']} | {lig} | {a['offload']} | failed: {err} | | | | | | | | |")
            continue
        t, th, m = r["timing"], r["throughput"], r["memory"]
        rows.append(
            f"| {a['context']} | {lig} | {a['offload']} | {th['tokens_per_s']:,.0f} | "
            f"{t['step_seconds']:.3f} | "
            f"{pct(t['fwd_bwd_share'])} / {pct(t['optimizer_share'])} / {pct(t['other_share'])} | "
            f"{pct(th['mfu'])} | {pct(th['mfu_6n'])} | {_fmt(m.get('peak_allocated_gib'), '.1f')} / "
            f"{_fmt(m.get('peak_reserved_gib'), '.1f')} | {m['host_peak_rss_gib']:.1f} | "
            f"{r['data']['samples_per_pack']['mean']:.1f} | {r['model']['attn_implementation']} |")
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return {}
    from dasd.utils.run import versions

    wall, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    vers = versions()
    try:
        from importlib import metadata

        vers["flash-attn"] = metadata.version("flash-attn")
    except metadata.PackageNotFoundError:
        vers["flash-attn"] = None
    device_name = vers.get("gpu") if args.device == "cuda" else "cpu"
    if args.device == "cuda" and not device_name:
        raise SystemExit("--device cuda but torch sees no CUDA device")
    peak = args.peak_tflops or (peak_tflops_for(device_name) if args.device == "cuda" else None)
    if peak is None:
        raise SystemExit(f"no known bf16 peak for {device_name!r}: pass --peak-tflops")
    if args.out is None:
        slug = "cpu" if args.device == "cpu" else "cuda_" + next(
            (n for n in ("h200", "h100", "a100", "gh200") if n in device_name.lower()), "gpu")
        args.out = smoke_out("train_mfu") if args.smoke else f"benchmarks/results/train_mfu_{slug}.json"
    tmp = Path(tempfile.mkdtemp(prefix="train_mfu_"))
    out = Path(args.out)
    try:
        model_dir = tmp / "model"
        model_config = write_model_dir(model_dir, args.arch)
        report = {"benchmark": "train_mfu", "smoke": args.smoke,
                  "skipped": list(SMOKE_SKIPS) if args.smoke else [],
                  "config": {k: v for k, v in vars(args).items() if k != "worker"},
                  "device_name": device_name, "peak_tflops": peak, "model_config": model_config,
                  "flops": {"matmul_params": matmul_params(model_config),
                            "formula": "6*N*tokens + 6*n_layers*n_heads*head_dim*sum(s_i^2)"},
                  "machine": machine(), "versions": vers, **provenance(__file__, argv),
                  "child_env": child_env(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "started": started, "arms": []}
        if args.smoke:
            report["flop_check"] = flop_check()
        print(f"train_mfu [{device_name}]: {args.arch}, N = {matmul_params(model_config) / 1e9:.3f}B matmul "
              f"params, peak {peak} TFLOP/s; arms -> {out}", flush=True)
        for i, arm in enumerate(plan_arms(args)):
            name = arm_name(arm)
            full = {**arm, "name": name, "device": args.device, "strategy": args.strategy,
                    "steps": args.steps, "warmup_steps": args.warmup_steps, "accumulate": args.accumulate,
                    "attn": args.attn, "dtype": args.dtype, "gradient_checkpointing": args.gradient_checkpointing,
                    "peak_tflops": peak, "profile": args.profile, "seed": args.seed,
                    "sample_lengths": list(args.sample_lengths), "model_dir": str(model_dir),
                    "result_path": str(tmp / f"{i}_{name}.json")}
            left = math.inf if args.budget is None else args.budget - (time.perf_counter() - wall)
            if left <= 0:
                result = {"ok": False, "error": f"skipped: --budget {args.budget:.0f} s spent"}
            else:
                result = run_child(full, tmp / f"{i}_{name}.log", min(args.arm_timeout, left))
            report["arms"].append({**arm, "name": name, "result": result})
            if result.get("ok"):
                th, t = result["throughput"], result["timing"]
                print(f"  {name}: {th['tokens_per_s']:,.0f} tok/s, step {t['step_seconds']:.3f} s "
                      f"(fwd+bwd {t['fwd_bwd_share']:.0%}, optim {t['optimizer_share']:.0%}), "
                      f"MFU {pct(th['mfu'])} (6N {pct(th['mfu_6n'])}), "
                      f"{result['process_wall_seconds']:.0f} s", flush=True)
            else:
                print(f"  {name}: FAILED {result['error'][:300]}", flush=True)
            report["wall_seconds"] = time.perf_counter() - wall
            report["table"] = table(report["arms"])
            # after every arm, so that a run cut short keeps the arms it finished
            write_report(report, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["checks"] = sanity(report)
    write_report(report, out)
    if args.smoke:
        print("smoke: skipped (GPU only): " + "; ".join(SMOKE_SKIPS))
    print(report["table"])
    print(f"train_mfu: {len(report['arms'])} arms in {report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
