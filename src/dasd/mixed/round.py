"""Running a revision round from the training side: draw the questions, write the round's spec, run both
phases (in child processes by default), and read back the records and statistics.

Memory (spec §7, lessons §1.6). With ``transport=subprocess`` (default) each phase is a child process that
loads one model (the student from an HF checkpoint of the current weights, then the teacher), generates and
exits, so its memory is fully returned. The training process keeps its model and optimizer state; on a GPU
``offload_training_state`` moves them to CPU memory for the duration of the round (DeepSpeed's own
``offload_states`` under ZeRO-3) and back afterwards, so the child can use the whole GPU and nothing is lost
or duplicated on the device. ``transport=inprocess`` runs the phases in this process (tiny models, tests).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

from filelock import FileLock

from dasd.mixed.report import plot_round
from dasd.mixed.revise import PHASES, RoundPaths, run_phase
from dasd.mixed.spec import CutSpec, RoundSpec, StudentRole, TeacherRole
from dasd.utils.child import child_env, run_child
from dasd.utils.hashing import model_fingerprint
from dasd.utils.io import write_jsonl
from dasd.utils.logging import get_logger
from dasd.utils.secrets import refuse_secrets

log = get_logger(__name__)


def draw(items: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` items drawn uniformly without replacement (seeded; all of them when n is None or too big),
    in their original order."""
    if n is None or n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def build_spec(settings: dict, *, round_index: int, student_model: str, system_prompt: str | None,
               end_of_turn: str, filters: dict | None, cutoff_len: int | None = None) -> RoundSpec:
    """The spec of a round from the ``mixed`` config (see conf/mixed/default.yaml); ``run_round`` adds the
    hash of the round's questions. ``cutoff_len`` (``data.cutoff_len``, student tokens of a templated sample)
    bounds each teacher continuation (``revise.continuation_budget``); None: no bound. ``batch_size``
    (requests per engine call) is outside the spec's hash (``spec.THROUGHPUT_KEYS``): each request carries
    its own seed, and the training hash ignores it too, so a resume that changes it keeps the finished
    round."""
    s, t = settings["student"], settings["teacher"]
    for role, part in (("student", s), ("teacher", t)):  # spec.json and the training manifest hold them
        refuse_secrets(dict(part.get("engine_args") or {}), where=f"mixed.{role}.engine_args")
    return RoundSpec(
        round=round_index, seed=settings["seed"], cap_factor=settings["cap_factor"],
        batch_size=settings["batch_size"], cutoff_len=None if cutoff_len is None else int(cutoff_len),
        student=StudentRole(model=str(student_model), fingerprint=model_fingerprint(str(student_model)),
                            engine=s["engine"], engine_args=dict(s.get("engine_args") or {}),
                            temperature=s["temperature"], top_p=s["top_p"], system_prompt=system_prompt,
                            end_of_turn=end_of_turn),
        teacher=TeacherRole(model=str(t["model"]), format=t["format"], engine=t["engine"],
                            engine_args=dict(t.get("engine_args") or {}), system_prompt=t.get("system_prompt"),
                            chat_template_kwargs=dict(t.get("chat_template_kwargs") or {}),
                            temperature=t["temperature"], top_p=t["top_p"], max_tokens=t["max_tokens"]),
        cut=CutSpec(snap_to_sentence=settings["cut"]["snap_to_sentence"], min_chars=settings["cut"]["min_chars"]),
        filters=filters, require_finished=settings["require_finished"],
        require_correct=settings["require_correct"],
    )


def _child(phase: str, spec_path: Path, python: str | None) -> float:
    cmd = [python or sys.executable, "-m", "dasd.mixed.worker", phase, str(spec_path)]
    log.info("mixed-policy %s phase: %s", phase, " ".join(cmd))
    proc = run_child(cmd, log_file=spec_path.parent / f"{phase}.log", env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"the mixed-policy {phase} phase failed (exit {proc.returncode}); its log is "
                           f"{spec_path.parent / (phase + '.log')}:\n{proc.tail()}")
    return proc.seconds


def run_round(folder: Path, questions: list[dict], spec_base: RoundSpec, *, transport: str = "subprocess",
              python: str | None = None) -> dict:
    """Write the questions and spec into ``folder``, run both phases (skipping ones already done with this
    spec's hash), plot, and return the round's statistics (``stats.json``) with the wall time of each
    phase."""
    if transport not in ("subprocess", "inprocess"):
        raise ValueError(f"mixed.transport must be subprocess or inprocess, got {transport!r}")
    paths = RoundPaths(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "round.lock")):  # DDP ranks and parallel jobs: one runs the round
        body = "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions)
        spec = spec_base.with_questions(hashlib.sha256(body.encode()).hexdigest())
        current = json.loads(paths.spec.read_text()) if paths.spec.is_file() else None
        if current != spec.to_json():
            write_jsonl(paths.questions, questions)
            paths.spec.write_text(json.dumps(spec.to_json(), indent=2))
        walls = {}
        for phase in PHASES:
            done = json.loads(paths.done(phase).read_text()) if paths.done(phase).is_file() else {}
            if done.get("spec_hash") == spec.hash():
                walls[phase] = done.get("wall_s")
                continue
            t0 = time.perf_counter()
            if transport == "subprocess":
                _child(phase, paths.spec, python)
            else:
                run_phase(phase, paths.spec)
            walls[phase] = round(time.perf_counter() - t0, 3)
            done = json.loads(paths.done(phase).read_text())
            paths.done(phase).write_text(json.dumps({**done, "wall_s": walls[phase]}, indent=2))
        stats = json.loads(paths.stats.read_text())
        stats["seconds"]["rollout_phase_wall"] = walls["rollout"]
        stats["seconds"]["continue_phase_wall"] = walls["continue"]
        stats["transport"] = transport
        paths.stats.write_text(json.dumps(stats, indent=2))
        plot_round(stats, folder / "cutoff_ratio.png")
    return stats
