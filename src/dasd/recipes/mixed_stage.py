"""``stage=mixed``: build the stage-3 training set before training (spec §7).

1. Questions: the selected (curated) records of this experiment's ``mixed.question_runs`` (stage 1 and
   stage 2), read from their data caches by rebuilding each run's data module from its manifest's config
   (a cache hit; DAS selections come back from the score store); each uuid once (stage 1 and stage 2 may
   train on the same file; the duplicates are counted in ``composition.json``).
2. Round 0 (``mixed/round_0/``): the stage's starting weights (stage 2's final checkpoint) answer
   ``mixed.n_questions`` of them; truncated answers are cut, continued by the teacher and filtered.
3. Off-policy: ``mixed.extra_offpolicy`` records drawn from the same selected data, copied verbatim from their
   source files.
4. ``mixed/train.jsonl`` = the kept mixed-policy records + the off-policy records; the stage trains on it
   (released format, every record kept: ``sampler=all``, and no second filter pass: the round filtered and
   counted its records, the parent runs theirs).

The stage's training config (``mixed_training_config``) does not depend on the round's outputs, so
``train`` can tell a completed run (and return) before any of this. With several ranks only global rank 0
(from the launcher's environment: no process group exists yet) builds the data; the others wait for its
``mixed/prepared.done.json`` marker of this launch (``dasd.utils.sync``: a relaunch with the same config must
not take the previous attempt's marker).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from dasd.data.datamodule import source_rows
from dasd.data.selection import KeepAllSelector
from dasd.mixed.round import build_spec, draw, run_round
from dasd.models.student import load_tokenizer
from dasd.recipes.data import datamodule
from dasd.recipes.stage import stage_settings
from dasd.training.stages import resolve_init
from dasd.utils.io import read_jsonl, write_jsonl
from dasd.utils.logging import get_logger
from dasd.utils.ranks import env_rank_zero
from dasd.utils.run import Manifest
from dasd.utils.sync import RankZeroWork

log = get_logger(__name__)

# round statistics kept out of the manifest (per question and per cut: they live in round_0/stats.json)
BULKY_STATS = ("per_question", "cut_fractions")


def keep_all_sampler() -> dict:
    """The ``sampler=all`` config (conf/sampler/all.yaml), built from the selector class it instantiates."""
    return {"_target_": f"{KeepAllSelector.__module__}.{KeepAllSelector.__qualname__}", "name": KeepAllSelector.name}


def train_file(cfg: DictConfig) -> Path:
    return Path(cfg.paths.run_dir) / "mixed" / "train.jsonl"


def mixed_training_config(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` that trains on ``mixed/train.jsonl`` (written by ``prepare_mixed_stage``): released
    format, every record kept (``sampler=all``), no second filter pass (``data.prefiltered``)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.data.path, out.data.format, out.data.logprobs = str(train_file(cfg)), "released", None
        out.data.prefiltered = True
        out.sampler = OmegaConf.create(keep_all_sampler())
    return out


def round_summary(stats: dict) -> dict:
    """The round's statistics for the manifest (without the per-question lists)."""
    return {k: v for k, v in stats.items() if k not in BULKY_STATS}


def parent_selection(cfg: DictConfig, tokenizer) -> list[dict]:
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
        dm = datamodule(parent, tokenizer)
        dm.setup("fit")
        pool += [{**r, "run": str(run)} for r in dm.selected_records()]
    return pool


def unique_by_uuid(records: list[dict]) -> tuple[list[dict], int]:
    """The records with each uuid once (its first occurrence), and how many were dropped as duplicates."""
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(r["uuid"], r)
    return list(first.values()), len(records) - len(first)


def prepare_mixed_stage(cfg: DictConfig, key: str | None = None,
                        rank_zero: bool | None = None, env: Mapping[str, str] | None = None) -> dict | None:
    """Run round 0 and write ``mixed/train.jsonl`` (train on it with ``mixed_training_config(cfg)``); returns
    the round's statistics with the data's composition. Only rank 0 (``env_rank_zero`` unless ``rank_zero``
    says) builds them; the other ranks wait for its marker with ``key`` (the training config hash) of this
    launch (``dasd.utils.sync.launch_id``) and return None. ``env``: the launcher's environment (None: this
    process's)."""
    work = RankZeroWork(Path(cfg.paths.run_dir) / "mixed", "prepared", what="stage=mixed round 0", env=env)
    if not (env_rank_zero(env) if rank_zero is None else rank_zero):
        work.wait(key)
        return None
    with work.signal(key):
        return _prepare(cfg)


def _prepare(cfg: DictConfig) -> dict:
    run_dir = Path(cfg.paths.run_dir)
    init, _ = resolve_init(stage_settings(cfg))
    tokenizer = load_tokenizer(init)
    m = OmegaConf.to_container(cfg.mixed, resolve=True)
    # one file behind both stages puts its records in both selections: each uuid once, or a question would be
    # revised twice and train.jsonl would hold a uuid twice (an error when it is read)
    pool, duplicates = unique_by_uuid(parent_selection(cfg, tokenizer))
    questions = draw(pool, m["n_questions"], m["seed"])
    offpolicy = draw(pool, m["extra_offpolicy"], m["seed"] + 1)
    d = cfg.data
    filters = OmegaConf.to_container(cfg.filters, resolve=True) if cfg.filters.order else None
    spec = build_spec(m, round_index=0, student_model=init, system_prompt=d.system_prompt,
                      end_of_turn=d.end_of_turn, filters=filters, cutoff_len=d.cutoff_len)
    folder = run_dir / "mixed" / "round_0"
    revise = m["n_questions"] != 0  # 0: the control "off-policy part alone" (the same draw, no revision)
    stats = run_round(folder, questions, spec, transport=m["transport"], python=m.get("python")) if revise \
        else {"questions": 0, "truncated": 0, "truncation_rate": None, "continued": 0, "kept": 0,
              "skipped": "mixed.n_questions=0: no mixed-policy round, off-policy samples only"}
    path = train_file(cfg)
    with FileLock(str(path) + ".lock"):
        mixed = read_jsonl(folder / "mixed.jsonl") if revise else []
        extra = source_rows([r["source"] for r in offpolicy])
        rows = mixed + extra
        if not rows:
            raise ValueError(f"stage=mixed has no training data: round 0 kept no samples ({folder / 'stats.json'}) "
                             "and mixed.extra_offpolicy is 0")
        write_jsonl(path, rows)
    composition = {"train_file": str(path), "mixed_policy": len(mixed), "off_policy": len(extra),
                   "questions_pool": len(pool), "pool_duplicates_dropped": duplicates,
                   "questions_drawn": len(questions),
                   "off_policy_by_run": {run: sum(r["run"] == run for r in offpolicy) for run in m["question_runs"]}}
    (run_dir / "mixed" / "composition.json").write_text(json.dumps(composition, indent=2))
    log.info("stage=mixed data: %d mixed-policy + %d off-policy samples -> %s (%d records selected by more than "
             "one parent run counted once)", len(mixed), len(extra), path, duplicates)
    return {**stats, "composition": composition}
