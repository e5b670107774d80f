"""The provenance analysis end to end (``python provenance.py``, dasd.recipes.provenance) and its scoring parts
(dasd.das.forced): renderings put every token on the right character, the per-model score stores make a
relabel score nothing, the outputs agree with each other, and bad input stops with an error naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_config import compose_cfg
from test_harmony import _harmony_tokenizer

from dasd.das import align
from dasd.das.forced import (
    HarmonyRendering,
    PlainRendering,
    Response,
    SentenceStore,
    carry_positions,
    score_responses,
)
from dasd.das.provenance import TYPES, provenance_codes
from dasd.das.segment import segment
from dasd.generation.hf import HFEngine
from dasd.models.student import load_tokenizer
from dasd.recipes.provenance import ProvenanceInputError, provenance
from dasd.utils.assets import asset_path

HARMONY_TEMPLATE = ("{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}"
                    "{% if add_generation_prompt %}<|start|>assistant{% endif %}")
RESPONSE = "<think>\nFirst, 3 + 4 = 7.\nThen 7 * 2 = 14.\n</think>\n\nThe answer is \\boxed{14}."


def test_carry_positions_maps_solid_characters_and_the_whitespace_before_them():
    src = "<think>\nA b.\nC d.\n</think>\n\nE f."
    dst = "<think>\n  A b.  C d.</think>E f."
    out = carry_positions(src, dst, np.arange(len(src)))
    for i, j in enumerate(out.tolist()):
        if src[i].strip() and not (i < 7 or 17 <= i < 26):  # a solid character: the same one
            assert dst[j] == src[i]
    assert out[src.index("\nC")] == dst.index("C")  # whitespace before a sentence: its first character
    assert out[src.index("\n</think>")] == -1  # whitespace before a tag: no sentence
    assert (out[:7] == -1).all()  # the tag itself
    with pytest.raises(align.AlignmentError, match="more than whitespace"):
        carry_positions("A b.", "A c.", np.arange(4))


def _check_starts(tok, text: str, forced) -> None:
    """Every token with a start begins (past leading whitespace) with the response's character there; every
    sentence gets a token."""
    for k, tid in enumerate(forced.completion_ids):
        s = int(forced.starts[k])
        piece = tok.decode([tid])
        if s >= 0 and piece.strip():
            assert text[s:].lstrip()[0] == piece.strip()[0], (k, piece, s)
    spans = segment(text)
    agg = align.aggregate(forced.starts, np.zeros(len(forced.starts)), align.owner_of_chars(text, spans), len(spans))
    assert (agg.num_tokens > 0).all()


def test_harmony_rendering_scores_the_response_in_gpt_oss_channels():
    tok = _harmony_tokenizer()
    tok.chat_template = HARMONY_TEMPLATE
    r = HarmonyRendering(tok, system_prompt=None)
    forced = r.render("What is (3 + 4) * 2?", RESPONSE)
    text = tok.decode(forced.completion_ids, skip_special_tokens=False)
    assert text.startswith("<|channel|>analysis<|message|>First") and "<|end|><|start|>assistant<|channel|>final" \
        "<|message|>The answer" in text and text.endswith("<|return|>")
    assert tok.decode(forced.prompt_ids, skip_special_tokens=False).endswith("<|start|>assistant")
    _check_starts(tok, RESPONSE, forced)
    open_think = r.render("q", "<think>\nStill thinking. More.")  # unfinished: analysis only, no terminator
    assert tok.decode(open_think.completion_ids, skip_special_tokens=False).endswith("More.")
    _check_starts(tok, "<think>\nStill thinking. More.", open_think)
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(ValueError, match="must end with '<\\|start\\|>assistant'"):
        r.render("q", RESPONSE)


def test_plain_rendering_is_the_training_template_and_the_response_verbatim():
    tok = load_tokenizer(asset_path("tiny_qwen3"))
    r = PlainRendering(tok, system_prompt="sys")
    forced = r.render("q?", RESPONSE)
    assert forced.completion_ids[-1] == r.templater.end_of_turn_id and forced.starts[-1] == -1
    assert tok.decode(forced.completion_ids[:-1]) == RESPONSE
    assert tok.decode(forced.prompt_ids) == r.templater.prompt_text("q?", RESPONSE)
    _check_starts(tok, RESPONSE, forced)


def test_score_store_resumes_and_matches_a_direct_score(tmp_path):
    tok = load_tokenizer(asset_path("tiny_qwen3"))
    rendering = PlainRendering(tok, system_prompt=None)
    texts = [RESPONSE, "Short. Two sentences here.", "Only one line without a stop"]
    responses = [Response(f"k{i}", "q", t, segment(t)) for i, t in enumerate(texts)]
    built = []

    def factory():
        built.append(1)
        return HFEngine(asset_path("tiny_qwen3"), device="cpu")

    store = SentenceStore(tmp_path / "s", meta={"m": 1})
    first, stats = score_responses(responses[:2], store, rendering, factory, batch_size=1, flush_every=1)
    assert stats["scored"] == 2 and len(store.parts()) == 2
    both, stats = score_responses(responses, store, rendering, factory)
    assert stats == {**stats, "from_store": 2, "scored": 1} and len(built) == 2
    again, stats = score_responses(responses, SentenceStore(tmp_path / "s", meta={}), rendering, factory)
    assert stats["scored"] == 0 and len(built) == 2  # everything from the store: no engine built
    engine = HFEngine(asset_path("tiny_qwen3"), device="cpu")
    f = rendering.render("q", texts[0])
    direct = align.aggregate(f.starts, np.asarray(engine.score(f.prompt_ids, f.completion_ids)),
                             align.owner_of_chars(texts[0], responses[0].spans), len(responses[0].spans))
    np.testing.assert_allclose(again["k0"].sum_logprob, direct.sum_logprob, rtol=1e-5)
    np.testing.assert_array_equal(again["k0"].num_tokens, direct.num_tokens)


# ------------------------------------------------------------------ provenance.py


def _cfg(tmp_path: Path, *overrides: str):
    base = ["logger=none", "task.limit=3", "responses.k=2", "task.max_tokens=40", "batch_size=3",
            f"models.distilled.path={asset_path('tiny_qwen3_base')}", f"store_dir={tmp_path}/scores"]
    return compose_cfg(base + list(overrides), tmp_path, name="provenance")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    cfg = _cfg(tmp)
    return tmp, cfg, provenance(cfg)


def test_provenance_writes_consistent_outputs(first_run):
    tmp, cfg, summary = first_run
    run = Path(cfg.paths.run_dir)
    on_disk = json.loads((run / "provenance_summary.json").read_text())
    assert on_disk["shares"] == summary["shares"] and on_disk["config"]["alpha"] == 0.1
    for group in ("all", "correct", "incorrect"):
        if summary["shares"][group] is not None:
            assert sum(summary["shares"][group].values()) == pytest.approx(1.0)
    assert summary["counts"]["responses"] == 3 * 2  # 3 questions x k=2, sampled here by evaluate.py
    table = {k: np.asarray(v) for k, v in pq.read_table(run / "provenance_sentences.parquet").to_pydict().items()}
    assert len(table["type"]) == summary["counts"]["sentences"]
    labelled = table["type"][table["type"] != "unlabeled"]
    for t in TYPES:  # the shares are the table's
        assert summary["shares"]["all"][t] == pytest.approx((labelled == t).mean())
        assert summary["counts"][t] == (labelled == t).sum()
    codes = provenance_codes(table["p_teacher"], table["p_student"], table["p_distilled"], 0.1, 0.1)
    assert [("unlabeled" if c < 0 else TYPES[c]) for c in codes] == table["type"].tolist()
    for name in ("provenance_overall.png", "provenance_position.png", "examples.html", "manifest.json"):
        assert (run / name).stat().st_size > 0
    assert "p_D=" in (run / "examples.html").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["lineage"]["distilled"]["weights"].startswith("sha256:")
    assert json.loads((run / "eval" / "eval_key.json").read_text())["weights"] == \
        manifest["lineage"]["distilled"]["weights"]


def test_relabel_rescores_and_resamples_nothing(first_run, tmp_path):
    tmp, cfg, summary = first_run
    again = provenance(_cfg(tmp_path, f"responses.eval_dir={Path(cfg.paths.run_dir) / 'eval'}",
                            f"store_dir={tmp}/scores", "alpha=0.02", "beta=0.02"))
    assert all(again["scoring"][role]["scored"] == 0 for role in ("teacher", "student", "distilled"))
    assert again["counts"]["sentences"] == summary["counts"]["sentences"]
    assert again["shares"]["all"]["shared"] < summary["shares"]["all"]["shared"]  # a stricter alpha: fewer Shared
    table = pq.read_table(tmp_path / "run" / "provenance_sentences.parquet").to_pydict()
    codes = provenance_codes(table["p_teacher"], table["p_student"], table["p_distilled"], 0.02, 0.02)
    assert [("unlabeled" if c < 0 else TYPES[c]) for c in codes] == table["type"]


def test_responses_of_another_model_are_refused(first_run, tmp_path):
    tmp, cfg, _ = first_run
    eval_dir = Path(cfg.paths.run_dir) / "eval"
    with pytest.raises(ProvenanceInputError, match=r"results.jsonl: these responses were sampled from .*tiny_qwen3_base.*"
                                                   r"not from the distilled model models.distilled.path=.*tiny_qwen3 "):
        provenance(_cfg(tmp_path, f"responses.eval_dir={eval_dir}",
                        f"models.distilled.path={asset_path('tiny_qwen3')}"))


def _copy_eval(cfg, tmp_path: Path, edit) -> Path:
    eval_dir = tmp_path / "eval"
    shutil.copytree(Path(cfg.paths.run_dir) / "eval", eval_dir)
    rows = [json.loads(x) for x in (eval_dir / "results.jsonl").read_text().splitlines()]
    edit(rows)
    (eval_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return eval_dir


def test_empty_responses_are_named_or_counted(first_run, tmp_path):
    tmp, cfg, summary = first_run
    eval_dir = _copy_eval(cfg, tmp_path, lambda rows: rows[1]["responses"].__setitem__(1, "  \n"))
    with pytest.raises(ProvenanceInputError, match=r"results.jsonl, line 2 \(question .*\), sample 1: the response "
                                                   "has no sentence"):
        provenance(_cfg(tmp_path, f"responses.eval_dir={eval_dir}"))
    skipped = provenance(_cfg(tmp_path, f"responses.eval_dir={eval_dir}", "on_empty=skip"))
    assert skipped["counts"]["skipped_empty"] == 1 and skipped["counts"]["responses"] == 5


def test_responses_without_text_are_refused(first_run, tmp_path):
    tmp, cfg, _ = first_run
    eval_dir = _copy_eval(cfg, tmp_path, lambda rows: rows[0].pop("responses"))
    with pytest.raises(ProvenanceInputError, match="line 1 .*save_responses=true"):
        provenance(_cfg(tmp_path, f"responses.eval_dir={eval_dir}"))


def test_a_teacher_behind_an_openai_server_scores_through_prompt_logprobs(first_run, tmp_path):
    """engine=openai: the teacher is a served name; its tokenizer comes from engine_args.tokenizer and its
    scores from the server's prompt_logprobs (the stand-in server gives every token -1.0: p_T = e^-1)."""
    from fake_openai import FakeOpenAI

    tmp, cfg, _ = first_run
    with FakeOpenAI([1], "x") as server:
        out = provenance(_cfg(tmp_path, f"responses.eval_dir={Path(cfg.paths.run_dir) / 'eval'}",
                              "models.teacher.path=served-teacher", "models.teacher.engine=openai",
                              f"models.teacher.engine_args={{base_url: '{server.url}', tokenizer: "
                              f"'{asset_path('tiny_teacher')}', api_key_env: null}}"))
    assert out["models"]["teacher"]["weights"] == "served:served-teacher"
    assert out["scoring"]["teacher"]["scored"] == out["counts"]["responses"] == len(server.bodies)
    table = pq.read_table(tmp_path / "run" / "provenance_sentences.parquet").to_pydict()
    pt = np.asarray(table["p_teacher"], dtype=float)
    assert np.allclose(pt[~np.isnan(pt)], np.exp(-1.0)) and (~np.isnan(pt)).sum() > 0


def test_a_model_that_does_not_load_is_named(first_run, tmp_path):
    tmp, cfg, _ = first_run
    broken = tmp_path / "broken_teacher"
    shutil.copytree(asset_path("tiny_teacher"), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ProvenanceInputError, match=r"models.teacher.path=.*broken_teacher: the hf engine cannot "
                                                   "load it"):
        provenance(_cfg(tmp_path, f"responses.eval_dir={Path(cfg.paths.run_dir) / 'eval'}",
                        f"models.teacher.path={broken}"))
    (broken / "tokenizer.json").write_text("{")
    with pytest.raises(ProvenanceInputError, match=r"models.teacher.path=.*broken_teacher: its tokenizer does not "
                                                   "load"):
        provenance(_cfg(tmp_path, f"responses.eval_dir={Path(cfg.paths.run_dir) / 'eval'}",
                        f"models.teacher.path={broken}"))


@pytest.mark.cli
def test_provenance_cli_after_train_analyses_the_default_stage1_model(tmp_path):
    """`python train.py` then `python provenance.py` (only the task made small): D is the stage-1 model, T the
    built-in teacher, S the built-in pre-trained student; the outputs and an offline W&B run are written."""
    import os
    import subprocess
    import sys

    from cli import REPO, run_train

    run_train(tmp_path, "train.epochs=1")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "provenance.py"), f"paths.root_dir={tmp_path}", "task.limit=2",
                           "responses.k=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "outputs" / "default" / "provenance" / "sample"
    summary = json.loads((run / "provenance_summary.json").read_text())
    assert summary["models"]["distilled"]["path"] == str(tmp_path / "outputs/default/stage1/checkpoints/hf/final")
    assert Path(summary["models"]["teacher"]["path"]).name == "tiny_teacher"
    assert Path(summary["models"]["student"]["path"]).name == "tiny_qwen3_base"
    assert summary["counts"]["responses"] == 4 and sum(summary["shares"]["all"].values()) == pytest.approx(1)
    from wandb_offline import read_history, run_files

    logged = {k for row in read_history(run_files(run)[-1]) for k in row}
    assert {"provenance/share/all/boosted", "provenance/count/responses", "provenance/examples/nrows",
            "provenance/overall/path", "provenance/position/path"} <= logged  # W&B flattens media into sub-keys
    # Δ is logged only where both curves exist (a tiny model with no correct answer has none)
    assert ("provenance/delta/teacher" in logged) == (summary["delta"]["teacher"] is not None)
    bad = subprocess.run([sys.executable, str(REPO / "provenance.py"), f"paths.root_dir={tmp_path}", "alpha=-1",
                          "from_stage=stage9"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "alpha" in bad.stderr and "stage9" in bad.stderr  # both named, nothing run
