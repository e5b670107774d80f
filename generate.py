"""Sample teacher candidates: `python generate.py teacher=... temperature=low questions=q.jsonl samples_per_question=4`."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers
from dasd.config_checks import exit_on_config_error

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    from dasd.recipes.generate import generate

    with exit_on_config_error():  # a bad value: one line per problem, exit status 2
        generate(cfg)


if __name__ == "__main__":  # the guard vLLM's in-process engine needs
    main()
