"""A CPU-scale reasoning world: synthetic multi-step problems with verifiable integer answers.

Three problem families, each with a ``difficulty`` knob (int >= 1) that scales the number of reasoning
steps, and three solution strategies with unequal default weights (the teacher's "modes"):

* ``seqsum``: the sum of a listed arithmetic sequence of ``difficulty + 2`` terms.
  Strategies: ``running`` (add term by term), ``pairs`` (pair first and last), ``formula`` (n * (a1 + an) / 2).
* ``chain``: a left-nested expression of ``difficulty + 1`` operations (+, -, * by 2 or 3).
  Strategies: ``single`` (one operation a line), ``rewrite`` (rewrite the whole expression, one reduction a
  line), ``check`` (one operation a line, each checked by its inverse).
* ``count``: how many multiples of k (2..15) lie in 1..N (the count is ``2 * difficulty`` or ``2 * difficulty + 1``).
  Strategies: ``list`` (k * 1, k * 2, ... until past N), ``countdown`` (subtract k from N until under k),
  ``floor`` (the largest multiple and the remainder).

Every step line is checkable arithmetic ("12 + 7 = 19"; a line starting with "=" continues the previous
line's equation). A response is ``"<think>\\n" + steps + "\\n</think>\\n\\n\\boxed{ANSWER}"``.

The ``weak`` style (the student's own habits) is one terse "about" line with no worked steps; it is right
with probability ``WEAK_CORRECT[difficulty]`` (high on difficulty 1, zero from 4 on) and otherwise off by
one. ``make_records`` writes records in the released format (``dasd.data.records``); held-out problems are
those whose parameter hash falls in the held-out bucket, so train and held-out never share a question.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dasd.text.grading import exact_answer
from dasd.world import walk as walk_family
from dasd.world.walk import WalkSettings

FAMILIES = ("seqsum", "chain", "count")  # the first world's families (make_records' default)
ALL_FAMILIES = FAMILIES + ("walk",)      # walk: long labelled chains (dasd.world.walk), the default world's
STRATEGIES = {
    "seqsum": ("running", "pairs", "formula"),
    "chain": ("single", "rewrite", "check"),
    "count": ("list", "countdown", "floor"),
    "walk": walk_family.STRATEGIES,
}
DEFAULT_WEIGHTS = {
    "seqsum": {"running": 0.6, "pairs": 0.3, "formula": 0.1},
    "chain": {"single": 0.6, "rewrite": 0.3, "check": 0.1},
    "count": {"list": 0.6, "countdown": 0.3, "floor": 0.1},
    "walk": dict(walk_family.DEFAULT_WEIGHTS),
}
STYLES = ("teacher", "weak")
SPLITS = ("train", "heldout")
# probability that a weak-style response is right, by difficulty (absent: 0)
WEAK_CORRECT = {1: 0.85, 2: 0.25, 3: 0.1}
INSTRUCTION = "Put the final answer in \\boxed{}."
HELDOUT_FRACTION = 0.2
UUID_NAMESPACE = uuidlib.uuid5(uuidlib.NAMESPACE_URL, "dasd-world")
MAX_CHAIN_VALUE = 200


@dataclass
class Problem:
    uuid: str
    family: str
    difficulty: int
    question: str
    answer: int
    params: dict = field(default_factory=dict)


def _key(family: str, params: dict) -> str:
    return json.dumps({"family": family, "params": params}, sort_keys=True)


def problem_hash(problem: Problem) -> int:
    """A stable 64-bit hash of the problem's family and parameters (the split key)."""
    return int.from_bytes(hashlib.sha256(_key(problem.family, problem.params).encode()).digest()[:8], "big")


def is_heldout(problem: Problem, heldout_fraction: float = HELDOUT_FRACTION) -> bool:
    return problem_hash(problem) % 10_000 < round(heldout_fraction * 10_000)


# ------------------------------------------------------------------------------------------- problems


def _chain_text(start: int | str, ops: Sequence[tuple[str, int]]) -> str:
    """``start`` then each (op, value), left-nested, with parentheses only where precedence needs them."""
    text, top_addsub = str(start), False
    for op, v in ops:
        if op == "*" and top_addsub:
            text = f"({text})"
        text = f"{text} {op} {v}"
        top_addsub = op in "+-"
    return text


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate_problem(rng: random.Random, family: str, difficulty: int,
                     walk: WalkSettings | None = None) -> Problem:
    """A random problem of ``family`` whose number of reasoning steps grows with ``difficulty`` (>= 1)."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {ALL_FAMILIES}")
    if not isinstance(difficulty, int) or difficulty < 1:
        raise ValueError(f"difficulty must be an int >= 1, got {difficulty!r}")
    if family == "walk":
        params = walk_family.walk_params(rng, difficulty, walk or WalkSettings())
        question, answer = walk_family.walk_question(params), walk_family.walk_answer(params)
    elif family == "seqsum":
        n, a1, d = difficulty + 2, rng.randint(1, 20), rng.randint(1, 9)
        terms = [a1 + i * d for i in range(n)]
        params = {"terms": terms}
        question = "Find the sum of " + ", ".join(map(str, terms)) + "."
        answer = sum(terms)
    elif family == "chain":
        cur = start = rng.randint(2, 9)
        ops = []
        for _ in range(difficulty + 1):
            op = rng.choice("+-*")
            if op == "-" and cur < 2:
                op = "+"
            if op == "*" and cur * 2 > MAX_CHAIN_VALUE:
                op = "-"
            v = rng.randint(2, 3) if op == "*" else rng.randint(1, min(9, cur - 1) if op == "-" else 9)
            if op == "*" and cur * v > MAX_CHAIN_VALUE:
                v = 2
            ops.append((op, v))
            cur = _apply(cur, op, v)
        params = {"start": start, "ops": [[op, v] for op, v in ops]}
        question = f"Find {_chain_text(start, ops)}."
        answer = cur
    else:  # count
        k = rng.randint(2, 15)
        m = 2 * difficulty + rng.randint(0, 1)
        n_max = k * m + rng.randint(0, k - 1)
        params = {"k": k, "n": n_max}
        question = f"How many multiples of {k} are in 1 to {n_max}?"
        answer = n_max // k
    uid = str(uuidlib.uuid5(UUID_NAMESPACE, _key(family, params)))
    return Problem(uid, family, difficulty, question, answer, params)


# ------------------------------------------------------------------------------------------- solutions


def _steps_seqsum(p: Problem, strategy: str) -> list[str]:
    terms = p.params["terms"]
    n = len(terms)
    if strategy == "running":
        lines, acc = [], terms[0]
        for t in terms[1:]:
            lines.append(f"{acc} + {t} = {acc + t}")
            acc += t
        return lines
    if strategy == "pairs":
        lines = [f"{terms[i]} + {terms[n - 1 - i]} = {terms[i] + terms[n - 1 - i]}" for i in range(n // 2)]
        s, pairs = terms[0] + terms[-1], n // 2
        lines.append(f"{pairs} * {s} = {pairs * s}")
        if n % 2:
            mid = terms[n // 2]
            lines.append(f"{pairs * s} + {mid} = {pairs * s + mid}")
        return lines
    if strategy == "formula":
        s = terms[0] + terms[-1]
        return [f"{terms[0]} + {terms[-1]} = {s}", f"{n} * {s} = {n * s}", f"{n * s} / 2 = {n * s // 2}"]
    raise ValueError(strategy)


def _steps_chain(p: Problem, strategy: str) -> list[str]:
    ops = [(op, v) for op, v in p.params["ops"]]
    cur = p.params["start"]
    if strategy == "rewrite":
        lines = [_chain_text(cur, ops)]
        for i, (op, v) in enumerate(ops):
            cur = _apply(cur, op, v)
            lines.append(f"= {_chain_text(cur, ops[i + 1:])}")
        return lines
    if strategy not in ("single", "check"):
        raise ValueError(strategy)
    lines = []
    for op, v in ops:
        new = _apply(cur, op, v)
        lines.append(f"{cur} {op} {v} = {new}")
        if strategy == "check":
            inverse = {"+": "-", "-": "+", "*": "/"}[op]
            lines.append(f"{new} {inverse} {v} = {cur}")
        cur = new
    return lines


def _steps_count(p: Problem, strategy: str) -> list[str]:
    k, n_max = p.params["k"], p.params["n"]
    q = n_max // k
    if strategy == "list":
        lines = [f"{k} * {i} = {k * i}" for i in range(1, q + 2)]
        return lines + [f"{k * (q + 1)} is over {n_max}", f"so {q}"]
    if strategy == "countdown":
        lines, cur = [], n_max
        for _ in range(q):
            lines.append(f"{cur} - {k} = {cur - k}")
            cur -= k
        return lines + [f"{cur} is under {k}", f"{q} steps"]
    if strategy == "floor":
        r = n_max - k * q
        return [f"{k} * {q} = {k * q}", f"{n_max} - {k * q} = {r}", f"{r} is under {k}", f"so {q}"]
    raise ValueError(strategy)


_STEPS = {"seqsum": _steps_seqsum, "chain": _steps_chain, "count": _steps_count}


def _weak_line(p: Problem, guess: int) -> str:
    if p.family == "seqsum":
        terms = p.params["terms"]
        return f"{len(terms)} terms {terms[0]} to {terms[-1]} about {guess}"
    if p.family == "chain":
        return f"{p.params['start']} then {len(p.params['ops'])} steps about {guess}"
    return f"{p.params['n']} by {p.params['k']} about {guess}"


def _response(lines: Iterable[str], answer: int) -> str:
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\n\\boxed{" + str(answer) + "}"


def _problem_rng(problem: Problem) -> random.Random:
    return random.Random(problem_hash(problem))


def solve(problem: Problem, strategy: str | None = None, style: str = "teacher",
          rng: random.Random | None = None, weak_correct: Mapping[int, float] | None = None,
          walk: WalkSettings | None = None) -> str:
    """The response to ``problem``: teacher style (correct, step by step in ``strategy``) or weak style (one
    terse line; right with probability ``WEAK_CORRECT[difficulty]``, else off by one). ``rng`` decides the
    weak style's slip; without it the slip is a deterministic function of the problem. ``weak_correct``
    replaces ``WEAK_CORRECT`` (probability of a right weak answer by difficulty; absent: 0).
    ``walk`` problems (dasd.world.walk) take their habits' rates from ``walk`` and their draws from ``rng``:
    the teacher's restate lines, the weak style's unlabelled steps and slips."""
    if problem.family == "walk":
        rng = rng if rng is not None else _problem_rng(problem)
        settings = walk or WalkSettings()
        if style == "teacher":
            if strategy not in STRATEGIES["walk"]:
                raise ValueError(f"unknown strategy {strategy!r} for walk: expected one of {STRATEGIES['walk']}")
            return _response(walk_family.teacher_lines(problem.params, strategy, rng, settings), problem.answer)
        if style == "weak":
            lines, value = walk_family.weak_lines(problem.params, rng, settings)
            return _response(lines, value)
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if style == "teacher":
        if strategy not in STRATEGIES[problem.family]:
            raise ValueError(f"unknown strategy {strategy!r} for {problem.family}: "
                             f"expected one of {STRATEGIES[problem.family]}")
        return _response(_STEPS[problem.family](problem, strategy), problem.answer)
    if style == "weak":
        rng = rng if rng is not None else _problem_rng(problem)
        guess = problem.answer
        p_right = (WEAK_CORRECT if weak_correct is None else weak_correct).get(problem.difficulty, 0.0)
        if rng.random() >= p_right:
            guess += rng.choice((-1, 1)) if problem.answer > 0 else 1
        return _response([_weak_line(problem, guess)], guess)
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


# ------------------------------------------------------------------------------------------- checking

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_ARITH = re.compile(r"[0-9+\-*/() ]+")
_COMPARE = re.compile(r"^(\d+) is (over|under) (\d+)$", re.M)
_LABEL = re.compile(r"^[a-z]+: ")  # walk's step labels ("a: ", "check: ")


def _eval(expr: str) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"not arithmetic: {expr!r}")
    if not _ARITH.fullmatch(expr):
        raise ValueError(f"not arithmetic: {expr!r}")
    return ev(ast.parse(expr.strip(), mode="eval").body)


def step_lines(response: str) -> list[str]:
    """The equations of the reasoning part (lines with "="; a line starting with "=" joins the previous)."""
    think = response.split("</think>", 1)[0].removeprefix("<think>")
    equations: list[str] = []
    prev_plain = None
    for line in (_LABEL.sub("", s.strip()) for s in think.splitlines()):
        if not line:
            continue
        if line.startswith("=") and equations and prev_plain == "eq":
            equations[-1] += " " + line
        elif line.startswith("=") and prev_plain is not None and prev_plain != "eq":
            equations.append(prev_plain + " " + line)
        elif "=" in line:
            equations.append(line)
        prev_plain = "eq" if "=" in line else line
    return equations


def equation_ok(equation: str) -> bool:
    parts = equation.split("=")
    try:
        values = [_eval(part) for part in parts]
    except (ValueError, SyntaxError, ZeroDivisionError):
        return False
    return len(values) >= 2 and all(v == values[0] for v in values)


def check_solution(problem: Problem, response: str) -> bool:
    """True when the response has a <think> part, every step equation is true arithmetic, every "a is over
    b" / "a is under b" line is true and the final boxed answer equals ``problem.answer``."""
    if not response.startswith("<think>\n") or "</think>" not in response:
        return False
    if not all(equation_ok(eq) for eq in step_lines(response)):
        return False
    for a, rel, b in _COMPARE.findall(response.split("</think>", 1)[0]):
        if not (int(a) > int(b) if rel == "over" else int(a) < int(b)):
            return False
    return exact_answer(response) == str(problem.answer)


# ------------------------------------------------------------------------------------------- records


def _difficulties(difficulty: int | Sequence[int] | range) -> list[int]:
    if isinstance(difficulty, int):
        return [difficulty]
    values = list(difficulty)
    if isinstance(difficulty, tuple) and len(values) == 2 and values[1] >= values[0]:
        values = list(range(values[0], values[1] + 1))  # (lo, hi) inclusive
    if not values or any(not isinstance(d, int) or d < 1 for d in values):
        raise ValueError(f"difficulty must be an int >= 1, an inclusive (lo, hi) or a list, got {difficulty!r}")
    return values


def resolve_weights(strategy_weights: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """The default weights, overridden family by family (a family's given weights replace its defaults)."""
    weights = {f: dict(w) for f, w in DEFAULT_WEIGHTS.items()}
    for family, w in (strategy_weights or {}).items():
        if family not in weights:
            raise ValueError(f"unknown family {family!r} in strategy_weights")
        unknown = set(w) - set(STRATEGIES[family])
        if unknown or sum(w.values()) <= 0 or any(v < 0 for v in w.values()):
            raise ValueError(f"bad strategy weights for {family}: {dict(w)}")
        weights[family] = {s: float(w.get(s, 0.0)) for s in STRATEGIES[family]}
    return weights


def make_records(n: int, *, seed: int, families: Sequence[str] | None = None,
                 difficulty: int | Sequence[int] | range = (1, 5),
                 strategy_weights: Mapping[str, Mapping[str, float]] | None = None, style: str = "teacher",
                 split: str = "train", unique: bool | None = None,
                 heldout_fraction: float = HELDOUT_FRACTION, max_tries: int = 200,
                 weak_correct: Mapping[int, float] | None = None, walk: WalkSettings | None = None) -> list[dict]:
    """``n`` records in the released format (all fields strings; ``meta`` a JSON string with ``answer``,
    ``grader="exact"``, ``family``, ``difficulty``, ``strategy``, ``style``, ``split``).

    Families are drawn uniformly, difficulties uniformly from ``difficulty`` (an int, an inclusive
    ``(lo, hi)`` or a list), strategies from ``strategy_weights`` (weak style: strategy ``"weak"``).
    Only problems of ``split`` are kept (a problem is held out when its parameter hash falls in the
    held-out bucket). ``unique`` (default: True for held-out) keeps each question once. ``weak_correct``:
    the weak style's probability of a right answer by difficulty (default ``WEAK_CORRECT``); ``walk``: the
    walk family's settings (``WalkSettings``).
    """
    families = list(families or FAMILIES)
    for f in families:
        if f not in ALL_FAMILIES:
            raise ValueError(f"unknown family {f!r}; expected one of {ALL_FAMILIES}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    unique = split == "heldout" if unique is None else unique
    weights = resolve_weights(strategy_weights)
    diffs = _difficulties(difficulty)
    rng = random.Random(f"dasd-world:{seed}:{split}:{style}")
    seen: set[str] = set()
    records = []
    for i in range(n):
        family, d = rng.choice(families), rng.choice(diffs)
        for _ in range(max_tries):
            p = generate_problem(rng, family, d, walk=walk)
            if is_heldout(p, heldout_fraction) == (split == "heldout") and not (unique and p.uuid in seen):
                break
        else:
            raise ValueError(f"no new {split} problem of {family} at difficulty {d} in {max_tries} tries "
                             f"(record {i}): ask for fewer unique problems")
        seen.add(p.uuid)
        if style == "teacher":
            w = weights[family]
            strategy = rng.choices(list(w), weights=list(w.values()))[0]
            output = solve(p, strategy, rng=rng, walk=walk)
        else:
            strategy = "weak"
            output = solve(p, style="weak", rng=rng, weak_correct=weak_correct, walk=walk)
        meta = {"source": "dasd-world", "answer": str(p.answer), "grader": "exact", "family": family,
                "difficulty": d, "strategy": strategy, "style": style, "split": split, "problem_uuid": p.uuid,
                "params": p.params}
        records.append({
            "uuid": str(uuidlib.uuid5(UUID_NAMESPACE, f"{seed}:{split}:{style}:{i}:{p.uuid}")),
            "input": f"{p.question} {INSTRUCTION}",
            "output": output,
            "domain": "math",
            "meta": json.dumps(meta),
        })
    return records


def fact_records(n: int, *, seed: int, difficulty: int | Sequence[int] | range = (1, 5),
                 families: Sequence[str] | None = None, walk: WalkSettings | None = None) -> list[dict]:
    """``n`` one-step arithmetic records ("What is 38 + 22?" answered by the line ``38 + 22 = 60``): the
    equations the teacher's solutions use at ``difficulty``, asked alone. A student pre-trained on them knows
    its arithmetic facts but not how to chain them, like a base model that distillation teaches to reason."""
    rng = random.Random(f"dasd-world-facts:{seed}")
    weights = resolve_weights(None)
    fams, diffs, walk = list(families or FAMILIES), _difficulties(difficulty), walk or WalkSettings()
    records = []
    while len(records) < n:
        family = rng.choice(fams)
        if family == "walk":  # sums, and (rule list) half move lookups: the skills a step line needs
            if walk.rule != "list" or rng.random() < 0.5:
                lhs, rhs = walk_family.fact_question(rng)
                records.append(_fact_record(seed, len(records), lhs, rhs))
            else:
                question, line, move = walk_family.lookup_fact(rng, rng.choice(diffs), walk)
                records.append(_fact_record(seed, len(records), question, str(int(move)), line=line, plain=True))
            continue
        p = generate_problem(rng, family, rng.choice(diffs))
        strategy = rng.choice(list(weights[family]))
        lines = [ln for ln in _STEPS[family](p, strategy) if "=" in ln and not ln.startswith("=")]
        if not lines:  # chain's rewrite strategy: every equation line continues the previous one
            continue
        lhs, rhs = (side.strip() for side in rng.choice(lines).split("=", 1))
        if not rhs.lstrip("-").isdigit():
            continue
        records.append(_fact_record(seed, len(records), lhs, rhs))
    return records


def _fact_record(seed: int, i: int, lhs: str, rhs: str, line: str | None = None, plain: bool = False) -> dict:
    """A fact record: "What is {lhs}?" answered by "{lhs} = {rhs}", or (``plain``) ``lhs`` as the whole
    question answered by ``line``; the boxed answer is ``rhs``."""
    meta = {"source": "dasd-world", "answer": rhs, "grader": "exact", "family": "fact", "difficulty": 1,
            "strategy": "fact", "style": "fact", "split": "train"}
    return {
        "uuid": str(uuidlib.uuid5(UUID_NAMESPACE, f"fact:{seed}:{i}:{lhs}")),
        "input": f"{lhs if plain else f'What is {lhs}?'} {INSTRUCTION}",
        "output": _response([line or f"{lhs} = {rhs}"], int(rhs)),
        "domain": "math",
        "meta": json.dumps(meta),
    }


def record_problem(record: Mapping) -> Problem:
    """The ``Problem`` of a record written by ``make_records`` (from its meta)."""
    meta = json.loads(record["meta"]) if isinstance(record["meta"], str) else record["meta"]
    family, params = meta["family"], meta["params"]
    question = record["input"].removesuffix(" " + INSTRUCTION)
    return Problem(meta["problem_uuid"], family, int(meta["difficulty"]), question, int(meta["answer"]), params)


def write_jsonl(records: Iterable[Mapping], path) -> None:
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
