"""Hydra/OmegaConf glue: custom resolvers used by the shipped configs."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from dasd.utils.assets import ASSETS, asset_path  # noqa: F401 - ${asset:...} and its users

# Imports nothing heavy (no torch): the entry points import this module before Hydra composes the config, and a
# config error (dasd.config_schema) should stop a run in about a second.
TEMPERATURES = {"low": 0.6, "high": 1.0}  # the schedule of spec §6.1: stage 1 and stage 2


def temperature_value(value: str | float) -> float:
    """``low`` → 0.6, ``high`` → 1.0, a number → itself."""
    if isinstance(value, int | float):
        return float(value)
    if value in TEMPERATURES:
        return TEMPERATURES[value]
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"temperature must be low, high or a number, got {value!r}") from None


def register_resolvers() -> None:
    """``${asset:NAME}``: absolute path of an asset shipped inside the package (tiny student, sample data).
    ``${temperature:low|high|x}``: the sampling temperature. ``${cwd:}``: the directory dasd was launched from."""
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", asset_path)
    if not OmegaConf.has_resolver("temperature"):
        OmegaConf.register_new_resolver("temperature", temperature_value)
    if not OmegaConf.has_resolver("cwd"):  # the launch directory; unlike ${hydra:runtime.cwd} it also
        OmegaConf.register_new_resolver("cwd", os.getcwd)  # resolves where a multirun computes its sweep dir


# Config groups whose options are named by numbers (conf/stage/1.yaml, 2.yaml).
NUMERIC_GROUPS = ("stage",)


def quote_numeric_choices(args: list[str], groups: tuple[str, ...] = NUMERIC_GROUPS) -> list[str]:
    """Quote numeric choices of numerically named groups: ``stage=2`` -> ``stage='2'``, ``stage=1,2`` too.

    Hydra's override grammar parses ``stage=2`` as an int, and a config-group override must be a string.
    Only ``<group>=<digits>[,<digits>...]`` is touched; anything else passes through unchanged.
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in groups and all(v.isdigit() for v in value.split(",")):
            value = ",".join(f"'{v}'" for v in value.split(","))
        out.append(f"{key}{sep}{value}" if sep else arg)
    return out
