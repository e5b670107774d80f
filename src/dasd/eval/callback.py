"""``EvaluateAtEnd``: evaluate the final HF checkpoint when training ends (``eval=default`` in train.py).

Global rank 0 runs ``python evaluate.py`` in a child process on ``checkpoints/hf/final`` (written by
``HFCheckpoint.on_train_end``, which runs first), so the evaluation's memory, GPU memory included, is its own
and returned when it exits; on a GPU the training state is parked in CPU memory meanwhile
(``offload_training_state``). The other ranks wait for its done marker, not in a collective. Outputs land in ``<run_dir>/eval/<task>/``;
the summary scalars, a per-question table and the figure go to the training run's loggers, and
``eval_result`` (read by ``train``) goes into the manifest. A failed evaluation is logged and recorded
(``status: failed`` with its log), and does not fail the finished training run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L

from dasd.eval.results import TABLE_COLUMNS, logged_scalars, read_results, table_rows
from dasd.training.offload import training_state_offloaded
from dasd.utils.child import child_env, hydra_literal, run_child
from dasd.utils.logging import get_logger
from dasd.utils.paths import entry_script
from dasd.utils.steps import optimizer_steps
from dasd.utils.sync import RankZeroWork

log = get_logger(__name__)


class EvaluateAtEnd(L.Callback):
    """Run ``evaluate.py`` on ``checkpoint`` after the last epoch (settings: conf/eval/default.yaml)."""

    def __init__(self, run_dir: str | Path, checkpoint: str | Path, settings: dict, *, root_dir: str,
                 experiment_name: str) -> None:
        self.run_dir, self.checkpoint, self.settings = Path(run_dir), Path(checkpoint), settings
        self.root_dir, self.experiment_name = root_dir, experiment_name
        self.out_dir = self.run_dir / "eval" / str(settings["task"])
        self.eval_result: dict | None = None

    def command(self) -> list[str]:
        s = self.settings
        system = hydra_literal(s.get("system_prompt"))
        overrides = [f"task={s['task']}", f"engine={s.get('engine', 'hf')}",
                     f"model={hydra_literal(self.checkpoint)}", f"paths.root_dir={hydra_literal(self.root_dir)}",
                     f"hydra.run.dir={hydra_literal(self.out_dir)}", "logger=none", f"system_prompt={system}",
                     f"experiment_name={hydra_literal(self.experiment_name)}",
                     "overwrite=true"]  # this run's final weights replace whatever an earlier attempt evaluated
        if s.get("k") is not None:
            overrides.append(f"k={int(s['k'])}")
        python = s.get("python") or sys.executable
        return [python, str(entry_script("evaluate.py")), *overrides, *(s.get("overrides") or [])]

    def run(self) -> dict:
        """Run the child; return the manifest entry (summary numbers and paths, or the failure)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd, log_file = self.command(), self.out_dir / "evaluate_child.log"
        log.info("evaluating the final checkpoint: %s", " ".join(cmd))
        proc = run_child(cmd, log_file=log_file, env=child_env(HYDRA_FULL_ERROR="1"))
        entry = {"task": self.settings["task"], "checkpoint": str(self.checkpoint), "dir": str(self.out_dir),
                 "log": str(log_file), "seconds": round(proc.seconds, 3), "command": cmd}
        if proc.returncode != 0 or not (self.out_dir / "summary.json").is_file():
            log.error("the evaluation failed (exit %d); its log is %s:\n%s", proc.returncode, log_file, proc.tail())
            return {**entry, "status": "failed", "exit_code": proc.returncode}
        summary = json.loads((self.out_dir / "summary.json").read_text())
        keep = ("k", "n_questions", "avg@k", "ci95", "ci_method", "truncation_rate", "mean_response_tokens",
                "median_response_tokens", "max_tokens", "per_grader")
        return {**entry, "status": "completed", **{key: summary[key] for key in keep},
                "summary": str(self.out_dir / "summary.json"), "results": str(self.out_dir / "results.jsonl")}

    def log_to(self, trainer: L.Trainer) -> None:
        """Summary scalars to every logger; the per-question table and the figure to W&B."""
        from lightning.pytorch.loggers import WandbLogger

        summary = json.loads((self.out_dir / "summary.json").read_text())
        task, step = str(self.settings["task"]), optimizer_steps(trainer)
        scalars = logged_scalars(summary["task"], summary)
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=step)
            if isinstance(lg, WandbLogger):
                lg.experiment.summary.update(scalars)
                lg.log_table(key=f"eval/{task}/questions", columns=TABLE_COLUMNS,
                             data=table_rows(read_results(self.out_dir / "results.jsonl")))
                lg.log_image(key=f"eval/{task}/summary", images=[str(self.out_dir / "eval_summary.png")],
                             step=step)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        work = RankZeroWork(self.out_dir, "eval", what=f"evaluation of {self.checkpoint}")
        key = f"eval {self.settings['task']} of {self.checkpoint}"
        if trainer.is_global_zero:
            work.clear()  # a marker of an earlier attempt must not release the other ranks
        trainer.strategy.barrier("eval_at_end_start")  # cheap: every rank has finished training
        if trainer.is_global_zero:
            with work.signal(key):
                self._evaluate(trainer, module)
        else:  # no collective while rank 0 evaluates: an evaluation may outlast the process group's timeout
            work.wait(key)
        trainer.strategy.barrier("eval_at_end")  # cheap: the evaluation is over

    def _evaluate(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Rank 0: evaluate the final checkpoint; a failure is recorded (``status: failed``) and logged, and
        never fails the trained stage."""
        try:
            if not self.checkpoint.is_dir():
                raise FileNotFoundError(f"eval: no final HF checkpoint at {self.checkpoint}")
            offload = bool(self.settings.get("offload_training_state", True))
            with training_state_offloaded(trainer, module, offload):
                self.eval_result = self.run()
            if self.eval_result["status"] == "completed":
                self.log_to(trainer)
                r = self.eval_result
                log.info("eval %s: avg@%d = %.2f%% (95%% CI %.2f-%.2f) on %d questions; in %s",
                         self.settings["task"], r["k"], r["avg@k"], *r["ci95"], r["n_questions"],
                         self.out_dir)
        except Exception as e:  # noqa: BLE001 - recorded in the manifest; the trained stage stands
            log.error("eval of %s failed: %s: %s", self.checkpoint, type(e).__name__, e)
            self.eval_result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "out_dir": str(self.out_dir)}
