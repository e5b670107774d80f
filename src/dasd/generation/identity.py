"""What identifies an engine's samples: its config without the runtime keys, its sampling scheme and (for a
teacher) its weights. A generate or evaluate run compares these before it reuses earlier results."""

from __future__ import annotations

from hydra.utils import get_class

from dasd.utils.hashing import model_fingerprint

# engine config keys that set where and how fast the teacher runs, not what it samples: a resume may change them
ENGINE_RUNTIME_KEYS = ("base_url", "api_key_env", "max_concurrency", "timeout", "max_retries", "device",
                       "score_chunk_size", "gpu_memory_utilization", "max_num_batched_tokens", "enforce_eager",
                       "batch_size", "progress", "max_num_seqs")


def engine_identity(engine: dict) -> dict:
    """What of an engine config decides its samples: the config without ``ENGINE_RUNTIME_KEYS``, plus the
    engine's sampling scheme (``Engine.sampler``: another scheme draws other samples from the same seeds)."""
    core = {k: v for k, v in engine.items() if k not in ENGINE_RUNTIME_KEYS}
    sampler = getattr(get_class(engine["_target_"]), "sampler", None) if "_target_" in engine else None
    return {**core, "sampler": sampler}


def teacher_identity(engine: dict) -> dict:
    """``engine_identity`` plus the fingerprint of the model's weights."""
    return {**engine_identity(engine), "weights": model_fingerprint(str(engine["model"]))}
