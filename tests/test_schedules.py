"""Tests of the masking schedules: alpha(t), its complement, the rate dsigma and the loss weight w(t)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proseco_jax.config_base import Diffusion
from proseco_jax.configlib import ConfigError
from proseco_jax.schedules import SCHEDULES
from proseco_jax.schedules import Schedule as _Schedule

_FIELDS = {"kind": "schedule", "eps": "schedule_eps", "power": "poly_power"}


def Schedule(**fields) -> _Schedule:  # noqa: N802 - reads like the class it builds
    """The schedule of a diffusion section given in the schedule's own words (kind, eps, power)."""
    return _Schedule(Diffusion(**{_FIELDS.get(k, k): v for k, v in fields.items()}))

# Interior grid: away from t = 0, where w(t) ~ 1/t is ill-conditioned in float32.
INTERIOR = np.linspace(0.05, 0.95, 19, dtype=np.float32)


def _schedule(kind: str) -> Schedule:
    return Schedule(kind=kind)


def _reference_alpha(schedule: _Schedule, t: np.ndarray) -> np.ndarray:
    """alpha(t) in float64 from the closed forms documented on `Schedule`."""
    t, eps = np.asarray(t, np.float64), schedule.eps
    if schedule.kind == "loglinear":
        return 1.0 - (1.0 - eps) * t
    if schedule.kind == "linear":
        d = schedule.diffusion
        return np.exp(-(d.sigma_min + t * (d.sigma_max - d.sigma_min)))
    if schedule.kind == "cosine":
        return eps + (1.0 - eps) * np.cos(0.5 * np.pi * t)
    return 1.0 - (1.0 - eps) * t**schedule.diffusion.poly_power


def _alpha_grad(schedule: Schedule, t: np.ndarray) -> np.ndarray:
    return np.asarray(jax.vmap(jax.grad(lambda s: schedule.alpha(s)))(jnp.asarray(t)))


@pytest.mark.parametrize("kind", SCHEDULES)
def test_alpha_is_strictly_decreasing_on_a_grid_of_the_unit_interval(kind):
    alpha = np.asarray(_schedule(kind).alpha(jnp.linspace(0.0, 1.0, 101)))
    assert np.all(np.diff(alpha) < 0), alpha


@pytest.mark.parametrize("kind", SCHEDULES)
def test_alpha_starts_clean_and_ends_almost_fully_masked(kind):
    schedule = _schedule(kind)
    assert float(schedule.alpha(0.0)) == pytest.approx(1.0, abs=1e-6)
    alpha_one = float(schedule.alpha(1.0))
    assert 0.0 < alpha_one < 1e-2


@pytest.mark.parametrize("kind", SCHEDULES)
def test_alpha_stays_in_the_unit_interval(kind):
    alpha = np.asarray(_schedule(kind).alpha(jnp.linspace(0.0, 1.0, 101)))
    assert np.all(alpha > 0.0) and np.all(alpha <= 1.0)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_alpha_matches_its_documented_closed_form(kind):
    schedule = _schedule(kind)
    t = np.linspace(0.0, 1.0, 21)
    np.testing.assert_allclose(schedule.alpha(jnp.asarray(t, jnp.float32)), _reference_alpha(schedule, t),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_mask_prob_is_one_minus_alpha(kind):
    schedule = _schedule(kind)
    t = jnp.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(schedule.mask_prob(t), 1.0 - np.asarray(schedule.alpha(t)), atol=1e-6)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_dsigma_equals_autodiff_derivative_of_sigma(kind):
    schedule = _schedule(kind)
    t = jnp.asarray(INTERIOR)
    autodiff = jax.vmap(jax.grad(lambda s: schedule.sigma(s)))(t)
    np.testing.assert_allclose(schedule.dsigma(t), autodiff, rtol=1e-4)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_dsigma_equals_central_finite_difference_of_sigma(kind):
    schedule = _schedule(kind)
    h = 1e-3
    plus = np.asarray(schedule.sigma(jnp.asarray(INTERIOR + h)), np.float64)
    minus = np.asarray(schedule.sigma(jnp.asarray(INTERIOR - h)), np.float64)
    finite = (plus - minus) / (2 * h)
    np.testing.assert_allclose(schedule.dsigma(jnp.asarray(INTERIOR)), finite, rtol=2e-3)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_loss_weight_is_minus_alpha_rate_over_mask_prob(kind):
    schedule = _schedule(kind)
    t = INTERIOR
    alpha = np.asarray(schedule.alpha(jnp.asarray(t)), np.float64)
    expected = -_alpha_grad(schedule, t) / (1.0 - alpha)
    np.testing.assert_allclose(schedule.loss_weight(jnp.asarray(t)), expected, rtol=1e-3)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_loss_weight_is_positive_and_finite_down_to_small_t(kind):
    """At t = 1e-5 .. 1e-3 (training draws t >= train_eps = 1e-3; users may lower it) w must stay finite."""
    w = np.asarray(_schedule(kind).loss_weight(jnp.asarray([1e-5, 1e-4, 1e-3, 0.5, 1.0])))
    assert np.all(np.isfinite(w)) and np.all(w > 0), w


@pytest.mark.parametrize("kind", SCHEDULES)
def test_mask_prob_and_loss_weight_match_a_float64_reference_at_small_t(kind):
    schedule = _schedule(kind)
    t = np.asarray([1e-4, 1e-3, 3e-3, 1e-2, 0.1])
    alpha = _reference_alpha(schedule, t)
    h = t * 1e-4
    alpha_rate = (_reference_alpha(schedule, t + h) - _reference_alpha(schedule, t - h)) / (2 * h)
    t32 = jnp.asarray(t, jnp.float32)
    np.testing.assert_allclose(schedule.mask_prob(t32), 1.0 - alpha, rtol=1e-3)
    np.testing.assert_allclose(schedule.loss_weight(t32), -alpha_rate / (1.0 - alpha), rtol=1e-3)


def test_loglinear_loss_weight_is_one_over_t():
    schedule = Schedule(kind="loglinear", eps=1e-3)
    t = np.asarray([1e-3, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0], np.float32)
    np.testing.assert_allclose(schedule.loss_weight(jnp.asarray(t)), 1.0 / t, rtol=1e-3)


def test_loglinear_alpha_is_linear_in_t():
    eps = 1e-3
    schedule = Schedule(kind="loglinear", eps=eps)
    t = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    np.testing.assert_allclose(schedule.alpha(jnp.asarray(t)), 1.0 - (1.0 - eps) * t, atol=1e-6)


def test_cosine_and_polynomial_end_at_eps():
    for kind in ("cosine", "polynomial"):
        schedule = Schedule(kind=kind, eps=1e-2)
        assert float(schedule.alpha(1.0)) == pytest.approx(1e-2, rel=1e-4)


def test_linear_schedule_sigma_runs_between_its_endpoints():
    schedule = Schedule(kind="linear", sigma_min=0.5, sigma_max=4.0)
    assert float(schedule.sigma(0.0)) == pytest.approx(0.5)
    assert float(schedule.sigma(1.0)) == pytest.approx(4.0)
    assert float(schedule.alpha(0.5)) == pytest.approx(np.exp(-2.25), rel=1e-5)


def test_polynomial_power_changes_the_shape():
    square = Schedule(kind="polynomial", power=2.0, eps=0.0)
    cube = Schedule(kind="polynomial", power=3.0, eps=0.0)
    assert float(square.mask_prob(0.5)) == pytest.approx(0.25, rel=1e-5)
    assert float(cube.mask_prob(0.5)) == pytest.approx(0.125, rel=1e-5)


def test_schedule_works_on_arrays_of_any_shape():
    t = jnp.full((2, 3), 0.5)
    for kind in SCHEDULES:
        schedule = _schedule(kind)
        assert schedule.alpha(t).shape == (2, 3)
        assert schedule.loss_weight(t).shape == (2, 3)
        assert schedule.dsigma(t).shape == (2, 3)


def test_unknown_schedule_kind_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="diffusion.schedule must be one of") as info:
        Schedule(kind="sqrt")
    assert "\n" not in str(info.value)
