"""Callbacks and loggers from the config, lightning-hydra-template style: every entry of the ``callbacks``
group, and every entry of the ``logger`` group beside its own settings (``name``, ``project``, ``entity``,
``mode``), that holds a ``_target_`` is built with Hydra's ``instantiate``, in the config's order.

What only the run knows (its folder, data module, tokenizer, settings) is passed by parameter name: a target
that has a parameter called ``run_dir``, ``datamodule``, ``tokenizer``, ``hf_dir``, ``checkpoint_dir``,
``mixed``, ``filters``, ``optim`` or ``config`` gets the run's value unless its entry sets it. Any Lightning
callback or logger works with plain arguments (``conf/callbacks/lr_monitor.yaml``,
``conf/logger/wandb_csv.yaml``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

LOGGER_SETTINGS = ("name", "project", "entity", "mode")  # the main logger's own keys (conf/logger/*.yaml)


def target_entries(node: Mapping | None, skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(name, entry) of each entry of ``node`` that holds a ``_target_``, in order."""
    if not node:
        return []
    return [(k, v) for k, v in node.items()
            if k not in skip and isinstance(v, Mapping | DictConfig) and "_target_" in v]


def instantiate_entries(node: Mapping | None, context: dict[str, Any], group: str,
                        skip: tuple[str, ...] = ()) -> list:
    """Build each ``_target_`` entry of ``node`` (config group ``group``, for messages), passing the
    ``context`` values its target takes and the entry leaves unset."""
    out = []
    for name, entry in target_entries(node, skip):
        where = f"{group}.{name}"
        try:
            target = get_object(str(entry["_target_"]))
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(f"{where}._target_={entry['_target_']!r} cannot be imported: {e}") from None
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            params = {}
        extra = {k: v for k, v in context.items() if k in params and k not in entry}
        plain = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        try:  # the entry's own arguments as plain dicts and lists; the run's values passed as they are
            build = instantiate(plain, _partial_=True, _convert_="all")
        except InstantiationException as e:
            raise ValueError(f"{where}: {e}") from None
        out.append(build(**extra))
    return out
