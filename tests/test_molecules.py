"""Molecules: the SMILES tokenizer, the QM9 builder, the chemistry metrics and the label-conditioned DiT."""

import csv
import importlib.util
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL_OVERRIDES, run_binary

pytest.importorskip("rdkit")

from proseco_jax import config_base  # noqa: E402
from proseco_jax.configlib import ConfigError  # noqa: E402
from proseco_jax.data import datasets, qm9_builder, smiles, tokenizers  # noqa: E402
from proseco_jax.data.errors import DataError  # noqa: E402
from proseco_jax.evaluation import chemistry  # noqa: E402
from proseco_jax.models import dit, llada  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "qm9_sample.txt")
CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "qm9.py")


def sample_smiles():
    with open(SAMPLE, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def test_smiles_tokenizer_round_trips_the_qm9_sample_with_stable_ids(tmp_path):
    molecules = sample_smiles()
    assert len(molecules) == 500
    tok = smiles.SmilesTokenizer.build(molecules, vocab_size=34)
    # First-seen order over the committed sample: a change here changes every trained model's ids.
    assert tok.tokens == ("C", "N", "(", "=", "O", ")", "1", "#", "2", "3", "4", "F")
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size, tok.mask_id) == (0, 1, 2, 34, 34)
    np.testing.assert_array_equal(tok.encode_padded("NC(=O)CCO", 12), [0, 5, 4, 6, 7, 8, 9, 4, 4, 8, 1, 2])
    for s in molecules:
        ids = tok.encode_padded(s, 32)
        assert ids is not None and ids.dtype == np.int32 and ids.shape == (32,)
        assert tok.decode(ids) == s
    assert tok.encode_padded("CCCCCCCCC", 10) is None  # 9 tokens + BOS + EOS do not fit.
    assert tok.decode([0, 4, 4, 1, 4, 2, 34, 33]) == "CCC"  # Specials, [MASK] and spare ids dropped.
    tokenizers.record(tok, str(tmp_path))
    again = tokenizers.load_recorded(str(tmp_path))
    assert again.tokens == tok.tokens and again.vocab_size == 34
    with pytest.raises(DataError, match="set --config.data.vocab_size="):
        smiles.SmilesTokenizer.build(molecules, vocab_size=10)


def test_reference_order_maps_the_authors_ids_onto_ours():
    tok = smiles.SmilesTokenizer(["C", "O", "N"], vocab_size=8)  # Id 7 is spare, [MASK] = 8.
    order = tok.reference_order(["N", "C", "O", "F"])  # Their ids 5..8; F is theirs only.
    # Our bos, eos, pad, unk, C, O, N, spare, [MASK] -> their 0, 1, 3, 4, 6, 7, 5, 8 (F), 2.
    np.testing.assert_array_equal(order, [0, 1, 3, 4, 6, 7, 5, 8, 2])
    assert sorted(order) == list(range(9))
    with pytest.raises(DataError, match="lacks the token"):
        tok.reference_order(["C", "O", "S", "F"])


def test_chemistry_metrics_on_hand_checked_molecules():
    samples = ["CCO", "OCC", "C1CC1", "c1ccccc1", "C(", "", "CCO", "C1CC"]
    out = chemistry.metrics(samples, {"CCO"}, "ring_count")
    # Valid: CCO, OCC (ethanol written backwards), cyclopropane, benzene, CCO; "C(", "" and an open ring not.
    assert out["num_valid"] == 5 and out["validity"] == 5 / 8
    assert out["num_unique"] == 4 and out["uniqueness"] == 4 / 5
    # Authors' rule: OCC is novel as written; on canonical forms it is ethanol, which the corpus holds.
    assert out["num_novel"] == 3 and out["num_novel_canonical"] == 2
    assert out["ring_count_valid_mean"] == pytest.approx(2 / 5)
    assert out["ring_count_novel_mean"] == pytest.approx(2 / 3) and out["ring_count_novel_q75"] == 1.0
    qed = chemistry.metrics(["c1ccccc1"], set(), "qed")
    assert qed["qed_valid_mean"] == pytest.approx(0.4426, abs=1e-3)  # Benzene's QED.
    assert chemistry.metrics([], set())["validity"] == 0.0
    assert chemistry.canonical("OCC") == "CCO" and chemistry.canonical("C(") is None


def qm9_data_config(tmp_path, files, **changes):
    config = config_base.get_config()
    config.data.update(name="qm9", tokenizer="smiles", vocab_size=34, length=24, files=str(files),
                       data_dir=str(tmp_path / "data"), **changes)
    return config_base.resolve(config).data


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Index", "SMILES"])
        writer.writerows(enumerate(rows))
    return path


def test_qm9_builder_skips_bad_rows_labels_by_percentile_and_splits_with_a_seed(tmp_path, capsys):
    good = sample_smiles()[:60]
    long_one = "C" * 30  # 30 tokens + BOS + EOS do not fit data.length=24.
    path = write_csv(tmp_path / "mols.csv", [*good[:30], "C1CC", "not a molecule", long_one, *good[30:]])
    data = datasets.load(qm9_data_config(tmp_path, path))
    printed = capsys.readouterr().out
    assert "63 SMILES read, 60 kept, 3 skipped (2 RDKit cannot parse, 1 longer than" in printed
    with open(os.path.join(data.directory, qm9_builder.MOLECULES_JSON)) as f:
        summary = json.load(f)
    assert summary["rdkit_version"] and summary["splits"] == {"train": 57, "validation": 3}

    records = [data.sources[s][i] for s in ("train", "validation") for i in range(len(data.sources[s]))]
    qed = np.array([r["qed"] for r in records])
    threshold = np.percentile(qed, 90)
    assert summary["threshold"] == pytest.approx(threshold)
    np.testing.assert_array_equal([r["label"] for r in records], (qed > threshold).astype(int))
    canonical = qm9_builder.load_canonical(data.directory)
    assert len(canonical) <= 60 and "CCCO" not in canonical  # GDB strings are stored canonical.
    assert {data.tokenizer.decode(r["tokens"]) for r in records} <= canonical
    want = qm9_builder.split_indices(60, 0.05)
    np.testing.assert_array_equal(want["validation"], qm9_builder.split_indices(60, 0.05)["validation"])
    assert sorted([*want["train"], *want["validation"]]) == list(range(60))

    rings = datasets.load(qm9_data_config(tmp_path, path, label_property="ring_count"))
    labels = [rings.sources["train"][i]["label"] for i in range(len(rings.sources["train"]))]
    ring_counts = [rings.sources["train"][i]["ring_count"] for i in range(len(rings.sources["train"]))]
    assert rings.directory != data.directory and set(labels) <= {0, 1}
    assert all(label == (r > summary_threshold(rings)) for label, r in zip(labels, ring_counts))


def summary_threshold(data):
    with open(os.path.join(data.directory, qm9_builder.MOLECULES_JSON)) as f:
        return json.load(f)["threshold"]


def test_qm9_builder_reads_jsonl_and_refuses_a_missing_column(tmp_path):
    path = tmp_path / "mols.jsonl"
    path.write_text("".join(json.dumps({"smi": s}) + "\n" for s in sample_smiles()[:20]))
    data = datasets.load(qm9_data_config(tmp_path, path, smiles_column="smi"))
    assert len(data.sources["train"]) + len(data.sources["validation"]) == 20
    with pytest.raises(DataError, match="lacks the field 'SMILES'"):
        datasets.load(qm9_data_config(tmp_path, path))


def test_qm9_corpus_of_another_rdkit_is_used_with_a_one_line_warning(tmp_path, caplog):
    path = write_csv(tmp_path / "mols.csv", sample_smiles()[:20])
    data = datasets.load(qm9_data_config(tmp_path, path))
    summary_path = os.path.join(data.directory, qm9_builder.MOLECULES_JSON)
    with open(summary_path) as f:
        summary = json.load(f)
    with open(summary_path, "w") as f:
        json.dump({**summary, "rdkit_version": "2000.01.1"}, f)
    with caplog.at_level(logging.WARNING):
        again = datasets.load(qm9_data_config(tmp_path, path))
    assert again.directory == data.directory and len(again.sources["train"]) == len(data.sources["train"])
    warnings = [r.getMessage() for r in caplog.records if "RDKit 2000.01.1" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "delete it" in warnings[0]


def test_qm9_config_needs_the_smiles_tokenizer_and_resolves_in_both_presets():
    config = config_base.get_config()
    config.data.update(name="qm9", tokenizer="bytes", vocab_size=259)
    with pytest.raises(ConfigError, match="smiles"):
        config_base.resolve(config)
    spec = importlib.util.spec_from_file_location("qm9_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    full, cpu = (config_base.resolve(module.get_config(p)) for p in ("", "cpu"))
    assert full.model.num_classes == cpu.model.num_classes == 2 and full.mask_id == 34
    assert (full.model.num_layers, full.model.hidden_size, full.train.batch_size) == (12, 768, 2048)
    assert cpu.data == full.data and cpu.train.batch_size < full.train.batch_size


def randomised(params, seed=0):
    """Random values everywhere: a fresh DiT zeroes adaLN and the output, which would hide the labels."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])


def test_labelled_dit_reads_the_no_label_row_for_none_and_labels_change_the_logits():
    cfg = dit.DiTConfig(num_classes=2)
    model = dit.DiT(cfg, vocab_size=11)
    tokens, sigma = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 11, jnp.zeros((2,))
    params = randomised(nn.unbox(model.init(jax.random.key(0), tokens, sigma)["params"]))
    assert params["label_embedding"].shape == (3, cfg.cond_dim)

    def logits(labels):
        return np.asarray(model.apply({"params": params}, tokens, sigma, labels=labels))

    np.testing.assert_array_equal(logits(None), logits(jnp.array([2, 2], jnp.int32)))
    assert np.max(np.abs(logits(jnp.array([0, 0])) - logits(jnp.array([1, 1])))) > 1e-3
    mixed = logits(jnp.array([0, 1]))
    np.testing.assert_allclose(mixed[1], logits(jnp.array([1, 1]))[1], atol=1e-6)

    plain = dit.DiT(dit.DiTConfig(), vocab_size=11)
    plain_params = plain.init(jax.random.key(0), tokens, sigma)["params"]
    assert "label_embedding" not in plain_params
    with pytest.raises(ValueError, match="num_classes = 0"):
        plain.apply({"params": plain_params}, tokens, sigma, labels=jnp.array([0, 1]))


def test_llada_refuses_label_classes():
    with pytest.raises(ConfigError, match="LLaDA has no label conditioning"):
        llada.LLaDAConfig(num_classes=2)


def test_binaries_train_a_labelled_model_sample_guided_smiles_and_score_them(tmp_path):
    """train.py on a small QM9 CSV (labels in every batch, label dropout), then sample.py with guidance and
    no --config (the workdir's recorded config), then evaluate.py's chemistry figures."""
    path = write_csv(tmp_path / "mols.csv", sample_smiles()[:200])
    workdir = str(tmp_path / "work")
    proc = run_binary("train.py", f"--config={CONFIG}:cpu", f"--workdir={workdir}", *TINY_MODEL_OVERRIDES,
                      f"--config.data.files={path}", f"--config.data.data_dir={tmp_path / 'data'}",
                      "--config.train.batch_size=8", "--config.train.num_steps=2",
                      "--config.train.eval_every=2", "--config.train.eval_batches=1",
                      "--config.train.log_every=1", "--config.train.label_dropout=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples, scores = tmp_path / "s.jsonl", tmp_path / "m.json"
    proc = run_binary("sample.py", f"--workdir={workdir}", f"--output={samples}", "--num_samples=4",
                      "--config.sampling.batch_size=4", "--config.sampling.steps=4",
                      "--config.sampling.sampler=proseco", "--config.sampling.corrector_steps=1",
                      "--config.sampling.guidance_scale=3", "--config.sampling.guidance_label=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(records) == 4 and all(r["label"] == 1 and isinstance(r["text"], str) for r in records)
    assert all(r["predictor_nfe"] % 2 == 0 and r["step_nfe"] < r["nfe"] for r in records)  # two models
    proc = run_binary("evaluate.py", f"--workdir={workdir}", f"--samples={samples}", f"--output={scores}",
                      "--num_data=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(scores.read_text())
    assert metrics["num_samples"] == 4 and 0 <= metrics["validity"] <= 1
    assert metrics["data"]["validity"] == 1.0 and "qed_valid_mean" in metrics["data"]
