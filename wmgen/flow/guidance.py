"""Guidance during sampling, as wrappers around velocity functions.

Everything here takes velocity functions ``v(x [B, ...], t [B]) -> [B, ...]`` and returns one, so guidance
stacks outside the solver and never lives as a flag inside a model (DiT ``forward_with_cfg``,
flow_matching ``ModelWrapper``). Time follows DESIGN.md §2: t in [0, 1], t = 0 noise, t = 1 data, and
under the linear (CondOT) path the predicted clean sample is x1_hat = x_t + (1 - t) v.

Three pieces, in file order:

1. **Schedules** say *when* guidance acts: a profile lambda(t) [B], 0 meaning "no guidance" and 1 "full
   strength". Every guidance turns its nominal ``scale`` into a weight at time t by

       weight(t) = neutral + lambda(t) (scale - neutral)           (computed with torch.lerp)

   where ``neutral`` is the weight at which that guidance does nothing: 1 for CFG (plain conditional
   velocity) and 0 for gradient guidance and for negative-prompt weights. So the same ``Interval``
   switches CFG back to the conditional model and gradient guidance off, and a schedule composes with any
   guidance. No schedule means weight(t) = scale.
2. **Classifier-free guidance** (Ho & Salimans 2022): ``cfg``, ``multi_cfg`` (compositional, Liu et al.
   2022) and ``batched_cfg`` (both branches in one forward pass).
3. **Gradient guidance** from a differentiable cost on x1_hat: ``GradientGuidance`` (Feng et al. 2025;
   DPS, Chung et al. 2023; FlowChef), and ``guide`` to stack wrappers.

Example::

    v = cfg(lambda x, t: dit(x, t, context=text), lambda x, t: dit(x, t, context=null), 5.0, "dynamic_cfg")
    v = guide(v, GradientGuidance(physics_cost, 2.0, Interval(0.2, 0.9)))
    video_latent = integrate(v, noise, steps=32)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wmgen.flow.paths import AffinePath, CondOTScheduler

__all__ = [
    "VelocityFn",
    "VelocityWrapper",
    "ScheduleFn",
    "Constant",
    "Linear",
    "CosineDecay",
    "DynamicCFG",
    "Interval",
    "SCHEDULES",
    "make_schedule",
    "cfg",
    "multi_cfg",
    "batched_cfg",
    "GradientGuidance",
    "guide",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x [B, ...], t [B]) -> v [B, ...]
VelocityWrapper = Callable[[VelocityFn], VelocityFn]  # e.g. a GradientGuidance instance
ScheduleFn = Callable[[Tensor], Tensor]  # t [B] -> lambda(t) [B]
Scale = float | Tensor  # a number, a 0-d tensor, or one value per sample [B]
ScheduleLike = ScheduleFn | str | None  # a callable, a name in SCHEDULES, or None (constant weight)


# --------------------------------------------------------------------------------------------------------
# 1. Schedules: lambda(t), 0 = no guidance, 1 = full scale
# --------------------------------------------------------------------------------------------------------


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class Constant:
    """lambda(t) = value: guidance at a fixed fraction of its scale for the whole solve."""

    value: float = 1.0  # fraction of the guidance scale, 1 = full

    def __post_init__(self):
        if not math.isfinite(self.value):
            raise ValueError(f"value must be finite, got {self.value}")

    def __call__(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.value)


@dataclass(frozen=True)
class Linear:
    """lambda ramps linearly from ``start`` at ``t_start`` to ``end`` at ``t_end``, constant outside.

    The defaults give lambda(t) = 1 - t, one of the weightings of Feng et al. 2025 (strong guidance near
    the noise end, none at the data end). ``Linear(0.0, 1.0)`` ramps guidance in instead.
    """

    start: float = 1.0  # lambda at (and before) t_start
    end: float = 0.0  # lambda at (and after) t_end
    t_start: float = 0.0  # flow time where the ramp begins, in [0, 1]
    t_end: float = 1.0  # flow time where the ramp ends, in (t_start, 1]

    def __post_init__(self):
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError(f"start and end must be finite, got start={self.start}, end={self.end}")
        if not 0.0 <= self.t_start < self.t_end <= 1.0:
            raise ValueError(
                f"need 0 <= t_start < t_end <= 1, got t_start={self.t_start}, t_end={self.t_end}"
            )

    def __call__(self, t: Tensor) -> Tensor:
        frac = ((t - self.t_start) / (self.t_end - self.t_start)).clamp(0.0, 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class CosineDecay:
    """lambda(t) = cos(pi t / 2): 1 at the noise end, 0 at the data end (a weighting of Feng et al. 2025)."""

    def __call__(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)


@dataclass(frozen=True)
class DynamicCFG:
    """CogVideoX's cosine "dynamic CFG", lambda(t) = (1 - cos(pi (1 - t)^p)) / 2 with p = 5.

    CogVideoX (Yang et al. 2024) uses, at denoising step i of N (i = 0 the pure-noise step),
    w_i = 1 + g (1 - cos(pi ((N - i) / N)^5)) / 2, i.e. CFG weight 1 + g at the noise end falling to 1 at
    the data end. (N - i) / N is the fraction of the solve still ahead; with our t = 0 at the noise, that
    fraction is 1 - t on a uniform grid (t_i = i / N), which gives the continuous form above. On a shifted
    grid this uses the actual time t rather than the step index. CFG turns lambda into
    w(t) = 1 + lambda(t) (scale - 1), so CogVideoX's ``guidance_scale=g`` with dynamic CFG is
    ``cfg(..., scale=1 + g, schedule=DynamicCFG())``. This is the formula as written, in the step index;
    the released CogVideoX and diffusers code evaluate it at the raw timestep (0..999) instead, which makes
    the weight oscillate (diffusers issue #9641).
    """

    exponent: float = 5.0  # p: larger keeps the weight near its peak longer before it falls

    def __post_init__(self):
        if not self.exponent > 0:
            raise ValueError(f"exponent must be > 0, got {self.exponent}")

    def __call__(self, t: Tensor) -> Tensor:
        remaining = (1 - t).clamp(0.0, 1.0)  # fraction of the solve still ahead, (N - i) / N
        return 0.5 * (1 - torch.cos(math.pi * remaining**self.exponent))


@dataclass(frozen=True)
class Interval:
    """``inner``'s lambda for t in [t_lo, t_hi] (both edges included), 0 (no guidance) elsewhere.

    ``inner`` defaults to full strength, so ``Interval(0.0, 0.5)`` guides only the first half of the solve
    (coarse layout) and leaves the rest to the unguided model; ``Interval(0.1, 0.6, DynamicCFG())``
    restricts a cosine profile. Outside the interval CFG is the plain conditional velocity and gradient
    guidance is off.
    """

    t_lo: float  # first flow time where guidance acts
    t_hi: float  # last flow time where guidance acts
    inner: ScheduleFn | None = None  # profile inside the interval; None = 1

    def __post_init__(self):
        _check_unit_interval("t_lo", self.t_lo)
        _check_unit_interval("t_hi", self.t_hi)
        if self.t_lo > self.t_hi:
            raise ValueError(f"need t_lo <= t_hi, got t_lo={self.t_lo}, t_hi={self.t_hi}")
        if self.inner is not None and not callable(self.inner):
            raise TypeError(f"inner must be a schedule callable t [B] -> [B] or None, got {type(self.inner)}")

    def __call__(self, t: Tensor) -> Tensor:
        inside = (t >= self.t_lo) & (t <= self.t_hi)
        lam = torch.ones_like(t) if self.inner is None else _profile(self.inner, t)
        return torch.where(inside, lam, torch.zeros_like(lam))


SCHEDULES: dict[str, type] = {
    "constant": Constant,
    "linear": Linear,
    "cosine_decay": CosineDecay,
    "dynamic_cfg": DynamicCFG,
    "interval": Interval,
}


def make_schedule(name: str, **kwargs) -> ScheduleFn:
    """Build a schedule by name: ``make_schedule("interval", t_lo=0.0, t_hi=0.5)``."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](**kwargs)


def _resolve_schedule(schedule: ScheduleLike, name: str = "schedule") -> ScheduleFn | None:
    if isinstance(schedule, str):
        return make_schedule(schedule)
    if schedule is None or callable(schedule):
        return schedule
    raise TypeError(
        f"{name} must be a callable t [B] -> [B], a name in {list(SCHEDULES)} or None, got {schedule!r}"
    )


def _profile(schedule: ScheduleFn, t: Tensor) -> Tensor:
    lam = schedule(t)
    if not isinstance(lam, Tensor) or lam.shape != t.shape:
        got = tuple(lam.shape) if isinstance(lam, Tensor) else type(lam).__name__
        raise ValueError(f"schedule must map t {tuple(t.shape)} to a tensor of the same shape, got {got}")
    return lam


# --------------------------------------------------------------------------------------------------------
# Shared checks and the scale -> weight rule
# --------------------------------------------------------------------------------------------------------


def _check_scale(scale: Scale, name: str, *, nonnegative: bool = False) -> Scale:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor (0-d or [B]), got {type(scale).__name__}")
    if isinstance(scale, Tensor):
        if scale.ndim > 1 or not scale.is_floating_point():
            raise ValueError(
                f"{name} must be a floating 0-d or [B] tensor, got {scale.dtype} {tuple(scale.shape)}"
            )
        if not torch.isfinite(scale).all() or (nonnegative and (scale < 0).any()):
            raise ValueError(f"{name} must be finite{' and >= 0' if nonnegative else ''}, got {scale}")
        return scale
    if not math.isfinite(scale) or (nonnegative and scale < 0):
        raise ValueError(f"{name} must be finite{' and >= 0' if nonnegative else ''}, got {scale}")
    return float(scale)


def _check_t(x: Tensor, t: Tensor) -> Tensor:
    """t as [B] (a 0-d t is broadcast), checked against x [B, ...]."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a tensor [B], got {type(t).__name__}")
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be [B] with B={x.shape[0]}, got {tuple(t.shape)}")
    return t


def _check_velocity(v: Tensor, x: Tensor, name: str) -> Tensor:
    if not isinstance(v, Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{name} must return a velocity shaped like x {tuple(x.shape)}, got {got}")
    return v


def _weight(scale: Scale, schedule: ScheduleFn | None, t: Tensor, neutral: float, name: str) -> Tensor:
    """weight(t) = lerp(neutral, scale, lambda(t)) per sample, [B] in t's dtype (exact at lambda 0 and 1)."""
    (b,) = t.shape
    if isinstance(scale, Tensor):
        if scale.ndim == 1 and scale.shape[0] != b:
            raise ValueError(f"{name} must be 0-d or [B] with B={b}, got {tuple(scale.shape)}")
        s = scale.to(device=t.device, dtype=t.dtype).expand(b)
    else:
        s = torch.full((b,), scale, dtype=t.dtype, device=t.device)
    if schedule is None:
        return s
    lam = _profile(schedule, t).to(t.dtype)
    return torch.lerp(torch.full_like(s, neutral), s, lam)


def _per_sample(w: Tensor, like: Tensor) -> Tensor:
    return w.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)  # [B] -> [B, 1, ..., 1]


def _float_t(t: Tensor, x: Tensor) -> Tensor:
    # Weights in the more precise of t's and x's float types, so float64 states get float64 weights.
    return t.to(torch.promote_types(t.dtype, x.dtype))


# --------------------------------------------------------------------------------------------------------
# 2. Classifier-free guidance
# --------------------------------------------------------------------------------------------------------


def _combine(
    v_uncond: Tensor,
    conds: Sequence[tuple[Tensor, Tensor]],
    negative: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """v_uncond + sum_i w_i (v_ci - v_uncond) - w_neg (v_neg - v_uncond), each w [B].

    The first term is a torch.lerp, which is exact at its ends: weight 1 returns the conditional velocity
    and weight 0 the unconditional one bit for bit, so "CFG at scale 1 is the conditional model" holds
    exactly and a single-condition ``multi_cfg`` is ``cfg``.
    """
    v_c, w = conds[0]
    v = torch.lerp(v_uncond, v_c, _per_sample(w, v_c))
    for v_c, w in conds[1:]:
        v = v + _per_sample(w, v_c) * (v_c - v_uncond)
    if negative is not None:
        v_n, w_n = negative
        v = v - _per_sample(w_n, v_n) * (v_n - v_uncond)
    return v


def _check_callable(fn, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a velocity function (x [B, ...], t [B]) -> [B, ...], got {type(fn)}")


def cfg(
    v_cond: VelocityFn,
    v_uncond: VelocityFn,
    scale: Scale,
    schedule: ScheduleLike = None,
    *,
    v_negative: VelocityFn | None = None,
    negative_scale: Scale | None = None,
) -> VelocityFn:
    """Classifier-free guidance: v = v_uncond + w(t) (v_cond - v_uncond) (Ho & Salimans 2022).

    w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates away from the
    unconditional prediction. With a schedule, w(t) = 1 + lambda(t) (scale - 1) (1 is CFG's neutral).

    **Negative prompts.** The usual negative prompt is just ``v_uncond`` = the velocity under the negative
    condition: v = v_neg + w (v_cond - v_neg) pushes away from it. To keep a null-condition branch and
    weigh the negative condition separately, pass ``v_negative`` and ``negative_scale``:

        v = v_uncond + w (v_cond - v_uncond) - w_neg (v_neg - v_uncond),  w_neg(t) = lambda(t) negative_scale

    negative_scale = 0 is plain CFG; negative_scale = scale - 1 makes v_uncond cancel and gives exactly the
    usual v_neg + w (v_cond - v_neg). Outside a schedule's interval both weights are neutral and v = v_cond.

    Args:
        v_cond: velocity under the condition, (x [B, ...], t [B]) -> [B, ...].
        v_uncond: velocity under the null (or negative) condition.
        scale: guidance weight w: a number, a 0-d tensor or one weight per sample [B].
        schedule: lambda(t) (see module docstring), a name in ``SCHEDULES``, or None for w(t) = scale.
        v_negative: optional velocity under a negative condition, used with ``negative_scale``.
        negative_scale: weight of the negative condition (>= 0 pushes away from it); required with
            ``v_negative``.
    Returns:
        the guided velocity function (x [B, ...], t [B]) -> [B, ...]. Each call evaluates every branch
        once; see ``batched_cfg`` to do it in one forward pass.
    """
    _check_callable(v_cond, "v_cond")
    _check_callable(v_uncond, "v_uncond")
    scale = _check_scale(scale, "scale")
    schedule = _resolve_schedule(schedule)
    if (v_negative is None) != (negative_scale is None):
        raise ValueError("v_negative and negative_scale must be given together (or neither)")
    if v_negative is not None:
        _check_callable(v_negative, "v_negative")
        negative_scale = _check_scale(negative_scale, "negative_scale")

    def cfg_velocity(x: Tensor, t: Tensor) -> Tensor:
        t = _check_t(x, t)
        tw = _float_t(t, x)
        w = _weight(scale, schedule, tw, 1.0, "scale")
        v_c = _check_velocity(v_cond(x, t), x, "v_cond")
        v_u = _check_velocity(v_uncond(x, t), x, "v_uncond")
        negative = None
        if v_negative is not None:
            v_n = _check_velocity(v_negative(x, t), x, "v_negative")
            negative = (v_n, _weight(negative_scale, schedule, tw, 0.0, "negative_scale"))
        return _combine(v_u, [(v_c, w)], negative)

    return cfg_velocity


def multi_cfg(
    v_uncond: VelocityFn,
    conditions: Sequence[tuple[VelocityFn, Scale] | tuple[VelocityFn, Scale, ScheduleLike]],
    schedule: ScheduleLike = None,
) -> VelocityFn:
    """Compositional guidance over several conditions: v = v_uncond + sum_i w_i(t) (v_ci - v_uncond).

    Liu et al. 2022 ("Compositional Visual Generation with Composable Diffusion Models", conjunction):
    each condition adds its own direction with its own weight, e.g. a text prompt and a control signal.
    Each w_i(t) = 1 + lambda_i(t) (s_i - 1), where lambda_i is the condition's own schedule (third tuple
    entry) or else the shared ``schedule``. With one condition this is ``cfg`` exactly. With all weights 1
    (e.g. outside every interval) it is the unguided product of the conditionals, v_uncond + sum_i
    (v_ci - v_uncond). A negative weight pushes away from a condition ("NOT").

    Args:
        v_uncond: velocity under the null condition, (x [B, ...], t [B]) -> [B, ...].
        conditions: non-empty list of ``(v_ci, s_i)`` or ``(v_ci, s_i, schedule_i)``.
        schedule: lambda(t) for conditions without their own; None = constant weights.
    Returns:
        the guided velocity function.
    """
    _check_callable(v_uncond, "v_uncond")
    if isinstance(conditions, (str, bytes)) or not isinstance(conditions, Sequence) or len(conditions) == 0:
        raise ValueError(
            f"conditions must be a non-empty list of (v_cond, scale[, schedule]), got {conditions!r}"
        )
    shared = _resolve_schedule(schedule)
    terms = []
    for i, item in enumerate(conditions):
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ValueError(
                f"conditions[{i}] must be (v_cond, scale) or (v_cond, scale, schedule), got {item!r}"
            )
        _check_callable(item[0], f"conditions[{i}][0]")
        own = _resolve_schedule(item[2], f"conditions[{i}][2]") if len(item) == 3 else shared
        terms.append((item[0], _check_scale(item[1], f"conditions[{i}] scale"), own))

    def multi_cfg_velocity(x: Tensor, t: Tensor) -> Tensor:
        t = _check_t(x, t)
        tw = _float_t(t, x)
        v_u = _check_velocity(v_uncond(x, t), x, "v_uncond")
        conds = [
            (
                _check_velocity(fn(x, t), x, f"conditions[{i}][0]"),
                _weight(s, sch, tw, 1.0, f"conditions[{i}] scale"),
            )
            for i, (fn, s, sch) in enumerate(terms)
        ]
        return _combine(v_u, conds)

    return multi_cfg_velocity


def _cond_batch(cond: Tensor, b: int, name: str) -> Tensor:
    if not isinstance(cond, Tensor) or cond.ndim == 0:
        raise TypeError(f"{name} must be a tensor with a batch dimension [B, ...] or [1, ...], got {cond!r}")
    if cond.shape[0] == b:
        return cond
    if cond.shape[0] == 1:
        return cond.expand(b, *cond.shape[1:])
    raise ValueError(f"{name} must have batch size B={b} or 1, got {tuple(cond.shape)}")


def batched_cfg(
    model_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    cond: Tensor,
    null_cond: Tensor,
    scale: Scale,
    schedule: ScheduleLike = None,
    *,
    negative_cond: Tensor | None = None,
    negative_scale: Scale | None = None,
) -> VelocityFn:
    """``cfg`` with all branches in one forward pass: the batch is concatenated along dim 0.

    Calls ``model_fn(cat[x, x], cat[t, t], cat[cond, null_cond])`` once (three blocks with a negative
    condition) and splits the output, as DiT's ``forward_with_cfg`` does. Same numbers as ``cfg`` with two
    calls, up to floating-point reassociation inside a batched kernel; twice the activation memory.

    Args:
        model_fn: (x [k B, ...], t [k B], cond [k B, ...]) -> v [k B, ...].
        cond: condition [B, ...] or [1, ...] (broadcast over the batch), e.g. text tokens [B, Lc, Dc].
        null_cond: null condition (empty prompt), same trailing shape; or the negative prompt's embedding
            for the usual negative-prompt CFG.
        scale, schedule: as in ``cfg``.
        negative_cond, negative_scale: optional separate negative condition, as ``v_negative`` in ``cfg``.
    Returns:
        the guided velocity function (x [B, ...], t [B]) -> [B, ...].
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable (x, t, cond) -> v, got {type(model_fn)}")
    scale = _check_scale(scale, "scale")
    schedule = _resolve_schedule(schedule)
    if (negative_cond is None) != (negative_scale is None):
        raise ValueError("negative_cond and negative_scale must be given together (or neither)")
    if negative_scale is not None:
        negative_scale = _check_scale(negative_scale, "negative_scale")
    conds = [cond, null_cond] + ([] if negative_cond is None else [negative_cond])
    names = ["cond", "null_cond", "negative_cond"]
    for c, n in zip(conds, names, strict=False):
        if not isinstance(c, Tensor) or c.ndim == 0:
            raise TypeError(f"{n} must be a tensor with a batch dimension [B, ...], got {type(c).__name__}")
        if c.shape[1:] != cond.shape[1:]:
            raise ValueError(
                f"{n} must have cond's trailing shape {tuple(cond.shape[1:])}, got {tuple(c.shape)}"
            )

    def batched_cfg_velocity(x: Tensor, t: Tensor) -> Tensor:
        t = _check_t(x, t)
        b, k = x.shape[0], len(conds)
        c = torch.cat([_cond_batch(ci, b, n) for ci, n in zip(conds, names, strict=False)])  # [k B, ...]
        v_all = model_fn(torch.cat([x] * k), torch.cat([t] * k), c)  # [k B, ...]
        if not isinstance(v_all, Tensor) or v_all.shape != (k * b, *x.shape[1:]):
            got = tuple(v_all.shape) if isinstance(v_all, Tensor) else type(v_all).__name__
            raise ValueError(f"model_fn must return [{k}B, ...] = {(k * b, *x.shape[1:])}, got {got}")
        v_c, v_u, *rest = v_all.split(b)  # k x [B, ...]
        tw = _float_t(t, x)
        w = _weight(scale, schedule, tw, 1.0, "scale")
        negative = (rest[0], _weight(negative_scale, schedule, tw, 0.0, "negative_scale")) if rest else None
        return _combine(v_u, [(v_c, w)], negative)

    return batched_cfg_velocity


# --------------------------------------------------------------------------------------------------------
# 3. Gradient guidance
# --------------------------------------------------------------------------------------------------------

_TINY = 1e-12  # guards the division in per-sample normalisation; a zero gradient stays zero


class GradientGuidance:
    """Steer the flow down the gradient of a cost on the predicted clean sample.

    Wraps a velocity function: ``guided = GradientGuidance(cost, 2.0)(velocity_fn)`` returns

        v'(x_t, t) = v(x_t, t) - scale * lambda(t) * g(x_t, t),    g = d cost / d (x1_hat or x_t)

    with x1_hat = ``path.velocity_to_x1(v, x_t, t)`` (CondOT: x_t + (1 - t) v). Sign and scale follow
    Feng et al. 2025 ("On the Guidance of Flow Matching", ICML; v' = v + s lambda(t) g with g = -grad J for
    a cost J): the cost is *lower is better*, the guidance term descends it, ``scale`` s >= 0 is in
    velocity units per unit of gradient, and lambda(t) is the schedule (their choices: constant,
    ``Linear()`` = 1 - t, ``CosineDecay()`` = cos(pi t / 2)). Over a step of length dt the guidance moves
    x_t by -s lambda g dt. To maximise a reward R, pass cost = -R.

    Two gradients:

    - ``through_model=False`` (FlowChef; Feng et al.'s grad-wrt-x1_hat variant): g = grad of cost at
      x1_hat, with x1_hat computed from a detached velocity. One network call per step and no backprop
      through the network: the network Jacobian in d x1_hat / d x_t = I + (1 - t) dv/dx_t is dropped.
    - ``through_model=True`` (DPS, Chung et al. 2023; FreeDoM; Universal Guidance): g = grad with respect
      to x_t of cost(x1_hat(x_t)), backpropagating through the network: exact for the one-step estimate,
      about three times the cost of a forward pass.

    ``normalize=True`` replaces g by g / ||g|| per sample, so ``scale`` is the step length in velocity
    units whatever the cost's magnitude. (DPS's own step, zeta grad ||y - A(x1_hat)||, is the gradient of
    the *unsquared* residual norm: pass that norm as the cost to reproduce it.) ``clip_norm`` then caps the
    per-sample norm of g (after normalisation when both are set). Norms are over all non-batch dims.

    Autograd: works when the solve runs under ``torch.no_grad()`` (gradients are taken inside a local
    ``torch.enable_grad()``) and keeps nothing across steps: g is computed without ``create_graph``, so
    an outer wrapper or a solve with gradients enabled treats the guidance term as a constant (no
    second-order terms), while the returned v stays attached to the caller's graph when grad mode is on.
    Parameter ``.grad`` fields are never touched (``torch.autograd.grad``, not ``backward``).

    Args:
        cost: x1_hat [B, ...] -> [B], differentiable, lower is better (e.g. a physics constraint).
        scale: guidance strength s >= 0: a number, 0-d tensor or per-sample [B] tensor.
        schedule: lambda(t) (0 = off), a name in ``SCHEDULES``, or None for lambda = 1.
        through_model: differentiate through the network (True) or only through the cost (False).
        path: probability path used for x1_hat; defaults to CondOT.
        clip_norm: optional cap on the per-sample gradient norm, > 0.
        normalize: use the unit-norm direction g / ||g|| per sample.

    Example::

        target = torch.zeros(1, 16, 5, 8, 8)
        reach = GradientGuidance(lambda x1: ((x1 - target) ** 2).flatten(1).sum(1), 0.5, Interval(0.0, 0.8))
        x1 = integrate(guide(model_velocity, reach), noise, steps=32)
    """

    def __init__(
        self,
        cost: Callable[[Tensor], Tensor],
        scale: Scale,
        schedule: ScheduleLike = None,
        *,
        through_model: bool = False,
        path: AffinePath | None = None,
        clip_norm: float | None = None,
        normalize: bool = False,
    ):
        if not callable(cost):
            raise TypeError(f"cost must be callable x1_hat [B, ...] -> [B], got {type(cost).__name__}")
        if path is not None and not isinstance(path, AffinePath):
            raise TypeError(f"path must be an AffinePath or None, got {type(path).__name__}")
        if clip_norm is not None:
            if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)):
                raise TypeError(f"clip_norm must be a number > 0 or None, got {type(clip_norm).__name__}")
            if not (math.isfinite(clip_norm) and clip_norm > 0):
                raise ValueError(f"clip_norm must be a finite number > 0 or None, got {clip_norm}")
        self.cost = cost
        self.scale = _check_scale(scale, "scale", nonnegative=True)
        self.schedule = _resolve_schedule(schedule)
        self.through_model = bool(through_model)
        self.path = path if path is not None else AffinePath(CondOTScheduler())
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        return (
            f"GradientGuidance(cost={getattr(self.cost, '__name__', type(self.cost).__name__)}, "
            f"scale={self.scale}, schedule={self.schedule}, through_model={self.through_model}, "
            f"clip_norm={self.clip_norm}, normalize={self.normalize})"
        )

    def __call__(self, velocity_fn: VelocityFn) -> VelocityFn:
        _check_callable(velocity_fn, "velocity_fn")

        def guided_velocity(x: Tensor, t: Tensor) -> Tensor:
            t = _check_t(x, t)
            w = _weight(self.scale, self.schedule, _float_t(t, x), 0.0, "scale")  # [B]
            if not bool((w != 0).any()):  # inactive here (interval, zero scale): skip all autograd work
                return _check_velocity(velocity_fn(x, t), x, "velocity_fn")
            v, g = self._velocity_and_gradient(velocity_fn, x, t)
            return v - _per_sample(w, v) * self._condition(g)

        return guided_velocity

    # -- helpers, in call order --------------------------------------------------------------------------

    def _cost(self, x1_hat: Tensor) -> Tensor:
        c = self.cost(x1_hat)
        if not isinstance(c, Tensor) or c.shape != (x1_hat.shape[0],):
            got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"cost must return one value per sample, [B] = [{x1_hat.shape[0]}], got {got}")
        if not c.requires_grad:
            raise ValueError(
                "cost must be differentiable with respect to x1_hat, but its output has no gradient "
                "(does it detach, go through numpy or .item(), or not use its input?)"
            )
        return c

    def _velocity_and_gradient(self, velocity_fn: VelocityFn, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v [B, ...], g [B, ...]). With grad mode off outside, nothing the caller computes from v carries a
        graph, so the graph built here dies with this call; with it on, v stays on the caller's graph."""
        outer_grad = torch.is_grad_enabled()
        if self.through_model:
            with torch.enable_grad():
                # Differentiate with respect to x itself when an outer computation already tracks it, so
                # the returned v keeps that graph; otherwise a fresh leaf.
                x_in = x if x.requires_grad else x.detach().requires_grad_(True)
                v = _check_velocity(velocity_fn(x_in, t), x, "velocity_fn")
                c = self._cost(self.path.velocity_to_x1(v, x_in, t))
                (g,) = torch.autograd.grad(c.sum(), x_in, retain_graph=outer_grad)
            return v, g
        v = _check_velocity(velocity_fn(x, t), x, "velocity_fn")
        with torch.enable_grad():
            x1_hat = self.path.velocity_to_x1(v.detach(), x.detach(), t).requires_grad_(True)
            (g,) = torch.autograd.grad(self._cost(x1_hat).sum(), x1_hat)
        return v, g

    def _condition(self, g: Tensor) -> Tensor:
        if self.normalize:
            g = g / _per_sample(g.flatten(1).norm(dim=1).clamp_min(_TINY), g)
        if self.clip_norm is not None:
            factor = (self.clip_norm / g.flatten(1).norm(dim=1).clamp_min(_TINY)).clamp(max=1.0)  # [B]
            g = g * _per_sample(factor, g)
        return g


def guide(velocity_fn: VelocityFn, *wrappers: VelocityWrapper) -> VelocityFn:
    """Apply guidance wrappers in order, the first innermost: ``guide(v, a, b)`` is ``b(a(v))``.

    The one way to stack guidance: build the base velocity (a model call, or ``cfg(...)`` of two), then
    list the wrappers (``GradientGuidance`` instances, or any callable VelocityFn -> VelocityFn). Inner
    wrappers see the raw velocity; an outer ``GradientGuidance`` with ``through_model=True``
    differentiates through the inner ones, treating their gradient terms as constants.
    """
    _check_callable(velocity_fn, "velocity_fn")
    for i, wrap in enumerate(wrappers):
        if not callable(wrap):
            raise TypeError(
                f"wrappers[{i}] must be callable VelocityFn -> VelocityFn, got {type(wrap).__name__}"
            )
        velocity_fn = wrap(velocity_fn)
        _check_callable(velocity_fn, f"wrappers[{i}](...)")
    return velocity_fn
