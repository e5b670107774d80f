"""Chat templating and the loss mask (spec §4.2).

A sample is rendered with the student's own chat template up to the assistant header (system prompt +
question), then the teacher response is appended **verbatim** followed by the end-of-turn token and, with
``supervise_eot_newline`` (the default), a newline. Only the response and these end tokens are supervised:
``{output}<|im_end|>\n`` for Qwen, what the authors' LLaMA-Factory ``qwen``/``qwen3`` templates supervise
(``format_assistant = "{{content}}<|im_end|>\n"``, ``efficient_eos=False``: the whole assistant slot is the
label). The response never passes through the template, so no template can strip, split or re-wrap
``<think>`` (lessons §4.5).

Mixed-policy samples (spec §7) carry ``meta.student_prefix_chars`` = b: ``output[:b]`` was written by the
student, ``output[b:]`` by the teacher. They are tokenized as ``encode(output[:b]) + encode(output[b:])`` so
the boundary is a token boundary, and with ``mask_student_prefix`` the student part is context only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from dasd.data.records import Record

IGNORE_INDEX = -100
STUDENT_PREFIX_KEY = "student_prefix_chars"
_PROBE = "\u2063DASD-PROBE\u2063"


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids of one templated sample and its loss mask (True = supervised)."""

    input_ids: list[int]
    supervised: list[bool]
    uuid: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(self.supervised)


class ChatTemplater:
    """Render records with a tokenizer's chat template; response appended verbatim.

    Args:
        tokenizer: the student's tokenizer (its ``chat_template`` renders the prompt).
        system_prompt: inserted as the system message of every sample ("" or None: no system message).
        end_of_turn: the token closing the assistant turn; "auto" reads it off the chat template.
        mask_student_prefix: mixed-policy samples train only on the teacher continuation (spec §7.9 "mask").
        supervise_eot_newline: append (and supervise) "\n" after the end-of-turn token, as LLaMA-Factory's
            ChatML templates do; False ends the sample at the end-of-turn token.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = "You are a helpful assistant.",
                 end_of_turn: str = "auto", mask_student_prefix: bool = False,
                 supervise_eot_newline: bool = True) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat_template")
        self.tokenizer = tokenizer
        self.mask_student_prefix = mask_student_prefix
        self.system_prompt = system_prompt
        self.end_of_turn = self._detect_end_of_turn() if end_of_turn == "auto" else end_of_turn
        ids = tokenizer.encode(self.end_of_turn, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"end-of-turn {self.end_of_turn!r} is {len(ids)} tokens; expected one token")
        self.end_of_turn_id = ids[0]
        self.supervise_eot_newline = supervise_eot_newline
        newline = tokenizer.encode("\n", add_special_tokens=False) if supervise_eot_newline else []
        self.end_ids: list[int] = [self.end_of_turn_id, *newline]  # supervised after every response

    def _messages(self, question: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": question}]

    def _detect_end_of_turn(self) -> str:
        """The first special token the template writes after an assistant message's content."""
        msgs = self._messages("q") + [{"role": "assistant", "content": _PROBE}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        after = text[text.rindex(_PROBE) + len(_PROBE):]
        specials = sorted(self.tokenizer.all_special_tokens, key=len, reverse=True)
        for i in range(len(after)):
            for tok in specials:
                if after.startswith(tok, i):
                    return tok
        if self.tokenizer.eos_token is None:
            raise ValueError("cannot find the end-of-turn token in the chat template; set data.end_of_turn")
        return self.tokenizer.eos_token

    def prompt_text(self, question: str, response: str = "") -> str:
        """The templated prompt up to the assistant turn.

        Some templates (e.g. Qwen3 thinking models) open the think block in the generation prompt. If the
        response starts with what the prompt ends with, that overlap moves to the response, so the response
        (and its ``<think>``) is trained verbatim exactly once.
        """
        msgs = self._messages(question)
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        base = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        generation = text[len(base):] if text.startswith(base) else ""
        for start in range(len(generation)):  # longest line-starting suffix the response begins with
            tail = generation[start:]
            if generation[start - 1:start] == "\n" and response.startswith(tail):
                return text[: len(text) - len(tail)]
        return text

    def response_lead(self, question: str) -> str:
        """What the generation prompt already opens of the response (``"<think>\n"`` for Qwen3 thinking
        templates, else ""): a model continuing this prompt writes the response without it."""
        msgs = self._messages(question)
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        base = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        generation = text[len(base):] if text.startswith(base) else ""
        for start in range(1, len(generation)):
            if generation[start - 1] == "\n" and generation[start:].startswith("<think>"):
                return generation[start:]
        return ""

    def generation_prompt_ids(self, question: str) -> tuple[list[int], str]:
        """Token ids a model continues to write a response as training sees it, and the response's lead:
        the training prompt (``prompt_text`` for a response starting with the lead) + the lead's ids."""
        lead = self.response_lead(question)
        ids = self.tokenizer.encode(self.prompt_text(question, lead), add_special_tokens=False)
        return ids + (self.tokenizer.encode(lead, add_special_tokens=False) if lead else []), lead

    def render(self, record: Record) -> TokenizedSample:
        """Tokenize one record: prompt (not supervised) + response + end tokens (supervised)."""
        prompt = self.prompt_text(record.input, record.output)
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        boundary = student_prefix_chars(record)
        if boundary is None:
            response_ids = self.tokenizer.encode(record.output, add_special_tokens=False)
            supervised = [True] * (len(response_ids) + len(self.end_ids))
        else:
            student = self.tokenizer.encode(record.output[:boundary], add_special_tokens=False)
            teacher = self.tokenizer.encode(record.output[boundary:], add_special_tokens=False)
            response_ids = student + teacher
            supervised = [not self.mask_student_prefix] * len(student) + [True] * (len(teacher) + len(self.end_ids))
        return TokenizedSample(input_ids=prompt_ids + response_ids + self.end_ids,
                               supervised=[False] * len(prompt_ids) + supervised, uuid=record.uuid)


def student_prefix_chars(record: Record) -> int | None:
    """The student/teacher character boundary of a mixed-policy record (``meta.student_prefix_chars``), else None."""
    if STUDENT_PREFIX_KEY not in record.meta:
        return None
    try:
        meta = json.loads(record.meta)
    except json.JSONDecodeError:
        return None
    b = meta.get(STUDENT_PREFIX_KEY) if isinstance(meta, dict) else None
    if b is None:
        return None
    if not isinstance(b, int) or not 0 < b < len(record.output):
        raise ValueError(f"{record.source or record.uuid}: field 'meta.{STUDENT_PREFIX_KEY}': {b!r} must be an "
                         f"integer in (0, {len(record.output)})")
    return b
