"""integrate(): analytic answers, convergence orders, torchdiffeq, inversion, SDE, gradients, bad input."""

import functools
import math

import pytest
import torch
import torchdiffeq
from flows import F64, gaussian_flow, gen, mixture_flow

from wmgen.flow.analytic import GaussianFlow
from wmgen.flow.solvers import METHODS, Trajectory, integrate

FIXED = [m for m, info in METHODS.items() if not info.adaptive and not info.stochastic]
DETERMINISTIC = [m for m, info in METHODS.items() if not info.stochastic]






@functools.cache
def mixture_case(n: int, seed: int, tol: float):
    """The mixture flow, n source samples and their tight dopri5 solution (computed once per session)."""
    flow = mixture_flow()
    x0 = flow.sample_source(n, gen(seed))
    return flow, x0, integrate(flow.velocity, x0, method="dopri5", atol=tol, rtol=tol)


def rate_3t2(x, t):
    return 3 * t[:, None] ** 2 * torch.ones_like(x)




# ---------------------------------------------------------------------------------------------------------
# Analytic answers


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_velocity_3t2_adds_one_with_the_known_quadrature_error(steps):
    # Each fixed-step method applied to dx/dt = 3 t^2 is a quadrature rule with a closed-form error.
    n = steps
    expected = {
        "euler": 1 - 3 / (2 * n) + 1 / (2 * n**2),  # left Riemann sum of 3 t^2
        "midpoint": 1 - 1 / (4 * n**2),
        "heun": 1 + 1 / (2 * n**2),  # trapezoidal rule
        "rk4": 1.0,  # Simpson's rule is exact for cubics
        "rk38": 1.0,  # so is Simpson's 3/8 rule
    }
    x0 = torch.zeros(4, 2, dtype=F64)
    for method in FIXED:
        x1 = integrate(rate_3t2, x0, method=method, steps=steps)
        torch.testing.assert_close(x1, torch.full_like(x0, expected[method]), rtol=0, atol=1e-12)
    x1 = integrate(rate_3t2, x0, method="dopri5", atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x1, torch.ones_like(x0), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_velocity_3t2_backwards_subtracts_one(method):
    x1 = torch.full((3, 1), 5.0, dtype=F64)
    kw = {"atol": 1e-9, "rtol": 1e-9} if METHODS[method].adaptive else {"steps": 400}
    x0 = integrate(rate_3t2, x1, method=method, t_start=1.0, t_end=0.0, **kw)
    torch.testing.assert_close(x0, torch.full_like(x1, 4.0), rtol=0, atol=5e-3)


def test_velocity_receives_t_as_batch_tensor_like_x():
    seen = []

    def v(x, t):
        seen.append((t.shape, t.dtype, t.device))
        return torch.zeros_like(x)

    x0 = torch.zeros(5, 3, 2, dtype=F64)
    for method in METHODS:
        seen.clear()
        integrate(v, x0, method=method, steps=2)
        assert seen and all(s == (torch.Size([5]), F64, x0.device) for s in seen), method


@pytest.mark.parametrize("method", list(METHODS))
def test_nfe_and_trajectory(method):
    x0 = torch.randn(6, 3, dtype=F64, generator=gen())
    flow = gaussian_flow()
    path = integrate(flow.velocity, x0, method=method, steps=5, return_path=True)
    assert isinstance(path, Trajectory)
    assert path.times.shape == (6,) and path.states.shape == (6, 6, 3)
    torch.testing.assert_close(path.times, torch.linspace(0, 1, 6, dtype=F64))
    assert torch.equal(path.states[0], x0) and torch.equal(path.x, path.states[-1])
    if METHODS[method].adaptive:  # 1 + 1 for the starting step, then 6 per attempted step (FSAL)
        assert path.nfe == 2 + 6 * (path.n_accepted + path.n_rejected)
    else:
        assert path.nfe == 5 * METHODS[method].nfe_per_step and path.n_accepted == 5


# ---------------------------------------------------------------------------------------------------------
# Accuracy against exact flows


@pytest.mark.parametrize(
    ("method", "steps", "tol"),
    [
        ("euler", 64, 0.05),
        ("midpoint", 16, 3e-4),
        ("heun", 16, 8e-3),
        ("rk4", 16, 1e-5),
        ("rk38", 16, 1e-5),
        ("dopri5", None, 1e-4),
    ],
)
def test_gaussian_to_gaussian_matches_exact_flow_map(method, steps, tol):
    flow = gaussian_flow()
    x0 = flow.sample_source(1000, gen(1))
    x1 = integrate(flow.velocity, x0, method=method, steps=steps)
    err = (x1 - flow.flow_map(x0, 0.0, 1.0)).norm(dim=1)  # [B] per-sample error
    assert err.mean() < tol
    # the pushed-forward samples have the target's moments (Monte-Carlo tolerance for 1000 samples)
    torch.testing.assert_close(x1.mean(0), flow.mean1, atol=0.15, rtol=0)
    torch.testing.assert_close(x1.T.cov(), flow.cov1, atol=0.25, rtol=0)


@pytest.mark.parametrize(
    ("method", "steps", "tol"),
    [
        ("euler", 64, 0.05),
        ("midpoint", 32, 1.5e-3),
        ("heun", 32, 1.5e-3),
        ("rk4", 16, 5e-5),
        ("rk38", 16, 5e-5),
        ("dopri5", None, 2e-4),
    ],
)
def test_gaussian_mixture_matches_tight_dopri5_reference(method, steps, tol):
    flow, x0, ref = mixture_case(1000, 2, 1e-10)
    x1 = integrate(flow.velocity, x0, method=method, steps=steps)
    assert (x1 - ref).norm(dim=1).mean() < tol
    # moments: close to the reference's (same x0) and, up to Monte-Carlo error (1000 samples), the target's
    torch.testing.assert_close(x1.mean(0), ref.mean(0), atol=5 * tol, rtol=0)
    torch.testing.assert_close(x1.T.cov(), ref.T.cov(), atol=20 * tol, rtol=0)
    torch.testing.assert_close(x1.mean(0), flow.target_mean(), atol=0.15, rtol=0)
    torch.testing.assert_close(x1.T.cov(), flow.target_cov(), atol=0.3, rtol=0)


def test_reference_is_exact_on_gaussian_case():
    # The tight dopri5 used as the mixture reference is itself accurate where the answer is known.
    flow = gaussian_flow()
    x0 = flow.sample_source(64, gen(3))
    x1 = integrate(flow.velocity, x0, method="dopri5", atol=1e-10, rtol=1e-10)
    assert (x1 - flow.flow_map(x0, 0.0, 1.0)).abs().max() < 1e-8


@pytest.mark.parametrize(
    ("method", "steps"),
    [
        ("euler", [16, 32, 64, 128]),
        ("midpoint", [8, 16, 32, 64]),
        ("heun", [8, 16, 32, 64]),
        ("rk4", [8, 16, 32, 64]),
        ("rk38", [8, 16, 32, 64]),
    ],
)
def test_empirical_convergence_order(method, steps):
    flow, x0, ref = mixture_case(64, 4, 1e-13)  # a smooth, nonlinear field
    errs = [(integrate(flow.velocity, x0, method=method, steps=n) - ref).norm(dim=1).mean() for n in steps]
    log_n = torch.tensor([math.log(n) for n in steps], dtype=F64)
    log_e = torch.stack(errs).log()
    slope = -((log_n - log_n.mean()) * (log_e - log_e.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum()
    assert abs(slope.item() - METHODS[method].order) < 0.3, (method, slope.item())


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
def test_dopri5_error_follows_tolerance(tol):
    flow = gaussian_flow()
    x0 = flow.sample_source(32, gen(5))
    x1 = integrate(flow.velocity, x0, method="dopri5", atol=tol, rtol=tol)
    err = (x1 - flow.flow_map(x0, 0.0, 1.0)).abs().max()
    assert err < 20 * tol


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_dopri5_agrees_with_torchdiffeq(direction):
    flow = mixture_flow()
    x0 = flow.sample_source(128, gen(6))
    t0, t1 = (0.0, 1.0) if direction == "forward" else (1.0, 0.0)
    ref = integrate(flow.velocity, x0, method="dopri5", t_start=t0, t_end=t1, atol=1e-10, rtol=1e-10)
    calls = [0]

    def func(t, y):  # torchdiffeq signature: f(t scalar, y)
        calls[0] += 1
        return flow.velocity(y, t.expand(y.shape[0]))

    for tol in (1e-4, 1e-7):
        calls[0] = 0
        theirs = torchdiffeq.odeint(func, x0, torch.tensor([t0, t1], dtype=F64), method="dopri5", atol=tol, rtol=tol)
        their_nfe = calls[0]
        ours = integrate(flow.velocity, x0, method="dopri5", t_start=t0, t_end=t1, atol=tol, rtol=tol, return_path=True)
        err_ours = (ours.x - ref).norm(dim=1).mean().item()
        err_theirs = (theirs[-1] - ref).norm(dim=1).mean().item()
        assert (ours.x - theirs[-1]).norm(dim=1).mean() < 50 * tol
        assert err_ours < 2 * err_theirs + 1e-9
        assert 0.5 * their_nfe <= ours.nfe <= 1.5 * their_nfe, (ours.nfe, their_nfe)


@pytest.mark.parametrize(("ours", "theirs"), [("euler", "euler"), ("midpoint", "midpoint"), ("rk38", "rk4")])
def test_fixed_step_methods_equal_torchdiffeq(ours, theirs):
    # same schemes (torchdiffeq's "rk4" is Kutta's 3/8 rule): same numbers up to rounding, on any grid
    flow = mixture_flow()
    x0 = flow.sample_source(64, gen(21))
    grid = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.7, 1.0], dtype=F64)

    def func(t, y):
        return flow.velocity(y, t.expand(y.shape[0]))

    theirs_x = torchdiffeq.odeint(func, x0, grid, method=theirs)
    path = integrate(flow.velocity, x0, method=ours, time_grid=grid, return_path=True)
    torch.testing.assert_close(path.states, theirs_x, atol=1e-13, rtol=0)


def test_dopri5_dense_output_hits_grid_without_extra_steps():
    flow = gaussian_flow()
    x0 = flow.sample_source(16, gen(7))
    grid = torch.tensor([0.0, 0.05, 0.13, 0.4, 0.41, 0.77, 1.0], dtype=F64)
    path = integrate(flow.velocity, x0, method="dopri5", time_grid=grid, atol=1e-8, rtol=1e-8, return_path=True)
    plain = integrate(flow.velocity, x0, method="dopri5", atol=1e-8, rtol=1e-8, return_path=True)
    assert path.nfe == plain.nfe  # interpolated, not stepped to
    torch.testing.assert_close(path.times, grid)
    torch.testing.assert_close(path.x, plain.x, rtol=0, atol=0)
    for t, x in zip(grid.tolist(), path.states, strict=True):
        assert (x - flow.flow_map(x0, 0.0, t)).abs().max() < 1e-6, t
    # steps= with dopri5 asks for a uniform output grid
    uniform = integrate(flow.velocity, x0, method="dopri5", steps=4, return_path=True)
    torch.testing.assert_close(uniform.times, torch.linspace(0, 1, 5, dtype=F64))


def test_dopri5_without_grid_records_accepted_steps():
    flow = gaussian_flow()
    path = integrate(flow.velocity, flow.sample_source(4, gen()), method="dopri5", return_path=True)
    assert path.times.shape[0] == path.n_accepted + 1 and path.states.shape[0] == path.n_accepted + 1
    assert (path.times.diff() > 0).all() and path.times[-1] == 1.0


def test_dopri5_rejects_and_recovers_on_a_switch():
    # the field switches on at t = 0.5 (dx/dt = 4x): the steps grown over the flat part get rejected there,
    # and the answer is still right: x(1) = x(0) exp(4 * 0.5).
    def switch(x, t):
        return torch.where(t[:, None] < 0.5, torch.zeros_like(x), 4 * x)

    x0 = torch.ones(2, 1, dtype=F64)
    path = integrate(switch, x0, method="dopri5", atol=1e-8, rtol=1e-8, return_path=True)
    assert path.n_rejected > 0
    torch.testing.assert_close(path.x, x0 * math.exp(2.0), atol=1e-4, rtol=0)


def test_dopri5_max_steps():
    flow = gaussian_flow()
    with pytest.raises(RuntimeError, match="max_steps"):
        integrate(flow.velocity, flow.sample_source(4, gen()), method="dopri5", atol=1e-12, rtol=1e-12, max_steps=3)


# ---------------------------------------------------------------------------------------------------------
# Time grids and inversion


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_reverse_integration_inverts_forward(method):
    flow = mixture_flow()
    x0 = flow.sample_source(128, gen(8))
    kw = {"atol": 1e-9, "rtol": 1e-9} if method == "dopri5" else {"steps": 64 if method != "euler" else 400}
    x1 = integrate(flow.velocity, x0, method=method, **kw)
    back = integrate(flow.velocity, x1, method=method, t_start=1.0, t_end=0.0, **kw)
    tol = {"euler": 0.1, "midpoint": 1e-3, "heun": 1e-3, "rk4": 1e-6, "rk38": 1e-6, "dopri5": 1e-6}[method]
    assert (back - x0).norm(dim=1).mean() < tol


def test_decreasing_grid_equals_t_start_greater_than_t_end():
    flow = gaussian_flow()
    x1 = flow.sample_target(8, gen())
    a = integrate(flow.velocity, x1, method="heun", steps=40, t_start=1.0, t_end=0.0)
    b = integrate(flow.velocity, x1, method="heun", time_grid=torch.linspace(1, 0, 41, dtype=F64))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, flow.flow_map(x1, 1.0, 0.0), atol=0.01, rtol=0)


def test_custom_grid_is_stepped_exactly():
    # dx/dt = 3 t^2 on a non-uniform grid: each method is a known quadrature rule on exactly these nodes.
    grid = torch.tensor([0.0, 0.1, 0.15, 0.4, 0.8, 1.0], dtype=F64)
    a, h = grid[:-1], grid.diff()
    expected = {
        "euler": (3 * a**2 * h).sum(),
        "midpoint": (3 * (a + h / 2) ** 2 * h).sum(),
        "heun": 1 + (h**3 / 2).sum(),  # trapezoid error (b - a)^3 / 12 * f'' with f'' = 6
        "rk4": torch.tensor(1.0, dtype=F64),
        "rk38": torch.tensor(1.0, dtype=F64),
    }
    x0 = torch.zeros(2, 1, dtype=F64)
    for method, value in expected.items():
        x1 = integrate(rate_3t2, x0, method=method, time_grid=grid)
        torch.testing.assert_close(x1, value.expand(2, 1), atol=1e-13, rtol=0)
    backwards = integrate(rate_3t2, x0, method="heun", time_grid=grid.flip(0))
    torch.testing.assert_close(backwards, -(1 + (h**3 / 2).sum()).expand(2, 1), atol=1e-13, rtol=0)


def test_shifted_grid_and_partial_interval_are_accurate():
    flow = gaussian_flow()
    x0 = flow.sample_source(32, gen(9))
    s = torch.linspace(0, 1, 33, dtype=F64)
    grid = 1 - 3 * (1 - s) / (1 + 2 * (1 - s))  # shifted grid (shift 3), monotone 0 -> 1
    x1 = integrate(flow.velocity, x0, method="rk4", time_grid=grid)
    assert (x1 - flow.flow_map(x0, 0.0, 1.0)).abs().max() < 5e-4
    mid = integrate(flow.velocity, x0, method="rk4", steps=16, t_start=0.2, t_end=0.7)
    assert (mid - flow.flow_map(x0, 0.2, 0.7)).abs().max() < 1e-6
    # a time grid equal to the uniform one gives the identical result
    same = integrate(flow.velocity, x0, method="midpoint", time_grid=torch.linspace(0, 1, 9, dtype=F64))
    assert torch.equal(same, integrate(flow.velocity, x0, method="midpoint", steps=8))


def test_callback_sees_every_step():
    seen = []
    x0 = torch.zeros(2, 1)
    integrate(rate_3t2, x0, method="rk4", steps=4, callback=lambda i, t, x: seen.append((i, t, x.clone())))
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    torch.testing.assert_close(seen[1][2], torch.full((2, 1), 0.125))


# ---------------------------------------------------------------------------------------------------------
# Euler-Maruyama


@pytest.mark.parametrize(("t_start", "t_end"), [(0.0, 1.0), (1.0, 0.0)])
def test_euler_maruyama_at_zero_noise_is_euler_bit_for_bit(t_start, t_end):
    flow = mixture_flow()
    x = flow.sample_source(64, gen(10), dtype=torch.float32)
    kw = {"steps": 17, "t_start": t_start, "t_end": t_end}
    em = integrate(flow.velocity, x, method="euler_maruyama", noise_scale=0.0, generator=gen(11), **kw)
    assert torch.equal(em, integrate(flow.velocity, x, method="euler", **kw))


def test_euler_maruyama_reaches_target_moments_and_is_seeded():
    flow = GaussianFlow(torch.zeros(2), 1.0, torch.tensor([1.5, -0.5]), torch.tensor([[0.3, 0.1], [0.1, 2.0]]))
    x0 = flow.sample_source(5000, gen(12))
    x1 = integrate(flow.velocity, x0, method="euler_maruyama", steps=100, noise_scale=2.0, generator=gen(13))
    # Monte-Carlo error ~0.02 (5000 samples) plus O(h) bias; a wrong score sign misses cov by ~10
    torch.testing.assert_close(x1.mean(0), flow.mean1, atol=0.08, rtol=0)
    torch.testing.assert_close(x1.T.cov(), flow.cov1, atol=0.15, rtol=0)
    # the noise does something (not the ODE map) and is reproducible from the generator
    assert (x1 - flow.flow_map(x0, 0.0, 1.0)).norm(dim=1).mean() > 0.1
    again = integrate(flow.velocity, x0[:100], method="euler_maruyama", steps=20, generator=gen(14))
    assert torch.equal(again, integrate(flow.velocity, x0[:100], method="euler_maruyama", steps=20, generator=gen(14)))
    other = integrate(flow.velocity, x0[:100], method="euler_maruyama", steps=20, generator=gen(15))
    assert not torch.equal(again, other)


def test_euler_maruyama_backwards_reaches_source_moments():
    flow = GaussianFlow(torch.zeros(2), 1.0, torch.tensor([1.5, -0.5]), torch.tensor([[0.3, 0.1], [0.1, 2.0]]))
    x1 = flow.sample_target(5000, gen(16))
    x0 = integrate(flow.velocity, x1, method="euler_maruyama", steps=100, t_start=1.0, t_end=0.0, generator=gen(17))
    torch.testing.assert_close(x0.mean(0), torch.zeros(2, dtype=F64), atol=0.08, rtol=0)
    torch.testing.assert_close(x0.T.cov(), torch.eye(2, dtype=F64), atol=0.15, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# Gradients through the solve


@pytest.mark.parametrize(("method", "steps"), [("euler", 8), ("heun", 8), ("rk4", 6), ("dopri5", None)])
def test_gradient_through_solve_matches_finite_differences(method, steps):
    flow = mixture_flow()
    x0 = flow.sample_source(3, gen(18))
    w = torch.randn(3, 2, dtype=F64, generator=gen(19))
    kw = {"steps": steps} if steps else {"atol": 1e-10, "rtol": 1e-10}

    def loss(x):
        return (w * integrate(flow.velocity, x, method=method, enable_grad=True, **kw)).sum()

    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    fd = torch.zeros_like(x0)
    eps = 1e-6
    for idx in range(x0.numel()):
        e = torch.zeros(x0.numel(), dtype=F64)
        e[idx] = eps
        e = e.view_as(x0)
        with torch.no_grad():
            fd.view(-1)[idx] = (loss(x0 + e) - loss(x0 - e)) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-5, rtol=1e-5)


def test_gradient_matches_exact_jacobian_of_gaussian_flow():
    flow = gaussian_flow()
    x0 = flow.sample_source(4, gen(20)).requires_grad_(True)
    x1 = integrate(flow.velocity, x0, method="rk4", steps=32, enable_grad=True)
    (grad,) = torch.autograd.grad(x1[:, 1].sum(), x0)
    with torch.no_grad():  # the exact map is affine: its Jacobian is flow_map(e_i) - flow_map(0)
        jac = flow.flow_map(torch.eye(3, dtype=F64), 0.0, 1.0) - flow.flow_map(torch.zeros(1, 3, dtype=F64), 0.0, 1.0)
    torch.testing.assert_close(grad, jac[:, 1].expand(4, 3), atol=1e-6, rtol=0)


def test_no_graph_without_enable_grad():
    net = torch.nn.Linear(2, 2)
    x0 = torch.randn(4, 2, requires_grad=True)
    out = integrate(lambda x, t: net(x), x0, method="heun", steps=3)
    assert not out.requires_grad
    out = integrate(lambda x, t: net(x), x0, method="heun", steps=3, enable_grad=True)
    out.sum().backward()
    assert x0.grad is not None and net.weight.grad is not None


# ---------------------------------------------------------------------------------------------------------
# Bad input


def zero_v(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "rk45"}, ValueError, r"method must be one of \['euler', 'midpoint'"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"steps": 2.5}, TypeError, "steps must be an int"),
        ({"t_start": -0.1}, ValueError, r"t_start must lie in \[0, 1\]"),
        ({"t_end": 1.5}, ValueError, r"t_end must lie in \[0, 1\]"),
        ({"t_start": 0.5, "t_end": 0.5}, ValueError, "must differ"),
        ({"time_grid": torch.tensor([0.0, 0.5, 0.4, 1.0])}, ValueError, "strictly monotone"),
        ({"time_grid": torch.tensor([0.0, 0.5, 0.5, 1.0])}, ValueError, "strictly monotone"),
        ({"time_grid": torch.zeros(2, 3)}, ValueError, r"1-D with at least 2 times"),
        ({"time_grid": torch.tensor([0.5])}, ValueError, r"1-D with at least 2 times"),
        ({"time_grid": torch.tensor([0.0, 1.2])}, ValueError, r"lie in \[0, 1\]"),
        ({"time_grid": [0.0, 1.0]}, TypeError, "time_grid must be a 1-D Tensor"),
        ({"time_grid": torch.linspace(0, 1, 3), "steps": 2}, ValueError, "either time_grid or steps"),
        ({"noise_scale": 0.5}, ValueError, "noise_scale applies to stochastic methods"),
        ({"method": "euler_maruyama", "noise_scale": -1.0}, ValueError, "noise_scale must be"),
        ({"method": "dopri5", "atol": 0.0}, ValueError, "atol > 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        integrate(zero_v, torch.zeros(2, 3), **kwargs)


def test_bad_x0():
    with pytest.raises(ValueError, match="x0 must be finite"):
        integrate(zero_v, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="floating-point"):
        integrate(zero_v, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x0 must be a Tensor"):
        integrate(zero_v, [[0.0]])
    with pytest.raises(ValueError, match=r"\[B, \.\.\.\]"):
        integrate(zero_v, torch.zeros(()))


def test_wrong_velocity_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"shaped like x \(2, 3\), got \(2, 1\)"):
        integrate(lambda x, t: x[:, :1], torch.zeros(2, 3))
    with pytest.raises(TypeError, match="must return a Tensor"):
        integrate(lambda x, t: 0.0, torch.zeros(2, 3))


@pytest.mark.parametrize("method", list(METHODS))
def test_nan_during_integration_names_step_and_time(method):
    def blows_up(x, t):
        return torch.where(t[:, None] > 0.5, torch.full_like(x, float("nan")), torch.ones_like(x))

    with pytest.raises(FloatingPointError, match=r"step \d+ \(t [0-9.e-]+ -> "):
        integrate(blows_up, torch.zeros(2, 3), method=method, steps=8)
