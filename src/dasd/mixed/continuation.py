"""The teacher continues a student prefix (spec §7.5–7.6), in token space.

The prefix is never sent back through a chat template (templates re-wrap or strip ``<think>``): the
teacher's prompt is rendered for the question alone, and the prefix is appended as token ids.

* plain: prompt + the prefix. If the generation prompt already opens the response (a thinking template
  ending with ``"<think>\\n"``), that overlap is taken off the prefix so ``<think>`` is written once.
* harmony (gpt-oss): the prompt ends with ``<|start|>assistant``; the prefix's reasoning goes into a
  pre-filled analysis message, ``<|channel|>analysis<|message|>{reasoning}``. If the prefix already closed
  the think block, the analysis message is closed and its answer part opens the final channel:
  ``…{reasoning.strip()}<|end|><|start|>assistant<|channel|>final<|message|>{answer}``.

Assembly keeps the prefix verbatim: ``output = prefix_text + continuation``, the continuation in trained
form (``<think>\\n{reasoning}\\n</think>\\n\\n{answer}``), and ``output[:boundary]`` is the student's.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from dasd.generation.engine import Request, Sample, render_prompt
from dasd.generation.pipeline import TeacherFormat
from dasd.text.harmony import HARMONY_TOKENS, encode_parts, parse_harmony, token_items
from dasd.text.think import THINK_CLOSE_TAG, THINK_PREFIX, THINK_SEPARATOR

GENERATION_END = "<|start|>assistant"  # how a harmony generation prompt ends


@dataclass(frozen=True)
class ContinuationPrompt:
    """The teacher's prompt ids for continuing a prefix, and where the teacher resumes."""

    token_ids: list[int]  # the teacher's rendered prompt + the prefix re-encoded in the teacher tokenizer
    channel: str  # "analysis" | "final" (harmony: the channel the teacher resumes in); "text" for plain
    prefix_text: str  # the student prefix, verbatim (what the assembled output starts with)


@dataclass(frozen=True)
class Assembled:
    """A mixed-policy response: the student prefix + the teacher continuation in trained form."""

    output: str
    boundary: int  # len(prefix_text): output[:boundary] is the student's, output[boundary:] the teacher's
    finished: bool  # the continuation ended on its own with a non-empty answer (harmony) / stopped (plain)
    has_final: bool  # "</think>" followed by a non-empty answer
    has_tool_call: bool  # harmony: a recipient or <|call|> in the continuation
    continuation_text: str  # output[boundary:]


def _messages(question: str, fmt: TeacherFormat) -> list[dict]:
    system = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    return system + [{"role": "user", "content": question}]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], fmt: TeacherFormat,
            generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                         **fmt.chat_template_kwargs)


def prompt_overlap(prompt: str, base: str, prefix: str) -> str:
    """The longest line-starting suffix of the generation part (``prompt`` past ``base``) that ``prefix``
    starts with ("" if none): what the generation prompt already wrote of the response."""
    if not prompt.startswith(base):
        return ""
    for start in range(len(base), len(prompt)):
        tail = prompt[start:]
        if start > 0 and prompt[start - 1] == "\n" and prefix.startswith(tail):
            return tail
    return ""


def continuation_prompt(tokenizer: PreTrainedTokenizerBase, question: str, prefix_text: str,
                        fmt: TeacherFormat) -> ContinuationPrompt:
    """The teacher's prompt for ``question`` with the student's ``prefix_text`` appended in token space."""
    messages = _messages(question, fmt)
    request = Request(messages=tuple(messages), chat_template_kwargs=fmt.chat_template_kwargs)
    prompt_ids = render_prompt(tokenizer, request)
    if fmt.kind == "plain":
        rendered, base = (_render(tokenizer, messages, fmt, g) for g in (True, False))
        overlap = prompt_overlap(rendered, base, prefix_text)
        rest = prefix_text[len(overlap):]
        ids = prompt_ids + (tokenizer.encode(rest, add_special_tokens=False) if rest else [])
        return ContinuationPrompt(token_ids=ids, channel="text", prefix_text=prefix_text)
    if fmt.kind != "harmony":
        raise ValueError(f"teacher.format must be plain or harmony, got {fmt.kind!r}")
    rendered = _render(tokenizer, messages, fmt, True)
    if not rendered.endswith(GENERATION_END):
        raise ValueError(f"a harmony generation prompt must end with {GENERATION_END!r}, "
                         f"got ...{rendered[-40:]!r}")
    if not prefix_text.startswith(THINK_PREFIX):
        raise ValueError(f"a harmony continuation needs a prefix starting with {THINK_PREFIX!r}, "
                         f"got {prefix_text[:40]!r}")
    body = prefix_text[len(THINK_PREFIX):]
    start, end, message, channel = HARMONY_TOKENS[:4]
    if THINK_CLOSE_TAG not in body:
        parts, resume = [channel, "analysis", message, body], "analysis"
    else:
        analysis, _, answer = body.partition(THINK_CLOSE_TAG)
        parts = [channel, "analysis", message, analysis.strip(), end,
                 start, "assistant", channel, "final", message, answer.lstrip("\n")]
        resume = "final"
    return ContinuationPrompt(token_ids=prompt_ids + encode_parts(tokenizer, parts), channel=resume,
                              prefix_text=prefix_text)


def _has_final(output: str) -> bool:
    return THINK_CLOSE_TAG in output and bool(output.rpartition(THINK_CLOSE_TAG)[2].strip())


def _split_prefilled(token_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[int]]:
    """The text of the tokens before the first harmony control token (the rest of the pre-filled message),
    and the token ids from that control token on."""
    buf = bytearray()
    for control, data, k in token_items(token_ids, tokenizer):
        if control in HARMONY_TOKENS:
            return buf.decode("utf-8", "replace"), list(token_ids[k:])
        buf += data
    return buf.decode("utf-8", "replace"), []


def assemble(prompt: ContinuationPrompt, continuation: Sample, tokenizer: PreTrainedTokenizerBase,
             fmt: TeacherFormat) -> Assembled:
    """The student prefix + the teacher's continuation, converted to the trained ``<think>`` form."""
    prefix = prompt.prefix_text
    if fmt.kind == "plain":
        output = prefix + continuation.text
        finished, has_tool_call, has_final = continuation.finish_reason == "stop", False, _has_final(output)
    elif fmt.kind == "harmony":
        raw_rest, later = _split_prefilled(list(continuation.token_ids), tokenizer)
        h = parse_harmony(later, tokenizer)
        has_tool_call = h.has_tool_call
        if prompt.channel == "analysis":
            reasoning = raw_rest.rstrip() + ("\n" + h.analysis if h.analysis else "")
            has_final = h.has_final
            output = prefix + reasoning + (THINK_SEPARATOR + h.final if has_final else "")
        elif prompt.channel == "final":
            output = prefix + raw_rest.rstrip()
            has_final = _has_final(output)
        else:
            raise ValueError(f"a harmony continuation resumes in analysis or final, not {prompt.channel!r}")
        finished = continuation.finish_reason == "stop" and has_final
    else:
        raise ValueError(f"teacher.format must be plain or harmony, got {fmt.kind!r}")
    assert output.startswith(prefix), "the assembled output must start with the student prefix verbatim"
    boundary = len(prefix)
    return Assembled(output=output, boundary=boundary, finished=finished, has_final=has_final,
                     has_tool_call=has_tool_call, continuation_text=output[boundary:])
