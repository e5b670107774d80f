"""The HF engine: sampled-token logprobs, their semantics (raw vs processed), seeding, and chunked scoring."""

from __future__ import annotations

import pytest
import torch

from dasd.generation.engine import Request, SamplingConfig
from dasd.generation.hf import HFEngine

QUESTION = Request(messages=({"role": "user", "content": "What is 12 + 30?"},))


@pytest.fixture(scope="module")
def engine(tiny_path):
    return HFEngine(tiny_path, device="cpu", dtype="float32", score_chunk_size=5)


def _full_logits(engine, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        return engine.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()


def test_generate_shapes_and_length_finish(engine):
    """n samples per request in request order, one logprob per token; a sample ends either at max_tokens
    ("length") or with the end-of-turn token, which it keeps ("stop")."""
    out = engine.generate([QUESTION, QUESTION], SamplingConfig(n=3, temperature=1.0, max_tokens=12, seed=3))
    assert [len(samples) for samples in out] == [3, 3]
    for s in out[0] + out[1]:
        assert len(s.token_ids) == len(s.logprobs) <= 12
        if s.finish_reason == "length":
            assert len(s.token_ids) == 12 and engine.tokenizer.eos_token_id not in s.token_ids
        else:
            assert s.token_ids[-1] == engine.tokenizer.eos_token_id and s.token_ids.count(s.token_ids[-1]) == 1
        assert s.logprob_mode == "raw" and all(lp <= 0 for lp in s.logprobs)
        assert s.text == engine.tokenizer.decode(s.token_ids, skip_special_tokens=True)


def test_raw_logprobs_are_untempered_and_match_scoring(engine):
    """Raw-mode logprobs of a T=0.6 sample equal teacher-forced scores of the same tokens (the untempered model)."""
    s = engine.generate([QUESTION], SamplingConfig(temperature=0.6, max_tokens=16, seed=0))[0][0]
    assert engine.score(s.prompt_token_ids, s.token_ids) == pytest.approx(s.logprobs, abs=1e-4)
    raw = torch.log_softmax(_full_logits(engine, s.prompt_token_ids, s.token_ids), -1)
    assert raw.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1).tolist() == pytest.approx(s.logprobs, abs=1e-4)


def test_processed_logprobs_follow_the_temperature(engine):
    """Processed-mode logprobs are those of the tempered distribution log_softmax(logits / T)."""
    s = engine.generate([QUESTION], SamplingConfig(temperature=0.5, max_tokens=16, seed=0, logprob_mode="processed"))[0][0]
    tempered = torch.log_softmax(_full_logits(engine, s.prompt_token_ids, s.token_ids) / 0.5, -1)
    expected = tempered.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1).tolist()
    assert s.logprob_mode == "processed" and s.logprobs == pytest.approx(expected, abs=1e-4)


def test_seeded_sampling(engine):
    """The same seed reproduces the samples; another seed, or another request index, gives other samples."""
    cfg = SamplingConfig(n=2, temperature=1.0, max_tokens=10, seed=7)
    a, b = engine.generate([QUESTION, QUESTION], cfg), engine.generate([QUESTION], cfg)
    assert a[0][0].token_ids == b[0][0].token_ids
    assert a[0][0].token_ids != a[1][0].token_ids  # request i uses seed + i
    other = engine.generate([QUESTION], SamplingConfig(n=2, temperature=1.0, max_tokens=10, seed=8))
    assert other[0][0].token_ids != a[0][0].token_ids


def test_greedy_is_deterministic_argmax(engine):
    """temperature=0 picks the argmax at every step."""
    s = engine.generate([QUESTION], SamplingConfig(temperature=0, max_tokens=8))[0][0]
    assert s.token_ids == _full_logits(engine, s.prompt_token_ids, s.token_ids).argmax(-1).tolist()


def test_stop_string_ends_the_sample(engine):
    """A stop string ends generation with finish_reason "stop"; the tokens before it are unchanged."""
    cfg = SamplingConfig(temperature=1.0, max_tokens=24, seed=5)
    full = engine.generate([QUESTION], cfg)[0][0]
    stop = full.text[8:11]
    cut = engine.generate([QUESTION], SamplingConfig(temperature=1.0, max_tokens=24, seed=5, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and stop in cut.text and len(cut.token_ids) < len(full.token_ids)
    assert full.token_ids[:len(cut.token_ids)] == cut.token_ids


def test_token_prefix_continuation(engine):
    """A request given as token ids (prompt + a prefix) continues the prefix: its scores equal scoring the
    whole completion from the prompt."""
    first = engine.generate([QUESTION], SamplingConfig(temperature=1.0, max_tokens=6, seed=1))[0][0]
    prompt, prefix = first.prompt_token_ids, first.token_ids
    cont = engine.generate([Request(prompt_token_ids=tuple(prompt + prefix))],
                           SamplingConfig(temperature=1.0, max_tokens=6, seed=2))[0][0]
    assert cont.prompt_token_ids == prompt + prefix
    whole = engine.score(prompt, prefix + cont.token_ids)
    assert whole[len(prefix):] == pytest.approx(cont.logprobs, abs=1e-4)


def test_chunked_scoring_is_exact_and_bounded(engine):
    """Scoring in chunks equals the full log-softmax, and never computes more than chunk-size rows of logits."""
    prompt = engine.tokenizer.encode("<|im_start|>user\nadd 3 and 4<|im_end|>\n<|im_start|>assistant\n")
    completion = engine.tokenizer.encode("<think>\n3 + 4 = 7.\n</think>\n\nThe answer is \\boxed{7}.<|im_end|>")
    naive = torch.log_softmax(_full_logits(engine, prompt, completion), -1)
    expected = naive.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1).tolist()
    rows: list[int] = []
    hook = engine.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[-2]))
    try:
        got = engine.score(prompt, completion)
    finally:
        hook.remove()
    assert got == pytest.approx(expected, abs=1e-4) and len(got) == len(completion)
    assert max(rows) <= engine.score_chunk_size and sum(rows) == len(completion)
    assert engine.score(prompt, []) == []


def test_bad_requests_and_sampling_are_rejected():
    with pytest.raises(ValueError, match="exactly one"):
        Request()
    with pytest.raises(ValueError, match="exactly one"):
        Request(messages=({"role": "user", "content": "x"},), prompt_token_ids=(1, 2))
    with pytest.raises(ValueError, match="logprob_mode"):
        SamplingConfig(logprob_mode="tempered")
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
