"""Time samplers and sampling grids."""

import pytest
import torch

from wmgen.flow.schedules import (
    TIME_SAMPLERS,
    GridTime,
    LogitNormalTime,
    ShiftedTime,
    UniformTime,
    make_time_sampler,
    shift_time,
    time_grid,
)


def test_shift_matches_sd3_formula_and_identity():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(shift_time(t, 1.0), t)
    sigma = 1 - t
    expected = 1 - 3 * sigma / (1 + 2 * sigma)
    torch.testing.assert_close(shift_time(t, 3.0), expected)
    # shift > 1 moves every interior time towards the noise end and keeps the endpoints
    s = shift_time(t, 5.0)
    assert s[0] == 0 and s[-1] == 1 and torch.all(s[1:-1] < t[1:-1])


def test_time_grid_forward_reverse_and_window():
    g = time_grid(4)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(time_grid(4, reverse=True), g.flip(0))
    w = time_grid(2, t_start=0.5, t_end=1.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.75, 1.0]))
    shifted = time_grid(8, shift=3.0)
    assert torch.all(shifted[1:] > shifted[:-1])


@pytest.mark.parametrize(
    "sampler",
    [UniformTime(), LogitNormalTime(0.0, 1.0), ShiftedTime(3.0), GridTime(4)],
    ids=lambda s: type(s).__name__,
)
def test_samplers_are_deterministic_and_in_range(sampler):
    a = sampler.sample(1000, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(1000, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1000,)
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_sampler_statistics():
    n = 200_000
    g = torch.Generator().manual_seed(0)
    assert abs(UniformTime().sample(n, generator=g).mean() - 0.5) < 0.01
    ln = LogitNormalTime(mean=1.0, std=0.5).sample(n, generator=g)
    assert abs(torch.logit(ln).mean() - 1.0) < 0.01 and abs(torch.logit(ln).std() - 0.5) < 0.01
    sh = ShiftedTime(3.0).sample(n, generator=g)
    assert sh.mean() < 0.4  # shifted towards noise: E[t] = 1 - E[3s/(1+2s)] ~ 0.32
    grid = GridTime(4).sample(n, generator=g)
    assert set(torch.unique(grid).tolist()) == {0.0, 0.25, 0.5, 0.75}
    assert set(torch.unique(GridTime(4, include_end=True).sample(n, generator=g)).tolist()) == {
        0,
        0.25,
        0.5,
        0.75,
        1,
    }


def test_registry_and_bad_inputs():
    assert set(TIME_SAMPLERS) == {"uniform", "logit_normal", "shifted", "grid"}
    assert isinstance(make_time_sampler("logit_normal", mean=-0.5), LogitNormalTime)
    with pytest.raises(ValueError, match="one of"):
        make_time_sampler("beta")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        time_grid(0)
    with pytest.raises(ValueError, match="t_start"):
        time_grid(4, t_start=0.8, t_end=0.2)
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_time(torch.tensor([0.5]), 0.0)
    with pytest.raises(ValueError, match="k must be"):
        GridTime(0)
