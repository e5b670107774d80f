"""Build (once) and cache the reasoning world: its data, two teachers and a student, all trained by dasd.

``ensure_world(world_cfg, output_dir)`` returns the world's directory ``<output_dir>/world/<key>``, where
``key`` hashes the settings (``conf/world/default.yaml``) and ``WORLD_VERSION``; the first call builds it
(``python build_world.py`` does the same from the command line), later calls return at once. Layout::

    data/teacher_train.jsonl    teacher-style solutions (the strategy mixture): the teacher's SFT data
    data/student_pretrain.jsonl the weak terse style: the student's pre-training data
    data/questions.jsonl        training questions the teacher pools are sampled on (reference solutions kept)
    data/heldout.jsonl          held-out questions (never a training question): the evaluation set
    teacher_a/                  the teacher (HF model dir: model, tokenizer, chat template)
    teacher_b/                  a weaker second teacher: teacher_a's run after ``teacher.weaker_epoch`` epochs
    student/                    the student: smaller, another tokenizer, pre-trained on the weak style
    build/                      the build's evaluation runs (per-question results); the training runs live in
                                ``<root>/models/<role>-<key>/`` (shared by every world with the same model inputs)
    world.json                  settings, key, held-out accuracies (avg@k), timings, versions

Every model is trained by ``train.py`` (dasd's own SFT: packing, the chat template, the Lightning Trainer)
and measured by ``evaluate.py`` (avg@k at T=1.0, the paper's protocol), each as a child process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from dasd.utils.child import hydra_literal, run_child
from dasd.utils.logging import get_logger
from dasd.utils.paths import repo_root
from dasd.utils.run import config_hash, git_revision, versions, write_json
from dasd.world.generator import fact_records, make_records, write_jsonl
from dasd.world.models import init_model, train_tokenizer
from dasd.world.walk import WalkSettings

log = get_logger(__name__)
WORLD_VERSION = 1  # bump when the build's meaning changes (generator, recipe): a new key, a new world


def world_settings(world_cfg: DictConfig | dict) -> dict:
    """The plain settings that define the world (``dir``-like keys excluded)."""
    plain = OmegaConf.to_container(world_cfg, resolve=True) if isinstance(world_cfg, DictConfig) else dict(world_cfg)
    return {k: v for k, v in plain.items() if k not in ("root",)}


def world_key(world_cfg: DictConfig | dict) -> str:
    """The hash of what the world's data and models depend on (the build's own measurement, ``eval``, is not:
    other evaluation settings re-measure the same world)."""
    return config_hash({"version": WORLD_VERSION, **{k: v for k, v in world_settings(world_cfg).items()
                                                     if k != "eval"}})


def model_key(settings: dict, role: str) -> str:
    """The hash of what a model's training depends on: its data draws and its own settings (so changing the
    student leaves the teacher's cached run alone)."""
    d = settings["data"]
    data = ({"n_teacher_train": d["n_teacher_train"], "n_teacher_facts": d["n_teacher_facts"]} if role == "teacher"
            else {"n_student_pretrain": d["n_student_pretrain"], "n_student_facts": d["n_student_facts"],
                  "weak_correct": settings["weak_correct"]})
    spec = {k: v for k, v in settings[role].items() if k != "weaker_epoch"}
    gen = {"families": settings.get("families"), "walk": settings.get("walk")}  # absent in a first-world config
    return config_hash({"version": WORLD_VERSION, "role": role, "seed": settings["seed"],
                        "difficulty": settings["difficulty"], "system_prompt": settings.get("system_prompt"),
                        "data": data, "spec": spec, **({"generator": gen} if any(gen.values()) else {})})


def world_dir(world_cfg: DictConfig | dict, output_dir: str | Path) -> Path:
    root = world_cfg.get("root") if hasattr(world_cfg, "get") else None
    # absolute: the training and evaluation children run in the repository, not in the caller's directory
    return Path(root or Path(output_dir) / "world").expanduser().resolve() / world_key(world_cfg)


def ensure_world(world_cfg: DictConfig | dict, output_dir: str | Path) -> Path:
    """The world's directory, built first if it is not complete (a file lock keeps concurrent jobs from
    building it twice)."""
    wdir = world_dir(world_cfg, output_dir)
    settings = world_settings(world_cfg)

    def current() -> bool:
        if not (wdir / "world.json").exists():
            return False
        return json.loads((wdir / "world.json").read_text())["settings"].get("eval") == settings["eval"]

    if current():
        return wdir
    wdir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(wdir) + ".lock"):
        if (wdir / "world.json").exists() and not current():  # built; measured with other settings
            info = json.loads((wdir / "world.json").read_text())
            info["settings"] = settings
            info.update(measure(wdir, settings, info["seconds"]))
            write_json(wdir / "world.json", info)
        elif not current():
            build_world(world_cfg, wdir)
    return wdir


def _run(cmd: list[str], what: str) -> float:
    log.info("world: %s\n$ %s", what, " ".join(cmd))
    proc = run_child(cmd, cwd=repo_root())
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return proc.seconds


def _train(out: Path, name: str, init_dir: Path, data: Path, spec: dict, system_prompt) -> tuple[Path, float]:
    """SFT with train.py; returns the run dir and the seconds it took."""
    runs = out
    cmd = [sys.executable, "train.py", f"student.name_or_path={hydra_literal(init_dir)}", f"data.path={hydra_literal(data)}",
           "data.format=released", f"data.cutoff_len={spec['cutoff_len']}", "data.cache=false",
           f"train.micro_batch_size={spec['micro_batch_size']}",
           f"data.system_prompt={hydra_literal(system_prompt)}",
           "filters=none", "sampler=all", "logger=csv", "eval=none", "resume=never",
           "trainer.enable_progress_bar=false", f"seed={spec['train_seed']}", f"train.epochs={spec['epochs']}",
           f"optim.lr={spec['lr']}", f"optim.min_lr={spec['min_lr']}", "train.keep_hf_checkpoints=null",
           f"paths.output_dir={hydra_literal(runs)}", "experiment_name=world", f"run_name={name}"]
    seconds = _run(cmd, f"training {name} ({data.name}, {spec['epochs']} epochs)")
    return runs / "world" / name, seconds


def _evaluate(wdir: Path, name: str, model: Path, ev: dict, system_prompt) -> tuple[dict, float]:
    run_dir = wdir / "build" / "world" / f"eval_{name}"
    cmd = [sys.executable, "evaluate.py", f"model={hydra_literal(model)}", "task=world",
           f"task.path={hydra_literal(wdir / 'data' / 'heldout.jsonl')}",
           f"task.limit={'null' if ev.get('limit') is None else ev['limit']}", f"k={ev['k']}",
           f"task.max_tokens={ev['max_tokens']}", f"batch_size={ev.get('batch_size', 32)}",
           f"system_prompt={hydra_literal(system_prompt)}", "logger=none", "overwrite=true", f"hydra.run.dir={hydra_literal(run_dir)}"]
    seconds = _run(cmd, f"evaluating {name} on the held-out questions")
    return json.loads((run_dir / "summary.json").read_text()), seconds


def _model_info(path: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(AutoTokenizer.from_pretrained(path)),
            "hidden_size": model.config.hidden_size, "num_hidden_layers": model.config.num_hidden_layers}


def _copy_model(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def measure(wdir: Path, s: dict, seconds: dict) -> dict:
    """avg@k of the three models on the held-out questions (``evaluate.py``, settings ``s["eval"]``)."""
    accuracy, evals = {}, {}
    for name in ("teacher_a", "teacher_b", "student"):
        summary, seconds[f"eval_{name}"] = _evaluate(wdir, name, wdir / name, s["eval"], s.get("system_prompt"))
        accuracy[name] = summary["avg@k"]
        evals[name] = {k: summary[k] for k in ("avg@k", "ci95", "n_questions", "k", "truncation_rate",
                                               "mean_response_tokens") if k in summary}
    return {"accuracy": accuracy, "eval": evals}


def build_world(world_cfg: DictConfig | dict, wdir: Path) -> dict:
    """Write the data, train the teacher and the student, measure them, write ``world.json``."""
    s = world_settings(world_cfg)
    weaker, epochs = int(s["teacher"]["weaker_epoch"]), int(s["teacher"]["epochs"])
    if not 1 <= weaker < epochs:
        raise ValueError(f"world.teacher.weaker_epoch={weaker}: teacher_b is the checkpoint after that many epochs, "
                         f"so it must be in 1..{epochs - 1} (world.teacher.epochs={epochs})")
    t_start = time.perf_counter()
    wdir.mkdir(parents=True, exist_ok=True)
    data = wdir / "data"
    seed, diff = int(s["seed"]), tuple(s["difficulty"])
    d = s["data"]
    weak_correct = {int(k): float(v) for k, v in s["weak_correct"].items()}
    gen = {"families": s.get("families"), "walk": WalkSettings.from_dict(s.get("walk"))}
    files = {
        "teacher_train.jsonl": make_records(d["n_teacher_train"], seed=seed, difficulty=diff, style="teacher", **gen)
        + fact_records(d["n_teacher_facts"], seed=seed, difficulty=diff, **gen),
        "student_pretrain.jsonl": make_records(d["n_student_pretrain"], seed=seed + 1, difficulty=diff,
                                               style="weak", weak_correct=weak_correct, **gen)
        + fact_records(d["n_student_facts"], seed=seed + 1, difficulty=diff, **gen),
        "questions.jsonl": make_records(d["n_questions"], seed=seed + 2, difficulty=diff, style="teacher",
                                        unique=True, **gen),
        "heldout.jsonl": make_records(d["n_heldout"], seed=seed, difficulty=diff, style="teacher",
                                      split="heldout", **gen),
    }
    for name, records in files.items():
        write_jsonl(records, data / name)
    log.info("world: data in %s (%s)", data, ", ".join(f"{n}: {len(r)}" for n, r in files.items()))

    seconds: dict[str, float] = {}
    system_prompt = s.get("system_prompt")
    built = {}
    for role, train_file in (("teacher", "teacher_train.jsonl"), ("student", "student_pretrain.jsonl")):
        spec, mkey = s[role], model_key(s, role)
        mdir = wdir.parent / "models" / f"{role}-{mkey}"  # shared by every world with the same model inputs
        run_dir = mdir / "world" / role
        mdir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(mdir) + ".lock"):  # worlds that share a model train it once
            if not (mdir / "done.json").exists():  # each tokenizer learns its merges from its own model's data
                texts = [r[f] for r in files[train_file] for f in ("input", "output")]
                tokenizer = train_tokenizer(texts, int(spec["vocab_size"]), split_digits=bool(spec["split_digits"]))
                model = init_model(tokenizer, dict(spec["architecture"]), seed=int(spec["seed"]))
                init_dir = mdir / "init"
                tokenizer.save_pretrained(init_dir)
                model.save_pretrained(init_dir)
                log.info("world: %s initialised: %d tokens, %s parameters", role, len(tokenizer),
                         f"{sum(p.numel() for p in model.parameters()):,}")
                run_dir, secs = _train(mdir, role, init_dir, data / train_file, spec, system_prompt)
                write_json(mdir / "done.json", {"seconds": round(secs, 1), "key": mkey})
            else:
                log.info("world: %s reused from %s", role, mdir)
        done = json.loads((mdir / "done.json").read_text())
        seconds[f"train_{role}"] = done["seconds"]
        hf = run_dir / "checkpoints" / "hf"
        if role == "teacher":
            _copy_model(hf / "final", wdir / "teacher_a")
            _copy_model(hf / f"epoch_{int(spec['weaker_epoch']) - 1}", wdir / "teacher_b")
        else:
            _copy_model(hf / "final", wdir / "student")
        built[role] = {"run": str(run_dir), "model_key": mkey, **_model_info(hf / "final")}

    measured = measure(wdir, s, seconds)
    accuracy = measured["accuracy"]
    seconds["total"] = time.perf_counter() - t_start
    info = {"key": wdir.name, "version": WORLD_VERSION, "settings": s, **measured,
            "models": built, "records": {n: len(r) for n, r in files.items()},
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "versions": versions(),
            "git": git_revision(repo_root()), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(wdir / "world.json", info)  # written last: the "complete" marker
    log.info("world %s built in %.0f s: held-out avg@%s teacher_a %.1f%%, teacher_b %.1f%%, student %.1f%%",
             wdir.name, seconds["total"], s["eval"]["k"], accuracy["teacher_a"], accuracy["teacher_b"],
             accuracy["student"])
    return info
