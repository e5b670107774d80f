"""Config checks that run before any work: a bad value stops a run at once with its key, its value and what
is expected, and nothing is written. The schemas: ``dasd.config_schema``.

* ``CheckConfig``, a Hydra callback (``conf/hydra/default.yaml``), checks the composed config of
  ``train.py``, ``generate.py`` and ``evaluate.py`` in ``on_run_start``: after composition and before Hydra
  creates the run dir (its ``.hydra/`` and log file included). A failed check prints one line per problem
  and exits with status 2.
* ``train()``, ``generate()`` and ``evaluate()`` call ``check_train`` / ``check_generate`` /
  ``check_evaluate`` first, for the callers Hydra's callback does not see: a multirun job (Hydra has made the
  job's folder by then, nothing else), ``ablate.py`` and notebooks. They raise ``ConfigError`` (a
  ``ValueError``); the entry points turn it into the same one-line exit (``exit_on_config_error``).

Values are resolved leaf by leaf, so a key that does not resolve is itself a problem and ``${hydra:...}`` keys
(the run dir) are never touched. A problem at a key that only interpolates another bad key
(``sampler.seed: ${seed}``) is not repeated.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from dasd.config_schema import (
    SERVED_ENGINE,
    EvaluateConfig,
    GenerateConfig,
    ProvenanceConfig,
    Section,
    TrainConfig,
)

EXIT_CODE = 2  # a usage error, as argparse exits on a bad command line


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    why: str

    def __str__(self) -> str:
        if self.why == "missing":
            return f"config error: {self.key} is missing"
        shown = repr(self.value)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        return f"config error: {self.key}={shown}: {self.why}"


class ConfigError(ValueError):
    """Bad config values: ``problems`` name each key, its value and what is expected (one line each)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# ---------------------------------------------------------------- resolving and reporting


class _Unresolved:
    """Placeholder of a leaf whose interpolation fails (reported once, as such)."""

    def __repr__(self) -> str:
        return "<unresolved>"


_UNRESOLVED = _Unresolved()
_NODE_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # ${a.b}: a reference to another key (no resolver)


def _resolve(cfg: DictConfig, keys: list[str]) -> tuple[dict, dict[str, list[str]], list[Problem]]:
    """The plain values of ``keys`` (whole subtrees), each interpolation resolved on its own; returns the
    values, the keys each interpolated leaf refers to, and a problem for each leaf that does not resolve."""
    refs: dict[str, list[str]] = {}
    problems: list[Problem] = []

    def leaf(key: str, raw: Any) -> Any:
        if not (isinstance(raw, str) and ("${" in raw or raw == "???")):
            return raw
        refs[key] = _NODE_REF.findall(raw)
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
            return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) \
                else value
        except OmegaConfBaseException as e:
            why = "missing" if raw == "???" else f"does not resolve: {str(e).splitlines()[0]}"
            problems.append(Problem(key, raw, why))
            return _UNRESOLVED

    def walk(key: str, raw: Any) -> Any:
        if isinstance(raw, dict):
            return {k: walk(f"{key}.{k}", v) for k, v in raw.items()}
        if isinstance(raw, list):
            return [walk(f"{key}[{i}]", v) for i, v in enumerate(raw)]
        return leaf(key, raw)

    raw = OmegaConf.to_container(cfg, resolve=False)  # interpolations as written, "???" for missing values
    return {k: walk(k, raw[k]) for k in keys if k in raw}, refs, problems


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(error: ValidationError) -> list[Problem]:
    out = []
    for e in error.errors():
        if e["input"] is _UNRESOLVED:
            continue  # already reported as not resolving
        why = "missing" if e["type"] == "missing" else e["msg"]
        why = why.removeprefix("Value error, ").replace("Input should be", "should be", 1)
        out.append(Problem(_key(e["loc"]), e["input"], why))
    return out


def _without_echoes(problems: list[Problem], refs: dict[str, list[str]]) -> list[Problem]:
    """Drop a problem at a key whose interpolation refers to a key that has a problem of its own."""
    bad = {p.key for p in problems}

    def echoes(key: str) -> bool:
        return any(r == b or r.startswith(b + ".") or b.startswith(r + ".") for r in refs.get(key, ()) for b in bad
                   if b != key)

    return [p for p in problems if not echoes(p.key)]


def check(cfg: DictConfig, schema: type[Section], context: dict | None = None) -> None:
    """Raise ``ConfigError`` naming every key of ``cfg`` that ``schema`` rejects (or that does not resolve)."""
    keys = list(schema.model_fields)
    data, refs, problems = _resolve(cfg, keys)
    try:
        schema.model_validate(data, context=context or {})
    except ValidationError as e:
        problems += _problems(e)
    problems = _without_echoes(problems, refs)
    if problems:
        raise ConfigError(problems)


def _served(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "engine._target_", default="")).endswith(SERVED_ENGINE)


def check_train(cfg: DictConfig) -> None:
    """train.py's config (conf/train.yaml)."""
    check(cfg, TrainConfig, {"mixed": bool(OmegaConf.select(cfg, "stage.mixed", default=False))})


def check_generate(cfg: DictConfig) -> None:
    """generate.py's config (conf/generate.yaml)."""
    check(cfg, GenerateConfig, {"served": _served(cfg)})


def check_evaluate(cfg: DictConfig) -> None:
    """evaluate.py's config (conf/evaluate.yaml)."""
    check(cfg, EvaluateConfig, {"served": _served(cfg)})


def check_provenance(cfg: DictConfig) -> None:
    """provenance.py's config (conf/provenance.yaml)."""
    check(cfg, ProvenanceConfig)


CHECKS: dict[str, Callable[[DictConfig], None]] = {
    "train": check_train, "generate": check_generate, "evaluate": check_evaluate, "provenance": check_provenance}


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Turn a ``ConfigError`` into its lines on stderr and exit status 2 (no traceback)."""
    try:
        yield
    except ConfigError as e:
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None


class CheckConfig(Callback):
    """Hydra callback: check the config of the app being run (``CHECKS[config_name]``) before Hydra creates
    the run dir. Multirun jobs are checked by the app itself, each in its own job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_check = CHECKS.get(kwargs.get("config_name") or "")
        if run_check is not None:
            with exit_on_config_error():
                run_check(config)
