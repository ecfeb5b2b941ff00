"""The SMILES tokenizer of the molecule corpora: the MolecularTransformer regex splits a SMILES string into
atoms (bracketed or not), bonds, branches and ring closures; joining the pieces gives the string back.

Ids: `<bos>` 0, `<eos>` 1, `<pad>` 2, `<unk>` 3, then the regex tokens of the corpus in the order they
were first seen (`build`); the model's [MASK] is `vocab_size` (= data.vocab_size), one past the real ids,
as for every corpus here. The authors' tokenizer puts `<mask>` at id 2 and `<pad>`, `<unk>` at 3, 4, their
tokens from 5 on: `reference_order` gives, for each of our rows (the mask row last), the authors' id, so a
checkpoint's embedding and output rows map onto ours by one permutation. A sequence is
`[BOS] tokens [EOS] [PAD]...` of the corpus length; the loss covers the padding, so the model learns when a
molecule ends. The vocabulary is saved as JSON next to the data it was built from (`tokenizers.record`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.tokenizer_base import TOKENIZER_JSON, Tokenizer

NAME = "smiles"
PATTERN = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|\%[0-9]{2}"
           r"|[0-9])")
SPECIALS = ("<bos>", "<eos>", "<pad>", "<unk>")
BOS, EOS, PAD, UNK = range(len(SPECIALS))
# The authors' special ids; their corpus tokens follow from id len(REFERENCE_SPECIALS) on, in our order.
REFERENCE_SPECIALS = {"<bos>": 0, "<eos>": 1, "<mask>": 2, "<pad>": 3, "<unk>": 4}
_REGEX = re.compile(PATTERN)


def split(smiles: str) -> list[str]:
    """The regex tokens of `smiles` (characters the regex does not match are dropped, as the authors')."""
    return _REGEX.findall(smiles)


class SmilesTokenizer(Tokenizer):
    """SMILES <-> ids [0, vocab_size): SPECIALS, then `tokens`; ids from len(SPECIALS) + len(tokens) up to
    vocab_size are spare (a corpus with fewer tokens than data.vocab_size leaves them unused)."""

    name = NAME
    bos_id, eos_id, pad_id = BOS, EOS, PAD
    vectorised = False

    def __init__(self, tokens: Sequence[str], vocab_size: int | None = None):
        self.tokens = tuple(tokens)
        size = len(SPECIALS) + len(self.tokens)
        if vocab_size is not None and vocab_size < size:
            raise DataError(f"the SMILES vocabulary has {size} ids (4 special), more than data.vocab_size="
                            f"{vocab_size}: set --config.data.vocab_size={size}")
        self.vocab_size = size if vocab_size is None else vocab_size
        self._ids = {t: i for i, t in enumerate((*SPECIALS, *self.tokens))}
        self._strings = (*SPECIALS, *self.tokens)

    @classmethod
    def build(cls, smiles: Iterable[str], vocab_size: int | None = None) -> SmilesTokenizer:
        """The tokenizer whose tokens are those of `smiles`, in the order first seen."""
        seen: dict[str, None] = {}
        for s in smiles:
            seen.update(dict.fromkeys(split(s)))
        return cls(list(seen), vocab_size)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray([self._ids.get(t, UNK) for t in split(text)], np.int32)

    def encode_padded(self, text: str, length: int) -> np.ndarray | None:
        """int32 [length] `[BOS] tokens [EOS] [PAD]...`, or None when the molecule does not fit."""
        ids = self.encode_array(text)
        if len(ids) + 2 > length:
            return None
        out = np.full(length, PAD, np.int32)
        out[0], out[1 : len(ids) + 1], out[len(ids) + 1] = BOS, ids, EOS
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The SMILES of `ids` with specials, spare ids and [MASK] left out wherever they stand (the
        authors' evaluation strips BOS, EOS and PAD the same way)."""
        return "".join(self._strings[i] for i in map(int, ids) if len(SPECIALS) <= i < len(self._strings))

    def to_json(self) -> str:
        return json.dumps({"specials": list(SPECIALS), "tokens": list(self.tokens),
                           "vocab_size": self.vocab_size}, indent=1)

    @classmethod
    def from_json(cls, content: str, origin: str) -> SmilesTokenizer:
        try:
            values = json.loads(content)
            if values["specials"] != list(SPECIALS):
                raise ValueError(f"specials {values['specials']}, expected {list(SPECIALS)}")
            return cls(values["tokens"], int(values["vocab_size"]))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{origin} is not a SMILES vocabulary ({one_line(e)})") from None

    def reference_order(self, reference_tokens: Sequence[str] | None = None) -> np.ndarray:
        """int [vocab_size + 1]: the authors' id of each of our rows, [MASK] (our row vocab_size) last.

        `reference_tokens`: the authors' corpus tokens in their id order (their vocab.json sorted by id);
        None = ours. Our spare ids take the authors' ids of tokens we lack, in order."""
        theirs = list(self.tokens if reference_tokens is None else reference_tokens)
        base = len(REFERENCE_SPECIALS)
        missing = sorted(set(self.tokens) - set(theirs))
        if missing or base + len(theirs) != self.vocab_size + 1:
            raise DataError(f"the reference vocabulary ({base + len(theirs)} ids) does not match this "
                            f"tokenizer's {self.vocab_size} + [MASK]"
                            + (f": it lacks the token(s) {missing[:5]}" if missing else ""))
        order = [REFERENCE_SPECIALS[s] for s in SPECIALS] + [base + theirs.index(t) for t in self.tokens]
        used = {*order, REFERENCE_SPECIALS["<mask>"]}
        order += [i for i in range(self.vocab_size + 1) if i not in used]  # Our spare ids: their others.
        return np.asarray([*order, REFERENCE_SPECIALS["<mask>"]], np.int64)


def load(directory: str) -> SmilesTokenizer:
    """The vocabulary that `tokenizers.record` saved in `directory` (a prepared corpus's version
    directory)."""
    path = os.path.join(directory, TOKENIZER_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        raise DataError(f"no SMILES vocabulary in {directory}: {one_line(e)}") from None
    return SmilesTokenizer.from_json(content, path)
