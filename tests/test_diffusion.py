"""Tests of the ProSeCo objective on fake logits and a fake denoiser (no network).

Expected values are computed independently in numpy (float64) from the tokens the fake denoiser was called
with, so the two-pass structure of `proseco_loss` is checked term by term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proseco_jax import config_base, diffusion, sft
from proseco_jax.configlib import ConfigError
from proseco_jax.diffusion import Objective
from proseco_jax.schedules import Schedule

V = 7  # real tokens
MASK = V  # the [MASK] id
K = V + 1  # model vocabulary
B, L = 4, 12
EPS = 1e-3

# A fixed per-position offset makes the fake denoiser's argmax vary along the sequence.
POSITION = jnp.asarray(np.random.default_rng(0).normal(scale=2.0, size=(32, K)), jnp.float32)


def _log_softmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    m = a.max(-1, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(-1, keepdims=True))


def _forbid_mask_np(logits: np.ndarray) -> np.ndarray:
    """log_softmax over the real tokens only; [MASK] gets -inf."""
    out = np.full(logits.shape, -np.inf)
    out[..., :V] = _log_softmax(logits[..., :V])
    return out


def _gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, idx[..., None], axis=-1)[..., 0]


# Flat option names of the tests -> (section, field) of the config tree.
_OPTIONS = {
    "parameterization": ("diffusion", "parameterization"),
    "antithetic": ("diffusion", "antithetic"),
    "train_eps": ("diffusion", "train_eps"),
    "corrector_enabled": ("corrector", "enabled"),
    "corrector_start_step": ("corrector", "start_step"),
    "corrector_input": ("corrector", "input"),
}
DIFFUSION = config_base.Diffusion(schedule="loglinear", schedule_eps=EPS, train_eps=EPS)


def _config(**overrides) -> Objective:
    sections = {"diffusion": {}, "corrector": {}}
    for name, value in overrides.items():
        section, field = _OPTIONS.get(name, ("corrector", name))
        sections[section][field] = value
    return Objective(DIFFUSION.replace(**sections["diffusion"]),
                     config_base.Corrector(**sections["corrector"]), MASK)


def _tokens(seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(B, L)), jnp.int32)


def _normal(seed: int) -> jax.Array:
    """Fake logits [B, L, K] (numpy draws: eager jax.random would compile a kernel per shape)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, L, K)), jnp.float32)


def _table(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(scale=1.5, size=(K, K)), jnp.float32)


def _fake(tables, record: list | None = None) -> diffusion.ApplyFn:
    """logits = tables[i][tokens] + POSITION on the i-th call (the last table for later calls).

    With two tables, pass one and pass two of `proseco_loss` read different parameters, so gradients of
    each loss term can be attributed to a pass. `record` collects (tokens, sigma) of eager calls.
    """
    calls = []

    def apply_fn(params, tokens, sigma, dropout_rng=None):
        table = tables[min(len(calls), len(tables) - 1)]
        calls.append(None)
        if record is not None:
            record.append((np.asarray(tokens), np.asarray(sigma, np.float64)))
        return table[tokens] + POSITION[None, : tokens.shape[1]]

    return apply_fn


def _weight_from_sigma(sigma: np.ndarray) -> np.ndarray:
    """w(t) = 1/t of the log-linear schedule, with t recovered from sigma = -log(1 - (1 - eps) t)."""
    t = -np.expm1(-sigma) / (1.0 - EPS)
    return 1.0 / t


# ------------------------------------------------------------------------------------------- masking


def test_mask_tokens_masks_at_the_requested_rate_per_row():
    n = 4000
    x = jnp.zeros((4, n), jnp.int32) + 3
    rates = np.asarray([0.1, 0.25, 0.5, 0.9])
    z = np.asarray(diffusion.mask_tokens(jax.random.key(0), x, jnp.asarray(rates), MASK))
    observed = (z == MASK).mean(axis=1)
    tolerance = 5 * np.sqrt(rates * (1 - rates) / n)
    np.testing.assert_array_less(np.abs(observed - rates), tolerance)


def test_mask_tokens_never_masks_at_rate_zero_and_always_at_rate_one():
    x = _tokens()
    rates = jnp.asarray([0.0, 1.0, 0.0, 1.0])
    z = np.asarray(diffusion.mask_tokens(jax.random.key(3), x, rates, MASK))
    np.testing.assert_array_equal(z[0], np.asarray(x)[0])
    np.testing.assert_array_equal(z[2], np.asarray(x)[2])
    assert np.all(z[1] == MASK) and np.all(z[3] == MASK)


def test_mask_tokens_keeps_the_clean_token_wherever_it_does_not_mask():
    x = _tokens()
    z = np.asarray(diffusion.mask_tokens(jax.random.key(4), x, jnp.full((B,), 0.5), MASK))
    visible = z != MASK
    assert 0 < visible.sum() < visible.size
    np.testing.assert_array_equal(z[visible], np.asarray(x)[visible])


# --------------------------------------------------------------------------------- parameterisation


def test_forbid_mask_gives_mask_zero_probability_and_normalised_rows():
    logits = _normal(0) * 3.0
    logits = logits.at[..., MASK].set(20.0)  # even a dominant [MASK] logit is removed
    probs = np.exp(np.asarray(diffusion.log_probs_without_mask(logits, MASK), np.float64))
    assert np.all(probs[..., MASK] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[..., :V], np.exp(_log_softmax(np.asarray(logits)[..., :V])), atol=1e-6)


def test_forbid_mask_computes_in_float32_from_bfloat16_logits():
    logits = _normal(1).astype(jnp.bfloat16)
    logp = diffusion.log_probs_without_mask(logits, MASK)
    assert logp.dtype == jnp.float32
    np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(-1), 1.0, atol=1e-6)


def test_subs_log_probs_copies_visible_tokens_and_forbids_mask():
    logits = _normal(2) * 3.0
    x = _tokens()
    z = diffusion.mask_tokens(jax.random.key(5), x, jnp.full((B,), 0.5), MASK)
    probs = np.exp(np.asarray(diffusion.subs_log_probs(logits, z, MASK), np.float64))
    z = np.asarray(z)
    visible = z != MASK
    assert 0 < visible.sum() < visible.size
    onehot = np.eye(K)[z]
    np.testing.assert_array_equal(probs[visible], onehot[visible])
    np.testing.assert_allclose(probs[~visible], np.exp(_forbid_mask_np(np.asarray(logits)))[~visible],
                               atol=1e-6)
    assert np.all(probs[..., MASK] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_losses_and_gradients_stay_finite_with_minus_inf_log_probs():
    """Impossible tokens get a true -inf (one policy for losses and sampler); the losses only ever gather
    possible tokens, so values and gradients stay finite under every parameterisation."""
    x = _tokens()
    z = jnp.asarray(np.where(np.arange(L) % 2, MASK, np.asarray(x)), jnp.int32)
    assert np.isneginf(np.asarray(diffusion.subs_log_probs(_normal(2), z, MASK))).any()
    w = jnp.full((B,), 3.0)
    for fn in (lambda lg: diffusion.subs_log_probs(lg, z, MASK),
               lambda lg: diffusion.log_probs_without_mask(lg, MASK)):
        value, grad = jax.value_and_grad(lambda lg, fn=fn: jnp.sum(diffusion.mdm_loss(fn(lg), x, z, w, MASK)
                                                                   + diffusion.corrector_loss(fn(lg), x, x, w,
                                                                                              True)))(_normal(2))
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


# ------------------------------------------------------------------------------------- loss terms


def test_mdm_loss_is_zero_at_visible_positions_and_minus_w_logp_at_masked_ones():
    logp = diffusion.log_probs_without_mask(_normal(6), MASK)
    x = _tokens()
    z = diffusion.mask_tokens(jax.random.key(7), x, jnp.full((B,), 0.5), MASK)
    weight = jnp.asarray([1.0, 2.0, 0.5, 10.0])
    got = np.asarray(diffusion.mdm_loss(logp, x, z, weight, MASK))
    z, x, logp = np.asarray(z), np.asarray(x), np.asarray(logp, np.float64)
    expected = np.where(z == MASK, -np.asarray(weight)[:, None] * _gather(logp, x), 0.0)
    assert np.all(got[z != MASK] == 0.0)
    assert np.all(got[z == MASK] > 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_corrector_loss_weighted_is_w_times_unweighted_at_every_position():
    logp2 = diffusion.log_probs_without_mask(_normal(8), MASK)
    x, y = _tokens(1), _tokens(2)
    weight = jnp.asarray([1.0, 2.0, 0.5, 10.0])
    weighted = np.asarray(diffusion.corrector_loss(logp2, x, y, weight, False))
    unweighted = np.asarray(diffusion.corrector_loss(logp2, x, y, jnp.ones((B,)), False))
    np.testing.assert_allclose(unweighted, -_gather(np.asarray(logp2, np.float64), np.asarray(x)), rtol=1e-6)
    np.testing.assert_allclose(weighted, np.asarray(weight)[:, None] * unweighted, rtol=1e-6)
    assert np.all(unweighted > 0.0)


def test_corrector_loss_upweight_errors_uses_probability_where_input_was_right():
    logp2 = diffusion.log_probs_without_mask(_normal(9), MASK)
    x = np.asarray(_tokens(1))
    y = x.copy()
    y[:, ::3] = (y[:, ::3] + 1) % V  # every third input token is wrong
    weight = np.asarray([1.0, 2.0, 0.5, 10.0])
    got = diffusion.corrector_loss(logp2, jnp.asarray(x), jnp.asarray(y), jnp.asarray(weight), True)
    got = np.asarray(got)
    lp = _gather(np.asarray(logp2, np.float64), x)
    expected = np.where(y == x, -weight[:, None] * np.exp(lp), -weight[:, None] * lp)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # -w p is bounded in [-w, 0] where the input was right; -w log p is positive where it was wrong.
    w_full = np.broadcast_to(weight[:, None], (B, L))
    assert np.all(got[y == x] <= 0.0) and np.all(got[y == x] >= -w_full[y == x])
    assert np.all(got[y != x] > 0.0)


# ----------------------------------------------------------------------------------- corrector input


def _masked_batch():
    x = _tokens()
    z = diffusion.mask_tokens(jax.random.key(11), x, jnp.full((B,), 0.5), MASK)
    logp1 = diffusion.log_probs_without_mask(_normal(12) * 3.0, MASK)
    return x, z, logp1


def test_corrector_input_masked_keeps_x_at_visible_positions_and_argmax_at_masked_ones():
    x, z, logp1 = _masked_batch()
    y = np.asarray(diffusion.corrector_input(jax.random.key(0), logp1, x, z, MASK, "masked", True))
    z, x = np.asarray(z), np.asarray(x)
    argmax = np.asarray(logp1).argmax(-1)
    np.testing.assert_array_equal(y, np.where(z == MASK, argmax, x))
    assert y.dtype == x.dtype


def test_corrector_input_all_uses_argmax_everywhere():
    x, z, logp1 = _masked_batch()
    y = np.asarray(diffusion.corrector_input(jax.random.key(0), logp1, x, z, MASK, "all", True))
    argmax = np.asarray(logp1).argmax(-1)
    np.testing.assert_array_equal(y, argmax)
    assert np.any(y[np.asarray(z) != MASK] != np.asarray(x)[np.asarray(z) != MASK])


def test_corrector_input_sample_draws_the_only_likely_token_of_a_peaked_distribution():
    x = _tokens()
    target = (np.asarray(x) * 3 + 1) % V
    logp1 = jnp.where(jax.nn.one_hot(target, K) > 0, 0.0, -60.0)
    z = jnp.full((B, L), MASK, jnp.int32)
    for seed in range(3):
        y = diffusion.corrector_input(jax.random.key(seed), logp1, x, z, MASK, "all", False)
        np.testing.assert_array_equal(np.asarray(y), target)


def test_corrector_input_sample_draws_both_tokens_of_an_even_two_way_distribution():
    x = _tokens()
    two_way = jnp.full((K,), -60.0).at[2].set(0.0).at[5].set(0.0)
    logp1 = jnp.broadcast_to(jax.nn.log_softmax(two_way), (B, L, K))
    z = jnp.full(x.shape, MASK, jnp.int32)
    y = np.stack([np.asarray(diffusion.corrector_input(jax.random.key(seed), logp1, x, z, MASK, "all", False))
                  for seed in range(8)])
    assert set(np.unique(y)) == {2, 5}
    assert abs((y == 2).mean() - 0.5) < 5 * np.sqrt(0.25 / y.size)


@pytest.mark.parametrize("use_argmax", [True, False])
def test_corrector_input_has_no_gradient_wrt_logits(use_argmax):
    x, z, logp1 = _masked_batch()

    def f(logp):
        y = diffusion.corrector_input(jax.random.key(0), logp, x, z, MASK, "all", use_argmax)
        # Any use of y downstream: a gradient here could only come through y itself.
        return jnp.sum(y.astype(jnp.float32) * 1.7)

    grad = np.asarray(jax.grad(f)(logp1))
    assert np.all(grad == 0.0)


# --------------------------------------------------------------------------------------------- times


def test_sample_times_lie_in_eps_one():
    for antithetic in (True, False):
        t = np.concatenate([np.asarray(diffusion.sample_times(jax.random.key(seed), 16, 0.1, antithetic))
                            for seed in range(8)])
        assert t.min() >= 0.1 and t.max() <= 1.0
        assert t.max() - t.min() > 0.8  # spread over the interval, not a constant


@pytest.mark.parametrize("batch", [1, B, 16])
def test_antithetic_times_put_exactly_one_time_in_each_of_b_strata(batch):
    eps = 0.05
    for seed in range(5):
        t = np.asarray(diffusion.sample_times(jax.random.key(seed), batch, eps, True), np.float64)
        u = (t - eps) / (1 - eps)
        strata = np.floor(u * batch).astype(int)
        np.testing.assert_array_equal(np.sort(strata), np.arange(batch))


def test_independent_times_are_not_stratified():
    batch = 16
    collisions = 0
    for seed in range(10):
        t = np.asarray(diffusion.sample_times(jax.random.key(seed), batch, 0.0, False))
        collisions += len(np.unique(np.floor(t * batch))) < batch
    assert collisions > 0


# ------------------------------------------------------------------------------- the full objective


def _reference(x, token_mask, record, table1, table2, cfg: Objective):
    """numpy ProSeCo loss from the recorded calls: (loss, mdm, sc, expected y)."""
    (z, sigma1), calls = record[0], len(record)
    x, table1 = np.asarray(x), np.asarray(table1, np.float64)
    mask = np.ones(x.shape) if token_mask is None else np.asarray(token_mask, np.float64)
    w = _weight_from_sigma(sigma1)
    pos = np.asarray(POSITION, np.float64)[: x.shape[1]]
    logp1 = _forbid_mask_np(table1[z] + pos)
    if cfg.diffusion.parameterization == "subs":
        copied = np.where(np.eye(K)[z] > 0, 0.0, -np.inf)
        logp1 = np.where((z != MASK)[..., None], copied, logp1)
    masked = z == MASK
    l_mdm = np.where(masked, -w[:, None] * _gather(logp1, x), 0.0)
    mdm = (l_mdm * mask).sum() / mask.sum()
    if calls == 1:
        return cfg.corrector.mdm_weight * mdm, mdm, 0.0, None
    y_expected = logp1.argmax(-1)
    if cfg.corrector.input == "masked":
        y_expected = np.where(masked, y_expected, x)
    y, sigma2 = record[1]
    np.testing.assert_array_equal(sigma2, sigma1)
    logp2 = _forbid_mask_np(np.asarray(table2, np.float64)[y] + pos)
    lp = _gather(logp2, x)
    if cfg.corrector.upweight_errors:
        lp = np.where(y != x, lp, np.exp(lp))
    sc_weight = w if cfg.corrector.weighted else np.ones_like(w)
    sc = (-sc_weight[:, None] * lp * mask).sum() / mask.sum()
    return cfg.corrector.mdm_weight * mdm + cfg.corrector.corrector_weight * sc, mdm, sc, y_expected


def _option_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


OPTION_GRID = [
    dict(),
    dict(corrector_input="all"),
    dict(parameterization="d3pm", corrector_input="all"),
    dict(parameterization="d3pm", corrector_input="masked"),
    dict(weighted=False),
    dict(upweight_errors=True, corrector_input="all"),
    dict(mdm_weight=0.3, corrector_weight=2.5),
    dict(antithetic=False),
]


@pytest.mark.parametrize("options", OPTION_GRID, ids=_option_id)
def test_proseco_loss_matches_a_numpy_reference_of_both_passes(options):
    cfg = _config(**options)
    table1, table2 = _table(20), _table(21)
    x = _tokens()
    record = []
    loss, metrics = diffusion.proseco_loss(_fake([table1, table2], record), None, x, jax.random.key(3),
                                           jnp.asarray(0), cfg)
    assert len(record) == 2
    expected, mdm, sc, y_expected = _reference(x, None, record, table1, table2, cfg)
    np.testing.assert_array_equal(record[1][0], y_expected)
    np.testing.assert_allclose(float(metrics["mdm_loss"]), mdm, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["corrector_loss"]), sc, rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    z, y = record[0][0], record[1][0]
    np.testing.assert_allclose(float(metrics["mask_rate"]), (z == MASK).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["corrector_input_accuracy"]), (y == np.asarray(x)).mean(),
                               rtol=1e-6)
    logits2 = np.asarray(table2)[y] + np.asarray(POSITION)[:L]
    np.testing.assert_allclose(float(metrics["corrector_accuracy"]),
                               (logits2[..., :V].argmax(-1) == np.asarray(x)).mean(), rtol=1e-6)


def test_proseco_loss_pass_one_sees_the_masked_sequence_at_the_schedule_rate():
    """Pass one gets x masked at rate 1 - alpha(t) = (1 - eps) t, with antithetic t across the batch."""
    cfg = _config(corrector_enabled=False)
    x = _tokens()
    masked, expected, variance = 0.0, 0.0, 0.0
    for seed in range(8):
        record = []
        diffusion.proseco_loss(_fake([_table(0)], record), None, x, jax.random.key(seed), jnp.asarray(0), cfg)
        z, sigma = record[0]
        np.testing.assert_array_equal(z[z != MASK], np.asarray(x)[z != MASK])
        t = -np.expm1(-sigma) / (1 - EPS)
        np.testing.assert_array_equal(np.sort(np.floor((t - EPS) / (1 - EPS) * B)), np.arange(B))
        p = (1 - EPS) * t
        masked += (z == MASK).sum()
        expected += L * p.sum()
        variance += L * (p * (1 - p)).sum()
    assert abs(masked - expected) < 4 * np.sqrt(variance)


def _grads(term: str, cfg: Objective, step: int = 0):
    """Gradients of one output (loss or a metric) wrt the pass-one table and the pass-two table."""
    x = _tokens()

    def f(tables):
        loss, metrics = diffusion.proseco_loss(_fake(tables), None, x, jax.random.key(3), jnp.asarray(step),
                                               cfg)
        return loss if term == "loss" else metrics[term]

    g1, g2 = jax.grad(f)([_table(20), _table(21)])
    return np.asarray(g1), np.asarray(g2)


NO_GRAD_GRID = [
    dict(),
    dict(corrector_input="all"),
    dict(parameterization="d3pm", corrector_input="all"),
    dict(use_argmax=False, corrector_input="all"),
    dict(upweight_errors=True, weighted=False),
    dict(corrector_start_step=2),
]


@pytest.mark.parametrize("options", NO_GRAD_GRID, ids=_option_id)
def test_corrector_loss_has_no_gradient_through_pass_one(options):
    cfg = _config(**options)
    pass_one, pass_two = _grads("corrector_loss", cfg, step=5)
    assert np.all(pass_one == 0.0)
    assert np.abs(pass_two).max() > 1e-3


@pytest.mark.parametrize("options", NO_GRAD_GRID[:3], ids=_option_id)
def test_mdm_loss_trains_pass_one_only(options):
    pass_one, pass_two = _grads("mdm_loss", _config(**options))
    assert np.abs(pass_one).max() > 1e-3
    assert np.all(pass_two == 0.0)


def test_total_gradient_into_pass_one_is_the_weighted_mdm_gradient():
    cfg = _config(mdm_weight=0.7, corrector_weight=1.9)
    total_one, total_two = _grads("loss", cfg)
    mdm_one, _ = _grads("mdm_loss", cfg)
    _, sc_two = _grads("corrector_loss", cfg)
    np.testing.assert_allclose(total_one, 0.7 * mdm_one, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(total_two, 1.9 * sc_two, rtol=1e-5, atol=1e-7)


def test_corrector_gradient_with_shared_parameters_treats_the_corrector_input_as_a_constant():
    """One shared table (as in the real model): d L_SC / d table equals the gradient with y held fixed."""
    cfg = _config(corrector_input="all", parameterization="d3pm")
    x = _tokens()
    table = _table(20)
    record = []
    diffusion.proseco_loss(_fake([table], record), None, x, jax.random.key(3), jnp.asarray(0), cfg)
    y, sigma = jnp.asarray(record[1][0]), record[1][1]
    w = jnp.asarray(_weight_from_sigma(sigma), jnp.float32)

    def fixed_input_sc(tab):
        logits = tab[y] + POSITION[None, :L]
        logp = jax.nn.log_softmax(logits[..., :V], axis=-1)
        return jnp.mean(-w[:, None] * jnp.take_along_axis(logp, x[..., None], -1)[..., 0])

    def library_sc(tab):
        _, metrics = diffusion.proseco_loss(_fake([tab]), None, x, jax.random.key(3), jnp.asarray(0), cfg)
        return metrics["corrector_loss"]

    np.testing.assert_allclose(jax.grad(library_sc)(table), jax.grad(fixed_input_sc)(table),
                               rtol=1e-5, atol=1e-7)


def _loss_and_grad(cfg: Objective, step: int = 0, token_mask=None, x=None):
    x = _tokens() if x is None else x

    def f(table):
        return diffusion.proseco_loss(_fake([table]), None, x, jax.random.key(3), jnp.asarray(step), cfg,
                                      token_mask=token_mask)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(_table(20))
    return float(loss), metrics, np.asarray(grad)


def _mdm_only_loss_and_grad(cfg: Objective, step: int = 0):
    """Value and gradient of mdm_weight * L_MDM alone, through the library's mdm_loss metric."""
    x = _tokens()

    def f(table):
        _, metrics = diffusion.proseco_loss(_fake([table]), None, x, jax.random.key(3), jnp.asarray(step),
                                            cfg)
        return cfg.corrector.mdm_weight * metrics["mdm_loss"]

    loss, grad = jax.value_and_grad(f)(_table(20))
    return float(loss), np.asarray(grad)


def test_disabled_corrector_gives_the_weighted_mdlm_loss_and_gradient():
    cfg = _config(corrector_enabled=False, mdm_weight=0.6)
    record = []
    x = _tokens()
    loss, metrics = diffusion.proseco_loss(_fake([_table(20)], record), None, x, jax.random.key(3),
                                           jnp.asarray(0), cfg)
    assert len(record) == 1  # pass two is skipped
    expected, mdm, _, _ = _reference(x, None, record, _table(20), None, cfg)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.6 * mdm, rtol=1e-5)
    assert float(metrics["corrector_loss"]) == 0.0
    value, _, grad = _loss_and_grad(cfg)
    mdm_value, mdm_grad = _mdm_only_loss_and_grad(_config(mdm_weight=0.6))
    np.testing.assert_allclose(value, mdm_value, rtol=1e-6)
    np.testing.assert_allclose(grad, mdm_grad, rtol=1e-5, atol=1e-7)


def test_zero_corrector_weight_gives_the_same_loss_and_gradient_as_disabled():
    off_value, _, off_grad = _loss_and_grad(_config(corrector_enabled=False))
    zero_value, metrics, zero_grad = _loss_and_grad(_config(corrector_weight=0.0))
    assert float(metrics["corrector_loss"]) > 0.0  # still computed and logged
    np.testing.assert_allclose(zero_value, off_value, rtol=1e-6)
    np.testing.assert_allclose(zero_grad, off_grad, rtol=1e-5, atol=1e-7)


def test_corrector_switches_on_at_corrector_start_step():
    start = 5
    mdlm_value, _, mdlm_grad = _loss_and_grad(_config(corrector_enabled=False))
    full_value, full_metrics, full_grad = _loss_and_grad(_config())
    delayed = _config(corrector_start_step=start)
    before_value, before_metrics, before_grad = _loss_and_grad(delayed, step=start - 1)
    at_value, at_metrics, at_grad = _loss_and_grad(delayed, step=start)
    np.testing.assert_allclose(before_value, mdlm_value, rtol=1e-6)
    np.testing.assert_allclose(before_grad, mdlm_grad, rtol=1e-5, atol=1e-7)
    assert float(before_metrics["corrector_loss"]) == 0.0
    np.testing.assert_allclose(at_value, full_value, rtol=1e-6)
    np.testing.assert_allclose(at_grad, full_grad, rtol=1e-5, atol=1e-7)
    assert at_value > before_value
    np.testing.assert_allclose(float(at_metrics["corrector_loss"]), float(full_metrics["corrector_loss"]),
                               rtol=1e-6)


def test_corrector_start_step_works_with_a_traced_step_under_jit():
    cfg = _config(corrector_start_step=3)
    x, table = _tokens(), _table(20)

    @jax.jit
    def f(step):
        return diffusion.proseco_loss(_fake([table]), None, x, jax.random.key(3), step, cfg)[0]

    mdlm, _, _ = _loss_and_grad(_config(corrector_enabled=False))
    full, _, _ = _loss_and_grad(_config())
    np.testing.assert_allclose([float(f(jnp.asarray(s))) for s in (0, 2, 3, 10)], [mdlm, mdlm, full, full],
                               rtol=1e-5)


@pytest.mark.parametrize("options", [dict(corrector_enabled=False), dict(corrector_start_step=3), {}])
def test_pretraining_and_fine_tuning_share_the_corrector_gate_and_metric_keys(options):
    """Both objectives switch pass two with `diffusion.gated_corrector`: same keys, zeros while it is off."""
    cfg, x, table = _config(**options), _tokens(), _table(20)
    response = jnp.broadcast_to(jnp.arange(L) >= 4, (B, L))
    _, pre = diffusion.proseco_loss(_fake([table]), None, x, jax.random.key(3), jnp.asarray(0), cfg)
    _, fine = sft.sft_loss(_fake([table]), None, x, response, jax.random.key(3), jnp.asarray(0), cfg)
    assert pre.keys() == fine.keys() == {"mdm_loss", "mask_rate", "corrector_loss", "corrector_accuracy",
                                         "corrector_input_accuracy"}
    off = not cfg.corrector.enabled or cfg.corrector.start_step > 0
    for metrics in (pre, fine):
        assert (float(metrics["corrector_loss"]) == 0.0) == off
        assert (float(metrics["corrector_input_accuracy"]) == 0.0) == off


def test_d3pm_lets_the_corrector_input_differ_from_x_at_visible_positions():
    # A table whose argmax maps each token to a different one: a pure "copy" model is never right.
    shift = np.zeros((K, K), np.float32)
    shift[np.arange(K), (np.arange(K) + 1) % V] = 50.0
    table = jnp.asarray(shift)
    x = _tokens()
    visible_differs = {}
    for parameterization in ("subs", "d3pm"):
        record = []
        cfg = _config(parameterization=parameterization, corrector_input="all")
        diffusion.proseco_loss(_fake([table], record), None, x, jax.random.key(3), jnp.asarray(0), cfg)
        (z, _), (y, _) = record
        visible = z != MASK
        assert 0 < visible.sum() < visible.size
        visible_differs[parameterization] = np.mean(y[visible] != np.asarray(x)[visible])
    assert visible_differs["subs"] == 0.0  # copy-over: visible tokens are predicted as themselves
    assert visible_differs["d3pm"] == 1.0  # the model's own re-predictions reach the corrector


def test_d3pm_and_subs_give_the_same_mdm_loss():
    """They differ only at visible positions, where the MDM loss is zero."""
    subs = _loss_and_grad(_config(corrector_enabled=False))
    d3pm = _loss_and_grad(_config(corrector_enabled=False, parameterization="d3pm"))
    np.testing.assert_allclose(subs[0], d3pm[0], rtol=1e-6)
    np.testing.assert_allclose(subs[2], d3pm[2], rtol=1e-5, atol=1e-7)


def test_token_mask_averages_only_over_real_tokens():
    cfg = _config(corrector_input="all")
    x = np.asarray(_tokens())
    token_mask = np.ones((B, L), np.float32)
    token_mask[:, L - 4:] = 0.0
    token_mask[0, 2:] = 0.0
    record = []
    loss, metrics = diffusion.proseco_loss(_fake([_table(20)], record), None, jnp.asarray(x),
                                           jax.random.key(3), jnp.asarray(0), cfg,
                                           token_mask=jnp.asarray(token_mask))
    expected, mdm, sc, _ = _reference(x, token_mask, record, _table(20), _table(20), cfg)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mdm_loss"]), mdm, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["corrector_loss"]), sc, rtol=1e-5)
    z = record[0][0]
    real_mask_rate = ((z == MASK) * token_mask).sum() / token_mask.sum()
    np.testing.assert_allclose(float(metrics["mask_rate"]), real_mask_rate, rtol=1e-6)
    # Padding content is irrelevant: the fake denoiser is per-position, so only real tokens count.
    padded = x.copy()
    padded[token_mask == 0] = (padded[token_mask == 0] + 3) % V
    other, _ = diffusion.proseco_loss(_fake([_table(20)]), None, jnp.asarray(padded), jax.random.key(3),
                                      jnp.asarray(0), cfg, token_mask=jnp.asarray(token_mask))
    np.testing.assert_allclose(float(other), float(loss), rtol=1e-6)


def test_nelbo_returns_the_sum_over_real_tokens_and_their_count():
    schedule = Schedule(DIFFUSION)
    x = _tokens()
    token_mask = np.ones((B, L), np.float32)
    token_mask[:, 9:] = 0.0
    record = []
    total, count = diffusion.nelbo(_fake([_table(20)], record), None, x, jax.random.key(5), schedule, MASK,
                                   eps=EPS, token_mask=jnp.asarray(token_mask))
    assert float(count) == token_mask.sum() == B * 9
    z, sigma = record[0]
    logp = _forbid_mask_np(np.asarray(_table(20), np.float64)[z] + np.asarray(POSITION, np.float64)[:L])
    nats = np.where(z == MASK, -_weight_from_sigma(sigma)[:, None] * _gather(logp, np.asarray(x)), 0.0)
    np.testing.assert_allclose(float(total), (nats * token_mask).sum(), rtol=1e-5)
    full_total, full_count = diffusion.nelbo(_fake([_table(20)]), None, x, jax.random.key(5), schedule, MASK,
                                             eps=EPS)
    assert float(full_count) == B * L
    assert float(full_total) >= float(total)


def test_objective_sections_reject_unknown_options_in_one_line():
    with pytest.raises(ConfigError, match="diffusion.parameterization") as info:
        _config(parameterization="sedd")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="corrector.input"):
        _config(corrector_input="visible")


@pytest.mark.parametrize("parameterization", ["subs", "d3pm"])
def test_a_mask_inside_a_larger_table_lets_the_loss_score_ids_above_it(parameterization):
    """LLaDA's [MASK] lies inside its table: with vocab_size set, targets above the mask are scored against
    a softmax over every id but [MASK] (and never with the mask's logit)."""
    rows, inner_mask = 12, 6
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, rows)), jnp.float32)
    x = jnp.asarray([[7, 8, 11, 0, 9], [10, 1, 7, 2, 8]], jnp.int32)  # ids above the mask, and below
    objective = Objective(DIFFUSION.replace(parameterization=parameterization),
                          config_base.Corrector(enabled=False), inner_mask, vocab_size=rows)
    t = jnp.ones((2,))
    z = jnp.full(x.shape, inner_mask, jnp.int32)  # every position masked
    loss, _ = diffusion.proseco_loss(lambda p, tok, sig, dropout_rng=None: logits, None, x,
                                     jax.random.key(0), jnp.int32(0), objective, t=t, z=z)
    logp = np.asarray(jax.nn.log_softmax(jnp.where(jnp.arange(rows) == inner_mask, -jnp.inf, logits)))
    weight = float(objective.schedule.loss_weight(t)[0])
    np.testing.assert_allclose(float(loss), weight * float(np.mean(-_gather(logp, np.asarray(x)))), rtol=1e-5)
