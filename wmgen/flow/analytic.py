"""Closed-form flows for tests and benchmarks: exact velocity, flow map and log-density.

Both use the CondOT path with an independent coupling, ``x_t = (1 - t) x0 + t x1`` with x0 ~ source and
x1 ~ target drawn independently, and the marginal velocity ``v(x, t) = E[x1 - x0 | x_t = x]`` (Lipman et al.
2023, eq. 8; Liu et al. 2023). Every quantity is exact, so solver errors can be measured against them.

- ``GaussianFlow``: N(mean0, diag(std0^2)) -> N(mean1, cov1). Linear field, closed-form flow map.
- ``GaussianMixtureFlow``: N(0, I) -> sum_k w_k N(mu_k, Sigma_k). Exact field and density; the flow map has
  no closed form (solve it with ``integrate(..., method="dopri5")`` at tight tolerance).

Shapes: x [B, D], t [B] (or a float), results [B, D] (velocity, flow map) or [B] (log-density).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["GaussianFlow", "GaussianMixtureFlow"]

_LOG_2PI = math.log(2.0 * math.pi)


def _time(t: float | Tensor, x: Tensor) -> Tensor:
    """t as a [B] tensor with x's dtype and device.

    Times outside [0, 1] are allowed on purpose: the CondOT formulas extend to any real t (all variances stay
    positive), and torchdiffeq's adaptive solvers evaluate a little past their end time before interpolating.
    """
    if isinstance(t, Tensor):
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a float or [B] with B={x.shape[0]}, got {tuple(t.shape)}")
        return t.to(dtype=x.dtype, device=x.device)
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _check_x(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be [B, D] with D={dim}, got {got}")


def _check_spd(name: str, cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues [..., D] and eigenvectors [..., D, D] of a symmetric positive-definite cov."""
    if not torch.allclose(cov, cov.transpose(-1, -2), atol=1e-10, rtol=1e-8):
        raise ValueError(f"{name} must be symmetric")
    lam, vec = torch.linalg.eigh(cov)
    if (lam <= 0).any():
        raise ValueError(f"{name} must be positive definite, got eigenvalues down to {lam.min().item():.3g}")
    return lam, vec


class GaussianFlow:
    """Exact CondOT flow from N(mean0, diag(std0^2)) to N(mean1, cov1).

    Derivation. x_t = (1 - t) x0 + t x1 is Gaussian with mean m_t = (1 - t) mu0 + t mu1 and covariance
    Sigma_t = (1 - t)^2 S0 + t^2 Sigma1 (S0 = diag(std0^2)). For jointly Gaussian (x1 - x0, x_t),
        v(x, t) = E[x1 - x0 | x_t = x] = (mu1 - mu0) + Cov(x1 - x0, x_t) Sigma_t^-1 (x - m_t),
    with Cov(x1 - x0, x_t) = t Sigma1 - (1 - t) S0 = dSigma_t/dt / 2: a linear field.
    Whitening by the source, z = S0^-1/2 (x - m_t), gives Sigma_t^z = (1 - t)^2 I + t^2 C with
    C = S0^-1/2 Sigma1 S0^-1/2 = U diag(lam) U^T. In the eigenbasis u = U^T z every coordinate is independent
    with variance s_i(t)^2 = (1 - t)^2 + t^2 lam_i and obeys du_i/dt = (s_i'/s_i) u_i, so
        v(x, t) = (mu1 - mu0) + S0^1/2 U diag(r(t)) u,   r_i(t) = (t lam_i - (1 - t)) / s_i(t)^2,
        flow map: u_i(t') = u_i(t) * s_i(t') / s_i(t)   (the linear ODE's exact solution),
        log p_t(x) = -1/2 sum_i (u_i^2 / s_i^2 + log s_i^2) - sum_i log std0_i - D/2 log(2 pi).
    Check: Phi(t) = S0^1/2 U diag(s(t)) U^T S0^-1/2 satisfies Phi Sigma_0 Phi^T = Sigma_t.

    Args:
        mean0: source mean [D].
        std0: source standard deviation, a float (isotropic) or [D] (diagonal), > 0.
        mean1: target mean [D].
        cov1: target covariance [D, D], symmetric positive definite.

    Example::

        cov1 = torch.diag(torch.tensor([0.2, 3.0]))
        flow = GaussianFlow(torch.zeros(2), 1.0, torch.tensor([2.0, -1.0]), cov1)
        x0 = flow.sample_source(64)
        x1 = flow.flow_map(x0, 0.0, 1.0)      # exact; compare with integrate(flow.velocity, x0)
    """

    def __init__(self, mean0: Tensor, std0: float | Tensor, mean1: Tensor, cov1: Tensor):
        mean0 = torch.as_tensor(mean0, dtype=torch.float64)
        mean1 = torch.as_tensor(mean1, dtype=torch.float64)
        cov1 = torch.as_tensor(cov1, dtype=torch.float64)
        if mean0.ndim != 1:
            raise ValueError(f"mean0 must be [D], got {tuple(mean0.shape)}")
        dim = mean0.shape[0]
        if mean1.shape != (dim,):
            raise ValueError(f"mean1 must be [D] with D={dim}, got {tuple(mean1.shape)}")
        if cov1.shape != (dim, dim):
            raise ValueError(f"cov1 must be [D, D] with D={dim}, got {tuple(cov1.shape)}")
        std0 = torch.as_tensor(std0, dtype=torch.float64)
        std0 = std0.expand(dim).clone() if std0.ndim == 0 else std0
        if std0.shape != (dim,) or (std0 <= 0).any():
            raise ValueError(f"std0 must be a float or [D] with D={dim}, all > 0, got {std0.tolist()}")
        _check_spd("cov1", cov1)
        self.dim = dim
        self.mean0, self.std0, self.mean1, self.cov1 = mean0, std0, mean1, cov1
        whitened = cov1 / (std0[:, None] * std0[None, :])  # C = S0^-1/2 Sigma1 S0^-1/2
        self.lam, self.basis = _check_spd("whitened cov1", whitened)  # [D], U [D, D]

    # Sigma_t^z eigenvalues s_i(t)^2 = (1 - t)^2 + t^2 lam_i: [B, D]
    def _var(self, t: Tensor, lam: Tensor) -> Tensor:
        return (1 - t)[:, None] ** 2 + t[:, None] ** 2 * lam

    def _to_eigen(self, x: Tensor, t: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        p = {k: getattr(self, k).to(x) for k in ("mean0", "std0", "mean1", "lam", "basis")}
        m_t = (1 - t)[:, None] * p["mean0"] + t[:, None] * p["mean1"]  # [B, D]
        u = torch.einsum("bd,de->be", (x - m_t) / p["std0"], p["basis"])  # [B, D], u = U^T S0^-1/2 (x - m_t)
        return u, p

    def _from_eigen(self, u: Tensor, t: Tensor, p: dict[str, Tensor]) -> Tensor:
        m_t = (1 - t)[:, None] * p["mean0"] + t[:, None] * p["mean1"]
        return m_t + torch.einsum("be,de->bd", u, p["basis"]) * p["std0"]  # [B, D]

    def mean(self, t: float) -> Tensor:
        """Marginal mean m_t [D] (float64)."""
        return (1 - t) * self.mean0 + t * self.mean1

    def cov(self, t: float) -> Tensor:
        """Marginal covariance Sigma_t [D, D] (float64)."""
        return (1 - t) ** 2 * torch.diag(self.std0**2) + t**2 * self.cov1

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Exact marginal velocity v(x, t) [B, D] for x [B, D], t [B] or float."""
        _check_x(x, self.dim)
        t = _time(t, x)
        u, p = self._to_eigen(x, t)
        lam = p["lam"]
        r = (t[:, None] * lam - (1 - t)[:, None]) / self._var(t, lam)  # [B, D]
        return (p["mean1"] - p["mean0"]) + torch.einsum("be,de->bd", r * u, p["basis"]) * p["std0"]

    def flow_map(self, x: Tensor, t_from: float | Tensor, t_to: float | Tensor) -> Tensor:
        """Exact solution of dx/dt = v(x, t) from x at t_from to t_to (either direction): [B, D]."""
        _check_x(x, self.dim)
        t_from, t_to = _time(t_from, x), _time(t_to, x)
        u, p = self._to_eigen(x, t_from)
        ratio = (self._var(t_to, p["lam"]) / self._var(t_from, p["lam"])).sqrt()  # s_i(t_to) / s_i(t_from)
        return self._from_eigen(u * ratio, t_to, p)

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Exact log-density of the marginal p_t at x: [B]."""
        _check_x(x, self.dim)
        t = _time(t, x)
        u, p = self._to_eigen(x, t)
        var = self._var(t, p["lam"])
        quad = (u**2 / var + var.log()).sum(-1)  # [B]
        return -0.5 * quad - p["std0"].log().sum() - 0.5 * self.dim * _LOG_2PI

    def sample_source(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """n samples of N(mean0, diag(std0^2)): [n, D]."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean0 + self.std0 * eps).to(dtype)

    def sample_target(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """n samples of N(mean1, cov1): [n, D]."""
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.cov1)  # [D, D]
        return (self.mean1 + torch.einsum("nd,ed->ne", eps, chol)).to(dtype)


class GaussianMixtureFlow:
    """Exact CondOT flow from N(0, I) to a Gaussian mixture sum_k w_k N(mu_k, Sigma_k).

    Derivation. Given the component k, x1 ~ N(mu_k, Sigma_k) and x0 ~ N(0, I) are independent, so
        x_t | k ~ N(t mu_k, C_k(t)),   C_k(t) = t^2 Sigma_k + (1 - t)^2 I,
    and the Gaussian conditioning formula gives expectations linear in x_t:
        E[x1 | x_t, k] = mu_k + t Sigma_k C_k^-1 (x_t - t mu_k),
        E[x0 | x_t, k] = (1 - t) C_k^-1 (x_t - t mu_k),
        v_k(x, t) = E[x1 - x0 | x_t = x, k] = mu_k + (t Sigma_k - (1 - t) I) C_k^-1 (x - t mu_k).
    The marginal velocity averages them with the posterior over components (law of total expectation):
        v(x, t) = sum_k pi_k(x, t) v_k(x, t),   pi_k = w_k N(x; t mu_k, C_k) / sum_j w_j N(x; t mu_j, C_j),
        log p_t(x) = logsumexp_k (log w_k + log N(x; t mu_k, C_k)).
    With Sigma_k = V_k diag(lam_k) V_k^T every C_k shares Sigma_k's eigenvectors: C_k = V_k diag(c_k) V_k^T
    with c_k = t^2 lam_k + (1 - t)^2, and (t Sigma_k - (1 - t) I) C_k^-1 = V_k diag((t lam_k - (1 - t)) / c_k)
    V_k^T, so no matrix is inverted at run time.

    Args:
        means: component means mu_k [K, D].
        covs: component covariances Sigma_k [K, D, D], symmetric positive definite.
        weights: mixture weights [K], > 0; normalised to sum to 1.

    Example::

        flow = GaussianMixtureFlow.ring(8, radius=4.0, std=0.5)
        x1 = integrate(flow.velocity, flow.sample_source(256), method="dopri5", atol=1e-8, rtol=1e-8)
        flow.log_prob(x1, 1.0)                # exact target log-density [256]
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got {tuple(means.shape)}")
        k, dim = means.shape
        if covs.shape != (k, dim, dim):
            raise ValueError(f"covs must be [K, D, D] with K={k}, D={dim}, got {tuple(covs.shape)}")
        if weights.shape != (k,) or not (weights > 0).all() or not torch.isfinite(weights).all():
            raise ValueError(f"weights must be [K] with K={k}, all > 0, got {weights.tolist()}")
        self.lam, self.basis = _check_spd("covs", covs)  # [K, D], [K, D, D]
        self.means, self.covs = means, covs
        self.weights = weights / weights.sum()
        self.dim, self.n_components = dim, k

    @classmethod
    def ring(cls, k: int = 8, *, radius: float = 4.0, std: float = 0.5) -> GaussianMixtureFlow:
        """k equal isotropic 2-D Gaussians with standard deviation std on a circle of the given radius."""
        angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # [K, 2]
        covs = (std**2) * torch.eye(2, dtype=torch.float64).expand(k, 2, 2).clone()  # [K, 2, 2]
        return cls(means, covs, torch.ones(k, dtype=torch.float64))

    def _components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """log(w_k N(x; t mu_k, C_k)) [B, K] and per-component velocities v_k [B, K, D]."""
        mu, lam, vec, w = (a.to(x) for a in (self.means, self.lam, self.basis, self.weights))
        tt = t[:, None, None]  # [B, 1, 1]
        c = tt**2 * lam + (1 - tt) ** 2  # [B, K, D] eigenvalues of C_k(t)
        y = torch.einsum("kde,bkd->bke", vec, x[:, None, :] - tt * mu)  # [B, K, D] = V_k^T (x - t mu_k)
        log_n = -0.5 * ((y**2 / c).sum(-1) + c.log().sum(-1) + self.dim * _LOG_2PI)  # [B, K]
        r = (tt * lam - (1 - tt)) / c  # [B, K, D]
        v_k = mu + torch.einsum("kde,bke->bkd", vec, r * y)  # [B, K, D]
        return w.log() + log_n, v_k

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Exact marginal velocity v(x, t) [B, D] for x [B, D], t [B] or float."""
        _check_x(x, self.dim)
        log_joint, v_k = self._components(x, _time(t, x))
        post = torch.softmax(log_joint, dim=1)  # [B, K] pi_k(x, t)
        return torch.einsum("bk,bkd->bd", post, v_k)

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Exact log-density of the marginal p_t at x: [B]."""
        _check_x(x, self.dim)
        log_joint, _ = self._components(x, _time(t, x))
        return torch.logsumexp(log_joint, dim=1)

    def target_mean(self) -> Tensor:
        """Mean of the target mixture [D] (float64)."""
        return self.weights @ self.means

    def target_cov(self) -> Tensor:
        """Covariance of the target mixture [D, D] (float64): sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T."""
        m = self.target_mean()
        outer = self.means[:, :, None] * self.means[:, None, :]  # [K, D, D]
        second = torch.einsum("k,kde->de", self.weights, self.covs + outer)
        return second - torch.outer(m, m)

    def sample_source(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """n samples of N(0, I): [n, D]."""
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float64).to(dtype)

    def sample_target(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """n samples of the mixture: [n, D]."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # [n]
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = self.lam[comp].sqrt() * eps  # [n, D] in each component's eigenbasis
        x = self.means[comp] + torch.einsum("nde,ne->nd", self.basis[comp], scaled)
        return x.to(dtype)
