"""Response selection: which candidate of each question becomes training data.

``RandomSelector`` is the RS baseline of the paper (spec §5.4): one uniformly random candidate per
question, seeded. Candidates of one question share ``meta.question_id`` when the generator wrote one,
else the same ``input`` text. On the released data (one response per question) it keeps everything.
The divergence-aware selector (DAS) plugs in behind the same ``select`` interface.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

from dasd.data.records import Record


def question_key(record: Record) -> str:
    """The key grouping the candidates of one question."""
    try:
        meta = json.loads(record.meta) if record.meta else {}
    except json.JSONDecodeError:
        meta = {}
    qid = meta.get("question_id") if isinstance(meta, dict) else None
    return f"id:{qid}" if qid is not None else f"input:{record.input}"


class RandomSelector:
    """Keep one uniformly random candidate per question (order of first appearance is kept)."""

    name = "random"

    def __init__(self, seed: int = 42, name: str = "random") -> None:
        self.seed, self.name = seed, name

    def select(self, records: list[Record]) -> tuple[list[Record], dict]:
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in records:
            groups[question_key(r)].append(r)
        rng = random.Random(self.seed)
        chosen = [cands[rng.randrange(len(cands))] if len(cands) > 1 else cands[0] for cands in groups.values()]
        report = {"sampler": self.name, "candidates": len(records), "questions": len(groups),
                  "selected": len(chosen), "not_selected": len(records) - len(chosen)}
        return chosen, report


class KeepAllSelector:
    """Keep every candidate (data already curated elsewhere, e.g. the mixed-policy stage's revision set plus
    its off-policy samples, where one question may appear twice on purpose)."""

    name = "all"

    def __init__(self, name: str = "all") -> None:
        self.name = name

    def select(self, records: list[Record]) -> tuple[list[Record], dict]:
        report = {"sampler": self.name, "candidates": len(records), "questions": len({question_key(r) for r in records}),
                  "selected": len(records), "not_selected": 0}
        return list(records), report
