"""Training: the train state, the two-pass ProSeCo train step sharded over a mesh, and the training loop.

The step is one `jax.jit` whose in/out shardings come from the logical axis names of an `eval_shape`d
state (what "pjit" is today); the state is donated. It samples t, masks, runs pass one, builds the
corrector input from pass one's argmax and runs pass two (see `diffusion.proseco_loss`), then clips, applies
AdamW and updates the EMA of the parameters. Gradient accumulation scans over micro-batches inside the step.
`train.objective` picks the loss strategy the step runs: `Pretraining` (the above, on every position) or
`FineTuning` (`sft.sft_loss`: LLaDA's SFT plus the corrector pass on the response positions, which the
per-token mask of the batch marks); both draw their noise once per global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from proseco_jax import config_base, diffusion, sft, sharding
from proseco_jax.config_base import Config
from proseco_jax.errors import Halted, UsageError
from proseco_jax.state import ModelOnMesh, TrainState
from proseco_jax.stopping import StopRequest

PyTree = Any


def learning_rate_schedule(train: config_base.Train) -> optax.Schedule:
    """Linear warm-up to the peak, then constant or cosine decay to 0 at num_steps."""
    peak, warmup = train.learning_rate, train.warmup_steps
    if train.lr_schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        after = optax.cosine_decay_schedule(peak, max(train.num_steps - warmup, 1))
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(train: config_base.Train) -> optax.GradientTransformation:
    """AdamW with the schedule above, after clipping gradients to `grad_clip` global norm."""
    adamw = optax.adamw(
        learning_rate_schedule(train), b1=train.b1, b2=train.b2, eps=train.adam_eps,
        weight_decay=train.weight_decay,
    )
    if train.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)
    return adamw


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay ramped up early in training, min(decay, (1 + step) / (10 + step))."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def split_micro_batches(x: jax.Array, m: int) -> jax.Array:
    """[B, ...] -> [M, B/M, ...] taking every M-th row, so each device keeps its own rows."""
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)


Noise = tuple  # Per-row arrays ([B] or [B, L]) a loss draws for the global batch: (t, z) or (p, z).
LossOut = tuple[jax.Array, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """ProSeCo pretraining (`diffusion.proseco_loss`): every position masked at rate 1 - alpha(t); the token
    mask [B, L] leaves padding out. Validation: the negative ELBO, in bits per token."""

    def noise(self, rng: jax.Array, tokens: jax.Array, token_mask: jax.Array,
              objective: diffusion.Objective) -> Noise:
        return diffusion.draw_noise(rng, tokens, objective)

    def loss(self, apply_fn: diffusion.ApplyFn, params: PyTree, tokens: jax.Array, token_mask: jax.Array,
             noise: Noise, rng: jax.Array, step: jax.Array, objective: diffusion.Objective) -> LossOut:
        t, z = noise
        return diffusion.proseco_loss(apply_fn, params, tokens, rng, step, objective, token_mask, t=t, z=z)

    def evaluate(self, apply_fn: diffusion.ApplyFn, params: PyTree, tokens: jax.Array, token_mask: jax.Array,
                 rng: jax.Array, objective: diffusion.Objective) -> tuple[jax.Array, jax.Array]:
        return diffusion.nelbo(apply_fn, params, tokens, rng, objective.schedule, objective.mask_id,
                               token_mask=token_mask, vocab_size=objective.vocab_size)

    def report(self, nats_per_token: float) -> dict[str, float]:
        return {"val_bits_per_token": nats_per_token / math.log(2.0)}


@dataclasses.dataclass(frozen=True)
class FineTuning:
    """ProSeCo fine-tuning (`sft.sft_loss`): the token mask [B, L] marks the response, the only positions
    masked and scored. Validation: the vanilla SFT loss (pass one) per response token, in nats.
    """

    def noise(self, rng: jax.Array, tokens: jax.Array, token_mask: jax.Array,
              objective: diffusion.Objective) -> Noise:
        return sft.sft_noise(rng, tokens, token_mask.astype(bool), objective.mask_id,
                             objective.diffusion.train_eps)

    def loss(self, apply_fn: diffusion.ApplyFn, params: PyTree, tokens: jax.Array, token_mask: jax.Array,
             noise: Noise, rng: jax.Array, step: jax.Array, objective: diffusion.Objective) -> LossOut:
        p, z = noise
        return sft.sft_loss(apply_fn, params, tokens, token_mask, rng, step, objective, p=p, z=z)

    def evaluate(self, apply_fn: diffusion.ApplyFn, params: PyTree, tokens: jax.Array, token_mask: jax.Array,
                 rng: jax.Array, objective: diffusion.Objective) -> tuple[jax.Array, jax.Array]:
        return sft.sft_nats(apply_fn, params, tokens, token_mask, rng, objective)

    def report(self, nats_per_token: float) -> dict[str, float]:
        return {"val_sft_loss": nats_per_token}


Loss = Pretraining | FineTuning
PRETRAINING, FINE_TUNING = Pretraining(), FineTuning()


def loss_of(config: Config) -> Loss:
    """The loss strategy `config.train.objective` names."""
    if config.train.objective == "sft":
        return FINE_TUNING
    return PRETRAINING


def loss_and_grads(
    params: PyTree,
    tokens: jax.Array,
    rng: jax.Array,
    step: jax.Array,
    *,
    apply_fn: diffusion.ApplyFn,
    objective: diffusion.Objective,
    micro_batches: int = 1,
    token_mask: jax.Array | None = None,
    loss: Loss = PRETRAINING,
) -> tuple[LossOut, PyTree]:
    """((loss, metrics), grads) of the global batch tokens [B, L], accumulated over micro-batches.

    The noise (times or masking rates, and masks) is drawn once for the global batch and then split (every
    M-th row), so accumulating over M micro-batches gives the loss and gradient of the full batch.
    token_mask [B, L] (pretraining: 1 real token, 0 padding; fine-tuning: 1 on the response) is split like
    the tokens; each micro-batch averages over its own rows.
    """
    noise_rng, loss_rng = jax.random.split(rng)
    if token_mask is None:
        token_mask = jnp.ones(tokens.shape, jnp.float32)
    noise = loss.noise(noise_rng, tokens, token_mask, objective)

    def loss_fn(p, micro_tokens, micro_mask, micro_noise, micro_rng):
        return loss.loss(apply_fn, p, micro_tokens, micro_mask, micro_noise, micro_rng, step, objective)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    m = micro_batches
    if m == 1:
        return grad_fn(params, tokens, token_mask, noise, loss_rng)
    micro = jax.tree.map(lambda a: split_micro_batches(a, m), (tokens, token_mask, noise))

    def accumulate(total, inputs):
        i, micro_inputs = inputs
        out = grad_fn(params, *micro_inputs, jax.random.fold_in(loss_rng, i))
        return jax.tree.map(jnp.add, total, out), None

    first = jax.eval_shape(grad_fn, params, *jax.tree.map(lambda a: a[0], micro), loss_rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(m), micro))
    return jax.tree.map(lambda v: v / m, total)


def train_step(
    state: TrainState,
    tokens: jax.Array,
    rng: jax.Array,
    token_mask: jax.Array | None = None,
    *,
    apply_fn: diffusion.ApplyFn,
    tx: optax.GradientTransformation,
    objective: diffusion.Objective,
    micro_batches: int,
    ema_decay: float,
    loss_kind: Loss = PRETRAINING,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch tokens [B, L] (token_mask [B, L]: the positions the loss
    reads, 0 on padding; fine-tuning: 1 on the response); rng is this step's key."""
    (loss, metrics), grads = loss_and_grads(state.params, tokens, rng, state.step, apply_fn=apply_fn,
                                            objective=objective, micro_batches=micro_batches,
                                            token_mask=token_mask, loss=loss_kind)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    # Divergence guard: a step whose loss, gradient or new parameters are not finite leaves the state as it
    # was (only the step counter moves), so no checkpoint can ever hold non-finite parameters.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    updated = TrainState(step=state.step, params=params, ema_params=ema_params, opt_state=opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state.replace(step=state.step + 1), metrics


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def eval_step(
    params: PyTree,
    tokens: jax.Array,
    rng: jax.Array,
    token_mask: jax.Array | None = None,
    *,
    apply_fn: diffusion.ApplyFn,
    objective: diffusion.Objective,
    loss_kind: Loss = PRETRAINING,
) -> tuple[jax.Array, jax.Array]:
    """Validation loss of a held-out batch: (sum of nats, number of tokens it covers); pretraining: the
    negative ELBO over real tokens, fine-tuning: the SFT loss over response tokens."""
    if token_mask is None:
        token_mask = jnp.ones(tokens.shape, jnp.float32)
    return loss_kind.evaluate(apply_fn, params, tokens, token_mask, rng, objective)


@dataclasses.dataclass
class Compiled:
    """A config's model on a mesh with its sharded, jitted init / train / eval functions."""

    placed: ModelOnMesh
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs with shardings (for checkpoint restore).
    init: Callable[[jax.Array], TrainState]
    step: Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]
    evaluate: Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    # The same with a padding mask [B, L] as a fourth argument (batches of text corpora).
    masked_step: Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict]]
    masked_evaluate: Callable[[PyTree, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    loss: Loss = PRETRAINING  # The strategy the step and the evaluation run.

    @property
    def mesh(self) -> Mesh:
        return self.placed.mesh


def build(config: Config, mesh: Mesh) -> Compiled:
    """The optimizer and the jitted, sharded init / train / eval functions of `config` on `mesh`."""
    config = config_base.resolve(config)
    placed = ModelOnMesh.create(config, mesh)
    tx = make_optimizer(config.train)
    abstract, shardings, init = placed.train_state(tx)
    objective = diffusion.Objective(config.diffusion, config.corrector, config.mask_id,
                                    config.output_vocab_size)
    loss = loss_of(config)
    batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    step_fn = functools.partial(train_step, apply_fn=placed.apply_fn, tx=tx, objective=objective,
                                micro_batches=config.train.micro_batches, ema_decay=config.train.ema_decay,
                                loss_kind=loss)
    eval_fn = functools.partial(eval_step, apply_fn=placed.apply_fn, objective=objective, loss_kind=loss)
    # jit's in_shardings name every positional argument, so the masked variants are jitted on their own.
    step, masked_step = (jax.jit(step_fn, in_shardings=(shardings, batch_sh, repl, batch_sh)[:n],
                                 out_shardings=(shardings, repl), donate_argnums=(0,)) for n in (3, 4))
    eval_shardings = (shardings.params, batch_sh, repl, batch_sh)
    evaluate, masked_evaluate = (jax.jit(eval_fn, in_shardings=eval_shardings[:n], out_shardings=(repl, repl))
                                 for n in (3, 4))
    on_mesh = placed.under_mesh
    return Compiled(placed=placed, state_shardings=shardings, abstract_state=abstract, init=init,
                    step=on_mesh(step), evaluate=on_mesh(evaluate), masked_step=on_mesh(masked_step),
                    masked_evaluate=on_mesh(masked_evaluate), loss=loss)


def check_mesh(config: Config, mesh: Mesh) -> None:
    """Raises UsageError (one line) for training settings that cannot run on this mesh and these processes."""
    t = config.train
    dp = sharding.data_parallel_size(mesh)
    if t.batch_size % (dp * t.micro_batches):
        raise UsageError(
            f"train.batch_size={t.batch_size} is not divisible by the data-parallel size "
            f"(mesh.data * mesh.fsdp = {dp}) times train.micro_batches={t.micro_batches}"
        )
    if t.batch_size % jax.process_count():
        raise UsageError(f"train.batch_size={t.batch_size} is not divisible by {jax.process_count()} "
                         "processes")
    heads = getattr(config.model, "num_heads", None)
    if heads is not None and heads % mesh.shape["tensor"]:
        raise UsageError(f"model.num_heads={heads} is not divisible by mesh.tensor={mesh.shape['tensor']}")


def check_objective(config: Config) -> None:
    """Raises UsageError (one line) when train.objective does not suit the data or the model."""
    sft_data, sft_loss = config.data.name == "sft_jsonl", config.train.objective == "sft"
    if sft_data and not sft_loss:
        raise UsageError("data.name=sft_jsonl holds prompt/response pairs: set train.objective=sft")
    if sft_loss and not sft_data:
        raise UsageError(f"train.objective=sft needs prompt/response pairs (data.name=sft_jsonl), not "
                         f"data.name={config.data.name}")
    if sft_loss and getattr(config.model, "time_conditioning", False):
        raise UsageError("train.objective=sft feeds the model no noise level (as LLaDA): set "
                         "model.time_conditioning=False")


def check_vocabulary(config: Config, tokenizer: Any) -> None:
    """Raises UsageError when the corpus's tokenizer has ids the model's output does not cover."""
    n = getattr(tokenizer, "vocab_size", None)
    if config.train.objective == "sft" and n is not None and n > config.output_vocab_size:
        raise UsageError(f"the tokenizer of data.tokenizer_path has {n} ids, more than the "
                         f"{config.output_vocab_size} the model predicts (model.vocab_size, or "
                         "data.vocab_size + 1)")


def evaluate_bits_per_token(compiled: Compiled, params: PyTree, batches: Iterable[dict], rng: jax.Array
                            ) -> float:
    """Validation negative ELBO in bits per token over `batches` (dicts with 'tokens', maybe 'mask')."""
    return evaluate_nats_per_token(compiled, params, batches, rng) / math.log(2.0)


def evaluate_nats_per_token(compiled: Compiled, params: PyTree, batches: Iterable[dict], rng: jax.Array
                            ) -> float:
    """The validation loss of `compiled.loss` in nats per token it covers, over `batches` (dicts with
    'tokens', maybe 'mask')."""
    nats, count = 0.0, 0.0
    for i, batch in enumerate(batches):
        args = (params, sharding.global_batch(batch["tokens"], compiled.mesh), jax.random.fold_in(rng, i))
        if "mask" in batch:
            n, c = compiled.masked_evaluate(*args, sharding.global_batch(batch["mask"], compiled.mesh))
        else:
            n, c = compiled.evaluate(*args)
        nats, count = nats + float(n), count + float(c)
    return nats / max(count, 1.0)


class StepLog:
    """Collects step metrics between log lines and turns them into one metrics.jsonl record."""

    def __init__(self, config: Config, step: int):
        self._tokens_per_step = config.train.batch_size * config.data.length
        self._lr = learning_rate_schedule(config.train)
        self._pending: list[dict[str, jax.Array]] = []
        self._tick, self._tick_step = time.time(), step

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)

    def record(self, step: int) -> dict[str, float]:
        """Means of the metrics since the last record, tokens/s and the learning rate of the last step."""
        pending, self._pending = self._pending, []
        means = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]} if pending else {}
        now = time.time()
        tokens = (step - self._tick_step) * self._tokens_per_step
        means["tokens_per_sec"] = tokens / max(now - self._tick, 1e-9)
        means["learning_rate"] = float(self._lr(step - 1))
        self._tick, self._tick_step = now, step
        return means


def _print_start(config: Config, state: TrainState, mesh: Mesh, entropy_bits: float | None) -> None:
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"model: {n_params / 1e6:.2f} M parameters | mesh {dict(mesh.shape)} | batch "
          f"{config.train.batch_size} x {config.data.length} tokens", flush=True)
    if entropy_bits is not None:
        print(f"data entropy {entropy_bits:.4f} bits/token (uniform {math.log2(config.data.vocab_size):.4f})",
              flush=True)


def _divergence_message(config: Config, step: int, skipped: int, manager, workdir: str) -> str:
    from proseco_jax import checkpoint

    manager.wait_until_finished()
    good = manager.latest_step()
    where = ("no checkpoint was written yet" if good is None
             else f"the last good checkpoint is step {good} in {checkpoint.checkpoint_dir(workdir)}")
    return (f"training halted at step {step}: {skipped} step(s) in a row had a non-finite loss, gradient or "
            f"update (not applied); {where}; lower train.learning_rate={config.train.learning_rate:g} or set "
            "train.nonfinite=skip")


def train_and_evaluate(config: Any, workdir: str) -> tuple[TrainState, int]:
    """Trains the model of `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns the final train state and its step (less than train.num_steps after a preemption).
    """
    from proseco_jax import checkpoint
    from proseco_jax.data import datasets, pipeline
    from proseco_jax.metrics_writer import MetricsWriter

    config = config_base.resolve(config)
    checkpoint.ensure_writable(workdir, "workdir")
    mesh = sharding.make_mesh(config.mesh)
    check_mesh(config, mesh)
    check_objective(config)
    data = datasets.load(config.data)
    check_vocabulary(config, data.tokenizer)
    compiled = build(config, mesh)
    t = config.train
    pid, nproc = jax.process_index(), jax.process_count()
    held_out, needed = len(data.sources["validation"]), t.eval_batches * t.batch_size
    if t.eval_every > 0 and needed > held_out:  # Fail now, not at the first validation.
        raise UsageError(f"validation needs train.eval_batches * train.batch_size = {needed} held-out "
                         f"sequences, but {config.data.name} has {held_out}")

    def data_iterator():
        return pipeline.train_iterator(data.sources["train"], global_batch_size=t.batch_size,
                                       seed=config.seed, process_index=pid, process_count=nproc,
                                       worker_count=config.data.worker_count)

    train_iter = data_iterator()
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    checkpoint.ensure_writable(checkpoint.checkpoint_dir(workdir), "checkpoints")
    manager = checkpoint.make_manager(workdir, t.keep_checkpoints)
    restored = checkpoint.restore(manager, compiled.abstract_state, train_iter)
    if restored is not None:
        step, state = restored
        if pid == 0:
            print(f"resumed from the checkpoint at step {step} in {checkpoint.checkpoint_dir(workdir)}",
                  flush=True)
    else:  # A fresh start, also after every step proved damaged (an attempt may have moved the iterator).
        step, state, train_iter = 0, compiled.init(init_rng), data_iterator()
    writer = MetricsWriter(workdir, resume_step=step, total_steps=t.num_steps, enabled=pid == 0)
    if pid == 0:
        config_base.save_json(config, workdir)
        if step == 0:
            _print_start(config, state, mesh, data.entropy_bits_per_token)

    def validate(params) -> dict[str, float]:
        batches = pipeline.eval_batches(data.sources["validation"], global_batch_size=t.batch_size,
                                        num_batches=t.eval_batches, process_index=pid, process_count=nproc)
        out = compiled.loss.report(evaluate_nats_per_token(compiled, params, batches, eval_rng))
        if data.entropy_bits_per_token is not None:
            out["data_bits_per_token"] = data.entropy_bits_per_token
        return out

    log = StepLog(config, step)
    skipped, stopping = 0, False
    with StopRequest("the current step") as stop:
        try:
            while step < t.num_steps and not stopping:
                batch = next(train_iter)
                tokens = sharding.global_batch(batch["tokens"], mesh)
                args = (state, tokens, jax.random.fold_in(train_rng, step))
                if "mask" in batch:  # Text corpora: padding is left out of the loss.
                    state, metrics = compiled.masked_step(*args, sharding.global_batch(batch["mask"], mesh))
                else:
                    state, metrics = compiled.step(*args)
                log.add(metrics)
                step += 1
                skipped = skipped + 1 if float(metrics["nonfinite"]) else 0
                if skipped and (t.nonfinite == "halt" or skipped >= t.max_skips):
                    raise Halted(_divergence_message(config, step, skipped, manager, workdir))
                last = step == t.num_steps
                evaluate_now = t.eval_every > 0 and (step % t.eval_every == 0 or last)
                if step % t.log_every == 0 or evaluate_now or last:
                    record = log.record(step)
                    if evaluate_now:
                        record.update(validate(state.ema_params))
                    writer.write(step, record)
                    writer.progress(step, record)
                stopping = stop.agreed()  # Every process stops at the same step (a collective).
                if step % t.checkpoint_every == 0 or last or stopping:
                    checkpoint.save(manager, step, state, train_iter)
            if stopping and pid == 0:
                print(f"{stop.signal_name or 'stop'}: saved the checkpoint at step {step}; rerun the same "
                      "command to resume", flush=True)
        finally:
            manager.wait_until_finished()
            manager.close()
            writer.close()
    return state, step
