"""Divergence-aware selection through the real data module, HF scoring engine and tiny student, with a
teacher tokenizer that differs from the student's."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from dasd.das.scores import ScoreStore
from dasd.das.segment import segment
from dasd.das.selector import DivergenceSelector
from dasd.data.datamodule import SFTDataModule
from dasd.data.selection import RandomSelector
from tests.conftest import write_jsonl

SYSTEM = "You are a helpful assistant."
SENTENCES = ["We read the question carefully.", "The first number is {q}.", "Adding gives {s}.",
             "We check the sum again.", "It is still {s}.", "Nothing else is needed."]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A byte-level BPE teacher tokenizer (digits split, 400 tokens): not the student's tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    text = [s.format(q=i, s=2 * i) for i in range(50) for s in SENTENCES] + ["<think> </think> \\boxed{12}"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|eos|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    out = tmp_path_factory.mktemp("teacher_tok")
    fast.save_pretrained(out)
    return out


def _output(q: int, n: int) -> str:
    body = " ".join(s.format(q=q, s=2 * q) for s in SENTENCES[:n])
    return f"<think>\n{body}\n</think>\n\nThe answer is \\boxed{{{2 * q}}}."


def _pool(path: Path, teacher, k_sentences: list[int], questions: int = 6) -> Path:
    """K candidates per question; candidate k's teacher logprobs are 0 (p_T = 1) on the tokens of its first
    ``k_sentences[k]`` sentences and -12 elsewhere, so exactly those sentences are Teacher Sentences under a
    student that is far from certain."""
    rows = []
    for q in range(questions):
        for k, n_conf in enumerate(k_sentences):
            out = _output(q, 3 + k % 4)
            ids = teacher.encode(out, add_special_tokens=False) + [teacher.eos_token_id]
            spans = segment(out)
            limit = spans[n_conf - 1][1] if n_conf else 0
            lps, pos = [], 0
            for i in ids[:-1]:
                piece = teacher.decode([i])
                lps.append(0.0 if pos < limit else -12.0)
                pos += len(piece)
            lps.append(-0.5)
            rows.append({"uuid": f"q{q}-k{k}", "input": f"What is {q} + {q}?", "output": out, "domain": "math",
                         "meta": json.dumps({"question_id": f"q{q}"}), "token_ids": ids, "logprobs": lps,
                         "finish_reason": "stop", "has_tool_call": False})
    return write_jsonl(path, rows)


def _dm(path, tokenizer, selector, cache_dir) -> SFTDataModule:
    dm = SFTDataModule(str(path), tokenizer, selector, cutoff_len=512, system_prompt=SYSTEM, cache_dir=str(cache_dir),
                       source_format="generated")
    dm.setup("fit")
    return dm


def _das(tiny_path, teacher_dir, store, **kw) -> DivergenceSelector:
    return DivergenceSelector(scoring_student=tiny_path, teacher_tokenizer=str(teacher_dir), store_dir=str(store),
                              engine_args={"device": "cpu", "score_chunk_size": 16}, batch_size=4, **kw)


def _selected(dm) -> list[str]:
    return sorted(s.uuid for s in dm.samples)


@pytest.fixture(scope="module")
def pool(tmp_path_factory, teacher_dir):
    teacher = PreTrainedTokenizerFast.from_pretrained(teacher_dir)
    return _pool(tmp_path_factory.mktemp("pool") / "pool.jsonl", teacher, [1, 3, 2, 0])


def test_das_keeps_the_candidate_with_most_teacher_sentences(pool, tokenizer, tiny_path, teacher_dir, tmp_path):
    dm = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "scores"), tmp_path / "cache")
    assert _selected(dm) == sorted(f"q{q}-k1" for q in range(6))  # candidate 1 has 3 confident sentences
    report = dm.report()["selection"]
    assert report["scoring"]["scored_now"] == 24 and report["scoring"]["from_store"] == 0
    assert report["das_vs_random"]["candidates"] == 24


def test_other_rules_follow_their_definition(pool, tokenizer, tiny_path, teacher_dir, tmp_path):
    store = tmp_path / "scores"
    fewest = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, store, rule="min_teacher_count"), tmp_path / "c1")
    assert _selected(fewest) == sorted(f"q{q}-k3" for q in range(6))
    longest = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, store, rule="longest"), tmp_path / "c2")
    assert _selected(longest) == sorted(f"q{q}-k3" for q in range(6))  # k=3 has 6 sentences, the most
    assert longest.report()["selection"]["scoring"]["scored_now"] == 0  # the rule changed, the scores did not


def test_huge_beta_reduces_to_the_seeded_tie_break_and_keeps_the_random_budget(pool, tokenizer, tiny_path,
                                                                               teacher_dir, tmp_path):
    store, seed = tmp_path / "scores", 7
    das = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, store, beta=1e9, seed=seed), tmp_path / "c1")
    rs = _dm(pool, tokenizer, RandomSelector(seed), tmp_path / "c2")
    assert _selected(das) == _selected(rs)
    ordinary = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, store, seed=seed), tmp_path / "c3")
    questions = lambda dm: sorted(u.split("-")[0] for u in _selected(dm))  # noqa: E731
    assert len(ordinary.samples) == len(rs.samples) and questions(ordinary) == questions(rs)
    assert _selected(ordinary) != _selected(rs)


def test_cached_scores_give_the_same_selection_as_a_fresh_run(pool, tokenizer, tiny_path, teacher_dir, tmp_path):
    fresh = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s1", beta=0.05), tmp_path / "c1")
    # another beta first fills the store, then beta=0.05 re-selects from it without scoring
    _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s2", beta=0.3), tmp_path / "c2")
    again = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s2", beta=0.05), tmp_path / "c3")
    assert again.report()["selection"]["scoring"]["scored_now"] == 0
    assert again.report()["selection"]["scoring"]["from_store"] == 24
    assert _selected(again) == _selected(fresh)
    assert again.report()["selection"]["das_vs_random"] == fresh.report()["selection"]["das_vs_random"]


def test_stored_scores_match_the_teacher_file_and_the_student_training_loss(pool, tokenizer, tiny_path,
                                                                            teacher_dir, tmp_path):
    """The student is scored on exactly the sample it is trained on: the stored student log-probability of a
    response equals minus the summed training cross-entropy of that sample's supervised tokens."""
    dm = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "scores"), tmp_path / "cache")
    store = ScoreStore(next((tmp_path / "scores").iterdir()))
    scores = {s.uuid: s for s in store}
    rows = {json.loads(line)["uuid"]: json.loads(line) for line in Path(pool).read_text().splitlines()}
    for uuid, sc in scores.items():
        assert sc.t_tokens == len(rows[uuid]["token_ids"])
        assert math.isclose(sc.t_total, sum(rows[uuid]["logprobs"]), abs_tol=1e-9)
        assert sc.t_sum.sum() <= 0 and sc.spans.shape[0] == len(sc.t_sum) == len(sc.s_sum)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    for sample in dm.samples:
        ids = torch.tensor([sample.input_ids])
        sup = torch.tensor(sample.supervised)
        sup[len(sup) - (len(dm.templater.end_ids) - 1):] = False  # the "\n" after <|im_end|>: trained, not scored
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, use_cache=False).logits[0, :-1].double(), -1)
        token_lp = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[sup[1:]]
        assert scores[sample.uuid].s_tokens == int(sup.sum())
        assert math.isclose(scores[sample.uuid].s_total, token_lp.sum().item(), rel_tol=1e-4)


def test_selection_artifacts_and_report(pool, tokenizer, tiny_path, teacher_dir, tmp_path):
    from dasd.das.artifacts import publish

    dm = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "scores", num_examples=2), tmp_path / "cache")
    paths, examples = publish(dm.folder, tmp_path / "run" / "das", 0.1)
    for name in ("sentence_types", "teacher_counts", "lengths", "response_probability"):
        assert paths[name].stat().st_size > 1000
    assert {e["uuid"].split("-")[0] for e in examples} == {"q0", "q1"}
    html = paths["examples"].read_text()
    assert "q0-k1" in html and "&lt;think&gt;" in html
    with np.load(dm.folder / "das_details.npz") as z:
        assert int(z["das"].sum()) == int(z["random"].sum()) == 6 and len(z["uuid"]) == 24


def test_records_without_teacher_logprobs_are_refused(tokenizer, tiny_path, teacher_dir, tmp_path, sample_file):
    with pytest.raises(ValueError, match=r"sample_T0.6.jsonl:1: sampler=divergence needs the teacher's token ids"):
        SFTDataModule(str(sample_file), tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s"), cutoff_len=512,
                      cache_dir=str(tmp_path / "c")).setup("fit")


def test_teacher_tokens_that_do_not_decode_to_the_output_are_located_or_skipped(tokenizer, tiny_path, teacher_dir,
                                                                                 tmp_path, pool):
    rows = [json.loads(line) for line in Path(pool).read_text().splitlines()]
    rows[1]["output"] = rows[1]["output"].replace("We read", "We did read")
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad.jsonl:2 \(uuid q0-k1\)"):
        _dm(bad, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s1"), tmp_path / "c1")
    dm = _dm(bad, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s2", on_error="skip"), tmp_path / "c2")
    report = dm.report()["selection"]
    assert report["alignment_skipped"] == 1 and "q0-k1" not in _selected(dm) and len(dm.samples) == 6


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_scoring_selects_what_hf_scoring_selects(pool, tokenizer, tiny_path, teacher_dir, tmp_path):
    """The student side scored through vLLM prompt logprobs gives the same sentence scores (2e-3 per token on
    average) and the same selection as the HF engine."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    hf = _dm(pool, tokenizer, _das(tiny_path, teacher_dir, tmp_path / "s_hf"), tmp_path / "c1")
    vl_selector = DivergenceSelector(scoring_student=tiny_path, teacher_tokenizer=str(teacher_dir),
                                     store_dir=str(tmp_path / "s_vllm"), engine="vllm", batch_size=8,
                                     engine_args={"dtype": "float32", "max_model_len": 1024})
    vl = _dm(pool, tokenizer, vl_selector, tmp_path / "c2")
    assert _selected(vl) == _selected(hf)
    a = {s.uuid: s for s in ScoreStore(next((tmp_path / "s_hf").iterdir()))}
    b = {s.uuid: s for s in ScoreStore(next((tmp_path / "s_vllm").iterdir()))}
    for uuid, sa in a.items():
        np.testing.assert_array_equal(sa.s_num, b[uuid].s_num)
        np.testing.assert_allclose(sa.s_sum, b[uuid].s_sum, atol=2e-3 * max(1, sa.s_num.max()))


def test_released_data_with_harmony_logprobs(tokenizer, tiny_path, tmp_path):
    """The released layout: SFT JSONL + the Logprob Parquet (gpt-oss token ids from the analysis content on,
    harmony control tokens included). With teacher_format=harmony the ids are converted to the think form,
    checked against ``output``, and only content tokens are placed in sentences."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_harmony import _harmony_tokenizer, enc, final_msg

    tok = _harmony_tokenizer()
    tok.save_pretrained(tmp_path / "gpt_oss_like")
    rows, table = [], {"sample_uuid": [], "token_ids": [], "logprobs": []}
    for q in range(4):
        for k in range(2):
            analysis = " ".join(s.format(q=q, s=2 * q) for s in SENTENCES[:2 + k])
            ids = enc(tok, analysis, "<|end|>", *final_msg(f"The answer is \\boxed{{{2 * q}}}."))
            uuid = f"r{q}-{k}"
            rows.append({"uuid": uuid, "input": f"What is {q} + {q}?", "domain": "math", "meta": "{}",
                         "output": f"<think>\n{analysis}\n</think>\n\nThe answer is \\boxed{{{2 * q}}}."})
            table["sample_uuid"].append(uuid)
            table["token_ids"].append(ids)
            table["logprobs"].append([-0.01 * (i % 7) for i in range(len(ids))])
    data = write_jsonl(tmp_path / "released.jsonl", rows)
    pq.write_table(pa.table(table), tmp_path / "logprobs.parquet")
    selector = DivergenceSelector(scoring_student=tiny_path, teacher_tokenizer=str(tmp_path / "gpt_oss_like"),
                                  teacher_format="harmony", store_dir=str(tmp_path / "scores"),
                                  engine_args={"device": "cpu"})
    dm = SFTDataModule(str(data), tokenizer, selector, cutoff_len=512, system_prompt=SYSTEM,
                       cache_dir=str(tmp_path / "cache"), logprobs_path=str(tmp_path / "logprobs.parquet"))
    dm.setup("fit")
    assert sorted(s.uuid for s in dm.samples) == [f"r{q}-1" for q in range(4)]  # the longer analysis wins
    control = {tok.convert_tokens_to_ids(t) for t in ("<|end|>", "<|start|>", "<|channel|>", "<|message|>",
                                                       "<|return|>")}
    for sc in ScoreStore(next((tmp_path / "scores").iterdir())):
        ids, lps = table["token_ids"][table["sample_uuid"].index(sc.uuid)], \
            table["logprobs"][table["sample_uuid"].index(sc.uuid)]
        assert math.isclose(sc.t_total, sum(lps), abs_tol=1e-9) and sc.t_tokens == len(ids)
        header = len(tok.encode("assistant", add_special_tokens=False)) + len(tok.encode("final",
                                                                                        add_special_tokens=False))
        assert sc.t_num.sum() == len(ids) - sum(i in control for i in ids) - header
