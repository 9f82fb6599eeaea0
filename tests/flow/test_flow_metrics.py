"""Sample-set distances: sliced Wasserstein (exact in 1-D, analytic under a shift) and precision/recall."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from wmgen.flow.metrics import precision_recall, sliced_wasserstein, wasserstein_1d


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quantile_w(a: np.ndarray, b: np.ndarray, p: float, grid: int = 200_000) -> float:
    """Brute-force W_p from the definition int_0^1 |F_a^-1(u) - F_b^-1(u)|^p du on a fine grid of u."""
    u = (np.arange(grid) + 0.5) / grid
    qa = np.sort(a)[np.minimum((u * len(a)).astype(int), len(a) - 1)]
    qb = np.sort(b)[np.minimum((u * len(b)).astype(int), len(b) - 1)]
    return float(np.mean(np.abs(qa - qb) ** p) ** (1 / p))


def test_identical_sets_give_zero_and_order_does_not_matter():
    x = torch.randn(500, 2, generator=gen())
    assert sliced_wasserstein(x, x, 64, generator=gen(1)).item() == pytest.approx(0.0, abs=1e-6)
    perm = torch.randperm(500, generator=gen(2))
    assert sliced_wasserstein(x, x[perm], 64, generator=gen(1)).item() == pytest.approx(0.0, abs=1e-6)


def test_symmetric_and_deterministic():
    a = torch.randn(300, 3, generator=gen(1))
    b = torch.rand(200, 3, generator=gen(2))
    ab = sliced_wasserstein(a, b, 32, generator=gen(5))
    assert ab == sliced_wasserstein(b, a, 32, generator=gen(5))
    assert ab == sliced_wasserstein(a, b, 32, generator=gen(5))
    assert ab != sliced_wasserstein(a, b, 32, generator=gen(6))


@pytest.mark.parametrize("dim", [2, 5])
def test_shift_has_the_analytic_value_and_grows(dim):
    # For b = a + delta every 1-D projection is shifted by <theta, delta>, so W2 = |<theta, delta>| exactly
    # and SW2^2 = E_theta <theta, delta>^2 = |delta|^2 / D for theta uniform on the sphere.
    # With P = 2000 directions the Monte-Carlo mean of <theta, u>^2 has a relative std of 1.6% (D = 2) and
    # 2.4% (D = 5); 8% is more than 3 std.
    a = torch.randn(300, dim, generator=gen())
    direction = torch.randn(dim, generator=gen(1))
    direction = direction / direction.norm()
    values = []
    for shift in (0.25, 0.5, 1.0, 2.0):
        value = sliced_wasserstein(a, a + shift * direction, 2000, generator=gen(2)).item()
        assert value == pytest.approx(shift / math.sqrt(dim), rel=0.08)
        values.append(value)
    assert values == sorted(values)


@pytest.mark.parametrize("n, m", [(100, 100), (100, 37), (64, 250)])
def test_one_dimension_matches_exact_w1_and_w2(n, m):
    # In 1-D the only directions are +-1, so SW_p is exactly W_p; compare with scipy (W1) and the
    # quantile-function definition (W2), for equal and unequal sample sizes.
    a = torch.randn(n, generator=gen(1), dtype=torch.float64)
    b = 2 * torch.randn(m, generator=gen(2), dtype=torch.float64) + 1
    w1 = scipy.stats.wasserstein_distance(a.numpy(), b.numpy())
    assert sliced_wasserstein(a[:, None], b[:, None], 3, p=1).item() == pytest.approx(w1, rel=1e-5)
    assert wasserstein_1d(a, b, p=1).item() == pytest.approx(w1, rel=1e-9)
    w2 = quantile_w(a.numpy(), b.numpy(), 2)
    assert sliced_wasserstein(a[:, None], b[:, None], 3, p=2).item() == pytest.approx(w2, rel=1e-3)
    if n == m:  # equal sizes: W2 is the RMS of sorted differences
        direct = ((a.sort().values - b.sort().values) ** 2).mean().sqrt().item()
        assert wasserstein_1d(a, b, p=2).item() == pytest.approx(direct, rel=1e-9)


def test_batched_wasserstein_1d():
    a = torch.randn(4, 50, generator=gen(1))
    b = torch.randn(4, 70, generator=gen(2))
    batched = wasserstein_1d(a, b, p=2)
    assert batched.shape == (4,)
    for i in range(4):
        assert batched[i].item() == pytest.approx(wasserstein_1d(a[i], b[i], p=2).item(), rel=1e-6)


def test_bad_inputs():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"a and b must be \[N, D\] and \[M, D\].*\(10, 3\)"):
        sliced_wasserstein(x, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="n_projections must be an int >= 1"):
        sliced_wasserstein(x, x, 0)
    with pytest.raises(ValueError, match="p must be >= 1"):
        sliced_wasserstein(x, x, 4, p=0.5)
    with pytest.raises(ValueError, match="at least one atom"):
        wasserstein_1d(torch.zeros(0), torch.zeros(3))


def test_precision_recall_separates_realism_from_coverage():
    g = gen(0)
    ring = torch.randn(800, 2, generator=g)
    ring = 3 * ring / ring.norm(dim=1, keepdim=True)  # points on a circle of radius 3
    same = torch.randn(800, 2, generator=g)
    same = 3 * same / same.norm(dim=1, keepdim=True)
    p, r = precision_recall(ring, same)
    assert p > 0.9 and r > 0.9
    # a generator that covers only the right half: realistic (precision high) but half the data missed
    half = same[same[:, 0] > 0]
    p, r = precision_recall(ring, half)
    assert p > 0.9 and 0.4 < r < 0.6
    # a blob at the centre: nothing realistic, nothing covered
    p, r = precision_recall(ring, 0.3 * torch.randn(800, 2, generator=g))
    assert p == 0.0 and r == 0.0
    # chunking does not change the answer
    assert precision_recall(ring, half, chunk=50) == precision_recall(ring, half)


def test_precision_recall_bad_inputs():
    with pytest.raises(ValueError, match=r"real and fake must be \[N, D\] and \[M, D\]"):
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, min\(N, M\) - 1\], got 10"):
        precision_recall(torch.zeros(10, 2), torch.zeros(20, 2), k=10)
