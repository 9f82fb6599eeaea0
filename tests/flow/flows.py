"""Closed-form flows shared by the flow tests (solvers, analytic fields, likelihood)."""

import torch

from wmgen.flow.analytic import GaussianFlow, GaussianMixtureFlow

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_flow() -> GaussianFlow:
    """N(mean0, diag std0^2) -> N(mean1, cov1) in 3-D with a correlated target covariance."""
    cov1 = torch.tensor([[0.6, 0.2, 0.0], [0.2, 1.5, -0.3], [0.0, -0.3, 0.25]], dtype=F64)
    return GaussianFlow(
        torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 0.5, 2.0]), torch.tensor([2.0, 1.0, -1.0]), cov1
    )


def mixture_flow() -> GaussianMixtureFlow:
    """N(0, I) -> a three-component 2-D Gaussian mixture with unequal weights and one full covariance."""
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    covs = torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.4]]), 0.8 * torch.eye(2)])
    return GaussianMixtureFlow(means, covs, torch.tensor([0.5, 0.3, 0.2]))
