"""Exact log-likelihood of a flow by integrating the continuity equation backwards in time.

Along a trajectory of dx/dt = v(x, t) the log-density obeys d log p_t(x_t) / dt = -div v(x_t, t) (the
instantaneous change of variables, Chen et al. 2018, thm. 1), so

    log p_1(x_1) = log p_0(x_0) - int_0^1 div v(x_t, t) dt.

We integrate the augmented state (x, l) with dl/dt = div v from t = 1 (l = 0) back to t = 0; then
l(0) = -int_0^1 div v dt and log p_1(x_1) = log p_0(x_0) + l(0). The divergence is exact (one backward pass
per dimension: fine for low D) or Hutchinson's estimate E[eps^T J eps] with probes drawn once per solve
(Grathwohl et al. 2019, FFJORD), so that adaptive solvers see a fixed ODE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .solvers import METHODS, VelocityFn, integrate

__all__ = ["divergence", "log_likelihood", "standard_normal_log_prob"]

PROBES = ("rademacher", "gaussian")


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over all but the batch dimension: x [B, ...] -> [B]."""
    flat = x.flatten(1)  # [B, D]
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def divergence(
    velocity_fn: VelocityFn, x: Tensor, t: Tensor, probes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Velocity and its divergence with respect to x.

    Assumes samples do not interact (v of sample b depends on x[b] only), as for any per-sample model.

    Args:
        velocity_fn: ``(x [B, ...], t [B]) -> v [B, ...]``.
        x: points [B, ...].
        t: times [B].
        probes: None for the exact divergence (one backward pass per dimension), or Hutchinson probes
            [P, B, ...] with E[eps eps^T] = I: the estimate is mean_p eps_p^T (dv/dx) eps_p.

    Returns:
        v [B, ...] and div v [B], both detached.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity_fn(x, t)
        if v.shape != x.shape:
            raise ValueError(
                f"velocity_fn must return v shaped like x {tuple(x.shape)}, got {tuple(v.shape)}"
            )
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)  # [B]
        if probes is None:
            v_flat = v.flatten(1)  # [B, D]
            for i in range(v_flat.shape[1]):
                (g,) = torch.autograd.grad(v_flat[:, i].sum(), x, retain_graph=True)
                div = div + g.flatten(1)[:, i]  # d v_i / d x_i
        else:
            for eps in probes:
                (g,) = torch.autograd.grad(v, x, grad_outputs=eps, retain_graph=True)  # eps^T J
                div = div + (g * eps).flatten(1).sum(1)
            div = div / probes.shape[0]
    return v.detach(), div.detach()


def log_likelihood(
    velocity_fn: VelocityFn,
    x1: Tensor,
    *,
    log_p0: Callable[[Tensor], Tensor] | None = None,
    method: str = "dopri5",
    steps: int | None = None,
    exact_divergence: bool = True,
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    max_steps: int = 10_000,
    return_x0: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """log p_1(x1) of the flow dx/dt = velocity_fn(x, t) whose source density is ``log_p0``.

    Args:
        velocity_fn: ``(x [B, ...], t [B]) -> v [B, ...]``; samples must not interact.
        x1: data points [B, ...].
        log_p0: source log-density, x0 [B, ...] -> [B]; default ``standard_normal_log_prob`` (N(0, I)).
        method: a deterministic method of ``METHODS`` (dopri5 by default).
        steps: fixed-step methods: number of steps (default 32); dopri5: ignored unless given, see
            ``integrate``.
        exact_divergence: exact divergence (D backward passes per evaluation) or Hutchinson's estimate.
        n_probes: Hutchinson probes per evaluation (averaged); the same probes are used for the whole solve.
        probe: "rademacher" (+-1 entries, lower variance) or "gaussian".
        generator: random generator for the probes.
        atol: dopri5 absolute tolerance on the augmented state (x, log-density change).
        rtol: dopri5 relative tolerance.
        max_steps: dopri5 step limit.
        return_x0: also return the source point x0 [B, ...] that x1 maps back to.

    Returns:
        log p_1(x1) [B], or (log p_1(x1) [B], x0 [B, ...]) with ``return_x0``.
    """
    # 1. check the arguments
    if method not in METHODS or METHODS[method].stochastic:
        valid = [m for m, info in METHODS.items() if not info.stochastic]
        raise ValueError(f"method must be a deterministic solver, one of {valid}, got {method!r}")
    if not isinstance(x1, Tensor) or not x1.is_floating_point() or x1.ndim < 2:
        got = f"{x1.dtype} {tuple(x1.shape)}" if isinstance(x1, Tensor) else type(x1).__name__
        raise ValueError(f"x1 must be a floating-point Tensor [B, ...] with at least one data dim, got {got}")
    if not exact_divergence:
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {list(PROBES)}, got {probe!r}")
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes must be an int >= 1, got {n_probes!r}")
    log_p0 = standard_normal_log_prob if log_p0 is None else log_p0
    shape, batch = x1.shape, x1.shape[0]
    dim = x1[0].numel()

    # 2. Hutchinson probes, fixed for the whole solve
    probes = None
    if not exact_divergence:
        pshape = (n_probes, *shape)
        if probe == "rademacher":
            probes = torch.randint(0, 2, pshape, generator=generator, device=x1.device).to(x1.dtype) * 2 - 1
        else:
            probes = torch.randn(pshape, generator=generator, dtype=x1.dtype, device=x1.device)

    # 3. augmented ODE z = [x, l] [B, D + 1], dl/dt = div v, solved by the same integrate() from t=1 to t=0
    def augmented(z: Tensor, t: Tensor) -> Tensor:
        v, div = divergence(velocity_fn, z[:, :dim].reshape(shape), t, probes)
        return torch.cat([v.flatten(1), div[:, None]], dim=1)  # [B, D + 1]

    z1 = torch.cat([x1.detach().flatten(1), x1.new_zeros(batch, 1)], dim=1)  # [B, D + 1]
    z0 = integrate(
        augmented, z1, method=method, steps=steps, t_start=1.0, t_end=0.0, atol=atol, rtol=rtol,
        max_steps=max_steps,
    )
    x0 = z0[:, :dim].reshape(shape)
    lp0 = log_p0(x0)
    if not isinstance(lp0, Tensor) or lp0.shape != (batch,):
        got = tuple(lp0.shape) if isinstance(lp0, Tensor) else type(lp0).__name__
        raise ValueError(f"log_p0 must return [B] with B={batch}, got {got}")
    log_p1 = lp0 + z0[:, dim]  # log p1(x1) = log p0(x0) - int_0^1 div v dt
    return (log_p1, x0) if return_x0 else log_p1
