"""dasd's Hydra launchers (``hydra/launcher=slurm|local``); see ``launcher.py`` and docs/launch.md."""
