"""Tests of the sample metrics (Markov-chain scores, sample entropy, the Flax GPT-2 and gen-PPL), of the
scoring of a samples file (`evaluation/scoring.py`) and of `launch/evaluate.py`, which calls it."""

from __future__ import annotations

import json
import math
import os
import re
import sys

import numpy as np
import pytest
from conftest import CONFIG, LENGTH, VOCAB, assert_usage_error, run_binary

from proseco_jax import fileio, samples_io
from proseco_jax.data import chain as markov_chain
from proseco_jax.errors import UsageError
from proseco_jax.evaluation import gpt2, markov_scoring, sample_metrics, text_metrics, text_scoring


def _random_chain(seed: int) -> markov_chain.MarkovChain:
    """A sparse chain over 12 tokens: each has 3 allowed next tokens with Dirichlet(0.7) probabilities."""
    return markov_chain.make_chain(12, 3, 0.7, seed)


def _log_probs(tokens: np.ndarray, chain: markov_chain.MarkovChain) -> np.ndarray:
    """float [N, L]: log pi(x_0), then log T(x_{i-1}, x_i)."""
    with np.errstate(divide="ignore"):
        first = np.log(chain.initial[tokens[:, :1]])
        steps = np.log(chain.transition[tokens[:, :-1], tokens[:, 1:]])
    return np.concatenate([first, steps], axis=1)


def test_chain_nll_of_chain_samples_matches_chain_entropy_within_three_standard_errors():
    chain = _random_chain(0)
    num, length = 3000, 12
    tokens = markov_chain.sample_sequences(chain, num, length, seed=1)
    metrics = markov_scoring.markov_metrics(tokens, chain)
    per_sample = -_log_probs(tokens, chain).mean(axis=1)
    standard_error = per_sample.std(ddof=1) / math.sqrt(num)
    expected = markov_chain.sequence_entropy_per_token(chain, length)
    assert abs(metrics["chain_nll"] - expected) < 3 * standard_error
    assert metrics["chain_nll"] == pytest.approx(per_sample.mean(), rel=1e-12)
    assert metrics["chain_ppl"] == pytest.approx(math.exp(metrics["chain_nll"]))
    assert metrics["transition_error"] == 0.0
    assert metrics["validity"] == 1.0


def test_one_forbidden_transition_is_counted_exactly_and_left_out_of_the_nll():
    chain = _random_chain(2)
    num, length = 5, 9
    tokens = markov_chain.sample_sequences(chain, num, length, seed=3)
    # Replace the last token of sample 2 by a forbidden successor: exactly one bad transition.
    tokens[2, -1] = int(np.flatnonzero(chain.transition[tokens[2, -2]] == 0)[0])
    metrics = markov_scoring.markov_metrics(tokens, chain)
    assert metrics["transition_error"] == pytest.approx(1 / (num * (length - 1)))
    assert markov_chain.forbidden_count(tokens, chain) == 1
    alone = markov_scoring.markov_metrics(tokens[2:3], chain)
    assert alone["transition_error"] == pytest.approx(1 / (length - 1))
    assert alone["validity"] == 0.0
    assert metrics["validity"] == pytest.approx((num - 1) / num)
    log_probs = _log_probs(tokens, chain)
    finite = np.isfinite(log_probs)
    assert finite.sum() == num * length - 1
    assert metrics["chain_nll"] == pytest.approx(-log_probs[finite].mean(), rel=1e-12)


def test_forbidden_count_takes_a_chain_or_its_transition_and_ids_outside_the_chain_are_forbidden():
    chain = _random_chain(5)
    tokens = markov_chain.sample_sequences(chain, 4, 6, seed=0)
    assert markov_chain.forbidden_count(tokens, chain) == 0
    assert markov_chain.forbidden_count(tokens.tolist(), chain.transition) == 0
    tokens[1, 2] = 12  # a [MASK] id V: both of its transitions are forbidden
    tokens[3, 0] = -1  # so is a negative id
    assert markov_chain.forbidden_count(tokens, chain) == 3
    assert markov_chain.forbidden_count(tokens[1], chain.transition) == 2


def test_sample_entropy_matches_hand_computation():
    tokens = np.array([[0, 0, 1, 2], [3, 3, 3, 3], [7, 5, 7, 5]])
    first = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    np.testing.assert_allclose(sample_metrics.sample_entropy(tokens), [first, 0.0, math.log(2)], atol=1e-12)
    uniform = markov_chain.MarkovChain(np.full(8, 1 / 8), np.full((8, 8), 1 / 8))
    entropy = markov_scoring.markov_metrics(tokens, uniform)["entropy"]
    assert entropy == pytest.approx((first + math.log(2)) / 3)
    # Ragged samples and ids far beyond any chain's vocabulary (text tokenizers).
    ragged = sample_metrics.unigram_entropy([[0, 0, 1, 2], [50000, 50256]])
    assert ragged == pytest.approx((first + math.log(2)) / 2)


@pytest.mark.parametrize("bad", [-1, 12])
def test_out_of_vocabulary_ids_raise(bad):
    chain = _random_chain(0)
    tokens = markov_chain.sample_sequences(chain, 2, 5, seed=0)
    tokens[1, 3] = bad
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        markov_scoring.markov_metrics(tokens, chain)


def test_malformed_tokens_raise():
    chain = _random_chain(0)
    with pytest.raises(ValueError, match="shape"):
        markov_scoring.markov_metrics(np.zeros(5, dtype=np.int32), chain)
    with pytest.raises(ValueError, match="integers"):
        markov_scoring.markov_metrics(np.zeros((2, 5)), chain)


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


def _write_samples(path, token_rows, nfe=(5, 7)):
    """A samples JSONL as launch/sample.py writes it (NFE counts cycle through `nfe`)."""
    with open(path, "w") as f:
        for i, tokens in enumerate(token_rows):
            n = nfe[i % len(nfe)]
            f.write(json.dumps({"tokens": list(tokens), "nfe": n, "predictor_nfe": 4, "corrector_nfe": n - 4})
                    + "\n")
    return str(path)


def test_evaluate_scores_chain_samples_with_no_error_and_adds_the_data_and_the_model(tiny_trained_workdir,
                                                                                     tmp_path):
    workdir, data_dir, overrides = tiny_trained_workdir
    chain = markov_chain.load_chain(os.path.join(data_dir, "chain.npz"))
    tokens = markov_chain.sample_sequences(chain, 6, LENGTH, seed=0)
    samples = _write_samples(tmp_path / "s.jsonl", tokens.tolist())
    output = tmp_path / "metrics.json"
    proc = run_binary("evaluate.py", f"--config={CONFIG}", f"--workdir={workdir}", *overrides,
                      f"--samples={samples}", f"--output={output}", "--num_data=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(output.read_text())
    assert metrics["num_samples"] == 6
    assert metrics["transition_error"] == 0.0 and metrics["validity"] == 1.0  # drawn from the chain itself
    assert metrics["nfe"] == 6.0 and metrics["predictor_nfe"] == 4.0 and metrics["corrector_nfe"] == 2.0
    assert metrics["chain_ppl"] == pytest.approx(math.exp(metrics["chain_nll"]))
    data = metrics["data"]
    assert data["num_samples"] == 64 and data["transition_error"] == 0.0
    assert data["chain_nll"] == pytest.approx(data["chain_entropy_nats_per_token"], rel=0.1)
    assert metrics["model_step"] == 4 and metrics["model_val_bits_per_token"] > 0.0
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {output}"


def test_evaluate_reports_bad_input_in_one_line_with_exit_code_2(tmp_path):
    output = tmp_path / "m.json"
    proc = run_binary("evaluate.py", f"--config={CONFIG}", f"--samples={tmp_path / 'absent.jsonl'}",
                      f"--output={output}")
    assert_usage_error(proc, "samples file not found")
    assert not output.exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("ragged", "s.jsonl sample 2 has 31 tokens"),
        ("too_long", f"expected data.length={LENGTH}"),
        ("id_outside_vocab", f"token id {VOCAB}, outside the vocabulary [0, {VOCAB})"),
        ("not_a_list", "'tokens' must be a list of integer ids"),
    ],
)
def test_markov_scoring_names_the_file_and_the_sample_of_bad_tokens(tmp_path, case, message):
    chain = markov_chain.make_chain(VOCAB, 3, 0.5, 0)
    good = [0] * LENGTH
    rows = {"ragged": [good, [0] * (LENGTH - 1)], "too_long": [[0] * (LENGTH + 1)] * 2,
            "id_outside_vocab": [good, [0] * (LENGTH - 1) + [VOCAB]], "not_a_list": [good, "t1 t2"]}[case]
    path = str(tmp_path / "s.jsonl")
    records = [{"tokens": tokens} for tokens in rows]
    with pytest.raises(UsageError, match=re.escape(message)):
        markov_scoring.score_markov(records, chain, LENGTH, source=path)


@pytest.mark.parametrize(
    "content, message",
    [(None, "samples file not found"), ('{"tokens": [1, 2\n', "line 1 is not JSON"),
     ('\n[1, 2]\n', "line 2 is not a JSON object"), ("\n\n", "holds no samples")],
)
def test_reading_a_bad_samples_file_is_a_one_line_usage_error(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message) as raised:
        samples_io.read_samples(str(path))
    assert "\n" not in str(raised.value)


def test_a_missing_chain_is_a_usage_error():
    with pytest.raises(UsageError, match="chain file not found"):
        markov_chain.load_chain("/nonexistent/chain.npz")


def test_markov_scoring_of_chain_samples_and_their_nfe_means():
    chain = markov_chain.make_chain(VOCAB, 3, 0.5, 0)
    tokens = markov_chain.sample_sequences(chain, 5, LENGTH, 1)
    records = [{"tokens": row, "nfe": n, "predictor_nfe": n} for row, n in zip(tokens.tolist(), range(5))]
    records[2].pop("predictor_nfe")  # a count missing from one record is left out, not averaged over four
    held_out = markov_chain.sample_sequences(chain, 7, LENGTH, 2)
    metrics = markov_scoring.score_markov(records, chain, LENGTH, held_out)
    assert metrics["transition_error"] == 0.0 and metrics["num_samples"] == 5
    assert metrics["nfe"] == 2.0 and "predictor_nfe" not in metrics and "corrector_nfe" not in metrics
    assert metrics["data"]["num_samples"] == 7
    assert metrics["data"]["chain_entropy_bits_per_token"] == pytest.approx(
        markov_chain.sequence_entropy_per_token(chain, LENGTH) / math.log(2))
    assert sample_metrics.nfe_means({"nfe": np.array([2, 4], np.int32)}) == {"nfe": 3.0}


def test_text_scoring_gives_gen_ppl_against_a_reference_and_needs_an_evaluator(tiny_gpt2, tmp_path):
    directory, _ = tiny_gpt2
    records = [{"tokens": [3, 5, 7, 9, 11, 2], "nfe": 4}, {"tokens": [1, 2, 3, 4, 5, 6], "nfe": 4}]
    metrics = text_scoring.score_text(records, str(directory), LENGTH, records)
    assert 1.0 < metrics["gen_ppl"] < 1000.0 and metrics["scored_tokens"] == 10
    assert metrics["nfe"] == 4.0
    assert metrics["data"]["gen_ppl"] == pytest.approx(metrics["gen_ppl"])
    assert text_scoring.score_text(records, str(directory), 3)["scored_tokens"] == 4  # cut to 3 tokens each
    with pytest.raises(UsageError, match="cannot load the evaluator: .*not found"):
        text_scoring.score_text(records, str(tmp_path / "absent"), LENGTH)
    with pytest.raises(UsageError, match="s.jsonl sample 1 holds ids outside the evaluator vocabulary"):
        text_scoring.score_text([{"tokens": [100, 1]}], str(directory), LENGTH, source="s.jsonl")


def test_atomic_json_writes_null_for_non_finite_numbers_and_leaves_no_temp_file_on_failure(tmp_path,
                                                                                            monkeypatch):
    path = str(tmp_path / "out" / "r.json")
    fileio.atomic_write_json(path, {"ppl": math.inf, "nll": np.float32(0.5), "n": np.int64(3),
                                    "x": [math.nan]})
    assert json.loads(open(path).read()) == {"ppl": None, "nll": 0.5, "n": 3, "x": [None]}

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_json(path, {"ppl": 1.0})
    assert os.listdir(tmp_path / "out") == ["r.json"] and json.loads(open(path).read())["ppl"] is None
