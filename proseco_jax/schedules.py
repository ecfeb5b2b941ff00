"""Masking schedules of absorbing-state (masked) diffusion in continuous time.

A schedule gives alpha(t), the probability that a token is still clean at time t in [0, 1], through the
total noise sigma(t) = -log alpha(t), and its rate dsigma/dt. The MDLM/ProSeCo loss weight is

    w(t) = -alpha'(t) / (1 - alpha(t)) = dsigma(t) / expm1(sigma(t)),

which for the default log-linear schedule (alpha = 1 - (1 - eps) t) is exactly 1/t.
All functions are pure and work on scalars or arrays of any shape.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from proseco_jax.config_base import SCHEDULES, Diffusion

__all__ = ["SCHEDULES", "Schedule"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The masking schedule of a `config.diffusion` section (its schedule, schedule_eps, sigma_min,
    sigma_max and poly_power fields):

        loglinear:  alpha = 1 - (1 - eps) t                    (MDLM's default)
        linear:     sigma = sigma_min + t (sigma_max - sigma_min)
        cosine:     alpha = eps + (1 - eps) cos(pi t / 2)
        polynomial: alpha = 1 - (1 - eps) t^power
    """

    diffusion: Diffusion = Diffusion()

    @property
    def kind(self) -> str:
        return self.diffusion.schedule

    @property
    def eps(self) -> float:
        return self.diffusion.schedule_eps

    def sigma(self, t):
        """Total noise sigma(t) = -log alpha(t)."""
        t = jnp.asarray(t, jnp.float32)
        if self.kind == "loglinear":
            return -jnp.log1p(-(1.0 - self.eps) * t)
        if self.kind == "linear":
            return self.diffusion.sigma_min + t * (self.diffusion.sigma_max - self.diffusion.sigma_min)
        if self.kind == "cosine":
            # 1 - cos(pi t / 2) = 2 sin^2(pi t / 4), without float32 cancellation at small t.
            return -jnp.log1p(-2.0 * (1.0 - self.eps) * jnp.sin(0.25 * jnp.pi * t) ** 2)
        return -jnp.log1p(-(1.0 - self.eps) * t**self.diffusion.poly_power)

    def dsigma(self, t):
        """Rate d sigma / dt."""
        t = jnp.asarray(t, jnp.float32)
        if self.kind == "loglinear":
            return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)
        if self.kind == "linear":
            return jnp.full_like(t, self.diffusion.sigma_max - self.diffusion.sigma_min)
        if self.kind == "cosine":
            cos = jnp.cos(0.5 * jnp.pi * t)
            sin = jnp.sin(0.5 * jnp.pi * t)
            return 0.5 * jnp.pi * (1.0 - self.eps) * sin / (self.eps + (1.0 - self.eps) * cos)
        power = self.diffusion.poly_power
        return (1.0 - self.eps) * power * t ** (power - 1.0) / (1.0 - (1.0 - self.eps) * t**power)

    def alpha(self, t):
        """Probability that a token is still unmasked at time t."""
        return jnp.exp(-self.sigma(t))

    def mask_prob(self, t):
        """1 - alpha(t), computed without cancellation."""
        return -jnp.expm1(-self.sigma(t))

    def loss_weight(self, t):
        """w(t) = -alpha'(t) / (1 - alpha(t)) = dsigma / expm1(sigma)."""
        return self.dsigma(t) / jnp.expm1(self.sigma(t))

