"""Affine paths: boundary values, analytic derivatives, and conversions between parameterisations."""

import pytest
import torch

from wmgen.flow.paths import (
    SCHEDULERS,
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    PolynomialScheduler,
    VPScheduler,
    from_diffusers,
    to_diffusers,
)

ALL = [CondOTScheduler(), PolynomialScheduler(2.0), VPScheduler(), CosineScheduler()]


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_derivatives_match_finite_differences(sched):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    c, cp, cm = sched(t), sched(t + h), sched(t - h)
    torch.testing.assert_close(c.d_alpha_t, (cp.alpha_t - cm.alpha_t) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c.d_sigma_t, (cp.sigma_t - cm.sigma_t) / (2 * h), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sched", [CondOTScheduler(), PolynomialScheduler(3.0), CosineScheduler()])
def test_endpoints_are_source_and_data(sched):
    c = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c.alpha_t, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(c.sigma_t, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_vp_is_variance_preserving_and_ends_at_data():
    c = VPScheduler()(torch.linspace(0, 1, 11, dtype=torch.float64))
    torch.testing.assert_close(c.alpha_t**2 + c.sigma_t**2, torch.ones(11, dtype=torch.float64))
    assert c.alpha_t[-1] == 1 and c.sigma_t[-1] == 0
    assert abs(c.alpha_t[0] - 6.57e-3) < 1e-4  # T(1) = 0.1 + 19.9 / 2 = 10.05, exp(-T/2) = 6.57e-3


@pytest.mark.parametrize("sched", ALL, ids=lambda s: type(s).__name__)
def test_conversions_recover_x0_x1_and_velocity(sched):
    g = torch.Generator().manual_seed(0)
    path = AffinePath(sched)
    x0, x1 = (
        torch.randn(8, 3, 4, generator=g, dtype=torch.float64),
        torch.randn(8, 3, 4, generator=g, dtype=torch.float64),
    )
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s = path.sample(x0, x1, t)
    torch.testing.assert_close(path.velocity_to_x1(s.dx_t, s.x_t, t), x1)
    torch.testing.assert_close(path.velocity_to_x0(s.dx_t, s.x_t, t), x0)
    torch.testing.assert_close(path.x1_to_velocity(x1, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.x0_to_velocity(x0, s.x_t, t), s.dx_t)
    torch.testing.assert_close(path.x1_to_x0(x1, s.x_t, t), x0)
    torch.testing.assert_close(path.x0_to_x1(x0, s.x_t, t), x1)


def test_condot_x1_hat_formula():
    x_t, v, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    expected = x_t + (1 - t)[:, None] * v
    torch.testing.assert_close(AffinePath().velocity_to_x1(v, x_t, t), expected)


def test_condot_target_velocity_is_x1_minus_x0():
    x0, x1, t = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
    s = AffinePath(CondOTScheduler()).sample(x0, x1, t)
    torch.testing.assert_close(s.dx_t, x1 - x0)
    torch.testing.assert_close(s.x_t, t[:, None] * x1 + (1 - t[:, None]) * x0)


def test_diffusers_conversion_round_trip():
    t, v = torch.rand(6), torch.randn(6, 3)
    sigma, v_d = to_diffusers(t, v)
    torch.testing.assert_close(sigma, 1 - t)
    torch.testing.assert_close(v_d, -v)
    t2, v2 = from_diffusers(sigma, v_d)
    torch.testing.assert_close(t2, t)
    torch.testing.assert_close(v2, v)


def test_registry_names():
    assert set(SCHEDULERS) == {"condot", "polynomial", "vp", "cosine"}


def test_bad_inputs():
    path = AffinePath()
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        path.sample(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="same shape"):
        path.sample(torch.zeros(2, 2), torch.zeros(2, 3), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\[B\] with B=2"):
        path.sample(torch.zeros(2, 2), torch.zeros(2, 2), torch.rand(3))
    with pytest.raises(ValueError, match="n must be > 0"):
        PolynomialScheduler(0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPScheduler(1.0, 0.5)
