"""Guidance wrappers: CFG identities, schedules, and gradient guidance on an analytic Gaussian toy.

The toy for gradient guidance: source N(0, I), data N(mu, I) in 2-D, coupled by the optimal-transport map
x1 = x0 + mu, so the velocity is the constant v = mu and the unguided solve ends exactly at x0 + mu. Under
CondOT x1_hat = x_t + (1 - t) mu. With cost ||x1_hat - target||^2 (gradient 2 (x1_hat - target)) and
lambda = 1, the guided field v' = mu - 2 s (x1_hat - target) gives, for e = x1_hat - target,
de/dt = dx/dt - mu = -2 s e, so e(1) = e(0) exp(-2 s): the final cost falls as exp(-4 s), strictly in s.
"""

import gc
import math
import weakref

import pytest
import torch
from torch import nn

from wmgen.flow.guidance import (
    SCHEDULES,
    Constant,
    CosineDecay,
    DynamicCFG,
    GradientGuidance,
    Interval,
    Linear,
    batched_cfg,
    cfg,
    guide,
    make_schedule,
    multi_cfg,
)
from wmgen.flow.paths import AffinePath, PolynomialScheduler
from wmgen.flow.solvers import integrate

MU = torch.tensor([2.0, -1.0], dtype=torch.float64)
TARGET = torch.tensor([-1.0, 3.0], dtype=torch.float64)


def toy_velocity(x, t):
    return MU.to(x.dtype).expand_as(x).clone()


def sq_cost(x1_hat):
    return ((x1_hat - TARGET.to(x1_hat.dtype)) ** 2).sum(dim=1)  # [B]


def noise(b=64, d=2, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Two distinct, x- and t-dependent branches for the CFG identities.
def v_c(x, t):
    return torch.sin(3 * x) + t[:, None]


def v_u(x, t):
    return 0.3 * x - 2 * t[:, None] ** 2


def v_n(x, t):
    return torch.cos(x) - 0.5


def xt(b=5, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.rand(b, generator=g)


# ---- schedules -------------------------------------------------------------------------------------------


def test_constant_linear_and_cosine_decay_values():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.equal(Constant(0.7)(t), torch.full((4,), 0.7))
    torch.testing.assert_close(Linear()(t), 1 - t)  # Feng et al.'s lambda = 1 - t is the default
    torch.testing.assert_close(Linear(2.0, 4.0)(t), torch.tensor([2.0, 2.5, 3.0, 4.0]))
    # Ramp only over [0.25, 0.75], constant outside.
    ramp = Linear(0.0, 1.0, t_start=0.25, t_end=0.75)(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(ramp, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    torch.testing.assert_close(CosineDecay()(t), torch.cos(math.pi * t / 2))
    assert CosineDecay()(torch.tensor([1.0])).abs().item() < 1e-7


def test_dynamic_cfg_endpoints_midpoint_and_cogvideox_mapping():
    s = DynamicCFG()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    lam = s(t)
    assert lam[0].item() == 1.0 and lam[2].item() == 0.0  # full weight at the noise end, neutral at the data
    assert lam[1].item() == pytest.approx((1 - math.cos(math.pi * 0.5**5)) / 2, abs=1e-15)
    dense = s(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert torch.all(dense.diff() <= 0)  # monotone decay
    # CogVideoX at step i of N: w_i = 1 + g (1 - cos(pi ((N - i) / N)^5)) / 2; ours with scale = 1 + g at
    # t_i = i / N must give the same CFG weight. Read it off the velocity with v_cond = 1, v_uncond = 0.
    g, n = 6.0, 50
    guided = cfg(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x), 1 + g, DynamicCFG())
    ti = torch.arange(n, dtype=torch.float64) / n
    w_ours = guided(torch.zeros(n, 1, dtype=torch.float64), ti)[:, 0]
    w_cog = [1 + g * (1 - math.cos(math.pi * ((n - i) / n) ** 5)) / 2 for i in range(n)]
    torch.testing.assert_close(w_ours, torch.tensor(w_cog, dtype=torch.float64), rtol=0, atol=1e-12)
    assert w_ours[0].item() == pytest.approx(1 + g) and w_ours[-1].item() == pytest.approx(1.0, abs=1e-3)


def test_interval_edges_and_composition():
    t = torch.tensor([0.0, 0.19, 0.2, 0.5, 0.6, 0.61, 1.0], dtype=torch.float64)
    expected = torch.tensor([0, 0, 1, 1, 1, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(Interval(0.2, 0.6)(t), expected)
    inner = DynamicCFG()
    composed = Interval(0.2, 0.6, inner)(t)
    expected = torch.where((t >= 0.2) & (t <= 0.6), inner(t), torch.zeros_like(t))
    assert torch.equal(composed, expected)
    assert composed[2] == inner(t)[2] and composed[4] == inner(t)[4]  # both edges are inside
    # nested intervals intersect
    torch.testing.assert_close(Interval(0.0, 0.5, Interval(0.2, 1.0))(t), Interval(0.2, 0.5)(t))


def test_registry_and_make_schedule():
    assert set(SCHEDULES) == {"constant", "linear", "cosine_decay", "dynamic_cfg", "interval"}
    assert make_schedule("interval", t_lo=0.1, t_hi=0.3) == Interval(0.1, 0.3)
    with pytest.raises(ValueError, match=r"one of \['constant', 'linear'.*'dynamic_cfg'.*got 'cosin'"):
        make_schedule("cosin")
    with pytest.raises(ValueError, match="must be one of"):
        cfg(v_c, v_u, 2.0, schedule="nope")
    # a schedule named by string inside cfg is the same as the object
    x, t = xt()
    assert torch.equal(cfg(v_c, v_u, 4.0, "dynamic_cfg")(x, t), cfg(v_c, v_u, 4.0, DynamicCFG())(x, t))


# ---- classifier-free guidance ----------------------------------------------------------------------------


def test_cfg_scale_one_is_conditional_and_zero_is_unconditional_exactly():
    x, t = xt()
    assert torch.equal(cfg(v_c, v_u, 1.0)(x, t), v_c(x, t))
    assert torch.equal(cfg(v_c, v_u, 0.0)(x, t), v_u(x, t))
    # a schedule at its neutral value gives the conditional model exactly too
    assert torch.equal(cfg(v_c, v_u, 7.5, Interval(0.9, 1.0))(x, t * 0.5), v_c(x, t * 0.5))


def test_cfg_formula_per_sample_scale_and_schedule():
    x, t = xt()
    w = 3.5
    torch.testing.assert_close(cfg(v_c, v_u, w)(x, t), v_u(x, t) + w * (v_c(x, t) - v_u(x, t)))
    # one scale per sample = the rows of separate scalar calls
    scales = torch.tensor([0.0, 1.0, 2.0, 4.0, 8.0])
    batch = cfg(v_c, v_u, scales)(x, t)
    for i, s in enumerate(scales.tolist()):
        torch.testing.assert_close(batch[i], cfg(v_c, v_u, s)(x, t)[i])
    # with a schedule w(t) = 1 + lambda(t) (scale - 1)
    lam = CosineDecay()(t)[:, None]
    expected = v_u(x, t) + (1 + lam * (w - 1)) * (v_c(x, t) - v_u(x, t))
    torch.testing.assert_close(cfg(v_c, v_u, w, CosineDecay())(x, t), expected)


def test_negative_prompt_formulas():
    x, t = xt()
    w = 4.0
    # the usual negative prompt: pass its velocity as v_uncond
    torch.testing.assert_close(cfg(v_c, v_n, w)(x, t), v_n(x, t) + w * (v_c(x, t) - v_n(x, t)))
    # explicit negative beside a null condition
    w_neg = 1.5
    expected = v_u(x, t) + w * (v_c(x, t) - v_u(x, t)) - w_neg * (v_n(x, t) - v_u(x, t))
    torch.testing.assert_close(cfg(v_c, v_u, w, v_negative=v_n, negative_scale=w_neg)(x, t), expected)
    # negative_scale 0 is plain CFG exactly; negative_scale = w - 1 cancels v_uncond (usual negative prompt)
    assert torch.equal(cfg(v_c, v_u, w, v_negative=v_n, negative_scale=0.0)(x, t), cfg(v_c, v_u, w)(x, t))
    usual = cfg(v_c, v_u, w, v_negative=v_n, negative_scale=w - 1)(x, t)
    torch.testing.assert_close(usual, cfg(v_c, v_n, w)(x, t))
    # outside an interval both weights are neutral: the conditional velocity exactly
    sched = Interval(0.0, 0.1)
    t_out = torch.full_like(t, 0.5)
    assert torch.equal(cfg(v_c, v_u, w, sched, v_negative=v_n, negative_scale=w_neg)(x, t_out), v_c(x, t_out))
    with pytest.raises(ValueError, match="v_negative and negative_scale"):
        cfg(v_c, v_u, w, v_negative=v_n)


def test_multi_cfg_one_condition_is_cfg_and_two_compose():
    x, t = xt()
    for sched in (None, DynamicCFG()):
        assert torch.equal(multi_cfg(v_u, [(v_c, 3.0)], sched)(x, t), cfg(v_c, v_u, 3.0, sched)(x, t))
    expected = v_u(x, t) + 3.0 * (v_c(x, t) - v_u(x, t)) + 2.0 * (v_n(x, t) - v_u(x, t))
    torch.testing.assert_close(multi_cfg(v_u, [(v_c, 3.0), (v_n, 2.0)])(x, t), expected)
    # per-condition schedule: outside its interval the second condition falls back to weight 1
    t_late = torch.full_like(t, 0.9)
    got = multi_cfg(v_u, [(v_c, 3.0), (v_n, 2.0, Interval(0.0, 0.5))])(x, t_late)
    expected = v_u(x, t_late) + 3.0 * (v_c(x, t_late) - v_u(x, t_late)) + (v_n(x, t_late) - v_u(x, t_late))
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="non-empty list"):
        multi_cfg(v_u, [])
    with pytest.raises(ValueError, match=r"conditions\[0\] must be"):
        multi_cfg(v_u, [(v_c,)])


class CondNet(nn.Module):
    """A tiny conditional velocity model (x [B, D], t [B], cond [B, Lc, Dc]) -> [B, D]."""

    def __init__(self, d=3, dc=4):
        super().__init__()
        self.calls = 0
        self.net = nn.Sequential(nn.Linear(d + 1 + dc, 16), nn.SiLU(), nn.Linear(16, d))

    def forward(self, x, t, cond):
        self.calls += 1
        return self.net(torch.cat([x, t[:, None], cond.mean(dim=1)], dim=1))


def test_batched_cfg_equals_two_calls():
    torch.manual_seed(0)  # parameter init only; not library code
    model = CondNet()
    x, t = xt()
    cond = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(2))
    null = torch.zeros(1, 7, 4)  # one null embedding broadcast over the batch
    neg = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(3))
    null_b = null.expand(5, 7, 4)
    two = cfg(lambda x, t: model(x, t, cond), lambda x, t: model(x, t, null_b), 4.0, DynamicCFG())
    one = batched_cfg(model, cond, null, 4.0, "dynamic_cfg")
    with torch.no_grad():
        model.calls = 0
        got = one(x, t)
        assert model.calls == 1  # one forward pass for both branches
        torch.testing.assert_close(got, two(x, t), rtol=1e-6, atol=1e-6)
        three = cfg(
            lambda x, t: model(x, t, cond),
            lambda x, t: model(x, t, null_b),
            4.0,
            v_negative=lambda x, t: model(x, t, neg),
            negative_scale=2.0,
        )
        got3 = batched_cfg(model, cond, null, 4.0, negative_cond=neg, negative_scale=2.0)(x, t)
        torch.testing.assert_close(got3, three(x, t), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="null_cond must have cond's trailing shape"):
        batched_cfg(model, cond, torch.zeros(1, 7, 5), 4.0)
    with pytest.raises(ValueError, match="cond must have batch size B=5 or 1"):
        batched_cfg(model, cond[:2], null, 4.0)(x, t)


# ---- gradient guidance -----------------------------------------------------------------------------------


def test_unguided_toy_ends_at_x0_plus_mu_and_guided_matches_closed_form():
    x0 = noise()
    assert torch.allclose(integrate(toy_velocity, x0, steps=4), x0 + MU)
    s = 1.0
    guided = GradientGuidance(sq_cost, s)(toy_velocity)
    x1 = integrate(guided, x0, method="rk4", steps=32)
    e0 = x0 + MU - TARGET  # x1_hat - target at t = 0
    torch.testing.assert_close(x1 - TARGET, e0 * math.exp(-2 * s), rtol=1e-6, atol=1e-8)


def test_gradient_guidance_lowers_cost_monotonically_in_scale():
    x0 = noise()
    costs = []
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        x1 = integrate(GradientGuidance(sq_cost, s)(toy_velocity), x0, method="heun", steps=16)
        costs.append(sq_cost(x1).mean().item())
    assert costs[0] == pytest.approx(sq_cost(x0 + MU).mean().item())  # scale 0 = unguided
    assert all(a > b for a, b in zip(costs, costs[1:], strict=False)), costs
    assert costs[-1] < 1e-3 * costs[0]


def test_through_model_agrees_when_x1_hat_jacobian_is_identity():
    # v independent of x => d x1_hat / d x_t = I + (1 - t) dv/dx = I: both gradients are grad cost(x1_hat),
    # so the guided velocities and whole trajectories coincide.
    x0 = noise(16)
    cheap = GradientGuidance(sq_cost, 1.5)(toy_velocity)
    full = GradientGuidance(sq_cost, 1.5, through_model=True)(toy_velocity)
    t = torch.rand(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(full(x0, t), cheap(x0, t), rtol=1e-12, atol=1e-12)
    x1_full, x1_cheap = integrate(full, x0, steps=8), integrate(cheap, x0, steps=8)
    torch.testing.assert_close(x1_full, x1_cheap, rtol=1e-12, atol=1e-12)


def test_through_model_follows_the_chain_rule_for_a_linear_model():
    # v = a x + b(t) => d x1_hat / d x_t = (1 + (1 - t) a) I, so the through-model guidance term is exactly
    # that factor times the x1_hat-only term (the Jacobian the cheap variant drops).
    a = -0.7

    def linear(x, t):
        return a * x + torch.stack([t, 1 - t], dim=1)

    x, t = noise(8), torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0], dtype=torch.float64)
    v = linear(x, t)
    term_cheap = GradientGuidance(sq_cost, 1.0)(linear)(x, t) - v
    term_full = GradientGuidance(sq_cost, 1.0, through_model=True)(linear)(x, t) - v
    torch.testing.assert_close(term_full, (1 + (1 - t) * a)[:, None] * term_cheap, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(term_full, term_cheap)


def test_guidance_term_uses_the_given_path():
    path = AffinePath(PolynomialScheduler(2.0))
    x, t = noise(6), torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    v = toy_velocity(x, t)
    got = GradientGuidance(sq_cost, 0.5, path=path)(toy_velocity)(x, t)
    x1_hat = path.velocity_to_x1(v, x, t)
    torch.testing.assert_close(got, v - 0.5 * 2 * (x1_hat - TARGET))


def _guidance_gradients(gg, x, t):
    return (toy_velocity(x, t) - gg(toy_velocity)(x, t)) / gg.scale  # g per sample, [B, D]


def test_clip_norm_and_normalize_bound_the_gradient():
    x = noise(6) * 10
    x[0] = TARGET - MU  # x1_hat = target at t = 0: zero gradient for this sample
    t = torch.zeros(6, dtype=torch.float64)
    raw = _guidance_gradients(GradientGuidance(sq_cost, 2.0), x, t).norm(dim=1)
    assert raw[0] == 0 and (raw[1:] > 1.0).all()
    clipped = _guidance_gradients(GradientGuidance(sq_cost, 2.0, clip_norm=1.0), x, t).norm(dim=1)
    torch.testing.assert_close(clipped[1:], torch.ones(5, dtype=torch.float64))
    assert clipped[0] == 0
    loose = _guidance_gradients(GradientGuidance(sq_cost, 2.0, clip_norm=1e6), x, t).norm(dim=1)
    torch.testing.assert_close(loose, raw)  # below the cap nothing changes
    unit = _guidance_gradients(GradientGuidance(sq_cost, 2.0, normalize=True), x, t).norm(dim=1)
    torch.testing.assert_close(unit[1:], torch.ones(5, dtype=torch.float64))
    assert unit[0] == 0  # a zero gradient stays zero, no NaN
    gg = GradientGuidance(sq_cost, 2.0, normalize=True, clip_norm=0.25)
    both = _guidance_gradients(gg, x, t).norm(dim=1)
    torch.testing.assert_close(both[1:], torch.full((5,), 0.25, dtype=torch.float64))


class Net(nn.Module):
    """Velocity MLP that records weak references to its activations, to detect graphs kept alive."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        self.acts = []

    def forward(self, x, t):
        h = torch.tanh(self.lin(x))
        self.acts.append(weakref.ref(h))
        return h + t[:, None]


@pytest.mark.parametrize("through_model", [False, True])
def test_works_under_no_grad_and_keeps_no_graph(through_model):
    torch.manual_seed(0)  # parameter init only
    net = Net()
    gg = GradientGuidance(sq_cost, 1.0, through_model=through_model)
    x, t = noise(4), torch.full((4,), 0.3, dtype=torch.float64)
    with torch.no_grad():
        out = gg(net)(x, t)
        unguided = net(x, t)
    assert out.grad_fn is None and not out.requires_grad
    assert not torch.allclose(out, unguided)  # guidance did act under no_grad
    assert all(p.grad is None for p in net.parameters())  # autograd.grad, never .backward()
    x1 = integrate(gg(net), noise(4), steps=6)  # integrate runs under no_grad by default
    assert x1.grad_fn is None and torch.isfinite(x1).all()
    gc.collect()
    assert all(ref() is None for ref in net.acts)  # no activation (hence no graph) survives a step
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("through_model", [False, True])
def test_gradients_flow_through_a_guided_solve_when_enabled(through_model):
    # integrate(enable_grad=True): the velocity stays differentiable and the guidance term is a constant
    # (no second-order terms). For v = a x + b(t) and n Euler steps of size h that makes
    # d x1 / d x0 = (1 + h a)^n per element, whatever the guidance does to the values.
    a, n = -0.7, 4

    def linear(x, t):
        return a * x + torch.stack([t, 1 - t], dim=1)

    x0 = noise(4).requires_grad_(True)
    guided = GradientGuidance(sq_cost, 1.0, through_model=through_model)(linear)
    x1 = integrate(guided, x0, method="euler", steps=n, enable_grad=True)
    assert not torch.allclose(x1, integrate(linear, x0.detach(), method="euler", steps=n))
    x1.sum().backward()
    torch.testing.assert_close(x0.grad, torch.full_like(x0, (1 + a / n) ** n))


@pytest.mark.parametrize("through_model", [False, True])
def test_interval_switches_gradient_guidance_off_exactly(through_model):
    calls = []

    def counted_cost(x1_hat):
        calls.append(1)
        return sq_cost(x1_hat)

    gg = GradientGuidance(counted_cost, 3.0, Interval(0.0, 0.5), through_model=through_model)
    x = noise(3)
    late, early = torch.full((3,), 0.6, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.equal(gg(toy_velocity)(x, late), toy_velocity(x, late))
    assert not calls  # inactive: no cost evaluation, no autograd work
    assert not torch.allclose(gg(toy_velocity)(x, early), toy_velocity(x, early))  # t_hi edge is active
    assert len(calls) == 1


def test_stacking_cfg_and_gradient_guidance():
    # CFG between two constant-velocity "models" (cond -> N(mu, I), uncond -> N(0, I)), then a cost.
    v_cond = toy_velocity

    def v_null(x, t):
        return torch.zeros_like(x)

    w, s = 2.0, 1.0
    base = cfg(v_cond, v_null, w)
    guided = guide(base, GradientGuidance(sq_cost, s))
    x, t = noise(8), torch.linspace(0, 1, 8, dtype=torch.float64)
    v_cfg = w * MU.expand_as(x)
    torch.testing.assert_close(guided(x, t), v_cfg - s * 2 * (x + (1 - t)[:, None] * v_cfg - TARGET))
    x0 = noise()
    cost_cfg = sq_cost(integrate(base, x0, steps=16)).mean()
    cost_both = sq_cost(integrate(guided, x0, steps=16)).mean()
    assert cost_both < 0.5 * cost_cfg
    # guide applies wrappers in order, the first innermost
    def add_one(fn):
        return lambda x, t: fn(x, t) + 1

    def double(fn):
        return lambda x, t: 2 * fn(x, t)

    torch.testing.assert_close(guide(v_null, add_one, double)(x, t), torch.full_like(x, 2.0))
    torch.testing.assert_close(guide(v_null, double, add_one)(x, t), torch.full_like(x, 1.0))


# ---- bad inputs ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, t = noise(4), torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(TypeError, match="cost must be callable"):
        GradientGuidance("not a function", 1.0)
    with pytest.raises(ValueError, match=r"cost must return one value per sample, \[B\] = \[4\], got \(\)"):
        GradientGuidance(lambda x1: (x1**2).sum(), 1.0)(toy_velocity)(x, t)
    with pytest.raises(ValueError, match=r"cost must return .* got \(4, 2\)"):
        GradientGuidance(lambda x1: x1**2, 1.0)(toy_velocity)(x, t)
    with pytest.raises(ValueError, match="cost must be differentiable"):
        GradientGuidance(lambda x1: sq_cost(x1.detach()), 1.0)(toy_velocity)(x, t)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        GradientGuidance(sq_cost, 1.0, clip_norm=-1.0)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        GradientGuidance(sq_cost, 1.0, clip_norm=0.0)
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        GradientGuidance(sq_cost, -1.0)
    with pytest.raises(ValueError, match="must be one of"):
        GradientGuidance(sq_cost, 1.0, "linaer")
    with pytest.raises(TypeError, match="schedule must be a callable"):
        GradientGuidance(sq_cost, 1.0, 3)
    with pytest.raises(ValueError, match=r"schedule must map t \(4,\) to a tensor of the same shape, got"):
        cfg(v_c, v_u, 2.0, lambda t: t.sum())(x, t)
    with pytest.raises(ValueError, match=r"v_cond must return a velocity shaped like x \(4, 2\), got \(4, 1"):
        cfg(lambda x, t: x[:, :1], v_u, 2.0)(x, t)
    with pytest.raises(ValueError, match=r"t must be \[B\] with B=4, got \(3,\)"):
        cfg(v_c, v_u, 2.0)(x, t[:3])
    with pytest.raises(ValueError, match=r"scale must be 0-d or \[B\] with B=4, got \(3,\)"):
        cfg(v_c, v_u, torch.ones(3))(x, t)
    with pytest.raises(TypeError, match="v_uncond must be a velocity function"):
        cfg(v_c, None, 2.0)
    with pytest.raises(ValueError, match="need t_lo <= t_hi"):
        Interval(0.6, 0.2)
    with pytest.raises(ValueError, match="t_hi must lie in"):
        Interval(0.2, 1.5)
    with pytest.raises(ValueError, match="need 0 <= t_start < t_end <= 1"):
        Linear(t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="exponent must be > 0"):
        DynamicCFG(0.0)
