"""The ``walk`` family of the reasoning world: long labelled chains of small moves (docs/world.md).

A question lists a start value and ``moves_base + moves_per_difficulty * difficulty`` labelled moves::

    Start at 47.
    Moves:
    a -5
    b +8
    c -3
    d +9
    Where do you end?

Every value stays in 10..99 and every move is 1..9, so each step is one two-digit +/- one-digit sum: a small
model can learn it to near certainty, and the answer's length (not the arithmetic) is what difficulty
scales. Three ways to write a solution, each chosen so that one of the paper's phenomena has a mechanism:

* the teacher's ``step`` strategy (the mode): one labelled line a move, ``a: 47 - 5 = 42``;
* the teacher's ``check`` strategy (the minority): the same, each line followed by its inverse,
  ``check: 42 + 5 = 47``; rarer, longer, more tokens for the same answer;
* the teacher's *restate habit*: after a step line, with probability ``restate``, a short ``so 42`` line.
  With probability ``fix`` a restate slips one too high (``so 43``) and the next line corrects it (``no, 42``):
  the teacher has seen recovery from a wrong intermediate line, so continuing a student's prefix it can
  repair the student's own slip.
* the student's own (``weak``) style: unlabelled lines ``47 - 5 = 42``, each followed by ``so 42``, and a
  restate slips one too high (``so 43``) with probability ``slip`` and is never corrected (the walk goes on
  from the slipped value, so one slip is enough to end wrong). A competent procedure with a harmful habit:
  the longer the walk, the likelier a slip.

The restate line is the student's habit and a rare, short line for the teacher: in teacher samples at
T=1.0 it is where Student Sentences (p_S - p_T > beta) come from, and the step lines, whose labels the
student has never written, are Teacher Sentences.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

LABELS = "abcdefghijklmnopqrstuvwxyz"
LOW, HIGH = 10, 99
STRATEGIES = ("step", "check")
RULES = ("list", "turns")
DEFAULT_WEIGHTS = {"step": 0.8, "check": 0.2}


@dataclass(frozen=True)
class WalkSettings:
    """The family's knobs (``world.walk`` in conf/world/default.yaml)."""

    moves_base: int = 2            # moves = moves_base + moves_per_difficulty * difficulty
    moves_per_difficulty: int = 2
    restate: float = 0.15          # teacher: chance of a "so X" line after a step line
    fix: float = 0.02              # teacher: chance that a restate slips by one and is corrected next line
    slip: float = 0.15             # student (weak style): chance that a restate slips by one, uncorrected
    rule: str = "list"             # list: every move listed with its label; turns: two moves taken in turns

    def __post_init__(self) -> None:
        for name in ("restate", "fix", "slip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"walk.{name}={value!r}: a probability in [0, 1]")
        if self.rule not in RULES:
            raise ValueError(f"walk.rule={self.rule!r}: expected one of {RULES}")
        if self.moves_base < 0 or self.moves_per_difficulty < 0:
            raise ValueError(f"walk: moves_base and moves_per_difficulty must be >= 0, got {asdict(self)}")

    def moves(self, difficulty: int) -> int:
        n = self.moves_base + self.moves_per_difficulty * difficulty
        if not 1 <= n <= len(LABELS):
            raise ValueError(f"walk: difficulty {difficulty} gives {n} moves; 1..{len(LABELS)} can be labelled "
                             f"(moves_base={self.moves_base}, moves_per_difficulty={self.moves_per_difficulty})")
        return n

    @classmethod
    def from_dict(cls, d: dict | None) -> WalkSettings:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"walk: unknown settings {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


def walk_params(rng: random.Random, difficulty: int, settings: WalkSettings) -> dict:
    """A start in LOW..HIGH-10 and signed moves of 1..9 that keep every value in LOW..HIGH; rule ``turns``:
    two moves (one up, one down, their sizes within 2 of each other) taken in turns from a start in 40..60."""
    n = settings.moves(difficulty)
    if settings.rule == "turns":
        up = rng.randint(3, 9)
        down = rng.randint(max(1, up - 2), min(9, up + 2))
        pair = [up, -down] if rng.random() < 0.5 else [-down, up]
        return {"start": rng.randint(40, 60), "moves": [pair[i % 2] for i in range(n)], "rule": "turns"}
    value = start = rng.randint(LOW, HIGH - 10)
    moves = []
    for _ in range(settings.moves(difficulty)):
        step = rng.randint(1, 9)
        sign = rng.choice((-1, 1))
        if not LOW <= value + sign * step <= HIGH:
            sign = -sign
        moves.append(sign * step)
        value += sign * step
    return {"start": start, "moves": moves}


def walk_question(params: dict) -> str:
    """One move a line, each line starting with its label, as the answer's lines do: with the same label
    token at the start of a line in question and answer, finding a move is a plain lookup (an induction).
    Rule ``turns``: the two moves and the steps' labels, first to last (no lookup: the move of a step is the
    one of two steps before, and the walk stops at the last label)."""
    if params.get("rule") == "turns":
        a, b = params["moves"][:2]
        last = LABELS[len(params["moves"]) - 1]  # the last step's label: stopping is a match, not a count
        return f"Start at {params['start']}.\nMoves in turns: {a:+d}, {b:+d}.\nSteps a to {last}. Where do you end?"
    return f"Start at {params['start']}.\nMoves:\n{_move_lines(params['moves'])}\nWhere do you end?"


def _move_lines(moves: list[int]) -> str:
    """The listed moves, one a line, each led by its label: ``a -5``."""
    return "\n".join(f"{LABELS[i]} {m:+d}" for i, m in enumerate(moves))


def walk_answer(params: dict) -> int:
    return params["start"] + sum(params["moves"])


def _op(m: int) -> str:
    return f"{'+' if m > 0 else '-'} {abs(m)}"


def teacher_lines(params: dict, strategy: str, rng: random.Random, settings: WalkSettings) -> list[str]:
    """The teacher's solution lines (always right: a slipped restate is corrected on the next line)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} for walk: expected one of {STRATEGIES}")
    lines, value = [], params["start"]
    for i, m in enumerate(params["moves"]):
        new = value + m
        lines.append(f"{LABELS[i]}: {value} {_op(m)} = {new}")
        if rng.random() < settings.restate:  # right after the step line, as the student restates
            if rng.random() < settings.fix:
                lines += [f"so {new + 1}", f"no, {new}"]  # the student's slip, caught
            else:
                lines.append(f"so {new}")
        if strategy == "check":
            lines.append(f"check: {new} {_op(-m)} = {value}")
        value = new
    return lines


def weak_lines(params: dict, rng: random.Random, settings: WalkSettings) -> tuple[list[str], int]:
    """The student's own style and the value it ends on (wrong after any slip)."""
    lines, value = [], params["start"]
    for m in params["moves"]:
        new = value + m
        lines.append(f"{value} {_op(m)} = {new}")
        value = new + 1 if rng.random() < settings.slip else new  # the habit's slip: one too high, never undone
        lines.append(f"so {value}")
    return lines, value


def lookup_fact(rng: random.Random, difficulty: int, settings: WalkSettings) -> tuple[str, str, str]:
    """A lookup asked alone: the moves of a walk and one of them by its label; (question, answer line, move)."""
    params = walk_params(rng, difficulty, settings)
    i = rng.randrange(len(params["moves"]))
    move = f"{params['moves'][i]:+d}"
    return f"Moves:\n{_move_lines(params['moves'])}\nWhat is move {LABELS[i]}?", f"{LABELS[i]} {move}", move


def fact_question(rng: random.Random) -> tuple[str, str]:
    """One step of a walk asked alone: ``("47 - 5", "42")``."""
    a, m = rng.randint(LOW, HIGH), rng.randint(1, 9) * rng.choice((-1, 1))
    if not LOW <= a + m <= HIGH:
        m = -m
    return f"{a} {_op(m)}", str(a + m)
