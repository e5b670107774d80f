"""Provenance analysis cost (``python provenance.py``, method.md §5.3a): scoring the distilled model's responses
under the three models T, S and D, and relabelling them from the score stores at another alpha/beta.

Three randomly initialised Qwen3-architecture models with Qwen3's 151,936-entry vocabulary and a small body
(``das_scoring.py``'s ``small``; ``--arch tiny`` for a smoke run, ``qwen3_4b`` on a GPU), seeds 0, 1, 2, saved
with the tiny student's tokenizer, play T, S and D. ``--responses`` reasoning responses of about each
``--lengths`` student tokens (``das_scoring.build_response``: sample-data traces, math and unicode) are scored
by ``dasd.das.forced.score_responses`` exactly as the analysis does: rendering, ``HFEngine.score_batch``
(chunked head: ``--score-chunk-size`` logits rows at a time), alignment, the per-model ``SentenceStore``.
Per length and model: completion tokens/s and the peak RSS of scoring above the memory before it (CPU), or
``torch.cuda.max_memory_allocated`` (CUDA), next to what full sequence x vocabulary float32 logits would take;
then the relabel: reading the three stores, labelling every sentence and the summary, timed.

    .venv/bin/python benchmarks/provenance_scoring.py            # CPU: 512 and 2048 tokens (~3 min on 2 cores)
    .venv/bin/python benchmarks/provenance_scoring.py --smoke    # seconds
    python benchmarks/provenance_scoring.py --device cuda --arch qwen3_4b --lengths 8192 32768
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
ROLES = ("teacher", "student", "distilled")
SMOKE = {"lengths": [128], "responses": 4, "arch": "tiny", "score_chunk_size": 64}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048], help="response lengths in student tokens")
    p.add_argument("--responses", type=int, default=16, help="responses per length")
    p.add_argument("--arch", default="small", choices=("tiny", "small", "qwen3_4b"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-chunk-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: benchmarks/results/provenance_scoring_<device>.json")
    args = parse_with_smoke(p, argv, SMOKE)
    if args.out is None:
        args.out = smoke_out("provenance_scoring") if args.smoke else \
            f"benchmarks/results/provenance_scoring_{args.device}.json"
    return args


def build_models(root: Path, arch: str) -> dict[str, str]:
    """Three models (seeds 0, 1, 2), each built in a child process so this one stays small."""
    out = {}
    for seed, role in enumerate(ROLES):
        folder = root / role
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from das_scoring import "
                f"build_model; build_model({str(folder)!r}, {seed}, {arch!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
        out[role] = str(folder)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import numpy as np
    import torch
    import transformers
    from das_scoring import build_response

    from dasd.das.forced import PlainRendering, Response, SentenceStore, score_responses
    from dasd.das.provenance import LabeledResponse, provenance_codes, summarize
    from dasd.das.segment import segment
    from dasd.generation.hf import HFEngine
    from dasd.models.student import asset_path, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    meter = CudaMemory() if args.device.startswith("cuda") else HostMemory()
    records = []
    for f in sorted(Path(asset_path("sample_data")).glob("*.jsonl")):
        records += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    load_before, t_start = os.getloadavg(), time.perf_counter()
    results, checks_data = [], {"finite": True, "scored_all": True, "reload_scored_nothing": True, "tokens": True}
    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(Path(tmp) / "models", args.arch)
        vocab = json.loads((Path(models["teacher"]) / "config.json").read_text())["vocab_size"]
        tok = load_tokenizer(models["teacher"])
        rendering = PlainRendering(tok, system_prompt="You are a helpful assistant.")
        for length in args.lengths:
            rng = random.Random(args.seed + length)
            texts = [build_response(records, tok, length, rng) for _ in range(args.responses)]
            responses = [Response(f"r{i}", f"Question {i}?", t, segment(t)) for i, t in enumerate(texts)]
            n_tokens = [len(tok.encode(t, add_special_tokens=False)) + 1 for t in texts]
            row = {"length": length, "responses": len(responses), "sentences": sum(len(r.spans) for r in responses),
                   "mean_tokens": float(np.mean(n_tokens)), "models": {}}
            scores = {}
            for role in ROLES:
                store = SentenceStore(Path(tmp) / "stores" / f"{role}_{length}", meta={"role": role})
                engine = HFEngine(models[role], device=args.device, score_chunk_size=args.score_chunk_size)
                warm = rendering.render("q", "Warm up.")
                engine.score_batch([(warm.prompt_ids, warm.completion_ids)])
                meter.reset()
                base = meter.current()
                t0 = time.perf_counter()
                scores[role], stats = score_responses(responses, store, rendering, lambda e=engine: e,
                                                      batch_size=args.batch_size, what=role)
                seconds = time.perf_counter() - t0
                peak = meter.peak() - base
                again, stats2 = score_responses(responses, store, rendering, lambda: None)
                checks_data["reload_scored_nothing"] &= stats2["scored"] == 0
                checks_data["scored_all"] &= stats["scored"] == len(responses)
                checks_data["tokens"] &= stats["tokens"] == sum(n_tokens)
                checks_data["finite"] &= all(np.isfinite(s.sum_logprob).all() for s in scores[role].values())
                row["models"][role] = {"tokens": stats["tokens"], "seconds": round(seconds, 4),
                                       "tokens_per_s": stats["tokens"] / seconds,
                                       "peak_above_baseline_mb": peak / MIB}
            row["full_logits_fp32_mb"] = max(n_tokens) * vocab * 4 / MIB
            t0 = time.perf_counter()
            stores = {role: SentenceStore(Path(tmp) / "stores" / f"{role}_{length}", meta={}).load() for role in ROLES}
            labeled = [LabeledResponse(provenance_codes(*(stores[role][r.key].probability for role in ROLES)),
                                       r.spans, len(r.text), i % 2 == 0) for i, r in enumerate(responses)]
            summary = summarize(labeled, alpha=0.1, beta=0.1)
            row["relabel_seconds"] = round(time.perf_counter() - t0, 4)
            row["scoring_seconds"] = round(sum(m["seconds"] for m in row["models"].values()), 4)
            row["shares_all"] = summary["shares"]["all"]
            results.append(row)
            print(json.dumps({k: row[k] for k in ("length", "scoring_seconds", "relabel_seconds")}), flush=True)
    report = {
        "benchmark": "provenance_scoring", "smoke": bool(args.smoke), "machine": machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": sys.version.split()[0]}, **provenance(__file__, argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "vocab_size": vocab,
        "memory_meter": meter.counter, "results": results, "wall_seconds": round(time.perf_counter() - t_start, 1),
        "loadavg_1_5_15": {"before": list(load_before), "after": list(os.getloadavg())},
        "checks": {"scores_finite": checks_data["finite"], "every_response_scored": checks_data["scored_all"],
                   "every_token_scored": checks_data["tokens"],
                   "store_reload_scores_nothing": checks_data["reload_scored_nothing"],
                   "relabel_faster_than_scoring": all(r["relabel_seconds"] < r["scoring_seconds"] for r in results),
                   # a peak below the baseline by more than page-reclaim noise would mean the meter is not read
                   "memory_meter_reads": all(m["peak_above_baseline_mb"] > -1.0 for r in results
                                             for m in r["models"].values())},
    }
    print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
