"""physics.rigid against analytic answers: free fall, bounce heights, sliding and rolling friction, ramps,
collisions (momentum, energy), impulses at points, gradients against finite differences; plus resting
stability, rollout bookkeeping and bad inputs."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from physics.rigid import (
    RigidBodies,
    RigidConfig,
    RigidState,
    RigidWorld,
    _signed_distance,
    quat_multiply,
    quat_to_matrix,
)
from physics.shapes import KINDS, box, capsule, cylinder, from_mesh, sample_surface, sphere

F64 = torch.float64
G = 9.81


def t64(x) -> torch.Tensor:
    return torch.tensor(np.array(x, dtype=float), dtype=F64)


def make_world(scenes, config=None, **kwargs) -> RigidWorld:
    kwargs.setdefault("dtype", F64)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return RigidWorld(config or RigidConfig(), RigidBodies.from_shapes(scenes, **kwargs))


def quat_about(axis, angle) -> list[float]:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    return [math.cos(angle / 2), *(math.sin(angle / 2) * axis)]


# ---------------------------------------------------------------------------------------------------
# free motion
# ---------------------------------------------------------------------------------------------------


def test_free_fall_follows_the_parabola_exactly():
    world = make_world([[box((0.3, 0.2, 0.1)), sphere(0.1)]], RigidConfig(ground=None))
    x0, v0 = t64([[[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]]]), t64([[[1.0, -0.5, 3.0], [0.0, 2.0, 0.0]]])
    state = world.initial_state(x0, velocity=v0, angular_velocity=t64([[[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]]]))
    out = world.rollout(state, frames=9, return_points=False)
    t = out.times[:, None, None]  # (T, 1, 1)
    expected = x0[0] + v0[0] * t + 0.5 * t * t * t64([0.0, 0.0, -G])  # (T, M, 3)
    assert torch.allclose(out.position[0], expected, atol=1e-10)
    assert torch.allclose(out.velocity[0], v0[0] + t * t64([0.0, 0.0, -G]), atol=1e-10)


def test_torque_free_spin_precesses_keeping_angular_momentum_and_energy():
    # an asymmetric box spun about a tilted axis precesses: L (world) and kinetic energy are invariants.
    # The implicit gyroscopic step keeps them to first order in h and never adds energy.
    world = make_world([[box((0.4, 0.2, 0.1))]], RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0)))
    state = world.initial_state(t64([[[0.0, 0.0, 0.0]]]), angular_velocity=t64([[[0.3, 5.0, 0.5]]]))
    L0, E0 = world.angular_momentum(state), world.kinetic_energy(state)
    drift = []
    for substeps in (100, 400):
        final = world.step(state, dt=1.0, substeps=substeps)
        drift.append(((world.angular_momentum(final) - L0).norm() / L0.norm()).item())
        assert 0.99 < (world.kinetic_energy(final) / E0).item() <= 1.0
    assert drift[0] < 0.01 and drift[1] < drift[0] / 3  # first order
    assert not torch.allclose(final.angular_velocity, state.angular_velocity, atol=0.1)  # it precessed


def test_fast_thin_spinner_does_not_gain_energy():
    # a rod spun fast about a tumbling axis: explicit gyroscopic updates blow this up within a second
    world = make_world([[box((0.4, 0.05, 0.05))]], RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0)))
    state = world.initial_state(t64([[[0.0, 0.0, 0.0]]]), angular_velocity=t64([[[0.3, -46.0, -31.0]]]))
    energy = world.kinetic_energy(world.rollout(state, frames=17, return_points=False).final)
    assert 0.95 < (energy / world.kinetic_energy(state)).item() <= 1.0


# ---------------------------------------------------------------------------------------------------
# ground contact: restitution and friction
# ---------------------------------------------------------------------------------------------------


def test_bounce_height_ratio_is_restitution_squared():
    e = t64([[0.5], [0.8]])  # one scene per coefficient
    world = make_world([[sphere(0.1)], [sphere(0.1)]], RigidConfig(mu=0.0), restitution=e)
    h0 = 1.0  # drop height of the sphere's bottom
    state = world.initial_state(t64([[[0.0, 0.0, 0.1 + h0]], [[0.0, 0.0, 0.1 + h0]]]))
    out = world.rollout(state, frames=112, frame_dt=1 / 128, substeps=8, return_points=False)
    for b in range(2):
        z, vz = out.position[b, :, 0, 2], out.velocity[b, :, 0, 2]
        first_up = int(torch.nonzero(vz > 0)[0])
        apex = z[first_up:].max() - 0.1
        assert apex.item() == pytest.approx(e[b, 0].item() ** 2 * h0, rel=0.02)


def test_sliding_box_decelerates_at_mu_g_and_stops_at_v0_squared_over_2_mu_g():
    mu, v0 = 0.3, 2.0
    yaw = quat_about([0, 0, 1], math.radians(30))
    world = make_world([[box((0.2, 0.2, 0.2))]] * 2, RigidConfig(mu=mu, restitution=0.0))
    direction = t64([[[1.0, 0.0, 0.0]], [[math.cos(1.0), math.sin(1.0), 0.0]]])  # along x, and skewed
    state = world.initial_state(
        t64([[[0.0, 0.0, 0.1]]] * 2), t64([[[1.0, 0.0, 0.0, 0.0]], [yaw]]), velocity=v0 * direction
    )
    out = world.rollout(state, frames=33, frame_dt=1 / 32, return_points=False)
    speed = _along(out.velocity[:, :, 0], direction[:, 0])  # (B, T)
    t = out.times
    t_stop = v0 / (mu * G)
    sliding = t < t_stop - 0.05
    expected = (v0 - mu * G * t).clamp(min=0)
    assert torch.allclose(speed[:, sliding], expected[sliding].expand(2, -1), atol=2e-3)
    assert speed[:, -1].abs().max() < 1e-6  # at rest after t_stop (static friction holds)
    distance = _along(out.position[:, -1, 0] - out.position[:, 0, 0], direction[:, 0])
    assert torch.allclose(distance, torch.full((2,), v0**2 / (2 * mu * G), dtype=F64), rtol=5e-3)
    assert out.angular_velocity[:, sliding, 0].abs().max() < 1e-4  # no spurious tipping or spin
    assert out.angular_velocity[:, -1, 0].abs().max() < 1e-3  # the small wobble when it sticks dies out


def _along(v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (v * d.reshape(d.shape[0], *([1] * (v.ndim - 2)), 3)).sum(-1)


def test_sliding_sphere_starts_rolling_at_five_sevenths_of_its_speed():
    # a solid ball launched without spin slides until v = r w; friction's impulse gives v = 5/7 v0
    world = make_world([[sphere(0.1)]], RigidConfig(mu=0.3, restitution=0.0))
    state = world.initial_state(t64([[[0.0, 0.0, 0.1]]]), velocity=t64([[[3.0, 0.0, 0.0]]]))
    final = world.rollout(state, frames=24, return_points=False).final
    assert final.velocity[0, 0, 0].item() == pytest.approx(3.0 * 5 / 7, rel=1e-4)
    assert final.angular_velocity[0, 0, 1].item() == pytest.approx(3.0 * 5 / 7 / 0.1, rel=1e-4)


@pytest.mark.parametrize("mu", [0.3, 0.7])
def test_box_on_a_fixed_ramp_slides_at_g_sin_minus_mu_cos_or_sticks(mu):
    theta = math.radians(30)  # tan(30 deg) = 0.577: mu = 0.3 slides, mu = 0.7 sticks
    tilt = quat_about([0, -1, 0], theta)  # the ramp's x axis points up the slope
    R = quat_to_matrix(t64(tilt))
    up_slope, normal = R[:, 0], R[:, 2]
    world = make_world(
        [[box((4.0, 1.0, 0.2)), box((0.2, 0.2, 0.2))]],
        RigidConfig(mu=mu, restitution=0.0, ground=None),
        fixed=torch.tensor([[True, False]]),
    )
    position = torch.stack([torch.zeros(3, dtype=F64), 0.2 * normal])[None]
    out = world.rollout(world.initial_state(position, t64([[tilt, tilt]])), frames=17, return_points=False)
    assert torch.equal(out.position[0, :, 0], out.position[0, :1, 0].expand(17, 3))  # the ramp never moves
    v = out.velocity[0, :, 1] @ up_slope
    if mu < math.tan(theta):
        accel = (v[16] - v[4]) / (out.times[16] - out.times[4])
        assert accel.item() == pytest.approx(-G * (math.sin(theta) - mu * math.cos(theta)), rel=1e-3)
    else:
        assert v.abs().max() < 0.05 and v[-1].abs() < 1e-6
        assert abs((out.position[0, -1, 1] - position[0, 1]) @ up_slope) < 2e-3
    assert abs(out.position[0, -1, 1] @ normal - 0.2) < 2e-3  # resting on the surface, not sinking


def test_bodies_rest_on_the_ground_at_their_exact_height():
    lying = quat_about([1, 0, 0], math.pi / 2)
    mesh_box = from_mesh(trimesh.creation.box(extents=(0.3, 0.2, 0.1)))
    shapes = [box((0.2, 0.3, 0.1)), capsule(0.05, 0.2), cylinder(0.1, 0.2), sphere(0.1), mesh_box]
    heights = [0.05, 0.05, 0.1, 0.1, 0.05]  # capsule lying on its side, cylinder upright
    world = make_world([shapes], RigidConfig())
    x0 = t64([[[2.0 * i, 0.0, h + 0.01] for i, h in enumerate(heights)]])  # dropped from 1 cm
    q0 = t64([[[1.0, 0, 0, 0], lying, [1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]]])
    out = world.rollout(world.initial_state(x0, q0), frames=32, return_points=False)
    final = out.final
    slop = world.config.slop
    assert ((final.position[0, :, 2] - t64(heights)).abs() < slop + 2e-4).all()
    assert (final.position[0, :, :2] - x0[0, :, :2]).abs().max() < 1e-3
    assert final.velocity.abs().max() < 1e-5 and final.angular_velocity.abs().max() < 1e-4


def test_a_stack_of_boxes_stays_up():
    world = make_world([[box((0.3, 0.3, 0.1)), box((0.2, 0.2, 0.1)), box((0.1, 0.1, 0.1))]], RigidConfig())
    x0 = t64([[[0.0, 0.0, 0.05], [0.02, 0.0, 0.15], [0.0, 0.01, 0.25]]])
    final = world.rollout(world.initial_state(x0), frames=24, return_points=False).final
    assert (final.position - x0).abs().max() < 3e-3
    assert final.velocity.abs().max() < 1e-4


def test_walls_reflect_with_restitution():
    world = make_world(
        [[sphere(0.1)]], RigidConfig(walls=(0.5, 0.5, 0.5), ground=None, gravity=(0.0, 0.0, 0.0), mu=0.0)
    )
    state = world.initial_state(t64([[[0.0, 0.0, 0.0]]]), velocity=t64([[[2.0, -1.0, 0.0]]]))
    out = world.rollout(state, frames=9, frame_dt=1 / 8, substeps=64, return_points=False)
    e = world.config.restitution
    assert torch.allclose(out.final.velocity[0, 0], t64([-2.0 * e, 1.0 * e, 0.0]), atol=1e-9)
    assert out.position[0, :, 0, :2].abs().max() <= 0.4 + 2e-3  # the centre stays a radius inside


# ---------------------------------------------------------------------------------------------------
# body-body contact
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("e", [1.0, 0.5])
def test_head_on_sphere_collision_matches_newtons_law_and_conserves_momentum(e):
    world = make_world(
        [[sphere(0.1), sphere(0.15)]],
        RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0), restitution=e, mu=0.5),
        density=t64([[1000.0, 700.0]]),
    )
    m1, m2 = world.bodies.mass[0].tolist()
    v1, v2 = 2.0, -1.0
    state = world.initial_state(
        t64([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]]), velocity=t64([[[v1, 0, 0], [v2, 0, 0]]])
    )
    final = world.step(state, dt=0.5, substeps=100)
    # Newton's law of restitution with momentum conservation, in closed form
    u1 = (m1 * v1 + m2 * v2 - m2 * e * (v1 - v2)) / (m1 + m2)
    u2 = (m1 * v1 + m2 * v2 + m1 * e * (v1 - v2)) / (m1 + m2)
    assert torch.allclose(final.velocity[0, :, 0], t64([u1, u2]), atol=1e-9)
    assert torch.allclose(world.linear_momentum(final), world.linear_momentum(state), atol=1e-9)
    if e == 1.0:
        assert torch.allclose(world.kinetic_energy(final), world.kinetic_energy(state), rtol=1e-9)


def test_oblique_spinning_collision_conserves_linear_and_angular_momentum():
    world = make_world(
        [[sphere(0.1), sphere(0.15)]],
        RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0), restitution=0.7, mu=0.5),
        density=t64([[1000.0, 700.0]]),
    )
    state = world.initial_state(
        t64([[[0.0, 0.0, 0.0], [0.6, 0.12, 0.05]]]),
        velocity=t64([[[2.0, 0.3, 0.0], [-1.0, 0.0, 0.2]]]),
        angular_velocity=t64([[[0.0, 4.0, -3.0], [10.0, 0.0, 0.0]]]),
    )
    L0 = world.angular_momentum(state)

    def collide(substeps: int) -> tuple[RigidState, float]:
        final = world.step(state, dt=0.5, substeps=substeps)
        return final, ((world.angular_momentum(final) - L0).norm() / L0.norm()).item()

    final, coarse = collide(100)
    assert not torch.allclose(final.velocity, state.velocity)  # they did collide
    # contact impulses are equal and opposite at one point: linear momentum is exact, and so is the
    # angular momentum they exchange; the trapezoidal position update and the projection move the bodies
    # by O(h) during the hit, so the orbital part drifts by O(h)
    assert torch.allclose(world.linear_momentum(final), world.linear_momentum(state), atol=1e-9)
    assert coarse < 0.01 and collide(800)[1] < coarse / 2
    assert (world.kinetic_energy(final) < world.kinetic_energy(state)).all()  # friction, e < 1 dissipate


def test_elastic_frictionless_box_collision_conserves_energy_and_momentum():
    world = make_world(
        [[box((0.2, 0.2, 0.2)), box((0.3, 0.2, 0.1))]],
        RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0), restitution=1.0, mu=0.0),
    )
    q1 = quat_about([1, 1, 0], 0.7)
    state = world.initial_state(
        t64([[[0.0, 0.0, 0.0], [0.5, 0.05, 0.02]]]),
        t64([[[1.0, 0.0, 0.0, 0.0], q1]]),
        velocity=t64([[[1.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]]),
    )
    final = world.step(state, dt=0.6, substeps=300)
    assert not torch.allclose(final.velocity, state.velocity)
    assert torch.allclose(world.linear_momentum(final), world.linear_momentum(state), atol=1e-9)
    L0 = world.angular_momentum(state)
    assert (world.angular_momentum(final) - L0).norm() < 0.02 * L0.norm()  # O(h), as for spheres
    # particle contacts are not one exact point, so the energy of an elastic hit is kept approximately
    assert world.kinetic_energy(final).item() == pytest.approx(world.kinetic_energy(state).item(), rel=0.05)


def test_sphere_lands_and_rests_on_a_fixed_mesh():
    table = from_mesh(trimesh.creation.box(extents=(1.0, 1.0, 0.2)))
    world = make_world([[table, sphere(0.1)]], RigidConfig(), fixed=torch.tensor([[True, False]]))
    state = world.initial_state(t64([[[0.0, 0.0, 0.1], [0.1, 0.05, 0.8]]]))
    final = world.rollout(state, frames=24, return_points=False).final
    assert final.position[0, 1, 2].item() == pytest.approx(0.2 + 0.1, abs=3e-3)  # on the table top
    assert final.velocity.abs().max() < 1e-3


# ---------------------------------------------------------------------------------------------------
# forces and impulses at points
# ---------------------------------------------------------------------------------------------------


def test_impulse_at_an_off_centre_point_gives_the_right_linear_and_angular_velocity():
    world = make_world([[box((0.4, 0.2, 0.1)), sphere(0.1)]], fixed=torch.tensor([[False, True]]))
    rot = Rotation.from_rotvec([0.3, -0.5, 0.9])
    x, w, y, z = rot.as_quat()  # scipy is scalar-last
    state = world.initial_state(
        t64([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]), t64([[[z, x, w, y], [1.0, 0, 0, 0]]])
    )
    J = np.array([0.5, -1.0, 2.0])
    p = np.array([1.1, 2.05, 3.02])
    new = world.apply_impulse(state, t64([[J, J]]), t64([[p, p]]))
    m = world.bodies.mass[0, 0].item()
    inertia_world = rot.as_matrix() @ world.bodies.inertia[0, 0].numpy() @ rot.as_matrix().T
    expected_w = np.linalg.solve(inertia_world, np.cross(p - np.array([1.0, 2.0, 3.0]), J))
    assert np.allclose(new.velocity[0, 0].numpy(), J / m, atol=1e-12)
    assert np.allclose(new.angular_velocity[0, 0].numpy(), expected_w, atol=1e-10)
    assert torch.equal(new.velocity[0, 1], state.velocity[0, 1])  # the fixed body ignores it


def test_force_at_a_point_pushes_and_spins():
    world = make_world([[sphere(0.1)]], RigidConfig(ground=None, gravity=(0.0, 0.0, 0.0)))
    m, inertia = world.bodies.mass[0, 0].item(), world.bodies.inertia[0, 0, 0, 0].item()
    state = world.initial_state(t64([[[0.0, 0.0, 0.0]]]))
    force, point = t64([[[0.0, 0.0, 2.0]]]), t64([[[0.1, 0.0, 0.0]]])
    dt = 0.01
    new = world.step(state, dt=dt, substeps=10, force=force, point=point)
    assert torch.allclose(new.velocity[0, 0], t64([0.0, 0.0, 2.0 * dt / m]), atol=1e-12)
    torque = np.cross([0.1, 0.0, 0.0], [0.0, 0.0, 2.0])  # (0, -0.2, 0): the lever arm turns by < 1e-4 rad
    assert np.allclose(new.angular_velocity[0, 0].numpy(), torque * dt / inertia, rtol=1e-3)
    # the same push through rollout's force_fn, for one frame only
    out = world.rollout(
        state, frames=3, frame_dt=dt, force_fn=lambda f, s: (force, point) if f == 0 else None
    )
    assert torch.allclose(out.velocity[0, 1, 0], new.velocity[0, 0])
    assert torch.allclose(out.velocity[0, 2, 0], new.velocity[0, 0])  # no force in the second frame


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------


def test_gradient_of_final_points_wrt_initial_velocities_matches_finite_differences():
    world = make_world([[box((0.3, 0.2, 0.1))]], RigidConfig(ground=None), particles=4)
    x0, q0 = t64([[[0.0, 0.0, 1.0]]]), t64([[[1.0, 0.2, 0.0, 0.1]]])

    def final_points(v0: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
        state = world.initial_state(x0, q0, v0, w0)
        return world.rollout(state, frames=3, substeps=4).points[:, -1]  # (B, N, 3)

    v0 = t64([[[1.0, 0.5, 2.0]]]).requires_grad_()
    w0 = t64([[[0.5, 3.0, -1.0]]]).requires_grad_()
    assert torch.autograd.gradcheck(final_points, (v0, w0), eps=1e-6, atol=1e-6)


def test_gradient_of_sliding_distance_wrt_mu_matches_finite_differences_and_theory():
    v0 = 1.5

    def distance(mu: torch.Tensor) -> torch.Tensor:
        world = make_world(
            [[box((0.2, 0.2, 0.2))]], RigidConfig(restitution=0.0, substeps=8), mu=mu.reshape(1, 1)
        )
        state = world.initial_state(t64([[[0.0, 0.0, 0.1]]]), velocity=t64([[[v0, 0.0, 0.0]]]))
        return world.rollout(state, frames=8, return_points=False).final.position[0, 0, 0]  # stops at 0.38 s

    mu = t64(0.4).requires_grad_()
    (grad,) = torch.autograd.grad(distance(mu), mu)
    eps = 1e-5
    fd = (distance(t64(0.4 + eps)) - distance(t64(0.4 - eps))) / (2 * eps)
    assert grad.item() == pytest.approx(fd.item(), rel=1e-4)
    assert grad.item() == pytest.approx(-(v0**2) / (2 * 0.4**2 * G), rel=0.02)  # d/dmu v0^2 / (2 mu g)


# ---------------------------------------------------------------------------------------------------
# geometry, bookkeeping
# ---------------------------------------------------------------------------------------------------


def test_signed_distances_of_primitives_are_exact():
    gen = torch.Generator().manual_seed(0)
    for shape in [sphere(0.3), box((0.2, 0.3, 0.5)), capsule(0.1, 0.4), cylinder(0.15, 0.4)]:
        surface = sample_surface(shape, 256, gen).double()[None]  # (1, K, 3)
        args = (torch.tensor([KINDS.index(shape.kind)]), t64([shape.size]), torch.zeros(1, 0, 4, dtype=F64))
        d, n = _signed_distance(surface, *args)
        assert d.abs().max() < 2e-6  # float32 samples
        assert torch.allclose(n.norm(dim=-1), torch.ones_like(d))
        # convex solids: out along the normal the distance grows by exactly the step; in by at most it
        out, _ = _signed_distance(surface + 0.05 * n, *args)
        assert torch.allclose(out, torch.full_like(out, 0.05), atol=2e-6)
        inward, _ = _signed_distance(surface - 0.02 * n, *args)
        assert (inward >= -0.02 - 2e-6).all() and (inward < 0).all()
        # far points: distances against an independent formula on a few rays
        far = surface * 3.0
        d_far, _ = _signed_distance(far, *args)
        assert (d_far > 0).all() and (d_far <= (far - surface).norm(dim=-1) + 1e-6).all()


def test_rollout_points_object_ids_and_padding():
    world = make_world([[sphere(0.1)], [box((0.2, 0.2, 0.2)), capsule(0.05, 0.2)]], particles=16)
    B, M, P = 2, 2, 16
    q = t64([[[1.0, 0, 0, 0]] * 2, [quat_about([1, 2, 3], 0.8), quat_about([0, 0, 1], 1.0)]])
    state = world.initial_state(t64([[[0, 0, 0.5], [9, 9, 9]], [[0, 0, 0.5], [1, 0, 0.5]]]), q)
    out = world.rollout(state, frames=5)
    assert out.points.shape == (B, 5, M * P, 3) and out.position.shape == (B, 5, M, 3)
    assert out.times.tolist() == pytest.approx([0, 1 / 16, 2 / 16, 3 / 16, 4 / 16])
    assert out.object_id.tolist() == [0] * P + [1] * P
    assert out.point_valid.tolist() == [[True] * P + [False] * P, [True] * (M * P)]
    R = torch.tensor(Rotation.from_quat(np.roll(q[1].numpy(), -1, axis=-1)).as_matrix())  # (M, 3, 3)
    expected = state.position[1, :, None] + torch.einsum("mij,mpj->mpi", R, world.bodies.particles[1])
    assert torch.allclose(out.points[1, 0], expected.reshape(M * P, 3), atol=1e-12)
    assert torch.equal(out.position[0, :, 1], out.position[0, :1, 1].expand(5, 3))  # padding never moves
    assert torch.allclose(quat_multiply(q, q * t64([1, -1, -1, -1]))[..., 0], torch.ones(B, M, dtype=F64))


def test_random_scenes_stay_finite_above_ground_inside_walls_and_lose_energy():
    gen = torch.Generator().manual_seed(0)
    mesh = from_mesh(trimesh.creation.icosphere(subdivisions=1, radius=0.08))
    library = [sphere(0.1), box((0.2, 0.15, 0.1)), capsule(0.05, 0.15), cylinder(0.08, 0.15), mesh]
    B = 12
    scenes = [
        [library[int(torch.randint(0, 5, (1,), generator=gen))] for _ in range(1 + b % 3)] for b in range(B)
    ]
    config = RigidConfig(walls=(0.4, 0.4, 2.0))
    world = RigidWorld(config, RigidBodies.from_shapes(scenes, generator=gen, particles=64))  # float32
    M = world.bodies.num_bodies
    x0 = torch.rand(B, M, 3, generator=gen) * torch.tensor([0.5, 0.5, 0.6]) + torch.tensor(
        [-0.25, -0.25, 0.2]
    )
    state = world.initial_state(
        x0,
        torch.randn(B, M, 4, generator=gen),
        torch.randn(B, M, 3, generator=gen),
        torch.randn(B, M, 3, generator=gen),
    )
    out = world.rollout(state, frames=17)
    valid = out.point_valid[:, None, :].expand(-1, 17, -1)
    pts = out.points[valid]
    assert torch.isfinite(out.points).all()
    assert pts[:, 2].min() > -0.03 and pts[:, :2].abs().max() < 0.4 + 0.03

    def energy(s: RigidState) -> torch.Tensor:
        height = (world.bodies.mass * s.position[..., 2] * world.movable).sum(-1) * G
        return world.kinetic_energy(s) + height

    assert (energy(out.final) < energy(state) + 1e-3).all()


# ---------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dt": 0.0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"substeps": 0}, "substeps"),
        ({"substeps": 2.5}, "substeps"),
        ({"restitution": 1.5}, "restitution"),
        ({"restitution": float("nan")}, "restitution"),
        ({"mu": -0.1}, "mu"),
        ({"walls": (1.0, 0.0, 1.0)}, "walls"),
        ({"gravity": (0.0, -9.8)}, "gravity"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_bad_config_values_raise_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RigidConfig(**kwargs)


def test_config_declares_ranges_as_field_metadata():
    import dataclasses

    ranges = {f.name: f.metadata.get("range") for f in dataclasses.fields(RigidConfig)}
    assert (
        ranges["restitution"] == (0.0, 1.0)
        and ranges["mu"] == (0.0, None)
        and ranges["substeps"] == (1, None)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mass": t64([[-1.0]])}, "mass"),
        ({"mass": t64([[float("nan")]])}, "mass"),
        ({"mass": t64([1.0, 2.0])}, "mass"),
        ({"density": 0.0}, "density"),
        ({"restitution": t64([[1.2]])}, "restitution"),
        ({"mu": -1.0}, "mu"),
        ({"fixed": torch.tensor([True])}, "fixed"),
        ({"particles": 0}, "particles"),
        ({"particle_mode": "edges"}, "particle_mode"),
        ({"contact_particles": -1}, "contact_particles"),
    ],
)
def test_bad_body_parameters_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RigidBodies.from_shapes([[sphere(0.1)]], **kwargs)


def test_bad_states_and_step_arguments_raise():
    world = make_world([[sphere(0.1), box((0.1, 0.1, 0.1))]])
    with pytest.raises(ValueError, match=r"position must be \[B, M, 3\]"):
        world.initial_state(torch.zeros(1, 3, dtype=F64))
    with pytest.raises(ValueError, match="velocity must be finite"):
        world.initial_state(
            torch.zeros(1, 2, 3, dtype=F64), velocity=torch.full((1, 2, 3), float("nan"), dtype=F64)
        )
    with pytest.raises(ValueError, match="orientation"):
        world.initial_state(torch.zeros(1, 2, 3, dtype=F64), torch.zeros(1, 2, 4, dtype=F64))
    with pytest.raises(TypeError, match="shapes"):
        RigidBodies.from_shapes([["sphere"]])
    state = world.initial_state(torch.zeros(1, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="dt"):
        world.step(state, dt=0.0)
    with pytest.raises(ValueError, match="substeps"):
        world.step(state, substeps=0)
    with pytest.raises(ValueError, match="force"):
        world.step(state, force=torch.zeros(1, 3, dtype=F64))
    with pytest.raises(ValueError, match="point was given without force"):
        world.step(state, point=torch.zeros(1, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="impulse"):
        world.apply_impulse(state, torch.zeros(2, 3, dtype=F64), torch.zeros(1, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="frames"):
        world.rollout(state, frames=0)
    with pytest.raises(ValueError, match="points"):
        world.world_points(state, torch.zeros(1, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"state must be for \[B, M\]"):
        other = make_world([[sphere(0.1)]])
        other.step(state)
    with pytest.raises(TypeError, match="config"):
        RigidWorld("fast", world.bodies)
