"""Tokenizers and randomly initialised models of the reasoning world (``dasd.recipes.world``).

The teacher and the student get *different* tokenizers, as gpt-oss's o200k and Qwen's do, so every
cross-tokenizer path (DAS's character-span alignment, mixed-policy continuation in the teacher's token space)
is exercised: the teacher's byte-level BPE splits every digit into its own piece; the student's keeps whole
numbers together (``"123"`` may be one token) and has a larger vocabulary. Both carry ChatML specials
(``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>`` as pad), ``<think>``/``</think>`` as single tokens and a
ChatML chat template, and are saved with ``save_pretrained`` so they load like hub models.

Hand-written on the ``tokenizers`` library (trainers, pre-tokenizers) and transformers' Qwen3: no library
ships a "train a tiny tokenizer and model for a synthetic world" helper.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from dasd.text.think import THINK_TAGS

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
_THINK_SPLIT = re.compile("|".join(re.escape(t) for t in THINK_TAGS))

# ChatML (Qwen2.5/Qwen3-Instruct without tools or a default system prompt): content verbatim.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    """The texts cut at the think tags (added tokens: BPE should not spend merges on their spelling)."""
    for text in texts:
        yield from (p for p in _THINK_SPLIT.split(text) if p)


def train_tokenizer(texts: Iterable[str], vocab_size: int, split_digits: bool) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE trained on ``texts`` (at most ``vocab_size`` tokens: the world's small
    vocabulary may support fewer merges), wrapped as a transformers fast tokenizer with ChatML specials."""
    tok = Tokenizer(tok_models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(THINK_TAGS), special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(_pieces(texts), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TAGS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, bos_token=None,
                                   extra_special_tokens=[IM_START], model_max_length=32768,
                                   chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


def init_model(tokenizer: PreTrainedTokenizerFast, architecture: dict, seed: int) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 of ``architecture`` (hidden_size, num_hidden_layers, ...) whose embedding
    matches the tokenizer."""
    arch = dict(architecture)
    hidden, heads = int(arch["hidden_size"]), int(arch.get("num_attention_heads", 4))
    arch.setdefault("num_attention_heads", heads)
    arch.setdefault("num_key_value_heads", max(1, heads // 2))
    arch.setdefault("head_dim", hidden // heads)
    arch.setdefault("intermediate_size", 3 * hidden)
    config = Qwen3Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                         dtype="float32", max_position_embeddings=2048, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-6,
                         **arch)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()
