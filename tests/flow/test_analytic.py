"""Closed-form flows: checked against independent formulas, the continuity equation and Monte-Carlo."""

import pytest
import torch
from flows import F64, gaussian_flow, gen, mixture_flow

from wmgen.flow.analytic import GaussianFlow, GaussianMixtureFlow


def continuity_residual(flow, x: torch.Tensor, t: float, dt: float = 1e-5) -> torch.Tensor:
    """d/dt log p + div v + v . grad log p at (x, t): zero for an exact (p_t, v) pair. [B]"""
    x = x.clone().requires_grad_(True)
    log_p = flow.log_prob(x, t)
    (grad_log_p,) = torch.autograd.grad(log_p.sum(), x)
    v = flow.velocity(x, t)
    div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))
    with torch.no_grad():
        dlogp_dt = (flow.log_prob(x, t + dt) - flow.log_prob(x, t - dt)) / (2 * dt)  # central difference
    return (dlogp_dt + div + (v * grad_log_p).sum(1)).detach()


# ---------------------------------------------------------------------------------------------------------
# Gaussian -> Gaussian


def test_gaussian_velocity_equals_half_dsigma_sigma_inverse():
    # v = dm/dt + 1/2 dSigma/dt Sigma^-1 (x - m_t), evaluated with a plain linear solve (an independent path)
    flow = gaussian_flow()
    x = torch.randn(6, 3, dtype=F64, generator=gen(1))
    t = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.9, 1.0], dtype=F64)
    v = flow.velocity(x, t)
    for i, ti in enumerate(t.tolist()):
        d_sigma = -2 * (1 - ti) * torch.diag(flow.std0**2) + 2 * ti * flow.cov1
        expected = flow.mean1 - flow.mean0 + 0.5 * d_sigma @ torch.linalg.solve(flow.cov(ti), x[i] - flow.mean(ti))
        torch.testing.assert_close(v[i], expected, atol=1e-12, rtol=0)


def test_gaussian_flow_map_solves_the_ode_and_transports_covariance():
    flow = gaussian_flow()
    x0 = flow.sample_source(5, gen(2))
    for t in (0.2, 0.6, 0.95):
        h = 1e-6  # d/dt flow_map(x0, 0, t) = v(flow_map(x0, 0, t), t)
        d = (flow.flow_map(x0, 0.0, t + h) - flow.flow_map(x0, 0.0, t - h)) / (2 * h)
        torch.testing.assert_close(d, flow.velocity(flow.flow_map(x0, 0.0, t), t), atol=1e-7, rtol=0)
        # the map is affine: Phi Sigma_0 Phi^T = Sigma_t
        origin = flow.flow_map(flow.mean0[None], 0.0, t)  # [1, D]
        phi = (flow.flow_map(flow.mean0 + torch.eye(3, dtype=F64), 0.0, t) - origin).T  # [D, D]
        torch.testing.assert_close(phi @ flow.cov(0.0) @ phi.T, flow.cov(t), atol=1e-12, rtol=0)
        torch.testing.assert_close(origin[0], flow.mean(t), atol=1e-12, rtol=0)
    # composition and inversion
    mid = flow.flow_map(x0, 0.0, 0.3)
    torch.testing.assert_close(flow.flow_map(mid, 0.3, 1.0), flow.flow_map(x0, 0.0, 1.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(flow.flow_map(flow.flow_map(x0, 0.0, 1.0), 1.0, 0.0), x0, atol=1e-12, rtol=0)


def test_gaussian_log_prob_matches_torch_distribution():
    flow = gaussian_flow()
    x = torch.randn(7, 3, dtype=F64, generator=gen(3)) * 2
    for t in (0.0, 0.4, 1.0):
        mvn = torch.distributions.MultivariateNormal(flow.mean(t), flow.cov(t))
        torch.testing.assert_close(flow.log_prob(x, t), mvn.log_prob(x), atol=1e-12, rtol=0)


def test_gaussian_samplers_have_the_right_moments():
    flow = gaussian_flow()
    x0, x1 = flow.sample_source(40000, gen(4)), flow.sample_target(40000, gen(5))
    torch.testing.assert_close(x0.mean(0), flow.mean0, atol=0.05, rtol=0)
    torch.testing.assert_close(x0.T.cov(), flow.cov(0.0), atol=0.08, rtol=0)
    torch.testing.assert_close(x1.mean(0), flow.mean1, atol=0.05, rtol=0)
    torch.testing.assert_close(x1.T.cov(), flow.cov1, atol=0.05, rtol=0)
    assert torch.equal(flow.sample_target(3, gen(6)), flow.sample_target(3, gen(6)))


# ---------------------------------------------------------------------------------------------------------
# Gaussian mixture


@pytest.mark.parametrize("make", [gaussian_flow, mixture_flow])
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 0.97])
def test_continuity_equation_holds(make, t):
    flow = make()
    x = 2.0 * torch.randn(32, flow.dim, dtype=F64, generator=gen(7))
    assert continuity_residual(flow, x, t).abs().max() < 1e-6


def test_continuity_check_detects_a_wrong_field():
    # the check above can fail: a mixture velocity with prior instead of posterior weights violates it
    flow = mixture_flow()

    class PriorWeighted:
        dim = flow.dim
        log_prob = staticmethod(flow.log_prob)

        @staticmethod
        def velocity(x, t):
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype)
            _, v_k = flow._components(x, t)
            return torch.einsum("k,bkd->bd", flow.weights, v_k)

    x = 2.0 * torch.randn(32, 2, dtype=F64, generator=gen(7))
    assert continuity_residual(PriorWeighted, x, 0.5).abs().max() > 0.1


@pytest.mark.parametrize("t", [0.25, 0.6, 0.9])
def test_mixture_velocity_is_the_conditional_expectation(t):
    # v(x_t) = E[x1 - x0 | x_t] <=> the residual x1 - x0 - v(x_t) is orthogonal to every function of x_t.
    flow = mixture_flow()
    n = 30_000
    x0, x1 = flow.sample_source(n, gen(8)), flow.sample_target(n, gen(9))
    x_t = (1 - t) * x0 + t * x1
    residual = x1 - x0 - flow.velocity(x_t, t)  # [n, 2]
    tests = torch.stack([torch.ones(n, dtype=F64), x_t[:, 0], x_t[:, 1], torch.tanh(x_t).prod(1)], dim=1)  # [n, 4]
    prods = residual[:, :, None] * tests[:, None, :]  # [n, 2, 4]
    z = prods.mean(0) / (prods.std(0) / n**0.5)  # z-scores of the means
    assert z.abs().max() < 4.5
    # ... and the component-agnostic mean velocity (prior weights) is detectably not
    _, v_k = flow._components(x_t, torch.full((n,), t, dtype=F64))
    wrong = x1 - x0 - torch.einsum("k,bkd->bd", flow.weights, v_k)
    prods = wrong[:, :, None] * tests[:, None, :]
    assert (prods.mean(0) / (prods.std(0) / n**0.5)).abs().max() > 10


def test_single_component_mixture_equals_gaussian_flow():
    cov = torch.tensor([[0.7, -0.2], [-0.2, 0.3]], dtype=F64)
    mean = torch.tensor([1.0, -2.0], dtype=F64)
    gauss = GaussianFlow(torch.zeros(2), 1.0, mean, cov)
    mix = GaussianMixtureFlow(mean[None], cov[None], torch.ones(1))
    x = torch.randn(9, 2, dtype=F64, generator=gen(10))
    t = torch.linspace(0, 1, 9, dtype=F64)
    torch.testing.assert_close(mix.velocity(x, t), gauss.velocity(x, t), atol=1e-12, rtol=0)
    torch.testing.assert_close(mix.log_prob(x, t), gauss.log_prob(x, t), atol=1e-12, rtol=0)


def test_mixture_log_prob_at_the_ends():
    flow = mixture_flow()
    x = torch.randn(11, 2, dtype=F64, generator=gen(11)) * 2
    source = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    torch.testing.assert_close(flow.log_prob(x, 0.0), source.log_prob(x), atol=1e-12, rtol=0)
    target = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(flow.weights),
        torch.distributions.MultivariateNormal(flow.means, flow.covs),
    )
    torch.testing.assert_close(flow.log_prob(x, 1.0), target.log_prob(x), atol=1e-12, rtol=0)
    # at t = 0 every point moves towards the prior-weighted mean velocity: v(x, 0) = sum_k w_k mu_k - x
    torch.testing.assert_close(flow.velocity(x, 0.0), flow.target_mean() - x, atol=1e-12, rtol=0)


def test_mixture_sampler_moments_and_ring():
    flow = mixture_flow()
    x = flow.sample_target(40000, gen(12))
    torch.testing.assert_close(x.mean(0), flow.target_mean(), atol=0.05, rtol=0)
    torch.testing.assert_close(x.T.cov(), flow.target_cov(), atol=0.1, rtol=0)
    assert torch.equal(flow.sample_target(5, gen(13)), flow.sample_target(5, gen(13)))
    ring = GaussianMixtureFlow.ring(8, radius=4.0, std=0.5)
    assert ring.means.shape == (8, 2) and torch.allclose(ring.means.norm(dim=1), torch.full((8,), 4.0, dtype=F64))
    torch.testing.assert_close(ring.target_cov(), (8.0 + 0.25) * torch.eye(2, dtype=F64), atol=1e-12, rtol=0)


def test_float32_inputs_give_float32_outputs():
    flow = mixture_flow()
    x = torch.randn(4, 2)
    assert flow.velocity(x, torch.rand(4)).dtype == torch.float32
    assert flow.log_prob(x, 0.5).dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_constructor_arguments():
    eye = torch.eye(2)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixtureFlow(torch.zeros(1, 2), torch.zeros(1, 2, 2), torch.ones(1))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureFlow(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), torch.ones(1))
    with pytest.raises(ValueError, match=r"covs must be \[K, D, D\] with K=2, D=2, got \(1, 2, 2\)"):
        GaussianMixtureFlow(torch.zeros(2, 2), eye[None], torch.ones(2))
    with pytest.raises(ValueError, match=r"weights must be \[K\]"):
        GaussianMixtureFlow(torch.zeros(2, 2), eye.expand(2, 2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"means must be \[K, D\]"):
        GaussianMixtureFlow(torch.zeros(2), eye, torch.ones(1))
    with pytest.raises(ValueError, match="std0 must be"):
        GaussianFlow(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.zeros(2), eye)
    with pytest.raises(ValueError, match=r"cov1 must be \[D, D\]"):
        GaussianFlow(torch.zeros(2), 1.0, torch.zeros(2), torch.eye(3))


def test_bad_call_arguments():
    flow = mixture_flow()
    with pytest.raises(ValueError, match=r"x must be \[B, D\] with D=2, got \(4, 3\)"):
        flow.velocity(torch.zeros(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"t must be a float or \[B\] with B=4, got \(3,\)"):
        flow.log_prob(torch.zeros(4, 2), torch.zeros(3))
