"""``run_row(cfg)``: one row of the paper's ablation tables (method.md §10, Tables 1, 3, 5, 7) at toy scale
in the reasoning world (``python ablate.py experiment=world/<row> seed=<s>``; docs/ablations.md).

A row is a chain of steps. Each step trains one stage in this process with ``dasd.recipes.sft.train``
(stage 1 from the untrained student, stage 2 and ``mixed`` from the previous step's final weights) on a
teacher pool, then evaluates its final checkpoint with ``dasd.recipes.evaluate.evaluate`` (avg@k on the world's
held-out questions). The configs of those calls are composed from ``conf/train.yaml``,
``conf/generate.yaml`` and ``conf/evaluate.yaml``, so a stage here is the stage ``python train.py`` runs.

Two content-addressed caches under ``ablate_dir`` make a table cost what its distinct steps cost:

* ``pools/<hash>/``: K teacher candidates per question with their logprobs (``generate``), keyed by the
  world, teacher, temperature, questions, K, token budget and pool seed; every seed and row shares them.
* ``steps/seed<s>/<hash>/``: a trained and evaluated step, keyed by its parent step's hash, its settings,
  its pool, the budget it uses, ``train_overrides``, the world and the seed. T3a = T1a, and T5b and T5c
  start from T3b's stage 1: those steps train once. A step is done when its manifest says completed and
  its evaluation (with the current evaluation settings) exists; a half-done step runs again (train's own
  resume continues it).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from dasd.ablation import evidence
from dasd.ablation.steps import (
    CACHE_VERSION,
    WORLD_LAYOUT,
    Step,
    check_overrides,
    count_lines,
    data_fields,
    eval_fields,
    parse_steps,
    record_step,
)
from dasd.config import quote_numeric_choices, register_resolvers
from dasd.generation.questions import read_questions
from dasd.recipes import world as world_build
from dasd.recipes.evaluate import evaluate
from dasd.recipes.generate import generate
from dasd.recipes.sft import train
from dasd.utils.hashing import model_fingerprint
from dasd.utils.logging import get_logger
from dasd.utils.paths import config_dir
from dasd.utils.run import Manifest, config_hash, git_revision, versions, write_json
from dasd.utils.wandb import open_run

log = get_logger(__name__)

def resolve_world(cfg: DictConfig) -> Path:
    """The world directory: ``world_dir`` when set (a world built elsewhere), else the ``world`` config's,
    built and cached by ``dasd.recipes.world.ensure_world`` on first use."""
    if cfg.get("world_dir"):
        world = Path(str(cfg.world_dir)).expanduser().resolve()
    else:
        world = Path(world_build.ensure_world(cfg.world, Path(cfg.paths.output_dir)))
    if missing := [p for p in WORLD_LAYOUT if not (world / p).exists()]:
        raise ValueError(f"world {world}: missing {missing} (docs/ablations.md lists a world's layout)")
    return world


@contextmanager
def _hydra():
    """Hydra's config loader: the running app's (``python ablate.py``), else conf/ of this checkout."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    conf = config_dir()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        yield


def compose(name: str, choices: list[str], values: dict) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``choices`` (Hydra overrides: groups, the user's extra overrides),
    then ``values`` (dotted key -> value) set directly, so paths and prompts need no override quoting."""
    with _hydra():
        out = hydra_compose(config_name=name, overrides=choices)
    with open_dict(out):
        for key, value in values.items():
            OmegaConf.update(out, key, value, merge=False)
    return out


class Ablation:
    """The state of one row's run: the world, the caches, the settings every step shares."""

    def __init__(self, cfg: DictConfig, world: Path) -> None:
        self.cfg, self.world = cfg, world
        self.info = json.loads((world / "world.json").read_text())
        self.world_key = str(self.info.get("key"))
        self.seed = int(cfg.seed)
        self.budget = OmegaConf.to_container(cfg.budget, resolve=True)
        self.root = Path(str(cfg.ablate_dir))
        self.n_train = count_lines(world / "data" / "questions.jsonl")
        # the world's system prompt, as its models were trained with it: world.json's (a world_dir may have
        # been built with other settings than cfg.world), else the world config's
        settings = self.info.get("settings") or {}
        self.system_prompt = settings["system_prompt"] if "system_prompt" in settings else \
            (cfg.world.get("system_prompt") if "world" in cfg else None)
        self.train_overrides = [str(o) for o in cfg.train_overrides]
        # what every model/pool/evaluation call shares: the output tree and the logger
        paths = OmegaConf.to_container(cfg.paths, resolve=True)
        self.common = {"experiment_name": str(cfg.experiment_name),
                       **{f"paths.{k}": v for k, v in paths.items() if k != "run_dir"},
                       "logger": OmegaConf.to_container(cfg.logger, resolve=True)}

    def n_questions(self, multiple: float) -> int:
        n = max(1, round(multiple * int(self.budget["questions"])))
        if n > self.n_train:
            raise ValueError(f"a step needs {n} training questions ({multiple:g} x budget.questions="
                             f"{self.budget['questions']}), but the world has {self.n_train} "
                             f"({self.world / 'data' / 'questions.jsonl'}): lower budget.questions or grow "
                             "the world (world.data.n_questions)")
        return n

    # --- teacher pools -------------------------------------------------------------------------------------
    def pool_seed(self) -> int:
        """The teacher's sampling seed: ``budget.pool_seed``, or the row's seed when it is null (pools
        resampled per seed, so the pool's randomness is part of the seeds' spread)."""
        b = self.budget
        return self.seed if b.get("pool_seed") is None else int(b["pool_seed"])

    def pool(self, teacher: str, temperature: float, n: int) -> tuple[str, Path]:
        """(the pool's key, its file): K candidates per question for the first ``n`` training questions.

        The pool is sampled once over ``budget.pool_questions[teacher]`` x ``budget.questions`` questions
        (or ``n`` if more) into ``pools/<key>/``; a step that needs fewer questions reads the first ``n`` of them
        (``subsets/first<n>.jsonl``). Sample seeds depend on the question, not on how many are sampled, so
        the subset is exactly the pool a run over ``n`` questions would draw."""
        b = self.budget
        most = float((b.get("pool_questions") or {}).get(teacher) or 0)
        n_pool = max(n, min(self.n_train, round(most * int(b["questions"]))))
        key, out = self._sample_pool(teacher, temperature, n_pool)
        if n == n_pool:
            return key, out
        return f"{key}/first{n}", self._subset(out, n)

    def _subset(self, pool: Path, n: int) -> Path:
        """The records of ``pool`` whose question is one of the world's first ``n`` training questions."""
        path = pool.parent.parent / "subsets" / f"first{n}.jsonl"
        if path.is_file():
            return path
        questions, _ = read_questions(self.world / "data" / "questions.jsonl")  # the ids generate.py gave them
        ids = {q.id for q in questions[:n]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with pool.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            for line in src:
                if json.loads(line)["question_id"] in ids:
                    dst.write(line)
        tmp.replace(path)
        return path

    def _sample_pool(self, teacher: str, temperature: float, n: int) -> tuple[str, Path]:
        b = self.budget
        spec = {"v": CACHE_VERSION, "world": self.world_key, "teacher": teacher, "temperature": temperature,
                "questions": n, "samples_per_question": b["samples_per_question"], "seed": self.pool_seed(),
                "max_tokens": b["teacher_max_tokens"], "system_prompt": self.system_prompt,
                "overrides": [str(o) for o in self.cfg.generate_overrides]}
        key = config_hash(spec)
        folder = self.root / "pools" / key
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            done = folder / "pool.json"
            if done.is_file() and Path(json.loads(done.read_text())["output"]).is_file():
                return key, Path(json.loads(done.read_text())["output"])
            t0 = time.perf_counter()
            choices = ["teacher=tiny", f"logger={self.cfg.logger.name}",
                       *[str(o) for o in self.cfg.generate_overrides]]
            gcfg = compose("generate", choices, {
                **self.common, "paths.run_dir": str(folder), "run_name": f"pool_{teacher}_T{temperature:g}",
                "teacher.name": f"teacher_{teacher}", "teacher.format": "plain",
                "teacher.name_or_path": str(self.world / f"teacher_{teacher}"),
                "teacher.system_prompt": self.system_prompt,
                "questions": str(self.world / "data" / "questions.jsonl"), "max_questions": n,
                "samples_per_question": b["samples_per_question"], "temperature": temperature,
                "seed": self.pool_seed(), "sampling.max_tokens": b["teacher_max_tokens"],
                "progress": bool(self.cfg.progress)})
            out = generate(gcfg)
            seconds = time.perf_counter() - t0
            summary = {k: v for k, v in out.items() if k != "output"}
            write_json(done, {**spec, "output": out["output"], "seconds": round(seconds, 1), "summary": summary})
            log.info("teacher %s pool at T=%g: %d questions x %d samples in %.0f s -> %s", teacher,
                     temperature, n, b["samples_per_question"], seconds, folder)
            return key, Path(out["output"])

    # --- steps ---------------------------------------------------------------------------------------------
    def step_budget(self, step: Step | None) -> dict:
        """The budget knobs a step's training uses (its pool's knobs are in the pool's key)."""
        b = self.budget
        if step is None:  # the untrained student
            return {}
        if step.stage == "mixed":
            return {"questions": b["questions"], "mixed": b["mixed"],
                    "teacher_max_tokens": b["teacher_max_tokens"]}
        return {"epochs": b["epochs"]}

    def step_key(self, step: Step | None, parent: str | None, pool: str | None, train_cfg: str | None = None,
                 parent_weights=None) -> str:
        """The step's identity: what it trains (parent, settings, pool, the budget it uses, overrides) and
        where. Evaluation settings are not in it: a step evaluated with another k is evaluated again, not
        retrained."""
        return config_hash({"v": CACHE_VERSION, "parent": parent, "step": step.settings() if step else None,
                            "pool": pool, "budget": self.step_budget(step),
                            "train_overrides": self.train_overrides if step else [], "world": self.world_key,
                            "system_prompt": self.system_prompt, "seed": self.seed, "train_config": train_cfg,
                            "parent_weights": parent_weights})

    def step_dir(self, key: str) -> Path:
        return self.root / "steps" / f"seed{self.seed}" / key

    def train_config(self, step: Step, folder: Path, parent_dir: Path | None, pool: Path | None,
                     question_runs: list[Path]) -> DictConfig:
        """The composed train.py config of one step trained in ``folder``."""
        b, teacher_dir = self.budget, str(self.world / f"teacher_{step.teacher}")
        init = str(parent_dir / "checkpoints" / "hf" / "final") if parent_dir else "student"
        values = {**self.common, "paths.run_dir": str(folder), "run_name": folder.name, "seed": self.seed,
                  "student.name_or_path": str(self.world / "student"), "stage.init_from": init,
                  "data.format": "generated", "data.teacher_tokenizer": teacher_dir,
                  "data.system_prompt": self.system_prompt,
                  "trainer.enable_progress_bar": bool(self.cfg.progress),
                  "tags": ["ablate", *[str(t) for t in self.cfg.tags]]}
        m = b["mixed"]
        if step.stage == "mixed":
            values.update({"data.path": str(folder / "mixed" / "train.jsonl"),  # written by the stage's round
                           "train.epochs": int(m["epochs"]),
                           "mixed.question_runs": [str(p) for p in question_runs],
                           "mixed.n_questions": 0 if step.offpolicy_only else
                           max(1, round(m["questions"] * b["questions"])),
                           "mixed.extra_offpolicy": round(m["extra_offpolicy"] * b["questions"]),
                           "mixed.mask_student_prefix": bool(step.mask_student_prefix),
                           "mixed.teacher.model": teacher_dir, "mixed.teacher.format": "plain",
                           "mixed.teacher.system_prompt": self.system_prompt,
                           "mixed.teacher.max_tokens": int(b["teacher_max_tokens"])})
        else:
            values.update({"data.path": str(pool), "stage.temperature": step.temperature,
                           "train.epochs": int(b["epochs"])})
        choices = [*quote_numeric_choices([f"stage={step.stage}"]), f"sampler={step.sampler or 'random'}", f"logger={self.cfg.logger.name}",
                   "eval=none", *self.train_overrides]
        return compose("train", choices, values)

    def train_config_hash(self, step: Step, parent_dir: Path | None, pool: Path | None,
                          question_runs: list[Path]) -> str:
        """The hash of everything train.py would run with (every default of conf/train.yaml, the sampler's beta,
        the filters, the mixed-policy settings...), the step's own folder left out: a changed default is a new
        step, never a stale reuse. Logging-only keys are left out too."""
        plain = OmegaConf.to_container(self.train_config(step, Path("/STEP"), parent_dir, pool, question_runs),
                                       resolve=True)
        for key in ("logger", "tags", "run_name"):
            plain.pop(key, None)
        plain.get("trainer", {}).pop("enable_progress_bar", None)
        return config_hash(plain)

    def train_step(self, step: Step, folder: Path, parent_dir: Path | None, pool: Path | None,
                   question_runs: list[Path]) -> dict:
        """Train one step in ``folder``."""
        return train(self.train_config(step, folder, parent_dir, pool, question_runs))

    def evaluate(self, model: Path, folder: Path, fresh: bool) -> tuple[dict, bool]:
        """avg@k of ``model`` on the held-out questions into ``folder``; reused when an evaluation with the
        same settings exists and the model was not (re)trained now (``fresh``). Returns (summary, reused)."""
        e = self.budget["eval"]
        signature = {"model": str(model), "k": e["k"], "max_tokens": e["max_tokens"], "limit": e["limit"],
                     "seed": self.seed, "system_prompt": self.system_prompt,
                     "task": str(self.world / "data" / "heldout.jsonl"),
                     "overrides": [str(o) for o in self.cfg.eval_overrides]}
        sig_file, summary_file = folder / "ablate_eval.json", folder / "summary.json"
        results = {"results": str(folder / "results.jsonl")}  # per question: the report's paired contrasts
        if not fresh and summary_file.is_file() and sig_file.is_file() and \
                json.loads(sig_file.read_text()) == signature:
            return {**json.loads(summary_file.read_text()), **results}, True
        choices = ["task=world", f"logger={self.cfg.logger.name}", *[str(o) for o in self.cfg.eval_overrides]]
        ecfg = compose("evaluate", choices, {
            **self.common, "paths.run_dir": str(folder), "run_name": f"{folder.parent.name}/eval",
            "model": str(model), "task.path": signature["task"], "task.limit": e["limit"], "k": e["k"],
            "task.max_tokens": e["max_tokens"], "system_prompt": self.system_prompt, "seed": self.seed,
            "overwrite": True})  # the folder is this step's: an evaluation with other settings is replaced
        sig_file.unlink(missing_ok=True)
        summary = evaluate(ecfg)
        sig_file.write_text(json.dumps(signature, indent=2))
        return {**summary, **results}, False


def run_step(ab: Ablation, step: Step, index: int, parent_key: str | None, parent_dir: Path | None,
             question_runs: list[Path]) -> tuple[str, Path, dict]:
    """Train (or reuse) and evaluate one step; returns (its key, its folder, its entry of row_result.json)."""
    row = ab.cfg.row
    pool_key, pool = None, None
    if step.stage != "mixed":
        pool_key, pool = ab.pool(step.teacher, step.temperature, ab.n_questions(step.questions))
    # a retrained parent (new weights at the same path) or any changed training setting is a new step
    parent_weights = model_fingerprint(str(parent_dir / "checkpoints" / "hf" / "final"), full=True) \
        if parent_dir else None
    key = ab.step_key(step, parent_key, pool_key, ab.train_config_hash(step, parent_dir, pool, question_runs),
                      parent_weights)
    folder = ab.step_dir(key)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        reused = Manifest(folder / "manifest.json").status == "completed"
        info = record_step(folder, {
            "key": key, "settings": step.settings(), "parent": parent_key,
            "parent_dir": str(parent_dir) if parent_dir else None, "pool": str(pool) if pool else None,
            "question_runs": [str(p) for p in question_runs] or None, "seed": ab.seed, "world": ab.world_key,
            "train_overrides": ab.train_overrides, "budget": ab.step_budget(step)}, str(row.id))
        if not reused:
            t0 = time.perf_counter()
            ab.train_step(step, folder, parent_dir, pool, question_runs)
            info = record_step(folder, {"train_seconds": round(time.perf_counter() - t0, 1)}, str(row.id))
        summary, eval_reused = ab.evaluate(folder / "checkpoints" / "hf" / "final", folder / "eval",
                                           fresh=not reused)
    entry = {"stage": step.stage, "settings": step.settings(), "key": key, "dir": str(folder),
             "reused": reused, "eval_reused": eval_reused, "train_seconds": info.get("train_seconds"),
             "eval": eval_fields(summary), "data": data_fields(folder)}
    seconds = info.get("train_seconds")
    trained = f"reused (trained in {seconds} s)" if reused else f"trained in {seconds:.0f} s"
    log.info("row %s seed %d: step %d/%d %s: %s, avg@%d %.1f%%", row.id, ab.seed, index, len(ab.cfg.steps),
             step.describe(), trained, summary["k"], summary["avg@k"])
    return key, folder, entry


def evaluate_base(ab: Ablation) -> dict:
    """The untrained student's evaluation (``eval_base: true``, T7a), cached like a step."""
    key = ab.step_key(None, None, None)
    folder = ab.step_dir(key)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        record_step(folder, {"key": key, "settings": {"stage": "base"}, "model": str(ab.world / "student"),
                              "seed": ab.seed, "world": ab.world_key}, str(ab.cfg.row.id))
        summary, reused = ab.evaluate(ab.world / "student", folder / "eval", fresh=False)
    log.info("row %s seed %d: base student: avg@%d %.1f%%%s", ab.cfg.row.id, ab.seed, summary["k"],
             summary["avg@k"], " (reused)" if reused else "")
    return {"stage": "base", "settings": {"stage": "base"}, "key": key, "dir": str(folder), "reused": reused,
            "eval": eval_fields(summary)}


def run_row(cfg: DictConfig) -> dict:
    """Run the row of ``cfg`` (conf/ablate.yaml): every step in order, each trained (or reused) and
    evaluated. Writes ``row_result.json`` and ``manifest.json`` into ``paths.run_dir``; returns the result."""
    t0 = time.perf_counter()
    steps = parse_steps(OmegaConf.to_container(cfg.steps, resolve=True))  # bad rows stop before any work
    if not steps and not cfg.eval_base:
        raise ValueError("the row has no steps and eval_base is false: choose a row (experiment=world/t1a "
                         "... world/t7d, experiments/world/) or give steps")
    check_overrides([str(o) for o in cfg.train_overrides])
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir / "manifest.json")
    config = OmegaConf.to_container(cfg, resolve=True)
    manifest.update(status="running", kind="ablate", row=config["row"], seed=int(cfg.seed), config=config,
                    versions=versions(), git=git_revision(Path(__file__).parent))
    try:
        ab = Ablation(cfg, resolve_world(cfg))
        log.info("row %s (table %s: %s) seed %d: %d steps in world %s (%s)", cfg.row.id, cfg.row.table,
                 cfg.row.label, ab.seed, len(steps), ab.world_key, ab.world)
        base = evaluate_base(ab) if cfg.eval_base else None
        entries, key, folder, runs = [], None, None, []
        for i, step in enumerate(steps, 1):
            sources = list(runs) if step.stage == "mixed" else []
            key, folder, entry = run_step(ab, step, i, key, folder, sources)
            entries.append(entry)
            if step.stage != "mixed":
                runs.append(folder)  # a later mixed step draws its questions from these runs' selected data
    except BaseException:
        manifest.update(status="failed")
        raise
    final = evidence.collect(run_dir, entries, entries[-1]["eval"] if entries else base["eval"])
    result = {"table": cfg.row.table, "id": cfg.row.id, "label": cfg.row.label,
              "paper": config["row"]["paper"], "seed": ab.seed,
              "world": {"key": ab.world_key, "dir": str(ab.world), "accuracy": ab.info.get("accuracy"),
                        "weights": evidence.world_weights(ab.world)},
              "base": base, "steps": entries, "final": final, "seconds": round(time.perf_counter() - t0, 1),
              "config": config, "versions": versions(), "git": git_revision(Path(__file__).parent)}
    write_json(run_dir / "row_result.json", result)
    manifest.update(status="completed", world=str(ab.world), final=final,
                    outputs={"row_result": str(run_dir / "row_result.json")},
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _log_wandb(cfg, run_dir, result)
    log.info("row %s seed %d: avg@%s %.1f%% (paper: %s) in %.0f s -> %s", cfg.row.id, ab.seed, final["k"],
             final["avg@k"], dict(config["row"]["paper"]) or "-", result["seconds"],
             run_dir / "row_result.json")
    return result


def _log_wandb(cfg: DictConfig, run_dir: Path, result: dict) -> None:
    """``logger=wandb``: a run per row (job type ``ablate_row``) with each step's avg@k and a steps table."""
    config = {"row": result["config"]["row"], "seed": result["seed"], "budget": result["config"]["budget"],
              "steps": result["config"]["steps"]}
    run = open_run(cfg.logger, dir=run_dir, group=cfg.experiment_name, job_type="ablate_row", name=cfg.run_name,
                   tags=["ablate", f"table{result['table']}", str(result["id"])], config=config)
    if run is None:
        return
    import wandb

    rows = ([(0, result["base"])] if result["base"] else []) + list(enumerate(result["steps"], 1))  # base: 0
    final = result["final"]
    scalars = {"final/avg@k": final["avg@k"], "final/truncation_rate": final["truncation_rate"]}
    scalars.update({f"step{i}/avg@k": r["eval"]["avg@k"] for i, r in rows})
    columns = ["step", "stage", "settings", "reused", "train_seconds", "avg@k", "ci95_low", "ci95_high"]
    data = [[i, r["stage"], json.dumps(r["settings"]), r["reused"], r.get("train_seconds"),
             r["eval"]["avg@k"], *r["eval"]["ci95"]] for i, r in rows]
    table = wandb.Table(columns=columns, data=data)
    run.summary.update(scalars)
    run.log({**scalars, "ablate/steps": table})
    run.finish()
