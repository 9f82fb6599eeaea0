"""Property-based checks (hypothesis) of the path algebra and time shifts over random times and schedulers."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wmgen.flow.paths import AffinePath, CondOTScheduler, CosineScheduler, PolynomialScheduler, VPScheduler
from wmgen.flow.schedules import shift_time

SCHEDULERS = st.sampled_from(
    [CondOTScheduler(), PolynomialScheduler(0.5), PolynomialScheduler(3.0), VPScheduler(), CosineScheduler()]
)
TIMES = st.floats(min_value=0.02, max_value=0.98)


@settings(max_examples=60, deadline=None)
@given(sched=SCHEDULERS, t=TIMES, seed=st.integers(0, 2**31 - 1))
def test_every_parameterisation_round_trips(sched, t, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x1 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    tt = torch.full((3,), t, dtype=torch.float64)
    path = AffinePath(sched)
    s = path.sample(x0, x1, tt)
    v = s.dx_t
    torch.testing.assert_close(path.x1_to_velocity(path.velocity_to_x1(v, s.x_t, tt), s.x_t, tt), v)
    torch.testing.assert_close(path.x0_to_velocity(path.velocity_to_x0(v, s.x_t, tt), s.x_t, tt), v)
    torch.testing.assert_close(path.x0_to_x1(path.x1_to_x0(x1, s.x_t, tt), s.x_t, tt), x1)


@settings(max_examples=100, deadline=None)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), shift=st.floats(0.1, 20.0))
def test_shift_is_monotone_and_inverted_by_the_reciprocal_shift(a, b, shift):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    sa, sb = shift_time(ta, shift), shift_time(tb, shift)
    assert 0.0 <= sa.item() <= 1.0
    if a < b:
        assert sa.item() <= sb.item()
    # sigma' = s sigma / (1 + (s - 1) sigma) is a Moebius map whose inverse is the same map with 1 / s
    torch.testing.assert_close(shift_time(sa, 1.0 / shift), ta, atol=1e-12, rtol=0)
