"""`Sampler`: what every sampling call of one model needs, held once (as Gemma's `Sampler` holds its model,
params and tokenizer), so that a call names only what changes between calls.

It holds the model's `apply_fn` and parameters, the masking schedule it was trained with, the [MASK] id, the
ids read from the logits, the training parameterization that an empty `sampling.parameterization` follows,
and the mesh with the logical-axis rules its sharding constraints are traced under. `sample` makes the plan
(loop.make_plan) of the settings and the inputs' shapes and runs it (loop.run); `lower` lowers the same
program for abstract parameters (aot.py). float64 sampling math switches jax's x64 mode on around the call
only: training and the model stay in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
from jax.sharding import Mesh

from proseco_jax import schedules, sharding
from proseco_jax.config_base import Sampling
from proseco_jax.sampling import loop
from proseco_jax.sampling.loop import NO_INPUTS, ApplyFn, Inputs, SampleOutput
from proseco_jax.state import ModelOnMesh


@dataclasses.dataclass(frozen=True, eq=False)
class Sampler:
    """A model ready to sample: `sampler.sample(settings, rng, batch_size, length, ...)`."""

    # (params, tokens int32 [B, L], sigma float32 [B][, labels=int32 [B]]) -> logits [B, L, >= vocab_size]
    apply_fn: ApplyFn
    params: Any  # a pytree (None for a model without), traced: new values never recompile
    schedule: schedules.Schedule
    mask_id: int  # the [MASK] id
    vocab_size: int | None = None  # ids read from the logits, [MASK] among them (None: mask_id + 1)
    parameterization: str = "subs"  # what an empty sampling.parameterization follows
    mesh: Mesh | None = None  # the batch is split over its ("data", "fsdp") axes
    rules: sharding.Rules | None = None  # logical-axis rules of the model's sharding constraints (with mesh)
    num_classes: int = 0  # label classes of a label-conditioned model (guidance steers towards one of them)

    @classmethod
    def for_model(cls, placed: ModelOnMesh, params: Any) -> Sampler:
        """The sampler of `placed.config`'s model on its mesh with `params` (restored or initialised)."""
        config = placed.config
        return cls(apply_fn=placed.apply_fn, params=params, schedule=schedules.Schedule(config.diffusion),
                   mask_id=config.mask_id, vocab_size=config.output_vocab_size,
                   parameterization=config.diffusion.parameterization, mesh=placed.mesh, rules=placed.rules,
                   num_classes=config.num_classes)

    def plan(self, settings: Sampling, batch_size: int, length: int,
             inputs: Inputs = NO_INPUTS) -> loop.Plan:
        """The static description of a call (validated: SamplingError, a ValueError, on bad inputs)."""
        return loop.make_plan(settings.resolved(self.parameterization), self.schedule, batch_size=batch_size,
                              length=length, mask_id=self.mask_id, vocab_size=self.vocab_size, mesh=self.mesh,
                              inputs=inputs, num_classes=self.num_classes)

    def sample(self, settings: Sampling, rng: jax.Array, batch_size: int, length: int, *,
               prompt: Any = None, infill: tuple[Any, Any] | None = None, first_index: int = 0,
               history: bool = False, host_loop: bool = False) -> SampleOutput:
        """Draws batch_size sequences of `length` tokens in one compiled program (loop.run).

        Args:
          settings: the `sampling` config section (preset, parameterization and temperature resolved here).
          rng: PRNG key of the run; sample b of the batch is a function of fold_in(rng, first_index + b),
            the settings and its inputs only, not of the batch size or the mesh.
          prompt: int32 [P] or [B, P]: a fixed prefix.
          infill: (tokens int32 [B, L], keep_mask bool [B, L]): positions that keep the given tokens.
          first_index: the run's index of the batch's first sample (resuming runs pass where they stand).
          history: also return z after every step, int32 [T, B, L].
          host_loop: the same jitted step dispatched T times from Python (the benchmark's baseline).
        """
        inputs = Inputs(prompt=prompt, infill=infill)
        with self._context(settings):
            plan = self.plan(settings, batch_size, length, inputs)
            return loop.run(self.apply_fn, plan, self.params, rng, inputs, first_index=first_index,
                            history=history, host_loop=host_loop)

    def check(self, settings: Sampling, batch_size: int, length: int, *, prompt: Any = None,
              infill: tuple[Any, Any] | None = None) -> None:
        """Raises the SamplingError (one line) that `sample` with these arguments would raise, compiling
        and drawing nothing: a caller checks its inputs before it writes anything."""
        with self._context(settings):
            self.plan(settings, batch_size, length, Inputs(prompt=prompt, infill=infill))

    def lower(self, settings: Sampling, rng: Any, batch_size: int, length: int) -> jax.stages.Lowered:
        """The program `sample` runs without prompt or infill, lowered for this sampler's params and rng
        as given (abstract ShapeDtypeStructs with shardings are enough), to compile ahead of time."""
        with self._context(settings):
            return loop.lower(self.apply_fn, self.plan(settings, batch_size, length), self.params, rng)

    @contextlib.contextmanager
    def _context(self, settings: Sampling) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.mesh is not None and self.rules is not None:
                stack.enter_context(sharding.mesh_context(self.mesh, self.rules))
            if settings.precision == "float64":
                stack.enter_context(jax.enable_x64(True))
            yield
