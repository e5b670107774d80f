"""Chat templating and the loss mask: the response is supervised verbatim, the prompt never is; the end tokens
are "<|im_end|>\n" (the authors' LLaMA-Factory qwen template) or "<|im_end|>" (supervise_eot_newline=false)."""

from __future__ import annotations

import copy

import pytest
from conftest import make_record

from dasd.data.records import Record
from dasd.data.template import ChatTemplater

SYSTEM = "You are a helpful assistant."
EOT = "<|im_end|>"
END = EOT + "\n"  # the supervised end of every sample by default (data.supervise_eot_newline=true)


def _record(i: int = 3, **fields) -> Record:
    return Record(**make_record(i, **fields))


def _split(sample):
    """(prompt ids, supervised ids), asserting the supervised tokens form one contiguous suffix."""
    k = sample.supervised.index(True)
    assert all(not s for s in sample.supervised[:k]) and all(sample.supervised[k:])
    return sample.input_ids[:k], sample.input_ids[k:]


def _generation_prompt(tok, question: str, system: str | None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


@pytest.fixture(scope="module")
def templater(tokenizer):
    return ChatTemplater(tokenizer, system_prompt=SYSTEM)


@pytest.fixture(scope="module")
def thinking_tokenizer(tokenizer):
    """A copy of the tiny tokenizer whose template opens the think block in the generation prompt (Qwen3)."""
    tok = copy.deepcopy(tokenizer)
    header = "'<|im_start|>assistant\\n'"
    assert header in tok.chat_template
    tok.chat_template = tok.chat_template.replace(header, "'<|im_start|>assistant\\n<think>\\n'")
    assert _generation_prompt(tok, "q", None).endswith("<|im_start|>assistant\n<think>\n")
    return tok


@pytest.mark.parametrize("record", [
    _record(3),
    _record(12345, output="<think>\n  spaces,  unicode ü ∑ 😀\n\n</think>\n\nFinal: \\boxed{x}  "),
    _record(5, output="no think block at all"),
], ids=["default", "unicode_whitespace", "no_think"])
@pytest.mark.parametrize("newline", [True, False], ids=["eot_newline", "eot_only"])
def test_supervised_tokens_are_response_plus_end_of_turn(tokenizer, record, newline):
    """The supervised tokens decode to exactly record.output + "<|im_end|>\n" (supervise_eot_newline, the default)
    or record.output + "<|im_end|>"; the supervised ids are one contiguous suffix (``_split``)."""
    sample = ChatTemplater(tokenizer, system_prompt=SYSTEM, supervise_eot_newline=newline).render(record)
    _, response = _split(sample)
    assert _decode(tokenizer, response) == record.output + (END if newline else EOT)
    assert sample.num_supervised == len(response)
    assert sample.uuid == record.uuid


def test_sample_is_the_authors_llama_factory_rendering(tokenizer, templater):
    """By default a sample is exactly LLaMA-Factory's qwen rendering: the chat template's text of the whole
    conversation, ``...<|im_start|>assistant\n{output}<|im_end|>\n``, with the label on ``{output}<|im_end|>\n``
    (format_assistant = "{{content}}<|im_end|>\n", efficient_eos=False); the newline is one supervised token."""
    record = _record(7)
    sample = templater.render(record)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": record.input},
            {"role": "assistant", "content": record.output}]
    assert _decode(tokenizer, sample.input_ids) == tokenizer.apply_chat_template(msgs, tokenize=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert templater.end_ids == [templater.end_of_turn_id, *newline] and len(newline) == 1
    assert sample.input_ids[-2:] == templater.end_ids and sample.supervised[-2:] == [True, True]
    plain = ChatTemplater(tokenizer, system_prompt=SYSTEM, supervise_eot_newline=False).render(record)
    assert plain.input_ids == sample.input_ids[:-1] and plain.supervised == sample.supervised[:-1]


def test_prompt_is_the_generation_prompt(tokenizer, templater):
    """The unsupervised prefix decodes to exactly the template's generation prompt, system prompt included."""
    record = _record(4)
    prompt, _ = _split(templater.render(record))
    text = _decode(tokenizer, prompt)
    assert text == _generation_prompt(tokenizer, record.input, SYSTEM)
    assert SYSTEM in text and record.input in text
    assert text.endswith("<|im_start|>assistant\n")


def test_think_tags_are_single_supervised_tokens(tokenizer, templater):
    """<think> and </think> each appear in the supervised ids exactly once, as one token each."""
    _, response = _split(templater.render(_record(6)))
    for tag in ("<think>", "</think>"):
        tag_ids = tokenizer.encode(tag, add_special_tokens=False)
        assert len(tag_ids) == 1
        assert response.count(tag_ids[0]) == 1


def test_end_of_turn_is_detected(tokenizer, templater):
    """end_of_turn="auto" reads "<|im_end|>" off the ChatML template; the sample ends with it and the newline."""
    assert templater.end_of_turn == EOT
    assert templater.end_of_turn_id == tokenizer.convert_tokens_to_ids(EOT)
    assert templater.render(_record(1)).input_ids[-2] == templater.end_of_turn_id


@pytest.mark.parametrize("system", [None, ""])
def test_no_system_prompt_renders_no_system_message(tokenizer, system):
    """system_prompt=None (or "") renders the user turn only, with no system message."""
    record = _record(2)
    prompt, response = _split(ChatTemplater(tokenizer, system_prompt=system).render(record))
    text = _decode(tokenizer, prompt)
    assert "system" not in text and SYSTEM not in text
    assert text == _generation_prompt(tokenizer, record.input, None)
    assert text.startswith("<|im_start|>user\n")
    assert _decode(tokenizer, response) == record.output + END


def test_thinking_template_supervises_think_exactly_once(thinking_tokenizer):
    """If the generation prompt ends with "<think>\\n", the full response (with its <think>) is still supervised
    verbatim and <think> appears exactly once in the whole sample."""
    tok = thinking_tokenizer
    record = _record(8)
    assert record.output.startswith("<think>\n")
    sample = ChatTemplater(tok, system_prompt=SYSTEM).render(record)
    prompt, response = _split(sample)
    assert _decode(tok, response) == record.output + END
    prompt_text = _decode(tok, prompt)
    assert not prompt_text.endswith("<think>\n")
    assert SYSTEM in prompt_text and record.input in prompt_text
    assert _decode(tok, sample.input_ids).count("<think>") == 1


def test_missing_chat_template_raises(tokenizer):
    """A tokenizer without a chat template is rejected with ValueError."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        ChatTemplater(tok)
