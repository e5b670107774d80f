"""Convert gpt-oss "harmony" completions to ``<think>`` form, with each teacher token's span in the result.

A completion (what follows the prompt's ``<|start|>assistant``) is a run of messages::

    <|channel|>analysis<|message|>{reasoning}<|end|><|start|>assistant<|channel|>final<|message|>{answer}<|return|>

A header (``<|start|>`` .. ``<|message|>``) names the role, the ``<|channel|>`` (analysis, commentary or
final) and, for a tool call, a recipient: ``<|start|>assistant to=functions.get_weather<|channel|>commentary
json<|message|>{...}<|call|>`` or ``<|channel|>analysis to=python<|message|>...<|call|>``. A completion may
also begin straight with analysis text when the prompt pre-filled ``<|channel|>analysis<|message|>``.

Conversion (spec §4.1): ``"<think>\\n" + analysis.strip() + "\\n</think>\\n\\n" + final.strip()``; analysis
joins the contents of the analysis-channel messages with "\\n", final those of the final channel. Without a
(non-empty) final the output is ``"<think>\\n" + analysis`` and ``has_final`` is False. Messages with a
recipient (tool calls) and commentary messages are kept out of both; a recipient or any ``<|call|>`` sets
``has_tool_call``.

``token_spans[k]`` is the ``[start, end)`` character span in ``output`` of teacher token ``k``: None for
control, header and dropped tokens and for whitespace removed by ``strip()``; clipped to the kept part where a
token straddles a stripped edge. Tokens are decoded to bytes; a token owns each character whose first byte it
holds, so a token carrying only continuation bytes of a character gets an empty span just after it. Spans
are increasing and disjoint, and together with the inserted tags and "\\n" joins they cover ``output``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate

from transformers import PreTrainedTokenizerBase

from dasd.text.think import THINK_PREFIX, THINK_SEPARATOR

HARMONY_TOKENS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
TERMINATORS = ("<|end|>", "<|return|>", "<|call|>")
_OTHER_SPECIAL = "<other special>"  # a special token that is not harmony's: ignored
_SPLIT = re.compile("(" + "|".join(map(re.escape, HARMONY_TOKENS)) + ")")
_CHANNEL = re.compile(r"<\|channel\|>\s*([^\s<]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")

Item = tuple[str | None, bytes, int | None]  # (control token or None for text, text bytes, token index)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to chr(256 + n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], n = chr(256 + n), n + 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


@dataclass
class HarmonyResponse:
    output: str
    analysis: str
    final: str
    token_spans: list[tuple[int, int] | None]
    has_tool_call: bool
    has_analysis: bool
    has_final: bool
    channels: list[str]


@dataclass
class _Message:
    header: bytearray
    content: bytearray = field(default_factory=bytearray)
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (token index, byte start, byte end)
    in_header: bool = True

    @property
    def channel(self) -> str:
        match = _CHANNEL.search(self.header.decode("utf-8", "replace"))
        return match.group(1) if match else ""

    @property
    def recipient(self) -> str | None:
        match = _RECIPIENT.search(self.header.decode("utf-8", "replace"))
        return match.group(1) if match else None


def _split_messages(items: Iterable[Item], prefill_channel: str) -> tuple[list[_Message], bool]:
    """Group a completion's items into messages; also says whether a ``<|call|>`` occurred."""
    messages: list[_Message] = []
    cur: _Message | None = None
    saw_call = False
    for control, data, k in items:
        if control is None:
            if cur is None and not messages and data:  # text first: the prompt pre-filled the channel header
                cur = _Message(bytearray(f"<|channel|>{prefill_channel}".encode()), in_header=False)
                messages.append(cur)
            if cur is None:
                continue  # stray text between messages
            if cur.in_header:
                cur.header += data
            else:
                if k is not None:
                    cur.pieces.append((k, len(cur.content), len(cur.content) + len(data)))
                cur.content += data
        elif control == "<|start|>" or (control == "<|channel|>" and (cur is None or not cur.in_header)):
            cur = _Message(bytearray(b"" if control == "<|start|>" else control.encode()))
            messages.append(cur)
        elif control in ("<|channel|>", "<|constrain|>") and cur is not None and cur.in_header:
            cur.header += control.encode()
        elif control == "<|message|>" and cur is not None:
            cur.in_header = False
        elif control in TERMINATORS:
            saw_call, cur = saw_call or control == "<|call|>", None
    return messages, saw_call


def _join(messages: list[_Message], channel: str) -> tuple[bytes, list[tuple[int, int, int]]]:
    """The contents of a channel's messages (tool calls excluded) joined with "\\n", with token byte spans."""
    buf, pieces = bytearray(), []
    for i, m in enumerate(m for m in messages if m.channel == channel and m.recipient is None):
        if i:
            buf += b"\n"
        pieces += [(k, len(buf) + s, len(buf) + e) for k, s, e in m.pieces]
        buf += m.content
    return bytes(buf), pieces


def char_positions(buf: bytes) -> tuple[str, list[int]]:
    """Decode UTF-8 and map each byte offset to the number of characters that start before it (invalid
    sequences become U+FFFD, one per maximal invalid part, as Python's ``errors="replace"`` does)."""
    try:
        return buf.decode("utf-8"), [0, *accumulate((b & 0xC0) != 0x80 for b in buf)]
    except UnicodeDecodeError:
        pass
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parts, positions, n = [], [0], 0
    for i in range(len(buf)):
        parts.append(decoder.decode(buf[i:i + 1]))
        n += len(parts[-1])
        positions.append(n + bool(decoder.getstate()[0]))  # a pending partial character has started
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts), positions


def _strip_section(buf: bytes, pieces: list[tuple[int, int, int]]) -> tuple[str, list[tuple[int, int, int]]]:
    """Decode and ``strip()`` a section; each token's char span in the stripped text (None-worthy ones dropped)."""
    text, pos = char_positions(buf)
    kept = text.strip()
    lo = len(text) - len(text.lstrip())
    hi = lo + len(kept)
    spans = []
    for k, bs, be in pieces:
        a, b = pos[bs], pos[be]
        if a == b:  # continuation bytes only (or no bytes): empty span after the char they complete
            if lo < a <= hi:
                spans.append((k, a - lo, a - lo))
        elif max(a, lo) < min(b, hi):
            spans.append((k, max(a, lo) - lo, min(b, hi) - lo))
    return kept, spans


def _build(messages: list[_Message], saw_call: bool, n_tokens: int) -> HarmonyResponse:
    analysis, analysis_spans = _strip_section(*_join(messages, "analysis"))
    final, final_spans = _strip_section(*_join(messages, "final"))
    has_final = bool(final)
    output = THINK_PREFIX + analysis + (THINK_SEPARATOR + final if has_final else "")
    token_spans: list[tuple[int, int] | None] = [None] * n_tokens
    final_base = len(THINK_PREFIX) + len(analysis) + len(THINK_SEPARATOR)
    for base, spans in ((len(THINK_PREFIX), analysis_spans), (final_base, final_spans if has_final else [])):
        for k, a, b in spans:
            token_spans[k] = (base + a, base + b)
    return HarmonyResponse(output=output, analysis=analysis, final=final, token_spans=token_spans,
                           has_tool_call=saw_call or any(m.recipient for m in messages),
                           has_analysis=bool(analysis), has_final=has_final, channels=[m.channel for m in messages])


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.decoder)


def token_items(token_ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[Item]:
    """Each token as (harmony control token | other special | None, its bytes, its index)."""
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    byte_level = _is_byte_level(tokenizer)
    items: list[Item] = []
    for k, (i, s) in enumerate(zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids)), strict=True)):
        if added.get(i) in HARMONY_TOKENS:
            items.append((added[i], b"", k))
        elif i in special:
            items.append((_OTHER_SPECIAL, b"", k))
        elif i in added:
            items.append((None, added[i].encode(), k))
        elif byte_level and s is not None and all(c in _UNICODE_TO_BYTE for c in s):
            items.append((None, bytes(_UNICODE_TO_BYTE[c] for c in s), k))
        else:  # not byte-level BPE: a lone token's text (a split multi-byte char decodes to U+FFFD)
            items.append((None, tokenizer.decode([i]).encode(), k))
    return items


def parse_harmony(token_ids: list[int], tokenizer: PreTrainedTokenizerBase, *,
                  prefill_channel: str = "analysis") -> HarmonyResponse:
    """Convert a harmony completion given as token ids; ``token_spans`` has one entry per token.
    ``prefill_channel``: the channel of text that comes before any header (a pre-filled prompt)."""
    messages, saw_call = _split_messages(token_items(token_ids, tokenizer), prefill_channel)
    return _build(messages, saw_call, len(token_ids))


def parse_harmony_text(text: str, *, prefill_channel: str = "analysis") -> HarmonyResponse:
    """Convert a harmony completion given as text with the control tokens inline; ``token_spans`` is empty."""
    pieces = _SPLIT.split(text)  # odd indices are the control tokens
    items: list[Item] = [(p, b"", None) if i % 2 else (None, p.encode(), None) for i, p in enumerate(pieces) if p]
    messages, saw_call = _split_messages(items, prefill_channel)
    return _build(messages, saw_call, 0)


def _control_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"harmony control token {token!r} is {len(ids)} tokens in this tokenizer, not one")
    return ids[0]


def encode_parts(tokenizer: PreTrainedTokenizerBase, parts: list[str]) -> list[int]:
    """Token ids of ``parts`` in order: harmony control tokens as their single ids, other text BPE-encoded."""
    ids: list[int] = []
    for p in parts:
        if p in HARMONY_TOKENS:
            ids.append(_control_id(tokenizer, p))
        elif p:
            ids += tokenizer.encode(p, add_special_tokens=False)
    return ids
