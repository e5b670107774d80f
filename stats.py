"""Length statistics of a dataset in student tokens: `python stats.py data=superior_reasoning_stage1 student=...`."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="stats")
def main(cfg: DictConfig) -> None:
    from dasd.data.sources import SourceReport, iter_generated, iter_released
    from dasd.data.stats import length_report, plot_length_cdf, sample_lengths
    from dasd.data.template import ChatTemplater
    from dasd.models.student import load_tokenizer

    read = SourceReport(cfg.data.path)
    reader = iter_generated if cfg.data.format == "generated" else iter_released
    records = (t.record for t in reader(cfg.data.path, on_error=cfg.data.on_error, report=read))  # streamed
    templater = ChatTemplater(load_tokenizer(cfg.student.name_or_path), cfg.data.system_prompt, cfg.data.end_of_turn)
    cutoffs = sorted({*cfg.cutoffs, cfg.data.cutoff_len})
    lengths = sample_lengths(records, templater)
    run_dir = Path(cfg.paths.run_dir)
    report = {"data": cfg.data.path, "student": cfg.student.name_or_path, "read": read.summary(),
              "lengths": length_report(lengths, cutoffs)}
    (run_dir / "length_stats.json").write_text(json.dumps(report, indent=2))
    plot_length_cdf(lengths, cutoffs, run_dir / "length_cdf.png")
    overall = report["lengths"]["all"]
    print(f"{overall['count']} samples, mean {overall['mean']:.0f} tokens, max {overall['max']}; dropped share by "
          f"cutoff: {overall['dropped_share']}  ->  {run_dir}")


if __name__ == "__main__":
    main()
