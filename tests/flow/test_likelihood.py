"""log_likelihood(): exact and Hutchinson divergence against analytic densities."""

import math

import pytest
import torch
from flows import F64, gen, mixture_flow

from wmgen.flow.analytic import GaussianFlow
from wmgen.flow.likelihood import divergence, log_likelihood, standard_normal_log_prob
from wmgen.flow.solvers import integrate


def test_exact_divergence_log_likelihood_matches_mixture_density():
    flow = mixture_flow()
    x1 = flow.sample_target(64, gen(1))
    log_p, x0 = log_likelihood(flow.velocity, x1, atol=1e-8, rtol=1e-8, return_x0=True)
    torch.testing.assert_close(log_p, flow.log_prob(x1, 1.0), atol=1e-5, rtol=0)
    back = integrate(flow.velocity, x1, method="dopri5", t_start=1.0, t_end=0.0, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(x0, back, atol=1e-6, rtol=0)
    # points far from the data have low likelihood, and the estimate still matches there
    far = torch.tensor([[6.0, 6.0], [-5.0, 0.0]], dtype=F64)
    torch.testing.assert_close(
        log_likelihood(flow.velocity, far, atol=1e-8, rtol=1e-8), flow.log_prob(far, 1.0), atol=1e-4, rtol=0
    )


def test_fixed_step_likelihood_converges():
    flow = mixture_flow()
    x1 = flow.sample_target(32, gen(2))
    exact = flow.log_prob(x1, 1.0)
    errs = [(log_likelihood(flow.velocity, x1, method="rk4", steps=n) - exact).abs().max() for n in (4, 16)]
    assert errs[1] < errs[0] / 20 and errs[1] < 2e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_close(probe):
    flow = mixture_flow()
    x1 = flow.sample_target(128, gen(3))
    exact = flow.log_prob(x1, 1.0)
    kw = {"method": "rk4", "steps": 8, "exact_divergence": False, "probe": probe}  # time error ~1e-3 << noise
    est = log_likelihood(flow.velocity, x1, n_probes=64, generator=gen(4), **kw)
    err = est - exact
    assert err.pow(2).mean().sqrt() < 0.25  # per-sample noise shrinks as 1 / sqrt(n_probes)
    assert err.mean().abs() < 0.05  # no bias: averages out over the batch
    few = log_likelihood(flow.velocity, x1, n_probes=4, generator=gen(4), **kw)
    assert (few - exact).pow(2).mean() > err.pow(2).mean()
    assert torch.equal(log_likelihood(flow.velocity, x1, n_probes=64, generator=gen(4), **kw), est)


def test_custom_source_density():
    # Gaussian -> Gaussian with a non-standard diagonal source: pass that source's log-density as log_p0.
    cov1 = torch.tensor([[0.6, 0.2], [0.2, 1.5]], dtype=F64)
    flow = GaussianFlow(torch.tensor([0.5, -1.0]), torch.tensor([1.5, 0.5]), torch.tensor([2.0, 1.0]), cov1)

    def log_p0(x0):
        return flow.log_prob(x0, 0.0)

    x1 = flow.sample_target(16, gen(5))
    log_p = log_likelihood(flow.velocity, x1, log_p0=log_p0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(log_p, flow.log_prob(x1, 1.0), atol=1e-6, rtol=0)


def test_image_shaped_states():
    # v = a(t) x on [B, C, H, W]: x1 = x0 exp(A), A = int_0^1 a = 1/2, so log p1(x1) = log p0(x1 e^-A) - D A.
    def v(x, t):
        return t.view(-1, 1, 1, 1) * x

    x1 = torch.randn(3, 2, 4, 4, dtype=F64, generator=gen(6))
    d, a = 2 * 4 * 4, 0.5
    expected = standard_normal_log_prob(x1 * math.exp(-a)) - d * a
    log_p, x0 = log_likelihood(v, x1, atol=1e-9, rtol=1e-9, return_x0=True)
    torch.testing.assert_close(log_p, expected, atol=1e-6, rtol=0)
    assert x0.shape == x1.shape
    hutch = log_likelihood(v, x1, exact_divergence=False, n_probes=1, generator=gen(7))
    torch.testing.assert_close(hutch, expected, atol=1e-3, rtol=0)  # J = a I: one Rademacher probe is exact


def test_divergence_matches_jacobian_trace():
    w = torch.randn(3, 3, dtype=F64, generator=gen(8))

    def v(x, t):
        return torch.tanh(x @ w) * (1 + t[:, None]) + x**2

    x = torch.randn(5, 3, dtype=F64, generator=gen(9))
    t = torch.rand(5, dtype=F64, generator=gen(10))
    _, div = divergence(v, x, t)
    jacs = torch.stack(
        [torch.autograd.functional.jacobian(lambda xb, b=b: v(xb[None], t[b : b + 1])[0], x[b]) for b in range(5)]
    )  # [B, D, D]
    torch.testing.assert_close(div, jacs.diagonal(dim1=1, dim2=2).sum(-1), atol=1e-12, rtol=0)
    # scaled basis vectors sqrt(D) e_i also have E[eps eps^T] = I, and averaging all D of them is exact
    basis = (3**0.5 * torch.eye(3, dtype=F64))[:, None, :].expand(3, 5, 3)  # [P, B, D]
    torch.testing.assert_close(divergence(v, x, t, basis)[1], div, atol=1e-12, rtol=0)
    # Gaussian probes: unbiased with variance 2 |sym(J)|_F^2 / P
    n = 1000
    _, est = divergence(v, x, t, torch.randn(n, 5, 3, dtype=F64, generator=gen(11)))
    std = (2 * (0.5 * (jacs + jacs.transpose(1, 2))).pow(2).sum((1, 2)) / n).sqrt()
    assert ((est - div).abs() < 4 * std).all()


def test_standard_normal_log_prob():
    x = torch.randn(4, 2, 3, dtype=F64, generator=gen(12))
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum((1, 2))
    torch.testing.assert_close(standard_normal_log_prob(x), ref, atol=1e-12, rtol=0)


def test_bad_arguments():
    flow = mixture_flow()
    x1 = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="deterministic solver"):
        log_likelihood(flow.velocity, x1, method="euler_maruyama")
    with pytest.raises(ValueError, match="deterministic solver"):
        log_likelihood(flow.velocity, x1, method="nope")
    with pytest.raises(ValueError, match="probe must be one of"):
        log_likelihood(flow.velocity, x1, exact_divergence=False, probe="sphere")
    with pytest.raises(ValueError, match="n_probes must be an int >= 1"):
        log_likelihood(flow.velocity, x1, exact_divergence=False, n_probes=0)
    with pytest.raises(ValueError, match=r"x1 must be a floating-point Tensor \[B, \.\.\.\]"):
        log_likelihood(flow.velocity, torch.zeros(4))
    with pytest.raises(ValueError, match=r"log_p0 must return \[B\] with B=4, got \(4, 2\)"):
        log_likelihood(flow.velocity, x1, log_p0=lambda x: x, method="euler", steps=1)
    with pytest.raises(RuntimeError, match="max_steps=2"):
        log_likelihood(flow.velocity, flow.sample_target(4, gen()), atol=1e-12, rtol=1e-12, max_steps=2)
    with pytest.raises(ValueError, match=r"velocity_fn must return v shaped like x"):
        log_likelihood(lambda x, t: x[:, :1], x1, method="euler", steps=1)
