"""Tests of proseco_jax.sampling with fake models (no network is trained here).

Two fakes: `table_model`, whose logits come from a fixed random table indexed by position and the left,
right and own tokens (so the corrector has something to fix), and `stable_model`, whose argmax is a fixed
function of the position with near-one-hot probabilities (so every draw is predictable and the corrector
reaches its fixed point after one call). Both take the one calling convention (params, tokens, sigma) and
ignore params. Runs are module-scoped fixtures so each program compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proseco_jax import config_base
from proseco_jax.config_base import Sampling
from proseco_jax.sampling import UNMASKERS, Sampler, loop, ops
from proseco_jax.sampling.corrector import Corrector
from proseco_jax.sampling.loop import _sample_jit
from proseco_jax.sampling.unmasking import ConfidenceOrdered, StepContext
from proseco_jax.schedules import Schedule

V, L, B = 8, 16, 8  # real tokens (mask id = V), length, batch
MASK = V
SCHEDULE = Schedule()
RNG = jax.random.PRNGKey(0)
ROW_KEYS = ops.sample_keys(RNG, 0, B)  # a strategy draws row b from key b
_TABLE = jnp.asarray(np.random.default_rng(0).normal(size=(3, L, V + 1, V + 1)).astype(np.float32) * 2.0)


def table_model(params, tokens, sigma):
    del params, sigma
    left = jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=MASK)[:, :-1]
    right = jnp.pad(tokens, ((0, 0), (0, 1)), constant_values=MASK)[:, 1:]
    position = jnp.arange(tokens.shape[1])
    return _TABLE[0, position, left] + _TABLE[1, position, right] + _TABLE[2, position, tokens]


_CALLS = {"n": 0}


def _count_call():
    _CALLS["n"] += 1


STABLE_TARGET = (np.arange(L) * 3) % V


def stable_model(params, tokens, sigma):
    """Counts its executions; p(STABLE_TARGET[l]) = 1 - O(e^-1000) at every position l, whatever the input."""
    del params, sigma
    jax.debug.callback(_count_call)
    logits = 1e3 * jax.nn.one_hot(jnp.asarray(STABLE_TARGET), V + 1)
    return jnp.broadcast_to(logits, tokens.shape + (V + 1,))


EOS = V - 1
BLOCK_PROMPT, BLOCK_LEN = 2, 4  # generated region [2, 18): four blocks of four


def eos_model(params, tokens, sigma):
    """Stable: emits EOS from the last position of the second block on, never before (takes params)."""
    del sigma
    position = jnp.arange(tokens.shape[1])
    target = jnp.where(position >= BLOCK_PROMPT + 2 * BLOCK_LEN - 1, EOS, position % (V - 1))
    return jnp.broadcast_to(params["scale"] * jax.nn.one_hot(target, V + 1), tokens.shape + (V + 1,))


PROMPT = np.array([1, 2, 3], np.int32)
INFILL_KEEP = np.zeros((B, L), bool)
INFILL_KEEP[:, [7, 12]] = True
INFILL_KEEP[::2, 14] = True
INFILL_TOKENS = np.where(INFILL_KEEP, (np.arange(B)[:, None] + np.arange(L)[None]) % V, MASK).astype(np.int32)
# The conditioned run uses the top_k rule (the argmax rule is exercised by the NFE and block tests).
PROSECO = Sampling(sampler="proseco", steps=8, corrector_steps=2, corrector_rule="top_k", corrector_top_k=2)
CONDITIONS = dict(prompt=PROMPT, infill=(INFILL_TOKENS, INFILL_KEEP))


def sampler(model=table_model, params=None, **kwargs):
    return Sampler(apply_fn=model, params=params, schedule=SCHEDULE, mask_id=MASK, **kwargs)


def run(settings, model=table_model, params=None, *, batch_size=B, length=L, rng=RNG, vocab_size=None,
        mesh=None, **kwargs):
    return sampler(model, params, vocab_size=vocab_size, mesh=mesh).sample(settings, rng, batch_size, length,
                                                                         history=True, **kwargs)


def changed_rows(history, start):
    """bool [T, B]: whether z changed in each step (z before step 0 is `start`)."""
    previous = np.concatenate([start[None], history[:-1]])
    return (history != previous).any(-1)


@pytest.fixture(scope="module")
def conditioned():
    """ProSeCo with a prompt and infill positions: the run several tests inspect."""
    return run(PROSECO, **CONDITIONS)


@pytest.fixture(scope="module")
def mdlm():
    return run(Sampling(sampler="mdlm", steps=8))


def test_proseco_with_zero_corrector_steps_equals_mdlm_bit_for_bit(mdlm):
    out = run(PROSECO.replace(corrector_steps=0))
    np.testing.assert_array_equal(out.tokens, mdlm.tokens)
    np.testing.assert_array_equal(out.predictor_nfe, mdlm.predictor_nfe)
    assert int(out.corrector_nfe.sum()) == 0


def test_remdm_with_zero_eta_equals_mdlm_bit_for_bit(mdlm):
    settings = Sampling(sampler="remdm", steps=8, corrector_steps=0, remdm_strategy="cap", remdm_eta=0.0)
    out = run(settings)
    np.testing.assert_array_equal(out.tokens, mdlm.tokens)
    np.testing.assert_array_equal(out.nfe, mdlm.nfe)


@pytest.mark.parametrize("strategy,eta", [("rescale", 0.9), ("conf", 0.0), ("loop", 0.5)])
def test_remdm_remasks_decoded_tokens_and_leaves_no_mask(strategy, eta):
    settings = Sampling(sampler="remdm", steps=16, corrector_steps=0, remdm_strategy=strategy, remdm_eta=eta,
                        remdm_t_on=0.7, remdm_t_off=0.2, remdm_alpha_on=0.5)
    out = run(settings)
    history = np.asarray(out.history)
    remasked = (history[:-1] != MASK) & (history[1:] == MASK)
    assert remasked.any(), "ReMDM never remasked a decoded token"
    assert not (np.asarray(out.tokens) == MASK).any()


def test_corrector_changes_decoded_tokens_but_never_prompt_or_infill_and_top_k_bounds_it(conditioned):
    history = np.asarray(conditioned.history)
    fixed = INFILL_KEEP.copy()
    fixed[:, : len(PROMPT)] = True
    expected = np.where(fixed, INFILL_TOKENS, 0)
    expected[:, : len(PROMPT)] = PROMPT
    for z in history:
        np.testing.assert_array_equal(np.where(fixed, z, 0), expected)
    # The unmasking step never changes a decoded token, so any such change is the corrector's work.
    corrected = ((history[:-1] != MASK) & (history[1:] != history[:-1])).sum(-1)
    assert corrected.max() >= 1, "the corrector changed nothing: the test above proves little"
    assert corrected.max() <= PROSECO.corrector_top_k * PROSECO.corrector_steps
    assert not (np.asarray(conditioned.tokens) == MASK).any()


@pytest.mark.parametrize("shape,axes", [((8,), ("data",)), ((2, 2, 2), ("data", "fsdp", "tensor"))])
def test_sampling_on_a_mesh_of_eight_devices_equals_sampling_without_one(conditioned, shape, axes):
    assert jax.device_count() == 8
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(shape), axes,
                             axis_types=(jax.sharding.AxisType.Auto,) * len(axes))
    out = run(PROSECO, mesh=mesh, **CONDITIONS)
    assert len(out.tokens.sharding.device_set) == 8 and not out.tokens.sharding.is_fully_replicated
    np.testing.assert_array_equal(out.tokens, conditioned.tokens)
    np.testing.assert_array_equal(out.nfe, conditioned.nfe)
    np.testing.assert_array_equal(out.history, conditioned.history)


def test_host_loop_gives_the_same_tokens_and_nfe_as_the_scan_for_proseco_with_s2(conditioned):
    assert PROSECO.sampler == "proseco" and PROSECO.corrector_steps == 2
    compiled = loop._step_jit._cache_size()
    out = run(PROSECO, host_loop=True, **CONDITIONS)
    assert loop._step_jit._cache_size() <= compiled + 1, "the host loop's step compiled more than once"
    assert int(conditioned.corrector_nfe.min()) > 0, "the corrector never ran: the test proves little"
    np.testing.assert_array_equal(out.tokens, conditioned.tokens)
    np.testing.assert_array_equal(out.history, conditioned.history)
    np.testing.assert_array_equal(out.predictor_nfe, conditioned.predictor_nfe)
    np.testing.assert_array_equal(out.corrector_nfe, conditioned.corrector_nfe)
    assert int(out.model_calls) == int(conditioned.model_calls)


@pytest.mark.parametrize("settings", [
    Sampling(sampler="proseco", steps=6, corrector_steps=2, corrector_rule="sample", corrector_prior="sample",
             nucleus_p=0.9),
    Sampling(sampler="remdm", steps=6, remdm_strategy="conf", remdm_eta=0.5),
    Sampling(sampler="confidence", steps=6, remasking="random", corrector_steps=1),
    Sampling(sampler="llada_block", steps=6, block_length=BLOCK_LEN + 1, corrector_steps=1, temperature=1.0),
], ids=lambda s: s.sampler)
def test_a_sample_depends_on_its_index_not_on_its_batch_or_the_host_loop(settings):
    # Prompt of 3: the block sampler's generated region of 13 is not whole blocks of 5, so pad it to 18.
    length = L + 2 if settings.kind.blocked else L
    whole = run(settings, length=length, prompt=PROMPT)
    assert len({tuple(row) for row in np.asarray(whole.tokens).tolist()}) > 1, "rows alike: proves little"
    halves = [run(settings, length=length, prompt=PROMPT, batch_size=4, first_index=i) for i in (0, 4)]
    tail = run(settings, length=length, prompt=PROMPT, batch_size=2, first_index=6, host_loop=True)
    for name in ("tokens", "predictor_nfe", "corrector_nfe"):
        joined = np.concatenate([getattr(half, name) for half in halves])
        np.testing.assert_array_equal(joined, getattr(whole, name))
        np.testing.assert_array_equal(getattr(tail, name), getattr(whole, name)[6:])
    np.testing.assert_array_equal(tail.history, np.asarray(whole.history)[:, 6:])


def test_second_call_reuses_the_compiled_program(conditioned):
    size = _sample_jit._cache_size()
    again = run(PROSECO, **CONDITIONS)
    other = run(PROSECO, rng=jax.random.PRNGKey(1), **CONDITIONS)
    assert _sample_jit._cache_size() == size
    np.testing.assert_array_equal(again.tokens, conditioned.tokens)
    assert (np.asarray(other.tokens) != np.asarray(conditioned.tokens)).any()


def test_preset_and_empty_parameterization_resolve_to_the_same_program(conditioned):
    # "fast" is (T, omega, S) = (8, 1, 2), PROSECO's; "" follows training ("subs" by default), and the
    # section's batch_size is not the run's, so none of them may cost a compile or change a token.
    settings = Sampling(preset="fast", steps=99, corrector_steps=0, corrector_rule="top_k", corrector_top_k=2,
                        parameterization="", batch_size=3)
    size = _sample_jit._cache_size()
    out = run(settings, **CONDITIONS)
    assert _sample_jit._cache_size() == size
    np.testing.assert_array_equal(out.tokens, conditioned.tokens)
    np.testing.assert_array_equal(out.nfe, conditioned.nfe)


def test_nfe_counts_are_exact_and_cached_steps_are_free():
    # T = 24 > L = 16 steps, so some steps unmask nothing; the corrector runs after steps 4, 6, ..., 24.
    settings = Sampling(sampler="proseco", steps=24, corrector_steps=3, corrector_every=2, corrector_start=4)
    _CALLS["n"] = 0
    out = run(settings, model=stable_model)
    jax.effects_barrier()
    history = np.asarray(out.history)
    np.testing.assert_array_equal(out.tokens, np.broadcast_to(STABLE_TARGET, (B, L)))
    # The predictor runs at step 0 and after every step that changed z (the corrector never does here).
    changed = changed_rows(history, np.full((B, L), MASK))
    np.testing.assert_array_equal(out.predictor_nfe, 1 + changed[:-1].sum(0))
    assert (np.asarray(out.predictor_nfe) < settings.steps).all()
    corrector_calls = len([i for i in range(24) if (i + 1) % 2 == 0 and i + 1 >= 4])
    np.testing.assert_array_equal(out.corrector_nfe, np.full(B, corrector_calls))  # a fixed point at once
    np.testing.assert_array_equal(out.nfe, out.predictor_nfe + out.corrector_nfe)
    batched_calls = 1 + changed[:-1].any(1).sum() + corrector_calls
    assert int(out.model_calls) == batched_calls == _CALLS["n"]


def random_log_probs(seed):
    logits = np.random.default_rng(seed).normal(size=(B, L, V + 1)).astype(np.float32)
    logits[..., MASK] = -np.inf
    return jax.nn.log_softmax(jnp.asarray(logits))


def test_top_k_rule_changes_exactly_the_k_most_confident_positions_per_iteration():
    corrector = Corrector(MASK, steps=1, rule="top_k", top_k=2)
    c = random_log_probs(3)
    y = jnp.zeros((B, L), jnp.int32)
    movable = jnp.ones((B, L), bool).at[:, :4].set(False)
    y_next = jax.jit(corrector.update)(ROW_KEYS, c, y, movable)  # one compile instead of one per eager op
    moved = np.asarray(y_next != y)
    np.testing.assert_array_equal(moved.sum(-1), 2)  # many candidates: exactly K move
    assert not moved[:, :4].any()
    best = np.asarray(jnp.argmax(c, -1))
    np.testing.assert_array_equal(np.asarray(y_next)[moved], best[moved])
    # The K moved are the most confident of the candidates.
    score = np.where(movable & (best != 0), np.asarray(jnp.exp(c.max(-1))), -np.inf)
    assert (score[moved].reshape(B, 2).min(-1) >= np.where(moved, -np.inf, score).max(-1)).all()


def test_confidence_sampler_commits_an_even_split_of_the_most_confident_tokens():
    settings = Sampling(sampler="confidence", steps=5, corrector_steps=1)
    out = run(settings)
    history = np.asarray(out.history)
    masked = np.concatenate([np.full((1, B), L), (history == MASK).sum(-1)])
    np.testing.assert_array_equal(masked[:-1] - masked[1:], np.tile([[4], [3], [3], [3], [3]], (1, B)))
    assert not (history[-1] == MASK).any()
    # One step in isolation, greedy: the committed positions are the most confident masked ones.
    step = ConfidenceOrdered(MASK, temperature=0.0)
    logp = random_log_probs(5)
    tokens = jnp.full((B, L), MASK, jnp.int32).at[:, 0].set(1)
    ctx = StepContext(step=jnp.int32(0), t=jnp.float32(1), s=jnp.float32(0.5), is_last=jnp.bool_(False),
                      steps_left_in_block=jnp.int32(5), block_end=jnp.int32(L), block_done=jnp.bool_(False),
                      run_corrector=jnp.bool_(False))
    new, _ = jax.jit(step)(ROW_KEYS, tokens, logp, jnp.zeros((B, L)), jnp.zeros((B, L), bool), ctx)
    committed = np.asarray(new != tokens)
    np.testing.assert_array_equal(committed.sum(-1), 3)  # ceil(15 / 5)
    confidence = np.exp(np.asarray(logp).max(-1))
    confidence[:, 0] = -np.inf
    threshold = np.sort(confidence, -1)[:, -3]
    np.testing.assert_array_equal(committed, confidence >= threshold[:, None])
    np.testing.assert_array_equal(np.asarray(new)[committed], np.asarray(jnp.argmax(logp, -1))[committed])


def test_block_sampler_fills_blocks_in_order_and_stops_at_eos():
    length = BLOCK_PROMPT + 4 * BLOCK_LEN
    settings = Sampling(sampler="llada_block", steps=8, block_length=BLOCK_LEN, eos_id=EOS, corrector_steps=1)
    out = run(settings, model=eos_model, length=length, prompt=np.array([3, 4], np.int32),
              params={"scale": jnp.float32(1e3)})
    history = np.asarray(out.history)
    position = np.arange(length)
    for i in range(4):  # two steps per block; blocks 0 and 1 run before the stop
        block_end = BLOCK_PROMPT + (i // 2 + 1) * BLOCK_LEN
        assert ((history[i][:, BLOCK_PROMPT:block_end] == MASK).sum(-1) == (1 - i % 2) * 2).all()
        if i < 3:
            assert (history[i][:, position >= block_end] == MASK).all()
    # Block 1 ends in EOS: every sample stops there, its remaining masks become EOS, and no NFE follows.
    np.testing.assert_array_equal(history[3][:, BLOCK_PROMPT + 2 * BLOCK_LEN:], EOS)
    np.testing.assert_array_equal(history[3], history[-1])
    np.testing.assert_array_equal(out.predictor_nfe, 4)
    np.testing.assert_array_equal(out.corrector_nfe, 4)
    np.testing.assert_array_equal(history[-1][:, :BLOCK_PROMPT], np.broadcast_to([3, 4], (B, 2)))


def test_float64_sampling_with_the_sample_rule_and_nucleus():
    settings = Sampling(sampler="proseco", steps=6, corrector_steps=3, corrector_rule="sample",
                        corrector_prior="sample", nucleus_p=0.9, precision="float64")
    with jax.enable_x64(True):
        out = run(settings)
    tokens = np.asarray(out.tokens)
    assert ((tokens >= 0) & (tokens < V)).all()
    # Six corrector calls, each with one to three model calls.
    assert ((np.asarray(out.corrector_nfe) >= 6) & (np.asarray(out.corrector_nfe) <= 18)).all()
    assert (np.asarray(out.corrector_nfe) > 6).any()


def test_every_sampler_leaves_no_mask_and_stays_in_the_real_vocabulary(conditioned, mdlm):
    for out in (conditioned, mdlm):
        tokens = np.asarray(out.tokens)
        assert ((tokens >= 0) & (tokens < V)).all()


def test_corrector_start_keeps_visible_tokens_only_for_the_subs_parameterization():
    logp = random_log_probs(7)
    tokens = jnp.full((B, L), MASK, jnp.int32).at[:, 1::2].set(0)
    fixed = jnp.zeros((B, L), bool).at[:, 0].set(True)
    best = np.asarray(jnp.argmax(logp, -1))
    for keep_visible in (True, False):
        corrector = Corrector(MASK, steps=1, keep_visible=keep_visible)
        y = np.asarray(jax.jit(corrector.initial)(ROW_KEYS, tokens, logp, fixed))
        np.testing.assert_array_equal(y[:, 0], MASK)  # fixed positions keep their token, whatever it is
        np.testing.assert_array_equal(y[:, 2::2], best[:, 2::2])
        np.testing.assert_array_equal(y[:, 1::2], 0 if keep_visible else best[:, 1::2])


def test_nucleus_keeps_the_smallest_top_set_within_p_and_renormalises():
    logp = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3, 0.0]], jnp.float32))
    kept = np.exp(np.asarray(jax.jit(ops.nucleus_log_probs, static_argnums=1)(logp, 0.85)))
    np.testing.assert_allclose(kept, [[0.0, 0.625, 0.0, 0.375, 0.0]], rtol=1e-6)
    top1 = np.exp(np.asarray(jax.jit(ops.nucleus_log_probs, static_argnums=1)(logp, 0.1)))
    np.testing.assert_allclose(top1, [[0.0, 1.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("fields,match", [
    (dict(corrector_steps=-1), "corrector_steps"),
    (dict(steps=0), "steps"),
    (dict(corrector_every=0), "corrector_every"),
    (dict(corrector_rule="median"), "corrector_rule"),
    (dict(corrector_prior="mean"), "corrector_prior"),
    (dict(sampler="gibbs"), "sampler"),
    (dict(sampler="remdm", remdm_strategy="twice"), "remdm_strategy"),
    (dict(sampler="remdm", remdm_strategy="loop", remdm_t_on=0.1, remdm_t_off=0.2), "t_off"),
    (dict(precision="float16"), "precision"),
    (dict(nucleus_p=0.0), "nucleus_p"),
    (dict(corrector_rule="top_k", corrector_top_k=0), "corrector_top_k"),
])
def test_bad_settings_raise_value_error(fields, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**fields)


BAD_INFILL_TOKENS = INFILL_TOKENS.copy()
BAD_INFILL_TOKENS[0, 7] = V  # the mask id is not a real token


@pytest.mark.parametrize("settings,kwargs,match", [
    (PROSECO, dict(prompt=np.arange(L) % V), "nothing to generate"),
    (PROSECO, dict(prompt=np.array([1, V])), "outside the real tokens"),
    (PROSECO, dict(prompt=np.array([-1, 2])), "outside the real tokens"),
    (PROSECO, dict(prompt=np.zeros((3, 2), np.int32)), "prompt must have shape"),
    (PROSECO, dict(infill=(BAD_INFILL_TOKENS, INFILL_KEEP)), "outside the real tokens"),
    (PROSECO, dict(infill=(INFILL_TOKENS[:, :4], INFILL_KEEP)), "infill tokens must have shape"),
    (Sampling(sampler="confidence", steps=L + 1), {}, "exceeds"),
    (Sampling(sampler="llada_block", steps=8, block_length=4), dict(prompt=np.array([1, 2, 3])),
     "13 generated positions are not whole blocks of sampling.block_length=4"),
    (Sampling(sampler="llada_block", steps=6, block_length=4), {}, "steps=6 is not a multiple of the 4 "),
    (Sampling(sampler="llada_block", steps=8, block_length=8, eos_id=V), {}, "eos_id"),
])
def test_bad_inputs_raise_value_error(settings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampler().sample(settings, RNG, B, L, **kwargs)


def test_float64_needs_x64_in_the_core_and_the_sampler_switches_it_on_around_its_call():
    settings = Sampling(steps=2, precision="float64")
    with pytest.raises(ValueError, match="x64"):
        loop.make_plan(settings, SCHEDULE, batch_size=B, length=L, mask_id=MASK)
    out = sampler().sample(settings, RNG, B, L)
    tokens = np.asarray(out.tokens)
    assert not jax.config.jax_enable_x64 and ((tokens >= 0) & (tokens < V)).all()


def test_wrong_logit_shape_and_unshardable_batch_raise_value_error():
    with pytest.raises(ValueError, match="logits of shape"):
        narrow = sampler(lambda params, tokens, sigma: jnp.zeros(tokens.shape + (V,)))
        narrow.sample(Sampling(steps=2), RNG, B, L)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("data",))
    for host_loop in (False, True):
        with pytest.raises(ValueError, match="not divisible"):
            sampler(mesh=mesh).sample(PROSECO, RNG, 4, L, host_loop=host_loop)


WIDE, ABOVE = V + 4, V + 2  # a table with [MASK] (= V) inside it and ids above it, as LLaDA's


def above_mask_model(params, tokens, sigma):
    """[MASK] has the highest logit and id ABOVE (> mask id) the next one, at every position."""
    del params, sigma
    logits = jnp.zeros((WIDE,)).at[MASK].set(1e3).at[ABOVE].set(50.0)
    return jnp.broadcast_to(logits, tokens.shape + (WIDE,))


@pytest.mark.parametrize("settings", [
    Sampling(sampler="mdlm", steps=4),
    Sampling(sampler="proseco", steps=4, corrector_steps=1),
    Sampling(sampler="llada_block", steps=4, block_length=4, corrector_steps=1),
], ids=["mdlm", "proseco", "llada_block"])
def test_ids_above_the_mask_are_sampled_when_read_and_the_mask_never_is(settings):
    prompted = settings.sampler == "llada_block"
    prompt = np.array([ABOVE + 1, 1], np.int32) if prompted else None  # prompts may hold ids above the mask
    wide = run(settings, model=above_mask_model, length=10 if prompted else 8, vocab_size=WIDE, prompt=prompt)
    tokens, history = np.asarray(wide.tokens), np.asarray(wide.history)
    generated = tokens[:, 2:] if prompted else tokens
    np.testing.assert_array_equal(generated, ABOVE)
    assert not (history[0] == ABOVE).all(), "everything was decoded at once: the test proves little"
    if prompted:
        np.testing.assert_array_equal(tokens[:, :2], np.broadcast_to(prompt, (B, 2)))
    narrow = run(settings, model=above_mask_model, length=8)  # reads [0, mask id] only
    assert ((np.asarray(narrow.tokens) >= 0) & (np.asarray(narrow.tokens) < MASK)).all()


def test_ids_above_the_vocabulary_read_or_the_mask_itself_are_rejected_in_prompts_and_eos():
    wide = sampler(above_mask_model, vocab_size=WIDE)
    for prompt in ([1, WIDE], [1, MASK]):
        with pytest.raises(ValueError, match=f"other than \\[MASK\\] = {MASK}"):
            wide.sample(PROSECO, RNG, B, L, prompt=np.array(prompt, np.int32))
    with pytest.raises(ValueError, match="eos_id"):
        wide.sample(Sampling(sampler="llada_block", steps=4, block_length=4, eos_id=MASK), RNG, B, L)
    with pytest.raises(ValueError, match="logits of shape"):
        sampler(vocab_size=WIDE).sample(PROSECO, RNG, B, L)  # its logits stop at the mask id


def test_the_sampler_table_names_exactly_the_configurable_samplers_and_answers_their_traits():
    assert tuple(UNMASKERS) == tuple(config_base.SAMPLERS)
    assert [name for name, kind in config_base.SAMPLERS.items() if not kind.corrects] == ["mdlm"]
    assert [name for name, kind in config_base.SAMPLERS.items() if kind.blocked] == ["llada_block"]
    assert Sampling(sampler="llada_block").resolved().temperature == 0.0
    assert Sampling(sampler="confidence").resolved().temperature == 1.0
    assert Sampling(sampler="mdlm", corrector_steps=3).num_corrector_steps == 0
