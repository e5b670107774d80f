"""What a row's folder carries so that the report needs nothing else (``python report.py``).

``ablate.py`` keeps its steps, pools and evaluations in content-addressed caches (``<ablate_dir>/steps``,
``pools``), which can be large and live on one machine. A row's own folder (``<ablate_dir>/<row>_seed<s>/``)
gets, beside ``row_result.json``, the small files every report quantity is computed from:

- ``questions.jsonl.gz``: the final evaluation's per-question accuracy (``{"id", "accuracy"}`` per line), the
  input of the paired contrasts; ``final.results`` names it relative to the row folder.
- ``steps/<i>/das_summary.json``: a DAS step's sentence-type counts (the sentence-share figure).
- ``steps/<i>/round_0_stats.json.gz``: a mixed step's per-question cut-off records (the Fig. 7 analogue).

So a set of row folders can be copied off the machine or committed (docs/results/world_ablation/rows/) and the
report rebuilt from them alone, the caches gone. ``world_weights`` fingerprints the world's three models by
content, so rows run on separate builds of a world are combined only when the builds are the same weights.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from dasd.utils.hashing import weights_digest

QUESTIONS_FILE = "questions.jsonl.gz"
WORLD_MODELS = ("teacher_a", "teacher_b", "student")


def world_weights(world: Path) -> dict[str, str]:
    """{model: sha256 of its weight files, 16 hex digits} for the world's teachers and student."""
    out = {}
    for name in WORLD_MODELS:
        try:
            out[name] = weights_digest(world / name)
        except ValueError:
            raise ValueError(f"world {world}: {name} has no weight files (*.safetensors, *.bin)") from None
    return out


def open_text(path: Path):
    """A text file, gzip-compressed when its name ends in ``.gz``."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def write_questions(results: Path, out: Path) -> None:
    """An evaluation's ``results.jsonl`` -> ``out`` with only each question's id and accuracy (gzip)."""
    with results.open(encoding="utf-8") as src, gzip.open(out, "wt", encoding="utf-8") as dst:
        for n, line in enumerate(src, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "id" not in row or "accuracy" not in row:
                raise ValueError(f"{results}:{n}: missing field {'id' if 'id' not in row else 'accuracy'}")
            dst.write(json.dumps({"id": row["id"], "accuracy": row["accuracy"]}) + "\n")


def _das_summary(step_dir: Path) -> Path | None:
    """The DAS summary a stage writes into its run (``das_summary.json``, dasd.das.report)."""
    found = sorted(step_dir.rglob("das_summary.json"))
    return found[0] if found else None


def collect(run_dir: Path, entries: list[dict], final: dict) -> dict:
    """Copy the report's inputs of a finished row into ``run_dir``; returns ``final`` with ``results`` naming
    the row-local ``questions.jsonl.gz``. Each step entry gains ``evidence`` (its files, relative to
    ``run_dir``)."""
    source = final.get("results")
    if source:
        write_questions(Path(source), run_dir / QUESTIONS_FILE)
        final = {**final, "results": QUESTIONS_FILE}
    for i, entry in enumerate(entries):
        step_dir, files = Path(entry["dir"]), {}
        target = run_dir / "steps" / str(i)
        if (das := _das_summary(step_dir)) is not None:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(das, target / "das_summary.json")
            files["das_summary"] = f"steps/{i}/das_summary.json"
        stats = step_dir / "mixed" / "round_0" / "stats.json"
        if entry.get("stage") == "mixed" and stats.is_file():
            target.mkdir(parents=True, exist_ok=True)
            with gzip.open(target / "round_0_stats.json.gz", "wt", encoding="utf-8") as f:
                f.write(stats.read_text())
            files["mixed_stats"] = f"steps/{i}/round_0_stats.json.gz"
        entry["evidence"] = files
    return final


def resolve(result: dict, relative: str) -> Path:
    """A path a row_result names: relative ones are inside the row's folder (the ``row_result.json``'s)."""
    path = Path(relative)
    if path.is_absolute() or "_path" not in result:
        return path
    return Path(result["_path"]).parent / path


def step_file(result: dict, step: int, kind: str) -> Path | None:
    """A step's evidence file (``das_summary`` or ``mixed_stats``): the row-local copy, else (rows written
    before the copies existed) the file in the step's cache folder; None when neither exists."""
    entry = result["steps"][step]
    local = (entry.get("evidence") or {}).get(kind)
    if local:
        path = resolve(result, local)
        return path if path.is_file() else None
    step_dir = Path(entry["dir"])
    if kind == "das_summary":
        return _das_summary(step_dir) if step_dir.is_dir() else None
    path = step_dir / "mixed" / "round_0" / "stats.json"
    return path if path.is_file() else None


def read_json(path: Path):
    with open_text(path) as f:
        return json.load(f)


def check_same_weights(results: list[dict]) -> None:
    """Rows of one world (its config key) must come from the same weights: two builds of a world on different
    machines or library versions may differ, and their rows are then not one experiment. ValueError naming
    a row of each build."""
    seen: dict[str, dict[str, str]] = {}
    for r in results:
        world = r.get("world") or {}
        weights = world.get("weights")
        if not weights:  # rows written before the fingerprint existed
            continue
        builds = seen.setdefault(str(world.get("key")), {})
        builds.setdefault(json.dumps(weights, sort_keys=True), r.get("_path", "row_result.json"))
    for key, builds in seen.items():
        if len(builds) > 1:
            shown = "; ".join(f"{path} ({fp})" for fp, path in builds.items())
            raise ValueError(f"world {key}: rows from {len(builds)} different builds (model weights differ): "
                             f"{shown}. Report each build's rows separately, or rebuild and rerun")


def export_rows(results: list[dict], dest: Path) -> list[Path]:
    """Copy each reported row (``row_result.json`` and the files it names in its folder) to
    ``dest/<id>_seed<seed>/``, for committing or sharing: ``python report.py runs=<dest>`` then rebuilds the
    report with the caches gone. A row folder already there is replaced. Returns the folders written."""
    written = []
    for r in results:
        src = Path(r["_path"]).parent
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        out = dest / f"{r['id']}_seed{r['seed']}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        final = row.get("final") or {}
        if final.get("results"):
            given = resolve(r, final["results"])
            if not given.is_file():
                raise ValueError(f"{r['_path']}: its per-question results {given} are missing")
            if Path(final["results"]).is_absolute():  # a row written before the row-local copy existed
                write_questions(given, out / QUESTIONS_FILE)
            else:
                shutil.copyfile(given, out / QUESTIONS_FILE)
            row["final"] = {**final, "results": QUESTIONS_FILE}
        for entry in row.get("steps") or []:
            for relative in (entry.get("evidence") or {}).values():
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / relative, out / relative)
        (out / "row_result.json").write_text(json.dumps(row, indent=2))
        written.append(out)
    return written
