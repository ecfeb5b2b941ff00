"""Training: the train state, the two-pass ProSeCo train step sharded over a mesh, and the training loop.

The step is one `jax.jit` whose in/out shardings come from the logical axis names of an `eval_shape`d
state (what "pjit" is today); the state is donated. It samples t, masks, runs pass one, builds the
corrector input from pass one's argmax and runs pass two (see `diffusion.proseco_loss`), then clips, applies
AdamW and updates the EMA of the parameters. Gradient accumulation scans over micro-batches inside the step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from proseco_jax import diffusion, schedules, sharding
from proseco_jax.errors import UsageError
from proseco_jax.models.dit import DiT, DiTConfig

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. params and ema_params: the DiT's variables ('params' tree)."""

    step: jax.Array  # int32 scalar: optimizer steps taken.
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warm-up to the peak, then constant or cosine decay to 0 at num_steps."""
    peak, warmup = train_config.learning_rate, max(int(train_config.warmup_steps), 0)
    if train_config.lr_schedule == "constant":
        after = optax.constant_schedule(peak)
    elif train_config.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(train_config.num_steps - warmup, 1))
    else:
        raise ValueError(
            f"train.lr_schedule must be 'constant' or 'cosine', got {train_config.lr_schedule!r}"
        )
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(train_config) -> optax.GradientTransformation:
    """AdamW with the schedule above, after clipping gradients to `grad_clip` global norm."""
    adamw = optax.adamw(
        learning_rate_schedule(train_config),
        b1=train_config.b1,
        b2=train_config.b2,
        eps=train_config.adam_eps,
        weight_decay=train_config.weight_decay,
    )
    if train_config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), adamw)
    return adamw


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay ramped up early in training, min(decay, (1 + step) / (10 + step))."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_apply_fn(model: DiT, params: PyTree, train: bool) -> diffusion.ApplyFn:
    """Closes the model over params: (tokens [B, L], sigma [B], dropout_rng) -> logits [B, L, V+1]."""

    def apply_fn(tokens, sigma, dropout_rng):
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        return model.apply(
            {"params": params}, tokens, sigma, train=train and dropout_rng is not None, rngs=rngs
        )

    return apply_fn


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step."""

    loss: diffusion.LossConfig
    micro_batches: int = 1
    ema_decay: float = 0.999


def train_step(
    state: TrainState,
    tokens: jax.Array,
    rng: jax.Array,
    *,
    model: DiT,
    tx: optax.GradientTransformation,
    cfg: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch tokens [B, L]; rng is this step's key."""

    def loss_fn(params, micro_tokens, micro_rng):
        apply_fn = make_apply_fn(model, params, train=True)
        return diffusion.proseco_loss(apply_fn, micro_tokens, micro_rng, state.step, cfg.loss)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    m = cfg.micro_batches
    if m == 1:
        (loss, metrics), grads = grad_fn(state.params, tokens, rng)
    else:
        b, length = tokens.shape
        # [B, L] -> [M, B/M, L] taking every M-th row, so each device keeps its own rows.
        micro = jnp.swapaxes(tokens.reshape(b // m, m, length), 0, 1)

        def accumulate(carry, inputs):
            i, micro_tokens = inputs
            (micro_loss, mets), g = grad_fn(state.params, micro_tokens, jax.random.fold_in(rng, i))
            acc_g, acc_loss, acc_m = carry
            acc_g, acc_m = jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_m, mets)
            return (acc_g, acc_loss + micro_loss, acc_m), None

        zeros_g = jax.tree.map(jnp.zeros_like, state.params)
        _, zero_metrics = jax.eval_shape(loss_fn, state.params, micro[0], rng)
        zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics)
        (grads, loss, metrics), _ = jax.lax.scan(
            accumulate, (zeros_g, jnp.zeros(()), zeros_m), (jnp.arange(m), micro)
        )
        grads = jax.tree.map(lambda g: g / m, grads)
        loss = loss / m
        metrics = jax.tree.map(lambda v: v / m, metrics)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, cfg.ema_decay)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
    return new_state, metrics


def eval_step(
    params: PyTree,
    tokens: jax.Array,
    rng: jax.Array,
    *,
    model: DiT,
    schedule: schedules.Schedule,
    mask_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Negative ELBO of a held-out batch: (sum of nats, number of tokens)."""
    apply_fn = make_apply_fn(model, params, train=False)
    return diffusion.nelbo(apply_fn, tokens, rng, schedule, mask_id)


@dataclasses.dataclass
class Compiled:
    """A model with its sharded, jitted functions on one mesh."""

    model: DiT
    mesh: Mesh
    rules: sharding.Rules
    state_shardings: TrainState
    init: Callable[[jax.Array], TrainState]
    step: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]
    evaluate: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    abstract_state: TrainState  # ShapeDtypeStructs with shardings (for checkpoint restore).


def build(config, mesh: Mesh) -> Compiled:
    """Builds the model, optimizer and the jitted, sharded init / train / eval functions."""
    model = DiT(DiTConfig.from_config(config))
    tx = make_optimizer(config.train)
    schedule = schedules.from_config(config.diffusion)
    step_cfg = StepConfig(
        loss=diffusion.LossConfig.from_config(config, schedule),
        micro_batches=config.train.micro_batches,
        ema_decay=config.train.ema_decay,
    )
    rules = sharding.rules_from_config(config.mesh)
    length = config.data.length

    def init_boxed(rng):
        dummy = jnp.zeros((1, length), jnp.int32)
        params = model.init(rng, dummy, jnp.zeros((1,)))["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params)
        )

    with sharding.mesh_context(mesh, rules):
        boxed = jax.eval_shape(init_boxed, jax.random.key(0))
        shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed), shardings
    )
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)

    init = jax.jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=shardings)
    step = jax.jit(
        functools.partial(train_step, model=model, tx=tx, cfg=step_cfg),
        in_shardings=(shardings, batch_sh, repl),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )
    evaluate = jax.jit(
        functools.partial(eval_step, model=model, schedule=schedule, mask_id=config.data.vocab_size),
        in_shardings=(shardings.params, batch_sh, repl),
        out_shardings=(repl, repl),
    )

    def under_mesh(fn):
        @functools.wraps(fn)
        def wrapped(*args):
            with sharding.mesh_context(mesh, rules):
                return fn(*args)

        return wrapped

    return Compiled(
        model=model,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        init=under_mesh(init),
        step=under_mesh(step),
        evaluate=under_mesh(evaluate),
        abstract_state=abstract,
    )


def check_config(config, mesh: Mesh) -> None:
    """Raises UsageError (one line) for settings that cannot run on this mesh."""
    m, t, d = config.model, config.train, config.data
    dp = sharding.data_parallel_size(mesh)
    if t.batch_size <= 0 or t.micro_batches <= 0:
        raise UsageError("train.batch_size and train.micro_batches must be positive")
    if t.batch_size % (dp * t.micro_batches):
        raise UsageError(
            f"train.batch_size={t.batch_size} is not divisible by the data-parallel size "
            f"(mesh.data * mesh.fsdp = {dp}) times train.micro_batches={t.micro_batches}"
        )
    if t.batch_size % jax.process_count():
        raise UsageError(
            f"train.batch_size={t.batch_size} is not divisible by {jax.process_count()} processes"
        )
    if d.length > m.max_length:
        raise UsageError(
            f"sequence length data.length={d.length} is longer than model.max_length={m.max_length}"
        )
    if m.hidden_size % m.num_heads or (m.hidden_size // m.num_heads) % 2:
        raise UsageError(
            f"model.hidden_size={m.hidden_size} must split into model.num_heads={m.num_heads} "
            "heads of even width"
        )
    if m.num_heads % mesh.shape["tensor"]:
        raise UsageError(
            f"model.num_heads={m.num_heads} is not divisible by mesh.tensor={mesh.shape['tensor']}"
        )
    if m.dtype not in ("float32", "bfloat16") or m.param_dtype not in ("float32", "bfloat16"):
        raise UsageError("model.dtype and model.param_dtype must be 'float32' or 'bfloat16'")
    if config.diffusion.schedule not in schedules.SCHEDULES:
        raise UsageError(f"diffusion.schedule must be one of {schedules.SCHEDULES}")
    if config.diffusion.parameterization not in ("subs", "d3pm"):
        raise UsageError("diffusion.parameterization must be 'subs' or 'd3pm'")
    if config.corrector.input not in ("all", "masked"):
        raise UsageError("corrector.input must be 'all' or 'masked'")
    if t.lr_schedule not in ("constant", "cosine"):
        raise UsageError("train.lr_schedule must be 'constant' or 'cosine'")
    if t.log_every <= 0 or t.checkpoint_every <= 0:
        raise UsageError("train.log_every and train.checkpoint_every must be positive")
    if d.name == "markov" and t.eval_every > 0 and t.eval_batches * t.batch_size > d.num_eval:
        raise UsageError(
            f"validation needs train.eval_batches * train.batch_size = "
            f"{t.eval_batches * t.batch_size} held-out sequences, but data.num_eval={d.num_eval}"
        )


def prepare_workdir(workdir: str) -> None:
    """Creates workdir and checks that it can be written (UsageError otherwise)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"workdir {workdir} cannot be written: {e.strerror or e}") from None


class _Preemption:
    """Records SIGTERM so the loop can checkpoint at the next step boundary and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def evaluate_bits_per_token(compiled: Compiled, params: PyTree, batches, rng: jax.Array) -> float:
    """Validation negative ELBO in bits per token over `batches` (dicts with 'tokens')."""
    nats, count = 0.0, 0.0
    for i, batch in enumerate(batches):
        n, c = compiled.evaluate(
            params, sharding.global_batch(batch["tokens"], compiled.mesh), jax.random.fold_in(rng, i)
        )
        nats, count = nats + float(n), count + float(c)
    return nats / max(count, 1.0) / math.log(2.0)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains the model of `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns the metrics of the last log line.
    """
    from proseco_jax import checkpoint
    from proseco_jax.data import datasets, pipeline
    from proseco_jax.metrics_writer import MetricsWriter

    prepare_workdir(workdir)
    mesh = sharding.make_mesh(config.mesh)
    check_config(config, mesh)
    data = datasets.load(config.data)
    compiled = build(config, mesh)
    t = config.train
    pid, nproc = jax.process_index(), jax.process_count()
    train_iter = pipeline.train_iterator(
        data.sources["train"],
        global_batch_size=t.batch_size,
        seed=config.seed,
        process_index=pid,
        process_count=nproc,
        worker_count=config.data.worker_count,
    )

    root = jax.random.key(config.seed)
    init_rng, train_rng, eval_rng = jax.random.split(root, 3)
    manager = checkpoint.make_manager(workdir, t.keep_checkpoints)
    if manager.latest_step() is not None:
        step, state = checkpoint.restore(manager, compiled.abstract_state, train_iter)
        if pid == 0:
            print(
                f"resumed from the checkpoint at step {step} in {checkpoint.checkpoint_dir(workdir)}",
                flush=True,
            )
    else:
        step, state = 0, compiled.init(init_rng)
    writer = MetricsWriter(workdir, resume_step=step, total_steps=t.num_steps, enabled=pid == 0)
    if pid == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
    if step == 0 and pid == 0:
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        print(
            f"model: {n_params / 1e6:.2f} M parameters | mesh {dict(mesh.shape)} | "
            f"batch {t.batch_size} x {config.data.length} tokens",
            flush=True,
        )
        if data.entropy_bits_per_token is not None:
            print(
                f"data entropy {data.entropy_bits_per_token:.4f} bits/token "
                f"(uniform {math.log2(config.data.vocab_size):.4f})",
                flush=True,
            )

    lr_fn = learning_rate_schedule(t)
    preemption = _Preemption()
    pending: list[dict[str, jax.Array]] = []
    last: dict[str, float] = {}
    tick, tick_step = time.time(), step
    try:
        while step < t.num_steps and not preemption.requested:
            batch = next(train_iter)["tokens"]
            state, metrics = compiled.step(
                state, sharding.global_batch(batch, mesh), jax.random.fold_in(train_rng, step)
            )
            pending.append(metrics)
            step += 1
            evaluate_now = t.eval_every > 0 and (step % t.eval_every == 0 or step == t.num_steps)
            if step % t.log_every == 0 or evaluate_now or step == t.num_steps:
                means = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
                now = time.time()
                means["tokens_per_sec"] = (
                    (step - tick_step) * t.batch_size * config.data.length / (now - tick)
                )
                means["learning_rate"] = float(lr_fn(step - 1))
                if evaluate_now:
                    batches = pipeline.eval_batches(
                        data.sources["validation"],
                        global_batch_size=t.batch_size,
                        num_batches=t.eval_batches,
                        process_index=pid,
                        process_count=nproc,
                    )
                    means["val_bits_per_token"] = evaluate_bits_per_token(
                        compiled, state.ema_params, batches, eval_rng
                    )
                    if data.entropy_bits_per_token is not None:
                        means["data_bits_per_token"] = data.entropy_bits_per_token
                writer.write(step, means)
                writer.progress(step, means)
                last, pending = means, []
                tick, tick_step = time.time(), step
            if step % t.checkpoint_every == 0 or step == t.num_steps or preemption.requested:
                checkpoint.save(manager, step, state, train_iter)
        if preemption.requested and pid == 0:
            print(
                f"SIGTERM: saved the checkpoint at step {step}; rerun the same command to resume", flush=True
            )
    finally:
        preemption.restore()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    return last
