"""Run one row of the paper's ablation tables in the reasoning world: `python ablate.py experiment=world/t3b
seed=1`; a whole table over seeds: `python ablate.py -m sweep=world_table3` (docs/ablations.md)."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="ablate")
def main(cfg: DictConfig) -> float:
    from dasd.launch import job_scope
    from dasd.recipes.ablation import run_row

    with job_scope():  # one Hydra job (one row) at a time; each stage is trained in this process
        result = run_row(cfg)
    return result["final"]["avg@k"]  # the value a Hydra sweeper optimises


if __name__ == "__main__":  # the guard vLLM's in-process engine needs
    main()
