"""Behaviour that must match the authors' code option for option: time conditioning, initialisation, the
loss on given noise, the sampler's nucleus cache, and LLaDA's block-sampler options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proseco_jax import config_base, diffusion
from proseco_jax.config_base import Sampling
from proseco_jax.models import registry
from proseco_jax.models.dit import DiTConfig
from proseco_jax.sampling import loop, ops
from proseco_jax.sampling.unmasking import ConfidenceOrdered, StepContext, stop_at_eos
from proseco_jax.schedules import Schedule

V, L, B = 11, 16, 4
MODEL = DiTConfig(num_layers=1, hidden_size=32, num_heads=2, cond_dim=16, max_length=L)


def _model_and_params(cfg: DiTConfig, seed: int = 0, noise: float = 0.3):
    """The DiT and parameters with noise added (a fresh DiT's zero adaLN/output would hide sigma)."""
    model = registry.build(cfg, V + 1)
    params = model.init(jax.random.key(seed), jnp.zeros((1, L), jnp.int32), jnp.zeros((1,)))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + noise * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return model, jax.tree.unflatten(tree, noisy)


@pytest.mark.parametrize("conditioned", [False, True])
def test_the_model_depends_on_sigma_exactly_when_time_conditioning_is_on(conditioned):
    model, params = _model_and_params(MODEL.replace(time_conditioning=conditioned))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, L)), jnp.int32)
    low = model.apply({"params": params}, tokens, jnp.full((B,), 0.1))
    high = model.apply({"params": params}, tokens, jnp.full((B,), 5.0))
    if conditioned:
        assert float(jnp.abs(low - high).max()) > 1e-3
    else:
        np.testing.assert_array_equal(np.asarray(low), np.asarray(high))


def test_reference_initialisation_draws_torch_default_ranges_and_zeroes_adaln_and_output():
    model = registry.build(MODEL.replace(hidden_size=64, cond_dim=32), V + 1)
    params = model.init(jax.random.key(3), jnp.zeros((1, L), jnp.int32), jnp.zeros((1,)))["params"]
    params = jax.tree.map(np.asarray, jax.tree.map(lambda x: getattr(x, "value", x), params,
                                                   is_leaf=lambda x: hasattr(x, "value")))
    d = 64
    embedding = params["embedding"]
    assert np.abs(embedding).max() <= d**-0.5 and np.abs(embedding).max() > 0.9 * d**-0.5
    for name, fan_in in (("qkv", d), ("mlp_in", d), ("mlp_out", 4 * d), ("attn_out", d)):
        kernel = params["block_0"][name]["kernel"]
        bound = fan_in**-0.5
        assert np.abs(kernel).max() <= bound and kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
    assert np.abs(params["block_0"]["mlp_in"]["bias"]).max() > 0  # torch draws Linear biases too
    for zero in (params["block_0"]["adaln"]["kernel"], params["final_adaln"]["kernel"],
                 params["output"]["kernel"], params["output"]["bias"]):
        assert not np.any(zero)
    xavier = registry.build(MODEL.replace(hidden_size=64, cond_dim=32, init="xavier"), V + 1)
    other = xavier.init(jax.random.key(3), jnp.zeros((1, L), jnp.int32), jnp.zeros((1,)))["params"]
    other_embedding = np.asarray(getattr(other["embedding"], "value", other["embedding"]))
    assert other_embedding.std() == pytest.approx(1.0, rel=0.1)  # N(0, 1): 8x the reference's at d = 64


def test_proseco_loss_on_given_times_and_masks_equals_its_own_draw():
    objective = diffusion.Objective(config_base.Diffusion(), config_base.Corrector(), V)
    model, params = _model_and_params(MODEL)
    apply_fn = lambda p, tokens, sigma, dropout_rng=None: model.apply({"params": p}, tokens, sigma)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(1).integers(0, V, (B, L)), jnp.int32)
    rng = jax.random.key(4)
    drawn, _ = diffusion.proseco_loss(apply_fn, params, x, rng, jnp.asarray(0), objective)
    t, z = diffusion.draw_noise(jax.random.split(rng, 4)[0], x, objective)
    given, _ = diffusion.proseco_loss(apply_fn, params, x, rng, jnp.asarray(0), objective, t=t, z=z)
    assert float(given) == pytest.approx(float(drawn), rel=1e-6)
    other, _ = diffusion.proseco_loss(apply_fn, params, x, rng, jnp.asarray(0), objective, t=t * 0.5, z=x)
    assert float(other) != pytest.approx(float(drawn), rel=1e-3)


def _table_model(params, tokens, sigma):
    table = jnp.asarray(np.random.default_rng(7).normal(scale=0.5, size=(V + 1, V + 1)), jnp.float32)
    return table[tokens] + jnp.arange(L, dtype=jnp.float32)[None, :, None] * 0.1


def _one_step(settings: Sampling):
    plan = loop.make_plan(settings, Schedule(), batch_size=B, length=L, mask_id=V)
    state, fixed = loop.initial_state(plan, jax.random.key(0))
    out = loop.sampler_step(_table_model, plan, None, fixed, state, jnp.asarray(0, jnp.int32))
    raw = diffusion.log_probs_without_mask(_table_model(None, state.tokens, None), V)
    return out, raw


def test_nucleus_refilter_caches_the_filtered_log_probs_as_the_reference_does():
    kept, raw = _one_step(Sampling(sampler="mdlm", steps=64, nucleus_p=0.9))
    np.testing.assert_allclose(np.asarray(kept.logp), np.asarray(raw), atol=1e-6)
    refiltered, _ = _one_step(Sampling(sampler="mdlm", steps=64, nucleus_p=0.9, nucleus_refilter=True))
    expected = ops.nucleus_log_probs(raw, 0.9)
    np.testing.assert_allclose(np.asarray(refiltered.logp), np.asarray(expected), atol=1e-6)
    # Filtering twice keeps fewer tokens than once: the compounding the option reproduces.
    twice = ops.nucleus_log_probs(expected, 0.9)
    assert int(jnp.sum(jnp.isfinite(twice))) < int(jnp.sum(jnp.isfinite(expected)))


def test_a_corrector_step_leaves_its_own_unfiltered_log_probs_in_the_cache():
    settings = dict(sampler="proseco", steps=8, corrector_steps=1, nucleus_p=0.9)
    plain, _ = _one_step(Sampling(**settings))
    refiltered, _ = _one_step(Sampling(**settings, nucleus_refilter=True))
    np.testing.assert_array_equal(np.asarray(plain.logp), np.asarray(refiltered.logp))
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(refiltered.tokens))


def test_block_sampler_defaults_follow_llada_evaluation():
    assert Sampling(sampler="llada_block").resolved().temperature == 0.0
    assert Sampling(sampler="confidence").resolved().temperature == 1.0
    assert Sampling(sampler="llada_block", temperature=0.7).resolved().temperature == 0.7
    assert Sampling().stop_on_eos == "batch"


def _ctx(block_end: int) -> StepContext:
    return StepContext(step=jnp.asarray(0), t=jnp.asarray(1.0), s=jnp.asarray(0.5),
                       is_last=jnp.asarray(False), steps_left_in_block=jnp.asarray(2),
                       block_end=jnp.asarray(block_end),
                       block_done=jnp.asarray(True), run_corrector=jnp.asarray(False))


def test_stop_on_eos_per_sample_or_for_the_whole_batch():
    eos, mask = 3, V
    tokens = jnp.asarray([[1, eos, mask, mask], [1, 2, mask, mask]], jnp.int32)
    active = jnp.asarray([True, True])
    _, alone = stop_at_eos(tokens, active, _ctx(2), eos, mask, whole_batch=False)
    assert alone.tolist() == [False, True]
    _, together = stop_at_eos(tokens, active, _ctx(2), eos, mask, whole_batch=True)
    assert together.tolist() == [True, True]
    both = tokens.at[1, 1].set(eos)
    filled, stopped = stop_at_eos(both, active, _ctx(2), eos, mask, whole_batch=True)
    assert stopped.tolist() == [False, False] and np.all(np.asarray(filled)[:, 2:] == eos)


def test_confidence_threshold_commits_every_sure_proposal_and_random_remasking_ignores_confidence():
    sure = np.full((1, 6, V + 1), -30.0, np.float32)
    sure[0, :, 0] = 0.0  # token 0 everywhere, with probability ~1 ...
    sure[0, 4:, :V] = 0.0  # ... except two positions that are uniform
    logp = diffusion.log_probs_without_mask(jnp.asarray(sure), V)
    tokens = jnp.full((1, 6), V, jnp.int32)
    fixed = jnp.zeros((1, 6), bool)
    ctx = _ctx(6).replace(steps_left_in_block=jnp.asarray(6))
    keys = jax.random.split(jax.random.key(0), 1)  # one key per sample
    plain, _ = ConfidenceOrdered(V, temperature=0.0)(keys, tokens, logp, tokens, fixed, ctx)
    assert int(jnp.sum(plain != V)) == 1  # the even split: 6 masked over 6 steps
    eager, _ = ConfidenceOrdered(V, temperature=0.0, threshold=0.9)(keys, tokens, logp, tokens, fixed, ctx)
    assert np.asarray(eager != V).tolist() == [[True] * 4 + [False] * 2]
    picks = {int(jnp.argmax(ConfidenceOrdered(V, 0.0, remasking="random")(
        jax.random.split(jax.random.key(seed), 1), tokens, logp, tokens, fixed, ctx)[0] != V))
        for seed in range(12)}
    assert len(picks) > 1  # random order, not always the most confident position
