"""LM1B as MDLM prepares it: the release's files found by layout or glob, its sentences detokenised, the
bert-base-uncased WordPiece tokenizer, [CLS] ... [SEP] framing with per-sentence padding, and
configs/lm1b_small.py training on it; all on a tiny corpus and vocabulary the tests write in the real
formats (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import REPO, TINY_MODEL_OVERRIDES, assert_usage_error, run_binary, usage_error

from proseco_jax import config_base
from proseco_jax.data import datasets, text_builder, text_sources, tokenizers
from proseco_jax.data.errors import DataError

pytest.importorskip("tokenizers")

LM1B_CONFIG = os.path.join(REPO, "configs", "lm1b_small.py")
RELEASE = text_sources.LM1B_RELEASE
TRAIN_DIR, HELDOUT_DIR = "training-monolingual.tokenized.shuffled", "heldout-monolingual.tokenized.shuffled"
# Sentences as the release spells them: tokens separated by spaces, punctuation included.
TRAIN = [
    ["Hello , world .", "The model learns to correct its own mistakes .", "It 's a mistake , he said ."],
    ["Why ?", 'He said " hello there " ( quietly ) .', "Prices rose to $ 5 on the market ."],
]
HELDOUT = ["The market said hello .", "It 's the model , again !", "Mistakes ; corrections : here .",
           "He learns .", "A world of models ."]
WORDS = ("the a model learns to correct its own mistakes it hello world he said mistake why there quietly "
         "prices rose on market again corrections here of models").split()
LONG = " ".join(["the model learns"] * 10) + " ."


def write_bert_vocab(path) -> str:
    """A vocab.txt laid out as bert-base-uncased's: 30522 lines, [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103, then the words, single characters and fillers."""
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += dict.fromkeys(WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()$/-") + ["##s"])
    vocab += [f"[filler{i}]" for i in range(tokenizers.BERT_VOCAB - len(vocab))]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return str(path)


def write_release(root) -> str:
    """The release's layout under root: two training shards and one held-out shard."""
    release = os.path.join(str(root), RELEASE)
    for sub, names, shards in ((TRAIN_DIR, ["news.en-00001-of-00100", "news.en-00002-of-00100"], TRAIN),
                               (HELDOUT_DIR, ["news.en.heldout-00000-of-00050"], [HELDOUT])):
        os.makedirs(os.path.join(release, sub), exist_ok=True)
        for name, lines in zip(names, shards):
            with open(os.path.join(release, sub, name), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return release


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(release directory, vocab.txt) of the tiny corpus."""
    root = tmp_path_factory.mktemp("lm1b")
    return write_release(root), write_bert_vocab(root / "vocab.txt")


def data_config(data_dir, files, vocab, **overrides):
    tree = config_base.get_config()
    tree.model.max_length = 64
    values = {"name": "lm1b", "files": files, "tokenizer": "bert", "tokenizer_path": vocab,
              "vocab_size": tokenizers.BERT_VOCAB, "packing": "pad", "length": 16, "num_proc": 1,
              "data_dir": str(data_dir), **overrides}
    for k, v in values.items():
        tree.data[k] = v
    return config_base.resolve(tree).data


def all_tokens(source) -> tuple[np.ndarray, np.ndarray]:
    rows = [source[i] for i in range(len(source))]
    return np.stack([r["tokens"] for r in rows]), np.stack([r["mask"] for r in rows])


def test_detokenizer_closes_the_release_spacing_as_mdlm():
    cases = {
        "Hello , world .": "Hello, world.",
        "It 's a mistake , he said .": "It's a mistake, he said.",
        # MDLM's rule closes " ." only after a word, so the period after ")" keeps its space.
        'He said " hello there " ( quietly ) .': 'He said "hello there" (quietly) .',
        "Why ? Because !": "Why? Because!",
        "Prices rose to $ 5 and £ 3 ; see http : / / example.com / a": (
            "Prices rose to $5 and £3; see http://example.com/a"),
        "a [ b c ] d : e": "a [b c] d: e",
    }
    for release, expected in cases.items():
        assert text_sources.detokenize_lm1b(release) == expected


def test_bert_tokenizer_round_trips_a_sentence_uncased(tmp_path):
    tok = tokenizers.load("bert", write_bert_vocab(tmp_path / "vocab.txt"))
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id) == (30522, 101, 102, 0, 30522)
    sentence = "The Model learns to correct its own mistakes, quietly."
    ids = tok.encode(sentence)
    vocab = (tmp_path / "vocab.txt").read_text().splitlines()
    assert [vocab[i] for i in ids][:3] == ["the", "model", "learns"]  # Lower-cased whole words.
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.mask_id]) == sentence.lower()
    assert tok.encode("HELLO Wörld") == tok.encode("hello world")  # Uncased: accents stripped too.
    assert tok.encode("worlds") == [vocab.index("world"), vocab.index("##s")]
    tokenizers.record(tok, str(tmp_path))  # tokenizer.json next to the data, read back alone.
    os.remove(tmp_path / "vocab.txt")
    assert tokenizers.load_recorded(str(tmp_path)).encode(sentence) == ids


def test_bert_vocab_that_is_not_bert_base_uncased_is_one_line(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("[PAD]\nhello\n")
    with pytest.raises(DataError, match="is not bert-base-uncased's") as e:
        tokenizers.load("bert", str(short))
    assert "\n" not in str(e.value)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text\n")
    with pytest.raises(DataError, match="is not a WordPiece vocab.txt"):
        tokenizers.load("bert", str(binary))


def test_lm1b_files_are_told_apart_by_layout_and_by_name(corpus, tmp_path):
    release, _ = corpus
    train, heldout = text_sources.lm1b_files(release)
    assert [os.path.basename(p) for p in train] == ["news.en-00001-of-00100", "news.en-00002-of-00100"]
    assert [os.path.basename(p) for p in heldout] == ["news.en.heldout-00000-of-00050"]
    assert text_sources.lm1b_files(os.path.dirname(release)) == (train, heldout)  # The directory above.
    assert text_sources.lm1b_files(os.path.join(release, "*", "news.en*")) == (train, heldout)
    with pytest.raises(DataError, match="0 held-out file"):
        text_sources.lm1b_files(os.path.join(release, TRAIN_DIR, "*"))


def test_lm1b_builder_frames_each_detokenised_sentence_and_pads_it(corpus, tmp_path):
    release, vocab_path = corpus
    data = datasets.load(data_config(tmp_path / "data", release, vocab_path))
    tok = data.tokenizer
    vocab = open(vocab_path, encoding="utf-8").read().splitlines()
    tokens, mask = all_tokens(data.sources["train"])
    sentences = [s for shard in TRAIN for s in shard]
    assert tokens.shape == (len(sentences), 16) and len(data.sources["validation"]) == len(HELDOUT)
    # "Hello , world ." is detokenised to "Hello, world." first: the comma follows "hello" directly.
    hello = [vocab.index(w) for w in ("[CLS]", "hello", ",", "world", ".", "[SEP]")]
    np.testing.assert_array_equal(tokens[0], hello + [0] * 10)
    np.testing.assert_array_equal(mask[0], [1] * 6 + [0] * 10)
    for row, m, sentence in zip(tokens, mask, sentences):
        ids = tok.encode(text_sources.detokenize_lm1b(sentence))[:14]
        n = len(ids) + 2
        np.testing.assert_array_equal(row[:n], [101, *ids, 102])
        assert (row[n:] == 0).all() and m.sum() == n and m[:n].all()
    held, _ = all_tokens(data.sources["validation"])
    assert tok.decode(held[4]) == "a world of models."  # The held-out file, in order.


def test_lm1b_rebuild_is_identical_and_long_sentences_are_truncated(corpus, tmp_path):
    release, vocab_path = corpus
    first = datasets.load(data_config(tmp_path / "a", release, vocab_path))
    second = datasets.load(data_config(tmp_path / "b", release, vocab_path))
    for split in ("train", "validation"):
        for a, b in zip(all_tokens(first.sources[split]), all_tokens(second.sources[split])):
            np.testing.assert_array_equal(a, b)
    assert os.path.basename(os.path.dirname(first.directory)) == os.path.basename(
        os.path.dirname(second.directory))
    # A glob of the same files gives the same sequences.
    pattern = os.path.join(release, "*", "news.en*")
    globbed = datasets.load(data_config(tmp_path / "a", pattern, vocab_path))
    np.testing.assert_array_equal(all_tokens(globbed.sources["train"])[0],
                                  all_tokens(first.sources["train"])[0])
    # A sentence longer than L - 2 ids keeps its first 14 and still ends in [SEP], unpadded.
    longer = write_release(tmp_path / "long")
    with open(os.path.join(longer, TRAIN_DIR, "news.en-00003-of-00100"), "w", encoding="utf-8") as f:
        f.write(LONG + "\n")
    tokens, mask = all_tokens(datasets.load(data_config(tmp_path / "c", longer, vocab_path)).sources["train"])
    assert tokens[-1][0] == 101 and tokens[-1][-1] == 102 and mask[-1].all()
    assert first.tokenizer.decode(tokens[-1]) == " ".join((["the", "model", "learns"] * 5)[:14])


def test_lm1b_wrap_packs_sentences_into_cls_sep_blocks(corpus, tmp_path):
    release, vocab_path = corpus
    data = datasets.load(data_config(tmp_path / "data", release, vocab_path, packing="wrap"))
    tokens, mask = all_tokens(data.sources["train"])
    assert mask.all() and (tokens[:, 0] == 101).all() and (tokens[:, -1] == 102).all()
    stream = [i for s in TRAIN for sentence in s
              for i in data.tokenizer.encode(text_sources.detokenize_lm1b(sentence)) + [102]]
    np.testing.assert_array_equal(tokens[:, 1:-1].reshape(-1), stream[: tokens.shape[0] * 14])


def test_lm1b_config_resolves_to_mdlm_settings():
    spec = importlib.util.spec_from_file_location("lm1b_small", LM1B_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_base.resolve(module.get_config())
    assert (config.data.name, config.data.tokenizer, config.data.packing, config.data.length) == (
        "lm1b", "bert", "pad", 128)
    assert (config.model.num_layers, config.model.hidden_size, config.model.max_length) == (12, 768, 128)
    assert config.mask_id == 30522 and config.train.batch_size == 512 and config.train.learning_rate == 3e-4
    assert text_builder.text_config(config.data).name.startswith("bert_pad_l128_")


def test_lm1b_small_trains_two_steps_on_the_release_layout(corpus, tmp_path):
    release, vocab_path = corpus
    workdir = tmp_path / "work"
    proc = run_binary(
        "train.py", f"--config={LM1B_CONFIG}", f"--workdir={workdir}", f"--config.data.files={release}",
        f"--config.data.tokenizer_path={vocab_path}", f"--config.data.data_dir={tmp_path / 'data'}",
        "--config.data.length=16", "--config.data.num_proc=1", "--config.data.worker_count=0",
        "--config.model.max_length=16", *TINY_MODEL_OVERRIDES, "--config.model.dtype=float32",
        "--config.train.batch_size=4", "--config.train.num_steps=2", "--config.train.warmup_steps=1",
        "--config.train.log_every=1", "--config.train.eval_every=2", "--config.train.eval_batches=1",
        "--config.train.checkpoint_every=2", "--config.sampling.batch_size=4")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["step"] == 2 and np.isfinite(records[-1]["val_bits_per_token"])
    assert all(np.isfinite(r["loss"]) and r["corrector_loss"] > 0 for r in records if "loss" in r)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["name"] == "lm1b" and saved["corrector"]["upweight_errors"] is True


@pytest.mark.parametrize("case", ["no_files", "bad_vocab"])
def test_lm1b_bad_input_is_one_line_with_exit_code_2(corpus, tmp_path, case):
    release, vocab_path = corpus
    files, vocab, message = release, vocab_path, ""
    if case == "no_files":
        files, message = str(tmp_path / "nothing" / "news.en*"), "no files match"
    else:
        vocab = tmp_path / "vocab.txt"
        vocab.write_bytes(b"\xff\xfe\x00\x81 not a vocabulary\n")
        message = "is not a WordPiece vocab.txt"
    proc = usage_error("prepare_data.py", f"--config={LM1B_CONFIG}", f"--config.data.files={files}",
                       f"--config.data.tokenizer_path={vocab}", f"--config.data.data_dir={tmp_path / 'data'}",
                       "--config.data.num_proc=1")
    assert_usage_error(proc, message)
