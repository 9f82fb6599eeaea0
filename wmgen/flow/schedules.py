"""Time: samplers for training and grids for sampling.

Training draws t [B] from a ``TimeSampler``; sampling integrates over a monotone ``time_grid`` [S + 1].
Shifting (SD3, Wan) moves time towards the noise end, where a high-resolution sample needs more steps:
with sigma = 1 - t, sigma' = s sigma / (1 + (s - 1) sigma)  (Esser et al. 2024, eq. 23).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "shift_time",
    "time_grid",
    "TimeSampler",
    "UniformTime",
    "LogitNormalTime",
    "ShiftedTime",
    "GridTime",
    "TIME_SAMPLERS",
    "make_time_sampler",
]


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Shift times towards the source: shift > 1 spends more of [0, 1] near t = 0 (noise); 1 is identity."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    # 1 - s sigma / (1 + (s - 1) sigma) rewritten as t / (t + s (1 - t)): exact at both ends (the direct
    # form rounds to -2e-16 at t = 0 for s < 1).
    return t / (t + shift * (1 - t))


def time_grid(
    steps: int,
    *,
    shift: float = 1.0,
    reverse: bool = False,
    t_start: float = 0.0,
    t_end: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform grid of ``steps`` intervals over [t_start, t_end], optionally shifted; [steps + 1].

    ``reverse=True`` returns the grid from t_end down to t_start (data -> noise, for inversion).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not 0.0 <= t_start < t_end <= 1.0:
        raise ValueError(f"need 0 <= t_start < t_end <= 1, got t_start={t_start}, t_end={t_end}")
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    if shift != 1.0:
        grid = shift_time(grid, shift)
    grid = grid.to(dtype=dtype, device=device)
    return grid.flip(0) if reverse else grid


class TimeSampler(ABC):
    """Draws training times t [n] in [0, 1].

    Example::

        t = LogitNormalTime(mean=0.0, std=1.0).sample(64, generator=g)
    """

    @abstractmethod
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor: ...


class UniformTime(TimeSampler):
    """t ~ U[0, 1] (Lipman et al. 2023)."""

    def sample(self, n, *, generator=None, device=None):
        return torch.rand(n, generator=generator, device=device)


class LogitNormalTime(TimeSampler):
    """t = sigmoid(u), u ~ N(mean, std^2): concentrates training on mid times (SD3, Esser et al. 2024)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean, self.std = float(mean), float(std)

    def sample(self, n, *, generator=None, device=None):
        u = torch.randn(n, generator=generator, device=device) * self.std + self.mean
        return torch.sigmoid(u)


class ShiftedTime(TimeSampler):
    """Uniform (or another sampler's) times passed through ``shift_time`` (Wan/SD3 shift)."""

    def __init__(self, shift: float = 3.0, base: TimeSampler | None = None):
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.base = base if base is not None else UniformTime()

    def sample(self, n, *, generator=None, device=None):
        return shift_time(self.base.sample(n, generator=generator, device=device), self.shift)


class GridTime(TimeSampler):
    """t drawn uniformly from the fixed grid {0, 1/K, ..., 1}: train only where a K-step sampler evaluates."""

    def __init__(self, k: int = 8, include_end: bool = False):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.k, self.include_end = k, include_end

    def sample(self, n, *, generator=None, device=None):
        # t = 1 is pure data: its velocity target is still defined, but a sampler never evaluates there.
        count = self.k + 1 if self.include_end else self.k
        idx = torch.randint(0, count, (n,), generator=generator, device=device)
        return idx.float() / self.k


TIME_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTime,
    "logit_normal": LogitNormalTime,
    "shifted": ShiftedTime,
    "grid": GridTime,
}


def make_time_sampler(name: str, **kwargs) -> TimeSampler:
    """Build a sampler by name: ``make_time_sampler("logit_normal", mean=-0.5)``."""
    if name not in TIME_SAMPLERS:
        raise ValueError(f"time sampler must be one of {list(TIME_SAMPLERS)}, got {name!r}")
    return TIME_SAMPLERS[name](**kwargs)
