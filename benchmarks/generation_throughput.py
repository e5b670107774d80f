"""Sampling throughput: the HF engine's batched sampler against one request at a time and against vLLM.

One run measures a matrix of cells, every cell with the same requests through each arm:

* models: ``tiny_teacher`` (the built-in teacher) and ``world`` (a randomly initialised Qwen3 with the reasoning
  world's teacher architecture from ``conf/world/default.yaml`` and the built-in teacher's tokenizer: a random
  model runs every sample to its budget);
* shapes: 256 prompts x n=1 and 64 prompts x n=8 (the sample data's questions as chat requests), 128 and 512
  new tokens, at T=1.0 with every request seeded;
* threads: 1 and 2, each in its own subprocess (vLLM fixes its threads when it is built).

Arms: ``hf_batched`` (``HFEngine.generate`` of all requests: continuous batching, auto batch size),
``hf_single`` (transformers' ``generate`` one request per call with ``num_return_sequences=n`` and per-token
logprobs, which is what ``HFEngine`` did before it batched; on the first ``--single-prompts`` prompts only, as
each call runs alone its tokens/s does not depend on how many there are), ``hf_engine_one_per_call`` (today's
``HFEngine.generate`` called with one request at a time, same prompts: what a caller that does not batch
gets) and ``vllm`` (``VLLMEngine`` with its CPU defaults). Each arm's tokens/s is its sampled tokens over the wall time of its calls; peak memory is the
host's peak RSS above the arm's start (on CUDA: torch's peak allocated memory; the vLLM KV cache is allocated
when the engine is built, recorded apart).
On the first cell at the most threads two sweeps show the batch-size knobs: HF ``batch_size`` and vLLM
``max_num_seqs``.

    .venv-vllm/bin/python benchmarks/generation_throughput.py            # CPU, the whole matrix, vLLM included
    .venv/bin/python benchmarks/generation_throughput.py --smoke         # seconds; HF arms only without vLLM
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
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
WORKER_MARK = "GENERATION_RESULT "
SMOKE = {"models": "tiny_teacher", "shapes": "12x1,3x4", "max_tokens": "16", "threads": "0", "single_prompts": 2,
         "batch_sizes": "16", "vllm_max_num_seqs": ""}
GOAL_OVER_SINGLE = 10.0  # hf_batched / hf_single at 256 prompts
GOAL_VLLM_WITHIN = 2.0  # vllm / hf_batched


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", default="tiny_teacher,world", help="tiny_teacher, world, or HF directories")
    p.add_argument("--shapes", default="256x1,64x8", help="PROMPTSxN cells")
    p.add_argument("--max-tokens", default="128,512", help="new-token budgets")
    p.add_argument("--threads", default="1,2", help="torch threads per worker process (0: torch's default)")
    p.add_argument("--single-prompts", type=int, default=8, help="prompts of the one-at-a-time arm (n=1 cells; "
                                                                  "n>1 cells: a quarter)")
    p.add_argument("--batch-sizes", default="32,64,128,256", help="HF batch_size sweep on the first cell")
    p.add_argument("--vllm-max-num-seqs", default="128,256,512", help="vLLM max_num_seqs sweep on the first cell")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-vllm", action="store_true")
    p.add_argument("--out", default=None,
                   help="default benchmarks/results/generation_throughput_<device>.json (--smoke: outputs/benchmarks/)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # internal: one thread count
    args = parse_with_smoke(p, argv, SMOKE)
    args.out = args.out or (smoke_out("generation_throughput") if args.smoke
                            else f"benchmarks/results/generation_throughput_{args.device}.json")
    args.model_list = [m for m in args.models.split(",") if m]
    args.shape_list = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    args.token_list = [int(t) for t in str(args.max_tokens).split(",") if t]
    args.thread_list = [int(t) for t in str(args.threads).split(",") if t]
    args.batch_list = [int(b) for b in str(args.batch_sizes).split(",") if b]
    args.seqs_list = [int(b) for b in str(args.vllm_max_num_seqs).split(",") if b]
    return args


# ------------------------------------------------------------------------------------------- inputs


def model_dir(name: str) -> str:
    """A built-in asset, the world-sized random model (built once under outputs/benchmarks/), or a directory."""
    from dasd.models.student import asset_path

    if name == "tiny_teacher":
        return str(asset_path("tiny_teacher"))
    if name != "world":
        return name
    import yaml

    arch = yaml.safe_load(Path("conf/world/default.yaml").read_text())["teacher"]["architecture"]
    out = Path("outputs/benchmarks/world_model") / "_".join(f"{k}{v}" for k, v in sorted(arch.items()))
    if not (out / "config.json").exists():
        from dasd.models.student import load_tokenizer
        from dasd.world.models import init_model

        tok = load_tokenizer(str(asset_path("tiny_teacher")))
        init_model(tok, dict(arch), seed=0).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def build_requests(count: int) -> list:
    """The first ``count`` questions of the sample data (repeated when fewer), each with its own seed."""
    from dasd.generation.engine import Request
    from dasd.generation.questions import read_questions
    from dasd.models.student import asset_path

    questions, _ = read_questions(str(Path(asset_path("sample_data")) / "sample_T0.6.jsonl"))
    return [Request(messages=({"role": "user", "content": questions[i % len(questions)].input},), seed=10_000 + i)
            for i in range(count)]


# ------------------------------------------------------------------------------------------- arms


def timed(fn, meter: HostMemory) -> dict:
    """Run ``fn`` (returns samples per request) once: tokens, seconds, tokens/s, peak RSS above its start."""
    gc.collect()
    meter.reset()
    base = meter.current()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    samples = [s for group in out for s in group]
    tokens = sum(len(s.token_ids) for s in samples)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "samples": len(samples),
            "mean_output_tokens": tokens / max(1, len(samples)),
            "stopped": sum(s.finish_reason == "stop" for s in samples),
            "peak_above_start_mb": (meter.peak() - base) / MIB, "_out": out}


def single_generate(engine, requests: list, sampling) -> list:
    """One request per transformers ``generate`` call (``num_return_sequences=n``), raw per-token logprobs:
    the HF engine's sampling before it batched."""
    import torch

    from dasd.generation.engine import render_prompt, request_seed, row_seed

    out = []
    for i, r in enumerate(requests):
        prompt = render_prompt(engine.tokenizer, r)
        torch.manual_seed(row_seed(request_seed(r, sampling, i), 0) % 2**63)
        with torch.inference_mode():
            res = engine.model.generate(
                torch.tensor([prompt], device=engine.device), max_new_tokens=sampling.max_tokens, do_sample=True,
                temperature=sampling.temperature, top_p=1.0, top_k=0, num_return_sequences=sampling.n,
                return_dict_in_generate=True, output_logits=True, eos_token_id=sorted(engine._stop_ids),
                pad_token_id=engine.tokenizer.pad_token_id)
            lp = torch.stack([torch.log_softmax(s.float(), -1) for s in res.logits], 1)
            new = res.sequences[:, len(prompt):]
            token_lp = lp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        out.append([engine._sample(prompt, new[k].tolist(), token_lp[k].tolist(), sampling)
                    for k in range(sampling.n)])
    return out


def build_vllm(path: str, max_len: int, seed: int, max_num_seqs: int | None = None):
    """A VLLMEngine, or ``(None, reason)``."""
    if importlib.util.find_spec("vllm") is None:
        return None, f"vllm is not installed in this interpreter ({sys.executable})"
    from dasd.generation.vllm_engine import VLLMEngine

    try:
        return VLLMEngine(path, dtype="float32", seed=seed, max_model_len=max_len, max_num_seqs=max_num_seqs,
                          enable_prefix_caching=False), None
    except Exception as e:  # noqa: BLE001 (record why, keep the HF arms)
        return None, f"VLLMEngine failed to start: {type(e).__name__}: {e}"


def vllm_settings(engine) -> dict:
    import vllm

    cfg = engine.llm.llm_engine.vllm_config
    return {"version": vllm.__version__, "max_model_len": cfg.model_config.max_model_len,
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
            "enable_chunked_prefill": cfg.scheduler_config.enable_chunked_prefill,
            "enforce_eager": cfg.model_config.enforce_eager,
            "kv_cache_memory_bytes": getattr(cfg.cache_config, "kv_cache_memory_bytes", None)}


# ------------------------------------------------------------------------------------------- worker


def worker(args: argparse.Namespace) -> dict:
    """Every cell at one thread count (this process)."""
    import torch

    from dasd.generation.engine import SamplingConfig
    from dasd.generation.hf import HFEngine

    if args.worker:
        torch.set_num_threads(args.worker)
    meter = CudaMemory() if args.device == "cuda" else HostMemory()
    cells, sweeps, vllm_info = [], {}, {}
    longest = max(args.token_list) + 160  # chat prompts of the sample data are under 160 tokens
    for name in args.model_list:
        path = model_dir(name)
        hf = HFEngine(path, device=args.device, dtype="float32")
        vllm, skipped = (None, "--skip-vllm") if args.skip_vllm else build_vllm(path, longest, args.seed)
        vllm_info[name] = {"skipped": skipped} if vllm is None else {"skipped": None, **vllm_settings(vllm)}
        for prompts, n in args.shape_list:
            for max_tokens in args.token_list:
                requests = build_requests(prompts)
                sampling = SamplingConfig(n=n, temperature=args.temperature, max_tokens=max_tokens, seed=args.seed)
                cell = {"model": name, "prompts": prompts, "n": n, "max_tokens": max_tokens,
                        "threads": torch.get_num_threads(), "arms": {}}
                print(f"[{cell['threads']} threads] {name} {prompts}x{n} {max_tokens} tokens", flush=True)
                cell |= measure_cell(hf, vllm, requests, sampling, args.single_prompts, meter)
                arms = cell["arms"]
                print("   " + ", ".join(f"{a} {v['tokens_per_s']:.0f} tok/s" for a, v in arms.items())
                      + " | " + ", ".join(f"{k} {v:.2f}" for k, v in cell["ratios"].items()), flush=True)
                cells.append(cell)
        if vllm is not None:
            vllm.close()
        if not sweeps and args.worker == max(args.thread_list):  # once, at the most threads, on the first cell
            prompts, n = args.shape_list[0]
            sampling = SamplingConfig(n=n, temperature=args.temperature, max_tokens=args.token_list[0],
                                      seed=args.seed)
            sweeps = sweep(hf, path, build_requests(prompts), sampling, args, meter, longest)
        hf.close()
    return {"cells": cells, "sweeps": sweeps, "vllm": vllm_info}


def measure_cell(hf, vllm, requests: list, sampling, single_prompts: int, meter: HostMemory) -> dict:
    """Every arm on one cell's requests, the ratios, and whether batched samples equal the same requests alone."""
    hf.generate(requests[:2], sampling)  # warm-up (untimed)
    arms = {"hf_batched": timed(lambda: hf.generate(requests, sampling), meter)}
    few = requests[:max(1, single_prompts // (4 if sampling.n > 1 else 1))]
    arms["hf_single"] = timed(lambda: single_generate(hf, few, sampling), meter) | {"prompts": len(few)}
    arms["hf_engine_one_per_call"] = timed(lambda: [hf.generate([x], sampling)[0] for x in few], meter) | {
        "prompts": len(few)}
    picks = sorted({0, len(requests) // 2, len(requests) - 1})
    invariant = all([(s.token_ids, s.logprobs) for s in hf.generate([requests[i]], sampling)[0]]
                    == [(s.token_ids, s.logprobs) for s in arms["hf_batched"]["_out"][i]] for i in picks)
    if vllm is not None:
        vllm.generate(requests[:2], sampling)
        arms["vllm"] = timed(lambda: vllm.generate(requests, sampling), meter)
    ratios = {"hf_batched_over_hf_single": arms["hf_batched"]["tokens_per_s"] / arms["hf_single"]["tokens_per_s"],
              "hf_batched_over_hf_engine_one_per_call": arms["hf_batched"]["tokens_per_s"]
              / arms["hf_engine_one_per_call"]["tokens_per_s"]}
    if "vllm" in arms:
        ratios["vllm_over_hf_batched"] = arms["vllm"]["tokens_per_s"] / arms["hf_batched"]["tokens_per_s"]
    for arm in arms.values():
        arm.pop("_out")
    return {"arms": arms, "ratios": ratios, "batch_invariant": invariant}


def sweep(hf, path: str, requests: list, sampling, args, meter: HostMemory, longest: int) -> dict:
    """The first cell again at each HF batch size and each vLLM max_num_seqs (one vLLM engine alive at a time:
    closing one in-process engine tears down the parallel state every other one uses)."""
    out = {"hf_batch_size": {}, "vllm_max_num_seqs": {}}
    for b in args.batch_list:
        hf.batch_size = b
        r = timed(lambda: hf.generate(requests, sampling), meter)  # noqa: B023 (called at once)
        r.pop("_out")
        out["hf_batch_size"][b] = r
        print(f"   sweep hf batch_size={b}: {r['tokens_per_s']:.0f} tok/s", flush=True)
    hf.batch_size = None
    if not args.skip_vllm:
        for seqs in args.seqs_list:
            engine, why = build_vllm(path, longest, args.seed, max_num_seqs=seqs)
            if engine is None:
                out["vllm_max_num_seqs"][seqs] = {"skipped": why}
                continue
            engine.generate(requests[:2], sampling)
            r = timed(lambda e=engine: e.generate(requests, sampling), meter)
            r.pop("_out")
            out["vllm_max_num_seqs"][seqs] = r
            print(f"   sweep vllm max_num_seqs={seqs}: {r['tokens_per_s']:.0f} tok/s", flush=True)
            engine.close()
    return out


# ------------------------------------------------------------------------------------------- driver


def run_workers(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """One subprocess per thread count (``OMP_NUM_THREADS`` set before torch and vLLM load)."""
    results = []
    for threads in args.thread_list:
        env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="WARNING")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", str(threads)]
        lines = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
            for line in proc.stdout:  # each cell's line as it finishes
                if line.startswith(WORKER_MARK):
                    lines.append(line)
                else:
                    print(line, end="", flush=True)
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"worker ({threads} threads) exited with {proc.returncode}")
        results.append(json.loads(lines[-1][len(WORKER_MARK):]))
    return results


def summarize(cells: list[dict]) -> dict:
    """The goals, over the cells they are about (reported, not enforced)."""
    big = [c for c in cells if c["prompts"] >= 256]
    over_single = [c["ratios"]["hf_batched_over_hf_single"] for c in big]
    vllm = [c["ratios"]["vllm_over_hf_batched"] for c in cells if "vllm_over_hf_batched" in c["ratios"]]
    return {"hf_batched_over_hf_single_at_256_prompts": {"min": min(over_single, default=None),
                                                         "median": statistics.median(over_single) if over_single else None,
                                                         "goal": GOAL_OVER_SINGLE,
                                                         "met": bool(over_single) and min(over_single) >= GOAL_OVER_SINGLE},
            "vllm_over_hf_batched": {"max": max(vllm, default=None),
                                     "median": statistics.median(vllm) if vllm else None,
                                     "goal": f"<= {GOAL_VLLM_WITHIN}",
                                     "met": bool(vllm) and max(vllm) <= GOAL_VLLM_WITHIN}}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.worker is not None:
        print(WORKER_MARK + json.dumps(worker(args)), flush=True)
        return {}
    from dasd.utils.run import versions

    wall, load_before, started = time.perf_counter(), os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    parts = run_workers(args, argv)
    cells = [c for p in parts for c in p["cells"]]
    vllm_installed = importlib.util.find_spec("vllm") is not None
    checks = {"every_arm_produced_tokens": all(a["tokens"] > 0 for c in cells for a in c["arms"].values()),
              "batched_equals_alone": all(c["batch_invariant"] for c in cells) if args.device == "cpu" else True,
              "vllm_ran_where_installed": args.skip_vllm or not vllm_installed
              or all("vllm" in c["arms"] for c in cells)}
    report = {"benchmark": "generation_throughput", "smoke": args.smoke,
              "config": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
              "dtype": "float32", "temperature": args.temperature, "cells": cells,
              "sweeps": {p["cells"][0]["threads"]: p["sweeps"] for p in parts if p["cells"] and p["sweeps"]},
              "vllm": parts[0]["vllm"] if parts else {}, "summary": summarize(cells), "checks": checks,
              "machine": machine(), "versions": versions(), **provenance(__file__, argv),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "started": started,
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = write_report(report, args.out)
    s = report["summary"]
    print(f"hf_batched / hf_single at 256 prompts: min {s['hf_batched_over_hf_single_at_256_prompts']['min']}; "
          f"vllm / hf_batched: max {s['vllm_over_hf_batched']['max']} | {report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
