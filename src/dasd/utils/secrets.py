"""No secret in a config: configs name environment variables (``engine.api_key_env: OPENAI_API_KEY``); the code
that connects reads the variable. A resolved config goes to ``manifest.json``, ``.hydra/``, W&B and logs.

Refused, before anything is written: a config key that names a secret (``api_key``, ``*_api_key``, ``password``,
``secret``, ``token``, ``hf_token``...), and any config value or command-line override that contains the value of
a secret environment variable (one whose name ends in API_KEY, TOKEN, SECRET or PASSWORD, or that an
``api_key_env`` key names) or interpolates one (``${oc.env:OPENAI_API_KEY}``). Refusing rather than redacting: one check at the start covers every file, log and
upload, present or future; redaction would have to be remembered by each writer, and one miss leaks the key.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SECRET_KEY = re.compile(r"^(?:.*_)?(?:api_?key|password|passwd|secret)$"
                        r"|^(?:(?:hf|hub|access|auth|bearer|api|wandb|github)_)?token$", re.IGNORECASE)
SECRET_ENV = re.compile(r"(?:API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
ENV_REF = re.compile(r"\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")  # an interpolation that resolves a variable
MIN_SECRET_LEN = 8  # shorter values ("EMPTY", "1") are placeholders, and would match ordinary text
HOW = ("dasd never takes a secret in its config (a config is written to .hydra/, manifest.json, W&B and logs). "
       "Export it instead and name the variable: e.g. `export OPENAI_API_KEY=...` with "
       "engine.api_key_env=OPENAI_API_KEY (mixed policy: mixed.teacher.engine_args.api_key_env)")


def _names(tree: Any, key: str) -> list[str]:
    """Every string value of a key called ``key`` anywhere in a plain tree."""
    if isinstance(tree, dict):
        own = [v for k, v in tree.items() if k == key and isinstance(v, str)]
        return own + [n for v in tree.values() for n in _names(v, key)]
    if isinstance(tree, list):
        return [n for v in tree for n in _names(v, key)]
    return []


def secret_values(tree: Any = None) -> list[str]:
    """Values of the secret environment variables now set (and of those ``api_key_env`` keys name)."""
    names = {n for n in os.environ if SECRET_ENV.search(n)} | set(_names(tree, "api_key_env"))
    return [v for n in sorted(names) if len(v := os.environ.get(n, "")) >= MIN_SECRET_LEN]


def find_secrets(tree: Any, values: Iterable[str] = (), path: str = "") -> list[str]:
    """Dotted paths in a plain config tree whose key names a secret or whose text contains one of ``values``."""
    values = list(values)
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            sub = f"{path}.{k}" if path else str(k)
            named = SECRET_KEY.match(str(k)) and v not in (None, "")
            out += [sub] if named else find_secrets(v, values, sub)
        return out
    if isinstance(tree, list):
        return [p for i, v in enumerate(tree) for p in find_secrets(v, values, f"{path}[{i}]")]
    if not isinstance(tree, str):
        return []
    reads_secret = any(SECRET_ENV.search(name) for name in ENV_REF.findall(tree))  # ${oc.env:OPENAI_API_KEY}
    return [path] if reads_secret or any(s in tree for s in values) else []


def refuse_secrets(tree: Any, where: str = "config") -> None:
    """Raise ``ValueError`` naming (never showing) every secret in a plain config tree."""
    if isinstance(tree, DictConfig):
        tree = OmegaConf.to_container(tree, resolve=False)
    bad = find_secrets(tree, secret_values(tree))
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)} would hold a secret. {HOW}")


def _override_key(override: str) -> str:
    """The last key segment of a Hydra override: ``+mixed.teacher.engine_args.api_key@x=v`` -> ``api_key``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0].rsplit(".", 1)[-1]


def check_hydra_config(config: DictConfig) -> None:
    """The command line and the composed config (unresolved: ``${oc.env:...}`` stays a name) hold no secret."""
    tree = OmegaConf.to_container(config, resolve=False)
    hydra = tree.pop("hydra", {}) or {}
    overrides = [*(hydra.get("overrides", {}).get("task") or []), *(hydra.get("overrides", {}).get("hydra") or [])]
    values = secret_values(tree)
    bad = [f"override {o.split('=', 1)[0]}" for o in overrides
           if SECRET_KEY.match(_override_key(o)) or any(v in o for v in values)]
    rest = {k: v for k, v in hydra.items() if k != "overrides"}  # e.g. hydra.job.env_set
    bad += find_secrets(tree, values) + find_secrets(rest, values, "hydra")
    if bad:
        raise ValueError(f"{', '.join(dict.fromkeys(bad))} would hold a secret. {HOW}")


class RefuseSecrets(Callback):
    """Hydra callback (conf/hydra/default.yaml): stops a run before Hydra writes ``.hydra/`` or anything else.
    Hydra turns a callback's exception into a warning and goes on, so this exits (status 2) itself."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_secret(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_secret(config)


def _exit_on_secret(config: DictConfig) -> None:
    try:
        check_hydra_config(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
