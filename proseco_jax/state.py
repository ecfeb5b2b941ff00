"""A config's model on a mesh: the Flax module, its `apply_fn`, and its parameters (abstract, initialised
or restored) with the shardings that the logical axis names and `config.mesh` rules give them.

Training, inference and the benchmark all start here. Abstract shapes come from `jax.eval_shape` of the
initialiser under the mesh, so nothing is allocated to learn where every leaf lives; the train state adds
the optimizer's state, built from an optimizer the caller passes in (inference never builds one).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from proseco_jax import checkpoint, sharding
from proseco_jax.config_base import Config
from proseco_jax.diffusion import ApplyFn
from proseco_jax.models import registry

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes; params and ema_params are the model's 'params' tree."""

    step: jax.Array  # int32 scalar: optimizer steps taken.
    params: PyTree
    ema_params: PyTree
    opt_state: PyTree


def make_apply_fn(model: nn.Module) -> ApplyFn:
    """`apply_fn(params, tokens [B, L], sigma [B], dropout_rng=None, labels=None) -> logits`; dropout only
    with a key; labels int32 [B] only for a label-conditioned model (None: its "no label" row)."""

    def apply_fn(params, tokens, sigma, dropout_rng=None, labels=None):
        train = dropout_rng is not None
        rngs = {"dropout": dropout_rng} if train else {}
        kwargs = {} if labels is None else {"labels": labels}
        return model.apply({"params": params}, tokens, sigma, train=train, rngs=rngs, **kwargs)

    return apply_fn


@dataclasses.dataclass(frozen=True)
class ModelOnMesh:
    """The model of `config` with the mesh and logical-axis rules its arrays are placed by."""

    config: Config
    mesh: Mesh
    model: nn.Module
    rules: sharding.Rules
    apply_fn: ApplyFn

    @classmethod
    def create(cls, config: Config, mesh: Mesh | None = None) -> ModelOnMesh:
        mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
        model = registry.build(config.model, config.mask_id + 1)
        return cls(config, mesh, model, sharding.rules_from_config(config.mesh), make_apply_fn(model))

    def under_mesh(self, fn: Callable) -> Callable:
        """fn run with this mesh current and these rules active (the model's sharding constraints apply)."""

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with sharding.mesh_context(self.mesh, self.rules):
                return fn(*args, **kwargs)

        return wrapped

    def _init_boxed_params(self, rng: jax.Array) -> PyTree:
        dummy = jnp.zeros((1, self.config.data.length), jnp.int32)
        return self.model.init(rng, dummy, jnp.zeros((1,)))["params"]

    def _place(self, init_boxed: Callable[[jax.Array], PyTree]) -> tuple[PyTree, PyTree]:
        """(abstract tree with shardings, shardings) of what `init_boxed(rng)` returns."""
        with sharding.mesh_context(self.mesh, self.rules):
            # The key is made while tracing: a compile-only mesh (aot.py) has no device to make it on.
            boxed = jax.eval_shape(lambda: init_boxed(jax.random.key(0)))
            shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), self.mesh, self.rules)
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed), shardings
        )
        return abstract, shardings

    def abstract_params(self) -> PyTree:
        """ShapeDtypeStructs (with shardings) of the parameter tree."""
        return self._place(self._init_boxed_params)[0]

    def init_params(self, rng: jax.Array) -> PyTree:
        """Freshly initialised parameters, each leaf created in its sharding."""
        _, shardings = self._place(self._init_boxed_params)
        init = jax.jit(lambda key: nn.meta.unbox(self._init_boxed_params(key)), out_shardings=shardings)
        return self.under_mesh(init)(rng)

    def train_state(self, tx: optax.GradientTransformation) -> tuple[TrainState, TrainState, Callable]:
        """(abstract TrainState, its shardings, jitted init rng -> TrainState) for the optimizer tx."""

        def init_boxed(rng):
            params = self._init_boxed_params(rng)
            return TrainState(
                step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params)
            )

        abstract, shardings = self._place(init_boxed)
        init = jax.jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=shardings)
        return abstract, shardings, self.under_mesh(init)

    def restore_params(self, workdir: str, *, use_ema: bool = True) -> tuple[int, PyTree]:
        """(step, parameters) of the latest checkpoint of `workdir`, each leaf in its sharding."""
        return checkpoint.restore_params(workdir, self.abstract_params(), use_ema=use_ema)
