"""Build and cache the reasoning world (data, two teachers, a student): `python build_world.py [world.key=value ...]`
(docs/world.md)."""

import hydra
from omegaconf import DictConfig

from dasd.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="build_world")
def main(cfg: DictConfig) -> None:
    from dasd.recipes.world import ensure_world

    print(ensure_world(cfg.world, cfg.paths.output_dir))


if __name__ == "__main__":
    main()
