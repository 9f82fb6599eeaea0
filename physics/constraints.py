"""Differentiable physics constraints on 3D trajectories, usable as guidance costs.

Every cost maps a trajectory ``x`` [B, T, N, 3] (world frame, z up, metres, frames ``dt`` seconds apart;
DESIGN.md §2) to a cost [B], lower is better, and is differentiable w.r.t. ``x``, so it plugs into
``GradientGuidance(cost, ...)`` (bind the keyword arguments with ``functools.partial``). Each cost is zero
to float precision on simulator ground truth of the material whose law it encodes, and positive when the
motion breaks that law:

=======================  ===========================================  ======================================
cost                     law                                          zero on
=======================  ===========================================  ======================================
``floor_penetration``    nothing goes below the floor                 any ground truth
``free_fall``            every point accelerates at g off contact     non-spinning bodies in flight
``rigidity``             pairwise distances stay as in frame 0        rigid bodies
``volume_preservation``  det of the best-fit affine map stays 1       rigid / incompressible bodies
``momentum``             centre of mass accelerates at g + F / m      any body (and material) in flight
``smoothness``           small finite-difference jerk                 ballistic motion; also for 2D tracks
=======================  ===========================================  ======================================

Objects are told apart by ``object_ids`` ([N] or [B, N] int, ids ``0..K-1``; a negative id marks a
padding point that every cost ignores). Without ids all N points form one body. Contact with the floor is
detected from the trajectory itself (see ``free_stencils``) and is never differentiated; contact between
two objects is not detected: pass ``free`` to override the detector where that matters.

Example::

    pairs = sample_pairs(N, 512, object_ids=ids, generator=g)
    cost = combine({"rigid": (1.0, functools.partial(rigidity, pairs=pairs)),
                    "floor": (10.0, floor_penetration)})
    cost(x)  # [B]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "GRAVITY",
    "combine",
    "floor_penetration",
    "free_fall",
    "free_stencils",
    "momentum",
    "rigidity",
    "sample_pairs",
    "smoothness",
    "volume_preservation",
]

GRAVITY = (0.0, 0.0, -9.81)  # standard gravity in the z-up world frame (m/s^2)

Cost = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------------
# helpers: input checks, object membership, contact detection
# ---------------------------------------------------------------------------------------------------------


def _check_trajectory(x: Tensor, min_frames: int = 1, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be [B, T, N, 3], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[1] < min_frames:
        raise ValueError(f"{name} needs at least {min_frames} frames (dim 1), got {tuple(x.shape)}")


def _check_dt(dt: float) -> None:
    if not dt > 0:
        raise ValueError(f"dt must be > 0 seconds, got {dt!r}")


def _object_weights(object_ids: Tensor | None, batch: int, num_points: int, like: Tensor) -> Tensor:
    """One-hot membership [B, N, K] (dtype of ``like``); negative ids get an all-zero row."""
    if object_ids is None:
        return like.new_ones(batch, num_points, 1)
    if not isinstance(object_ids, Tensor) or object_ids.is_floating_point() or object_ids.dtype == torch.bool:
        got = getattr(object_ids, "dtype", type(object_ids).__name__)
        raise TypeError(f"object_ids must be an integer tensor, got {got}")
    if object_ids.shape not in ((num_points,), (batch, num_points)):
        raise ValueError(
            f"object_ids must be [N] or [B, N] with B={batch}, N={num_points}, got {tuple(object_ids.shape)}"
        )
    ids = object_ids.to(like.device).long().expand(batch, num_points)  # (B, N)
    num_objects = int(ids.max().item()) + 1 if ids.numel() else 0
    if num_objects <= 0:
        raise ValueError("object_ids must contain at least one id >= 0 (negative ids mark padding)")
    weights = torch.nn.functional.one_hot(ids.clamp(min=0), num_objects).to(like.dtype)  # (B, N, K)
    return weights * (ids >= 0).unsqueeze(-1).to(like.dtype)


def _gravity(gravity: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    g = torch.as_tensor(gravity, dtype=like.dtype, device=like.device)
    if g.shape != (3,):
        raise ValueError(f"gravity must be a 3-vector (m/s^2), got shape {tuple(g.shape)}")
    return g


def _second_difference(x: Tensor, dt: float) -> Tensor:
    """Central finite-difference acceleration at frames 1..T-2: [B, T, ...] -> [B, T-2, ...]."""
    return (x[:, 2:] - 2.0 * x[:, 1:-1] + x[:, :-2]) / (dt * dt)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is set, per batch element: [B, ...] -> [B] (0 where empty)."""
    mask = mask.to(values.dtype)
    dims = tuple(range(1, values.ndim))
    return (values * mask).sum(dims) / mask.sum(dims).clamp(min=1.0)


@torch.no_grad()
def free_stencils(
    x: Tensor,
    *,
    dt: float,
    gravity: Sequence[float] | Tensor = GRAVITY,
    floor_height: float = 0.0,
    margin: float = 0.02,
    object_ids: Tensor | None = None,
) -> Tensor:
    """Which objects are in free flight over each 3-frame stencil (t-1, t, t+1).

    A body is free when every one of its points stays more than ``margin`` above the floor at the three
    frames *and* on the free-flight extrapolations ``2 x_t - x_{t-1} + g dt^2`` (forward) and
    ``2 x_t - x_{t+1} + g dt^2`` (backward): a bounce between two frames can leave both frames above the
    floor, but then the unobstructed parabola would have passed below it (a concave-down parabola keeps
    falling after it reaches the floor), so one extrapolation lands under the floor.

    Args:
        x: trajectories [B, T, N, 3].
        dt: time between frames (s).
        gravity: gravity vector (m/s^2); only its z component is used here.
        floor_height: z of the floor plane (m).
        margin: clearance (m) required above the floor; covers the gap between sampled points and the
            true surface. For MPM trajectories use at least 1.5 grid cells: the floor acts on grid nodes,
            and a particle's quadratic B-spline stencil reaches 1.5 cells down.
        object_ids: [N] or [B, N] ints, negative for padding; None = one body.

    Returns:
            [B, T-2, K] bool, True where object k is free over the stencil centred at frame t (t = 1..T-2).
    """
    _check_trajectory(x, min_frames=3)
    _check_dt(dt)
    g_z = float(_gravity(gravity, x)[2])
    z = x[..., 2]  # (B, T, N)
    ahead = 2 * z[:, 1:-1] - z[:, :-2] + g_z * dt * dt  # free-flight guess of z_{t+1}
    behind = 2 * z[:, 1:-1] - z[:, 2:] + g_z * dt * dt  # free-flight guess of z_{t-1}
    low = torch.stack([z[:, :-2], z[:, 1:-1], z[:, 2:], ahead, behind]).amin(0)  # (B, T-2, N)
    touching = (low <= floor_height + margin).to(x.dtype)
    weights = _object_weights(object_ids, x.shape[0], x.shape[2], x)  # (B, N, K)
    hits = torch.einsum("btn,bnk->btk", touching, weights)  # (B, T-2, K)
    present = weights.sum(1).unsqueeze(1) > 0  # (B, 1, K)
    return (hits == 0) & present


# ---------------------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------------------


def floor_penetration(
    x: Tensor, *, floor_height: float = 0.0, tolerance: float = 0.0, object_ids: Tensor | None = None
) -> Tensor:
    """Mean squared depth below the floor, ``relu(h - z)^2`` (PhysCtrl's floor penalty), over points/frames.

    Args:
        x: trajectories [B, T, N, 3].
        floor_height: z of the floor (m).
        tolerance: penetration (m) that costs nothing (simulators let particles sink a little).
        object_ids: [N] or [B, N]; only negative ids matter here (padding points are ignored).

    Returns:
        [B] cost (m^2).
    """
    _check_trajectory(x)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 m, got {tolerance!r}")
    depth = torch.relu(floor_height - tolerance - x[..., 2])  # (B, T, N)
    keep = _object_weights(object_ids, x.shape[0], x.shape[2], x).sum(-1)  # (B, N)
    return _masked_mean(depth.square(), keep.unsqueeze(1).expand_as(depth))


def free_fall(
    x: Tensor,
    *,
    dt: float,
    gravity: Sequence[float] | Tensor = GRAVITY,
    floor_height: float = 0.0,
    margin: float = 0.02,
    object_ids: Tensor | None = None,
    free: Tensor | None = None,
) -> Tensor:
    """Ballistic consistency: every point of a body in flight accelerates at g.

    The acceleration is the central second difference over frames. Points of a spinning body also carry
    centripetal acceleration, so this cost suits non-spinning flight; ``momentum`` (centre of mass) holds
    for any body.

    Args:
        x: trajectories [B, T, N, 3], T >= 3.
        dt: time between frames (s).
        gravity: gravity vector (m/s^2).
        floor_height, margin: floor plane and clearance for the contact detector (``free_stencils``).
        object_ids: [N] or [B, N] ints (negative = padding); None = one body.
        free: optional [B, T-2, K] bool overriding the contact detector.

    Returns:
        [B] mean squared acceleration error (m^2/s^4) over free points and stencils (0 if none is free).
    """
    _check_trajectory(x, min_frames=3)
    _check_dt(dt)
    weights = _object_weights(object_ids, x.shape[0], x.shape[2], x)  # (B, N, K)
    if free is None:
        free = free_stencils(
            x, dt=dt, gravity=gravity, floor_height=floor_height, margin=margin, object_ids=object_ids
        )
    elif free.shape != (x.shape[0], x.shape[1] - 2, weights.shape[-1]):
        raise ValueError(
            f"free must be [B, T-2, K] = {(x.shape[0], x.shape[1] - 2, weights.shape[-1])}, "
            f"got {tuple(free.shape)}"
        )
    point_free = torch.einsum("btk,bnk->btn", free.to(x.dtype), weights)  # (B, T-2, N)
    error = (_second_difference(x, dt) - _gravity(gravity, x)).square().sum(-1)  # (B, T-2, N)
    return _masked_mean(error, point_free)


def sample_pairs(
    num_points: int,
    num_pairs: int,
    *,
    object_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random point pairs (i, j), i != j, both on the same object, for ``rigidity``.

    Args:
        num_points: N.
        num_pairs: P, the number of pairs to draw (with replacement).
        object_ids: [N] ints (negative = padding, never drawn); None = one body.
        generator: torch.Generator for reproducible pairs.

    Returns:
        [P, 2] int64 indices into the N points.
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
    if object_ids is None:
        object_ids = torch.zeros(num_points, dtype=torch.long)
    ids = object_ids.detach().cpu().long()
    if ids.shape != (num_points,):
        raise ValueError(f"object_ids must be [N] with N={num_points}, got {tuple(ids.shape)}")
    valid = torch.nonzero(ids >= 0).squeeze(1)
    order = valid[torch.argsort(ids[valid], stable=True)]  # points grouped by object
    _, counts = torch.unique_consecutive(ids[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    eligible = counts >= 2  # a one-point object has no pair
    if not bool(eligible.any()):
        raise ValueError("object_ids: no object has two or more points to pair")
    # i: uniform over points of eligible objects; j: uniform over the other points of i's object
    point_group = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (M,)
    candidates = torch.nonzero(eligible[point_group]).squeeze(1)
    pick = torch.randint(len(candidates), (num_pairs,), generator=generator)
    slot_i = candidates[pick]
    group = point_group[slot_i]
    offset_i = slot_i - starts[group]
    step = 1 + (torch.rand(num_pairs, generator=generator) * (counts[group] - 1)).long().clamp(
        max=counts[group] - 2
    )
    slot_j = starts[group] + (offset_i + step) % counts[group]
    return torch.stack([order[slot_i], order[slot_j]], dim=1)  # (P, 2)


def rigidity(
    x: Tensor,
    *,
    pairs: Tensor | None = None,
    num_pairs: int = 1024,
    object_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rigidity: distances between point pairs of the same body stay what they were in frame 0.

    Args:
        x: trajectories [B, T, N, 3].
        pairs: [P, 2] or [B, P, 2] point indices; None draws ``num_pairs`` with ``sample_pairs`` (pass fixed
            pairs when the cost is evaluated repeatedly, e.g. as a guidance cost).
        num_pairs: pairs drawn when ``pairs`` is None.
        object_ids: [N] ints restricting drawn pairs to one object (ignored when ``pairs`` is given).
        generator: torch.Generator for drawing pairs.

    Returns:
        [B] mean squared change of pair distance (m^2) over pairs and frames 1..T-1.
    """
    _check_trajectory(x)
    batch, _, num_points, _ = x.shape
    if pairs is None:
        if object_ids is not None and object_ids.ndim != 1:
            raise ValueError(f"object_ids for drawing pairs must be [N], got {tuple(object_ids.shape)}")
        pairs = sample_pairs(num_points, num_pairs, object_ids=object_ids, generator=generator)
    if pairs.ndim == 2:
        pairs = pairs.unsqueeze(0).expand(batch, -1, -1)  # (B, P, 2)
    if pairs.ndim != 3 or pairs.shape[0] != batch or pairs.shape[-1] != 2:
        raise ValueError(f"pairs must be [P, 2] or [B, P, 2] with B={batch}, got {tuple(pairs.shape)}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= num_points):
        raise ValueError(
            f"pairs must index points in [0, {num_points}), got range [{int(pairs.min())}, "
            f"{int(pairs.max())}]"
        )
    pairs = pairs.to(x.device).long()

    def gather(idx: Tensor) -> Tensor:
        index = idx[:, None, :, None].expand(batch, x.shape[1], idx.shape[1], 3)  # (B, T, P, 3)
        return torch.gather(x, 2, index)

    # sqrt with a tiny floor keeps the gradient finite for coincident points
    dist = ((gather(pairs[..., 0]) - gather(pairs[..., 1])).square().sum(-1) + 1e-12).sqrt()  # (B, T, P)
    return (dist[:, 1:] - dist[:, :1]).square().mean(dim=(1, 2)) if x.shape[1] > 1 else x.new_zeros(batch)


def volume_preservation(x: Tensor, *, object_ids: Tensor | None = None, min_points: int = 4) -> Tensor:
    """Volume preservation: the best-fit affine map from frame 0 to frame t has determinant 1.

    Per object, F_t = argmin_F sum_n ||F (X0_n - c0) - (Xt_n - ct)||^2 = (Y X0^T)(X0 X0^T)^-1 (least
    squares on centred points); J_t = det F_t is the volume ratio of that deformation (J = 1 for any
    rotation, which is why this is zero on rigid motion).

    Args:
        x: trajectories [B, T, N, 3].
        object_ids: [N] or [B, N] ints (negative = padding); None = one body.
        min_points: objects with fewer points (no well-posed 3D fit) are skipped.

    Returns:
        [B] mean of (J_t - 1)^2 over objects and frames 1..T-1.
    """
    _check_trajectory(x)
    weights = _object_weights(object_ids, x.shape[0], x.shape[2], x)  # (B, N, K)
    counts = weights.sum(1)  # (B, K)
    centre = torch.einsum("btni,bnk->btki", x, weights)  # (B, T, K, 3)
    centre = centre / counts.clamp(min=1)[:, None, :, None]
    offsets = x.unsqueeze(3) - centre.unsqueeze(2)  # (B, T, N, K, 3)
    rest = offsets[:, 0]  # (B, N, K, 3)
    gram = torch.einsum("bnk,bnki,bnkj->bkij", weights, rest, rest)  # (B, K, 3, 3)
    cross = torch.einsum("bnk,btnki,bnkj->btkij", weights, offsets, rest)  # (B, T, K, 3, 3)
    # a relative ridge keeps flat (coplanar) objects solvable; 1e-9 of the scale is far below float32 noise
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    ridge = 1e-9 * gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] * eye + 1e-30 * eye
    gram = gram + ridge
    # F = cross @ gram^-1  <=>  F^T = gram^-1 cross^T  (gram symmetric)
    deform = torch.linalg.solve(gram.unsqueeze(1), cross.transpose(-1, -2))  # F^T: (B, T, K, 3, 3)
    deform = deform.transpose(-1, -2)
    error = (torch.linalg.det(deform) - 1.0).square()  # (B, T, K)
    valid = (counts >= min_points).unsqueeze(1).expand_as(error)[:, 1:]
    return _masked_mean(error[:, 1:], valid)


def momentum(
    x: Tensor,
    *,
    dt: float,
    gravity: Sequence[float] | Tensor = GRAVITY,
    force: Tensor | None = None,
    mass: Tensor | None = None,
    object_ids: Tensor | None = None,
    point_mass: Tensor | None = None,
    floor_height: float = 0.0,
    margin: float = 0.02,
    free: Tensor | None = None,
) -> Tensor:
    """Momentum consistency: off contact, each object's centre of mass accelerates at g + F / m.

    Args:
        x: trajectories [B, T, N, 3], T >= 3.
        dt: time between frames (s).
        gravity: gravity vector (m/s^2).
        force: known external force (N) on each object, [B, K, 3] (constant) or [B, T, K, 3] (per frame;
            frame t is used for the stencil centred at t); None = no external force.
        mass: object masses (kg), [B, K] or [B]; required with ``force``.
        object_ids: [N] or [B, N] ints (negative = padding); None = one body.
        point_mass: optional [N] or [B, N] per-point masses for the centre of mass (default: equal).
        floor_height, margin: contact detector settings (``free_stencils``).
        free: optional [B, T-2, K] bool overriding the contact detector.

    Returns:
        [B] mean squared error of the centre-of-mass acceleration (m^2/s^4) over free objects/stencils.
    """
    _check_trajectory(x, min_frames=3)
    _check_dt(dt)
    batch, frames, num_points, _ = x.shape
    weights = _object_weights(object_ids, batch, num_points, x)  # (B, N, K)
    num_objects = weights.shape[-1]
    if point_mass is not None:
        if point_mass.shape not in ((num_points,), (batch, num_points)):
            raise ValueError(f"point_mass must be [N] or [B, N], got {tuple(point_mass.shape)}")
        weights = weights * point_mass.to(x).expand(batch, num_points).unsqueeze(-1)
    centre = torch.einsum("btni,bnk->btki", x, weights) / weights.sum(1).clamp(min=1e-12)[:, None, :, None]
    expected = _gravity(gravity, x).expand(batch, frames - 2, num_objects, 3)  # (B, T-2, K, 3)
    if force is not None:
        if mass is None:
            raise ValueError("mass (kg, [B, K] or [B]) is required when force is given")
        if force.shape == (batch, num_objects, 3):
            force = force.unsqueeze(1)  # (B, 1, K, 3)
        elif force.shape == (batch, frames, num_objects, 3):
            force = force[:, 1:-1]  # (B, T-2, K, 3)
        else:
            raise ValueError(
                f"force must be [B, K, 3] or [B, T, K, 3] with B={batch}, T={frames}, "
                f"K={num_objects}, got {tuple(force.shape)}"
            )
        mass = mass.to(x)
        if mass.shape == (batch,):
            mass = mass.unsqueeze(1).expand(batch, num_objects)
        if mass.shape != (batch, num_objects):
            raise ValueError(
                f"mass must be [B, K] or [B] with B={batch}, K={num_objects}, got {tuple(mass.shape)}"
            )
        if bool((mass <= 0).any()):
            raise ValueError("mass must be > 0 kg for every object")
        expected = expected + force.to(x) / mass[:, None, :, None]
    if free is None:
        free = free_stencils(
            x, dt=dt, gravity=gravity, floor_height=floor_height, margin=margin, object_ids=object_ids
        )
    elif free.shape != (batch, frames - 2, num_objects):
        expected_shape = (batch, frames - 2, num_objects)
        raise ValueError(f"free must be [B, T-2, K] = {expected_shape}, got {tuple(free.shape)}")
    error = (_second_difference(centre, dt) - expected).square().sum(-1)  # (B, T-2, K)
    return _masked_mean(error, free)


def smoothness(x: Tensor, *, order: int = 3, dt: float = 1.0, visible: Tensor | None = None) -> Tensor:
    """Finite-difference smoothness: mean squared ``order``-th time derivative (3 = jerk).

    Works on 3D trajectories [B, T, N, 3] and on 2D pixel tracks [B, T, N, 2] alike. Ballistic motion
    (constant acceleration) has zero jerk.

    Args:
        x: [B, T, N, D] positions.
        order: derivative order, 1 (velocity), 2 (acceleration) or 3 (jerk).
        dt: time between frames (s; 1 = per frame).
        visible: optional [B, T, N] bool; a stencil counts only if all its frames are visible.

    Returns:
        [B] mean squared derivative (units of x^2 / dt^(2 order)).
    """
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be [B, T, N, D], got {tuple(getattr(x, 'shape', ()))}")
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    _check_dt(dt)
    frames = x.shape[1]
    if frames <= order:
        raise ValueError(f"x needs more than order={order} frames, got {tuple(x.shape)}")
    error = (torch.diff(x, n=order, dim=1) / dt**order).square().sum(-1)  # (B, T-order, N)
    if visible is None:
        return error.mean(dim=(1, 2))
    if visible.shape != x.shape[:3]:
        raise ValueError(f"visible must be [B, T, N] = {tuple(x.shape[:3])}, got {tuple(visible.shape)}")
    keep = visible.bool()
    window = keep[:, : frames - order].clone()
    for k in range(1, order + 1):
        window &= keep[:, k : frames - order + k]
    return _masked_mean(error, window)


def combine(terms: Mapping[str, tuple[float, Cost]]) -> Cost:
    """Weighted sum of costs: ``{"name": (weight, cost_fn)}`` -> one cost ``x -> [B]``."""
    if not terms:
        raise ValueError("terms must name at least one (weight, cost) pair")
    for name, term in terms.items():
        if not (isinstance(term, tuple) and len(term) == 2 and callable(term[1])):
            raise TypeError(f"terms[{name!r}] must be a (weight, callable) pair, got {term!r}")

    def total(x: Tensor) -> Tensor:
        return sum(weight * fn(x) for weight, fn in terms.values())

    return total
