"""Tests of the sample metrics: Markov-chain scores, sample entropy, the Flax GPT-2 and gen-PPL."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from proseco_jax.evaluation import gpt2, text_metrics
from proseco_jax.evaluation.markov_metrics import (
    chain_entropy_per_token,
    load_chain_npz,
    markov_metrics,
    sample_entropy,
)


def _random_chain(seed: int, vocab: int = 12, successors: int = 3, alpha: float = 0.7):
    """A sparse chain: each token has `successors` allowed next tokens with Dirichlet probabilities."""
    rng = np.random.default_rng(seed)
    initial = rng.dirichlet(np.full(vocab, alpha))
    transition = np.zeros((vocab, vocab))
    for token in range(vocab):
        allowed = rng.choice(vocab, size=successors, replace=False)
        transition[token, allowed] = rng.dirichlet(np.full(successors, alpha))
    return initial, transition


def _sample_chain(seed: int, initial, transition, num: int, length: int) -> np.ndarray:
    """int [num, length] sequences drawn by Gumbel-max, which never picks a zero-probability token."""
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore"):
        log_initial, log_transition = np.log(initial), np.log(transition)
    tokens = np.zeros((num, length), dtype=np.int64)
    tokens[:, 0] = np.argmax(log_initial + rng.gumbel(size=(num, len(initial))), axis=1)
    for i in range(1, length):
        logits = log_transition[tokens[:, i - 1]] + rng.gumbel(size=(num, len(initial)))
        tokens[:, i] = np.argmax(logits, axis=1)
    return tokens


def _log_probs(tokens: np.ndarray, initial, transition) -> np.ndarray:
    """float [N, L]: log pi(x_0), then log T(x_{i-1}, x_i)."""
    with np.errstate(divide="ignore"):
        first = np.log(initial[tokens[:, :1]])
        steps = np.log(transition[tokens[:, :-1], tokens[:, 1:]])
    return np.concatenate([first, steps], axis=1)


def test_chain_nll_of_chain_samples_matches_chain_entropy_within_three_standard_errors():
    initial, transition = _random_chain(0)
    num, length = 3000, 12
    tokens = _sample_chain(1, initial, transition, num, length)
    metrics = markov_metrics(tokens, initial, transition)
    per_sample = -_log_probs(tokens, initial, transition).mean(axis=1)
    standard_error = per_sample.std(ddof=1) / math.sqrt(num)
    expected = chain_entropy_per_token(initial, transition, length)
    assert abs(metrics["chain_nll"] - expected) < 3 * standard_error
    assert metrics["chain_nll"] == pytest.approx(per_sample.mean(), rel=1e-12)
    assert metrics["chain_ppl"] == pytest.approx(math.exp(metrics["chain_nll"]))
    assert metrics["transition_error"] == 0.0
    assert metrics["validity"] == 1.0


def test_chain_entropy_per_token_of_deterministic_chain_is_initial_entropy_over_length():
    initial = np.array([0.5, 0.25, 0.25])
    transition = np.eye(3)[[1, 2, 0]]  # one successor each: transitions carry no entropy
    entropy_initial = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert chain_entropy_per_token(initial, transition, 1) == pytest.approx(entropy_initial)
    assert chain_entropy_per_token(initial, transition, 4) == pytest.approx(entropy_initial / 4)


def test_one_forbidden_transition_is_counted_exactly_and_left_out_of_the_nll():
    initial, transition = _random_chain(2)
    num, length = 5, 9
    tokens = _sample_chain(3, initial, transition, num, length)
    # Replace the last token of sample 2 by a forbidden successor: exactly one bad transition.
    tokens[2, -1] = int(np.flatnonzero(transition[tokens[2, -2]] == 0)[0])
    metrics = markov_metrics(tokens, initial, transition)
    assert metrics["transition_error"] == pytest.approx(1 / (num * (length - 1)))
    alone = markov_metrics(tokens[2:3], initial, transition)
    assert alone["transition_error"] == pytest.approx(1 / (length - 1))
    assert alone["validity"] == 0.0
    assert metrics["validity"] == pytest.approx((num - 1) / num)
    log_probs = _log_probs(tokens, initial, transition)
    finite = np.isfinite(log_probs)
    assert finite.sum() == num * length - 1
    assert metrics["chain_nll"] == pytest.approx(-log_probs[finite].mean(), rel=1e-12)


def test_sample_entropy_matches_hand_computation():
    tokens = np.array([[0, 0, 1, 2], [3, 3, 3, 3], [7, 5, 7, 5]])
    first = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    np.testing.assert_allclose(sample_entropy(tokens), [first, 0.0, math.log(2)], atol=1e-12)
    initial = np.full(8, 1 / 8)
    transition = np.full((8, 8), 1 / 8)
    entropy = markov_metrics(tokens, initial, transition)["entropy"]
    assert entropy == pytest.approx((first + math.log(2)) / 3)
    # Ragged samples and ids far beyond any chain's vocabulary (text tokenizers).
    ragged = text_metrics.unigram_entropy([[0, 0, 1, 2], [50000, 50256]])
    assert ragged == pytest.approx((first + math.log(2)) / 2)


@pytest.mark.parametrize("bad", [-1, 12])
def test_out_of_vocabulary_ids_raise(bad):
    initial, transition = _random_chain(0)
    tokens = _sample_chain(0, initial, transition, 2, 5)
    tokens[1, 3] = bad
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        markov_metrics(tokens, initial, transition)


def test_malformed_tokens_raise():
    initial, transition = _random_chain(0)
    with pytest.raises(ValueError, match="shape"):
        markov_metrics(np.zeros(5, dtype=np.int32), initial, transition)
    with pytest.raises(ValueError, match="integers"):
        markov_metrics(np.zeros((2, 5)), initial, transition)


def test_load_chain_npz_round_trips_and_rejects_bad_files(tmp_path):
    initial, transition = _random_chain(4)
    good = tmp_path / "chain.npz"
    np.savez(good, initial=initial, transition=transition)
    loaded_initial, loaded_transition = load_chain_npz(good)
    np.testing.assert_array_equal(loaded_initial, initial)
    np.testing.assert_array_equal(loaded_transition, transition)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_chain_npz(tmp_path / "absent.npz")
    np.savez(tmp_path / "no_initial.npz", transition=transition)
    with pytest.raises(ValueError, match="lacks array"):
        load_chain_npz(tmp_path / "no_initial.npz")
    np.savez(tmp_path / "bad_rows.npz", initial=initial, transition=2 * transition)
    with pytest.raises(ValueError, match="sums to"):
        load_chain_npz(tmp_path / "bad_rows.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable"):
        load_chain_npz(tmp_path / "text.npz")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 saved in Hugging Face format; returns (directory, torch model)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=99, eos_token_id=99
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # weights far from the tiny default init, so that a mismatch would show
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


def test_flax_gpt2_matches_torch_logits_and_hidden_states(tiny_gpt2):
    torch = pytest.importorskip("torch")
    directory, torch_model = tiny_gpt2
    module, params, config = gpt2.load_gpt2(directory)
    assert (config.n_layer, config.n_embd, config.vocab_size, config.eos_token_id) == (2, 32, 100, 99)
    ids = np.random.default_rng(0).integers(0, 100, size=(3, 20))
    mask = np.ones_like(ids)
    mask[1, 14:] = 0  # right padding
    with torch.no_grad():
        out = torch_model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits = np.asarray(gpt2.apply_fn(module)(params, ids, mask))
    hidden = np.asarray(gpt2.apply_fn(module, return_hidden=True)(params, ids, mask))
    real = mask.astype(bool)
    assert np.abs(out.logits.numpy()).max() > 1.0
    assert np.abs(logits[real] - out.logits.numpy()[real]).max() < 1e-4
    assert np.abs(hidden[real] - out.hidden_states[-1].numpy()[real]).max() < 1e-4
    features = text_metrics.last_token_features(
        [ids[0], ids[1, :14]], gpt2.apply_fn(module, True), params, 64
    )
    np.testing.assert_allclose(features, out.hidden_states[-1].numpy()[[0, 1], [19, 13]], atol=1e-4)


class _SpaceTokenizer:
    """Text of space-separated integers -> those integers."""

    def encode(self, text: str) -> list[int]:
        return [int(word) for word in text.split()]


def test_generative_perplexity_equals_exp_of_torch_mean_nll(tiny_gpt2):
    torch = pytest.importorskip("torch")
    directory, torch_model = tiny_gpt2
    module, params, _ = gpt2.load_gpt2(directory)
    rng = np.random.default_rng(1)
    eos, context = 99, 16
    sequences = [rng.integers(0, 99, size=n) for n in (40, 23, 7, 1, 16)]
    sequences[0][[5, 9]] = eos  # the second EOS of this chunk is not scored
    sequences[1][20] = eos
    texts = [" ".join(str(t) for t in seq) for seq in sequences]
    total, count = 0.0, 0
    for seq in sequences:  # MDLM's rule, chunk by chunk, through PyTorch
        for start in range(0, len(seq), context):
            chunk = torch.tensor(seq[start : start + context])[None]
            with torch.no_grad():
                logp = torch.log_softmax(torch_model(chunk).logits[0, :-1].double(), dim=-1)
            nll = -logp.gather(-1, chunk[0, 1:, None])[:, 0]
            is_eos = chunk[0] == eos
            keep = (~is_eos | (torch.cumsum(is_eos, 0) == 1))[1:]
            total += float(nll[keep].sum())
            count += int(keep.sum())
    assert count == (15 + 15 + 7 - 1) + (15 + 6) + 6 + 0 + 15  # no chunk start, nor a second EOS
    gen_ppl = text_metrics.generative_perplexity(
        texts, _SpaceTokenizer(), gpt2.apply_fn(module), params, context, eos_token_id=eos, batch_size=4
    )
    assert gen_ppl == pytest.approx(math.exp(total / count), rel=1e-5)
    truncated = text_metrics.generative_perplexity(
        texts, _SpaceTokenizer(), gpt2.apply_fn(module), params, context, eos, max_length=3
    )
    assert truncated != pytest.approx(gen_ppl)


def test_load_gpt2_reads_hub_names_mask_buffers_and_shards(tiny_gpt2, tmp_path):
    import jax
    from safetensors.numpy import load_file, save_file

    directory, _ = tiny_gpt2
    _, params, _ = gpt2.load_gpt2(directory)
    arrays = {
        k.removeprefix("transformer."): v for k, v in load_file(directory / "model.safetensors").items()
    }
    for layer in range(2):  # the causal-mask buffers of the original hub checkpoints
        arrays[f"h.{layer}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        arrays[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, np.float32)
    arrays["lm_head.weight"] = arrays["wte.weight"]
    names = sorted(arrays)
    halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: arrays[k] for k in keys}, tmp_path / shard)
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    _, sharded, _ = gpt2.load_gpt2(tmp_path)
    assert jax.tree_util.tree_structure(sharded) == jax.tree_util.tree_structure(params)
    for got, want in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)


def test_load_gpt2_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        gpt2.load_gpt2(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        gpt2.load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        gpt2.load_gpt2(tmp_path)


def test_mauve_without_its_package_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)  # makes `import mauve` fail
    with pytest.raises(ImportError, match="pip install mauve-text"):
        text_metrics.mauve_score(np.zeros((4, 3)), np.ones((4, 3)))
