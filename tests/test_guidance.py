"""Classifier-free guidance: the sampler with a label-conditioned fake model, label dropout in training.

The fake model's logits come from a fixed random table indexed by position, the neighbours, the own token
and the label (the last label row is "no label"), so conditional and unconditional predictions differ.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from proseco_jax import config_base, diffusion, sharding, train
from proseco_jax.config_base import Sampling
from proseco_jax.configlib import ConfigError
from proseco_jax.sampling import Sampler, SamplingError
from proseco_jax.sampling.guidance import Guidance, combine, paired_log_probs
from proseco_jax.schedules import Schedule

V, L, B, CLASSES = 8, 12, 8, 2
MASK, NULL = V, CLASSES
RNG = jax.random.PRNGKey(3)
_TABLE = jnp.asarray(np.random.default_rng(1).normal(size=(CLASSES + 1, 3, L, V + 1, V + 1)), jnp.float32)


def labelled_model(params, tokens, sigma, labels=None):
    del params, sigma
    labels = jnp.full((tokens.shape[0],), NULL) if labels is None else labels
    left = jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=MASK)[:, :-1]
    right = jnp.pad(tokens, ((0, 0), (0, 1)), constant_values=MASK)[:, 1:]
    position = jnp.arange(tokens.shape[1])
    table = _TABLE[labels][:, :, None]  # [B, 3, 1, L, V+1, V+1]
    rows = jnp.arange(tokens.shape[0])[:, None]
    return (table[rows, 0, 0, position, left] + table[rows, 1, 0, position, right]
            + table[rows, 2, 0, position, tokens])


def bound(label):
    """The fake model with every call given `label` (no guidance involved)."""
    return lambda params, tokens, sigma: labelled_model(params, tokens, sigma,
                                                        jnp.full((tokens.shape[0],), label, jnp.int32))


def _sampler(model=labelled_model, num_classes=CLASSES):
    return Sampler(apply_fn=model, params=None, schedule=Schedule(), mask_id=MASK, num_classes=num_classes)


MDLM = Sampling(sampler="mdlm", steps=6)
PROSECO = Sampling(sampler="proseco", steps=6, corrector_steps=2)


@pytest.mark.parametrize("settings", [MDLM, PROSECO], ids=["mdlm", "proseco"])
def test_gamma_one_is_the_conditional_model_and_gamma_zero_the_unconditional_one_exactly(settings):
    guided = _sampler()
    for scale, label in ((1.0, 1), (0.0, NULL)):
        out = guided.sample(settings.replace(guidance_label=1, guidance_scale=scale), RNG, B, L)
        plain = _sampler(bound(label), num_classes=0).sample(settings, RNG, B, L)
        np.testing.assert_array_equal(out.tokens, plain.tokens)
        np.testing.assert_array_equal(out.nfe, plain.nfe)  # one model evaluation per call
        np.testing.assert_array_equal(out.step_nfe, out.nfe)


def test_mixing_gamma_samples_from_the_renormalised_combination_and_counts_both_evaluations():
    scale = 3.0

    def combined(params, tokens, sigma):  # what a guided prediction is, as one model
        logp = [jax.nn.log_softmax(bound(c)(params, tokens, sigma)[..., :V], -1) for c in (1, NULL)]
        return jnp.concatenate([combine(*logp, scale), jnp.full(tokens.shape + (1,), -1e9)], -1)

    out = _sampler().sample(MDLM.replace(guidance_label=1, guidance_scale=scale), RNG, B, L)
    plain = _sampler(combined, num_classes=0).sample(MDLM, RNG, B, L)
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    np.testing.assert_array_equal(out.predictor_nfe, 2 * plain.predictor_nfe)
    np.testing.assert_array_equal(out.step_nfe, plain.nfe)  # the authors' count: one per step's call
    assert int(out.model_calls) == int(plain.model_calls)  # both evaluations in one batched call


def test_guided_corrector_calls_both_models_and_the_conditional_one_only_the_conditional():
    settings = PROSECO.replace(guidance_label=0, guidance_scale=2.0)
    conditional = _sampler().sample(settings.replace(guidance_corrector="conditional"), RNG, B, L)
    guided = _sampler().sample(settings.replace(guidance_corrector="guided"), RNG, B, L)
    for out, per_call in ((conditional, 1), (guided, 2)):
        corrector_calls = out.step_nfe - out.predictor_nfe // 2
        np.testing.assert_array_equal(out.corrector_nfe, per_call * corrector_calls)
        assert int(corrector_calls.min()) > 0
    assert not np.array_equal(conditional.tokens, guided.tokens)


def test_with_the_authors_corrector_at_every_step_gamma_has_no_effect_and_with_the_guided_one_it_has():
    def tokens(scale, mode):
        settings = PROSECO.replace(guidance_label=1, guidance_scale=scale, guidance_corrector=mode)
        return np.asarray(_sampler().sample(settings, RNG, B, L).tokens)

    # The corrector's conditional log-probs replace the guided prediction before every unmasking.
    np.testing.assert_array_equal(tokens(1.0, "conditional"), tokens(4.0, "conditional"))
    assert not np.array_equal(tokens(1.0, "guided"), tokens(4.0, "guided"))


def test_combine_keeps_ruled_out_ids_out_for_any_gamma_and_renormalises():
    cond = jax.nn.log_softmax(jnp.array([[1.0, 2.0, -jnp.inf]]), -1)
    uncond = jax.nn.log_softmax(jnp.array([[0.5, -1.0, -jnp.inf]]), -1)
    for scale in (0.0, 0.5, 1.0, 4.0):
        out = combine(cond, uncond, scale)
        assert out[0, 2] == -jnp.inf
        np.testing.assert_allclose(jnp.exp(out).sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(combine(cond, uncond, 1.0), cond, atol=1e-6)
    np.testing.assert_allclose(combine(cond, uncond, 0.0), uncond, atol=1e-6)


def test_paired_log_probs_label_the_two_halves_conditional_then_unconditional():
    seen = []

    def log_probs(tokens, sigma, labels):
        seen.append(np.asarray(labels))
        return jnp.zeros(tokens.shape + (V + 1,))

    g = Guidance(scale=2.0, label=1, null_label=NULL)
    cond, uncond = paired_log_probs(log_probs, jnp.zeros((3, L), jnp.int32), jnp.zeros((3,)), g)
    assert cond.shape == uncond.shape == (3, L, V + 1)
    np.testing.assert_array_equal(seen[0], [1, 1, 1, NULL, NULL, NULL])


def test_guidance_is_refused_without_labels_or_outside_the_classes_in_one_line():
    with pytest.raises(SamplingError, match="trained without labels"):
        _sampler(num_classes=0).sample(MDLM.replace(guidance_label=0), RNG, B, L)
    with pytest.raises(SamplingError, match="not one of the model's 2 classes"):
        _sampler().sample(MDLM.replace(guidance_label=2), RNG, B, L)
    with pytest.raises(ConfigError, match="guidance_scale"):
        Sampling(guidance_scale=-1.0)
    with pytest.raises(ConfigError, match="model.num_classes=0"):
        config_base.resolve(tiny_config("--config.sampling.guidance_label=1"))
    with pytest.raises(ConfigError, match="label_dropout"):
        config_base.resolve(tiny_config("--config.train.label_dropout=0.1"))


def test_label_dropout_drops_at_its_rate_to_the_no_label_row():
    labels = jnp.ones((200_000,), jnp.int32)
    for rate in (0.0, 0.1, 0.5, 1.0):
        out = diffusion.drop_labels(jax.random.key(0), labels, rate, NULL)
        assert set(np.unique(out)) <= {1, NULL}
        assert abs(float(jnp.mean(out == NULL)) - rate) < 0.005


def test_both_passes_of_the_step_see_the_same_possibly_dropped_labels():
    config = config_base.resolve(tiny_config("--config.model.num_classes=2",
                                             "--config.train.label_dropout=0.5"))
    seen = []

    def apply_fn(params, tokens, sigma, dropout_rng=None, labels=None):
        seen.append(labels)
        return jnp.zeros(tokens.shape + (config.mask_id + 1,)) + params["w"]

    objective = diffusion.Objective(config.diffusion, config.corrector, config.mask_id,
                                    config.output_vocab_size)
    tokens = jnp.zeros((8, config.data.length), jnp.int32)
    labels = diffusion.drop_labels(jax.random.key(1), jnp.ones((8,), jnp.int32), 0.5, 2)
    (loss, _), _ = train.loss_and_grads({"w": jnp.zeros(())}, tokens, jax.random.key(0), jnp.asarray(0),
                                        apply_fn=apply_fn, objective=objective, labels=labels)
    assert len(seen) == 2 and seen[0] is seen[1]  # pass one and the corrector pass: one labels array
    assert np.isfinite(float(loss))


def test_a_label_conditioned_model_trains_and_validates_with_its_labels_on_the_mesh():
    config = config_base.resolve(tiny_config("--config.model.num_classes=2",
                                             "--config.train.label_dropout=0.1"))
    mesh = sharding.make_mesh(config.mesh)
    program = train.build(config, mesh)
    state = program.init(jax.random.key(0))
    host = {"tokens": np.zeros((config.train.batch_size, config.data.length), np.int32),
            "label": np.arange(config.train.batch_size, dtype=np.int32) % 2}
    batch = program.batch(host)
    assert batch["labels"].shape == (config.train.batch_size,)
    state, metrics = program.step(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    nats, count = program.evaluate(state.params, batch, jax.random.key(2))
    assert np.isfinite(float(nats)) and float(count) > 0
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state.params)]
    assert any("label_embedding" in path for path in paths)
