"""The HF engine's batched sampler: a sample depends only on (model, prompt, seed, sampling settings), never on
its batch; it samples the distribution the settings describe; budgets, stop strings and end-of-turn tokens end
each row on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from dasd.generation.batched import PAGE, blas_rows_are_independent, min_rows
from dasd.generation.engine import Request, SamplingConfig, render_prompt
from dasd.generation.hf import HFEngine
from dasd.generation.questions import read_questions
from dasd.models.student import asset_path

MODES = ("raw", "processed")


@pytest.fixture(scope="module")
def teacher():
    return HFEngine(str(asset_path("tiny_teacher")), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def requests_64():
    """64 chat requests of different lengths (the sample data's questions), each with its own seed."""
    questions, _ = read_questions(str(Path(asset_path("sample_data")) / "sample_T0.6.jsonl"))
    return [Request(messages=({"role": "user", "content": q.input},), seed=1000 + i) for i, q in enumerate(questions[:64])]


@pytest.fixture(scope="module")
def budgeted(requests_64):
    """The same requests with budgets of 8 to 32 tokens: rows leave the batch at different steps."""
    return [Request(messages=r.messages, seed=r.seed, max_tokens=8 + (7 * i) % 25) for i, r in enumerate(requests_64)]


def _same(a, b) -> bool:
    return a.token_ids == b.token_ids and a.logprobs == b.logprobs and a.finish_reason == b.finish_reason


@pytest.mark.parametrize("mode", MODES)
def test_a_sample_does_not_depend_on_its_batch(teacher, budgeted, mode):
    """The same request alone, in a batch of 7 and in a batch of 64 (decoded 64 at once, or 16 at once so
    that rows join and leave mid-flight) gives identical tokens and logprobs, bit for bit (CPU, float32)."""
    cfg = SamplingConfig(temperature=1.0, top_p=0.95, top_k=50, logprob_mode=mode)
    assert len({len(render_prompt(teacher.tokenizer, r)) for r in budgeted}) > 8  # lengths differ
    big = teacher.generate(budgeted, cfg)
    teacher.batch_size = 16
    try:
        rolling = teacher.generate(budgeted, cfg)
    finally:
        teacher.batch_size = None
    seven = teacher.generate(budgeted[20:27], cfg)
    for k in (0, 23, 63):
        alone = teacher.generate([budgeted[k]], cfg)[0][0]
        assert _same(alone, big[k][0]) and _same(alone, rolling[k][0])
    assert all(_same(s[0], b[0]) for s, b in zip(seven, big[20:27], strict=True))
    assert all(_same(r[0], b[0]) for r, b in zip(rolling, big, strict=True))
    assert len({len(s[0].token_ids) for s in big}) > 10  # rows left the batch at different steps


def test_n_samples_have_their_own_streams(teacher, requests_64):
    """Sample j of a request with n=4 is the same whether asked alone or beside other requests, and the n
    samples differ from each other (each has its own generator)."""
    cfg = SamplingConfig(n=4, temperature=1.0, max_tokens=24)
    together = teacher.generate(requests_64[:9], cfg)
    alone = teacher.generate([requests_64[5]], cfg)[0]
    assert all(_same(a, b) for a, b in zip(alone, together[5], strict=True))
    assert len({tuple(s.token_ids) for s in alone}) == 4
    n1 = teacher.generate([requests_64[5]], SamplingConfig(n=1, temperature=1.0, max_tokens=24))[0][0]
    assert _same(n1, alone[0])  # sample 0 of n is the n=1 sample


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_matches_transformers_generate(teacher, requests_64, penalty):
    """Greedy decoding (with and without a repetition penalty over prompt and response) picks the same tokens as
    ``model.generate`` one request at a time, with the same raw logprobs up to float rounding (row-wise matmul
    attention vs sdpa)."""
    cfg = SamplingConfig(temperature=0, max_tokens=32, repetition_penalty=penalty)
    ours = teacher.generate(requests_64[:6], cfg)
    reference = AutoModelForCausalLM.from_pretrained(str(asset_path("tiny_teacher")), dtype=torch.float32).eval()
    for r, (s,) in zip(requests_64[:6], ours, strict=True):
        prompt = render_prompt(teacher.tokenizer, r)
        with torch.inference_mode():
            out = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                     repetition_penalty=penalty,
                                     eos_token_id=sorted(teacher._stop_ids), pad_token_id=0,
                                     return_dict_in_generate=True, output_logits=True)
        ids = out.sequences[0, len(prompt):].tolist()
        assert s.token_ids == ids[:len(s.token_ids)] and len(s.token_ids) == len(ids)
        lps = torch.stack([torch.log_softmax(x[0].float(), -1)[t] for x, t in zip(out.logits, ids, strict=False)])
        assert s.logprobs == pytest.approx(lps.tolist(), abs=1e-4)


def test_samples_follow_the_processed_distribution(teacher, requests_64):
    """First tokens of 3,000 samples at T=0.7, top_k=5: only the 5 most likely tokens occur, with the
    frequencies of softmax(logits / 0.7) renormalised over them (total variation < 0.04), and each sample's
    processed logprob is that distribution's."""
    cfg = SamplingConfig(n=3000, temperature=0.7, top_k=5, max_tokens=1, logprob_mode="processed", seed=3)
    samples = teacher.generate([requests_64[0]], cfg)[0]
    prompt = samples[0].prompt_token_ids
    with torch.inference_mode():
        logits = teacher.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    top = torch.topk(logits, 5)
    p = torch.softmax(top.values / 0.7, -1)
    expected = dict(zip(top.indices.tolist(), p.tolist(), strict=True))
    counts: dict[int, int] = {}
    for s in samples:
        counts[s.token_ids[0]] = counts.get(s.token_ids[0], 0) + 1
        assert s.logprobs[0] == pytest.approx(torch.log(torch.tensor(expected[s.token_ids[0]])).item(), abs=1e-4)
    assert set(counts) <= set(expected)
    tv = 0.5 * sum(abs(counts.get(t, 0) / len(samples) - q) for t, q in expected.items())
    assert tv < 0.04, (counts, expected)


def test_budgets_stop_strings_and_end_of_turn_end_each_row(teacher, requests_64):
    """Per-request max_tokens, a stop string and the end-of-turn token end rows independently; the rows
    before and after are unaffected."""
    cfg = SamplingConfig(temperature=1.0, max_tokens=30)
    full = teacher.generate(requests_64[:4], cfg)
    budgets = [Request(messages=r.messages, seed=r.seed, max_tokens=m) for r, m in zip(requests_64[:4], (3, 30, 1, 11),
                                                                                      strict=True)]
    cut = teacher.generate(budgets, cfg)
    for (f,), (c,), m in zip(full, cut, (3, 30, 1, 11), strict=True):
        assert c.token_ids == f.token_ids[:m] and len(c.token_ids) == min(m, len(f.token_ids))
        assert c.finish_reason == ("length" if len(f.token_ids) > m or f.finish_reason == "length" else "stop")
    stop = full[1][0].text[6:9]
    stopped = teacher.generate(requests_64[:4], SamplingConfig(temperature=1.0, max_tokens=30, stop=(stop,)))
    s = stopped[1][0]
    assert s.finish_reason == "stop" and s.text.count(stop) >= 1 and stop not in teacher.tokenizer.decode(
        s.token_ids[:-1], skip_special_tokens=True)
    assert full[1][0].token_ids[:len(s.token_ids)] == s.token_ids
    for k in (0, 2, 3):  # other rows only stop where the string occurs in their own text
        assert stopped[k][0].token_ids == full[k][0].token_ids[:len(stopped[k][0].token_ids)]


def test_seeds_reproduce_and_differ(teacher, requests_64):
    """The same seed reproduces a sample in another call; another seed gives another; seed=None is random."""
    cfg = SamplingConfig(temperature=1.0, max_tokens=16)
    a = teacher.generate(requests_64[:2], cfg)
    assert _same(teacher.generate(requests_64[:2], cfg)[1][0], a[1][0])
    other = Request(messages=requests_64[1].messages, seed=requests_64[1].seed + 1)
    assert teacher.generate([other], cfg)[0][0].token_ids != a[1][0].token_ids
    unseeded = SamplingConfig(n=4, temperature=2.0, max_tokens=16, seed=None)
    plain = Request(messages=requests_64[1].messages)
    draws = [tuple(s.token_ids) for _ in range(2) for s in teacher.generate([plain], unseeded)[0]]
    assert len(set(draws)) > 1


def test_long_rows_cross_attention_pages(tmp_path):
    """Rows longer than one attention page (PAGE positions) stay batch-independent and greedy-equal to
    ``model.generate`` (a random 2-layer Qwen3 whose samples run to the budget)."""
    cfg = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2 * PAGE + 64,
                      eos_token_id=95, bos_token_id=94, pad_token_id=0)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "m")
    engine = _engine_with_tokenizer(tmp_path / "m")
    engine._stop_ids = set()  # a random model: rows end at their budget only
    prompts = [Request(prompt_token_ids=tuple(range(1, 1 + n)), seed=n) for n in (3, 40, 17, 9, 70, 5, 33, 12, 21)]
    sampled = SamplingConfig(temperature=1.0, max_tokens=PAGE + 40)
    batch = engine.generate(prompts, sampled)
    assert max(len(p.prompt_token_ids) + len(s[0].token_ids) for p, s in zip(prompts, batch, strict=True)) > PAGE
    assert _same(engine.generate([prompts[4]], sampled)[0][0], batch[4][0])
    greedy = engine.generate(prompts[4:5], SamplingConfig(temperature=0, max_tokens=PAGE + 40))[0][0]
    with torch.inference_mode():
        ref = engine.model.generate(torch.tensor([list(prompts[4].prompt_token_ids)]), max_new_tokens=PAGE + 40,
                                    do_sample=False, eos_token_id=95, pad_token_id=0)[0, 70:].tolist()
    assert len(greedy.token_ids) == PAGE + 40 and greedy.token_ids[:len(ref)] == ref


def _engine_with_tokenizer(model_dir: Path) -> HFEngine:
    """An HFEngine on a random model: the built-in student's tokenizer files next to its weights (only ids are
    used)."""
    import shutil

    src = Path(asset_path("tiny_qwen3"))
    for f in src.iterdir():
        if "token" in f.name or f.name.endswith(".jinja"):
            shutil.copy(f, model_dir / f.name)
    return HFEngine(str(model_dir), device="cpu", dtype="float32")


def test_bad_batch_size_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(str(asset_path("tiny_teacher")), device="cpu", batch_size=0)


@pytest.mark.parametrize("hidden", [64, 192])
def test_min_rows_is_enough_for_row_invariant_matmuls(hidden):
    """The premise of min_rows(): on this machine's BLAS, a row of a float32 matmul with at least min_rows()
    rows does not depend on the other rows (with fewer, kernels change: the floor is not wasted)."""
    assert blas_rows_are_independent(hidden, torch.get_num_threads())
    torch.manual_seed(0)
    w, x = torch.randn(3 * hidden, hidden), torch.randn(64, hidden)
    full = torch.nn.functional.linear(x, w)
    assert not all(torch.equal(torch.nn.functional.linear(x[:m], w), full[:m]) for m in range(1, min_rows()))
