"""Training: the train state, the two-pass ProSeCo train step sharded over a mesh, and the training loop.

The step is one `jax.jit` whose in/out shardings come from the logical axis names of an `eval_shape`d
state (what "pjit" is today); the state is donated. It samples t, masks, runs pass one, builds the
corrector input from pass one's argmax and runs pass two (see `diffusion.proseco_loss`), then clips, applies
AdamW and updates the EMA of the parameters. Gradient accumulation scans over micro-batches inside the step.
`train.objective` picks the loss strategy the step runs: `Pretraining` (the above, on every position) or
`FineTuning` (`sft.sft_loss`: LLaDA's SFT plus the corrector pass on the response positions, which the
per-token mask of the batch marks); both draw their noise once per global batch. Every batch carries its
mask (ones where the corpus has no padding), so a config has one step program and one evaluation program.
The loop (`setup`, `restore`, `loop`) only dispatches steps: the host reads their metrics, the divergence
flags and stop requests at log, evaluation and checkpoint steps (and every `POLL_EVERY` steps), as flax's
lm1b example fetches metrics at log time, so the devices never idle waiting on the host in between.
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

from proseco_jax import checkpoint, config_base, diffusion, sft, sharding
from proseco_jax.config_base import Config
from proseco_jax.data import datasets, pipeline
from proseco_jax.errors import Halted, UsageError
from proseco_jax.metrics_writer import MetricsWriter
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
        # Times from U[train_eps, 1], as training draws them (MDLM validates with its one sampling_eps too).
        return diffusion.nelbo(apply_fn, params, tokens, rng, objective.schedule, objective.mask_id,
                               eps=objective.diffusion.train_eps, token_mask=token_mask,
                               vocab_size=objective.vocab_size)

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
    labels: jax.Array | None = None,
) -> tuple[LossOut, PyTree]:
    """((loss, metrics), grads) of the global batch tokens [B, L], accumulated over micro-batches.

    The noise (times or masking rates, and masks) is drawn once for the global batch and then split (every
    M-th row), so accumulating over M micro-batches gives the loss and gradient of the full batch.
    token_mask [B, L] (pretraining: 1 real token, 0 padding; fine-tuning: 1 on the response) is split like
    the tokens; each micro-batch averages over its own rows. labels int32 [B] (label-conditioned models,
    after dropout) are split the same way and bound to apply_fn for both passes.
    """
    noise_rng, loss_rng = jax.random.split(rng)
    if token_mask is None:
        token_mask = jnp.ones(tokens.shape, jnp.float32)
    noise = loss.noise(noise_rng, tokens, token_mask, objective)

    def loss_fn(p, micro_tokens, micro_mask, micro_noise, micro_labels, micro_rng):
        return loss.loss(diffusion.with_labels(apply_fn, micro_labels), p, micro_tokens, micro_mask,
                         micro_noise, micro_rng, step, objective)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    m = micro_batches
    if m == 1:
        return grad_fn(params, tokens, token_mask, noise, labels, loss_rng)
    micro = jax.tree.map(lambda a: split_micro_batches(a, m), (tokens, token_mask, noise, labels))

    def accumulate(total, inputs):
        i, micro_inputs = inputs
        out = grad_fn(params, *micro_inputs, jax.random.fold_in(loss_rng, i))
        return jax.tree.map(jnp.add, total, out), None

    first = jax.eval_shape(grad_fn, params, *jax.tree.map(lambda a: a[0], micro), loss_rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(m), micro))
    return jax.tree.map(lambda v: v / m, total)


# 'tokens' int32 [B, L], 'mask' uint8 [B, L] and, for a label-conditioned model, 'labels' int32 [B]: global
# arrays over the mesh.
Batch = dict[str, jax.Array]


def device_batch(batch: dict[str, np.ndarray], mesh: Mesh, *, labels: bool = False) -> Batch:
    """The step's inputs from this process's rows of a host batch, as global arrays sharded over the batch
    axes. Corpora without padding get a mask of ones, so one compiled program serves every corpus; with
    `labels` (a label-conditioned model) the corpus's per-sequence 'label' goes along."""
    tokens = batch["tokens"]
    mask = batch["mask"] if "mask" in batch else np.ones(tokens.shape, np.uint8)
    out = {"tokens": sharding.global_batch(tokens, mesh), "mask": sharding.global_batch(mask, mesh)}
    if labels:
        out["labels"] = sharding.global_batch(np.asarray(batch["label"], np.int32), mesh)
    return out


def abstract_batch(batch_size: int, length: int, mesh: Mesh, *, labels: bool = False
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """What `device_batch` gives for a global batch [batch_size, length], as shapes (for lowering)."""
    batch_sh = sharding.batch_sharding(mesh)
    out = {"tokens": jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=batch_sh),
           "mask": jax.ShapeDtypeStruct((batch_size, length), jnp.uint8, sharding=batch_sh)}
    if labels:
        labels_sh = sharding.batch_sharding(mesh, ndim=1)
        out["labels"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=labels_sh)
    return out


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    apply_fn: diffusion.ApplyFn,
    tx: optax.GradientTransformation,
    objective: diffusion.Objective,
    micro_batches: int,
    ema_decay: float,
    loss_kind: Loss = PRETRAINING,
    label_dropout: float = 0.0,
    null_label: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the global batch (tokens [B, L]; mask [B, L]: the positions the loss reads, 0
    on padding; fine-tuning: 1 on the response; labels [B] of a label-conditioned model, each dropped to
    `null_label` w.p. `label_dropout`); rng is this step's key."""
    labels = batch.get("labels")
    if labels is not None:
        rng, label_rng = jax.random.split(rng)
        labels = diffusion.drop_labels(label_rng, labels, label_dropout, null_label)
    (loss, metrics), grads = loss_and_grads(state.params, batch["tokens"], rng, state.step, apply_fn=apply_fn,
                                            objective=objective, micro_batches=micro_batches,
                                            token_mask=batch["mask"], loss=loss_kind, labels=labels)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    # Divergence guard: a step whose loss, gradient or new parameters are not finite leaves the state as it
    # was (only the step counter moves), so no checkpoint can ever hold non-finite parameters. The host
    # reads the flag only at poll boundaries (`DivergenceGuard`), never waiting on a step in between.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    updated = TrainState(step=state.step, params=params, ema_params=ema_params, opt_state=opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state.replace(step=state.step + 1), metrics


def _all_finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def eval_step(
    params: PyTree,
    batch: Batch,
    rng: jax.Array,
    *,
    apply_fn: diffusion.ApplyFn,
    objective: diffusion.Objective,
    loss_kind: Loss = PRETRAINING,
) -> tuple[jax.Array, jax.Array]:
    """Validation loss of a held-out batch: (sum of nats, number of tokens it covers); pretraining: the
    negative ELBO over real tokens (given each sequence's label, for a label-conditioned model),
    fine-tuning: the SFT loss over response tokens."""
    apply_fn = diffusion.with_labels(apply_fn, batch.get("labels"))
    return loss_kind.evaluate(apply_fn, params, batch["tokens"], batch["mask"], rng, objective)


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """A config's model on a mesh with its sharded, jitted init, train step and evaluation (jitted, compiled
    at the first call or by `lower(...).compile()`); every call runs under the mesh and its axis rules."""

    placed: ModelOnMesh
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs with shardings (for checkpoint restore).
    init: Callable[[jax.Array], TrainState]
    jitted_step: Any  # jax.jit of train_step: (state, batch, rng) -> (state, metrics), the state donated.
    jitted_evaluate: Any  # jax.jit of eval_step: (params, batch, rng) -> (nats, count).
    loss: Loss = PRETRAINING  # The strategy the step and the evaluation run.

    @property
    def mesh(self) -> Mesh:
        return self.placed.mesh

    @property
    def labelled(self) -> bool:
        """The model is label-conditioned: batches carry each sequence's label."""
        return self.placed.config.num_classes > 0

    def batch(self, host_batch: dict[str, np.ndarray]) -> Batch:
        """The step's global batch from this process's rows of a host batch (`device_batch`)."""
        return device_batch(host_batch, self.mesh, labels=self.labelled)

    def step(self, state: TrainState, batch: Batch, rng: jax.Array
             ) -> tuple[TrainState, dict[str, jax.Array]]:
        with sharding.mesh_context(self.mesh, self.placed.rules):
            return self.jitted_step(state, batch, rng)

    def evaluate(self, params: PyTree, batch: Batch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        with sharding.mesh_context(self.mesh, self.placed.rules):
            return self.jitted_evaluate(params, batch, rng)

    def lower(self, batch_size: int, length: int) -> jax.stages.Lowered:
        """The train step lowered for the abstract state and a global batch [batch_size, length]: nothing is
        allocated, so the mesh may be one of another topology (ahead-of-time compilation)."""
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(self.mesh))
        with sharding.mesh_context(self.mesh, self.placed.rules):
            batch = abstract_batch(batch_size, length, self.mesh, labels=self.labelled)
            return self.jitted_step.lower(self.abstract_state, batch, key)


def build(config: Config, mesh: Mesh) -> TrainProgram:
    """The optimizer and the jitted, sharded init / train / eval functions of `config` on `mesh`."""
    config = config_base.resolve(config)
    placed = ModelOnMesh.create(config, mesh)
    tx = make_optimizer(config.train)
    abstract, shardings, init = placed.train_state(tx)
    objective = diffusion.Objective(config.diffusion, config.corrector, config.mask_id,
                                    config.output_vocab_size)
    loss = loss_of(config)
    # Every leaf of a batch (tokens and mask [B, L], labels [B]) split along B: a rank-1 spec fits them all.
    batch_sh, repl = sharding.batch_sharding(mesh, ndim=1), sharding.replicated(mesh)
    step_fn = functools.partial(train_step, apply_fn=placed.apply_fn, tx=tx, objective=objective,
                                micro_batches=config.train.micro_batches, ema_decay=config.train.ema_decay,
                                loss_kind=loss, label_dropout=config.train.label_dropout,
                                null_label=config.num_classes)
    eval_fn = functools.partial(eval_step, apply_fn=placed.apply_fn, objective=objective, loss_kind=loss)
    step = jax.jit(step_fn, in_shardings=(shardings, batch_sh, repl), out_shardings=(shardings, repl),
                   donate_argnums=(0,))
    evaluate = jax.jit(eval_fn, in_shardings=(shardings.params, batch_sh, repl), out_shardings=(repl, repl))
    return TrainProgram(placed=placed, state_shardings=shardings, abstract_state=abstract, init=init,
                        jitted_step=step, jitted_evaluate=evaluate, loss=loss)


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


LABELLED_CORPORA = ("qm9",)  # corpora whose records carry a per-sequence 'label'


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
    if config.num_classes and config.data.name not in LABELLED_CORPORA:
        raise UsageError(f"model.num_classes={config.num_classes} needs a corpus with a label per sequence "
                         f"(data.name in {LABELLED_CORPORA}), not data.name={config.data.name}")


def check_vocabulary(config: Config, tokenizer: Any) -> None:
    """Raises UsageError when the corpus's tokenizer has ids the model's output does not cover."""
    n = getattr(tokenizer, "vocab_size", None)
    if config.train.objective == "sft" and n is not None and n > config.output_vocab_size:
        raise UsageError(f"the tokenizer of data.tokenizer_path has {n} ids, more than the "
                         f"{config.output_vocab_size} the model predicts (model.vocab_size, or "
                         "data.vocab_size + 1)")


def evaluate_nats_per_token(program: TrainProgram, params: PyTree, batches: Iterable[dict], rng: jax.Array
                            ) -> float:
    """The validation loss of `program.loss` in nats per token it covers, over `batches` (host dicts with
    'tokens', maybe 'mask')."""
    nats, count = 0.0, 0.0
    for i, batch in enumerate(batches):
        n, c = program.evaluate(params, program.batch(batch), jax.random.fold_in(rng, i))
        nats, count = nats + float(n), count + float(c)
    return nats / max(count, 1.0)


# Steps between host reads of the step metrics when logging and checkpoints are rarer: it bounds how many
# steps' metrics wait on the device, how late a divergence halts, and (with several processes, where asking
# whether any was signalled is a collective) how many steps a Ctrl-C or SIGTERM may take to act on.
POLL_EVERY = 100


class StepLog:
    """Step metrics as the device returns them; fetched only at poll boundaries (one transfer for all steps
    since the last) and turned into one metrics.jsonl record at log steps."""

    def __init__(self, config: Config, step: int):
        self._tokens_per_step = config.train.batch_size * config.data.length
        self._lr = learning_rate_schedule(config.train)
        self._pending: list[dict[str, jax.Array]] = []
        self._sums: dict[str, float] = {}
        self._count, self._fetched_step = 0, step
        self._tick, self._tick_step = time.time(), step

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self._pending.append(metrics)

    def fetch(self) -> tuple[int, list[float]]:
        """Waits for the pending steps, adds their metrics to the sums; (number of the first, their
        `nonfinite` flags)."""
        pending, self._pending = jax.device_get(self._pending), []
        first = self._fetched_step + 1
        self._fetched_step += len(pending)
        for metrics in pending:
            for k, v in metrics.items():
                self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += len(pending)
        return first, [float(m["nonfinite"]) for m in pending]

    def restart_clock(self) -> None:
        """Times the next record's steps from now (after a validation or a save at the last record)."""
        self._tick = time.time()

    def record(self, step: int) -> dict[str, float]:
        """Means of the metrics fetched since the last record, tokens/s and the learning rate of the last
        step (call after `fetch`, so the time covers finished steps)."""
        means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        now = time.time()
        tokens = (step - self._tick_step) * self._tokens_per_step
        means["tokens_per_sec"] = tokens / max(now - self._tick, 1e-9)
        means["learning_rate"] = float(self._lr(step - 1))
        self._tick, self._tick_step = now, step
        return means


@dataclasses.dataclass
class DivergenceGuard:
    """Host bookkeeping of the steps' `nonfinite` flags, fed at poll boundaries: the current run of bad steps
    in a row and the first run that reached `limit` (1 with train.nonfinite=halt, else train.max_skips)."""

    limit: int
    run: int = 0
    run_start: int = 0
    tripped: tuple[int, int] | None = None  # (first step, length) of the first run that reached the limit.

    def update(self, first_step: int, flags: list[float]) -> None:
        for step, bad in enumerate(flags, first_step):
            if not bad:
                self.run = 0
                continue
            self.run += 1
            self.run_start = step if self.run == 1 else self.run_start
            if self.run >= self.limit and (self.tripped is None or self.tripped[0] == self.run_start):
                self.tripped = (self.run_start, self.run)


def _print_start(config: Config, state: TrainState, mesh: Mesh, entropy_bits: float | None) -> None:
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(f"model: {n_params / 1e6:.2f} M parameters | mesh {dict(mesh.shape)} | batch "
          f"{config.train.batch_size} x {config.data.length} tokens", flush=True)
    if entropy_bits is not None:
        print(f"data entropy {entropy_bits:.4f} bits/token (uniform {math.log2(config.data.vocab_size):.4f})",
              flush=True)


@dataclasses.dataclass(frozen=True)
class Run:
    """A checked training run: its typed config, workdir, data, program, checkpoints and keys."""

    config: Config
    workdir: str
    data: datasets.Data
    program: TrainProgram
    manager: Any  # orbax CheckpointManager of workdir/checkpoints.
    init_rng: jax.Array
    train_rng: jax.Array
    eval_rng: jax.Array

    def data_iterator(self) -> Any:
        c = self.config
        return pipeline.train_iterator(self.data.sources["train"], global_batch_size=c.train.batch_size,
                                       seed=c.seed, process_index=jax.process_index(),
                                       process_count=jax.process_count(), worker_count=c.data.worker_count)

    def validate(self, params: PyTree) -> dict[str, float]:
        t = self.config.train
        batches = pipeline.eval_batches(self.data.sources["validation"], global_batch_size=t.batch_size,
                                        num_batches=t.eval_batches, process_index=jax.process_index(),
                                        process_count=jax.process_count())
        out = self.program.loss.report(evaluate_nats_per_token(self.program, params, batches, self.eval_rng))
        if self.data.entropy_bits_per_token is not None:
            out["data_bits_per_token"] = self.data.entropy_bits_per_token
        return out

    def halt_message(self, step: int, first: int, run: int) -> str:
        self.manager.wait_until_finished()
        good = self.manager.latest_step()
        where = ("no checkpoint was written yet" if good is None else
                 f"the last good checkpoint is step {good} in {checkpoint.checkpoint_dir(self.workdir)}")
        return (f"training halted at step {step}: {run} step(s) in a row from step {first} had a non-finite "
                f"loss, gradient or update (not applied); {where}; lower train.learning_rate="
                f"{self.config.train.learning_rate:g} or set train.nonfinite=skip")


def setup(config: Any, workdir: str) -> Run:
    """Checks `config` against the mesh, the data and the workdir (UsageError: one line); builds the run."""
    config = config_base.resolve(config)
    checkpoint.ensure_writable(workdir, "workdir")
    mesh = sharding.make_mesh(config.mesh)
    check_mesh(config, mesh)
    check_objective(config)
    data = datasets.load(config.data)
    check_vocabulary(config, data.tokenizer)
    t = config.train
    held_out, needed = len(data.sources["validation"]), t.eval_batches * t.batch_size
    if t.eval_every > 0 and needed > held_out:  # Fail now, not at the first validation.
        raise UsageError(f"validation needs train.eval_batches * train.batch_size = {needed} held-out "
                         f"sequences, but {config.data.name} has {held_out}")
    program = build(config, mesh)
    checkpoint.ensure_writable(checkpoint.checkpoint_dir(workdir), "checkpoints")
    manager = checkpoint.make_manager(workdir, t.keep_checkpoints)
    keys = jax.random.split(jax.random.key(config.seed), 3)
    return Run(config, workdir, data, program, manager, *keys)


def restore(run: Run) -> tuple[int, TrainState, Any]:
    """(step, train state, data iterator) of the latest checkpoint that restores, else of a fresh start."""
    train_iter = run.data_iterator()
    restored = checkpoint.restore(run.manager, run.program.abstract_state, train_iter)
    if restored is not None:
        step, state = restored
        if jax.process_index() == 0:
            print(f"resumed from the checkpoint at step {step} in {checkpoint.checkpoint_dir(run.workdir)}",
                  flush=True)
    else:  # A fresh start, also after every step proved damaged (an attempt may have moved the iterator).
        step, state, train_iter = 0, run.program.init(run.init_rng), run.data_iterator()
    if jax.process_index() == 0:
        config_base.save_json(run.config, run.workdir)
        if step == 0:
            _print_start(run.config, state, run.program.mesh, run.data.entropy_bits_per_token)
    return step, state, train_iter


def loop(run: Run, step: int, state: TrainState, train_iter: Any) -> tuple[TrainState, int]:
    """Trains from `step` to train.num_steps, dispatching steps without waiting on them: metrics, the
    divergence guard and stop requests are read at poll boundaries (log, evaluation and checkpoint steps,
    every POLL_EVERY steps, and at once on a lone process asked to stop).

    A log step that neither evaluates nor saves is read one step late, once the next step is dispatched, so
    that the device computes while the host waits for the metrics and prepares the next batch (with
    train.log_every=1, reading each step at once left the device idle for that time). Evaluation and
    checkpoints need the state of their own step, which the next step's dispatch gives away (donation).
    """
    t, program, lone = run.config.train, run.program, jax.process_count() == 1
    log, guard = StepLog(run.config, step), DivergenceGuard(1 if t.nonfinite == "halt" else t.max_skips)
    writer = MetricsWriter(run.workdir, resume_step=step, total_steps=t.num_steps,
                           enabled=jax.process_index() == 0)

    def read(at: int, log_now: bool, evaluate_now: bool, agree: bool = True) -> bool:
        """Fetches the pending metrics (up to step `at`), halts on divergence, logs step `at` if asked;
        whether every process agrees to stop (`agree=False`: not asked, False)."""
        guard.update(*log.fetch())
        if guard.tripped is not None:
            raise Halted(run.halt_message(at, *guard.tripped))
        if log_now:
            record = log.record(at)
            if evaluate_now:
                record.update(run.validate(state.ema_params))
            writer.write(at, record)
            writer.progress(at, record)
        return agree and stop.agreed()  # Every process stops at the same step (a collective).

    stopping, deferred = False, False
    with StopRequest("the current step") as stop:
        try:
            while step < t.num_steps and not stopping:
                batch = program.batch(next(train_iter))
                state, metrics = program.step(state, batch, jax.random.fold_in(run.train_rng, step))
                step += 1
                if deferred:  # The previous step's log, read while this step keeps the device busy.
                    # With several processes, agreeing is a collective that would wait for this step too:
                    # they agree at the next immediate read (at most POLL_EVERY steps on).
                    stopping = read(step - 1, log_now=True, evaluate_now=False, agree=lone)
                    deferred = False
                log.add(metrics)
                last = step == t.num_steps
                evaluate_now = t.eval_every > 0 and (step % t.eval_every == 0 or last)
                log_now = step % t.log_every == 0 or evaluate_now or last
                save_now = step % t.checkpoint_every == 0 or last
                # Read now: the state of this step is needed, a stop is due, or it is a poll boundary.
                at_once = (evaluate_now or save_now or stopping or (lone and stop.requested)
                           or step % POLL_EVERY == 0)
                if not at_once:
                    deferred = log_now  # A plain log step waits for the next dispatch.
                    continue
                stopping = read(step, log_now, evaluate_now) or stopping
                if save_now or stopping:
                    checkpoint.save(run.manager, step, state, train_iter)
                if log_now:  # The next record's tokens/s counts training alone, not validating or saving.
                    log.restart_clock()
            if stopping and jax.process_index() == 0:
                print(f"{stop.signal_name or 'stop'}: saved the checkpoint at step {step}; rerun the same "
                      "command to resume", flush=True)
        finally:
            writer.close()
    return state, step


def train_and_evaluate(config: Any, workdir: str) -> tuple[TrainState, int]:
    """Trains the model of `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns the final train state and its step (less than train.num_steps after a preemption).
    """
    run = setup(config, workdir)
    try:
        return loop(run, *restore(run))
    finally:
        run.manager.wait_until_finished()
        run.manager.close()
