"""Tests of the data layer: the Markov language, its tfds corpus, and the grain input pipelines."""

from __future__ import annotations

import itertools
import math
import os
import threading

import numpy as np
import orbax.checkpoint as ocp
import pytest

from proseco_jax.config_base import Data
from proseco_jax.data import chain as markov_chain
from proseco_jax.data import markov_builder, pipeline, sft_builder, text_builder
from proseco_jax.data.errors import DataError
from proseco_jax.errors import UsageError

V, K, L = 16, 3, 16
NUM_TRAIN, NUM_EVAL = 300, 100


def data_config(data_dir: str, **overrides) -> Data:
    fields = {
        "data_dir": data_dir,
        "vocab_size": V,
        "successors": K,
        "dirichlet_alpha": 0.5,
        "length": L,
        "seed": 0,
        "num_train": NUM_TRAIN,
        "num_eval": NUM_EVAL,
    }
    fields.update(overrides)
    return Data(**fields)


class ListSource:
    """In-memory source whose example i is the constant sequence [i] * length (so rows identify it)."""

    def __init__(self, num: int, length: int = 4):
        self._tokens = np.repeat(np.arange(num, dtype=np.int32)[:, None], length, axis=1)

    def __len__(self) -> int:
        return len(self._tokens)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"tokens": self._tokens[index]}


def ids(batch: dict[str, np.ndarray]) -> list[int]:
    return batch["tokens"][:, 0].tolist()


def epoch_ids(it, num_batches: int) -> list[int]:
    return [i for _ in range(num_batches) for i in ids(next(it))]


# ------------------------------------------------------------------------------------------ the chain


def test_chain_rows_are_distributions_with_exactly_k_successors():
    chain = markov_chain.make_chain(V, K, 0.5, seed=3)
    assert chain.initial.shape == (V,) and chain.transition.shape == (V, V)
    assert chain.transition.dtype == np.float64
    np.testing.assert_allclose(chain.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(chain.initial.sum(), 1.0, atol=1e-12)
    assert ((chain.transition > 0).sum(axis=1) == K).all()
    again = markov_chain.make_chain(V, K, 0.5, seed=3)
    np.testing.assert_array_equal(again.transition, chain.transition)
    other = markov_chain.make_chain(V, K, 0.5, seed=4)
    assert not np.array_equal(other.transition > 0, chain.transition > 0)


def test_tiny_alpha_keeps_all_k_successors():
    # Dirichlet(0.01) underflows to exact zeros often; every successor must stay reachable.
    chain = markov_chain.make_chain(32, 4, 0.01, seed=0)
    assert ((chain.transition > 0).sum(axis=1) == 4).all()


def test_make_chain_rejects_bad_settings():
    with pytest.raises(ValueError):
        markov_chain.make_chain(4, 5, 0.5, 0)
    with pytest.raises(ValueError):
        markov_chain.make_chain(4, 2, 0.0, 0)


def test_samples_use_only_allowed_transitions():
    chain = markov_chain.make_chain(V, K, 0.5, seed=1)
    x = markov_chain.sample_sequences(chain, 500, L, seed=7)
    assert x.shape == (500, L) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < V
    assert markov_chain.forbidden_count(x, chain) == 0
    assert np.isfinite(markov_chain.log_prob(chain, x)).all()
    np.testing.assert_array_equal(x, markov_chain.sample_sequences(chain, 500, L, seed=7))
    assert not np.array_equal(x, markov_chain.sample_sequences(chain, 500, L, seed=8))


def test_empirical_frequencies_approach_the_chain():
    chain = markov_chain.make_chain(8, 3, 1.0, seed=2)
    x = markov_chain.sample_sequences(chain, 4000, 32, seed=0)
    first = np.bincount(x[:, 0], minlength=8) / len(x)
    np.testing.assert_allclose(first, chain.initial, atol=0.03)
    counts = np.zeros((8, 8))
    np.add.at(counts, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1)
    seen = counts.sum(axis=1) >= 1000
    assert seen.sum() >= 4  # Enough rows with many visits for the comparison to mean something.
    empirical = counts[seen] / counts[seen].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(empirical, chain.transition[seen], atol=0.04)


def test_entropies_of_a_two_token_chain_by_hand():
    chain = markov_chain.MarkovChain(np.array([0.5, 0.5]), np.array([[0.9, 0.1], [0.5, 0.5]]))
    h0 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    ln2 = math.log(2)
    # Marginals: x0 ~ [0.5, 0.5], x1 ~ [0.5, 0.5] T = [0.7, 0.3].
    expected = (ln2 + (0.5 * h0 + 0.5 * ln2) + (0.7 * h0 + 0.3 * ln2)) / 3
    assert markov_chain.sequence_entropy_per_token(chain, 3) == pytest.approx(expected, rel=1e-12)
    assert markov_chain.sequence_entropy_per_token(chain, 1) == pytest.approx(ln2, rel=1e-12)
    # Stationary: 0.1 pi0 = 0.5 pi1, so pi = [5/6, 1/6].
    np.testing.assert_allclose(markov_chain.stationary_distribution(chain), [5 / 6, 1 / 6], atol=1e-12)
    assert markov_chain.entropy_rate(chain) == pytest.approx(5 / 6 * h0 + 1 / 6 * ln2, rel=1e-10)


def test_sequence_entropy_of_a_deterministic_chain_is_the_initial_entropy_over_length():
    # One successor each: transitions carry no entropy.
    chain = markov_chain.MarkovChain(np.array([0.5, 0.25, 0.25]), np.eye(3)[[1, 2, 0]])
    entropy_initial = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert markov_chain.sequence_entropy_per_token(chain, 1) == pytest.approx(entropy_initial)
    assert markov_chain.sequence_entropy_per_token(chain, 4) == pytest.approx(entropy_initial / 4)


def test_stationary_distribution_of_a_periodic_chain():
    chain = markov_chain.MarkovChain(np.array([1.0, 0.0]), np.array([[0.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(markov_chain.stationary_distribution(chain), [0.5, 0.5], atol=1e-12)
    assert markov_chain.entropy_rate(chain) == pytest.approx(0.0, abs=1e-12)


def test_sequence_entropy_equals_entropy_of_all_sequences_enumerated():
    chain = markov_chain.make_chain(3, 2, 1.0, seed=5)
    length = 4
    every = np.array(list(itertools.product(range(3), repeat=length)))
    p = np.exp(markov_chain.log_prob(chain, every))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    nz = p > 0
    exact = float(-(p[nz] * np.log(p[nz])).sum()) / length
    assert markov_chain.sequence_entropy_per_token(chain, length) == pytest.approx(exact, rel=1e-10)


def test_chain_file_round_trip_and_errors(tmp_path):
    chain = markov_chain.make_chain(V, K, 0.5, seed=0)
    path = tmp_path / "chain.npz"
    markov_chain.save_chain(chain, path)
    with np.load(path) as f:
        assert sorted(f.files) == ["initial", "transition"]
    for where in (path, os.fspath(path)):
        loaded = markov_chain.load_chain(where)
        assert loaded.initial.dtype == loaded.transition.dtype == np.float64
        np.testing.assert_array_equal(loaded.initial, chain.initial)
        np.testing.assert_array_equal(loaded.transition, chain.transition)
    # A chain stored in float32 is still a chain.
    np.savez(tmp_path / "f32.npz", initial=chain.initial.astype(np.float32),
             transition=chain.transition.astype(np.float32))
    np.testing.assert_allclose(markov_chain.load_chain(tmp_path / "f32.npz").transition, chain.transition,
                               atol=1e-6)
    bad_files = {
        "missing.npz": (None, "chain file not found"),
        "bad.npz": (b"not a zip file", "unreadable"),
        "single.npz": (chain.initial, "not an .npz archive"),  # an .npy file under an .npz name
        "no_initial.npz": ({"transition": chain.transition}, "lacks array"),
        "shapes.npz": ({"initial": chain.initial, "transition": chain.transition[:-1]}, "expected"),
        "negative.npz": ({"initial": -chain.initial, "transition": chain.transition}, "negative"),
        "nan.npz": ({"initial": chain.initial, "transition": chain.transition * np.nan}, "non-finite"),
        "initial.npz": ({"initial": 2 * chain.initial, "transition": chain.transition}, "initial sums to"),
        "rows.npz": ({"initial": chain.initial, "transition": 2 * chain.transition}, "probability"),
    }
    for name, (content, message) in bad_files.items():
        bad = tmp_path / name
        if isinstance(content, bytes):
            bad.write_bytes(content)
        elif isinstance(content, np.ndarray):
            with open(bad, "wb") as f:
                np.save(f, content)
        elif content is not None:
            np.savez(bad, **content)
        with pytest.raises(DataError, match=message) as info:
            markov_chain.load_chain(bad)
        assert "\n" not in str(info.value) and os.fspath(bad) in str(info.value)
    assert issubclass(DataError, UsageError) and issubclass(DataError, ValueError)


def test_chain_whose_rows_do_not_sum_to_one_is_rejected_in_one_line_naming_the_file(tmp_path):
    chain = markov_chain.make_chain(V, K, 0.5, seed=0)
    transition = chain.transition.copy()
    transition[3] *= 1.01
    path = tmp_path / "rows.npz"
    np.savez(path, initial=chain.initial, transition=transition)
    with pytest.raises(DataError) as info:
        markov_chain.load_chain(path)
    message = str(info.value)
    assert "\n" not in message and os.fspath(path) in message
    assert "transition row 3 sums to 1.010000" in message


# ------------------------------------------------------------------------------------------ the corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    data_dir = os.fspath(tmp_path_factory.mktemp("markov"))
    sources, chain_path = markov_builder.prepare_markov(data_config(data_dir))
    return data_dir, sources, chain_path


def files_and_mtimes(root: str) -> dict[str, int]:
    """{path: mtime} of the corpus files under root (the build locks, which name their holder, left out)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if not n.endswith(".lock"):
                out[p] = os.stat(p).st_mtime_ns
    return out


def test_corpus_files_splits_and_tokens(corpus):
    data_dir, sources, chain_path = corpus
    version_dir = os.path.dirname(chain_path)
    names = os.listdir(version_dir)
    assert any(n.startswith("markov_language-train.array_record") for n in names)
    assert any(n.startswith("markov_language-validation.array_record") for n in names)
    assert os.path.isfile(os.path.join(data_dir, "chain.npz"))
    assert set(sources) == {"train", "validation"}
    assert len(sources["train"]) == NUM_TRAIN and len(sources["validation"]) == NUM_EVAL

    chain = markov_chain.load_chain(chain_path)
    top = markov_chain.load_chain(os.path.join(data_dir, "chain.npz"))
    np.testing.assert_array_equal(top.transition, chain.transition)
    expected = markov_chain.make_chain(V, K, 0.5, seed=0)
    np.testing.assert_array_equal(chain.transition, expected.transition)

    example = sources["train"][0]
    assert example["tokens"].shape == (L,) and example["tokens"].dtype == np.int32
    for split in ("train", "validation"):
        tokens = np.stack([sources[split][i]["tokens"] for i in range(len(sources[split]))])
        assert markov_chain.forbidden_count(tokens, chain) == 0
    train = np.stack([sources["train"][i]["tokens"] for i in range(NUM_EVAL)])
    valid = np.stack([sources["validation"][i]["tokens"] for i in range(NUM_EVAL)])
    assert not np.array_equal(train, valid)


def test_second_prepare_is_a_no_op_and_other_configs_do_not_collide(corpus):
    data_dir, _, chain_path = corpus
    before = files_and_mtimes(data_dir)
    sources, again = markov_builder.prepare_markov(data_config(data_dir))
    assert again == chain_path
    assert files_and_mtimes(data_dir) == before
    assert len(sources["train"]) == NUM_TRAIN

    other_sources, other_path = markov_builder.prepare_markov(data_config(data_dir, seed=1, num_train=50))
    assert os.path.dirname(other_path) != os.path.dirname(chain_path)
    assert len(other_sources["train"]) == 50
    first, second = markov_chain.load_chain(chain_path), markov_chain.load_chain(other_path)
    assert not np.array_equal(first.transition, second.transition)
    # The first corpus is untouched; the top-level chain.npz now names the last prepared chain.
    top_chain = os.path.join(data_dir, "chain.npz")
    after = files_and_mtimes(data_dir)
    assert {p: after.get(p) for p in before if p != top_chain} == {
        p: t for p, t in before.items() if p != top_chain
    }
    np.testing.assert_array_equal(
        markov_chain.load_chain(os.path.join(data_dir, "chain.npz")).transition, second.transition
    )
    first_tokens = np.stack(
        [markov_builder.prepare_markov(data_config(data_dir))[0]["train"][i]["tokens"] for i in range(5)]
    )
    assert markov_chain.forbidden_count(first_tokens, first) == 0


def test_concurrent_prepare_builds_once(tmp_path):
    cfg = data_config(os.fspath(tmp_path), num_train=40, num_eval=8)
    results, errors = [], []

    def prepare():
        try:
            results.append(markov_builder.prepare_markov(cfg))
        except Exception as e:  # noqa: BLE001  (any failure of either caller is reported below)
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0][1] == results[1][1]
    assert all(len(s["train"]) == 40 for s, _ in results)
    leftovers = os.listdir(os.path.dirname(os.path.dirname(results[0][1])))
    assert [n for n in leftovers if n.startswith("incomplete")] == []


def test_unwritable_data_dir_raises_data_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(DataError):
        markov_builder.prepare_markov(data_config(os.fspath(blocker / "data")))


def test_impossible_settings_raise_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="successors"):
        markov_builder.prepare_markov(data_config(os.fspath(tmp_path), successors=V + 1))


def test_damaged_corpus_raises_data_error(tmp_path):
    cfg = data_config(os.fspath(tmp_path), num_train=20, num_eval=8)
    _, chain_path = markov_builder.prepare_markov(cfg)
    version_dir = os.path.dirname(chain_path)
    os.remove(chain_path)
    with pytest.raises(DataError, match="chain"):
        markov_builder.prepare_markov(cfg)
    for name in os.listdir(version_dir):
        if name.startswith("markov_language-train.array_record"):
            os.remove(os.path.join(version_dir, name))
    with pytest.raises(DataError) as info:
        markov_builder.prepare_markov(cfg)
    assert "\n" not in str(info.value)


def test_config_names_differ_for_every_setting():
    base = {"vocab_size": V, "successors": K, "dirichlet_alpha": 0.5, "length": L, "seed": 0}
    base.update(num_train=10, num_eval=5)
    names = {markov_builder.markov_config(Data(**base)).name}
    for field, value in [
        ("vocab_size", 17),
        ("successors", 2),
        ("dirichlet_alpha", 0.25),
        ("length", 8),
        ("seed", 1),
        ("num_train", 11),
        ("num_eval", 6),
    ]:
        names.add(markov_builder.markov_config(Data(**{**base, field: value})).name)
    assert len(names) == 8


@pytest.mark.parametrize("settings, name", [
    ({}, "v32_k3_a0p5_l64_s0_tr100000_ev2000"),
    (dict(name="text_files", files="/corpus/*.txt", tokenizer="bytes", vocab_size=259, length=32,
          document_per="line"), "bytes_wrap_l32_93e82b4befff"),
    (dict(name="owt", files="/owt/*.parquet", tokenizer="gpt2", vocab_size=50257, tokenizer_path="/tok",
          length=1024), "gpt2_wrap_l1024_6d50f0658af8"),
    (dict(name="text8", data_dir="/data", tokenizer="chars", vocab_size=27, length=256),
     "chars_wrap_l256_4d6cdc6d2e9f"),
    (dict(name="lm1b", files="/lm1b", tokenizer="bert", vocab_size=30522, packing="pad", length=128),
     "bert_pad_l128_9837fbb6f609"),
    (dict(name="sft_jsonl", files="/sft/*.jsonl", tokenizer_path="/tok", vocab_size=126336, length=512),
     "l512_7f9ca08d35af"),
])
def test_config_names_match_corpora_prepared_by_earlier_versions(settings, name):
    """A corpus is found on disk by its config name alone: a renamed setting would orphan prepared data."""
    data = Data(**settings)
    if data.name == "markov":
        cfg = markov_builder.markov_config(data)
    elif data.name == "sft_jsonl":
        cfg = sft_builder.sft_config(data)
    else:
        cfg = text_builder.text_config(data)
    assert cfg.name == name


# ------------------------------------------------------------------------------------------ pipelines


def test_train_iterator_covers_each_epoch_and_reshuffles():
    it = pipeline.train_iterator(
        ListSource(40), global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    epoch1 = epoch_ids(it, 5)
    epoch2 = epoch_ids(it, 5)
    assert sorted(epoch1) == list(range(40)) and sorted(epoch2) == list(range(40))
    assert epoch1 != epoch2 and epoch1 != list(range(40))
    batch = next(it)
    assert batch["tokens"].shape == (8, 4) and batch["tokens"].dtype == np.int32
    other = pipeline.train_iterator(
        ListSource(40), global_batch_size=8, seed=1, process_index=0, process_count=1
    )
    assert epoch_ids(other, 5) != epoch1


def test_train_iterator_shards_by_process():
    source = ListSource(50)
    single = pipeline.train_iterator(source, global_batch_size=8, seed=3, process_index=0, process_count=1)
    shards = [
        pipeline.train_iterator(source, global_batch_size=8, seed=3, process_index=p, process_count=2)
        for p in range(2)
    ]
    for _ in range(9):  # Crosses an epoch boundary (50 is not a multiple of 8).
        parts = [ids(next(s)) for s in shards]
        assert len(parts[0]) == len(parts[1]) == 4
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == ids(next(single))
    with pytest.raises(ValueError):
        pipeline.train_iterator(source, global_batch_size=6, seed=0, process_index=0, process_count=4)


def test_train_iterator_state_round_trip():
    source = ListSource(30)
    it = pipeline.train_iterator(source, global_batch_size=4, seed=5, process_index=1, process_count=2)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [ids(next(it)) for _ in range(10)]
    resumed = pipeline.train_iterator(source, global_batch_size=4, seed=5, process_index=1, process_count=2)
    resumed.set_state(state)
    assert [ids(next(resumed)) for _ in range(10)] == expected


def test_train_iterator_orbax_round_trip(tmp_path, corpus):
    _, sources, _ = corpus

    def make():
        return pipeline.train_iterator(
            sources["train"], global_batch_size=16, seed=0, process_index=0, process_count=1
        )

    it = make()
    for _ in range(7):
        next(it)
    manager = ocp.CheckpointManager(os.fspath(tmp_path / "ckpt"), item_names=("data_iter",))
    manager.save(7, args=ocp.args.Composite(data_iter=pipeline.data_iterator_checkpoint_args(it, save=True)))
    # Advancing before the save is finalised must not change what was saved.
    expected = [next(it)["tokens"] for _ in range(4)]
    manager.wait_until_finished()
    manager.close()

    manager = ocp.CheckpointManager(os.fspath(tmp_path / "ckpt"), item_names=("data_iter",))
    fresh = make()
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(data_iter=pipeline.data_iterator_checkpoint_args(fresh, save=False)),
    )["data_iter"]
    manager.close()
    for want in expected:
        got = next(restored)["tokens"]
        assert got.shape == (16, L) and got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_eval_batches_are_fixed_and_sharded(corpus):
    _, sources, _ = corpus
    source = sources["validation"]
    kw = {"global_batch_size": 8, "num_batches": 3}
    first = list(pipeline.eval_batches(source, **kw, process_index=0, process_count=1))
    second = list(pipeline.eval_batches(source, **kw, process_index=0, process_count=1))
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert a["tokens"].shape == (8, L) and a["tokens"].dtype == np.int32
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    expected = np.stack([source[i]["tokens"] for i in range(24)])
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in first]), expected)
    halves = [list(pipeline.eval_batches(source, **kw, process_index=p, process_count=2)) for p in range(2)]
    for b, whole in enumerate(first):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][b]["tokens"], halves[1][b]["tokens"]]), whole["tokens"]
        )
    with pytest.raises(DataError):
        pipeline.eval_batches(source, global_batch_size=64, num_batches=2, process_index=0, process_count=1)


def test_eval_batches_on_a_plain_source():
    batches = list(
        pipeline.eval_batches(
            ListSource(12), global_batch_size=4, num_batches=3, process_index=1, process_count=2
        )
    )
    assert [ids(b) for b in batches] == [[2, 3], [6, 7], [10, 11]]
