"""Documents of local text corpora, read in a fixed order so that a corpus is packed the same way every time.

A corpus is the sorted list of files matching a glob. By extension:
    .jsonl / .json   one document per line, the JSON object's `field`
    .parquet         one document per row, column `field` (Hugging Face hub shards, e.g. OpenWebText's)
    .arrow           one document per row, column `field` (the `datasets` library's cache and save_to_disk)
    anything else    UTF-8 text: the whole file is one document, or each non-blank line is one
                     (`document_per` = "file" | "line")
Documents are numbered across files in that order; a split is a range of those numbers (`Corpus.read`).

LM1B's release (`1-billion-word-language-modeling-benchmark-r13output`) holds one tokenised sentence a line
in training-monolingual.tokenized.shuffled/news.en-NNNNN-of-00100 (training) and
heldout-monolingual.tokenized.shuffled/news.en.heldout-NNNNN-of-00050 (held out); `lm1b_files` finds them
and `detokenize_lm1b` undoes the release's spacing around punctuation as MDLM does before tokenising.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator

from proseco_jax.data.errors import DataError, one_line

DOCUMENT_PER = ("file", "line")
_BATCH_ROWS = 1024
_CHUNK = 1 << 20  # Bytes read at a time when a whole file is scanned.
# surrogateescape decodes each byte that is not UTF-8 to one of these, which valid UTF-8 never yields.
_ESCAPED = re.compile("[\udc80-\udcff]")
LM1B_RELEASE = "1-billion-word-language-modeling-benchmark-r13output"
LM1B_TRAIN = os.path.join("training-monolingual.tokenized.shuffled", "news.en-*")
LM1B_HELDOUT = os.path.join("heldout-monolingual.tokenized.shuffled", "news.en.heldout-*")
_LM1B_TRAIN_NAME = re.compile(r"news\.en-\d+-of-\d+")
_LM1B_HELDOUT_NAME = re.compile(r"news\.en\.heldout-\d+-of-\d+")


def _kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}.get(ext, "text")


def list_files(pattern: str) -> list[str]:
    """Regular files matching `pattern` (~ expanded, ** recursive), sorted; DataError if there are none."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise DataError(f"no files match data.files={pattern!r}")
    return paths


def _arrow_batches(path: str, field: str):
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        reader = pa.ipc.open_stream(source)  # What `datasets` writes.
        batches = iter(reader)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    if field not in reader.schema.names:
        raise DataError(f"{path} has no column {field!r} (columns: {reader.schema.names})")
    for batch in batches:
        yield batch.column(field)


def _parquet_batches(path: str, field: str):
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if field not in parquet.schema_arrow.names:
        raise DataError(f"{path} has no column {field!r} (columns: {parquet.schema_arrow.names})")
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[field]):
        yield batch.column(0)


def _jsonl(path: str, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{i}: not a JSON object with a string field {field!r} ({one_line(e)})"
                                ) from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{i}: field {field!r} is {type(text).__name__}, not a string")
            yield text


def _documents(path: str, field: str, document_per: str) -> Iterator[str]:
    kind = _kind(path)
    if kind == "jsonl":
        yield from _jsonl(path, field)
    elif kind in ("parquet", "arrow"):
        batches = _parquet_batches if kind == "parquet" else _arrow_batches
        for column in batches(path, field):
            yield from (t or "" for t in column.to_pylist())
    elif document_per == "file":
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from (line.rstrip("\r\n") for line in f if line.strip())


def _count(path: str, field: str, document_per: str) -> int:
    kind = _kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if kind == "arrow":
        return sum(len(c) for c in _arrow_batches(path, field))
    if kind == "text" and document_per == "file":
        return 1
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(1 for line in f if line.strip())


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The documents of `paths` in order; `counts[i]` documents in file i."""

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    field: str
    document_per: str

    @classmethod
    def open(cls, paths: list[str], field: str, document_per: str) -> Corpus:
        counts = []
        for p in paths:
            try:
                counts.append(_count(p, field, document_per))
            except (OSError, ValueError) as e:  # pyarrow's errors are ValueErrors (ArrowInvalid).
                raise DataError(f"cannot read {p}: {one_line(e)}") from None
        return cls(tuple(paths), tuple(counts), field, document_per)

    @property
    def size(self) -> int:
        return sum(self.counts)

    def read(self, start: int, stop: int) -> Iterator[str]:
        """Documents start..stop-1 (numbered over all files); files outside the range are not opened."""
        first = 0
        for path, count in zip(self.paths, self.counts):
            lo, hi = max(start - first, 0), min(stop - first, count)
            first += count
            if lo >= hi:
                continue
            try:
                for i, doc in enumerate(_documents(path, self.field, self.document_per)):
                    if i >= hi:
                        break
                    if i >= lo:
                        yield doc
            except (OSError, ValueError) as e:
                if isinstance(e, DataError):
                    raise
                raise DataError(f"cannot read {path}: {one_line(e)}") from None


def undecodable_bytes(path: str) -> int:
    """How many bytes of `path` are not UTF-8 (the readers above see each run of them as U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    count = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            text = decoder.decode(chunk)
            count += len(text) - len(_ESCAPED.sub("", text))
    text = decoder.decode(b"", final=True)
    return count + len(text) - len(_ESCAPED.sub("", text))


def check_decoding(paths: list[str], max_errors: int, corpus: str) -> None:
    """Counts the bytes that are not UTF-8 in the text and JSONL files among `paths` (parquet and arrow
    hold validated UTF-8): DataError naming the first file with more than `max_errors`
    (data.max_decode_errors), else one line reporting each file that has any."""
    found = {}
    for path in paths:
        if _kind(path) not in ("text", "jsonl"):
            continue
        try:
            count = undecodable_bytes(path)
        except OSError as e:
            raise DataError(f"cannot read {path}: {one_line(e)}") from None
        if count > max_errors:
            raise DataError(f"{path} holds {count:,} bytes that are not UTF-8, more than "
                            f"data.max_decode_errors={max_errors}: fix its encoding, or accept them (read "
                            f"as U+FFFD) with --config.data.max_decode_errors={count}")
        if count:
            found[path] = count
    if found:
        listed = ", ".join(f"{path} {count:,}" for path, count in found.items())
        print(f"{corpus}: bytes that are not UTF-8, read as U+FFFD: {listed}", flush=True)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(path: str) -> list[int]:
    """Size, mtime and ctime (ns): a file whose stamp is unchanged is not read again. ctime moves on every
    write and cannot be set back, so an edit that restores size and mtime still changes the stamp."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _relative_names(paths: list[str]) -> list[str]:
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def describe_files(paths: list[str]) -> list[list]:
    """[name relative to the files' common directory, size, mtime_ns, ctime_ns, sha256] of each file: what
    `same_files` compares (the content digest; the stamp only saves reading an untouched file)."""
    return [[name, *_stamp(p), _digest(p)] for name, p in zip(_relative_names(paths), paths, strict=True)]


def same_files(paths: list[str], recorded: list[list]) -> bool:
    """Whether `paths` hold what `describe_files` recorded: the same names and contents. A file whose size,
    mtime and ctime are the recorded ones is taken as unchanged without being read; any other is hashed.
    (A record of [name, size] alone, written before digests were kept, compares those two.)"""
    names = _relative_names(paths)
    if [r[0] for r in recorded] != names:
        return False
    for path, record in zip(paths, recorded, strict=True):
        if len(record) == 2:
            unchanged = os.path.getsize(path) == record[1]
        else:
            unchanged = _stamp(path) == record[1:4] or _digest(path) == record[4]
        if not unchanged:
            return False
    return True


def lm1b_files(files: str) -> tuple[list[str], list[str]]:
    """(training files, held-out files) of LM1B, sorted: `files` is the release directory (or the directory
    above it), or a glob whose matches are told apart by name (news.en-* and news.en.heldout-*)."""
    root = os.path.expanduser(files)
    if os.path.isdir(root):
        if os.path.isdir(os.path.join(root, LM1B_RELEASE)):
            root = os.path.join(root, LM1B_RELEASE)
        found = [sorted(p for p in glob.glob(os.path.join(root, g)) if os.path.isfile(p))
                 for g in (LM1B_TRAIN, LM1B_HELDOUT)]
    else:
        paths = list_files(files)
        found = [[p for p in paths if pattern.fullmatch(os.path.basename(p))]
                 for pattern in (_LM1B_TRAIN_NAME, _LM1B_HELDOUT_NAME)]
    train, heldout = found
    if not train or not heldout:
        raise DataError(f"data.files={files!r} holds {len(train)} LM1B training file(s) (news.en-*) and "
                        f"{len(heldout)} held-out file(s) (news.en.heldout-*); both are needed: point it at "
                        f"the {LM1B_RELEASE} directory")
    return train, heldout


# MDLM's LM1B detokenisation, as (pattern, replacement) rules applied in order to each sentence. Each rule
# closes the release's spaces around one kind of punctuation; a literal rule replaces every occurrence.
_LM1B_RULES = [(re.compile(pattern), replacement) for pattern, replacement in [
    (re.escape("http : / / "), "http://"),
    (re.escape("https : / / "), "https://"),
    (r" (?='\w)", ""),  # a space before an apostrophe that starts a word: "it 's" -> "it's"
    (r" (\w+) \. ", r" \1. "),
    (r" (\w+) \.$", r" \1."),
    (re.escape(" ? "), "? "),
    (r" \?$", "?"),
    (re.escape(" ! "), "! "),
    (r" !$", "!"),
    (re.escape(" , "), ", "),
    (re.escape(" : "), ": "),
    (re.escape(" ; "), "; "),
    (re.escape(" / "), "/"),
    (r'" ([^"]+) "', r'"\1"'),  # the spaces inside a pair of quotes, brackets or parentheses
    (r"' ([^']+) '", r"'\1'"),
    (r"\( ([^()]+) \)", r"(\1)"),
    (r"\[ ([^\[\]]+) \]", r"[\1]"),
    (re.escape("$ "), "$"),
    (re.escape("£ "), "£"),
]]


def detokenize_lm1b(sentence: str) -> str:
    """An LM1B sentence as MDLM feeds it to the tokenizer: "Hello , world ." -> "Hello, world."."""
    for pattern, replacement in _LM1B_RULES:
        sentence = pattern.sub(replacement, sentence)
    return sentence
