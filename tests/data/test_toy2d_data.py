"""2-D toy datasets: shapes, determinism, documented extents, and each set's defining geometry."""

import math

import pytest
import torch

from wmgen.data import toy2d
from wmgen.data.toy2d import TOY2D, sample


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(TOY2D))
def test_shape_dtype_determinism(name):
    a = sample(name, 500, gen(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, sample(name, 500, gen(1)))  # same seed, same points
    assert not torch.equal(a, sample(name, 500, gen(2)))
    assert sample(name, 0, gen()).shape == (0, 2)


# Documented boxes (module docstring), checked on many points; the Gaussian one is probabilistic.
BOXES = {
    "moons": (3.3, 1.9),
    "8gaussians": (4.0, 4.0),
    "checkerboard": (4.0, 4.0),
    "spirals": (3.8, 3.8),
    "dino": (3.85, 2.95),
}


@pytest.mark.parametrize("name", list(BOXES))
def test_documented_extent(name):
    x = sample(name, 20_000, gen(3))
    bx, by = BOXES[name]
    # 99.9% inside the documented box (noisy sets may put a few points on a 4-sigma tail)
    inside = (x[:, 0].abs() <= bx) & (x[:, 1].abs() <= by)
    assert inside.float().mean() > 0.999, (name, x.abs().max(0).values)
    assert (x.abs() <= 4.5).all()  # nothing leaves the plotting box


def test_gaussian_moments():
    x = sample("gaussian", 50_000, gen())
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=0.02)
    assert torch.allclose(torch.cov(x.T), torch.eye(2), atol=0.03)


def test_moons_lie_on_two_circles_of_radius_two():
    x = sample("moons", 10_000, gen())
    # upper moon: circle about (-1, -0.5), lower moon: circle about (1, 0.5), both radius 2, noise 0.1
    d_up = (torch.linalg.norm(x - torch.tensor([-1.0, -0.5]), dim=1) - 2).abs()
    d_lo = (torch.linalg.norm(x - torch.tensor([1.0, 0.5]), dim=1) - 2).abs()
    assert (torch.minimum(d_up, d_lo) < 0.5).all()
    frac_upper = ((d_up < d_lo) & (x[:, 1] > -0.5)).float().mean()
    assert abs(frac_upper - 0.5) < 0.03


def test_eight_gaussians_equal_clusters():
    x = sample("8gaussians", 16_000, gen())
    angle = torch.arange(8) * (2 * math.pi / 8)
    centres = 2 * math.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    d = torch.cdist(x, centres)  # [N, 8]
    nearest = d.argmin(1)
    counts = torch.bincount(nearest, minlength=8).float() / len(x)
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.015)
    spread = (x - centres[nearest]).std(0)
    assert torch.allclose(spread, torch.full((2,), 0.35), atol=0.03)


def test_checkerboard_only_dark_squares():
    x = sample("checkerboard", 10_000, gen())
    assert (x.abs() <= 4).all()
    cell = torch.floor((x + 4) / 2).long()  # [N, 2] column, row in 0..3
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # dark squares: equal parity
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16).float() / len(x)
    dark = counts[counts > 0]
    assert len(dark) == 8 and torch.allclose(dark, torch.full((8,), 1 / 8), atol=0.015)


def test_spirals_are_two_point_symmetric_arms():
    x = sample("spirals", 20_000, gen())
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=0.05)
    # radius grows with the unwrapped angle: r / theta is the arm's constant 3.4 / (3 pi) away from the centre
    r = torch.linalg.norm(x, dim=1)
    assert r.max() < 3.4 + 0.5 and (r > 3.0).any()
    # the set equals its point reflection (second arm = -first arm): SW-style check on a few directions
    for phi in torch.linspace(0, math.pi, 7):
        u = torch.stack([torch.cos(phi), torch.sin(phi)])
        p, q = (x @ u).sort().values, (-x @ u).sort().values
        assert (p - q).abs().mean() < 0.05


def test_dino_is_an_outline_with_four_legs():
    x = sample("dino", 40_000, gen())
    # every point lies within noise of the outline (or the eye)
    verts = (torch.tensor(toy2d._DINO_OUTLINE) - torch.tensor(toy2d._DINO_CENTRE)) * toy2d._DINO_SCALE
    a, b = verts[:-1], verts[1:]
    ab = b - a
    w = ((x[:, None] - a[None]) * ab[None]).sum(-1) / (ab**2).sum(-1)[None]
    proj = a[None] + w.clamp(0, 1)[..., None] * ab[None]  # [N, V - 1, 2] closest point per segment
    d_outline = torch.linalg.norm(x[:, None] - proj, dim=-1).min(1).values
    (ex, ey), er = toy2d._DINO_EYE
    eye = (torch.tensor([ex, ey]) - torch.tensor(toy2d._DINO_CENTRE)) * toy2d._DINO_SCALE
    d_eye = (torch.linalg.norm(x - eye, dim=1) - er * toy2d._DINO_SCALE).abs()
    assert (torch.minimum(d_outline, d_eye) < 0.3).all()
    assert ((d_eye < 0.15) & (d_outline > 0.2)).any()  # the eye is there
    # four legs: at foot level the occupied x-bins form exactly 4 runs
    feet = x[x[:, 1] < -2.2, 0]
    hist = torch.histc(feet, bins=60, min=-3.0, max=3.0)
    occupied = (hist > 0.05 * hist.max()).int()
    runs = int(occupied[0]) + int(((occupied[1:] - occupied[:-1]) == 1).sum())
    assert runs == 4
    # the head is the highest part and lies right of the body: it faces right
    assert x[x[:, 1].argmax(), 0] > 2.0


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="name must be one of .*moons.*dino.*got 'swiss'"):
        sample("swiss", 10)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        sample("moons", -1)
    with pytest.raises(ValueError, match="n must be an int"):
        sample("moons", 2.5)
