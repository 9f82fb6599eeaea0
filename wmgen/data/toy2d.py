"""Two-dimensional toy distributions for flow-matching experiments and pictures.

Every dataset is a sampler ``fn(n, generator) -> [N, 2]`` float32 on the CPU, registered by name in
``TOY2D``; ``sample(name, n, generator)`` is the front door. All sets are scaled to lie (almost entirely)
inside the box [-4, 4]^2, with unit-ish spread, so that one plotting box and one network fit all of them
and a flow from one set to another has comparable distances to cover:

- ``gaussian``: N(0, I); 99.8% of points inside [-3.3, 3.3]^2.
- ``moons``: two interleaved half circles of radius 2, noise std 0.1; x in [-3.3, 3.3], y in [-1.9, 1.9].
- ``8gaussians``: 8 equal Gaussians (std 0.35) on a circle of radius 2.83; within [-4, 4]^2 at 3 std.
- ``checkerboard``: uniform on the 8 dark squares (side 2) of a 4 x 4 board; exactly [-4, 4]^2.
- ``spirals``: two interleaved Archimedean arms (1.5 turns each), noise std 0.1; about [-3.6, 3.6]^2.
- ``dino``: outline of a long-necked dinosaur (head with an eye, neck, body, four legs, tail), uniform in
  arc length, noise std 0.05; x in [-3.8, 3.8], y in [-2.8, 2.9].

The moons, 8 Gaussians, checkerboard and spirals follow the shapes popularised by FFJORD (Grathwohl et al.
2019) and the flow-matching literature; the constants here are our own choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["TOY2D", "sample", "gaussian", "moons", "eight_gaussians", "checkerboard", "spirals", "dino"]


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def _randn(*shape: int, generator: torch.Generator | None) -> Tensor:
    return torch.randn(*shape, generator=generator)


def gaussian(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal N(0, I) in 2-D; [N, 2]."""
    return _randn(n, 2, generator=generator)


def moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles (upper and lower moon, equal mass), centred and scaled by 2; [N, 2]."""
    theta = math.pi * _rand(n, generator)  # [N] position along each half circle
    upper = _rand(n, generator) < 0.5  # [N] which moon
    x = torch.where(upper, torch.cos(theta), 1.0 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=-1) * 2.0  # [N, 2] centred at the origin
    return pts + 0.1 * _randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Mixture of 8 equal-weight Gaussians (std 0.35) at the vertices of an octagon of radius 2.83; [N, 2]."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.float() * (2 * math.pi / 8)
    centres = 2.0 * math.sqrt(2.0) * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)  # [N, 2]
    return centres + 0.35 * _randn(n, 2, generator=generator)


def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the 8 dark squares (side 2) of a 4 x 4 checkerboard covering [-4, 4]^2; [N, 2]."""
    # Pick a column (uniform), then one of the two dark rows of that column: row parity = column parity.
    col = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + (col % 2)
    cell = torch.stack([col, row], dim=-1).float()  # [N, 2] lower-left corner in cell units
    return 2.0 * (cell + torch.rand(n, 2, generator=generator)) - 4.0


def spirals(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved Archimedean spiral arms (r proportional to angle, 1.5 turns each); [N, 2].

    The angle is drawn as sqrt(u) * 3 pi so that the density along an arm is uniform in arc length
    (arc length of r = a theta grows like theta^2).
    """
    theta = torch.sqrt(_rand(n, generator)) * 3 * math.pi  # [N]
    arm = torch.stack([-torch.cos(theta), torch.sin(theta)], dim=-1) * theta[:, None]  # [N, 2], |r| <= 3 pi
    sign = torch.where(_rand(n, generator) < 0.5, -1.0, 1.0)[:, None]  # second arm = point reflection
    return sign * arm / (3 * math.pi / 3.4) + 0.1 * _randn(n, 2, generator=generator)


# A long-necked dinosaur (facing right) drawn as one closed outline plus an eye, in its own units, before
# centring and scaling. Walk: tail tip -> back -> neck -> head -> throat -> chest -> 4 legs -> belly -> tail.
_DINO_OUTLINE = (
    (-4.0, 0.35), (-3.2, 0.75), (-2.4, 1.25), (-1.6, 1.8),  # tail
    (-0.8, 2.15), (0.0, 2.25), (0.7, 2.05),  # back
    (1.25, 2.05), (1.65, 2.45), (1.9, 2.95), (2.1, 3.4), (2.3, 3.7),  # back of the neck
    (2.55, 3.95), (2.95, 4.05), (3.35, 3.95), (3.6, 3.75), (3.5, 3.55), (3.1, 3.45), (2.75, 3.35),  # head
    (2.6, 3.0), (2.4, 2.45), (2.15, 1.85), (1.9, 1.3), (1.75, 0.8),  # throat and chest
    (1.8, 0.2), (1.85, -1.5), (1.3, -1.5), (1.25, -0.2),  # front leg (near)
    (0.9, -0.2), (0.9, -1.35), (0.45, -1.35), (0.4, -0.1),  # front leg (far)
    (0.0, -0.25), (-0.5, -0.2),  # belly
    (-0.55, -1.5), (-1.1, -1.5), (-1.1, -0.15),  # hind leg (near)
    (-1.45, -0.15), (-1.5, -1.35), (-2.0, -1.35), (-2.1, 0.2),  # hind leg (far)
    (-2.8, 0.25), (-4.0, 0.35),  # underside of the tail, closing the loop
)
_DINO_EYE = ((2.95, 3.78), 0.09)  # centre, radius
_DINO_CENTRE, _DINO_SCALE = (-0.2, 1.25), 1.0 / 1.05  # maps the outline to [-3.62, 3.62] x [-2.62, 2.67]


def dino(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Outline of a long-necked dinosaur (head with an eye, neck, body, 4 legs, tail), noise 0.05; [N, 2].

    Points are uniform in arc length over the outline polyline and the eye circle, so the density of the
    picture is even; the eye gets its share by its perimeter (about 1.5 % of the points).
    """
    verts = torch.tensor(_DINO_OUTLINE, dtype=torch.float32)  # [V, 2], closed (first == last)
    seg = verts[1:] - verts[:-1]  # [V - 1, 2]
    seg_len = seg.norm(dim=-1)  # [V - 1]
    (ex, ey), er = _DINO_EYE
    eye_len = 2 * math.pi * er
    total = seg_len.sum().item() + eye_len
    # Position along the concatenated curve (outline first, then eye), uniform in arc length.
    s = _rand(n, generator) * total  # [N]
    on_eye = s >= seg_len.sum()
    cum = torch.cumsum(seg_len, 0)  # [V - 1]
    idx = torch.searchsorted(cum, s.clamp_max(cum[-1].item() - 1e-6), right=True).clamp_max(len(seg) - 1)
    start = cum[idx] - seg_len[idx]
    frac = ((s - start) / seg_len[idx]).clamp(0, 1)[:, None]
    pts = verts[idx] + frac * seg[idx]  # [N, 2] on the outline
    phi = (s - cum[-1]) / er  # angle on the eye
    eye = torch.stack([ex + er * torch.cos(phi), ey + er * torch.sin(phi)], dim=-1)  # [N, 2]
    pts = torch.where(on_eye[:, None], eye, pts)
    pts = (pts - torch.tensor(_DINO_CENTRE)) * _DINO_SCALE
    return pts + 0.05 * _randn(n, 2, generator=generator)


Sampler = Callable[[int, "torch.Generator | None"], Tensor]

TOY2D: dict[str, Sampler] = {
    "gaussian": gaussian,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "spirals": spirals,
    "dino": dino,
}


def sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points from the toy distribution ``name``.

    Args:
        name: one of ``TOY2D`` (gaussian, moons, 8gaussians, checkerboard, spirals, dino).
        n: number of points, >= 0.
        generator: CPU random generator; the same generator state gives the same points.
    Returns:
        [N, 2] float32 on the CPU.
    """
    if name not in TOY2D:
        raise ValueError(f"name must be one of {list(TOY2D)}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    out = TOY2D[name](n, generator)
    return out.to(torch.float32)  # [N, 2]
