"""The one interface of the corpora's tokenizers (`Tokenizer`), below every tokenizer module: `tokenizers.py`
(the named text tokenizers) and `smiles.py` (molecules) both build on it, and `tokenizers.load` names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

TOKENIZER_JSON = "tokenizer.json"  # what a trained tokenizer is saved as, next to its corpus


class Tokenizer:
    """Text <-> ids [0, vocab_size). `bos_id`, `eos_id`, `pad_id` are None where the tokenizer has none."""

    name: str
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    # Encoded by a numpy table lookup: faster in place than the copying to and from worker processes.
    vectorised: bool = True

    @property
    def mask_id(self) -> int:
        """The [MASK] id that the model adds on top of the vocabulary."""
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """int32 [n] ids of `text`, no special ids added."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special ids and ids outside the vocabulary (e.g. [MASK]) are left out."""
        raise NotImplementedError

    def to_json(self) -> str | None:
        """The tokenizer.json to save with the data (None: the name alone defines the tokenizer)."""
        return None
