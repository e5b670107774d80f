"""Data pipeline throughput and peak memory: read + validate + tokenize + filter + cache of ``SFTDataModule``.

For each ``--records`` size, a synthetic file in the released format (uuid, input, output, domain, meta) is
streamed to disk, with response lengths in *student tokens* (the tiny tokenizer) drawn from a lognormal of
mean ``--mean-tokens`` clipped to ``--max-tokens``. ``SFTDataModule(...).setup()`` then runs in a fresh
subprocess (clean peak RSS) with the spec's default filters; a second fresh subprocess runs ``setup()`` again
to show the cache hit. Memory must stay bounded as the file grows: compare the peaks of the two sizes.

    .venv/bin/python benchmarks/data_pipeline.py                       # CPU, default sizes (~3 min, 2 cores)
    .venv/bin/python benchmarks/data_pipeline.py --records 2000,100000 # the issue's target (~5 GB of JSONL)
    .venv/bin/python benchmarks/data_pipeline.py --smoke               # seconds: 24 and 48 short records
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

from memory_meters import exit_code, parse_with_smoke, provenance, smoke_out, write_report

SYSTEM_PROMPT = "You are a helpful assistant."
DOMAINS = {"math": 0.5, "code": 0.25, "science": 0.15, "instruction_following": 0.10}  # assumed mix
WORDS = ("let", "we", "the", "sum", "of", "each", "term", "gives", "so", "then", "hence", "check", "value",
         "factor", "divide", "multiply", "subtract", "add", "both", "sides", "by", "root", "square", "prime",
         "integer", "bound", "case", "assume", "suppose", "result", "equation", "modulo", "remainder", "since",
         "therefore", "consider", "function", "derivative", "limit", "series", "angle", "triangle", "area",
         "probability", "expected", "count", "ways", "choose", "order", "parity", "even", "odd", "again",
         "wait", "recompute", "carefully", "verify", "holds", "fails", "step", "next", "first", "second")
OPS = ("+", "-", "×", "÷", "=", "<", ">", "≤", "mod")
# --smoke: two small files of short responses (the cache hit and the filters still run)
SMOKE = {"records": "24,48", "mean_tokens": 400.0, "max_tokens": 2048, "cutoff_len": 4096, "num_proc": 1}


# --------------------------------------------------------------------------------------- synthetic data


def _sentence(rng: random.Random) -> str:
    """A math-like sentence with random words and numbers (unique enough to pass the repetition filters)."""
    words = " ".join(rng.choices(WORDS, k=rng.randint(3, 9)))
    a, b = rng.randint(2, 99999), rng.randint(2, 9999)
    tail = f"{a} {rng.choice(OPS)} {b} = {rng.randint(0, 10 ** rng.randint(1, 7))}"
    return f"{words.capitalize()} {tail}{rng.choice('.!?;,:')}"


def _text(rng: random.Random, chars: int) -> str:
    parts, n = [], 0
    while n < chars:
        s = _sentence(rng)
        parts.append(s)
        n += len(s) + 1
        if rng.random() < 0.08:
            parts.append("\n")
    return " ".join(parts)


def chars_per_token(tokenizer, seed: int, chars: int = 400_000) -> float:
    text = _text(random.Random(seed + 1), chars)
    return len(text) / len(tokenizer.encode(text, add_special_tokens=False))


def lognormal_params(mean: float, sigma: float) -> tuple[float, float]:
    return math.log(mean) - sigma ** 2 / 2, sigma


def write_file(path: Path, n: int, args: argparse.Namespace, cpt: float) -> dict:
    """Stream ``n`` records to ``path`` (one record in memory at a time); returns the drawn length stats."""
    rng = random.Random(args.seed)
    mu, sigma = lognormal_params(args.mean_tokens, args.sigma)
    names, weights = list(DOMAINS), list(DOMAINS.values())
    total = longest = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            tokens = min(int(rng.lognormvariate(mu, sigma)), args.max_tokens)
            total, longest = total + tokens, max(longest, tokens)
            answer = rng.randint(0, 100000)
            body = _text(rng, max(int(tokens * cpt) - 40, 1))
            domain = rng.choices(names, weights)[0]
            rec = {"uuid": str(uuidlib.UUID(int=rng.getrandbits(128))),
                   "input": f"Problem {i}: {_sentence(rng)} Please reason step by step, and put your final "
                            "answer within \\boxed{}.",
                   "output": f"<think>\n{body}\n</think>\n\nThe answer is \\boxed{{{answer}}}.",
                   "domain": domain, "meta": json.dumps({"source": "synthetic", "target_tokens": tokens})}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return {"target_response_tokens_mean": total / max(n, 1), "target_response_tokens_max": longest}


# ---------------------------------------------------------------------------------------------- worker


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def worker(path: str, cache_dir: str, num_proc: int, cutoff_len: int) -> None:
    """One ``setup()`` in this (fresh) process; prints one JSON line."""
    import logging

    logging.disable(logging.WARNING)
    from dasd.data.datamodule import SFTDataModule
    from dasd.data.filters import FilterConfig, LengthConfig
    from dasd.data.selection import RandomSelector
    from dasd.models.student import asset_path, load_tokenizer

    tok = load_tokenizer(asset_path("tiny_qwen3"))
    baseline_kb = _status_kb("VmRSS")
    dm = SFTDataModule(path, tok, RandomSelector(0), cutoff_len=cutoff_len, system_prompt=SYSTEM_PROMPT,
                       filters=FilterConfig(length=LengthConfig(cutoff_len=cutoff_len)), cache_dir=cache_dir,
                       num_proc=num_proc)
    t0 = time.perf_counter()
    dm.setup()
    seconds = time.perf_counter() - t0
    store = dm.samples
    rep = dm.report()
    out = {"seconds": seconds, "hit": dm.cache_report.get("hit"), "baseline_mb": baseline_kb / 1024,
           "peak_rss_mb": _status_kb("VmHWM") / 1024,
           "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
           "tokens_cached": int(store.offsets[-1]), "samples_cached": len(store.offsets) - 1,
           "selected": len(store), "read": rep["read"], "selection": rep["selection"],
           "packing": rep["packing"],
           "filters": {k: v for k, v in (rep["filters"] or {}).items() if k != "filters"}
           | {"dropped_by": {n: {"dropped": s["dropped"], "subrules": s["subrules"]}
                             for n, s in (rep["filters"] or {}).get("filters", {}).items()}}}
    print("RESULT " + json.dumps(out))


def run_worker(path: Path, cache_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_worker", str(path), str(cache_dir), str(args.num_proc),
           str(args.cutoff_len)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"worker failed ({p.returncode}):\n{p.stderr[-4000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", default="1100,2200",
                   help="comma-separated file sizes in records (issue target: 100000)")
    p.add_argument("--mean-tokens", type=float, default=14000, help="mean response length, student tokens")
    p.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma of the response length")
    p.add_argument("--max-tokens", type=int, default=65536, help="response length clip, student tokens")
    p.add_argument("--cutoff-len", type=int, default=65536, help="length filter and pack capacity")
    p.add_argument("--num-proc", type=int, default=2, help="tokenizer processes of SFTDataModule")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the synthetic files and caches (default: system tmp)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic files and caches")
    p.add_argument("--out", default=None, help="default benchmarks/results/data_pipeline_cpu.json "
                                              "(--smoke: outputs/benchmarks/)")
    args = parse_with_smoke(p, argv, SMOKE)
    args.out = args.out or (smoke_out("data_pipeline") if args.smoke else "benchmarks/results/data_pipeline_cpu.json")
    return args


def sanity(results: list[dict]) -> dict[str, bool]:
    """Each size: the cold run tokenized (a cache miss that cached tokens), the warm run hit the cache, every
    record read is kept or dropped by a named filter, and the memory meter read a peak above the baseline."""
    def filters_add_up(r: dict) -> bool:
        f = r["filters"]
        return (f.get("kept", 0) + f.get("dropped", 0) == f.get("total")
                and sum(d["dropped"] for d in f["dropped_by"].values()) == f.get("dropped"))

    return {"cold_run_missed_the_cache": all(r["cold_hit_flag"] is False for r in results),
            "warm_run_hit_the_cache": all(r["cache_hit"] is True for r in results),
            "tokens_cached": all(r["tokens"] > 0 and r["samples_cached"] > 0 for r in results),
            "filters_add_up": all(filters_add_up(r) for r in results),
            "peak_rss_above_baseline": all(r["peak_rss_above_baseline_mb"] > 0 for r in results)}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    sizes = [int(x) for x in args.records.split(",") if x.strip()]
    wall, load_before = time.perf_counter(), os.getloadavg()
    from dasd.models.student import asset_path, load_tokenizer
    from dasd.utils.run import versions

    tok = load_tokenizer(asset_path("tiny_qwen3"))
    cpt = chars_per_token(tok, args.seed)
    print(f"tiny tokenizer (vocab {len(tok)}): {cpt:.3f} chars per token on the synthetic text")
    root = Path(tempfile.mkdtemp(prefix="dasd-bench-", dir=args.tmp))
    results = []
    try:
        for n in sizes:
            path = root / f"synthetic_{n}.jsonl"
            t0 = time.perf_counter()
            drawn = write_file(path, n, args, cpt)
            gen_s = time.perf_counter() - t0
            cache_dir = root / f"cache_{n}"
            cold = run_worker(path, cache_dir, args)
            warm = run_worker(path, cache_dir, args)
            total = cold["read"]["total"] if isinstance(cold["read"], dict) and "total" in cold["read"] else n
            r = {"records": n, "file_mb": path.stat().st_size / 2 ** 20, "generate_seconds": gen_s, **drawn,
                 "records_read": total, "seconds": cold["seconds"], "records_per_s": n / cold["seconds"],
                 "tokens": cold["tokens_cached"], "tokens_per_s": cold["tokens_cached"] / cold["seconds"],
                 "mb_per_s": path.stat().st_size / 2 ** 20 / cold["seconds"],
                 "mean_sample_tokens": cold["tokens_cached"] / max(cold["samples_cached"], 1),
                 "samples_cached": cold["samples_cached"], "selected": cold["selected"],
                 "baseline_mb": cold["baseline_mb"], "peak_rss_mb": cold["peak_rss_mb"],
                 "peak_rss_above_baseline_mb": cold["peak_rss_mb"] - cold["baseline_mb"],
                 "children_peak_rss_mb": cold["children_peak_rss_mb"],
                 "cache_mb": sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file()) / 2 ** 20,
                 "cache_hit": warm["hit"], "cache_hit_seconds": warm["seconds"],
                 "cache_hit_peak_rss_above_baseline_mb": warm["peak_rss_mb"] - warm["baseline_mb"],
                 "cold_hit_flag": cold["hit"], "filters": cold["filters"], "read": cold["read"],
                 "selection": cold["selection"], "packing": cold["packing"]}
            results.append(r)
            print(f"{n} records ({r['file_mb']:.0f} MB, {r['tokens'] / 1e6:.1f}M tokens): {r['seconds']:.1f} s, "
                  f"{r['records_per_s']:.1f} rec/s, {r['tokens_per_s'] / 1e6:.2f}M tok/s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB (+{r['peak_rss_above_baseline_mb']:.0f} over baseline), workers "
                  f"{r['children_peak_rss_mb']:.0f} MB | dropped {r['filters'].get('dropped')} | cache hit "
                  f"{r['cache_hit']} in {r['cache_hit_seconds']:.2f} s")
            if not args.keep:
                path.unlink()
                shutil.rmtree(cache_dir, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    small, large = min(results, key=lambda r: r["records"]), max(results, key=lambda r: r["records"])
    bounded = {"small_records": small["records"], "large_records": large["records"],
               "file_size_ratio": large["file_mb"] / small["file_mb"],
               "peak_rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"],
               "peak_rss_above_baseline_ratio": large["peak_rss_above_baseline_mb"]
               / max(small["peak_rss_above_baseline_mb"], 1e-9),
               "children_peak_rss_ratio": large["children_peak_rss_mb"] / max(small["children_peak_rss_mb"], 1e-9),
               "in_flight_records": 2 * args.num_proc * 64 if args.num_proc > 1 else 64}
    report = {"benchmark": "data_pipeline", "smoke": args.smoke, "config": vars(args) | {"domains": DOMAINS,
                                                                     "chars_per_token": cpt,
                                                                     "tokenizer_vocab": len(tok)},
              "results": results, "memory_boundedness": bounded, "checks": sanity(results),
              "versions": versions(), **provenance(__file__, argv), "cpu_count": os.cpu_count(),
              "cpu_affinity": len(os.sched_getaffinity(0)),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - wall, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = write_report(report, args.out)
    print(f"memory: file x{bounded['file_size_ratio']:.2f} -> peak RSS x{bounded['peak_rss_ratio']:.2f} "
          f"(above baseline x{bounded['peak_rss_above_baseline_ratio']:.2f}) | {report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(exit_code(main()))
