"""The ablation report: `python report.py runs=<sweep dir>` or `runs=[<dir>,<dir>]` turns the row_result.json
files of an ablation sweep into the paper's tables at toy scale (docs/ablations.md)."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def main(cfg: DictConfig) -> None:
    from dasd.recipes.report import report

    report(cfg)


if __name__ == "__main__":
    main()
