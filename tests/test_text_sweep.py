"""The sweep and the demo on text: the scorer strategy for text (gen-PPL under an evaluator GPT-2, MDLM's
entropy, the held-out data as the reference), the text grid, the headline read in gen-PPL, the unigram
baseline of a corpus, the marked rewrites in decoded text, the corpus gatherer, and `launch/demo.py
--quick` on a few small text files with a random-init GPT-2 evaluator, end to end."""

import importlib.machinery
import json
import math
import os
import shutil
import string
import sys
import types

import numpy as np
import pytest
from conftest import REPO, assert_usage_error, run_binary
from test_evaluation import tiny_gpt2  # noqa: F401 - the random GPT-2 fixture, shared

from proseco_jax import config_base
from proseco_jax.data import tokenizers
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import grid, headline, report, sample_metrics, scoring, sweep, text_scoring

TEXT_CONFIG = os.path.join(REPO, "configs", "text_files.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT_LENGTH = 32
# A tiny text_files model: 1 layer, d=32, 32 bytes, batch 8, 6 steps with one validation at the end.
TINY_TEXT = [
    "--config.model.num_layers=1", "--config.model.hidden_size=32", "--config.model.num_heads=2",
    "--config.model.cond_dim=16", f"--config.model.max_length={TEXT_LENGTH}",
    f"--config.data.length={TEXT_LENGTH}", "--config.data.document_per=line", "--config.train.batch_size=8",
    "--config.train.num_steps=6", "--config.train.warmup_steps=1", "--config.train.log_every=3",
    "--config.train.eval_every=6", "--config.train.eval_batches=1", "--config.train.checkpoint_every=6",
]


def _write_corpus(directory) -> str:
    """Three small .txt files of 120 short lines each; returns their glob."""
    os.makedirs(directory, exist_ok=True)
    words = ["the", "module", "returns", "a", "list", "of", "strings", "for", "each", "file", "name", "path"]
    rng = np.random.default_rng(0)
    for k in range(3):
        lines = [" ".join(rng.choice(words, size=8)) + "." for _ in range(120)]
        with open(os.path.join(directory, f"part{k}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(directory, "*.txt")


def _evaluator_with_tokenizer(model_dir, out_dir) -> str:
    """The random GPT-2 (vocab 100) of `tiny_gpt2` with a character-level tokenizer.json: each printable
    character one id below 99 (others -> <unk>), so decoded text retokenizes inside its vocabulary."""
    from tokenizers import Tokenizer, models

    shutil.copytree(model_dir, out_dir)
    chars = [c for c in string.printable if c not in "\x0b\x0c"][:98]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["<unk>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    return str(out_dir)


def test_unigram_bits_of_a_corpus_with_known_frequencies_leaves_out_padding():
    # Frequencies 1/2, 1/4, 1/4: 1.5 bits per token; the padded positions (id 9) are not counted.
    source = [{"tokens": np.array([0, 0, 1, 9]), "mask": np.array([1, 1, 1, 0])},
              {"tokens": np.array([2, 0, 0, 2]), "mask": np.array([1, 1, 1, 1])},
              {"tokens": np.array([1, 9, 9, 9]), "mask": np.array([1, 0, 0, 0])}]
    bits, count = sample_metrics.unigram_bits(scoring.split_tokens(source))
    assert count == 8 and bits == pytest.approx(1.5)
    assert sample_metrics.unigram_bits(scoring.split_tokens(source, max_sequences=1)) == (
        pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)), 3)
    uniform, _ = sample_metrics.unigram_bits([np.arange(16)])
    assert uniform == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least one token"):
        sample_metrics.unigram_bits([])


def test_text_grid_is_the_papers_owt_grid_at_1024_and_smaller_for_short_sequences():
    base = config_base.Sampling()
    steps = lambda settings, family: [s.applied.steps for s in settings if s.family == family]
    full = grid.text_grid(base, 1024)
    for family in ("MDLM", "ReMDM", "ProSeCo S=1 ω=1", "ProSeCo S=2 ω=1"):
        assert steps(full, family) == [128, 256, 512, 1024]
    assert all(s.applied.corrector_every == 1 for s in full)
    assert [s.sampling.preset for s in full if s.sampling.preset] == ["max"] and len(full) == 17
    short = grid.text_grid(base, 128)
    assert steps(short, "MDLM") == [16, 32, 64, 128] and steps(short, "ReMDM") == [16, 64]
    assert steps(short, "ProSeCo S=2 ω=1") == [16, 32, 64] and len(short) == 13
    quick = grid.text_grid(base, 128, quick=True)
    assert [(s.sampling.sampler, s.applied.steps) for s in quick] == [
        ("mdlm", 16), ("mdlm", 64), ("proseco", 16), ("proseco", 64), ("proseco", 64)]
    assert {s.family for s in grid.mdlm_grid(base, 128, kind="text")} == {"MDLM (MDLM-trained)"}


def _row(sampler, steps, nfe, ppl, entropy=4.0, corrector_steps=0, preset=""):
    return {"sampler": sampler, "family": sampler, "steps": steps, "corrector_steps": corrector_steps,
            "corrector_every": 1, "preset": preset, "nfe": nfe, "gen_ppl": ppl, "entropy": entropy,
            "seconds": 1.0, "rewritten": 0.0}


def test_headline_in_gen_ppl_terms():
    rows = [_row("mdlm", 128, 128.0, 60.0), _row("mdlm", 1024, 1000.0, 50.0),
            _row("proseco", 128, 256.0, 40.0, 3.9, 1), _row("proseco", 64, 320.0, 30.0, 3.0, 4, "max")]
    head = headline.claims(rows, {"gen_ppl": 15.0, "entropy": 4.0}, quality="gen_ppl")
    assert head["baseline_best"]["gen_ppl"] == 50.0 and head["method_match"]["nfe"] == 256.0
    assert head["nfe_ratio"] == pytest.approx(1000.0 / 256.0) and not head["nfe_ratio_met"]
    assert head["max_gen_ppl_ratio"] == pytest.approx(30.0 / 50.0) and head["max_gen_ppl_ratio_met"]
    assert head["max_entropy_relative"] == pytest.approx(-0.25) and not head["max_entropy_met"]
    lines = headline.lines(head)
    assert lines[0].startswith("mdlm best: gen-PPL 50.0000") and "gen-PPL 30.0000" in lines[2]
    no_ppl = [{k: v for k, v in r.items() if k != "gen_ppl"} for r in rows]
    assert "with 'gen_ppl'" in headline.claims(no_ppl, {"entropy": 4.0}, quality="gen_ppl")["note"]


def test_text_scorer_marks_rewrites_in_decoded_characters_and_counts_them():
    scorer = text_scoring.TextScorer(tokenizers.ByteTokenizer(), None, TEXT_LENGTH)
    m = 259  # [MASK] of the bytes tokenizer
    a, b, x, sp, nl = (ord(c) for c in "abx \n")
    history = np.array([[m, m, m, m, m], [a, m, x, m, m], [a, b, x, sp, m], [a, b, b, nl, 257]])  # [T, L]
    assert report.marked_text(history, m, scorer, None) == "ab[x→b][␣→⏎]⟨eos⟩"
    assert scorer.rewrites(history[:, None], m) == {"rewritten": 2.0}
    assert scorer.texts(history[-1:]) == ["abb\n"]
    row = scorer.score(np.array([[a, a, b, b], [a, a, a, a]]))
    assert row == {"entropy": pytest.approx(math.log(2) / 2), "num_samples": 2}  # no evaluator: no gen-PPL
    table = report.format_table([dict(_row("mdlm", 8, 8.0, 12.5), entropy=row["entropy"])], None, scorer)
    assert "gen-PPL" in table and "12.50" in table and "MAUVE" not in table


def test_text_scorer_scores_gen_ppl_of_the_retokenized_text_like_score_text(tiny_gpt2, tmp_path):  # noqa: F811
    evaluator_dir = _evaluator_with_tokenizer(tiny_gpt2[0], tmp_path / "evaluator")
    byte_tokens = tokenizers.ByteTokenizer()
    tokens = np.array([byte_tokens.encode("the module returns a list")[:20],
                       byte_tokens.encode("each file name path for str")[:20]])
    scorer = text_scoring.text_scorer(byte_tokens, evaluator_dir, TEXT_LENGTH)
    data = scorer.reference(tokens)
    row = scorer.score(tokens[::-1])
    records = [{"text": text} for text in scorer.texts(tokens)]
    expected = text_scoring.score_text(records, evaluator_dir, TEXT_LENGTH)
    assert data["gen_ppl"] == pytest.approx(expected["gen_ppl"], rel=1e-6) and 1.0 < data["gen_ppl"] < 1e4
    assert row["gen_ppl"] == pytest.approx(data["gen_ppl"], rel=1e-5)  # the same texts, other order
    assert row["scored_tokens"] == 2 * 19 and row["entropy"] > 0
    with pytest.raises(UsageError, match="no tokenizer.json"):
        text_scoring.text_scorer(tokenizers.ByteTokenizer(), str(tiny_gpt2[0]), TEXT_LENGTH)


def test_text_scorer_adds_mauve_against_the_data_features_when_mauve_is_installed(tiny_gpt2,  # noqa: F811
                                                                                     tmp_path, monkeypatch):
    calls = []

    def compute_mauve(p_features, q_features):  # a stand-in: records what it is given
        calls.append((p_features.shape, q_features.shape))
        return types.SimpleNamespace(mauve=0.25)

    fake = types.ModuleType("mauve")
    fake.__spec__ = importlib.machinery.ModuleSpec("mauve", None)
    fake.compute_mauve = compute_mauve
    monkeypatch.setitem(sys.modules, "mauve", fake)
    scorer = text_scoring.text_scorer(tokenizers.ByteTokenizer(), _evaluator_with_tokenizer(
        tiny_gpt2[0], tmp_path / "evaluator"), TEXT_LENGTH)
    texts = ("the path", "a module", "for each")  # 8 bytes each
    tokens = np.array([tokenizers.ByteTokenizer().encode(text) for text in texts])
    assert "mauve" not in scorer.reference(tokens)
    row = scorer.score(tokens[:2])
    assert row["mauve"] == 0.25 and calls == [((3, 32), (2, 32))]  # data p [3, D], samples q [2, D]


def test_text_sweep_requests_are_checked_before_any_work(tmp_path):
    text = config_base.resolve({"data": {"name": "text_files", "vocab_size": 259, "files": "x"}})
    with pytest.raises(UsageError, match="pass --evaluator_dir"):
        sweep.check_request(text, 8, need_evaluator=True)
    with pytest.raises(UsageError, match="is not a directory"):
        sweep.check_request(text, 8, str(tmp_path / "absent"))
    sweep.check_request(text, 8)  # the demo scores entropy alone without an evaluator
    with pytest.raises(UsageError, match="scored against its chain"):
        sweep.check_request(config_base.resolve({}), 8, str(tmp_path))
    proc = run_binary("sweep.py", f"--config={TEXT_CONFIG}", f"--workdir={tmp_path}", "--config.data.files=x")
    assert_usage_error(proc, "pass --evaluator_dir")


def test_gather_stdlib_docs_writes_one_file_of_docstrings_per_module(tmp_path):
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "alpha.py").write_text('"""Alpha module."""\n\ndef f():\n    """Does f.\n\n    More."""\n')
    (lib / "pkg" / "__init__.py").write_text('"""The package."""\nclass C:\n    """A class."""\n')
    (lib / "test" / "test_x.py").write_text('"""A test suite."""\n')
    (lib / "broken.py").write_text('"""Broken."""\ndef (:\n')
    proc = run_binary("gather_stdlib_docs.py", f"--output_dir={tmp_path / 'out'}", f"--stdlib={lib}",
                      "--min_chars=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["alpha.txt", "pkg.txt"]
    assert (tmp_path / "out" / "alpha.txt").read_text() == "Alpha module.\n\nDoes f.\n\nMore.\n"
    assert (tmp_path / "out" / "pkg.txt").read_text() == "The package.\n\nA class.\n"
    assert "wrote 2 files" in proc.stdout
    empty = run_binary("gather_stdlib_docs.py", f"--output_dir={tmp_path / 'o2'}", f"--stdlib={lib}",
                       "--min_chars=1000")
    assert_usage_error(empty, "1000 characters of docstrings")


@pytest.mark.slow
def test_quick_text_demo_with_an_evaluator_scores_every_row_and_prints_rewrites_and_bits(tiny_gpt2,  # noqa: F811
                                                                                        tmp_path):
    files = _write_corpus(tmp_path / "corpus")
    evaluator_dir = _evaluator_with_tokenizer(tiny_gpt2[0], tmp_path / "evaluator")
    workdir = tmp_path / "demo"
    proc = run_binary("demo.py", f"--config={TEXT_CONFIG}", f"--config.data.files={files}",
                      f"--config.data.data_dir={tmp_path / 'data'}", *TINY_TEXT, f"--workdir={workdir}",
                      "--quick", "--num_samples=4", "--show=2", f"--evaluator_dir={evaluator_dir}",
                      timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["scorer"] == "text" and results["quality"] == "gen_ppl"
    assert results["model"]["step"] == 6  # the command line's num_steps, not --quick's 60
    assert [(r["sampler"], r["steps"]) for r in results["rows"]] == [
        ("mdlm", 4), ("mdlm", 16), ("proseco", 4), ("proseco", 16), ("proseco", 64)]
    for row in results["rows"]:
        assert 1.0 < row["gen_ppl"] < 1e4 and row["entropy"] > 0 and row["num_samples"] == 4
        assert row["nfe"] == pytest.approx(row["predictor_nfe"] + row["corrector_nfe"])
    data = results["data"]
    assert data["num_samples"] == 4 and 1.0 < data["gen_ppl"] < 1e4 and data["entropy"] > 0
    # Only the 12 words' letters, space, '.', newline and BOS/EOS occur: well below 8 bits per byte.
    assert 2.0 < data["unigram_bits_per_token"] < math.log2(30)
    assert results["headline"]["quality"] == "gen_ppl" and "baseline_best" in results["headline"]
    assert (workdir / "quality_vs_nfe.png").read_bytes()[:8] == PNG_MAGIC
    out = proc.stdout
    assert "MDLM samples (T=16" in out and "ProSeCo samples (T=16, S=2, ω=1): [a→b] was decoded" in out
    assert out.count("tokens rewritten | NFE") == 2
    assert f"unigram entropy of its training tokens {data['unigram_bits_per_token']:.4f}" in out
    assert "mdlm best: gen-PPL" in out
