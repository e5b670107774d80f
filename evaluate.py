"""avg@k evaluation: `python evaluate.py [task=aime24|aime25|gpqa_diamond|sample] [model=...] [k=64]`
(docs/evaluation.md)."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers
from dasd.config_checks import exit_on_config_error

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from dasd.recipes.evaluate import evaluate

    with exit_on_config_error():  # a bad value: one line per problem, exit status 2
        evaluate(cfg)


if __name__ == "__main__":  # the guard vLLM's in-process engine needs
    main()
