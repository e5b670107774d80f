"""Build the built-in tiny student model (a randomly initialised miniature Qwen3) shipped with dasd.

Trains a 1024-token byte-level BPE tokenizer on the sample data, wraps it as a transformers fast
tokenizer with a ChatML chat template, and saves it next to a small ``Qwen3ForCausalLM`` so that
``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained(out_dir)`` load it like a hub model.

Usage::

    python scripts/make_tiny_student.py --data-dir src/dasd/assets/sample_data \\
        --out-dir src/dasd/assets/tiny_qwen3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

ASSETS = Path(__file__).resolve().parents[1] / "src" / "dasd" / "assets"
VOCAB_SIZE = 1024
# the ChatML specials, think tokens and chat template every dasd-built tokenizer shares
from dasd.world.models import CHAT_TEMPLATE, IM_END, IM_START, PAD, THINK_TOKENS  # noqa: E402

THINK_SPLIT = re.compile("|".join(re.escape(t) for t in THINK_TOKENS))

ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}


def iter_training_text(data_dir: Path) -> Iterator[str]:
    """Yield the ``input`` and ``output`` texts of every sample file, cut at ``<think>``/``</think>``.

    The think tags become single added tokens, so BPE should not spend merges on their spelling.
    """
    for path in sorted(data_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                for text in (record["input"], record["output"]):
                    yield from (piece for piece in THINK_SPLIT.split(text) if piece)


def train_bpe(data_dir: Path) -> Tokenizer:
    """Train a deterministic byte-level BPE with ChatML specials and non-special think tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(THINK_TOKENS),
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(iter_training_text(data_dir), trainer=trainer)
    # Like Qwen3: <think> and </think> are single tokens that survive skip_special_tokens decoding.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"expected {VOCAB_SIZE} tokens, got {tokenizer.get_vocab_size()}")
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap the raw tokenizer as a transformers fast tokenizer with Qwen-style special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        extra_special_tokens=[IM_START],
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerBase, seed: int, architecture: dict | None = None) -> Qwen3ForCausalLM:
    """Randomly initialise a tiny Qwen3 (``ARCHITECTURE`` unless given) whose embedding matches the tokenizer."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        dtype="float32",
        **(architecture or ARCHITECTURE),
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ASSETS / "sample_data")
    parser.add_argument("--out-dir", type=Path, default=ASSETS / "tiny_qwen3")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = wrap_tokenizer(train_bpe(args.data_dir))
    model = build_model(tokenizer, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out_dir)
    model.save_pretrained(args.out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"saved tokenizer ({len(tokenizer)} tokens) and model ({n_params:,} parameters) to {args.out_dir}")


if __name__ == "__main__":
    main()
