"""What a corpus must be before it is prepared, and what a prepared corpus must still match: bytes that are
not UTF-8 are counted per file and refused above data.max_decode_errors, a bpe:N tokenizer has exactly N
ids, and an edit of a source file is seen by its content even when size and mtime are put back."""

import json
import os
import random

import pytest
from conftest import REPO, assert_usage_error, run_binary
from test_sft_train import load_config, records, write_jsonl, write_tokenizer

from proseco_jax import config_base
from proseco_jax.data import datasets, sft_builder, text_sources
from proseco_jax.data.errors import DataError

TEXT_FILES = os.path.join(REPO, "configs", "text_files.py")


def _lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home")
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(n)]


def _text_config(data_dir, files, **overrides):
    tree = config_base.get_config()
    tree.model.max_length = 64
    settings = dict(name="text_files", files=str(files), tokenizer="bytes", vocab_size=259, length=32,
                    num_proc=1, document_per="line", data_dir=str(data_dir), **overrides)
    for key, value in settings.items():
        tree.data[key] = value
    return config_base.resolve(tree).data


def _corpus(directory, noise: bytes = b"") -> str:
    """Two text files; `noise` (bytes that are not UTF-8) inserted into the second's middle line."""
    os.makedirs(directory, exist_ok=True)
    for i in range(2):
        lines = [line.encode() for line in _lines(40, seed=i)]
        if i == 1:
            lines[20] = lines[20][:5] + noise + lines[20][5:]
        with open(os.path.join(directory, f"part{i}.txt"), "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
    return os.path.join(str(directory), "*.txt")


def test_undecodable_bytes_are_counted_exactly(tmp_path):
    # \xff and \xfe are never UTF-8; \xe2\x82 starts a 3-byte sequence that ends too soon; U+FFFD itself
    # is valid text; a character cut by the reader's 1 MiB chunks is still one valid character.
    straddling = b"a" * ((1 << 20) - 1) + "\u20ac".encode()
    cases = ((b"plain", 0), (b"a\xffb\xfe", 2), (b"x\xe2\x82", 2), ("ok \ufffd".encode(), 0),
             (straddling, 0), (straddling + b"\x80", 1))
    for i, (data, count) in enumerate(cases):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(data)
        assert text_sources.undecodable_bytes(str(path)) == count, data[-8:]


def test_random_bytes_in_a_text_corpus_are_refused_naming_the_file_and_count(tmp_path):
    files = _corpus(tmp_path / "corpus", noise=bytes([0xff, 0xfe, 0x80]))
    bad = os.path.join(str(tmp_path / "corpus"), "part1.txt")
    proc = run_binary("prepare_data.py", f"--config={TEXT_FILES}", f"--config.data.files={files}",
                      f"--config.data.data_dir={tmp_path / 'data'}")
    assert_usage_error(proc, f"{bad} holds 3 bytes that are not UTF-8, more than data.max_decode_errors=0")
    written = [name for _, _, names in os.walk(tmp_path / "data") for name in names]
    assert not [name for name in written if ".array_record" in name or name.endswith(".json")], written


def test_undecodable_bytes_within_the_threshold_are_reported_per_file(tmp_path, capsys):
    files = _corpus(tmp_path / "corpus", noise=b"\xff\xff")
    data = datasets.load(_text_config(tmp_path / "data", files, max_decode_errors=2))
    out = capsys.readouterr().out
    report = [line for line in out.splitlines() if "not UTF-8" in line]
    assert report == [f"text_files: bytes that are not UTF-8, read as U+FFFD: "
                      f"{os.path.join(str(tmp_path / 'corpus'), 'part1.txt')} 2"], out
    assert len(data.sources["train"]) > 0


def test_non_utf8_bytes_in_sft_jsonl_are_refused_naming_the_file(tmp_path):
    tokenizer = write_tokenizer(str(tmp_path / "tok"))
    path = write_jsonl(str(tmp_path / "pairs.jsonl"), records(6))
    with open(path, "ab") as f:
        f.write(b'{"prompt": "rev \xc3\x28", "response": "x"}\n')  # \xc3 opens a pair that \x28 ends.
    cfg = config_base.resolve(load_config(data__files=path, data__tokenizer_path=tokenizer,
                                          data__data_dir=str(tmp_path / "d"))).data
    with pytest.raises(DataError, match="^[^\n]*pairs.jsonl holds 1 bytes that are not UTF-8[^\n]*$"):
        sft_builder.prepare_sft(cfg)
    sft_builder.prepare_sft(cfg.replace(max_decode_errors=1))


def test_bpe_that_trains_fewer_ids_than_n_is_refused_naming_the_ids_it_has(tmp_path):
    files = _corpus(tmp_path / "corpus")
    common = (f"--config={TEXT_FILES}", f"--config.data.files={files}",
              f"--config.data.data_dir={tmp_path / 'd'}", "--config.data.num_proc=1",
              "--config.data.document_per=line", "--config.data.length=32")
    proc = run_binary("prepare_data.py", *common, "--config.data.tokenizer=bpe:100000",
                      "--config.data.vocab_size=100000")
    assert_usage_error(proc, "tokenizer bpe:100000: the BPE trained on the corpus (its text holds no more "
                             "merges) has ")
    trained = int(proc.stderr.split(" has ")[1].split(" ids")[0])
    assert 259 < trained < 100000
    assert f"--config.data.tokenizer=bpe:{trained} --config.data.vocab_size={trained}" in proc.stderr
    proc = run_binary("prepare_data.py", *common, f"--config.data.tokenizer=bpe:{trained}",
                      f"--config.data.vocab_size={trained}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"tokenizer bpe:{trained} (V={trained})" in proc.stdout, proc.stdout


def test_an_edit_that_keeps_size_and_mtime_is_seen_as_a_change(tmp_path, monkeypatch):
    files = _corpus(tmp_path / "corpus")
    cfg = _text_config(tmp_path / "data", files)
    datasets.load(cfg)
    # Untouched files are recognised by their stamp alone: nothing is hashed again.
    real_digest = text_sources._digest
    monkeypatch.setattr(text_sources, "_digest", lambda path: pytest.fail(f"{path} was hashed again"))
    datasets.load(cfg)
    monkeypatch.setattr(text_sources, "_digest", real_digest)
    # A file rewritten with the same bytes keeps its digest: still the same corpus.
    part0 = tmp_path / "corpus" / "part0.txt"
    part0.write_bytes(part0.read_bytes())
    datasets.load(cfg)
    # One letter changed, size and mtime put back.
    stat = os.stat(part0)
    text = part0.read_bytes()
    part0.write_bytes(text.replace(b"cat", b"cot", 1))
    os.utime(part0, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(part0).st_size, os.stat(part0).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(DataError, match="changed since"):
        datasets.load(cfg)


def test_sources_json_records_each_files_digest(tmp_path):
    files = _corpus(tmp_path / "corpus")
    data = datasets.load(_text_config(tmp_path / "data", files))
    with open(os.path.join(data.directory, "sources.json")) as f:
        recorded = json.load(f)["files"]
    assert [r[0] for r in recorded] == ["part0.txt", "part1.txt"]
    assert all(len(r) == 5 and len(r[4]) == 64 for r in recorded)
