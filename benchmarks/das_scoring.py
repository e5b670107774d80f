"""DAS scoring cost: student ``score()`` throughput and peak memory at long lengths with a real-size vocabulary,
and the throughput of sentence segmentation + token alignment (spec §5.1-5.2).

Two parts (both by default; ``--skip-scoring`` / ``--skip-alignment``):

A. **scoring**: a randomly initialised Qwen3-architecture model with Qwen3's 151,936-entry vocabulary and an
   untied head (151,936 x 256) but a small body (hidden 256, 2 layers, 4 heads, 2 KV heads, head_dim 64), saved
   with the tiny student's tokenizer to a temporary folder so that ``HFEngine(model=folder)`` loads it the normal
   way. ``engine.score(prompt, completion)`` of a ``--prompt-tokens`` prompt and a completion of each
   ``--lengths`` size runs in a fresh subprocess per length (peaks do not mix): completion tokens/s over
   ``--repeats`` calls, and the peak memory of a call above the memory after load + warm-up (CPU: peak RSS;
   CUDA: ``torch.cuda.max_memory_allocated``), split into the decoder forward and the chunked head loop, next to
   what full sequence x vocabulary float32 logits would take.
B. **alignment**: realistic long reasoning responses (sample-data traces concatenated into a ``<think>`` block,
   with inline and display math and ×, ÷, ≠, −, … characters) of about each ``--lengths`` student tokens;
   per stage time of ``segment``, ``owner_of_chars``, ``student_token_starts`` + ``aggregate`` (student side)
   and ``teacher_token_starts`` (byte-level decode of teacher token ids) + ``aggregate`` (teacher side);
   sentences/s and characters/s. Pure CPU in every case (it runs on the host next to a GPU scorer).

    .venv/bin/python benchmarks/das_scoring.py                    # CPU, 2K/8K/32K (~10 min on 2 cores)
    .venv/bin/python benchmarks/das_scoring.py --smoke            # seconds: a tiny model, 128/256 tokens
    python benchmarks/das_scoring.py --device cuda                # -> benchmarks/results/das_scoring_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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

MIB = 2**20
WORKER_MARK = "DAS_SCORING_RESULT "
# Qwen3's vocabulary and a CPU-sized body (the head is the real size; the body is not)
MODEL_CONFIG = {"vocab_size": 151936, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                "max_position_embeddings": 40960,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "tie_word_embeddings": False,
                "rms_norm_eps": 1e-6, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 0}
# --arch qwen3_4b: the Qwen3-4B architecture (random init, bf16 on disk): the paper student's real scoring cost
QWEN3_4B = {**MODEL_CONFIG, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True}
# --smoke: a tiny body and a 2048-entry head (the tokenizer's ids stay below 1024)
TINY = {**MODEL_CONFIG, "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 4096}
ARCHES = {"small": MODEL_CONFIG, "qwen3_4b": QWEN3_4B, "tiny": TINY}
SMOKE = {"lengths": [128, 256], "repeats": 2, "align_repeats": 1, "arch": "tiny", "score_chunk_size": 64,
         "prompt_tokens": 16, "length_budget": 120.0}
UNIFORM_TOL = 1.0  # a random model's mean log-probability lies within this of -ln(vocab)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of part A (B is CPU-only)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768],
                   help="completion lengths in tokens (A: scored tokens; B: student tokens of the response)")
    p.add_argument("--score-chunk-size", type=int, default=None,
                   help="HFEngine score_chunk_size (default: the engine's)")
    p.add_argument("--repeats", type=int, default=3, help="timed score() calls per length (A)")
    p.add_argument("--align-repeats", type=int, default=5, help="timed runs of every alignment stage per length (B)")
    p.add_argument("--prompt-tokens", type=int, default=100, help="prompt length of the scored sequences (A)")
    p.add_argument("--dtype", default="float32", help="model dtype of part A (e.g. bfloat16 on cuda)")
    p.add_argument("--length-budget", type=float, default=600.0,
                   help="seconds per length in A: no further repeat starts once it would run past it, and a "
                        "worker that has not finished one call by then (+ load time) is killed and recorded")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--teacher-tokenizer", default=None,
                   help="teacher-side tokenizer of B (default: dasd/assets/tiny_teacher if present, else the "
                        "tiny student's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=sorted(ARCHES), default="small",
                   help="small: Qwen3's vocabulary head on a CPU-sized body; qwen3_4b: the Qwen3-4B architecture; "
                        "tiny: a 2048-entry head on a 1-layer body (--smoke)")
    p.add_argument("--skip-scoring", action="store_true", help="skip part A")
    p.add_argument("--skip-alignment", action="store_true", help="skip part B")
    p.add_argument("--out", default=None, help="default: benchmarks/results/das_scoring_<device>.json")
    p.add_argument("--_build-model", dest="build_model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_score-worker", dest="score_worker", default=None, help=argparse.SUPPRESS)  # model dir
    p.add_argument("--_length", dest="worker_length", type=int, default=None, help=argparse.SUPPRESS)
    args = parse_with_smoke(p, argv, SMOKE)
    if min(*args.lengths, args.repeats, args.align_repeats, args.prompt_tokens) < 1:
        p.error("lengths, repeats and --prompt-tokens must be >= 1")
    if args.score_chunk_size is not None and args.score_chunk_size < 1:
        p.error("--score-chunk-size must be >= 1")
    if args.out is None:
        args.out = smoke_out("das_scoring") if args.smoke else f"benchmarks/results/das_scoring_{args.device}.json"
    return args


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ------------------------------------------------------------------------------------ A: the scored model


def build_model(folder: str, seed: int, arch: str = "small") -> None:
    """Random Qwen3 with Qwen3's vocabulary, saved with the tiny student's tokenizer files (own process, so
    that the parent stays small and its peak RSS is not inherited by the workers' ``ru_maxrss``)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from dasd.models.student import asset_path

    torch.manual_seed(seed)
    big = arch != "small"
    if big and torch.cuda.is_available():
        torch.set_default_device("cuda")  # initialise 4B parameters on the GPU (minutes on a CPU)
    model = Qwen3ForCausalLM(Qwen3Config(**ARCHES[arch], dtype="bfloat16" if big else "float32"))
    if big:
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder)
    tiny = Path(asset_path("tiny_qwen3"))
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copy(tiny / name, Path(folder) / name)


def score_worker(args: argparse.Namespace) -> None:
    """One length in this fresh process: load, warm up, then ``--repeats`` timed calls (one JSON line each,
    so that a killed worker still leaves its finished calls)."""
    import torch

    from dasd.generation.hf import HFEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    length, device = args.worker_length, args.device
    kwargs = {} if args.score_chunk_size is None else {"score_chunk_size": args.score_chunk_size}
    engine = HFEngine(model=args.score_worker, device=device, dtype=args.dtype, **kwargs)
    load_seconds = time.perf_counter() - t_start
    tok = engine.tokenizer
    special = set(tok.all_special_ids)
    valid = [i for i in range(len(tok)) if i not in special]  # < 1024; the head still has 151,936 rows
    rng = random.Random(args.seed)
    prompt = [rng.choice(valid) for _ in range(args.prompt_tokens)]
    completion = [rng.choice(valid) for _ in range(length)]
    engine.score(prompt, completion[:1024])  # warm-up (untimed): lazy initialisation, first-call allocations
    gc.collect()
    meter = CudaMemory() if device == "cuda" else HostMemory()
    ru_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    baseline = meter.current()
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    head = {"worker": "header", "length": length, "prompt_tokens": len(prompt), "vocab_size": vocab,
            "score_chunk_size": engine.score_chunk_size, "dtype": str(engine.model.dtype),
            "attn_implementation": engine.model.config._attn_implementation,
            "parameters_m": sum(p.numel() for p in engine.model.parameters()) / 1e6,
            "torch_threads": torch.get_num_threads(), "load_seconds": load_seconds,
            "baseline_mb": baseline / MIB, "counter": meter.counter,
            "ru_maxrss_before_mb": ru_before_kb / 1024 if device == "cpu" else None}
    print(WORKER_MARK + json.dumps(head), flush=True)

    phase: dict[str, float] = {}

    def end_of_body(module, inputs, output) -> None:
        sync(device)
        phase["t_body"] = time.perf_counter()
        phase["body_peak"] = meter.peak()
        phase["after_body"] = meter.current()
        meter.reset()

    hook = engine.model.get_decoder().register_forward_hook(end_of_body)
    for r in range(args.repeats):
        elapsed = time.perf_counter() - t_start
        last = phase.get("last_seconds", 0.0)
        if r and elapsed + last > args.length_budget:
            print(WORKER_MARK + json.dumps({"worker": "stopped", "after_repeats": r,
                                            "reason": f"another call (~{last:.0f} s) would pass --length-budget "
                                                      f"{args.length_budget:.0f} s (elapsed {elapsed:.0f} s)"}),
                  flush=True)
            break
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        split = meter.reset()
        sync(device)
        t0 = time.perf_counter()
        scores = engine.score(prompt, completion)
        sync(device)
        t1 = time.perf_counter()
        head_peak = meter.peak()
        ru_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        phase["last_seconds"] = t1 - t0
        run = {"worker": "run", "repeat": r, "seconds": t1 - t0, "tokens_per_s": length / (t1 - t0),
               "body_seconds": phase["t_body"] - t0, "head_seconds": t1 - phase["t_body"],
               "scores": len(scores), "scores_finite": all(math.isfinite(s) for s in scores),
               "mean_logprob": sum(scores) / len(scores), "phase_split": split}
        if split:
            run.update(peak_above_baseline_mb=(max(phase["body_peak"], head_peak) - baseline) / MIB,
                       body_peak_above_baseline_mb=(phase["body_peak"] - baseline) / MIB,
                       head_peak_above_body_output_mb=(head_peak - phase["after_body"]) / MIB,
                       held_after_body_mb=(phase["after_body"] - baseline) / MIB,
                       dominated_by="body" if phase["body_peak"] >= head_peak else "head")
        else:  # no per-phase reset: only a lifetime peak
            run.update(peak_above_baseline_mb=(head_peak - baseline) / MIB)
        if device == "cpu":  # the brief's counter: lifetime ru_maxrss minus the RSS after load + warm-up
            run["ru_maxrss_growth_mb"] = (ru_after_kb * 1024 - baseline) / MIB
        else:
            run["max_memory_reserved_mb"] = meter.reserved_peak() / MIB
        print(WORKER_MARK + json.dumps(run), flush=True)
    hook.remove()


def run_length(model_dir: str, length: int, args: argparse.Namespace) -> dict:
    """One worker subprocess; its JSON lines, or what was finished when it failed or was killed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_score-worker", model_dir, "--_length", str(length),
           "--device", args.device, "--repeats", str(args.repeats), "--prompt-tokens", str(args.prompt_tokens),
           "--dtype", args.dtype, "--seed", str(args.seed), "--length-budget", str(args.length_budget)]
    cmd += ["--score-chunk-size", str(args.score_chunk_size)] if args.score_chunk_size else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    # every tensor above 128 KiB is its own mapping, returned to the OS when freed: RSS follows live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    limit = args.length_budget + 180  # load + warm-up + the call in flight when the budget ran out
    t0 = time.perf_counter()
    error = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
        stdout, stderr = proc.stdout, proc.stderr
        if proc.returncode != 0:
            error = f"worker exited with {proc.returncode}: {(stderr or stdout)[-1500:]}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        error = f"killed after {limit:.0f} s (--length-budget {args.length_budget:.0f} s + 180 s)"
    wall = time.perf_counter() - t0
    lines = [json.loads(ln[len(WORKER_MARK):]) for ln in stdout.splitlines() if ln.startswith(WORKER_MARK)]
    header = next((x for x in lines if x["worker"] == "header"), {})
    runs = [x for x in lines if x["worker"] == "run"]
    stopped = next((x for x in lines if x["worker"] == "stopped"), None)
    out = {"length": length, "sequence_tokens": args.prompt_tokens + length, "worker_wall_seconds": wall,
           **{k: v for k, v in header.items() if k != "worker"},
           "repeats_requested": args.repeats, "repeats_done": len(runs), "error": error,
           "stopped_early": stopped["reason"] if stopped else None}
    if not runs:
        out["error"] = error or "no finished score() call"
        return out
    for r in runs:
        r.pop("worker")
    tps = [r["tokens_per_s"] for r in runs]
    vocab = header["vocab_size"]
    chunk = min(header["score_chunk_size"], length)
    seq = args.prompt_tokens + length
    out.update(
        tokens_per_s_median=statistics.median(tps), tokens_per_s_best=max(tps),
        seconds_median=statistics.median(r["seconds"] for r in runs),
        body_seconds_median=statistics.median(r["body_seconds"] for r in runs),
        head_seconds_median=statistics.median(r["head_seconds"] for r in runs),
        spread=max(tps) / min(tps),
        peak_above_baseline_mb=max(r["peak_above_baseline_mb"] for r in runs),
        theory={"full_logits_mb": seq * vocab * 4 / MIB,
                "full_logits_plus_log_softmax_mb": 2 * seq * vocab * 4 / MIB,
                "chunk_logits_mb": chunk * vocab * 4 / MIB,
                "chunk_logits_plus_log_softmax_mb": 2 * chunk * vocab * 4 / MIB,
                "note": "float32 bytes: full = (prompt + completion) x vocab x 4, what model(ids).logits would "
                        "hold; the chunked scorer holds one chunk's logits and their log-softmax at once"},
        runs=runs)
    if all(r["phase_split"] for r in runs):
        out["body_peak_above_baseline_mb"] = max(r["body_peak_above_baseline_mb"] for r in runs)
        out["head_peak_above_body_output_mb"] = max(r["head_peak_above_body_output_mb"] for r in runs)
    if args.device == "cpu":
        out["ru_maxrss_growth_mb"] = max(r["ru_maxrss_growth_mb"] for r in runs)
    out["peak_over_full_logits"] = out["peak_above_baseline_mb"] / out["theory"]["full_logits_mb"]
    return out


def run_scoring(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="dasd-das-scoring-"))
    model_dir = root / "model"
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_build-model", str(model_dir),
                               "--seed", str(args.seed), "--arch", args.arch], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the model failed:\n{proc.stderr[-3000:]}")
        build_s = time.perf_counter() - t0
        config = json.loads((model_dir / "config.json").read_text())
        print(f"model: Qwen3, vocab {config['vocab_size']}, hidden {config['hidden_size']}, "
              f"{config['num_hidden_layers']} layers, untied head; built in {build_s:.1f} s", flush=True)
        results = []
        for length in args.lengths:
            r = run_length(str(model_dir), length, args)
            results.append(r)
            if "tokens_per_s_median" in r:
                split = (f" (body {r['body_peak_above_baseline_mb']:.0f}, head "
                         f"{r['head_peak_above_body_output_mb']:.0f})" if "body_peak_above_baseline_mb" in r else "")
                print(f"  score {length:6d} tokens: {r['tokens_per_s_median']:8.1f} tok/s "
                      f"({r['seconds_median']:.1f} s; body {r['body_seconds_median']:.1f} s, head "
                      f"{r['head_seconds_median']:.1f} s), peak +{r['peak_above_baseline_mb']:.0f} MiB{split} vs "
                      f"full logits {r['theory']['full_logits_mb']:.0f} MiB; {r['repeats_done']} runs"
                      + (f"; {r['error']}" if r["error"] else ""), flush=True)
            else:
                print(f"  score {length:6d} tokens: FAILED: {r['error']}", flush=True)
        ok = [r for r in results if "peak_above_baseline_mb" in r]
        summary = {}
        if len(ok) >= 2:
            lo, hi = ok[0], ok[-1]
            summary = {"shortest": lo["length"], "longest": hi["length"],
                       "length_ratio": hi["length"] / lo["length"],
                       "peak_ratio": hi["peak_above_baseline_mb"] / lo["peak_above_baseline_mb"],
                       "full_logits_ratio": hi["theory"]["full_logits_mb"] / lo["theory"]["full_logits_mb"],
                       "tokens_per_s_ratio": hi["tokens_per_s_median"] / lo["tokens_per_s_median"]}
        return {"arch": args.arch, "model_config": {k: config.get(k) for k in MODEL_CONFIG},
                "parameters_m": next((r["parameters_m"] for r in results if "parameters_m" in r), None),
                "build_seconds": build_s, "dtype": args.dtype,
                "counter": (CudaMemory if args.device == "cuda" else HostMemory).counter,
                "results": results, "summary": summary}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ B: segmentation + alignment


MATH_TEMPLATES = (
    "Let me write it as $x^2 + {a}x + {b} = 0$, so the product of the roots is $x_1 x_2 = {b}$.",
    "The total is\n\\[\n\\sum_{{i=1}}^{{{n}}} i = \\frac{{{n}({n}+1)}}{{2}} = {tri}.\n\\]",
    "Check: {a} × {b} = {ab}, and {ab} ÷ {b} = {a} ≠ {a1}.",
    "Wait, is $\\sqrt{{{sq}}} = {a}$? Yes! Since {a}² = {sq}.",
    "So the probability is \\(p = \\frac{{1}}{{{n}}}\\), about {pct:.2f}%.",
    "Hmm… let me double-check: {ab} − {b} = {abb}. That matches.",
    "We need $a \\le {a}$ and $b \\ge {b}$, i.e. $a - b \\ne {a1}$.",
    "Therefore\n$$\n{a} \\cdot {b} = {ab}.\n$$\nGood.",
    "Quick check in code:\n```python\nprint({a} * {b})  # {ab}. Done.\n```",
    "Is it “{a}” or “{a1}”? The first. (Note: {a} < {a1}.)",
)
THINK_SPLIT = re.compile(r"</?think>")


def _math_sentence(rng: random.Random) -> str:
    a, b, n = rng.randint(2, 999), rng.randint(2, 99), rng.randint(3, 200)
    return rng.choice(MATH_TEMPLATES).format(a=a, b=b, n=n, ab=a * b, a1=a + 1, abb=a * b - b, sq=a * a,
                                             tri=n * (n + 1) // 2, pct=100 / n)


def build_response(records: list[dict], tokenizer, target_tokens: int, rng: random.Random) -> str:
    """``<think>`` + sample-data reasoning traces and math/unicode sentences + ``</think>`` + a final answer,
    grown until it has about ``target_tokens`` student tokens."""
    final = "\n</think>\n\nSo the answer is $\\boxed{42}$.\n\n**Answer:** \\boxed{42}"
    budget = target_tokens - len(tokenizer.encode(final, add_special_tokens=False))
    parts, n = ["<think>\n"], 1
    order = list(range(len(records)))
    rng.shuffle(order)
    k = 0
    while n < budget:
        if rng.random() < 0.35:
            piece = _math_sentence(rng)
        else:
            pieces = THINK_SPLIT.split(records[order[k % len(order)]]["output"])
            k += 1
            piece = pieces[1].strip() if len(pieces) >= 3 else pieces[0].strip()
        piece += "\n\n" if rng.random() < 0.3 else "\n"
        parts.append(piece)
        n += len(tokenizer.encode(piece, add_special_tokens=False))
    return "".join(parts).rstrip("\n") + final


def load_teacher_tokenizer(args: argparse.Namespace):
    from dasd.models.student import ASSETS, asset_path, load_tokenizer

    candidates = [args.teacher_tokenizer] if args.teacher_tokenizer else [str(ASSETS / "tiny_teacher")]
    for name in candidates:
        try:
            return name, load_tokenizer(name), None
        except Exception as e:  # noqa: BLE001 (the default teacher asset may be missing; fall back)
            if args.teacher_tokenizer:
                raise
            note = f"{name} not loadable ({type(e).__name__}); the student's tokenizer decodes the teacher side"
    tiny = asset_path("tiny_qwen3")
    return tiny, load_tokenizer(tiny), note


def run_alignment(args: argparse.Namespace) -> dict:
    import numpy as np

    from dasd.das import align
    from dasd.das.segment import SEGMENTATION_VERSION, segment
    from dasd.models.student import asset_path, load_tokenizer

    student_name = asset_path("tiny_qwen3")
    student = load_tokenizer(student_name)
    teacher_name, teacher, teacher_note = load_teacher_tokenizer(args)
    records = []
    for f in sorted(Path(asset_path("sample_data")).glob("*.jsonl")):
        records += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    stages = ("segment", "owner_of_chars", "student_token_starts", "student_aggregate", "teacher_token_starts",
              "teacher_aggregate")
    results = []
    for length in args.lengths:
        rng = random.Random(args.seed + length)
        text = build_response(records, student, length, rng)
        teacher_ids = teacher.encode(text, add_special_tokens=False)  # the teacher's sampled tokens (given)
        nrng = np.random.default_rng(args.seed)
        times: dict[str, list[float]] = {s: [] for s in stages}
        for _ in range(args.align_repeats):
            t = [time.perf_counter()]
            spans = segment(text)
            t.append(time.perf_counter())
            owner = align.owner_of_chars(text, spans)
            t.append(time.perf_counter())
            ids, s_starts = align.student_token_starts(student, text)
            t.append(time.perf_counter())
            s_lp = -nrng.exponential(1.0, len(ids))  # stand-in log-probabilities (the scorer's, in a real run)
            t.append(time.perf_counter())
            student_agg = align.aggregate(s_starts, s_lp, owner, len(spans))
            t.append(time.perf_counter())
            t_starts = align.teacher_token_starts(text, teacher_ids, teacher)
            t.append(time.perf_counter())
            t_lp = -nrng.exponential(1.0, len(teacher_ids))
            t.append(time.perf_counter())
            teacher_agg = align.aggregate(t_starts, t_lp, owner, len(spans))
            t.append(time.perf_counter())
            durations = [t[1] - t[0], t[2] - t[1], t[3] - t[2], t[5] - t[4], t[6] - t[5], t[8] - t[7]]
            for s, d in zip(stages, durations, strict=True):
                times[s].append(d)
        med = {s: statistics.median(v) for s, v in times.items()}
        total = sum(med.values())
        n_sent = len(spans)
        student_side = med["segment"] + med["owner_of_chars"] + med["student_token_starts"] + med["student_aggregate"]
        r = {"target_student_tokens": length, "chars": len(text), "student_tokens": len(ids),
             "teacher_tokens": len(teacher_ids), "sentences": n_sent,
             "mean_sentence_chars": float(np.mean(spans[:, 1] - spans[:, 0])) if n_sent else 0.0,
             "student_unassigned_tokens": student_agg.unassigned_tokens,
             "teacher_unassigned_tokens": teacher_agg.unassigned_tokens,
             "sentences_without_student_tokens": int((student_agg.num_tokens == 0).sum()),
             "sentences_without_teacher_tokens": int((teacher_agg.num_tokens == 0).sum()),
             # every token's log-probability lands in one sentence or in the unassigned rest, on each side
             "conserves_logprob": all(abs(a.sum_logprob.sum() + a.unassigned_logprob - a.total_logprob) < 1e-6
                                      * max(1.0, abs(a.total_logprob)) for a in (student_agg, teacher_agg)),
             "stage_seconds_median": med, "stage_seconds_all": times,
             "total_seconds": total, "student_side_seconds": student_side,
             "sentences_per_s": n_sent / total, "chars_per_s": len(text) / total,
             "student_tokens_per_s": len(ids) / total,
             "student_side_sentences_per_s": n_sent / student_side}
        results.append(r)
        print(f"  align {length:6d} tokens ({len(text)} chars, {n_sent} sentences, teacher {len(teacher_ids)} "
              f"tokens): {total * 1e3:.1f} ms = " + ", ".join(f"{s} {med[s] * 1e3:.1f}" for s in stages)
              + f" ms; {r['sentences_per_s']:.0f} sentences/s, {r['chars_per_s'] / 1e6:.2f}M chars/s", flush=True)
    sample = text  # the last (longest) response, to show what was measured
    return {"segmentation_version": SEGMENTATION_VERSION, "student_tokenizer": student_name,
            "teacher_tokenizer": teacher_name, "teacher_tokenizer_note": teacher_note,
            "student_vocab": len(student), "teacher_vocab": len(teacher), "repeats": args.align_repeats,
            "stages": list(stages), "results": results,
            "sample_excerpt": sample[:600] + " … " + sample[-200:]}


# ---------------------------------------------------------------------------------------------- driver




def sanity(scoring: dict | None, alignment: dict | None) -> dict[str, bool]:
    """The run's own checks: every length scored without error, finite scores equal in every repeat, near
    -ln(vocab) (a random model), the memory meter saw the call; alignment gave every sentence tokens on both
    sides and conserved each side's total log-probability."""
    checks: dict[str, bool] = {}
    if scoring is not None:
        rs = scoring["results"]
        vocab = scoring["model_config"]["vocab_size"]
        runs = [r.get("runs", []) for r in rs]
        checks |= {
            "scoring_every_length_ran": all(r["error"] is None and r["repeats_done"] >= 1 for r in rs),
            "scores_finite": all(x["scores_finite"] for rr in runs for x in rr),
            "scores_same_every_repeat": all(len({round(x["mean_logprob"], 6) for x in rr}) == 1 for rr in runs),
            "scores_near_uniform": all(abs(x["mean_logprob"] + math.log(vocab)) < UNIFORM_TOL
                                       for rr in runs for x in rr),
            "memory_meter_reads": all(r.get("peak_above_baseline_mb", 0) > 0 for r in rs)}
    if alignment is not None:
        ar = alignment["results"]
        checks |= {
            "every_sentence_has_tokens": all(r["sentences_without_student_tokens"] == 0
                                             and r["sentences_without_teacher_tokens"] == 0 for r in ar),
            "alignment_conserves_logprob": all(r["conserves_logprob"] for r in ar)}
    return checks


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.build_model:
        quiet()
        build_model(args.build_model, args.seed, args.arch)
        return {}
    if args.score_worker:
        quiet()
        score_worker(args)
        return {}
    wall, load_before, started = time.perf_counter(), os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"das_scoring [{args.device}]: lengths {args.lengths}", flush=True)
    scoring = alignment = None
    if not args.skip_scoring:  # first, while this process is small (workers inherit nothing large)
        print("A. scoring (one subprocess per length):", flush=True)
        scoring = run_scoring(args)
    if not args.skip_alignment:
        print("B. segmentation + alignment (this process, CPU):", flush=True)
        quiet()
        alignment = run_alignment(args)
    comparison = None
    if scoring and alignment:  # alignment time next to student scoring time, per length
        comparison = []
        for s, a in zip(scoring["results"], alignment["results"], strict=True):
            if "seconds_median" in s:
                comparison.append({"length": s["length"], "score_seconds": s["seconds_median"],
                                   "alignment_seconds": a["total_seconds"],
                                   "alignment_over_score": a["total_seconds"] / s["seconds_median"]})
    from dasd.utils.run import versions

    report = {"benchmark": "das_scoring", "smoke": args.smoke, "config": vars(args), "scoring": scoring,
              "alignment": alignment, "alignment_vs_scoring": comparison,
              "checks": sanity(scoring, alignment), "machine": machine(), "versions": versions(),
              **provenance(__file__, argv),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "started": started,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = write_report(report, args.out)
    print(f"{report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
