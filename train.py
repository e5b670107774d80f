"""Train one stage: `python train.py [stage=1|2] [group=option ...]` (see README)."""

import sys

import hydra
from omegaconf import DictConfig

from dasd.config import quote_numeric_choices, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dasd.training.train import train

    metrics = train(cfg)
    return metrics.get("train/loss")  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    sys.argv = quote_numeric_choices(sys.argv)
    main()
