"""Tokenizers of the real-text corpora, behind one small interface (`Tokenizer`), named by one string:

    gpt2     GPT-2's byte-level BPE (50257 ids; <|endoftext|> = 50256 is BOS, EOS and padding), read from a
             local tokenizer.json or a directory holding one (or vocab.json + merges.txt), else from the
             Hugging Face hub by name
    bert     bert-base-uncased's WordPiece (30522 ids, lower-cased, accents stripped), as MDLM tokenises
             LM1B: [CLS] = 101 is BOS, [SEP] = 102 is EOS, [PAD] = 0 pads; read from a local vocab.txt or
             tokenizer.json (or a directory holding one), else from the Hugging Face hub by name
    chars    text8's 27 symbols, a-z = 0..25 and space = 26; no special ids (text8 is cut into plain chunks)
    bytes    UTF-8 bytes 0..255, then BOS = 256, EOS = 257, PAD = 258 (259 ids)
    bpe:N    a byte-level BPE of N ids trained on the corpus when it is prepared (ids 0, 1, 2 are BOS, EOS,
             PAD); its tokenizer.json is saved with the data, so samples decode the same way later. A
             corpus too small for N ids is refused, naming the N it gives
    smiles   SMILES regex tokens (`smiles.py`) of a molecule corpus, its vocabulary built when the corpus
             is prepared and saved with it (at most data.vocab_size ids)

The model adds one [MASK] id on top of the V ids (`mask_id` = `vocab_size`). A prepared corpus records
its tokenizer next to its data (`record`: tokenizer.txt naming it, plus tokenizer.json for the BPE ones)
and `load_recorded` reads it back. The interface is `tokenizer_base.Tokenizer`, below every tokenizer;
the `tokenizers` library is imported only by the BPE tokenizers; the names and sizes alone are in
`tokenizer_names.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from proseco_jax.data import hub, smiles
from proseco_jax.data.errors import DataError, one_line
from proseco_jax.data.tokenizer_base import TOKENIZER_JSON, Tokenizer
from proseco_jax.data.tokenizer_names import (
    BERT_VOCAB,
    BPE_MIN_VOCAB,
    BPE_SPECIALS,
    BYTE_SPECIALS,
    CHARS,
    GPT2_VOCAB,
    vocab_size_of,
)
from proseco_jax.errors import UsageError

GPT2_EOS = 50256
GPT2_HUB_NAME = "gpt2"
BERT_HUB_NAME = "bert-base-uncased"
BERT_VOCAB_TXT = "vocab.txt"
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}  # bert-base-uncased's.
TOKENIZER_TXT = "tokenizer.txt"


class ByteTokenizer(Tokenizer):
    name, vocab_size = "bytes", 256 + BYTE_SPECIALS
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids), np.int64)
        return bytes(ids[(ids >= 0) & (ids < 256)].astype(np.uint8)).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """text8's alphabet; text is lower-cased and any other character becomes a space."""

    name, vocab_size = "chars", len(CHARS)

    def __init__(self):
        self._table = np.full(128, CHARS.index(" "), np.int32)  # By ASCII code; non-ASCII reads as '?'.
        for i, c in enumerate(CHARS):
            self._table[ord(c)] = i

    def encode_array(self, text: str) -> np.ndarray:
        return self._table[np.frombuffer(text.lower().encode("ascii", errors="replace"), np.uint8)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(CHARS[i] for i in ids if 0 <= i < len(CHARS))


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (GPT-2, BERT's WordPiece or a BPE trained on the corpus) under this
    interface."""

    vectorised = False

    def __init__(self, name: str, tok: Any, vocab_size: int, bos: int, eos: int, pad: int):
        self.name, self.vocab_size = name, vocab_size
        self.bos_id, self.eos_id, self.pad_id = bos, eos, pad
        self._tok = tok
        self._size = tok.get_vocab_size(with_added_tokens=True)  # <= vocab_size for a small corpus.

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encoded]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= i < self._size], skip_special_tokens=True)

    def to_json(self) -> str:
        return self._tok.to_str()


def _library():
    try:
        import tokenizers as hf_tokenizers
    except ImportError:
        raise UsageError("the gpt2, bert and bpe:N tokenizers need the `tokenizers` library: pip install "
                         "tokenizers (or pip install -e '.[text]')") from None
    return hf_tokenizers


def _json_path(path: str) -> str:
    return os.path.join(path, TOKENIZER_JSON) if os.path.isdir(path) else path


def _read_json(name: str, path: str):
    lib = _library()
    path = _json_path(path)
    if not os.path.exists(path):
        raise DataError(f"tokenizer {name}: {path} does not exist")
    try:
        return lib.Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - the Rust parser raises a bare Exception for a bad file.
        raise DataError(f"tokenizer {name}: {path} is not a tokenizer.json ({one_line(e)})") from None


def _from_hub(hub_name: str, label: str, local: str):
    """(tokenizer, where it came from) of the Hugging Face hub's `hub_name`; offline or any hub error is a
    DataError asking for `local` in data.tokenizer_path."""
    library = _library()
    hub.offline_reason()  # Offline: the hub cache only, at once, instead of half a minute of retries.
    try:
        tok = library.Tokenizer.from_pretrained(hub_name)
    except Exception as e:  # noqa: BLE001 - offline, hub errors: all mean "give a local file".
        raise DataError(f"cannot load the {label} tokenizer from the Hugging Face hub ({hub.failure(e)}); "
                        f"set data.tokenizer_path to {local}") from None
    return tok, f"the hub's {hub_name!r}"


def _vocab_and_merges(directory: str):
    """A byte-level BPE from the older vocab.json + merges.txt layout of GPT-2 directories."""
    lib = _library()
    vocab, merges = (os.path.join(directory, f) for f in ("vocab.json", "merges.txt"))
    try:
        tok = lib.Tokenizer(lib.models.BPE.from_file(vocab, merges))
    except Exception as e:  # noqa: BLE001 - the Rust parser raises a bare Exception for a bad file.
        raise DataError(f"tokenizer gpt2: {directory} holds no readable vocab.json and merges.txt "
                        f"({one_line(e)})") from None
    tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = lib.decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def _gpt2(path: str) -> BPETokenizer:
    if path and os.path.isdir(path) and not os.path.exists(os.path.join(path, TOKENIZER_JSON)):
        tok, where = _vocab_and_merges(path), path
    elif path:
        tok = _read_json("gpt2", path)
        where = _json_path(path)
    else:
        tok, where = _from_hub(GPT2_HUB_NAME, "GPT-2", "a local GPT-2 tokenizer.json")
    size, eos = tok.get_vocab_size(with_added_tokens=True), tok.token_to_id("<|endoftext|>")
    if size != GPT2_VOCAB or eos != GPT2_EOS:
        raise DataError(f"tokenizer gpt2: {where} is not GPT-2's ({size} ids, <|endoftext|> = {eos}; "
                        f"expected {GPT2_VOCAB} ids, <|endoftext|> = {GPT2_EOS})")
    return BPETokenizer("gpt2", tok, GPT2_VOCAB, GPT2_EOS, GPT2_EOS, GPT2_EOS)


def _wordpiece_from_vocab(path: str):
    """bert-base-uncased's pipeline around the WordPiece vocabulary of a vocab.txt (one token a line)."""
    lib = _library()
    try:
        tok = lib.Tokenizer(lib.models.WordPiece.from_file(path, unk_token="[UNK]"))
    except Exception as e:  # noqa: BLE001 - the Rust parser raises a bare Exception for a bad file.
        raise DataError(f"tokenizer bert: {path} is not a WordPiece vocab.txt ({one_line(e)})") from None
    # Lower-casing with accents stripped, Chinese characters split, control characters removed: the
    # uncased model's BasicTokenizer; then whitespace and punctuation splitting, and "##" continuations.
    tok.normalizer = lib.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
    tok.pre_tokenizer = lib.pre_tokenizers.BertPreTokenizer()
    tok.decoder = lib.decoders.WordPiece(prefix="##")
    tok.add_special_tokens([t for t in BERT_SPECIALS if tok.token_to_id(t) is not None])
    return tok


def _bert(path: str) -> BPETokenizer:
    if path and os.path.isdir(path):
        json_path, txt_path = os.path.join(path, TOKENIZER_JSON), os.path.join(path, BERT_VOCAB_TXT)
        if not os.path.exists(json_path) and not os.path.exists(txt_path):
            raise DataError(f"tokenizer bert: {path} holds neither {TOKENIZER_JSON} nor {BERT_VOCAB_TXT}")
        path = json_path if os.path.exists(json_path) else txt_path
    if path and path.endswith(".json"):
        tok, where = _read_json("bert", path), path
    elif path:
        if not os.path.isfile(path):
            raise DataError(f"tokenizer bert: {path} does not exist")
        tok, where = _wordpiece_from_vocab(path), path
    else:
        tok, where = _from_hub(BERT_HUB_NAME, BERT_HUB_NAME, "a local vocab.txt")
    size = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in BERT_SPECIALS}
    if size != BERT_VOCAB or ids != BERT_SPECIALS:
        found = ", ".join(f"{t} {i}" for t, i in ids.items())
        expected = ", ".join(f"{t} {i}" for t, i in BERT_SPECIALS.items())
        raise DataError(f"tokenizer bert: {where} is not {BERT_HUB_NAME}'s ({size} ids; {found}; expected "
                        f"{BERT_VOCAB} ids; {expected})")
    return BPETokenizer("bert", tok, BERT_VOCAB, ids["[CLS]"], ids["[SEP]"], ids["[PAD]"])


def _bpe(name: str, tok: Any, what: str) -> BPETokenizer:
    """The BPE tokenizer `name` of `tok`, which must have exactly N ids: a model of data.vocab_size = N
    over a tokenizer of fewer would hold rows that no token ever reaches. `what` names it in messages."""
    ids = [tok.token_to_id(s) for s in BPE_SPECIALS]
    if ids != [0, 1, 2]:
        raise DataError(f"tokenizer {name}: its special ids are {ids}, expected {BPE_SPECIALS} = [0, 1, 2]")
    size, n = tok.get_vocab_size(with_added_tokens=True), vocab_size_of(name)
    if size != n:
        fix = (f": set --config.data.tokenizer=bpe:{size} --config.data.vocab_size={size}"
               if size >= BPE_MIN_VOCAB else "")
        raise DataError(f"tokenizer {name}: {what} has {size} ids, not data.vocab_size={n}{fix}")
    return BPETokenizer(name, tok, n, *ids)


def train_bpe(name: str, texts: Iterable[str]) -> BPETokenizer:
    """Trains the byte-level BPE `name` ('bpe:N') on `texts`; DataError when the text yields another number
    of ids than N (too little text holds fewer merges)."""
    n = vocab_size_of(name)
    lib = _library()
    tok = lib.Tokenizer(lib.models.BPE())
    tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = lib.decoders.ByteLevel()
    trainer = lib.trainers.BpeTrainer(vocab_size=n, special_tokens=list(BPE_SPECIALS), show_progress=False,
                                      initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # The trainer stops at N ids or when no pair is left to merge, so only too little text gives fewer.
    return _bpe(name, tok, "the BPE trained on the corpus (its text holds no more merges)")


def load(name: str, directory: str = "") -> Tokenizer:
    """The tokenizer `name`; `directory` holds its tokenizer.json (gpt2: a file or directory; bert: a
    vocab.txt, a tokenizer.json or a directory holding one; '' = the hub).

    Raises:
      UsageError: unknown name. DataError: the tokenizer file is missing or does not parse.
    """
    vocab_size_of(name)  # Validates the name.
    if name == "bytes":
        return ByteTokenizer()
    if name == "chars":
        return CharTokenizer()
    if name == "gpt2":
        return _gpt2(directory)
    if name == "bert":
        return _bert(directory)
    if not directory:
        raise DataError(f"tokenizer {name} is trained when the corpus is prepared; no directory given")
    if name == "smiles":
        return smiles.load(directory)
    return _bpe(name, _read_json(name, directory), f"the saved {_json_path(directory)}")


def record(tokenizer: Tokenizer, directory: str) -> None:
    """Writes tokenizer.txt (the name) and, for BPE tokenizers, tokenizer.json into `directory`."""
    content = tokenizer.to_json()
    if content is not None:
        with open(os.path.join(directory, TOKENIZER_JSON), "w", encoding="utf-8") as f:
            f.write(content)
    with open(os.path.join(directory, TOKENIZER_TXT), "w", encoding="utf-8") as f:
        f.write(tokenizer.name + "\n")


def load_recorded(directory: str) -> Tokenizer:
    """The tokenizer that `record` wrote into `directory` (a prepared corpus's version directory)."""
    path = os.path.join(directory, TOKENIZER_TXT)
    try:
        with open(path, encoding="utf-8") as f:
            name = f.read().strip()
    except OSError as e:
        raise DataError(f"no recorded tokenizer in {directory}: {one_line(e)}") from None
    return load(name, directory)
