"""Train one stage: `python train.py [stage=1|2] [group=option ...]` (see README; launching: docs/launch.md)."""

import sys

import hydra
from omegaconf import DictConfig

from dasd.config import quote_numeric_choices, register_resolvers
from dasd.config_checks import exit_on_config_error
from dasd.launch import rank_argv

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dasd.launch import job_scope
    from dasd.recipes.sft import train
    from dasd.training.nonfinite import exit_on_failure

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with exit_on_config_error(), exit_on_failure(multirun), job_scope():  # one job = one process group (docs/launch.md)
        metrics = train(cfg)
    return metrics.get("train/loss")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    sys.argv = rank_argv(quote_numeric_choices(sys.argv))  # torchrun/srun ranks (docs/launch.md)
    main()
