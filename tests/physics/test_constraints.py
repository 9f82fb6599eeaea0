"""physics.constraints: zero on the motion each law describes, positive when it is broken, gradients flow.

Analytic trajectories first (parabolas, rotations, shears, a bouncing ball), then simulator ground truth
from physics.rigid and physics.mpm.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from physics import constraints as C

DT = 1.0 / 12.0  # s between frames


G = torch.tensor(C.GRAVITY, dtype=torch.float64)


def _body(n: int = 64, seed: int = 0, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * scale
    return pts - pts.mean(0)  # (N, 3), centre of mass at 0


def _rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation matrices [T, 3, 3] for angles [T] about a unit axis."""
    axis = axis / axis.norm()
    a, b, c = axis.tolist()
    k = torch.tensor([[0, -c, b], [c, 0, -a], [-b, a, 0]], dtype=axis.dtype)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3, dtype=axis.dtype) + s * k + (1 - c) * (k @ k)


def _flight(frames: int = 17, spin: float = 0.0, start_z: float = 5.0, n: int = 64) -> torch.Tensor:
    """A body thrown upwards, optionally spinning, never touching the floor: [1, T, N, 3]."""
    t = torch.arange(frames, dtype=torch.float64) * DT
    v0 = torch.tensor([0.5, -0.3, 4.0], dtype=torch.float64)
    com = torch.tensor([0.0, 0.0, start_z], dtype=torch.float64) + t[:, None] * v0 + 0.5 * t[:, None] ** 2 * G
    rot = _rotation(torch.tensor([0.3, 1.0, 0.2], dtype=torch.float64), spin * t)  # (T, 3, 3)
    pts = torch.einsum("tij,nj->tni", rot, _body(n)) + com[:, None, :]  # (T, N, 3)
    return pts.unsqueeze(0)


def _bouncing_ball(frames: int = 25, restitution: float = 0.7, n: int = 32) -> torch.Tensor:
    """Exact bouncing ball (radius 0.1 m, dropped from 1 m), sampled densely then at frame times."""
    radius, z, vz, dt_fine = 0.1, 1.0, 0.0, DT / 200
    out = []
    for step in range(frames * 200):
        if step % 200 == 0:
            out.append(z)
        vz += G[2].item() * dt_fine
        z += vz * dt_fine
        if z < radius and vz < 0:
            z, vz = radius + (radius - z), -vz * restitution
    # points on the sphere's surface, including its lowest point, as a simulator's particles reach it
    directions = _body(n - 1, scale=1.0)
    offsets = torch.cat(
        [
            radius * directions / directions.norm(dim=-1, keepdim=True),
            torch.tensor([[0.0, 0.0, -radius]], dtype=torch.float64),
        ]
    )
    com = torch.tensor(out, dtype=torch.float64)
    pts = offsets[None] + torch.stack([torch.zeros_like(com), torch.zeros_like(com), com], -1)[:, None]
    return pts.unsqueeze(0)  # (1, T, N, 3)


# ---------------------------------------------------------------------------------------------- analytic


def test_floor_penetration_zero_above_and_positive_below():
    x = _flight()
    assert C.floor_penetration(x).item() == 0.0
    sunk = x.clone()
    sunk[..., 2] -= 6.0
    cost = C.floor_penetration(sunk)
    assert cost.shape == (1,) and cost.item() > 0.1
    assert C.floor_penetration(sunk, tolerance=100.0).item() == 0.0


def test_free_fall_zero_in_flight_positive_when_perturbed():
    x = _flight()
    assert C.free_fall(x, dt=DT).item() < 1e-18
    wrong_g = C.free_fall(x, dt=DT, gravity=(0.0, 0.0, -1.62))  # the moon's
    assert wrong_g.item() == pytest.approx((9.81 - 1.62) ** 2, rel=1e-6)
    noisy = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    assert C.free_fall(noisy, dt=DT).item() > 1e-3


def test_free_fall_excludes_bounces_via_contact_detection():
    ball = _bouncing_ball()
    free = C.free_stencils(ball, dt=DT)
    assert free.shape == (1, ball.shape[1] - 2, 1)
    assert 0 < int(free.sum()) < free.numel()  # some stencils in flight, the bounces are not
    assert C.free_fall(ball, dt=DT).item() < 1e-9
    # without the detector (everything declared free) the bounces cost a lot
    all_free = torch.ones_like(free)
    assert C.free_fall(ball, dt=DT, free=all_free).item() > 100.0


def test_rigidity_zero_on_rigid_motion_positive_on_stretch():
    x = _flight(spin=6.0)
    pairs = C.sample_pairs(x.shape[2], 256, generator=torch.Generator().manual_seed(0))
    assert C.rigidity(x, pairs=pairs).item() < 1e-20
    stretch = x.clone()
    stretch[:, 5:, :, 0] *= 1.2
    assert C.rigidity(stretch, pairs=pairs).item() > 1e-4


def test_volume_zero_on_rotation_and_shear_positive_on_scaling():
    x = _flight(spin=6.0)
    assert C.volume_preservation(x).item() < 1e-12
    rest = x[:, 0] - x[:, 0].mean(1, keepdim=True)
    shear = torch.tensor([[1.0, 0.7, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=x.dtype)
    sheared = torch.stack([rest, rest @ shear.T], dim=1)  # (1, 2, N, 3): det(shear) = 1
    assert C.volume_preservation(sheared).item() < 1e-12
    assert C.rigidity(sheared, num_pairs=64, generator=torch.Generator().manual_seed(0)).item() > 1e-5
    grown = torch.stack([rest, 1.1 * rest], dim=1)
    assert C.volume_preservation(grown).item() == pytest.approx((1.1**3 - 1) ** 2, rel=1e-6)


def test_momentum_with_spin_and_external_force():
    x = _flight(spin=8.0)
    # a spinning body breaks per-point free fall but its centre of mass still follows g
    assert C.free_fall(x, dt=DT).item() > 1e-2
    assert C.momentum(x, dt=DT).item() < 1e-18
    # now push it: F = m a with a = (2, 0, 0) m/s^2
    t = torch.arange(x.shape[1], dtype=x.dtype) * DT
    pushed = x.clone()
    pushed[..., 0] += (0.5 * 2.0 * t**2)[None, :, None]
    force = torch.tensor([[[6.0, 0.0, 0.0]]], dtype=x.dtype)  # (B, K, 3) on a 3 kg body
    mass = torch.tensor([3.0], dtype=x.dtype)
    assert C.momentum(pushed, dt=DT, force=force, mass=mass).item() < 1e-18
    assert C.momentum(pushed, dt=DT).item() == pytest.approx(4.0, rel=1e-6)


def test_objects_are_separated_by_ids():
    # object 0 flies, object 1 rests on the floor: the resting one is in contact, the flying one free
    fly = _flight(n=16)
    rest = _body(16, seed=2) + torch.tensor([1.0, 0.0, 0.0], dtype=fly.dtype)
    rest[:, 2] += 0.005 - rest[:, 2].min()  # lowest point 5 mm above the floor
    rest = rest.expand(1, fly.shape[1], 16, 3)
    x = torch.cat([fly, rest], dim=2)  # (1, T, 32, 3)
    ids = torch.cat([torch.zeros(16), torch.ones(16)]).long()
    free = C.free_stencils(x, dt=DT, object_ids=ids)
    assert free[0, :, 0].all() and not free[0, :, 1].any()
    assert C.free_fall(x, dt=DT, object_ids=ids).item() < 1e-18
    assert C.momentum(x, dt=DT, object_ids=ids).item() < 1e-18
    # as one body, the floor contact of object 1 makes nothing free -> cost 0 but uninformative
    assert not C.free_stencils(x, dt=DT).any()
    # padding points (id -1) are ignored even when they sit under the floor
    padded = torch.cat([x, torch.full((1, x.shape[1], 4, 3), -5.0, dtype=x.dtype)], dim=2)
    padded_ids = torch.cat([ids, torch.full((4,), -1)])
    assert C.floor_penetration(padded, object_ids=padded_ids).item() == 0.0
    assert C.volume_preservation(padded, object_ids=padded_ids).item() < 1e-12


def test_sample_pairs_same_object_distinct_and_seeded():
    ids = torch.tensor([0, 0, 0, 1, 1, -1, 2, 1, 0, 3])  # object 3 has one point: never paired
    pairs = C.sample_pairs(10, 500, object_ids=ids, generator=torch.Generator().manual_seed(3))
    assert pairs.shape == (500, 2) and pairs.dtype == torch.long
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert (ids[pairs[:, 0]] == ids[pairs[:, 1]]).all() and (ids[pairs] >= 0).all()
    assert set(ids[pairs[:, 0]].tolist()) == {0, 1}  # object 2 and 3 have one point each
    again = C.sample_pairs(10, 500, object_ids=ids, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pairs, again)


def test_smoothness_on_trajectories_and_tracks():
    x = _flight()
    assert C.smoothness(x, dt=DT).item() < 1e-12  # constant acceleration: no jerk
    assert C.smoothness(x, order=2, dt=DT).item() == pytest.approx(9.81**2, rel=1e-6)
    line = torch.stack([torch.linspace(0, 30, 17), torch.linspace(5, 20, 17)], -1)  # (T, 2) uniform motion
    tracks = line[None, :, None]  # (1, T, 1, 2)
    assert C.smoothness(tracks.double(), order=2).item() < 1e-20
    jumpy = tracks.clone()
    jumpy[:, 8] += 10.0
    visible = torch.ones(1, 17, 1, dtype=torch.bool)
    assert C.smoothness(jumpy, visible=visible).item() > 1.0
    visible[:, 8] = False  # the jump sits on an occluded frame: no stencil sees it
    assert C.smoothness(jumpy, visible=visible).item() < 1e-9


@pytest.mark.parametrize(
    "cost",
    [
        C.floor_penetration,
        functools.partial(C.free_fall, dt=DT),
        functools.partial(C.rigidity, num_pairs=64, generator=torch.Generator().manual_seed(0)),
        C.volume_preservation,
        functools.partial(C.momentum, dt=DT),
        functools.partial(C.smoothness, dt=DT),
    ],
)
def test_gradients_flow_and_batch_shape(cost):
    base = torch.cat([_flight(spin=3.0), _flight(spin=0.0)], dim=0).float()  # (2, T, N, 3)
    noise = 0.02 * torch.randn(base.shape, generator=torch.Generator().manual_seed(5))
    x = (base + noise).requires_grad_(True)
    x_floor = x - torch.tensor([0.0, 0.0, 5.2])  # pushed partly through the floor for floor_penetration
    value = cost(x_floor if cost is C.floor_penetration else x)
    assert value.shape == (2,) and bool((value > 0).all())
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_combine_and_bad_inputs():
    x = _flight()
    jerk = functools.partial(C.smoothness, dt=DT)
    total = C.combine({"floor": (2.0, C.floor_penetration), "jerk": (1.0, jerk)})
    assert total(x - 5.5).item() == pytest.approx(
        2 * C.floor_penetration(x - 5.5).item() + C.smoothness(x, dt=DT).item(), rel=1e-9
    )
    with pytest.raises(ValueError, match=r"\[B, T, N, 3\]"):
        C.rigidity(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="dt"):
        C.free_fall(x, dt=0.0)
    with pytest.raises(ValueError, match="object_ids"):
        C.volume_preservation(x, object_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="object_ids"):
        C.momentum(x, dt=DT, object_ids=torch.zeros(x.shape[2]))
    with pytest.raises(ValueError, match="mass"):
        C.momentum(x, dt=DT, force=torch.zeros(1, 1, 3, dtype=x.dtype))
    with pytest.raises(ValueError, match="pairs"):
        C.rigidity(x, pairs=torch.tensor([[0, 999]]))
    assert math.isfinite(C.rigidity(x, num_pairs=8).item())


# ------------------------------------------------------------------------------------ simulator ground truth


def _rigid_rollout() -> tuple[torch.Tensor, torch.Tensor]:
    """A spinning box thrown up and a ball dropped (physics.rigid): points [1, T, 256, 3] and object ids."""
    from physics.rigid import RigidBodies, RigidConfig, RigidWorld, quat_to_matrix
    from physics.shapes import box, sample_surface, sphere

    g = torch.Generator().manual_seed(0)
    shapes = [box((0.2, 0.1, 0.15)), sphere(0.08)]
    bodies = RigidBodies.from_shapes([shapes], restitution=0.5, particles=1, generator=g)
    world = RigidWorld(RigidConfig(substeps=8), bodies)
    pts = torch.stack([sample_surface(s, 128, g) for s in shapes])  # (M, P, 3) body frame
    pts = pts - pts.mean(1, keepdim=True)  # so that the points' mean is the centre of mass
    state = world.initial_state(
        torch.tensor([[[0.0, 0.0, 1.0], [0.6, 0.0, 0.5]]]),
        velocity=torch.tensor([[[0.5, 0.0, 1.0], [0.0, 0.0, 0.0]]]),
        angular_velocity=torch.tensor([[[3.0, -2.0, 5.0], [0.0, 0.0, 0.0]]]),
    )
    out = world.rollout(state, 17, frame_dt=DT, return_points=False)
    R = quat_to_matrix(out.orientation)  # (B, T, M, 3, 3)
    x = out.position[:, :, :, None, :] + torch.einsum("btmij,mpj->btmpi", R, pts)  # (B, T, M, P, 3)
    return x.flatten(2, 3), torch.arange(2).repeat_interleave(128)


def test_rigid_ground_truth_obeys_rigid_laws():
    x, ids = _rigid_rollout()
    g = torch.Generator().manual_seed(1)
    pairs = C.sample_pairs(x.shape[2], 512, object_ids=ids, generator=g)
    free = C.free_stencils(x, dt=DT, object_ids=ids)
    assert free.any() and not free.all()  # flight and floor contact both occur
    truth = {
        "floor": C.floor_penetration(x, tolerance=0.01),  # contact slop + surface samples re-centred
        "rigid": C.rigidity(x, pairs=pairs),
        "volume": C.volume_preservation(x, object_ids=ids),
        "momentum": C.momentum(x, dt=DT, object_ids=ids),
    }
    assert truth["floor"].item() == 0.0
    assert truth["rigid"].item() < 1e-12 and truth["volume"].item() < 1e-9 and truth["momentum"].item() < 1e-6
    # the spinning box breaks per-point free fall (centripetal acceleration), the momentum law holds
    assert C.free_fall(x, dt=DT, object_ids=ids).item() > 1.0
    noisy = x + 0.005 * torch.randn(x.shape, generator=g)
    assert C.rigidity(noisy, pairs=pairs).item() > 1e-5
    assert C.volume_preservation(noisy, object_ids=ids).item() > 1e-4
    assert C.momentum(noisy, dt=DT, object_ids=ids, free=free).item() > 1e-2


def _mpm_rollout(kind: str, frames: int, z: float, drag_force=None):
    from physics.mpm import Drag, Materials, MPMConfig, MPMSolver

    cfg = MPMConfig(grid_res=16, domain_origin=(-0.5, -0.5, -0.2))
    sim = MPMSolver(cfg)
    axis = (torch.arange(6) + 0.5) * (cfg.dx / 2) - 3 * (cfg.dx / 2)  # a 6^3 lattice, 2 particles per cell
    cube = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    state = sim.init_state(
        cube + torch.tensor([0.0, 0.0, z]), Materials.create(1, cube.shape[1], kind=kind, E=1e4)
    )
    drag = None
    if drag_force is not None:
        drag = Drag.around(state, torch.tensor([[0.05, 0.0, z]]), drag_force, radius=0.03)
    traj, _ = sim.rollout(state, frames, DT, drag=drag)
    # grid nodes up to 1.5 cells above the floor already feel it: that is where MPM contact starts
    return traj, state, 1.5 * cfg.dx + 0.01


def test_mpm_ground_truth():
    soft, _, margin = _mpm_rollout("elastic", 9, 0.4)
    hard, _, _ = _mpm_rollout("rigid", 9, 0.4)
    force = torch.tensor([[3.0, 0.0, 2.0]])
    dragged, state, _ = _mpm_rollout("elastic", 5, 0.45, drag_force=force)
    # MPM's rigid bodies collide with the floor plane itself; the floor holds deformable matter through grid
    # nodes half a cell below it, so a soft cube overshoots it by up to about a cell at impact
    assert C.floor_penetration(hard, tolerance=1e-4).item() == 0.0
    assert C.floor_penetration(soft, tolerance=1.25 * 0.0625).item() == 0.0
    for x in (soft, hard):
        assert C.free_stencils(x, dt=DT, margin=margin).any()
        assert C.free_fall(x, dt=DT, margin=margin).item() < 1e-6  # falling from rest: every point at g
        assert C.momentum(x, dt=DT, margin=margin).item() < 1e-6
    pairs = C.sample_pairs(soft.shape[2], 256, generator=torch.Generator().manual_seed(0))
    # MPM's rigid material is exactly rigid; the elastic cube squashes on impact
    assert C.rigidity(hard, pairs=pairs).item() < 1e-12 and C.volume_preservation(hard).item() < 1e-9
    assert C.rigidity(soft, pairs=pairs).item() > 1e-5 and C.volume_preservation(soft).item() > 1e-3
    # the drag's total force accelerates the centre of mass by F / M on top of gravity
    mass = state.mass.sum().reshape(1, 1)
    assert C.momentum(dragged, dt=DT, force=force[:, None], mass=mass, margin=margin).item() < 1e-6
    assert C.momentum(dragged, dt=DT, margin=margin).item() > 0.1
