"""The engines by name (``hf``, ``vllm``, ``openai``): the one table behind ``conf/engine/<name>.yaml``'s
``_target_``, the mixed-policy round's ``mixed.{student,teacher}.engine`` and DAS scoring's
``sampler.engine``. Light on purpose (no torch, no vLLM): the config schema imports the names, and an engine's
module is imported only when one is built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ENGINE_TARGETS = {"hf": "dasd.generation.hf.HFEngine", "vllm": "dasd.generation.vllm_engine.VLLMEngine",
                  "openai": "dasd.generation.openai_client.OpenAIEngine"}
ENGINES = tuple(ENGINE_TARGETS)
SCORING_ENGINES = ("hf", "vllm")  # the engines that return teacher-forced log-probabilities (DAS scoring)


def build_engine(kind: str, model: str, args: Mapping[str, Any] | None = None, *, allowed: tuple = ENGINES,
                 what: str = "engine"):
    """An engine of ``kind`` for ``model`` (an HF directory, hub id or served name), built with Hydra's
    ``instantiate`` as ``conf/engine/<kind>.yaml`` is; ``args``: the engine's other arguments."""
    if kind not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {kind!r}")
    from hydra.utils import instantiate

    return instantiate({"_target_": ENGINE_TARGETS[kind], "model": model, **(args or {})})
