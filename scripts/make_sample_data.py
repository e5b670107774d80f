"""Generate the synthetic sample dataset shipped with dasd.

The records imitate the released format of the "Superior-Reasoning-SFT-gpt-oss-120b" dataset:
one JSON object per line with the string fields ``uuid``, ``input``, ``output``, ``domain`` and
``meta`` (a JSON-encoded string). Each ``output`` is ``<think>\\n{reasoning}\\n</think>\\n\\n{final}``
where the reasoning really computes the answer and ``final`` ends with ``\\boxed{answer}``.

Two files imitate two teacher sampling temperatures: at T=0.6 the reasoning uses one consistent
phrasing per problem kind; at T=1.0 phrasings vary and some traces re-verify a step.

Usage::

    python scripts/make_sample_data.py --out-dir src/dasd/assets/sample_data --n 300 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

DEFAULT_OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "dasd" / "assets" / "sample_data"
TEMPERATURES = (0.6, 1.0)
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "dasd-synthetic/sample-data")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

NAMES = (
    "Maya", "Liam", "Sofia", "Noah", "Aisha", "Ethan", "Priya", "Lucas", "Elena", "Omar",
    "Hana", "Mateo", "Zoe", "Kenji", "Amara", "Felix", "Nina", "Tariq", "Clara", "Ravi",
)  # fmt: skip
ITEMS = (
    "marbles", "stickers", "apples", "pencils", "trading cards", "seashells", "stamps",
    "beads", "cookies", "books", "balloons", "crayons", "oranges", "coins",
)  # fmt: skip
CONTAINERS = ("boxes", "bags", "jars", "crates", "baskets", "trays")
SHOP_ITEMS = (
    ("notebooks", "pens"), ("sandwiches", "juices"), ("tickets", "snacks"),
    ("shirts", "hats"), ("cupcakes", "muffins"), ("plants", "pots"),
)  # fmt: skip
PERCENT_GROUPS = (
    ("students in a school", "take the bus"), ("trees in an orchard", "are apple trees"),
    ("people at a concert", "bought a T-shirt"), ("emails in an inbox", "are unread"),
    ("seats in a theater", "are reserved"),
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One solved word problem, before it is rendered as a teacher trace."""

    kind: str
    question: str
    goal: str
    steps: list[str]
    conclusion: str
    check: str
    answer: int


class Voice:
    """Chooses phrasings: a single fixed one at low temperature, a random one at high temperature."""

    def __init__(self, rng: random.Random, diverse: bool) -> None:
        self.rng = rng
        self.diverse = diverse

    def pick(self, options: Sequence[str]) -> str:
        return self.rng.choice(options) if self.diverse else options[0]


def _say(v: Voice, *alternatives: tuple[str, ...]) -> list[str]:
    """One line per reasoning step, each phrased by ``v`` from its alternatives."""
    return [v.pick(options) for options in alternatives]


def make_addition(rng: random.Random, v: Voice) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(12, 89), rng.randint(5, 60)
    total = a + b
    question = rng.choice((
        f"{name} has {a} {item}. A friend gives {name} {b} more. How many {item} does {name} have now?",
        f"{name} collected {a} {item} on Monday and {b} {item} on Tuesday. "
        f"How many {item} did {name} collect in all?",
    ))  # fmt: skip
    steps = _say(
        v,
        (f"{name} has {a} {item} and then gets {b} more.", f"The two amounts are {a} and {b}."),
        (
            f"Adding them: {a} + {b} = {total}.",
            f"{a} + {b} = {total}.",
            f"So I add: {a} + {b} gives {total}.",
        ),
    )
    return Problem(
        kind="addition",
        question=question,
        goal=f"how many {item} {name} has altogether",
        steps=steps,
        conclusion=f"So {name} has {a} + {b} = {total} {item}.",
        check=f"{total} − {b} = {a}, which is the first amount.",
        answer=total,
    )


def make_subtraction(rng: random.Random, v: Voice) -> Problem:
    item = rng.choice(ITEMS)
    a = rng.randint(40, 200)
    b = rng.randint(5, a - 5)
    left = a - b
    question = rng.choice((
        f"A shop had {a} {item} in stock and sold {b} of them. How many {item} are left?",
        f"A club started the day with {a} {item}. By evening, {b} had been used. How many {item} remain?",
    ))  # fmt: skip
    steps = _say(
        v,
        (f"The starting amount is {a} and {b} are taken away.", f"We begin with {a}, and {b} are gone."),
        (f"Subtracting: {a} − {b} = {left}.", f"{a} − {b} = {left}.", f"Taking {b} from {a} leaves {left}."),
    )
    return Problem(
        kind="subtraction",
        question=question,
        goal=f"how many {item} are left after {b} are removed from {a}",
        steps=steps,
        conclusion=f"So {a} − {b} = {left} {item} are left.",
        check=f"{left} + {b} = {a}, so it adds back up.",
        answer=left,
    )


def make_multiplication(rng: random.Random, v: Voice) -> Problem:
    item, container = rng.choice(ITEMS), rng.choice(CONTAINERS)
    groups, each = rng.randint(3, 12), rng.randint(4, 25)
    total = groups * each
    question = rng.choice((
        f"There are {groups} {container}, and each holds {each} {item}. How many {item} are there in total?",
        f"A teacher fills {groups} {container} with {each} {item} apiece. "
        f"How many {item} does the teacher use?",
    ))  # fmt: skip
    steps = _say(
        v,
        (f"There are {groups} groups of {each}.", f"Each of the {groups} {container} has {each} {item}."),
        (f"Multiplying: {groups} × {each} = {total}.", f"{groups} × {each} = {total}."),
    )
    return Problem(
        kind="multiplication",
        question=question,
        goal=f"the total number of {item} in {groups} {container}",
        steps=steps,
        conclusion=f"So there are {groups} × {each} = {total} {item} in total.",
        check=f"{total} ÷ {groups} = {each}, as expected.",
        answer=total,
    )


def make_division(rng: random.Random, v: Voice) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    people, share = rng.randint(2, 12), rng.randint(3, 20)
    total = people * share
    question = rng.choice((
        f"{name} has {total} {item} and shares them equally among {people} friends. "
        f"How many {item} does each friend get?",
        f"{total} {item} are packed equally into {people} bags. How many {item} go into each bag?",
    ))  # fmt: skip
    steps = _say(
        v,
        (f"{total} {item} are split into {people} equal parts.", f"I need {total} ÷ {people}."),
        (
            f"Dividing: {total} ÷ {people} = {share}.",
            f"{people} × {share} = {total}, so {total} ÷ {people} = {share}.",
        ),
    )
    return Problem(
        kind="division",
        question=question,
        goal=f"how many {item} each of the {people} shares gets",
        steps=steps,
        conclusion=f"So each share is {total} ÷ {people} = {share} {item}.",
        check=f"{people} × {share} = {total}, which matches.",
        answer=share,
    )


def make_two_step_price(rng: random.Random, v: Voice) -> Problem:
    name, (first, second) = rng.choice(NAMES), rng.choice(SHOP_ITEMS)
    n1, p1, n2, p2 = rng.randint(2, 9), rng.randint(2, 15), rng.randint(2, 6), rng.randint(1, 10)
    c1, c2 = n1 * p1, n2 * p2
    total = c1 + c2
    question = rng.choice((
        f"{name} buys {n1} {first} at ${p1} each and {n2} {second} at ${p2} each. "
        f"How much does {name} spend in total, in dollars?",
        f"At a fair, {first} cost ${p1} each and {second} cost ${p2} each. "
        f"{name} buys {n1} {first} and {n2} {second}. What is the total cost in dollars?",
    ))  # fmt: skip
    steps = _say(
        v,
        (f"The {first} cost {n1} × {p1} = {c1} dollars.", f"First the {first}: {n1} × ${p1} = ${c1}."),
        (f"The {second} cost {n2} × {p2} = {c2} dollars.", f"Then the {second}: {n2} × ${p2} = ${c2}."),
        (f"Adding both: {c1} + {c2} = {total}.", f"Together that is {c1} + {c2} = {total}."),
    )
    return Problem(
        kind="two_step_price",
        question=question,
        goal=f"the total cost of the {first} and the {second}",
        steps=steps,
        conclusion=f"So the total cost is {c1} + {c2} = {total} dollars.",
        check=f"{total} − {c2} = {c1}, the cost of the {first}.",
        answer=total,
    )


def make_ages(rng: random.Random, v: Voice) -> Problem:
    older, younger = rng.sample(NAMES, 2)
    young_age, diff, years = rng.randint(4, 20), rng.randint(2, 30), rng.randint(2, 15)
    now, later = young_age + diff, young_age + diff + years
    question = rng.choice((
        f"{older} is {diff} years older than {younger}. {younger} is {young_age} years old. "
        f"How old will {older} be in {years} years?",
        f"{younger} is {young_age}, and {older} is {diff} years older. "
        f"What will {older}'s age be {years} years from now?",
    ))  # fmt: skip
    steps = _say(
        v,
        (
            f"{older} is now {young_age} + {diff} = {now} years old.",
            f"{older}'s current age: {young_age} + {diff} = {now}.",
        ),
        (
            f"In {years} years, {older} will be {now} + {years} = {later}.",
            f"Adding {years} years: {now} + {years} = {later}.",
        ),
    )
    return Problem(
        kind="ages",
        question=question,
        goal=f"{older}'s age {years} years from now",
        steps=steps,
        conclusion=f"So {older} will be {now} + {years} = {later} years old.",
        check=f"{younger} will be {young_age + years} then, and {young_age + years} + {diff} = {later}, the same.",
        answer=later,
    )


def make_speed_distance_time(rng: random.Random, v: Voice) -> Problem:
    name, vehicle = rng.choice(NAMES), rng.choice(("car", "train", "bus", "bicycle", "boat"))
    speed, hours = rng.randint(3, 18) * 5, rng.randint(2, 8)
    distance = speed * hours
    if rng.random() < 0.5:
        return Problem(
            kind="speed_distance_time",
            question=f"{name} travels by {vehicle} at {speed} km/h for {hours} hours. "
            f"How many kilometers does {name} travel?",
            goal=f"the distance covered in {hours} hours at {speed} km/h",
            steps=_say(
                v,
                ("Distance = speed × time.", "Distance equals speed times time."),
                (f"{speed} × {hours} = {distance}.", f"So {speed} km/h × {hours} h = {distance} km."),
            ),
            conclusion=f"So the distance is {speed} × {hours} = {distance} km.",
            check=f"{distance} ÷ {hours} = {speed} km/h.",
            answer=distance,
        )
    return Problem(
        kind="speed_distance_time",
        question=f"A {vehicle} covers {distance} km at a steady {speed} km/h. How many hours does the trip take?",
        goal=f"how long it takes to cover {distance} km at {speed} km/h",
        steps=_say(
            v,
            ("Time = distance ÷ speed.", "Time equals distance divided by speed."),
            (f"{distance} ÷ {speed} = {hours}.", f"So {distance} km ÷ {speed} km/h = {hours} h."),
        ),
        conclusion=f"So the trip takes {distance} ÷ {speed} = {hours} hours.",
        check=f"{speed} × {hours} = {distance} km.",
        answer=hours,
    )


def make_percentage(rng: random.Random, v: Voice) -> Problem:
    group, trait = rng.choice(PERCENT_GROUPS)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75))
    unit = 100 // gcd(pct, 100)  # smallest base for which pct% is a whole number
    base = unit * rng.randint(max(1, 20 // unit), 400 // unit)
    part = base * pct // 100
    steps = _say(
        v,
        (f"{pct}% means {pct}/100.", f"{pct}% of {base} is {pct}/100 × {base}."),
        (f"{base} × {pct} = {base * pct}.", f"First {base} × {pct} = {base * pct}."),
        (f"{base * pct} ÷ 100 = {part}.", f"Dividing by 100 gives {part}."),
    )
    return Problem(
        kind="percentage",
        question=f"There are {base} {group}, and {pct}% of them {trait}. How many of them {trait}?",
        goal=f"{pct}% of {base}",
        steps=steps,
        conclusion=f"So {pct}% of {base} is {base * pct} ÷ 100 = {part}.",
        check=f"{part} × 100 ÷ {base} = {pct}, so it is {pct}%.",
        answer=part,
    )


def make_remaining(rng: random.Random, v: Voice) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friend = rng.choice(("a friend", "a neighbor", "a classmate"))
    sibling = rng.choice(("a sister", "a brother", "a cousin"))
    total = rng.randint(30, 150)
    a, b = rng.randint(3, total // 3), rng.randint(3, total // 3)
    given, left = a + b, total - a - b
    steps = _say(
        v,
        (f"{name} gives away {a} + {b} = {given} {item}.", f"Total given away: {a} + {b} = {given}."),
        (f"That leaves {total} − {given} = {left}.", f"{total} − {given} = {left}."),
    )
    return Problem(
        kind="remaining_after_giving",
        question=f"{name} has {total} {item}. {name} gives {a} to {friend} and {b} to {sibling}. "
        f"How many {item} does {name} have left?",
        goal=f"how many {item} {name} keeps after giving some away",
        steps=steps,
        conclusion=f"So {name} has {total} − {given} = {left} {item} left.",
        check=f"{left} + {a} + {b} = {total}, correct.",
        answer=left,
    )


def make_change(rng: random.Random, v: Voice) -> Problem:
    name, (item, _) = rng.choice(NAMES), rng.choice(SHOP_ITEMS)
    count, price = rng.randint(2, 6), rng.randint(2, 15)
    cost = count * price
    bill = next(b for b in (20, 50, 100) if b > cost)
    change = bill - cost
    steps = _say(
        v,
        (f"The {item} cost {count} × {price} = {cost} dollars.", f"Cost: {count} × ${price} = ${cost}."),
        (f"The change is {bill} − {cost} = {change}.", f"{bill} − {cost} = {change} dollars back."),
    )
    return Problem(
        kind="change_from_payment",
        question=f"{name} buys {count} {item} that cost ${price} each and pays with a ${bill} bill. "
        f"How much change, in dollars, does {name} get?",
        goal=f"the change from a ${bill} bill",
        steps=steps,
        conclusion=f"So {name} gets {bill} − {cost} = {change} dollars in change.",
        check=f"{cost} + {change} = {bill}, the bill.",
        answer=change,
    )


KINDS: tuple[Callable[[random.Random, Voice], Problem], ...] = (
    make_addition, make_subtraction, make_multiplication, make_division, make_two_step_price,
    make_ages, make_speed_distance_time, make_percentage, make_remaining, make_change,
)  # fmt: skip

OPENINGS = (
    "Let me solve this step by step.",
    "Okay, let's see.",
    "Alright, let me work through this carefully.",
    "Hmm, let me think about what the question asks.",
    "I need to find the answer step by step.",
)
GOALS = (
    "I need to find {goal}.",
    "We want to work out {goal}.",
    "The task is to figure out {goal}.",
    "So the goal here is to determine {goal}.",
)
ASIDES = (
    "That number looks reasonable for this situation.",
    "Nothing else in the problem changes the result.",
    "The units are consistent, so no conversion is needed.",
)
CHECK_INTROS = ("Let me double-check:", "Wait, let me verify that:", "Quick check:")
CLOSINGS = ("So the answer is {answer}.", "That gives {answer}.", "The answer should be {answer}.")
ANSWER_LINES = (
    "**Answer:** \\boxed{{{answer}}}",
    "**Final answer:** \\boxed{{{answer}}}",
    "Therefore, the answer is \\boxed{{{answer}}}",
)


def render_output(problem: Problem, v: Voice) -> str:
    """Render ``<think>`` reasoning plus a final answer; the high-temperature voice adds re-checks."""
    lines = [v.pick(OPENINGS), v.pick(GOALS).format(goal=problem.goal), *problem.steps]
    if v.diverse and v.rng.random() < 0.4:
        lines.append(f"{v.pick(CHECK_INTROS)} {problem.check}")
    if v.diverse and v.rng.random() < 0.25:
        lines.append(v.pick(ASIDES))
    lines.append(v.pick(CLOSINGS).format(answer=problem.answer))
    reasoning = "\n".join(lines)
    final = f"{problem.conclusion}\n\n{v.pick(ANSWER_LINES).format(answer=problem.answer)}"
    return "<think>\n" + reasoning.strip() + "\n</think>\n\n" + final.strip()


def make_record(index: int, temperature: float, problem: Problem, output: str) -> dict[str, str]:
    """Assemble one record in the released dataset's field layout (all values are strings)."""
    meta = {
        "source": "dasd-synthetic",
        "temperature": temperature,
        "kind": problem.kind,
        "answer": str(problem.answer),
    }
    return {
        "uuid": str(uuid.uuid5(UUID_NAMESPACE, f"{index}-T{temperature}")),
        "input": f"{problem.question} {INSTRUCTION}",
        "output": output,
        "domain": "math",
        "meta": json.dumps(meta, ensure_ascii=False),
    }


def generate(n: int, seed: int, temperature: float, seen: set[str]) -> list[dict[str, str]]:
    """Generate ``n`` records whose questions are not in ``seen`` (which is updated)."""
    rng = random.Random(f"dasd-sample-data:{seed}:{temperature}")
    voice = Voice(rng, diverse=temperature >= 1.0)
    records: list[dict[str, str]] = []
    while len(records) < n:
        problem = rng.choice(KINDS)(rng, voice)
        if problem.question in seen:
            continue
        seen.add(problem.question)
        records.append(make_record(len(records), temperature, problem, render_output(problem, voice)))
    return records


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--n", type=int, default=300, help="records per temperature file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seen: set[str] = set()
    for temperature in TEMPERATURES:
        path = args.out_dir / f"sample_T{temperature}.jsonl"
        write_jsonl(path, generate(args.n, args.seed, temperature, seen))
        print(f"wrote {args.n} records to {path}")


if __name__ == "__main__":
    main()
