"""Per-sentence teacher and student log-probabilities of every candidate, persisted so that changing the
threshold β or the selection rule never rescores (spec §5.4: "Persist p_T, p_S and the label of every
sentence").

A store is a folder keyed by what the numbers depend on (scoring student, teacher tokenizer, data files,
chat-template settings, segmentation version); see ``store_key``. It holds ``meta.json`` (the key's parts)
and Parquet parts written atomically (``part-NNNNN.parquet``), one row per candidate:

| column | type | meaning |
|---|---|---|
| ``uuid`` | string | the candidate's record uuid |
| ``starts``, ``ends`` | list<int32> | sentence spans ``[start, end)`` in the record's ``output`` |
| ``t_sum``, ``t_num`` | list<float64>, list<int32> | teacher: sum of token logprobs and token count per sentence |
| ``s_sum``, ``s_num`` | list<float64>, list<int32> | student: the same |
| ``t_total``, ``t_tokens`` | float64, int32 | teacher: logprob sum and token count of the whole response |
| ``s_total``, ``s_tokens`` | float64, int32 | student: the same (the response tokens plus the end-of-turn token) |

``p_M(s) = exp(M_sum / M_num)`` (spec §2.3); a sentence with no token under either model has no label.
Scoring is resumable: an interrupted run keeps its finished parts and the next run scores only the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dasd.das.align import sentence_probability
from dasd.utils.hashing import stable_hash

LIST_COLUMNS = ("starts", "ends", "t_sum", "t_num", "s_sum", "s_num")
SCALAR_COLUMNS = ("t_total", "t_tokens", "s_total", "s_tokens")
SCHEMA = pa.schema([("uuid", pa.string()), ("starts", pa.list_(pa.int32())), ("ends", pa.list_(pa.int32())),
                    ("t_sum", pa.list_(pa.float64())), ("t_num", pa.list_(pa.int32())),
                    ("s_sum", pa.list_(pa.float64())), ("s_num", pa.list_(pa.int32())),
                    ("t_total", pa.float64()), ("t_tokens", pa.int32()),
                    ("s_total", pa.float64()), ("s_tokens", pa.int32())])
TYPES = ("teacher", "shared", "student", "unlabeled")


@dataclass
class CandidateScores:
    """The sentence-level scores of one candidate response."""

    uuid: str
    spans: np.ndarray  # (n, 2) int
    t_sum: np.ndarray
    t_num: np.ndarray
    s_sum: np.ndarray
    s_num: np.ndarray
    t_total: float
    t_tokens: int
    s_total: float
    s_tokens: int

    def row(self) -> dict:
        return {"uuid": self.uuid, "starts": self.spans[:, 0].tolist(), "ends": self.spans[:, 1].tolist(),
                "t_sum": self.t_sum.tolist(), "t_num": self.t_num.tolist(), "s_sum": self.s_sum.tolist(),
                "s_num": self.s_num.tolist(), "t_total": float(self.t_total), "t_tokens": int(self.t_tokens),
                "s_total": float(self.s_total), "s_tokens": int(self.s_tokens)}

    @classmethod
    def from_row(cls, r: dict) -> CandidateScores:
        spans = np.stack([np.asarray(r["starts"], np.int64), np.asarray(r["ends"], np.int64)], axis=1) \
            if r["starts"] else np.zeros((0, 2), np.int64)
        return cls(r["uuid"], spans, np.asarray(r["t_sum"], np.float64), np.asarray(r["t_num"], np.int64),
                   np.asarray(r["s_sum"], np.float64), np.asarray(r["s_num"], np.int64), r["t_total"],
                   r["t_tokens"], r["s_total"], r["s_tokens"])

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """(p_T, p_S) per sentence; NaN where the model has no token in the sentence."""
        return sentence_probability(self.t_sum, self.t_num), sentence_probability(self.s_sum, self.s_num)

    def labels(self, beta: float) -> list[str]:
        """The type of each sentence at ``beta`` (see ``label_codes``)."""
        return [TYPES[c] for c in label_codes(*self.probabilities(), beta)]


def label_codes(pt: np.ndarray, ps: np.ndarray, beta: float) -> np.ndarray:
    """The type of each sentence as an index into ``TYPES``: Teacher (p_T − p_S > β), Student (p_S − p_T > β),
    Shared otherwise, unlabeled where either probability is NaN (no token under that tokenizer)."""
    labeled = ~(np.isnan(pt) | np.isnan(ps))
    diff = np.where(labeled, pt - ps, 0.0)
    codes = np.where(diff > beta, 0, np.where(-diff > beta, 2, 1))
    return np.where(labeled, codes, 3)


@dataclass
class Summary:
    """Per-candidate numbers at one β, as parallel arrays over the store's candidates."""

    uuid: np.ndarray
    n_teacher: np.ndarray
    n_student: np.ndarray
    n_shared: np.ndarray
    n_unlabeled: np.ndarray
    p_teacher: np.ndarray  # response probability: exp(mean teacher token logprob over the response)
    p_student: np.ndarray
    num_tokens: np.ndarray  # response length in student tokens (the end-of-turn token excluded)

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.uuid.tolist())}


def part_files(folder: Path) -> list[Path]:
    """A store's Parquet parts, in write order."""
    return sorted(Path(folder).glob("part-*.parquet"))


def write_part(folder: Path, rows: list[dict], schema: pa.Schema) -> Path | None:
    """Append ``rows`` to a store folder as its next part, atomically (temporary file + rename)."""
    if not rows:
        return None
    parts = part_files(folder)
    n = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
    path = Path(folder) / f"part-{n:05d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)
    return path


def store_key(**parts) -> str:
    return stable_hash(parts, 20)


class ScoreStore:
    """A folder of scored candidates (see the module docstring). ``write`` appends a part atomically."""

    def __init__(self, folder: str | Path, meta: dict | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_file = self.folder / "meta.json"
        if meta is not None and not meta_file.exists():
            meta_file.write_text(json.dumps(meta, indent=2, default=str))
        self.meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}

    def parts(self) -> list[Path]:
        return part_files(self.folder)

    def scored_uuids(self) -> set[str]:
        done: set[str] = set()
        for p in self.parts():
            done.update(pq.read_table(p, columns=["uuid"]).column("uuid").to_pylist())
        return done

    def write(self, scores: Iterable[CandidateScores]) -> Path | None:
        return write_part(self.folder, [s.row() for s in scores], SCHEMA)

    def __iter__(self) -> Iterator[CandidateScores]:
        for p in self.parts():
            for r in pq.read_table(p).to_pylist():
                yield CandidateScores.from_row(r)

    def get(self, uuids: Iterable[str]) -> dict[str, CandidateScores]:
        """The full scores of a few candidates (reads every part; for examples and inspection)."""
        want = set(uuids)
        return {s.uuid: s for s in self if s.uuid in want}

    def summarize(self, beta: float) -> Summary:
        """Sentence-type counts and response probabilities of every stored candidate, vectorised per part."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in Summary.__dataclass_fields__}
        for p in self.parts():
            table = pq.read_table(p)
            offsets = table.column("t_sum").combine_chunks().offsets.to_numpy()
            flat = {c: table.column(c).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                    for c in ("t_sum", "t_num", "s_sum", "s_num")}
            codes = label_codes(sentence_probability(flat["t_sum"], flat["t_num"]),
                                sentence_probability(flat["s_sum"], flat["s_num"]), beta)
            n = len(offsets) - 1
            row = np.repeat(np.arange(n), np.diff(offsets))
            for code, kind in enumerate(TYPES):
                out[f"n_{kind}"].append(np.bincount(row[codes == code], minlength=n).astype(np.int64))
            scal = {c: table.column(c).to_numpy() for c in SCALAR_COLUMNS}
            out["p_teacher"].append(sentence_probability(scal["t_total"], scal["t_tokens"]))
            out["p_student"].append(sentence_probability(scal["s_total"], scal["s_tokens"]))
            out["num_tokens"].append(scal["s_tokens"].astype(np.int64) - 1)
            out["uuid"].append(np.asarray(table.column("uuid").to_pylist(), dtype=object))
        return Summary(**{k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()})
