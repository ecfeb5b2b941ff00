"""Packing tokenised documents into fixed-length training sequences `(tokens [L], mask [L])`, mask 1 on
real tokens and 0 on padding, as the reference's data loader does (`get_dataset` with `wrap` on or off):

    wrap   every document ends with EOS; the documents are concatenated and cut into blocks of L - 2 ids,
           each framed as [BOS] block [EOS], so a block reads  BOS d1 EOS d2-part EOS  and the next one
           BOS d2-rest EOS d3 EOS ... ; the remainder shorter than one block is dropped; mask all ones.
           A tokenizer without BOS/EOS (chars: text8) is cut into plain blocks of L ids with no separators.
    pad    each document on its own: [BOS] document[:L - 2] [EOS], then PAD up to L (mask 0 there).

The reference concatenates within each batch of 1000 documents that its `map` hands over and drops each
batch's remainder; here the whole split is one stream, so only its last remainder is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

PACKINGS = ("wrap", "pad")


def wrap(docs: Iterable[np.ndarray], length: int, bos: int | None, eos: int | None) -> Iterator[np.ndarray]:
    """Blocks int32 [length] of the documents concatenated, framed BOS ... EOS if the tokenizer has both."""
    framed = bos is not None and eos is not None
    body = length - 2 if framed else length
    if body < 1:
        raise ValueError(f"sequence length {length} leaves no room between BOS and EOS")
    end = np.asarray([eos], np.int32) if framed else np.zeros(0, np.int32)
    pending: list[np.ndarray] = []
    count = 0
    for doc in docs:
        pending += [np.asarray(doc, np.int32), end]
        count += len(doc) + len(end)
        if count < body:
            continue
        stream = np.concatenate(pending)
        usable = len(stream) // body * body
        for block in stream[:usable].reshape(-1, body):
            yield np.concatenate([[bos], block, [eos]]).astype(np.int32) if framed else block.copy()
        pending, count = [stream[usable:]], len(stream) - usable


def pad(docs: Iterable[np.ndarray], length: int, bos: int, eos: int, pad_id: int
        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens int32, mask uint8) [length] per document: BOS doc[:length - 2] EOS, then PAD with mask 0."""
    if length < 3:
        raise ValueError(f"sequence length {length} leaves no room between BOS and EOS")
    for doc in docs:
        doc = np.asarray(doc, np.int32)[: length - 2]
        tokens = np.full(length, pad_id, np.int32)
        tokens[0], tokens[1 : len(doc) + 1], tokens[len(doc) + 1] = bos, doc, eos
        mask = np.zeros(length, np.uint8)
        mask[: len(doc) + 2] = 1
        yield tokens, mask
