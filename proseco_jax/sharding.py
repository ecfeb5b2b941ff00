"""Device mesh and logical-axis sharding.

One `jax.sharding.Mesh` with axes (data, fsdp, tensor) is built from `config.mesh` (a size of -1 takes the
devices the other axes leave). Parameters and activations carry logical axis names (embed, mlp, heads, kv,
vocab, cond; batch, length, act_*) and one table of rules, `config.mesh.logical_axis_rules`, maps them to
mesh axes. Batches are sharded over (data, fsdp) on their leading axis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from proseco_jax.errors import UsageError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves (data, fsdp, tensor) sizes; exactly one may be -1 and takes the remaining devices."""
    sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UsageError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: each must be >= 1, and at most one -1")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if free:
        if num_devices % fixed:
            raise UsageError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
        sizes[free[0]] = num_devices // fixed
    if int(np.prod(sizes)) != num_devices:
        raise UsageError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    try:
        from jax.experimental import mesh_utils

        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        device_array = np.asarray(devices).reshape(shape)
    # Auto axes: sharding follows the logical constraints and jit's in/out shardings.
    return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(mesh_config) -> Rules:
    """The logical-axis rules as a tuple of (name, mesh axes) pairs."""
    rules = []
    for name, axes in mesh_config.logical_axis_rules:
        rules.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(rules)


def logical_to_sharding(logical_specs, mesh: Mesh, rules: Rules):
    """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch: leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles the per-process rows of a batch into one global array sharded over (data, fsdp)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh, local_batch.ndim), local_batch)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes `mesh` current and `rules` the logical-axis rules, so that the model's logical sharding
    constraints apply while a function is traced."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
