"""``stage=mixed``: build the stage-3 training set before training (spec §7).

1. Questions: the selected (curated) records of this experiment's ``mixed.question_runs`` (stage 1 and
   stage 2), read from their data caches by rebuilding each run's data module from its manifest's config
   (a cache hit; DAS selections come back from the score store).
2. Round 0 (``mixed/round_0/``): the stage's starting weights (stage 2's final checkpoint) answer
   ``mixed.n_questions`` of them; truncated answers are cut, continued by the teacher and filtered.
3. Off-policy: ``mixed.extra_offpolicy`` records drawn from the same selected data, copied verbatim from their
   source files.
4. ``mixed/train.jsonl`` = the kept mixed-policy records + the off-policy records; the stage trains on it
   (released format, every record kept: ``sampler=all``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from dasd.mixed.revise import read_jsonl, write_jsonl
from dasd.mixed.round import build_spec, draw, run_round
from dasd.models.student import load_tokenizer
from dasd.training.stages import resolve_init
from dasd.utils.logging import get_logger
from dasd.utils.run import Manifest

log = get_logger(__name__)


def parent_selection(cfg: DictConfig, make_datamodule, tokenizer) -> list[dict]:
    """The selected records of each run in ``mixed.question_runs``, tagged with the run's name."""
    exp_dir = Path(cfg.paths.output_dir) / cfg.experiment_name
    pool: list[dict] = []
    for run in cfg.mixed.question_runs:
        manifest = Manifest(exp_dir / str(run) / "manifest.json")
        if manifest.status != "completed" or "config" not in manifest.data:
            raise ValueError(f"stage=mixed draws its questions from run '{run}' of experiment "
                             f"'{cfg.experiment_name}', but {exp_dir / str(run) / 'manifest.json'} is not a "
                             f"completed run. Train it first, or set mixed.question_runs.")
        parent = OmegaConf.create(manifest.data["config"])
        dm = make_datamodule(parent, tokenizer)
        dm.setup("fit")
        pool += [{**r, "run": str(run)} for r in dm.selected_records()]
    return pool


def _source_lines(records: list[dict]) -> list[dict]:
    """The full records behind ``source`` = ``file:line`` (each file streamed once), in the given order."""
    wanted: dict[str, dict[int, int]] = defaultdict(dict)
    for i, r in enumerate(records):
        path, _, line = r["source"].rpartition(":")
        wanted[path][int(line)] = i
    out: list[dict | None] = [None] * len(records)
    for path, lines in wanted.items():
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, start=1):
                if n in lines:
                    out[lines[n]] = json.loads(text)
    missing = [records[i]["source"] for i, r in enumerate(out) if r is None]
    if missing:
        raise ValueError(f"off-policy records not found at their source lines (was the file changed?): {missing[:5]}")
    return out


def prepare_mixed_stage(cfg: DictConfig, make_datamodule) -> tuple[DictConfig, dict]:
    """Run round 0 and write ``mixed/train.jsonl``; returns the config training on it and the round's stats."""
    run_dir = Path(cfg.paths.run_dir)
    init, _ = resolve_init(cfg)
    tokenizer = load_tokenizer(init)
    m = OmegaConf.to_container(cfg.mixed, resolve=True)
    pool = parent_selection(cfg, make_datamodule, tokenizer)
    questions = draw(pool, m["n_questions"], m["seed"])
    offpolicy = draw(pool, m["extra_offpolicy"], m["seed"] + 1)
    d = cfg.data
    filters = OmegaConf.to_container(cfg.filters, resolve=True) if cfg.filters.order else None
    spec = build_spec(m, round_index=0, student_model=init, system_prompt=d.system_prompt,
                      end_of_turn=d.end_of_turn, filters=filters)
    folder = run_dir / "mixed" / "round_0"
    stats = run_round(folder, questions, spec, transport=m["transport"], python=m.get("python"))
    train_file = run_dir / "mixed" / "train.jsonl"
    with FileLock(str(train_file) + ".lock"):
        mixed = read_jsonl(folder / "mixed.jsonl")
        seen = {r["uuid"] for r in mixed}
        extra = [r for r in _source_lines(offpolicy) if r["uuid"] not in seen]
        rows = mixed + extra
        if not rows:
            raise ValueError(f"stage=mixed has no training data: round 0 kept no samples ({folder / 'stats.json'}) "
                             "and mixed.extra_offpolicy is 0")
        write_jsonl(train_file, rows)
    composition = {"train_file": str(train_file), "mixed_policy": len(mixed), "off_policy": len(extra),
                   "questions_pool": len(pool), "questions_drawn": len(questions),
                   "off_policy_by_run": {run: sum(r["run"] == run for r in offpolicy) for run in m["question_runs"]}}
    (run_dir / "mixed" / "composition.json").write_text(json.dumps(composition, indent=2))
    log.info("stage=mixed data: %d mixed-policy + %d off-policy samples -> %s", len(mixed), len(extra), train_file)
    with open_dict(cfg):
        cfg.data.path, cfg.data.format, cfg.data.logprobs = str(train_file), "released", None
        cfg.sampler = OmegaConf.create({"_target_": "dasd.data.selection.KeepAllSelector", "name": "all"})
    return cfg, {**{k: v for k, v in stats.items() if k not in ("per_question", "cut_fractions")},
                 "composition": composition}
