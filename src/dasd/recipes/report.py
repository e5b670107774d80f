"""``report(cfg)``: the ablation report of a sweep (``python report.py runs=<dir>``; docs/ablations.md), and its
W&B run."""

from __future__ import annotations

from pathlib import Path

from dasd.ablation.evidence import export_rows
from dasd.ablation.report import CONTRAST_COLUMNS, plus_minus, wandb_rows, write_report
from dasd.ablation.results import collect
from dasd.utils.logging import get_logger
from dasd.utils.wandb import open_run

log = get_logger(__name__)


def log_wandb(report: dict, logger_cfg, *, group: str, name: str, out_dir: str | Path, config: dict) -> str | None:
    """One W&B run (job_type ``report``): a ``wandb.Table`` and the PNG per paper table, the contrasts (table
    and ``contrasts.png``), the world-analysis figures, the summary's numbers, and ``report.md`` +
    ``report.json`` + ``summary.json`` as an artifact. Offline without an API key; returns the run dir."""
    run = open_run(logger_cfg, dir=out_dir, group=group, job_type="report", name=name, config=config)
    if run is None:
        return None
    import wandb

    data, contrasts = {}, []
    for t, table in report["tables"].items():
        cols, rows = wandb_rows(table)
        data[f"report/table{t}"] = wandb.Table(columns=cols, data=rows)
        data[f"report/table{t}_plot"] = wandb.Image(report["outputs"][f"table{t}"])
        contrasts += [[t, c["b"], c["a"], c["what"], c.get("metric"), c.get("paper_diff"), c.get("diff"),
                       c.get("ci_low"), c.get("ci_high"), c.get("mde"), c.get("toy_diff"), c.get("combined_std"),
                       c["verdict"]] for c in table["contrasts"]]
    data["report/contrasts"] = wandb.Table(columns=CONTRAST_COLUMNS, data=contrasts)
    for key in ("contrasts", "learning_curve", "cutoff_by_length"):
        if key in report["outputs"]:
            data[f"report/{key}_plot"] = wandb.Image(report["outputs"][key])
    run.log(data)
    summary = report["summary"]
    run.summary.update({"report/results": report["n_results"], "report/duplicates": len(report["duplicates"]),
                        **{f"report/{k}": v for k, v in summary.items() if isinstance(v, int | float)
                           and not isinstance(v, bool)}})
    artifact = wandb.Artifact("ablation_report", type="report")
    for key in ("markdown", "json", "summary"):
        artifact.add_file(report["outputs"][key])
    run.log_artifact(artifact)
    run_dir = run.dir
    run.finish()
    return run_dir


def report(cfg) -> dict:
    """``python report.py``: the Hydra config -> ``write_report`` + ``log_wandb``."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "runs") or not cfg.runs:
        raise ValueError("runs: give the sweep's directory, e.g. python report.py "
                         "runs=outputs/ablate/multirun/<time> (or runs=[<dir>,<dir>])")
    runs = [cfg.runs] if isinstance(cfg.runs, str) else [str(r) for r in cfg.runs]
    tables = None if cfg.tables is None else [int(t) for t in ([cfg.tables] if isinstance(
        cfg.tables, int | str) else cfg.tables)]
    out = write_report(runs, cfg.out_dir, tables, per_question=str(cfg.per_question), analysis=cfg.analysis,
                       summary_path=cfg.summary_path, bootstrap=dict(cfg.bootstrap))
    if cfg.get("export_rows"):
        rows, _ = collect(runs, tables)
        written = export_rows(rows, Path(str(cfg.export_rows)))
        log.info("%d row folders copied to %s (python report.py runs=%s rebuilds this report)", len(written),
                 cfg.export_rows, cfg.export_rows)
    log_wandb(out, cfg.logger, group=cfg.experiment_name, name=str(cfg.run_name), out_dir=cfg.out_dir,
              config=OmegaConf.to_container(cfg, resolve=True))
    for t, table in out["tables"].items():
        log.info("table %d: %s", t, ", ".join(f"{x['id']} {plus_minus(x['mean'], x['std'])} (n={x['n']})"
                                               for x in table["rows"]))
    log.info("%d results (%d duplicates dropped) -> %s; verdicts: %s; summary -> %s", out["n_results"],
             len(out["duplicates"]), out["outputs"]["markdown"], out["summary"]["verdicts"],
             ", ".join([out["outputs"]["summary"], *([str(cfg.summary_path)] if cfg.summary_path else [])]))
    return out
