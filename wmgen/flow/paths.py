"""Affine probability paths ``x_t = alpha_t x1 + sigma_t x0`` and conversions between parameterisations.

Convention (DESIGN.md §2, Lipman et al. 2023): t in [0, 1], t = 0 is the source x0 (noise), t = 1 is the
data x1. A scheduler gives (alpha_t, sigma_t) and their time derivatives; the conditional velocity is

    dx_t/dt = d_alpha_t x1 + d_sigma_t x0.                                        (Lipman et al. eq. 20)

A network may predict the velocity v, the clean sample x1 ("x-prediction") or the source sample x0
("epsilon-prediction", as in DDPM/DDIM). Because (x_t, v) is an invertible linear function of (x1, x0)
whenever det = alpha_t d_sigma_t - sigma_t d_alpha_t != 0, any one prediction converts to the others, so
every solver can sample every model. Under CondOT: x1_hat = x_t + (1 - t) v.

diffusers, Wan and MeanFlow use sigma = 1 - t with the velocity noise - data: ``to_diffusers`` /
``from_diffusers`` below are the one place where that conversion happens.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "PolynomialScheduler",
    "VPScheduler",
    "CosineScheduler",
    "SCHEDULERS",
    "PathSample",
    "AffinePath",
    "to_diffusers",
    "from_diffusers",
]


@dataclass(frozen=True)
class SchedulerOutput:
    """Path coefficients at time t, each shaped like t."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor


class Scheduler(ABC):
    """Maps t to (alpha_t, sigma_t) with alpha_0 = 0, sigma_0 = 1 (pure source) and alpha_1 = 1, sigma_1 = 0.

    Example::

        class Linear(Scheduler):
            def __call__(self, t):
                return SchedulerOutput(t, 1 - t, torch.ones_like(t), -torch.ones_like(t))
    """

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput: ...


class CondOTScheduler(Scheduler):
    """Linear / rectified-flow path: alpha_t = t, sigma_t = 1 - t (Lipman et al. eq. 22)."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        return SchedulerOutput(t, 1 - t, torch.ones_like(t), -torch.ones_like(t))


class PolynomialScheduler(Scheduler):
    """alpha_t = t^n, sigma_t = 1 - t^n; n = 1 is CondOT."""

    def __init__(self, n: float = 2.0):
        if not n > 0:
            raise ValueError(f"n must be > 0, got {n}")
        self.n = float(n)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        n = self.n
        d = n * t.clamp_min(0) ** (n - 1)
        return SchedulerOutput(t**n, 1 - t**n, d, -d)


class VPScheduler(Scheduler):
    """Variance-preserving path equivalent to DDPM's linear beta schedule (Song et al. 2021), in flow time.

    With s = 1 - t (diffusion time) and T(s) = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2:
    alpha_t = exp(-T/2), sigma_t = sqrt(1 - exp(-T)). alpha_0 = exp(-T(1)/2) ~ 6.6e-3 is not exactly 0 (as in
    DDPM), so the source is N(0, I) only approximately.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def __call__(self, t: Tensor) -> SchedulerOutput:
        b, B = self.beta_min, self.beta_max
        s = 1 - t
        T = b * s + 0.5 * (B - b) * s**2
        dT_dt = -(b + (B - b) * s)  # dT/ds * ds/dt, ds/dt = -1
        alpha = torch.exp(-0.5 * T)
        sigma = torch.sqrt((1 - torch.exp(-T)).clamp_min(0))
        d_alpha = -0.5 * dT_dt * alpha
        d_sigma = 0.5 * dT_dt * torch.exp(-T) / sigma.clamp_min(1e-12)
        return SchedulerOutput(alpha, sigma, d_alpha, d_sigma)


class CosineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2) (Nichol & Dhariwal 2021, in flow time)."""

    def __call__(self, t: Tensor) -> SchedulerOutput:
        a = 0.5 * math.pi
        return SchedulerOutput(
            torch.sin(a * t), torch.cos(a * t), a * torch.cos(a * t), -a * torch.sin(a * t)
        )


SCHEDULERS: dict[str, type[Scheduler]] = {
    "condot": CondOTScheduler,
    "polynomial": PolynomialScheduler,
    "vp": VPScheduler,
    "cosine": CosineScheduler,
}


@dataclass(frozen=True)
class PathSample:
    """A training sample from the path: x_t and its target velocity dx_t at time t [B]."""

    x0: Tensor  # [B, ...] source
    x1: Tensor  # [B, ...] data
    t: Tensor  # [B]
    x_t: Tensor  # [B, ...]
    dx_t: Tensor  # [B, ...] conditional velocity, the flow-matching target


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """[B] (or scalar) -> [B, 1, ..., 1] broadcastable against ``like`` [B, ...]."""
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


class AffinePath:
    """The path x_t = alpha_t x1 + sigma_t x0 for a scheduler.

    Example::

        path = AffinePath(CondOTScheduler())
        s = path.sample(x0=torch.randn_like(x1), x1=x1, t=torch.rand(len(x1)))
        loss = ((model(s.x_t, s.t) - s.dx_t) ** 2).mean()
    """

    def __init__(self, scheduler: Scheduler | None = None):
        self.scheduler = scheduler if scheduler is not None else CondOTScheduler()

    def _coeffs(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != like.shape[0]):
            raise ValueError(f"t must be a scalar or [B] with B={like.shape[0]}, got {tuple(t.shape)}")
        if torch.any((t < 0) | (t > 1)) or torch.isnan(t).any():
            raise ValueError(f"t must lie in [0, 1], got values in [{t.min().item()}, {t.max().item()}]")
        c = self.scheduler(_expand(t, like))
        return c.alpha_t, c.sigma_t, c.d_alpha_t, c.d_sigma_t

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Draw x_t and the target velocity for source x0 [B, ...], data x1 [B, ...] at times t [B]."""
        if x0.shape != x1.shape:
            raise ValueError(
                f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        a, s, da, ds = self._coeffs(t, x1)
        return PathSample(x0=x0, x1=x1, t=t, x_t=a * x1 + s * x0, dx_t=da * x1 + ds * x0)

    # Conversions. All take x_t [B, ...] and t [B]; each solves the 2x2 system
    #   x_t = a x1 + s x0,   v = da x1 + ds x0
    # for the unknowns it needs. Singular points (e.g. x1 from x0 at t = 0) are the caller's to avoid.

    def velocity_to_x1(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x1_hat from a velocity; CondOT: x_t + (1 - t) v."""
        a, s, da, ds = self._coeffs(t, x_t)
        return (ds * x_t - s * v) / (a * ds - s * da)

    def velocity_to_x0(self, v: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x0_hat (epsilon) from a velocity; CondOT: x_t - t v."""
        a, s, da, ds = self._coeffs(t, x_t)
        return (a * v - da * x_t) / (a * ds - s * da)

    def x1_to_velocity(self, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Velocity from an x1-prediction (singular where sigma_t = 0, i.e. t = 1)."""
        a, s, da, ds = self._coeffs(t, x_t)
        return da * x1 + ds * (x_t - a * x1) / s

    def x0_to_velocity(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Velocity from an epsilon-prediction (singular where alpha_t = 0, i.e. t = 0)."""
        a, s, da, ds = self._coeffs(t, x_t)
        return da * (x_t - s * x0) / a + ds * x0

    def x1_to_x0(self, x1: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - a * x1) / s

    def x0_to_x1(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        a, s, _, _ = self._coeffs(t, x_t)
        return (x_t - s * x0) / a


def to_diffusers(t: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """wmgen (t, v) -> diffusers/Wan (sigma, v'): sigma = 1 - t and v' = noise - data = -v."""
    return 1 - t, (None if v is None else -v)


def from_diffusers(sigma: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """diffusers/Wan (sigma, v') -> wmgen (t, v): t = 1 - sigma and v = data - noise = -v'."""
    return 1 - sigma, (None if v is None else -v)
