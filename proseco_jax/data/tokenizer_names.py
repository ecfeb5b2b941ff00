"""The names of the text tokenizers and their vocabulary sizes, known without loading any tokenizer.

A leaf: `config_base` checks `data.tokenizer` and `data.vocab_size` against this table, and
`tokenizers.py` builds the tokenizers it names; nothing here imports either.
"""

from __future__ import annotations

import re

from proseco_jax.errors import UsageError

NAMES = ("gpt2", "bert", "chars", "bytes", "bpe:N", "smiles")
GPT2_VOCAB = 50257
BERT_VOCAB = 30522
CHARS = "abcdefghijklmnopqrstuvwxyz "  # text8's alphabet.
BYTE_SPECIALS = 3  # BOS, EOS, PAD after the 256 bytes.
BPE_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
BPE_MIN_VOCAB = 256 + len(BPE_SPECIALS)
_BPE = re.compile(r"bpe:(\d+)")


def vocab_size_of(name: str) -> int | None:
    """V of the tokenizer `name` (without loading it; None for `smiles`, whose vocabulary is built with its
    corpus); raises UsageError for an unknown name."""
    if name == "smiles":
        return None
    if name == "gpt2":
        return GPT2_VOCAB
    if name == "bert":
        return BERT_VOCAB
    if name == "chars":
        return len(CHARS)
    if name == "bytes":
        return 256 + BYTE_SPECIALS
    match = _BPE.fullmatch(name)
    if match:
        n = int(match.group(1))
        if n < BPE_MIN_VOCAB:
            raise UsageError(f"tokenizer {name!r}: a byte-level BPE needs N >= {BPE_MIN_VOCAB} (256 bytes "
                             f"and {len(BPE_SPECIALS)} special ids)")
        return n
    raise UsageError(f"unknown tokenizer {name!r}; expected one of {', '.join(NAMES)}")
