"""Stage planning: where a stage starts from (student, stage-1 result, or a path) and whether it resumes.

* ``stage.init_from``: ``student`` (the configured student), ``auto`` (the final HF checkpoint of this
  experiment's stage-1 run), or a path to an HF model directory. Only weights carry over: the optimizer
  and LR schedule always start fresh (spec §6.1).
* ``resume``: ``auto`` continues the run in this run dir from ``checkpoints/last.ckpt`` (and does nothing
  if the stage already completed); ``never`` starts over; a path resumes from that Lightning checkpoint.
  A resume whose training config differs from the checkpoint's is refused (lessons §1.9).
"""

from __future__ import annotations

import json
import secrets
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from dasd.utils.logging import get_logger
from dasd.utils.run import Manifest, checkpoint_identity, config_hash

log = get_logger(__name__)

# Config keys that do not change what is trained (a resume may change them freely).
NON_TRAINING_KEYS = ("resume", "logger", "paths", "tags", "train.save_every_n_steps", "train.plot_every_n_steps",
                     "train.progress_refresh_rate", "train.keep_hf_checkpoints", "trainer.enable_progress_bar",
                     "data.cache", "data.num_proc", "data.num_workers", "data_only", "sampler.engine",
                     "sampler.engine_args", "sampler.batch_size", "sampler.flush_every", "sampler.num_examples",
                     "sampler.store_dir", "mixed.transport", "mixed.python", "mixed.batch_size",
                     "mixed.offload_training_state", "strategy.timeout_minutes", "eval",
                     "student.load.attn_implementation",  # a kernel choice: every choice isolates samples
                     "train.nonfinite", "train.max_skipped_steps")  # a failed run may resume with skip


@dataclass(frozen=True)
class StageSettings:
    """What planning a stage reads (``dasd.recipes.sft.stage_settings`` takes it from the config)."""

    stage_id: str | int
    init_from: str  # student | auto | an HF directory | a hub id
    parent_run: str | None  # auto: the run of this experiment whose final checkpoint the stage starts from
    student: str  # student.name_or_path
    student_init: str  # student.load.init: pretrained | random
    run_dir: Path
    experiment_dir: Path  # paths.output_dir / experiment_name
    experiment_name: str
    resume: str  # auto | never | a checkpoint path
    config: dict  # the resolved config: the manifest's record and the training hash's input


@dataclass
class StagePlan:
    run_dir: Path
    init_from: str
    config: dict
    config_hash: str
    parent: dict = field(default_factory=dict)
    resume_ckpt: str | None = None
    wandb_run_id: str | None = None
    already_completed: bool = False
    display_name: str = ""


# Keys that only restate another key (train.epochs = ${stage.epochs}) or only feed the mixed-policy settings
# (mixed.teacher.chat_template_kwargs = ${data.teacher_chat_template_kwargs}): the hash sees them where they act.
DERIVED_KEYS = ("stage.epochs", "data.teacher_chat_template_kwargs")


def mixed_policy_active(config: dict) -> bool:
    """The ``mixed`` settings act on this run: ``stage=mixed`` or ``callbacks=mixed_policy``."""
    return bool((config.get("stage") or {}).get("mixed")) or bool((config.get("callbacks") or {}).get("mixed_policy"))


def training_config_hash(config: dict) -> str:
    """The hash of what a run trains (a resume must match it). Besides ``NON_TRAINING_KEYS`` and
    ``DERIVED_KEYS``, the ``mixed`` group counts only where it acts (``mixed_policy_active``; elsewhere only a
    ``mask_student_prefix: true``, which changes the loss on any mixed-policy records in the data) and
    ``callbacks`` only when some are on, so a stage-1/2 run keeps its hash whatever the mixed-policy
    settings, and the same hash as before these groups existed."""
    core = json.loads(json.dumps(config))
    if not mixed_policy_active(core):
        mask = (core.pop("mixed", None) or {}).get("mask_student_prefix")
        if mask:
            core["mixed"] = {"mask_student_prefix": mask}
    # callbacks count only as mixed_policy's settings (it changes the data); other callbacks from the config
    # (a learning-rate monitor) may change on a resume, as loggers may
    revision = (core.pop("callbacks", None) or {}).get("mixed_policy")
    if revision:
        core["callbacks"] = {"mixed_policy": {k: v for k, v in revision.items() if k != "_target_"}}
    load = (core.get("student") or {}).get("load") or {}
    if load.get("init") == "pretrained":  # the default, as before the key existed
        load.pop("init")
    for key in NON_TRAINING_KEYS + DERIVED_KEYS:
        *parents, leaf = key.split(".")
        node = core
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return config_hash(core)


def refuse_failed_parent(stage_id, run_dir: Path, what: str) -> None:
    """Raise if ``run_dir``'s manifest says ``failed`` (a non-finite stop): a later stage must not start
    from a run that diverged. ``what``: how the stage named it (for the message)."""
    manifest = Manifest(run_dir / "manifest.json")
    if manifest.status != "failed":
        return
    failure = manifest.data.get("failure") or {}
    raise ValueError(
        f"stage {stage_id} would start from {what}, but that run failed at optimizer step {failure.get('step')}: "
        f"{failure.get('reason')} ({run_dir / 'manifest.json'}). Fix and rerun it first (e.g. a lower optim.lr "
        f"with resume=never); to start from a checkpoint it saved before the failure anyway, copy that "
        f"directory out of {run_dir} and give its path as stage.init_from")


def resolve_init(s: StageSettings) -> tuple[str, dict]:
    """The model a stage starts from, and a record of its parent for the manifest."""
    init = str(s.init_from)
    if init != "student" and s.student_init == "random":
        raise ValueError(f"student.load.init=random would discard the weights stage {s.stage_id} starts from "
                         f"(stage.init_from={init}); random init is for a stage that starts from the student")
    if init == "student":
        return s.student, {"kind": "student", "init_from": s.student}
    if init == "auto":
        parent_dir = s.experiment_dir / str(s.parent_run)
        final = parent_dir / "checkpoints" / "hf" / "final"
        manifest = Manifest(parent_dir / "manifest.json")
        refuse_failed_parent(s.stage_id, parent_dir, f"the final checkpoint of run '{s.parent_run}'")
        if not (final / "config.json").is_file() or manifest.status != "completed":
            raise ValueError(
                f"stage {s.stage_id} starts from the final checkpoint of run '{s.parent_run}', expected "
                f"at {final} (with a completed {parent_dir / 'manifest.json'}), but it is missing. Run that stage "
                f"first (e.g. `python train.py stage=1 experiment_name={s.experiment_name}`), or give a path: "
                f"stage.init_from=/path/to/hf_checkpoint")
        return str(final), {"kind": "stage", "init_from": str(final), "run_dir": str(parent_dir),
                            "config_hash": manifest.data.get("config_hash"), "git": manifest.data.get("git")}
    path = Path(init).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"stage.init_from={init}: not an HF model directory (no config.json)")
        for run_dir in list(path.resolve().parents)[:3]:  # <run>/checkpoints/hf/<name>: its run's manifest
            if (run_dir / "manifest.json").is_file():
                refuse_failed_parent(s.stage_id, run_dir, f"stage.init_from={init}")
                break
        return str(path.resolve()), {"kind": "path", "init_from": str(path.resolve())}
    if init.startswith(("/", ".", "~")):
        raise ValueError(f"stage.init_from={init}: no such directory")
    return init, {"kind": "hub", "init_from": init}  # a hub id, e.g. Qwen/Qwen3-4B-Instruct-2507


def latest_checkpoint(ckpt_dir: Path) -> str | None:
    """``last.ckpt``, or the newest ``*step=<N>.ckpt`` when ``last.ckpt`` is missing or dangles: Lightning
    deletes the previous checkpoint before it links ``last.ckpt`` to the new one, and a kill in between
    would otherwise start the run over. None when the folder holds no checkpoint."""
    last = ckpt_dir / "last.ckpt"
    if last.exists():
        return str(last)
    steps = {int(p.stem.rsplit("step=", 1)[1]): p for p in ckpt_dir.glob("*step=*.ckpt")
             if p.stem.rsplit("step=", 1)[1].isdigit()}
    if steps:
        log.warning("%s is missing or dangling (a kill while checkpointing): resuming from %s", last, steps[max(steps)])
    return str(steps[max(steps)]) if steps else None


def _fresh_start(run_dir: Path) -> None:
    for name in ("checkpoints", "metrics.jsonl", "loss_curve.png", "manifest.json", "wandb", "csv", "eval"):
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def plan_stage(s: StageSettings) -> StagePlan:
    """Decide init, resume and identity of this run; validates the config before any heavy work."""
    if s.stage_id != 1 and s.init_from == "student":
        log.warning("stage %s starts from the raw student", s.stage_id)
    run_dir = Path(s.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = StagePlan(run_dir=run_dir, init_from="", config=s.config, config_hash=training_config_hash(s.config))
    try:
        plan.display_name = str(run_dir.relative_to(s.experiment_dir))
    except ValueError:
        plan.display_name = run_dir.name
    manifest, last = Manifest(run_dir / "manifest.json"), run_dir / "checkpoints" / "last.ckpt"
    resume = str(s.resume)
    if resume == "never":
        if rank_zero_only.rank == 0:  # DDP re-runs this script for ranks > 0 after rank 0 has started
            _fresh_start(run_dir)
    elif resume == "auto":
        if manifest.status == "completed" and manifest.data.get("config_hash") == plan.config_hash:
            plan.already_completed = True
            return plan
        plan.resume_ckpt = latest_checkpoint(last.parent)
    else:
        if not Path(resume).exists():
            raise ValueError(f"resume={resume}: no such checkpoint")
        plan.resume_ckpt = resume
    if plan.resume_ckpt:
        ident = checkpoint_identity(plan.resume_ckpt)
        if ident.get("config_hash") not in (None, plan.config_hash):
            raise ValueError(
                f"refusing to resume from {plan.resume_ckpt}: the training config changed since it was saved "
                f"(hash {ident['config_hash']} -> {plan.config_hash}). A changed lr/epochs/data is a new run: "
                f"use another run_name/experiment_name, or resume=never to start this one over.")
        plan.wandb_run_id = ident.get("wandb_run_id")
        log.info("resuming from %s (W&B run %s)", plan.resume_ckpt, plan.wandb_run_id)
    if plan.wandb_run_id is None:
        plan.wandb_run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    plan.init_from, plan.parent = resolve_init(s)
    return plan
