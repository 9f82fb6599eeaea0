"""ODE / SDE solvers for velocity fields: one ``integrate`` for every method.

Time runs from t = 0 (source, noise) to t = 1 (data); integrating from 1 to 0 inverts the flow. A velocity
function has the signature ``velocity_fn(x [B, ...], t [B]) -> v [B, ...]`` and knows nothing of solvers.

Methods (``METHODS``):

- ``euler``, ``midpoint``, ``heun`` (explicit trapezoidal rule), ``rk4`` (classic Runge-Kutta), ``rk38``
  (Kutta's 3/8 rule, torchdiffeq's "rk4"): fixed steps on a uniform or user-given time grid.
- ``dopri5``: adaptive Dormand-Prince 5(4) with FSAL, Hairer's PI step-size control and starting-step
  heuristic (Hairer, Norsett & Wanner, *Solving ODEs I*, sec. II.4-II.5), and Shampine's 4th-order dense
  output to report states at requested times without shortening steps.
- ``euler_maruyama``: an SDE with the same marginals as the flow ODE (Gaussian source, CondOT path), see
  ``_em_step`` for the derivation.

Example::

    x1 = integrate(model, torch.randn(8, 2), method="rk4", steps=8)
    path = integrate(model, x1, t_start=1.0, t_end=0.0, method="dopri5", return_path=True)  # inversion
    path.x, path.nfe
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["METHODS", "MethodInfo", "Trajectory", "VelocityFn", "integrate"]

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x [B, ...], t [B]) -> v [B, ...]


@dataclass(frozen=True)
class MethodInfo:
    """What a solver is: used by tests (expected convergence order) and benchmarks (NFE per step)."""

    order: int  # global order of accuracy (euler_maruyama: weak order)
    nfe_per_step: int  # velocity evaluations per (accepted) step; dopri5 adds 2 for its starting step
    adaptive: bool  # chooses its own steps from atol / rtol
    stochastic: bool  # draws noise (needs ``generator`` for reproducibility)


METHODS: dict[str, MethodInfo] = {
    "euler": MethodInfo(order=1, nfe_per_step=1, adaptive=False, stochastic=False),
    "midpoint": MethodInfo(order=2, nfe_per_step=2, adaptive=False, stochastic=False),
    "heun": MethodInfo(order=2, nfe_per_step=2, adaptive=False, stochastic=False),
    "rk4": MethodInfo(order=4, nfe_per_step=4, adaptive=False, stochastic=False),
    "rk38": MethodInfo(order=4, nfe_per_step=4, adaptive=False, stochastic=False),
    "dopri5": MethodInfo(order=5, nfe_per_step=6, adaptive=True, stochastic=False),
    "euler_maruyama": MethodInfo(order=1, nfe_per_step=1, adaptive=False, stochastic=True),
}

DEFAULT_STEPS = 32


@dataclass
class Trajectory:
    """States of one solve at the grid times.

    Fixed-step methods record every grid time; dopri5 records the requested output times (``time_grid`` or
    ``steps``) or, when none were requested, every accepted step.
    """

    times: Tensor  # [S + 1] float64, monotone, times[0] = start
    states: Tensor  # [S + 1, B, ...]
    nfe: int  # velocity evaluations spent
    n_accepted: int  # solver steps taken (dopri5: accepted steps)
    n_rejected: int = 0  # dopri5 steps rejected by the error control

    @property
    def x(self) -> Tensor:
        """The final state [B, ...]."""
        return self.states[-1]


class _Field:
    """Calls the user's velocity function with t as a [B] tensor, checks its output and counts calls."""

    def __init__(self, velocity_fn: VelocityFn, x0: Tensor):
        self.velocity_fn = velocity_fn
        self.batch = x0.shape[0]
        self.nfe = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        tt = torch.full((self.batch,), t, dtype=x.dtype, device=x.device)  # [B]
        v = self.velocity_fn(x, tt)
        self.nfe += 1
        if not isinstance(v, Tensor):
            raise TypeError(f"velocity_fn must return a Tensor, got {type(v).__name__}")
        if v.shape != x.shape:
            raise ValueError(
                f"velocity_fn must return v shaped like x {tuple(x.shape)}, got {tuple(v.shape)} at t={t:.6g}"
            )
        return v


# --------------------------------------------------------------------------------------------------------
# Fixed-step methods: (f, x, t, h) -> x after one step of signed size h.


def _euler_step(f: _Field, x: Tensor, t: float, h: float) -> Tensor:
    return x + h * f(x, t)


def _midpoint_step(f: _Field, x: Tensor, t: float, h: float) -> Tensor:
    k1 = f(x, t)
    return x + h * f(x + (0.5 * h) * k1, t + 0.5 * h)


def _heun_step(f: _Field, x: Tensor, t: float, h: float) -> Tensor:
    # Explicit trapezoidal rule: Euler predictor, then the mean of the slopes at both ends.
    k1 = f(x, t)
    k2 = f(x + h * k1, t + h)
    return x + (0.5 * h) * (k1 + k2)


def _rk4_step(f: _Field, x: Tensor, t: float, h: float) -> Tensor:
    k1 = f(x, t)
    k2 = f(x + (0.5 * h) * k1, t + 0.5 * h)
    k3 = f(x + (0.5 * h) * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)


def _rk38_step(f: _Field, x: Tensor, t: float, h: float) -> Tensor:
    # Kutta's 3/8 rule: also 4th order, usually with a smaller error than the classic scheme (Hairer et al.
    # sec. II.1); lower error than rk4 in 31 of 35 of our analytic test cases (see BENCHMARKS.md).
    k1 = f(x, t)
    k2 = f(x + (h / 3) * k1, t + h / 3)
    k3 = f(x + h * (k2 - k1 / 3), t + 2 * h / 3)
    k4 = f(x + h * (k1 - k2 + k3), t + h)
    return x + (h / 8) * (k1 + 3.0 * (k2 + k3) + k4)


def _em_step(
    f: _Field, x: Tensor, t: float, h: float, noise_scale: float, generator: torch.Generator | None
) -> Tensor:
    # Euler-Maruyama for an SDE whose marginals equal the flow's p_t (SiT, Ma et al. 2024, sec. 2.3).
    #
    # Score from velocity (Gaussian source, CondOT path x_t = t x1 + (1 - t) x0, x0 ~ N(0, I)):
    #   v(x, t) = E[x1 - x0 | x_t = x]  and  x = t E[x1 | x] + (1 - t) E[x0 | x]
    #   => x = t (E[x0 | x] + v) + (1 - t) E[x0 | x] = E[x0 | x] + t v  =>  E[x0 | x] = x - t v.
    #   Given x1, x_t ~ N(t x1, (1 - t)^2 I), so by Tweedie's formula
    #   score(x, t) = grad log p_t(x) = -E[x0 | x] / (1 - t) = (t v - x) / (1 - t).
    # Same marginals: dx = (v + g^2 / 2 * score) dt + g dW leaves the Fokker-Planck equation of the ODE
    #   d p / dt = -div(p v) unchanged, because -div(p g^2/2 grad log p) + g^2/2 lap p = 0.
    #   Backwards in time (h < 0) the reverse-time SDE has drift v - g^2/2 * score; in both directions the
    #   extra terms form a Langevin step of size |h| that keeps p_t invariant:
    #   x <- x + v h + g^2/2 * score |h| + g sqrt(|h|) z,  z ~ N(0, I).
    # Diffusion g(t)^2 = noise_scale * (1 - t) (SiT's w_t = sigma_t): it cancels the 1 / (1 - t) of the
    #   score, so g^2/2 * score = noise_scale / 2 * (t v - x) stays finite at t = 1, and no noise is left
    #   at the data.
    v = f(x, t)
    x_next = x + h * v  # the Euler step, bit for bit
    g2 = noise_scale * (1.0 - t)
    if g2 > 0.0:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_next = x_next + (0.5 * noise_scale * abs(h)) * (t * v - x) + math.sqrt(g2 * abs(h)) * z
    return x_next


_FIXED_STEPS: dict[str, Callable[[_Field, Tensor, float, float], Tensor]] = {
    "euler": _euler_step,
    "midpoint": _midpoint_step,
    "heun": _heun_step,
    "rk4": _rk4_step,
    "rk38": _rk38_step,
}


# --------------------------------------------------------------------------------------------------------
# Dormand-Prince 5(4) tableau (Dormand & Prince 1980; Hairer et al. Table II.5.2).

_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),  # = 5th-order weights b (FSAL)
)
# b - b_hat: 5th-order minus embedded 4th-order weights, the local error estimate (7 stages).
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
# Shampine's (1986) continuous extension, in Hairer's contd5 form (weights of the 5th Hermite term).
_DP_D = (
    -12715105075 / 11282082432,
    0.0,
    87487479700 / 32700410799,
    -10690763975 / 1880347072,
    701980252875 / 199316789632,
    -1453857185 / 822651844,
    69997945 / 29380423,
)

# Step-size control constants (Hairer's DOPRI5 defaults).
_SAFETY = 0.9
_FAC_MIN, _FAC_MAX = 0.2, 10.0  # bounds on h_new / h
_BETA = 0.04  # PI (Lund) stabilisation exponent
_EXPO = 0.2 - 0.75 * _BETA  # 1/5 for a 4th-order error estimate, minus the PI correction


def _combo(x: Tensor, h: float, coeffs: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """x + h * sum_i coeffs[i] * ks[i], skipping zero weights."""
    acc = None
    for c, k in zip(coeffs, ks, strict=True):
        if c != 0.0:
            acc = c * k if acc is None else acc + c * k
    return x if acc is None else x + h * acc


def _rms(x: Tensor) -> float:
    return (torch.linalg.vector_norm(x) / math.sqrt(x.numel())).item()


def _initial_step(
    f: _Field, x: Tensor, t: float, k1: Tensor, direction: float, atol: float, rtol: float, span: float
) -> float:
    # Hairer et al. sec. II.4 "Starting step size": h0 from |y| / |f|, then refine with an estimate of the
    # second derivative so that h^5 * max(|f'|, |f|) ~ 0.01. Costs one velocity evaluation.
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k_probe = f(x + (direction * h0) * k1, t + direction * h0)
    d2 = _rms((k_probe - k1) / scale) / h0
    d12 = max(d1, d2)
    h1 = max(1e-6, 1e-3 * h0) if d12 <= 1e-15 else (0.01 / d12) ** (1.0 / 5.0)
    return direction * min(100.0 * h0, h1, span)


def _dense(x: Tensor, x_new: Tensor, ks: list[Tensor], h: float, theta: float) -> Tensor:
    # Shampine's 4th-order interpolant on [t, t + h] at t + theta h (Hairer's contd5 layout):
    # y(theta) = r1 + theta (r2 + (1 - theta) (r3 + theta (r4 + (1 - theta) r5))).
    r2 = x_new - x
    r3 = h * ks[0] - r2
    r4 = r2 - h * ks[6] - r3
    r5 = _combo(torch.zeros_like(x), h, _DP_D, ks)
    return x + theta * (r2 + (1 - theta) * (r3 + theta * (r4 + (1 - theta) * r5)))


# --------------------------------------------------------------------------------------------------------
# Input checks.


def _check_time(name: str, t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(t).__name__}")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (t=0 noise, t=1 data), got {t}")
    return t


def _check_positive_int(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


def _resolve_grid(
    time_grid: Tensor | None, steps: int | None, t_start: float | None, t_end: float | None, adaptive: bool
) -> list[float] | None:
    """Times to step through (fixed-step) or to report (dopri5; None = only the end points)."""
    if time_grid is not None:
        if steps is not None or t_start is not None or t_end is not None:
            raise ValueError(
                "give either time_grid or steps / t_start / t_end, not both: time_grid already fixes them "
                f"(got steps={steps}, t_start={t_start}, t_end={t_end})"
            )
        if not isinstance(time_grid, Tensor):
            raise TypeError(f"time_grid must be a 1-D Tensor of times, got {type(time_grid).__name__}")
        if time_grid.ndim != 1 or time_grid.numel() < 2:
            raise ValueError(
                f"time_grid must be 1-D with at least 2 times [S + 1], got {tuple(time_grid.shape)}"
            )
        grid = time_grid.detach().to("cpu", torch.float64)
        if not torch.isfinite(grid).all() or grid.min() < 0.0 or grid.max() > 1.0:
            raise ValueError(f"time_grid values must lie in [0, 1], got min {grid.min()} max {grid.max()}")
        diffs = grid.diff()
        if not ((diffs > 0).all() or (diffs < 0).all()):
            raise ValueError(
                "time_grid must be strictly monotone (increasing: noise -> data, decreasing: data -> noise), "
                f"got {grid.tolist() if grid.numel() <= 12 else 'a grid with repeated or reversed times'}"
            )
        return grid.tolist()
    t0 = _check_time("t_start", 0.0 if t_start is None else t_start)
    t1 = _check_time("t_end", 1.0 if t_end is None else t_end)
    if t0 == t1:
        raise ValueError(f"t_start and t_end must differ, got both {t0}")
    if adaptive and steps is None:
        return None  # dopri5 picks its own steps and reports only the end points (or every step)
    n = _check_positive_int("steps", DEFAULT_STEPS if steps is None else steps)
    return torch.linspace(t0, t1, n + 1, dtype=torch.float64).tolist()


def _check_finite(x: Tensor, method: str, step: int, t_from: float, t_to: float) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(
            f"integrate(method={method!r}): non-finite state (NaN/Inf) after step {step} "
            f"(t {t_from:.6g} -> {t_to:.6g}); the velocity field diverged or returned NaN there"
        )


# --------------------------------------------------------------------------------------------------------
# The one entry point.


def integrate(
    velocity_fn: VelocityFn,
    x0: Tensor,
    *,
    method: str = "heun",
    steps: int | None = None,
    time_grid: Tensor | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    return_path: bool = False,
    noise_scale: float | None = None,
    generator: torch.Generator | None = None,
    enable_grad: bool = False,
    max_steps: int = 10_000,
    callback: Callable[[int, float, Tensor], None] | None = None,
) -> Tensor | Trajectory:
    """Integrate dx/dt = velocity_fn(x, t) from ``x0`` at t_start to t_end.

    Args:
        velocity_fn: ``(x [B, ...], t [B]) -> v [B, ...]``; t has x's dtype and device. Functions that need
            autograd inside (gradient guidance) must enable it themselves (``torch.enable_grad()``).
        x0: initial state [B, ...], floating point, finite.
        method: a key of ``METHODS``: euler, midpoint, heun, rk4, rk38, dopri5 or euler_maruyama.
        steps: number of uniform steps over [t_start, t_end] (default 32). For dopri5 it sets a uniform grid
            of output times instead (it always chooses its own steps). Not together with ``time_grid``.
        time_grid: [S + 1] strictly monotone times in [0, 1]; steps at these times (fixed-step methods) or
            reports the state at them (dopri5, via dense output). Decreasing = backwards (data -> noise).
        t_start: start time in [0, 1] (default 0.0). Not together with ``time_grid``.
        t_end: end time in [0, 1] (default 1.0); t_end < t_start integrates backwards (inversion).
        atol: dopri5 absolute tolerance; the error is measured as an RMS of err / (atol + rtol * |x|).
        rtol: dopri5 relative tolerance.
        return_path: return a ``Trajectory`` (times, states, nfe) instead of the final state.
        noise_scale: euler_maruyama only (default 1.0): diffusion g(t)^2 = noise_scale * (1 - t); 0 gives
            exactly the Euler ODE solution.
        generator: random generator for euler_maruyama's noise; ignored by the deterministic methods.
        enable_grad: record the autograd graph through all steps (optimise x0 or parameters through the
            solve, as in D-Flow); otherwise the solve runs under ``torch.no_grad()``.
        max_steps: dopri5 limit on attempted steps before raising RuntimeError.
        callback: called as ``callback(step, t, x)`` after every (accepted) step, e.g. for a progress bar.

    Returns:
        The final state [B, ...], or a ``Trajectory`` with times [S + 1], states [S + 1, B, ...] and nfe.

    Raises:
        ValueError / TypeError: bad arguments (unknown method, times outside [0, 1], non-monotone grid,
            non-finite x0, steps < 1, velocity of the wrong shape).
        FloatingPointError: the state became NaN/Inf during the solve (names the step and time).
        RuntimeError: dopri5 needed more than ``max_steps`` steps.
    """
    # 1. check the arguments
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    info = METHODS[method]
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a Tensor [B, ...], got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point Tensor, got dtype {x0.dtype}")
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be [B, ...] with B >= 1, got {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise ValueError(f"x0 must be finite, got {int((~torch.isfinite(x0)).sum())} NaN/Inf entries")
    if info.stochastic:
        noise_scale = 1.0 if noise_scale is None else float(noise_scale)
        if not (math.isfinite(noise_scale) and noise_scale >= 0.0):
            raise ValueError(f"noise_scale must be a finite float >= 0, got {noise_scale}")
    elif noise_scale is not None:
        raise ValueError(f"noise_scale applies to stochastic methods only (euler_maruyama), not {method!r}")
    if info.adaptive:
        if not (atol > 0.0 and rtol >= 0.0):
            raise ValueError(f"need atol > 0 and rtol >= 0, got atol={atol}, rtol={rtol}")
        _check_positive_int("max_steps", max_steps)
    grid = _resolve_grid(time_grid, steps, t_start, t_end, info.adaptive)
    f = _Field(velocity_fn, x0)

    # 2. solve
    with torch.set_grad_enabled(enable_grad):
        if info.adaptive:
            t0 = grid[0] if grid is not None else (0.0 if t_start is None else float(t_start))
            t1 = grid[-1] if grid is not None else (1.0 if t_end is None else float(t_end))
            return _solve_dopri5(f, x0, t0, t1, grid, atol, rtol, max_steps, return_path, callback)
        if info.stochastic:
            step_fn = functools.partial(_em_step, noise_scale=noise_scale, generator=generator)
        else:
            step_fn = _FIXED_STEPS[method]
        x = x0
        states = [x0] if return_path else None
        for i in range(len(grid) - 1):
            t, h = grid[i], grid[i + 1] - grid[i]
            x = step_fn(f, x, t, h)
            _check_finite(x, method, i, t, grid[i + 1])
            if states is not None:
                states.append(x)
            if callback is not None:
                callback(i, grid[i + 1], x)
    if not return_path:
        return x
    return Trajectory(torch.tensor(grid, dtype=torch.float64), torch.stack(states), f.nfe, len(grid) - 1)


def _solve_dopri5(
    f: _Field,
    x: Tensor,
    t0: float,
    t1: float,
    out_times: list[float] | None,
    atol: float,
    rtol: float,
    max_steps: int,
    return_path: bool,
    callback: Callable[[int, float, Tensor], None] | None,
) -> Tensor | Trajectory:
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    # Outputs: either the requested times (filled by dense output) or every accepted step.
    times, states = [t0], [x]
    next_out = 1  # index into out_times of the next time to report

    t = t0
    k1 = f(x, t)
    h = _initial_step(f, x, t, k1, direction, atol, rtol, span)
    err_prev = 1e-4  # Hairer's facold: previous accepted error, floored
    just_rejected = False
    attempts = n_accepted = n_rejected = 0
    while direction * (t1 - t) > 0.0:
        if attempts >= max_steps:
            raise RuntimeError(
                f"integrate(method='dopri5'): more than max_steps={max_steps} steps, stopped at t={t:.6g} "
                f"with step {h:.3g}; loosen atol/rtol ({atol}, {rtol}) or raise max_steps"
            )
        attempts += 1
        # Stretch the step onto t1 when within 1% of it, so that no sliver of a step is left over.
        last = abs(t1 - t) <= 1.01 * abs(h)
        if last:
            h = t1 - t

        # 1. the seven stages; stage 7 is f at the new state (FSAL: the next step's stage 1)
        ks = [k1]
        for i in range(1, 6):
            ks.append(f(_combo(x, h, _DP_A[i], ks), t + _DP_C[i] * h))
        x_new = _combo(x, h, _DP_A[6], ks)
        t_new = t1 if last else t + h
        ks.append(f(x_new, t_new))

        # 2. error norm: RMS of the embedded-pair difference, scaled per element (Hairer eq. II.4.11)
        err_vec = _combo(torch.zeros_like(x), h, _DP_E, ks)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        err = _rms(err_vec / scale)
        if not math.isfinite(err):
            raise FloatingPointError(
                f"integrate(method='dopri5'): non-finite state (NaN/Inf) in step {n_accepted} "
                f"(t {t:.6g} -> {t + h:.6g}); the velocity field diverged or returned NaN there"
            )

        # 3. PI step-size control (Hairer's DOPRI5): h_new = h * safety * err^-expo * err_prev^beta, bounded.
        fac_err = err**_EXPO
        fac = fac_err / err_prev**_BETA / _SAFETY  # inverse growth factor h / h_new
        fac = min(1.0 / _FAC_MIN, max(1.0 / _FAC_MAX, fac))
        if err <= 1.0:
            err_prev = max(err, 1e-4)
            h_new = h / fac
            if just_rejected:  # do not grow right after a rejection
                h_new = direction * min(abs(h_new), abs(h))
            if return_path and out_times is not None:
                while next_out < len(out_times) and direction * (out_times[next_out] - t_new) <= 0.0:
                    tau = out_times[next_out]
                    states.append(x_new if tau == t_new else _dense(x, x_new, ks, h, (tau - t) / h))
                    times.append(tau)
                    next_out += 1
            elif return_path:
                times.append(t_new)
                states.append(x_new)
            x, t, k1, h = x_new, t_new, ks[6], h_new
            n_accepted += 1
            just_rejected = False
            if callback is not None:
                callback(n_accepted - 1, t, x)
        else:
            h = h / min(1.0 / _FAC_MIN, fac_err / _SAFETY)
            n_rejected += 1
            just_rejected = True

    if not return_path:
        return x
    times_t = torch.tensor(times, dtype=torch.float64)  # [S + 1]
    return Trajectory(times_t, torch.stack(states), f.nfe, n_accepted, n_rejected)
