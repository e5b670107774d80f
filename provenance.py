"""Sentence provenance of a distilled model: `python provenance.py [models.distilled.path=...]
[responses.eval_dir=...] [alpha=0.1] [beta=0.1]` (docs/provenance.md)."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers
from dasd.config_checks import exit_on_config_error

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="provenance")
def main(cfg: DictConfig) -> None:
    from dasd.recipes.provenance import provenance

    with exit_on_config_error():  # a bad value: one line per problem, exit status 2
        provenance(cfg)


if __name__ == "__main__":  # the guard vLLM's in-process engine needs
    main()
