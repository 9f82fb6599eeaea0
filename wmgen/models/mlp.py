"""A small MLP velocity field v(x, t) for low-dimensional flows (2-D toys, tests, point features).

Layout: time embedding -> input projection -> residual SiLU blocks, each told the time -> zero-initialised
output head. The time enters every block (as in DiT's adaLN, here as a simple additive bias) because a
velocity field changes sharply with t near the data end and a single concatenation at the input makes the
network work harder to carry t through depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalTimeEmbedding", "VelocityMLP", "VelocityMLPConfig"]


class SinusoidalTimeEmbedding(nn.Module):
    """Fixed sinusoidal features of t in [0, 1] (Vaswani et al. 2017; DDPM's timestep embedding).

    Frequencies are geometric between 1 and ``max_freq`` (in radians per unit time): the lowest resolves
    the whole interval, the highest resolves changes over about 1 / max_freq.
    """

    def __init__(self, dim: int, max_freq: float = 100.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {dim}")
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2))  # [dim / 2]
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t [B] -> [B, dim]."""
        arg = t.float()[:, None] * self.freqs[None, :]  # [B, dim / 2]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)  # [B, dim]


class _Block(nn.Module):
    """Pre-norm residual MLP block with an additive time bias: h + W2 silu(W1 norm(h) + c(t))."""

    def __init__(self, hidden: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(cond, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(self.norm(h)) + self.time(c)))


@dataclass(frozen=True)
class VelocityMLPConfig:
    """Sizes of a ``VelocityMLP``."""

    dim: int = field(default=2, metadata={"range": (1, None)})  # data dimension D
    hidden: int = field(default=256, metadata={"range": (1, None)})  # width of the hidden layers
    depth: int = field(default=3, metadata={"range": (1, None)})  # number of residual blocks
    time_embed: int = field(default=64, metadata={"range": (2, None)})  # sinusoidal features of t (even)
    x_octaves: int = field(default=0, metadata={"range": (0, 16)})  # Fourier features of x; 0 = raw x only


class VelocityMLP(nn.Module):
    """MLP velocity field v_theta(x, t) for flow matching on R^D.

    Example::

        model = VelocityMLP(dim=2, hidden=128, depth=3)
        v = model(torch.randn(16, 2), torch.rand(16))  # [16, 2]
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        time_embed: int = 64,
        x_octaves: int = 0,
        *,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        checks = (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1), ("x_octaves", x_octaves, 0))
        for name, value, lo in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        self.config = VelocityMLPConfig(
            dim=dim, hidden=hidden, depth=depth, time_embed=time_embed, x_octaves=x_octaves
        )
        self.embed = SinusoidalTimeEmbedding(time_embed)
        self.cond = nn.Sequential(nn.Linear(time_embed, hidden), nn.SiLU())
        # Fourier features of x (Tancik et al. 2020): sin/cos(2^k pi x / 4), k < x_octaves, periods from 8
        # (the width of the [-4, 4] data box) down; they let a small MLP resolve thin structures.
        self.register_buffer("x_freqs", (math.pi / 4) * 2.0 ** torch.arange(x_octaves), persistent=False)
        self.inp = nn.Linear(dim * (1 + 2 * x_octaves) + time_embed, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default Linear init drawn from ``generator`` (reproducible without global seeding)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # nn.Linear's own scheme: W ~ U(+-1/sqrt(fan_in)) via kaiming_uniform(a=sqrt(5)), same for b.
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        # Zero-initialised head: the untrained field is v = 0 (identity flow), a calm starting point.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity at points x [B, D] and times t [B] (or a scalar) -> [B, D]."""
        d = self.config.dim
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"x must be [B, {d}], got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be [B] with B={x.shape[0]} or a scalar, got {tuple(t.shape)}")
        # 1. time embedding  2. input projection + residual blocks  3. output head
        emb = self.embed(t).to(x.dtype)  # [B, E]
        c = self.cond(emb)  # [B, hidden]
        feats = [x]
        if self.config.x_octaves:
            arg = (x[:, :, None] * self.x_freqs).flatten(1)  # [B, D * octaves]
            feats += [torch.sin(arg), torch.cos(arg)]
        h = self.inp(torch.cat([*feats, emb], dim=-1))  # [B, hidden]
        for block in self.blocks:
            h = block(h, c)
        return self.out(nn.functional.silu(self.norm(h)))  # [B, D]
