"""Tests of the sharded two-pass train step on the real DiT (tiny config, 8 fake CPU devices).

Compiling a train step is the expensive part on CPU, so each variant (mesh, micro-batching, remat, dtype)
is compiled once in a module-scoped fixture, and every run starts from the same initial state, copied to
the host once and placed on each mesh with `jax.device_put`. `conftest.py` compiles every program with XLA's
backend at optimisation level 0, about twice as fast on CPU; the HLO (and so the sharding and the
arithmetic) is exactly what `train.build` produced.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from proseco_jax import config_base, diffusion, sharding, train
from proseco_jax.errors import UsageError

VOCAB, LENGTH, BATCH = 15, 16, 8
STEPS = 3


def tiny_config(**mesh) -> ml_collections.ConfigDict:
    c = config_base.get_config()
    c.model.num_layers = 1
    c.model.hidden_size = 32
    c.model.num_heads = 2
    c.model.cond_dim = 16
    c.model.max_length = LENGTH
    c.data.vocab_size = VOCAB
    c.data.length = LENGTH
    c.train.batch_size = BATCH
    c.train.warmup_steps = 0  # a warm-up starting at lr 0 would leave the first step's params unchanged
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh.get("data", 1), mesh.get("fsdp", 1), mesh.get("tensor", 1)
    return c


def one_device_mesh(config):
    return sharding.make_mesh(config.mesh, jax.devices()[:1])


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _init(compiled: train.TrainProgram):
    key = jax.random.key(0)
    return _host(compiled.init(key))


def _run(compiled: train.TrainProgram, host_state, steps: int, rngs=None):
    """Runs `steps` steps from a host copy of the state; returns host (states, metrics) after each step."""
    state = jax.device_put(host_state, compiled.state_shardings)
    batch = train.device_batch({"tokens": _tokens()}, compiled.mesh)
    rngs = [jax.random.key(100 + i) for i in range(steps)] if rngs is None else rngs
    step_fn = compiled.step
    states, metrics = [], []
    for i in range(steps):
        state, mets = step_fn(state, batch, rngs[i])
        states.append(_host(state))
        metrics.append({k: float(v) for k, v in mets.items()})
    return states, metrics, state


@pytest.fixture(scope="module")
def base():
    """The 1-device compiled step, the initial state on the host, and a 3-step trajectory."""
    config = tiny_config()
    compiled = train.build(config, one_device_mesh(config))
    init = _init(compiled)
    states, metrics, _ = _run(compiled, init, STEPS)
    return dict(config=config, compiled=compiled, init=init, states=states, metrics=metrics)


@pytest.fixture(scope="module")
def sharded(base):
    """The same trajectory on 8 devices (data=2, fsdp=2, tensor=2), with remat on.

    Rematerialisation must not change a single number either, so one compile covers both properties
    (a train-step compile costs ~10 s of CPU here); `test_remat_...` below checks it by name.
    """
    config = tiny_config(data=2, fsdp=2, tensor=2)
    config.model.remat = True
    mesh = sharding.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    compiled = train.build(config, mesh)
    states, metrics, last = _run(compiled, base["init"], STEPS)
    return dict(compiled=compiled, states=states, metrics=metrics, last=last)


def _variant(base, steps: int, **overrides):
    """Compiles the 1-device step of a changed config and runs it from the shared initial state."""
    config = tiny_config()
    for dotted, value in overrides.items():
        section, field = dotted.split("__")
        config[section][field] = value
    compiled = train.build(config, one_device_mesh(config))
    states, metrics, _ = _run(compiled, base["init"], steps)
    return compiled, states, metrics


def _assert_trees_close(a, b, atol: float):
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------- mesh equivalence


def test_sharded_step_gives_the_same_metrics_as_one_device(base, sharded):
    """3 steps with fresh keys on data=2, fsdp=2, tensor=2 (remat on) vs 1 device (remat off)."""
    for one, eight in zip(base["metrics"], sharded["metrics"]):
        assert one.keys() == eight.keys()
        for key in one:
            np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert {"loss", "mdm_loss", "corrector_loss", "grad_norm"} <= set(base["metrics"][0])


def test_sharded_step_gives_the_same_params_and_optimizer_state_as_one_device(base, sharded):
    for one, eight in zip(base["states"], sharded["states"]):
        assert int(one.step) == int(eight.step)
        _assert_trees_close(eight.params, one.params, atol=1e-5)
        _assert_trees_close(eight.ema_params, one.ema_params, atol=1e-5)
        _assert_trees_close(eight.opt_state, one.opt_state, atol=1e-5)


def test_train_step_changes_params_and_counts_steps(base):
    assert [int(s.step) for s in base["states"]] == list(range(1, STEPS + 1))
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), base["states"][0].params,
                         base["init"].params)
    assert max(jax.tree.leaves(moved)) > 1e-4
    for metrics in base["metrics"]:
        assert all(math.isfinite(v) for v in metrics.values())


def _expected_shard_shape(shape, spec, mesh) -> tuple[int, ...]:
    out = []
    for i, size in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        out.append(size // int(np.prod([mesh.shape[a] for a in axes])))
    return tuple(out)


def test_params_are_sharded_as_the_logical_axis_rules_say(sharded):
    params = sharded["last"].params
    qkv = params["block_0"]["qkv"]["kernel"]  # [embed, 3, heads, kv]
    embedding = params["embedding"]  # [vocab, embed]
    assert qkv.sharding.spec == P("fsdp", None, "tensor", None)
    assert embedding.sharding.spec == P("tensor", "fsdp")
    assert params["block_0"]["mlp_in"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert params["block_0"]["mlp_out"]["kernel"].sharding.spec == P("tensor", "fsdp")
    assert params["output"]["kernel"].sharding.spec == P("fsdp", "tensor")
    # fsdp=2 x tensor=2: each device holds a quarter of these arrays (replicated over data=2).
    assert qkv.shape == (32, 3, 2, 16)
    assert qkv.addressable_shards[0].data.shape == (16, 3, 1, 16)
    assert embedding.shape == (16, 32)
    assert embedding.addressable_shards[0].data.shape == (8, 16)
    distinct = {tuple((s.start, s.stop) for s in shard.index) for shard in embedding.addressable_shards}
    assert len(distinct) == 4
    # The time embedding is replicated: every device holds all of it.
    fc1 = params["time"]["fc1"]["kernel"]
    assert fc1.addressable_shards[0].data.shape == fc1.shape


def test_every_param_shard_has_the_shape_its_spec_implies(sharded):
    state = sharded["last"]
    mesh = sharded["compiled"].mesh
    for tree in (state.params, state.ema_params):
        for leaf in jax.tree.leaves(tree):
            expected = _expected_shard_shape(leaf.shape, leaf.sharding.spec, mesh)
            assert leaf.addressable_shards[0].data.shape == expected
            assert len(leaf.addressable_shards) == 8


def test_ema_and_optimizer_moments_are_sharded_like_the_params(sharded):
    state = sharded["last"]
    specs = jax.tree.map(lambda a: a.sharding.spec, state.params)
    assert jax.tree.map(lambda a: a.sharding.spec, state.ema_params) == specs
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    assert jax.tree.map(lambda a: a.sharding.spec, adam.mu) == specs
    assert jax.tree.map(lambda a: a.sharding.spec, adam.nu) == specs


def test_global_batch_is_sharded_over_data_and_fsdp(sharded):
    mesh = sharded["compiled"].mesh
    batch = sharding.global_batch(_tokens(), mesh)
    assert batch.shape == (BATCH, LENGTH)
    assert batch.sharding.spec == P(("data", "fsdp"), None)
    assert batch.addressable_shards[0].data.shape == (BATCH // 4, LENGTH)
    np.testing.assert_array_equal(np.asarray(batch), _tokens())


# ----------------------------------------------------------------------------------------------- EMA


def test_ema_after_each_step_is_the_ramped_decay_average_of_old_ema_and_new_params(base):
    decay = base["config"].train.ema_decay
    previous = base["init"].ema_params
    _assert_trees_close(previous, base["init"].params, atol=0)  # EMA starts at the initial params
    for step, state in enumerate(base["states"]):
        d = min(decay, (1.0 + step) / (10.0 + step))  # ema_decay_at, written out
        assert float(train.ema_decay_at(jnp.asarray(step), decay)) == pytest.approx(d, rel=1e-6)
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, previous, state.params)
        _assert_trees_close(state.ema_params, expected, atol=1e-6)
        previous = state.ema_params


def test_ema_decay_ramp_reaches_the_configured_decay():
    assert float(train.ema_decay_at(jnp.asarray(0), 0.999)) == pytest.approx(0.1)
    assert float(train.ema_decay_at(jnp.asarray(10**6), 0.999)) == pytest.approx(0.999)


# ----------------------------------------------------------------------------------------- training


def test_loss_decreases_when_overfitting_one_batch(base):
    """Same batch and same key every step, so the loss is a deterministic function of the params."""
    compiled = base["compiled"]
    key = jax.random.key(7)
    _, metrics, _ = _run(compiled, base["init"], 30, rngs=[key] * 30)
    losses = np.asarray([m["loss"] for m in metrics])
    mdm = np.asarray([m["mdm_loss"] for m in metrics])
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.75 * losses[:3].mean(), losses
    assert mdm[-1] < mdm[0]


@pytest.fixture(scope="module")
def micro(base):
    return _variant(base, 1, train__micro_batches=2)


def test_micro_batches_keep_the_params_structure_and_give_finite_loss(base, micro):
    _, states, metrics = micro
    assert jax.tree.structure(states[0]) == jax.tree.structure(base["states"][0])
    assert all(math.isfinite(v) for v in metrics[0].values())
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), states[0].params, base["init"].params)
    assert max(jax.tree.leaves(moved)) > 1e-4


def test_micro_batch_accumulation_equals_the_full_batch_loss_and_gradient(base, micro):
    """Times and masks are drawn for the global batch and split, so M = 2 and M = 1 agree to rounding."""
    config = config_base.resolve(base["config"])
    placed = base["compiled"].placed
    objective = diffusion.Objective(config.diffusion, config.corrector, config.mask_id)
    params = jax.tree.map(jnp.asarray, base["init"].params)
    tokens, rng = jnp.asarray(_tokens()), jax.random.key(100)
    results = {}
    for m in (1, 2):
        fn = jax.jit(lambda p, x, k, m=m: train.loss_and_grads(
            p, x, k, jnp.asarray(0), apply_fn=placed.apply_fn, objective=objective, micro_batches=m))
        results[m] = fn(params, tokens, rng)
    (loss1, metrics1), grads1 = results[1]
    (loss2, metrics2), grads2 = results[2]
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5)
    for key in ("mdm_loss", "corrector_loss"):
        np.testing.assert_allclose(float(metrics2[key]), float(metrics1[key]), rtol=1e-5, err_msg=key)
    _assert_trees_close(grads2, grads1, atol=1e-5)
    # The compiled step with micro_batches=2 reports this same loss for its first step.
    np.testing.assert_allclose(micro[2][0]["loss"], float(loss1), rtol=1e-5)
    np.testing.assert_allclose(base["metrics"][0]["loss"], float(loss1), rtol=1e-5)


def test_remat_gives_the_same_loss_and_params_as_no_remat(base, sharded):
    """The sharded run has remat on and the 1-device run off (see the `sharded` fixture)."""
    assert sharded["compiled"].placed.model.cfg.remat and not base["compiled"].placed.model.cfg.remat
    for key in ("loss", "mdm_loss", "corrector_loss", "grad_norm"):
        np.testing.assert_allclose(sharded["metrics"][0][key], base["metrics"][0][key], rtol=1e-5,
                                   err_msg=key)
    _assert_trees_close(sharded["states"][0].params, base["states"][0].params, atol=1e-5)


def test_bfloat16_compute_gives_a_finite_loss_close_to_float32(base):
    _, states, metrics = _variant(base, 2, model__dtype="bfloat16")
    for m in metrics:
        assert all(math.isfinite(v) for v in m.values())
    # Parameters stay in float32 storage; only the matmuls run in bfloat16.
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(states[-1].params))
    # At init the output layer is zero, so the logits (and the loss) are exactly those of float32 ...
    assert metrics[0]["loss"] == pytest.approx(base["metrics"][0]["loss"], rel=1e-6)
    # ... after one update they are not: the dtype is really used, and costs little accuracy.
    assert metrics[1]["loss"] != base["metrics"][1]["loss"]
    np.testing.assert_allclose(metrics[1]["loss"], base["metrics"][1]["loss"], rtol=1e-2)


# ------------------------------------------------------------------------------------ config checks


def _check(config, mesh=None):
    """Resolves the config (its own checks) and checks it against the mesh, as train_and_evaluate does."""
    typed = config_base.resolve(config)
    train.check_mesh(typed, mesh if mesh is not None else one_device_mesh(config))


def test_check_mesh_accepts_the_tiny_config_on_a_full_mesh():
    config = tiny_config(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(config.mesh)
    assert mesh.devices.size == jax.device_count() == 8  # every device in use
    _check(config, mesh)  # accepted: no UsageError
    assert BATCH % (sharding.data_parallel_size(mesh) * config.train.micro_batches) == 0


def test_check_mesh_rejects_a_batch_not_divisible_by_the_data_parallel_size():
    config = tiny_config(data=4, fsdp=2, tensor=1)
    mesh = sharding.make_mesh(config.mesh)
    config.train.batch_size = 12
    with pytest.raises(UsageError, match="data-parallel"):
        _check(config, mesh)
    config.train.batch_size = 8
    config.train.micro_batches = 2  # 8 rows over 8 data-parallel devices leaves none for a 2nd micro-batch
    with pytest.raises(UsageError, match="micro_batches"):
        _check(config, mesh)


def test_check_mesh_rejects_a_batch_the_processes_cannot_split(monkeypatch):
    config = tiny_config(data=1, fsdp=1, tensor=1)
    config.train.batch_size = 8
    mesh = one_device_mesh(config)
    _check(config, mesh)
    monkeypatch.setattr(jax, "process_count", lambda: 3)  # as on a 3-host slice
    with pytest.raises(UsageError, match="not divisible by 3 processes"):
        _check(config, mesh)


def test_config_rejects_a_sequence_longer_than_the_model():
    config = tiny_config()
    config.data.length = LENGTH + 1
    with pytest.raises(UsageError, match="max_length") as info:
        _check(config)
    assert "\n" not in str(info.value)


def test_check_mesh_rejects_heads_not_divisible_by_the_tensor_axis():
    config = tiny_config(data=2, fsdp=1, tensor=4)
    config.model.hidden_size, config.model.num_heads = 48, 6
    with pytest.raises(UsageError, match="num_heads"):
        _check(config, sharding.make_mesh(config.mesh))


# ---------------------------------------------------------------------------------------------- mesh


def _mesh_config(data, fsdp, tensor):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize(
    "sizes, devices, expected",
    [
        ((-1, 1, 1), 8, (8, 1, 1)),
        ((-1, 2, 2), 8, (2, 2, 2)),
        ((2, -1, 1), 8, (2, 4, 1)),
        ((1, 1, -1), 4, (1, 1, 4)),
        ((2, 2, 2), 8, (2, 2, 2)),
        ((-1, 1, 1), 1, (1, 1, 1)),
    ],
)
def test_mesh_shape_resolves_minus_one_to_the_remaining_devices(sizes, devices, expected):
    assert sharding.mesh_shape(_mesh_config(*sizes), devices) == expected


@pytest.mark.parametrize(
    "sizes, devices",
    [
        ((-1, -1, 1), 8),  # two free axes
        ((0, 1, 1), 8),  # empty axis
        ((-2, 1, 1), 8),  # negative size other than -1
        ((3, -1, 1), 8),  # 3 does not divide 8
        ((2, 2, 1), 8),  # uses 4 of 8 devices
        ((4, 4, 1), 8),  # needs more devices than there are
    ],
)
def test_mesh_shape_rejects_impossible_meshes(sizes, devices):
    with pytest.raises(UsageError):
        sharding.mesh_shape(_mesh_config(*sizes), devices)


def test_make_mesh_names_the_three_axes_with_auto_axis_types():
    mesh = sharding.make_mesh(_mesh_config(2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert sharding.data_parallel_size(mesh) == 4


@pytest.mark.parametrize("n_in", [1, 2])
def test_bfloat16_contraction_matches_float32_products_of_the_rounded_operands(n_in):
    """The bf16 matmul (f32 accumulation, bf16 operands in the forward and both backward products) gives
    the value and gradients of a float32 dot of the bf16-rounded operands, up to bf16 rounding of the
    incoming gradient and of the results."""
    from proseco_jax.models import layers

    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    in_shape = (8, 4)[:n_in] if n_in == 2 else (32,)
    x = jax.random.normal(kx, (2, 16, *in_shape)).astype(jnp.bfloat16)
    kernel = (0.2 * jax.random.normal(kk, (*in_shape, 3, 8))).astype(jnp.bfloat16)
    cotangent = jax.random.normal(kg, (2, 16, 3, 8))

    value_and_grads = jax.value_and_grad(
        lambda a, b: jnp.sum(layers.contract(a, b, n_in) * cotangent), argnums=(0, 1))
    value, grads = value_and_grads(x, kernel)  # bf16 operands: the mixed-precision products
    value32, grads32 = value_and_grads(x.astype(jnp.float32), kernel.astype(jnp.float32))  # plain f32
    assert layers.contract(x, kernel, n_in).dtype == jnp.float32
    np.testing.assert_allclose(float(value), float(value32), rtol=1e-5)
    for grad, grad32 in zip(grads, grads32):
        assert grad.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(grad32), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rotary_rotates_each_pair_by_its_angle_and_its_gradient_rotates_back(dtype):
    """apply_rotary is the rotate-half rotation (x1 cos - x2 sin, x2 cos + x1 sin) at angle p * f_i,
    computed in float32 whatever x's dtype; a rotation's transpose is the rotation by minus the angle, so
    the gradient of <apply_rotary(x), g> is g rotated back."""
    from proseco_jax.models import layers

    b, length, h, dh = 2, 12, 3, 8
    x = np.asarray(jax.random.normal(jax.random.key(0), (b, length, h, dh)).astype(dtype), np.float64)
    g = np.asarray(jax.random.normal(jax.random.key(1), (b, length, h, dh)), np.float64)
    angle = np.arange(length)[:, None] * np.asarray(layers.rotary_frequencies(dh), np.float64)[None, :]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]

    def rotate(a, sign):
        a1, a2 = a[..., : dh // 2], a[..., dh // 2:]
        return np.concatenate([a1 * cos - sign * a2 * sin, a2 * cos + sign * a1 * sin], axis=-1)

    tables = layers.rotary_tables(length, dh)
    out, vjp = jax.vjp(lambda a: layers.apply_rotary(a, *tables), jnp.asarray(x, dtype))
    assert out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2  # the result is rounded once to x's dtype
    np.testing.assert_allclose(np.asarray(out, np.float64), rotate(x, 1), rtol=tol, atol=tol)
    (grad,) = vjp(jnp.asarray(g, dtype))
    np.testing.assert_allclose(np.asarray(grad, np.float64), rotate(np.asarray(jnp.asarray(g, dtype),
                               np.float64), -1), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------- the loop


def test_a_corpus_without_padding_gets_the_batch_of_a_padded_one_so_one_program_serves_both(sharded):
    mesh = sharded["compiled"].mesh

    def avals(batch):
        return jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), batch)

    plain = train.device_batch({"tokens": _tokens()}, mesh)
    padded = train.device_batch({"tokens": _tokens(), "mask": np.zeros((BATCH, LENGTH), np.uint8)}, mesh)
    assert avals(plain) == avals(padded) == avals(train.abstract_batch(BATCH, LENGTH, mesh))
    np.testing.assert_array_equal(np.asarray(plain["mask"]), 1)


def test_step_log_fetches_the_pending_steps_at_once_and_records_their_means():
    log = train.StepLog(config_base.resolve(tiny_config()), step=10)
    for value in (1.0, 2.0, 6.0):
        log.add({"loss": jnp.asarray(value), "nonfinite": jnp.asarray(float(value == 2.0))})
    assert log.fetch() == (11, [0.0, 1.0, 0.0])  # steps 11, 12, 13
    record = log.record(13)
    assert record["loss"] == pytest.approx(3.0) and record["nonfinite"] == pytest.approx(1 / 3)
    assert record["tokens_per_sec"] > 0 and "learning_rate" in record
    assert log.fetch() == (14, [])


def test_divergence_guard_names_the_first_run_of_bad_steps_that_reaches_the_limit():
    halt = train.DivergenceGuard(limit=1)  # train.nonfinite=halt
    halt.update(1, [0, 0, 0])
    assert halt.tripped is None
    halt.update(4, [0, 1, 1, 0, 1])
    assert halt.tripped == (5, 2)  # steps 5 and 6; the later bad step 8 does not replace it
    skip = train.DivergenceGuard(limit=3)  # train.nonfinite=skip, train.max_skips=3
    skip.update(1, [1, 1, 0, 1])
    assert skip.tripped is None  # runs of 2 and (so far) 1
    skip.update(5, [1, 1])
    assert skip.tripped == (4, 3)  # a run that spans two fetches counts whole
    skip.update(7, [1, 0, 1, 1, 1])
    assert skip.tripped == (4, 4)
