"""Real text end to end: tokenizers, packing, the tfds text builders, the padding mask in the loss, and the
prepare-then-train binaries, all on small corpora the tests write (nothing is downloaded)."""

from __future__ import annotations

import glob
import json
import os
import random
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL_OVERRIDES, assert_usage_error, run_binary

from proseco_jax import config_base, diffusion, train
from proseco_jax.configlib import ConfigError
from proseco_jax.data import datasets, packing, pipeline, text_builder, tokenizers
from proseco_jax.data.errors import DataError
from proseco_jax.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_CONFIG = os.path.join(REPO, "configs", "text_files.py")
WORDS = ("the a of masked diffusion model learns to correct its own mistakes while it unmasks tokens in "
         "parallel and every step may fix earlier errors café naïve").split()


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + "." for _ in range(n)]


def _write_corpus(directory, lines_per_file=(60, 50, 40)) -> str:
    os.makedirs(directory, exist_ok=True)
    for i, n in enumerate(lines_per_file):
        with open(os.path.join(directory, f"part{i}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(_sentences(n, seed=i)) + "\n")
    return os.path.join(str(directory), "*.txt")


def _gpt2_shaped_tokenizer_json(path) -> str:
    """A byte-level BPE laid out as GPT-2's (50257 ids, <|endoftext|> = 50256) with only a few merges."""
    lib = pytest.importorskip("tokenizers")
    vocab = {c: i for i, c in enumerate(sorted(lib.pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    while len(vocab) < tokenizers.GPT2_EOS:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    tok = lib.Tokenizer(lib.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = lib.decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))
    return str(path)


def _data_config(data_dir, **overrides):
    tree = config_base.get_config()
    tree.data.data_dir = str(data_dir)
    tree.model.max_length = 256
    for k, v in {"name": "text_files", "tokenizer": "bytes", "vocab_size": 259, "length": 32, "num_proc": 1,
                 "document_per": "line", **overrides}.items():
        tree.data[k] = v
    return config_base.resolve(tree).data


def _leftovers(data_dir) -> list[str]:
    """Anything a failed preparation could have left that a later run might read."""
    return [p for p in glob.glob(os.path.join(str(data_dir), "**", "*"), recursive=True)
            if "incomplete" in p or p.endswith("dataset_info.json") or ".array_record" in p]


# --------------------------------------------------------------------------------------------- tokenizers


def test_each_tokenizer_round_trips_text(tmp_path):
    text = "the model learns. café naïve — ünïcode"
    for name in ("bytes", "gpt2"):
        path = _gpt2_shaped_tokenizer_json(tmp_path / "gpt2.json") if name == "gpt2" else ""
        tok = tokenizers.load(name, path)
        ids = tok.encode(text)
        assert tok.decode(ids) == text and max(ids) < tok.vocab_size == tokenizers.vocab_size_of(name)
        assert tok.mask_id == tok.vocab_size
        # Special ids and [MASK] are left out of the text.
        assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.mask_id]) == text
    gpt2 = tokenizers.load("gpt2", str(tmp_path / "gpt2.json"))
    assert (gpt2.vocab_size, gpt2.bos_id, gpt2.eos_id) == (50257, 50256, 50256)
    # The older layout of GPT-2 directories: vocab.json + merges.txt.
    lib = pytest.importorskip("tokenizers")
    lib.Tokenizer.from_file(str(tmp_path / "gpt2.json")).model.save(str(tmp_path))
    older = tokenizers.load("gpt2", str(tmp_path))
    assert older.encode(text) == gpt2.encode(text) and older.decode(older.encode(text)) == text
    chars = tokenizers.load("chars")
    assert chars.encode("ab z") == [0, 1, 26, 25]
    assert chars.decode(chars.encode("the cat sat")) == "the cat sat"
    assert chars.decode(chars.encode("Hello, World!")) == "hello  world " and chars.bos_id is None


def test_bpe_trains_on_the_corpus_and_reloads_from_the_recorded_files(tmp_path):
    texts = _sentences(300)
    tok = tokenizers.train_bpe("bpe:300", texts)
    assert tok.vocab_size == 300 and (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    sample = " ".join(texts[:3])
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample and len(ids) < 0.7 * len(sample.encode())  # Merges compress.
    tokenizers.record(tok, str(tmp_path))
    again = tokenizers.load_recorded(str(tmp_path))
    assert again.name == "bpe:300" and again.encode(sample) == ids


def test_unknown_tokenizer_and_bad_tokenizer_file_are_one_line_errors(tmp_path):
    for name in ("wordpiece", "bpe:12"):
        with pytest.raises(UsageError) as e:
            tokenizers.load(name)
        assert "\n" not in str(e.value)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="is not a tokenizer.json") as e:
        tokenizers.load("gpt2", str(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="must be one of"):
        _data_config(tmp_path, tokenizer="wordpiece")


def test_config_demands_the_tokenizers_vocabulary_size(tmp_path):
    with pytest.raises(ConfigError, match="set --config.data.vocab_size=512"):
        _data_config(tmp_path, tokenizer="bpe:512", vocab_size=259)
    with pytest.raises(ConfigError, match="tokenizer='chars'"):
        _data_config(tmp_path, name="text8", tokenizer="bytes")


# ---------------------------------------------------------------------------------------------- packing


def test_wrap_packing_keeps_every_token_once_framed_as_the_reference():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, rng.integers(1, 30)).astype(np.int32) for _ in range(40)]
    bos, eos, length = 98, 99, 16
    blocks = np.stack(list(packing.wrap(docs, length, bos, eos)))
    assert (blocks[:, 0] == bos).all() and (blocks[:, -1] == eos).all()
    stream = np.concatenate([np.append(d, eos) for d in docs])
    bodies = blocks[:, 1:-1].reshape(-1)
    assert len(stream) - len(bodies) < length - 2  # Only the last partial block is dropped.
    np.testing.assert_array_equal(bodies, stream[: len(bodies)])
    # Without BOS/EOS (text8's characters) the documents are plain consecutive chunks.
    plain = np.stack(list(packing.wrap(docs, length, None, None))).reshape(-1)
    np.testing.assert_array_equal(plain, np.concatenate(docs)[: len(plain)])


def test_pad_packing_truncates_and_masks_each_document():
    docs = [np.arange(1, 4, dtype=np.int32), np.arange(1, 30, dtype=np.int32), np.zeros(0, np.int32)]
    out = list(packing.pad(docs, 8, bos=90, eos=91, pad_id=92))
    np.testing.assert_array_equal(out[0][0], [90, 1, 2, 3, 91, 92, 92, 92])
    np.testing.assert_array_equal(out[0][1], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out[1][0], [90, 1, 2, 3, 4, 5, 6, 91])
    assert out[1][1].all() and out[2][1].sum() == 2


# ---------------------------------------------------------------------------------------------- builders


def _all_rows(source) -> np.ndarray:
    return np.stack([np.asarray(source[i]["tokens"]) for i in range(len(source))])


def test_text_files_rebuild_is_identical_and_keeps_every_document_once(tmp_path):
    pattern = _write_corpus(tmp_path / "corpus")
    a = datasets.load(_data_config(tmp_path / "a", files=pattern))
    b = datasets.load(_data_config(tmp_path / "b", files=pattern))
    for split in ("train", "validation"):
        np.testing.assert_array_equal(_all_rows(a.sources[split]), _all_rows(b.sources[split]))
    # The corpus, in file order, split by documents: 150 lines, the last ceil(5% * 150) = 8 held out.
    lines = [line for i in range(3) for line in _sentences((60, 50, 40)[i], seed=i)]
    recorded = json.load(open(os.path.join(a.directory, text_builder.SOURCES_JSON)))
    assert recorded["documents"] == {"train": 142, "validation": 8}
    for split, docs in (("train", lines[:142]), ("validation", lines[142:])):
        rows = _all_rows(a.sources[split])
        assert (rows[:, 0] == 256).all() and (rows[:, -1] == 257).all()
        body = rows[:, 1:-1].reshape(-1)
        stream = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 257) for d in docs])
        np.testing.assert_array_equal(body, stream[: len(body)])
        assert len(stream) - len(body) < 30
    assert a.tokenizer.name == "bytes" and np.asarray(a.sources["train"][0]["mask"]).all()
    # Opening it again reads what is there (no rebuild).
    stamp = os.path.getmtime(os.path.join(a.directory, "dataset_info.json"))
    datasets.load(_data_config(tmp_path / "a", files=pattern))
    assert os.path.getmtime(os.path.join(a.directory, "dataset_info.json")) == stamp
    # Edited sources are not silently served from the old preparation.
    with open(tmp_path / "corpus" / "part0.txt", "a") as f:
        f.write("one more line.\n")
    with pytest.raises(DataError, match="changed since"):
        datasets.load(_data_config(tmp_path / "a", files=pattern))


def test_processes_read_different_rows_of_a_text_corpus_with_its_mask(tmp_path):
    pattern = _write_corpus(tmp_path / "corpus")
    data = datasets.load(_data_config(tmp_path / "data", files=pattern, packing="pad"))
    whole = next(pipeline.train_iterator(data.sources["train"], global_batch_size=8, seed=3, process_index=0,
                                         process_count=1))
    parts = [next(pipeline.train_iterator(data.sources["train"], global_batch_size=8, seed=3, process_index=p,
                                          process_count=2)) for p in range(2)]
    assert not np.array_equal(parts[0]["tokens"], parts[1]["tokens"])
    for key in ("tokens", "mask"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    # Padding: PAD where the mask is 0, and some of it in every batch of short lines.
    tokens, mask = whole["tokens"], whole["mask"]
    assert (tokens[mask == 0] == 258).all() and (mask == 0).any() and whole["tokens"].dtype == np.int32


def test_bpe_corpus_is_the_same_tokenised_in_parallel_and_records_its_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": s, "id": i}) for i, s in enumerate(_sentences(80))))
    settings = dict(files=str(corpus), text_field="body", tokenizer="bpe:300", vocab_size=300, packing="pad")
    data, serial = (datasets.load(_data_config(tmp_path / f"d{n}", num_proc=n, **settings)) for n in (2, 1))
    for split in ("train", "validation"):
        np.testing.assert_array_equal(_all_rows(data.sources[split]), _all_rows(serial.sources[split]))
    assert os.path.exists(os.path.join(data.directory, "tokenizer.json"))
    row = data.sources["validation"][0]
    tokens = np.asarray(row["tokens"])[np.asarray(row["mask"]) == 1]
    assert data.tokenizer.decode(tokens) == _sentences(80)[-4]  # The held-out documents are the last 4.


def test_openwebtext_reads_shards_laid_out_as_the_hub_delivers_them(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    shards = tmp_path / "openwebtext" / "plain_text"
    shards.mkdir(parents=True)
    docs = [" ".join(_sentences(4, seed=i)) for i in range(12)]
    for i in range(2):
        shard = shards / f"train-0000{i}-of-00002.parquet"
        pq.write_table(pa.table({"text": docs[6 * i : 6 * i + 6]}), shard)
    gpt2 = _gpt2_shaped_tokenizer_json(tmp_path / "gpt2.json")
    cfg = _data_config(tmp_path / "data", name="owt", files=str(shards / "*.parquet"), tokenizer="gpt2",
                       tokenizer_path=gpt2, vocab_size=50257, validation_documents=3)
    data = datasets.load(cfg)
    tok = data.tokenizer
    assert tok.name == "gpt2" and os.path.exists(os.path.join(data.directory, "tokenizer.json"))
    first = np.asarray(data.sources["validation"][0]["tokens"])
    assert first[0] == first[-1] == 50256
    # Validation is the last 3 documents (the reference's train[-N:]), in shard order.
    assert docs[-3].startswith(tok.decode(first)[:20])
    # The `datasets` cache's arrow files (IPC streams) read the same documents.
    arrow_dir = tmp_path / "cache"
    arrow_dir.mkdir()
    for i in range(2):
        with pa.ipc.new_stream(str(arrow_dir / f"openwebtext-train-0000{i}-of-00002.arrow"),
                               pa.schema([("text", pa.string())])) as writer:
            writer.write_table(pa.table({"text": docs[6 * i : 6 * i + 6]}))
    again = datasets.load(_data_config(tmp_path / "data2", name="owt", files=str(arrow_dir / "*.arrow"),
                                       tokenizer="gpt2", tokenizer_path=gpt2, vocab_size=50257,
                                       validation_documents=3))
    for split in ("train", "validation"):
        np.testing.assert_array_equal(_all_rows(again.sources[split]), _all_rows(data.sources[split]))


def test_text8_is_split_90_5_5_into_plain_character_chunks(tmp_path):
    text = " ".join(_sentences(800)).lower().replace(".", "").replace("é", "e").replace("ï", "i")
    text = text[:20_000]
    with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
        z.writestr("text8", text)
    data = datasets.load(_data_config(tmp_path, name="text8", tokenizer="chars", vocab_size=27, length=64))
    chars = tokenizers.load("chars")
    bounds = {"train": (0, 18_000), "validation": (18_000, 19_000), "test": (19_000, 20_000)}
    for split, (lo, hi) in bounds.items():
        rows = _all_rows(data.sources[split])
        assert rows.shape == ((hi - lo) // 64, 64)
        assert chars.decode(rows.reshape(-1)) == text[lo : lo + rows.size]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["no_files", "smaller_than_one_block", "one_document", "bad_tokenizer_file"])
def test_bad_input_is_one_line_and_leaves_nothing_half_written(tmp_path, case):
    pattern = _write_corpus(tmp_path / "corpus", lines_per_file=(3,))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, 2")
    overrides, message = {
        "no_files": ({"files": str(tmp_path / "nowhere" / "*.txt")}, "no files match"),
        "smaller_than_one_block": ({"files": pattern, "length": 256}, "shorter than one sequence"),
        "one_document": ({"files": pattern, "document_per": "file"}, "at least 2 documents"),
        "bad_tokenizer_file": ({"files": pattern, "tokenizer": "gpt2", "vocab_size": 50257,
                                "tokenizer_path": str(bad_json)}, "is not a tokenizer.json"),
    }[case]
    with pytest.raises(DataError, match=message) as e:
        datasets.load(_data_config(tmp_path / "data", **overrides))
    assert "\n" not in str(e.value)
    assert _leftovers(tmp_path / "data") == []


def test_an_interrupted_preparation_is_started_over(tmp_path):
    pattern = _write_corpus(tmp_path / "corpus")
    cfg = _data_config(tmp_path / "data", files=pattern)
    version_dir = os.fspath(text_builder.TextFiles(data_dir=str(tmp_path / "data"),
                                                   config=text_builder.text_config(cfg)).data_dir)
    # What a killed build leaves: tfds's temporary directory with part of a split.
    stale = os.path.join(os.path.dirname(version_dir), "incomplete.ABC123_1.0.0")
    os.makedirs(stale)
    open(os.path.join(stale, "text_files-train.array_record-00000-of-00001"), "wb").write(b"partial")
    data = datasets.load(cfg)
    assert not os.path.exists(stale) and data.directory == version_dir and len(data.sources["train"]) > 0


# ------------------------------------------------------------------------------------- mask in the loss


def test_padding_never_reaches_the_loss():
    """With a per-position model, what sits under the padding mask cannot change loss or gradients."""
    vocab, mask_id = 12, 12
    params = {"table": jax.random.normal(jax.random.key(0), (vocab + 1, vocab + 1))}

    def apply_fn(p, z, sigma, dropout_rng=None):
        del sigma, dropout_rng
        return p["table"][z]

    tree = config_base.get_config()
    tree.data.vocab_size = vocab
    config = config_base.resolve(tree)
    objective = diffusion.Objective(config.diffusion, config.corrector, mask_id)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (4, 16)).astype(np.int32)
    mask = np.ones((4, 16), np.float32)
    mask[:, 10:] = 0
    junk = tokens.copy()
    junk[:, 10:] = rng.integers(0, vocab, (4, 6))

    def run(x, m, micro_batches=1):
        return train.loss_and_grads(params, jnp.asarray(x), jax.random.key(1), jnp.asarray(0),
                                    apply_fn=apply_fn, objective=objective, micro_batches=micro_batches,
                                    token_mask=None if m is None else jnp.asarray(m))

    (loss, _), grads = run(tokens, mask)
    (loss_junk, _), grads_junk = run(junk, mask)
    np.testing.assert_allclose(float(loss_junk), float(loss), rtol=1e-6)
    np.testing.assert_allclose(grads_junk["table"], grads["table"], atol=1e-6)
    (loss_unmasked, _), _ = run(junk, None)
    assert abs(float(loss_unmasked) - float(loss)) > 1e-4
    (loss_micro, _), _ = run(junk, mask, micro_batches=2)  # Every micro-batch has the same real count.
    np.testing.assert_allclose(float(loss_micro), float(loss), rtol=1e-5)


# ------------------------------------------------------------------------------------------- binaries


def test_prepare_data_then_train_on_local_text(tmp_path):
    pattern = _write_corpus(tmp_path / "corpus", lines_per_file=(200, 200))
    flags = [f"--config={TEXT_CONFIG}", f"--config.data.files={pattern}", "--config.data.document_per=line",
             f"--config.data.data_dir={tmp_path / 'data'}", "--config.data.num_proc=2",
             "--config.data.length=32", "--config.model.max_length=32", *TINY_MODEL_OVERRIDES,
             "--config.train.batch_size=8"]
    proc = run_binary("prepare_data.py", *flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "text_files is ready" in proc.stdout and "validation:" in proc.stdout
    workdir = tmp_path / "work"
    proc = run_binary("train.py", *flags, f"--workdir={workdir}", "--config.train.num_steps=3",
                      "--config.train.log_every=1", "--config.train.eval_every=3",
                      "--config.train.eval_batches=1", "--config.train.checkpoint_every=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preparing" not in proc.stdout  # Already prepared: training only read it.
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["val_bits_per_token"])
    assert all(np.isfinite(r["loss"]) for r in records)


def test_prepare_data_reports_bad_input_in_one_line(tmp_path):
    proc = run_binary("prepare_data.py", f"--config={TEXT_CONFIG}",
                      f"--config.data.files={tmp_path}/none*.txt", f"--config.data.data_dir={tmp_path}/data")
    assert_usage_error(proc, "no files match")
