"""The steps of an ablation row (``experiment=world/<row>``): what a step trains (``Step``), the checks of a row's
steps and overrides, and what a step's folder records (``step.json``, its evaluation and data counts).
``dasd.recipes.ablation`` runs the steps."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dasd.utils.run import Manifest, write_json

STAGES = ("1", "2", "mixed")
TEACHERS = ("a", "b")
SAMPLERS = ("random", "divergence")
STEP_KEYS = {"stage", "teacher", "temperature", "sampler", "questions", "mask_student_prefix", "offpolicy_only"}
EVAL_KEYS = ("avg@k", "ci95", "truncation_rate", "unfinished_rate", "mean_response_tokens", "n_questions",
             "k", "results")
CACHE_VERSION = 2  # bump when a change of this module changes what a cached step or pool holds
# train.py keys the runner sets itself: a train_override of one of these would be silently replaced
OWNED_KEYS = ("stage", "sampler", "seed", "paths", "student.name_or_path", "data.path", "data.format",
              "data.teacher_tokenizer", "data.system_prompt", "train.epochs", "experiment_name", "run_name",
              "eval", "logger", "mixed.question_runs", "mixed.n_questions", "mixed.extra_offpolicy",
              "mixed.mask_student_prefix", "mixed.teacher.model", "mixed.teacher.max_tokens",
              "mixed.teacher.format", "mixed.teacher.system_prompt", "stage.init_from", "stage.temperature")


@dataclass(frozen=True)
class Step:
    """One step of a row (see conf/ablate.yaml ``steps``); ``questions`` in multiples of budget.questions."""

    stage: str
    teacher: str
    temperature: float | None = None
    sampler: str | None = None
    questions: float | None = None
    mask_student_prefix: bool | None = None
    offpolicy_only: bool | None = None  # mixed: no revision round, the off-policy samples alone (a control)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        if self.stage == "mixed":
            mask = str(self.mask_student_prefix).lower()
            if self.offpolicy_only:
                return "mixed, off-policy samples only (no revision round)"
            return f"mixed (mask_student_prefix={mask}, teacher {self.teacher})"
        return (f"stage{self.stage} ({self.sampler}, T={self.temperature!r}, teacher {self.teacher}, "
                f"{self.questions:g}x questions)")


def _positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x > 0


def parse_steps(raw: list) -> list[Step]:
    """Validate a row's ``steps`` (ValueError naming the step and field) and fill the defaults."""
    steps: list[Step] = []
    for i, s in enumerate(raw, 1):
        where = f"steps[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{where}: expected a mapping like {{stage: 1, teacher: a, ...}}, got {s!r}")
        if unknown := set(s) - STEP_KEYS:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(STEP_KEYS)}")
        stage = str(s.get("stage"))
        if stage not in STAGES:
            raise ValueError(f"{where}.stage: expected one of {STAGES}, got {s.get('stage')!r}")
        if (i == 1) != (stage == "1"):
            raise ValueError(f"{where}.stage={stage}: a row starts with one stage-1 step (from the student); "
                             "later steps are stage 2 or mixed (from the previous step's weights)")
        teacher = str(s.get("teacher", steps[-1].teacher if steps else "a"))
        if teacher not in TEACHERS:
            raise ValueError(f"{where}.teacher: expected one of {TEACHERS}, got {teacher!r}")
        if stage == "mixed":
            if extra := {"temperature", "sampler", "questions"} & set(s):
                raise ValueError(f"{where}: a mixed step takes its questions from the earlier steps; "
                                 f"drop {sorted(extra)} (budget.mixed sets the counts)")
            mask, only = s.get("mask_student_prefix", False), s.get("offpolicy_only", False)
            for name, value in (("mask_student_prefix", mask), ("offpolicy_only", only)):
                if not isinstance(value, bool):
                    raise ValueError(f"{where}.{name}: expected true or false, got {value!r}")
            steps.append(Step("mixed", teacher, mask_student_prefix=mask, offpolicy_only=only or None))
            continue
        for name in ("mask_student_prefix", "offpolicy_only"):
            if name in s:
                raise ValueError(f"{where}.{name}: only for stage: mixed")
        temperature, sampler = s.get("temperature"), s.get("sampler", "random")
        questions = s.get("questions", 1)
        if not _positive(temperature):
            raise ValueError(f"{where}.temperature: expected a number > 0 (0.6, 1.0), got {temperature!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"{where}.sampler: expected one of {SAMPLERS}, got {sampler!r}")
        if not _positive(questions):
            raise ValueError(f"{where}.questions: expected a multiple of budget.questions > 0, "
                             f"got {questions!r}")
        steps.append(Step(stage, teacher, float(temperature), sampler, float(questions)))
    return steps


def check_overrides(overrides: list[str]) -> None:
    """A ``train_overrides`` entry may not set a key the runner sets for each step (it would be replaced)."""
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if any(key == k or key.startswith(k + ".") for k in OWNED_KEYS):
            raise ValueError(f"train_overrides: {o!r} sets {key}, which the ablation runner sets for every "
                             "step (use the row's steps or the budget instead)")


WORLD_LAYOUT = ("world.json", "data/questions.jsonl", "data/heldout.jsonl", "teacher_a", "teacher_b",
                "student")


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def eval_fields(summary: dict) -> dict:
    return {k: summary.get(k) for k in EVAL_KEYS}


def data_fields(folder: Path) -> dict:
    """What a step trained on: candidates read, filter drops, selected and packed samples; for a mixed step
    the round's counts."""
    report_file, out = folder / "data_report.json", {}
    if report_file.is_file():
        rep = json.loads(report_file.read_text())
        filters, sel, pack = rep.get("filters") or {}, rep.get("selection") or {}, rep.get("packing") or {}
        drops = {name: f["dropped"] for name, f in (filters.get("filters") or {}).items() if f["dropped"]}
        out = {"candidates": (rep.get("read") or {}).get("read"), "filtered_out": filters.get("dropped"),
               "filter_drops": drops, "questions": sel.get("questions"), "selected": sel.get("selected"),
               "packed": pack.get("samples_packed"), "dropped_overlong": pack.get("dropped_overlong")}
    mixed = Manifest(folder / "manifest.json").data.get("mixed")
    if mixed:
        comp = mixed.get("composition") or {}
        out["mixed"] = {k: mixed.get(k) for k in ("questions", "truncated", "truncation_rate", "continued",
                                                   "kept")}
        out["mixed"].update(mixed_policy=comp.get("mixed_policy"), off_policy=comp.get("off_policy"))
    return out


def record_step(folder: Path, fields: dict, row_id: str) -> dict:
    """Create or update ``step.json`` (settings, parent, the rows that used the step)."""
    path = folder / "step.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(fields)
    info["rows"] = sorted(set(info.get("rows", [])) | {row_id})
    write_json(path, info)
    return info
