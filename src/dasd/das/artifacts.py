"""Turn a DAS selection (details and example cards saved next to the cached selection) into the run's
figures, summary and example page, and log them to W&B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dasd.das import report

DETAILS, EXAMPLES = "das_details.npz", "das_examples.json"


def has_artifacts(folder: Path | None) -> bool:
    return folder is not None and (Path(folder) / DETAILS).is_file()


def publish(folder: Path, out_dir: Path, beta: float) -> tuple[dict[str, Path], list[dict]]:
    """Write the four figures (das_*.png), das_summary.json and examples.html under ``out_dir`` from the
    selection artifacts in ``folder``; returns name -> path and the example cards."""
    with np.load(Path(folder) / DETAILS, allow_pickle=False) as z:
        details = {k: z[k] for k in z.files}
    examples = json.loads((Path(folder) / EXAMPLES).read_text())
    paths = report.write_report(details, out_dir, beta)
    paths["examples"] = report.render_examples_html(examples, Path(out_dir) / "examples.html", beta)
    return paths, examples


def log_to_wandb(logger, paths: dict[str, Path], examples: list[dict]) -> None:
    """PNG figures as ``das/<name>`` images and the example cards as the ``das/examples`` table (rich HTML)."""
    import wandb

    for name, path in paths.items():
        if path.suffix == ".png":
            logger.log_image(key=f"das/{name}", images=[str(path)])
    rows = [[ex["uuid"], ex["sampler"], ex["n_teacher"], ex["n_student"], wandb.Html(report.example_html(ex))]
            for ex in examples]
    if rows:
        logger.log_table(key="das/examples", columns=["uuid", "sampler", "n_teacher", "n_student", "sentences"],
                         data=rows)
