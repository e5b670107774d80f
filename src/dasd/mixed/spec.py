"""The spec of a mixed-policy revision round: what its two phases (``dasd.mixed.revise``) produce from.

``build_spec`` (``dasd.mixed.round``) makes one from the ``mixed`` config; ``run_round`` adds the hash of the
round's questions and writes it as ``spec.json``, which the worker process reads back. ``to_json`` is that
file's content and ``from_json`` its inverse (a missing or unknown key is an error naming it). ``hash`` is
what a finished phase and every record uuid of the round are keyed by: the spec without ``THROUGHPUT_KEYS``
(pinned by tests/test_golden.py)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from dasd.utils.hashing import stable_hash

# keys that set how fast a phase runs, not what it writes (each request carries its own seed, whatever batch it
# is sent in): a finished phase is kept and the record uuids stay when they change, as a resume of the training
# may change them (``mixed.batch_size`` is one of the training hash's NON_TRAINING_KEYS)
THROUGHPUT_KEYS = ("batch_size",)


@dataclass(frozen=True)
class StudentRole:
    """The student that answers the round's questions (its epoch's weights)."""

    model: str
    fingerprint: str  # dasd.utils.hashing.model_fingerprint of the weights
    engine: str
    engine_args: dict
    temperature: float
    top_p: float
    system_prompt: str | None
    end_of_turn: str


@dataclass(frozen=True)
class TeacherRole:
    """The teacher that continues the truncated answers."""

    model: str
    format: str  # plain | harmony
    engine: str
    engine_args: dict
    system_prompt: str | None
    chat_template_kwargs: dict
    temperature: float
    top_p: float
    max_tokens: int


@dataclass(frozen=True)
class CutSpec:
    snap_to_sentence: bool
    min_chars: int


@dataclass(frozen=True)
class RoundSpec:
    round: int
    seed: int
    cap_factor: float
    batch_size: int
    cutoff_len: int | None  # student tokens of a templated sample; bounds each continuation (None: no bound)
    student: StudentRole
    teacher: TeacherRole
    cut: CutSpec
    filters: dict | None  # the `filters` config the round's samples must pass, or None
    require_finished: bool
    require_correct: bool
    questions_sha256: str | None = None  # set by run_round: the hash of the round's questions

    def to_json(self) -> dict[str, Any]:
        """The plain dict of ``spec.json`` (``questions_sha256`` only once it is set)."""
        out = asdict(self)
        if out["questions_sha256"] is None:
            out.pop("questions_sha256")
        return out

    @classmethod
    def from_json(cls, data: dict) -> RoundSpec:
        """The spec of a ``spec.json`` dict; a missing or unknown key is an error naming it."""
        parts = {"student": StudentRole, "teacher": TeacherRole, "cut": CutSpec}
        _check_keys(cls, data, "")
        for key, sub in parts.items():
            if not isinstance(data[key], dict):
                raise ValueError(f"round spec: {key} must be a mapping, got {type(data[key]).__name__}")
            _check_keys(sub, data[key], f"{key}.")
        return cls(**{**data, **{key: sub(**data[key]) for key, sub in parts.items()}})

    def hash(self) -> str:
        """What the round's outputs are keyed by: the spec without ``THROUGHPUT_KEYS``."""
        return stable_hash({k: v for k, v in self.to_json().items() if k not in THROUGHPUT_KEYS}, 16)

    def with_questions(self, sha256: str) -> RoundSpec:
        return replace(self, questions_sha256=sha256)


def _check_keys(cls, data: dict, prefix: str) -> None:
    optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
    names = {f.name for f in fields(cls)}
    if unknown := sorted(set(data) - names):
        raise ValueError(f"round spec: unknown key(s) {[prefix + k for k in unknown]}")
    if missing := sorted(names - optional - set(data)):
        raise ValueError(f"round spec: missing key(s) {[prefix + k for k in missing]}")

