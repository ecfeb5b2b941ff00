"""The fine-tuning objective on fake models: LLaDA's SFT exactly when the corrector is off, the prompt never
masked nor scored, no gradient from the corrector loss into pass one, [MASK] inside a larger vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proseco_jax import config_base, sft
from proseco_jax.diffusion import Objective

MASK, VOCAB = 9, 12  # [MASK] inside the vocabulary, ids above it real (LLaDA's layout)
B, L, PROMPT = 4, 10, 3
EPS = 1e-3


def _objective(**corrector) -> Objective:
    return Objective(config_base.Diffusion(train_eps=EPS), config_base.Corrector(**corrector), MASK, VOCAB)


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (B, L))
    x[x == MASK] = 0
    x[:, -1] = 11  # an id above [MASK] (an end-of-turn token) is a target like any other
    response = np.arange(L)[None, :] >= np.asarray([[PROMPT], [PROMPT + 1], [PROMPT], [PROMPT + 2]])
    return jnp.asarray(x, jnp.int32), jnp.asarray(response)


def _table(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(scale=1.5, size=(VOCAB, VOCAB)), jnp.float32)


def _fake(tables, calls=None):
    """logits = tables[i][tokens] on the i-th call (the last table for later calls)."""
    seen = []

    def apply_fn(params, tokens, sigma, dropout_rng=None):
        assert float(jnp.abs(sigma).max()) == 0.0  # LLaDA is not time-conditioned
        table = tables[min(len(seen), len(tables) - 1)]
        seen.append(None)
        if calls is not None:
            calls.append(np.asarray(tokens))
        return table[tokens]

    return apply_fn


def _log_softmax_without_mask(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64).copy()
    logits[..., MASK] = -np.inf
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def test_with_the_corrector_off_it_is_llada_sft_exactly():
    x, response = _batch()
    rng = jax.random.key(1)
    p, z = sft.sft_noise(rng, x, response, MASK, EPS)
    table = _table(0)
    loss, metrics = sft.sft_loss(_fake([table]), None, x, response, rng, jnp.asarray(0),
                                 _objective(enabled=False), p=p, z=z)
    logp = _log_softmax_without_mask(np.asarray(table)[np.asarray(z)])
    nll = -np.take_along_axis(logp, np.asarray(x)[..., None], -1)[..., 0]
    masked = np.asarray(z) == MASK
    per_sample = (nll * masked / np.asarray(p)[:, None]).sum(1) / np.asarray(response).sum(1)
    assert float(loss) == pytest.approx(per_sample.mean(), rel=1e-5)
    assert float(metrics["corrector_loss"]) == 0.0


def test_the_prompt_is_never_masked_nor_scored():
    x, response = _batch(1)
    for seed in range(6):
        _, z = sft.sft_noise(jax.random.key(seed), x, response, MASK, EPS)
        prompt = ~np.asarray(response)
        np.testing.assert_array_equal(np.asarray(z)[prompt], np.asarray(x)[prompt])
    table, rng = _table(2), jax.random.key(3)
    base, _ = sft.sft_loss(_fake([table]), None, x, response, rng, jnp.asarray(0), _objective(input="all"))
    noisy_prompt = jnp.where(~response[..., None], 50.0 * _table(9)[x], 0.0)

    def perturbed(params, tokens, sigma, dropout_rng=None):  # the model's prompt outputs are junk
        return table[tokens] + noisy_prompt

    other, _ = sft.sft_loss(perturbed, None, x, response, rng, jnp.asarray(0), _objective(input="all"))
    assert float(other) == pytest.approx(float(base), rel=1e-6)


@pytest.mark.parametrize("corrector_input", ["all", "masked"])
def test_the_corrector_sees_the_prompt_as_given_and_its_loss_has_no_gradient_into_pass_one(corrector_input):
    x, response = _batch(2)
    calls = []
    sft.sft_loss(_fake([_table(4), _table(5)], calls), None, x, response, jax.random.key(5), jnp.asarray(0),
                 _objective(input=corrector_input))
    y = calls[1]
    np.testing.assert_array_equal(y[~np.asarray(response)], np.asarray(x)[~np.asarray(response)])
    assert not np.any(y == MASK)

    def corrector_only(tables):
        _, metrics = sft.sft_loss(_fake(tables), None, x, response, jax.random.key(5), jnp.asarray(0),
                                  _objective(input=corrector_input))
        return metrics["corrector_loss"]

    pass_one, pass_two = jax.grad(corrector_only)([_table(4), _table(5)])
    assert np.all(np.asarray(pass_one) == 0.0) and np.abs(np.asarray(pass_two)).max() > 1e-4


def test_a_target_id_above_the_mask_gets_a_finite_loss_and_a_gradient():
    x, response = _batch(3)

    def total(table):
        return sft.sft_loss(_fake([table]), None, x, response, jax.random.key(6), jnp.asarray(0),
                            _objective())[0]

    value, grad = jax.value_and_grad(total)(_table(7))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert np.abs(np.asarray(grad)[:, 11]).max() > 0  # id 11 (> [MASK]) is predicted and trained
    assert np.all(np.asarray(grad)[:, MASK] == 0.0)  # [MASK] is never a prediction
