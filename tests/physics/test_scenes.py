"""physics.scenes: seeded sampler (determinism, validity, camera), serialisation, captions."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from physics import scenes as S
from physics.camera import check_visible
from physics.shapes import sample_surface

KW = dict(frames=17, fps=12.0, width=64, height=64)


def _scene(kind: str = "rigid", seed: int = 0, **cfg) -> S.Scene:
    return S.sample_scene(S.SceneConfig(**cfg), kind=kind, seed=seed, **KW)


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b = _scene("mpm", 7), _scene("mpm", 7)
    assert a == b
    g = torch.Generator().manual_seed(7)
    assert S.sample_scene(S.SceneConfig(), kind="mpm", seed=7, generator=g, **KW) == a
    others = {json.dumps(_scene("mpm", s).to_dict()) for s in range(8)}
    assert len(others) == 8
    assert S.scene_seed(0, 1) == S.scene_seed(0, 1) != S.scene_seed(0, 2) != S.scene_seed(1, 1)


def test_json_round_trip():
    scene = _scene("mpm", 3, drag_probability=1.0)
    data = json.loads(json.dumps(scene.to_dict()))
    assert S.Scene.from_dict(data) == scene
    with pytest.raises(ValueError, match="Scene dict"):
        S.Scene.from_dict({k: v for k, v in data.items() if k != "camera"})


@pytest.mark.parametrize("kind", ["rigid", "mpm"])
def test_scenes_are_physically_valid_and_in_view(kind):
    cfg = S.SceneConfig()
    for seed in range(12):
        scene = _scene(kind, seed)
        assert cfg.min_objects <= len(scene.objects) <= cfg.max_objects
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == len(colours) and set(colours) <= set(S.COLOURS)
        for i, o in enumerate(scene.objects):
            assert o.shape in S.SHAPES
            assert o.material == "rigid" if kind == "rigid" else o.material in S.MATERIALS
            lo, hi = cfg.youngs_modulus
            assert lo <= o.youngs_modulus <= hi and 0 <= o.poisson_ratio < 0.5 and o.density > 0
            assert abs(math.sqrt(sum(q * q for q in o.orientation)) - 1) < 1e-9
            # the solid starts above the floor, clear of the other objects
            R = S.quat_to_matrix(o.orientation)
            body = sample_surface(S.make_shape(o), 256, torch.Generator().manual_seed(0)).double()
            pts = body @ R.T + torch.tensor(o.position, dtype=torch.float64)
            assert float(pts[:, 2].min()) >= scene.floor_height - 1e-6
            for p in scene.objects[i + 1 :]:
                assert math.dist(o.position, p.position) > o.bounding_radius + p.bounding_radius
            # every object shows in the camera at t = 0
            check_visible(pts.float(), scene.camera.K(), scene.camera.E(), 64, 64, min_points=4)
        for d in scene.drags:
            assert 0 <= d.object_index < len(scene.objects) and d.duration > 0
            obj = scene.objects[d.object_index]
            accel = math.hypot(*d.force) / obj.mass
            assert cfg.drag_acceleration[0] - 1e-9 <= accel <= cfg.drag_acceleration[1] + 1e-9
            assert math.dist(d.point, obj.position) <= obj.bounding_radius + 1e-6


def test_bounds_are_respected():
    bounds = ((-0.3, -0.3, -0.05), (0.3, 0.3, 0.6))
    for seed in range(10):
        scene = S.sample_scene(S.SceneConfig(), kind="mpm", seed=seed, bounds=bounds, **KW)
        for o in scene.objects:
            for a in range(3):
                assert bounds[0][a] - 1e-9 <= o.position[a] - o.bounding_radius
                assert o.position[a] + o.bounding_radius <= bounds[1][a] + 1e-9


def test_material_mix_and_config_errors():
    only_sand = _scene("mpm", 0, materials=("sand",), material_weights=(1.0,), min_objects=3, max_objects=3)
    assert [o.material for o in only_sand.objects] == ["sand"] * 3
    with pytest.raises(ValueError, match="min_objects"):
        S.SceneConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="materials"):
        S.SceneConfig(materials=("slime",), material_weights=(1.0,))
    with pytest.raises(ValueError, match="material_weights"):
        S.SceneConfig(material_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="camera_fov"):
        S.SceneConfig(camera_fov=(60.0, 30.0))
    with pytest.raises(ValueError, match="kind"):
        S.sample_scene(S.SceneConfig(), kind="fluid", **KW)
    with pytest.raises(ValueError, match="no valid scene"):  # a camera aimed 50 m away sees nothing
        S.sample_scene(S.SceneConfig(target_jitter=50.0, max_tries=3), kind="rigid", **KW)


# ------------------------------------------------------------------------------------------------ captions


def _single(obj: S.ObjectSpec, eye=(3.0, 0.0, 1.0), drags=()) -> S.Scene:
    camera = S.CameraSpec(eye=eye, target=(0.0, 0.0, 0.2), fov_deg=50.0, width=64, height=64)
    return S.Scene(kind="mpm", seed=0, objects=(obj,), drags=drags, camera=camera, frames=17, fps=12.0)


def _obj(**kw) -> S.ObjectSpec:
    base = dict(
        shape="sphere",
        size=(0.1, 0.0, 0.0),
        colour="red",
        material="rigid",
        density=1000.0,
        youngs_modulus=1e5,
        poisson_ratio=0.3,
        restitution=0.8,
        friction=0.5,
        yield_stress=1e3,
        friction_angle=30.0,
        position=(0.0, 0.0, 0.6),
        orientation=(1.0, 0.0, 0.0, 0.0),
        velocity=(0.0, 0.0, 0.0),
        angular_velocity=(0.0, 0.0, 0.0),
    )
    return S.ObjectSpec(**{**base, **kw})


def _ball_points(com: torch.Tensor, radius: float = 0.1, n: int = 64) -> torch.Tensor:
    dirs = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    body = radius * dirs / dirs.norm(dim=1, keepdim=True)
    return com[:, None, :] + body[None]  # (T, N, 3)


def _bouncing_com(frames=17, fps=12.0, z0=0.6, e=0.8, vx=0.0) -> torch.Tensor:
    z, vz, out, r, h = z0, 0.0, [], 0.1, 1 / (fps * 100)
    for step in range(frames * 100):
        if step % 100 == 0:
            out.append([vx * step * h, 0.0, z])
        vz -= 9.81 * h
        z += vz * h
        if z < r and vz < 0:
            z, vz = 2 * r - z, -e * vz
    return torch.tensor(out, dtype=torch.float64)


def test_object_names():
    assert S.object_name(_obj()) == "red rubber ball"
    assert (
        S.object_name(_obj(restitution=0.2, shape="box", size=(0.1, 0.1, 0.1), colour="blue"))
        == "blue wooden cube"
    )
    assert (
        S.object_name(_obj(material="plasticine", shape="box", size=(0.1, 0.05, 0.1)))
        == "red plasticine block"
    )
    assert S.object_name(_obj(material="elastic", youngs_modulus=2e4)) == "red jelly ball"
    assert S.object_name(_obj(material="sand", shape="cylinder", size=(0.1, 0.1, 0.0))) == "red sand cylinder"


def test_caption_counts_bounces_and_direction():
    com = _bouncing_com(e=0.8, vx=0.0)
    ids = torch.zeros(64, dtype=torch.long)
    # camera on the +x axis looking at -x: world +y is the camera's right
    left = com - torch.tensor([0.0, 0.6, 0.0], dtype=torch.float64) * torch.linspace(0, 1, 17)[:, None]
    caption = S.describe(_single(_obj()), _ball_points(left), ids)
    assert caption == "a red rubber ball falls, bounces three times and rolls to the left", caption
    right = com + torch.tensor([0.0, 0.6, 0.0], dtype=torch.float64) * torch.linspace(0, 1, 17)[:, None]
    assert S.describe(_single(_obj()), _ball_points(right), ids).endswith("rolls to the right")
    towards = com + torch.tensor([0.6, 0.0, 0.0], dtype=torch.float64) * torch.linspace(0, 1, 17)[:, None]
    assert S.describe(_single(_obj()), _ball_points(towards), ids).endswith("rolls towards the camera")
    dead = _bouncing_com(e=0.0)
    assert (
        S.describe(_single(_obj()), _ball_points(dead), ids)
        == "a red rubber ball falls and lands on the floor"
    )


def test_caption_material_outcomes():
    ids = torch.zeros(64, dtype=torch.long)
    still = _ball_points(torch.tensor([[0.0, 0.0, 0.1]] * 17, dtype=torch.float64))
    assert (
        S.describe(_single(_obj(position=(0.0, 0.0, 0.1))), still, ids)
        == "a red rubber ball rests on the floor"
    )
    # plasticine dragged to the right (camera's right is world +y) and squashed flat for good
    squash = torch.ones(17, 1, 3, dtype=torch.float64)
    squash[:, 0, 2] = torch.linspace(1.0, 0.5, 17)
    squash[:, 0, :2] = torch.linspace(1.0, 1.4, 17)[:, None]
    shift = torch.zeros(17, 1, 3, dtype=torch.float64)
    shift[:, 0, 1] = torch.linspace(0.0, 0.4, 17)
    base = _ball_points(torch.tensor([[0.0, 0.0, 0.1]] * 17, dtype=torch.float64)) - torch.tensor([0, 0, 0.1])
    flat = base * squash + shift + torch.tensor([0, 0, 0.1])
    drag = S.Drag(object_index=0, point=(0.0, 0.0, 0.2), force=(0.0, 20.0, 2.0), start=0.0, duration=0.4)
    clay = _obj(material="plasticine", shape="box", size=(0.1, 0.1, 0.1), colour="blue", position=(0, 0, 0.1))
    caption = S.describe(_single(clay, drags=(drag,)), flat, ids)
    assert caption == "a blue plasticine cube is dragged to the right and stays deformed", caption
    sand = _obj(material="sand", colour="yellow", position=(0, 0, 0.1))
    assert S.describe(_single(sand), flat, ids).endswith("collapses into a pile")
    with pytest.raises(ValueError, match=r"\[T, N, 3\]"):
        S.describe(_single(sand), flat[0], ids)


def test_caption_of_a_simulated_bouncing_ball():
    from physics.rigid import RigidBodies, RigidConfig, RigidWorld
    from physics.shapes import sphere

    obj = _obj(restitution=0.8)
    scene = dataclasses.replace(_single(obj), kind="rigid")
    bodies = RigidBodies.from_shapes(
        [[sphere(0.1)]], restitution=0.8, particles=64, generator=torch.Generator().manual_seed(0)
    )
    world = RigidWorld(RigidConfig(substeps=8), bodies)
    out = world.rollout(world.initial_state(torch.tensor([[[0.0, 0.0, 0.6]]])), 17, frame_dt=1 / 12)
    caption = S.describe(scene, out.points[0], out.object_id)
    assert caption.startswith("a red rubber ball falls and bounces twice"), caption


@pytest.mark.parametrize("kind", ["rigid", "mpm"])
def test_redraw_motion_keeps_the_first_frame_and_redraws_the_rest(kind):
    scene = _scene(kind, seed=3, drag_probability=1.0)
    cfg = S.SceneConfig(drag_probability=1.0)
    twin = S.redraw_motion(scene, cfg, generator=torch.Generator().manual_seed(0))
    seen = ("shape", "size", "colour", "material", "density", "position", "orientation", "youngs_modulus")
    for a, b in zip(scene.objects, twin.objects, strict=True):
        assert all(getattr(a, f) == getattr(b, f) for f in seen)  # everything frame 0 shows is kept
        assert a.velocity != b.velocity
        if kind == "rigid":
            assert a.angular_velocity != b.angular_velocity and a.restitution != b.restitution
        else:  # MPM scenes have no spin and the solver's global friction: left alone
            assert (a.angular_velocity, a.friction, a.restitution) == (b.angular_velocity, b.friction, b.restitution)
    assert (twin.camera, twin.frames, twin.fps, twin.seed) == (scene.camera, scene.frames, scene.fps, scene.seed)
    assert twin.drags != scene.drags and len(twin.drags) == 1
    kept = S.redraw_motion(scene, cfg, generator=torch.Generator().manual_seed(0), keep_drags=True)
    assert kept.drags == scene.drags and kept.objects == twin.objects  # the same draws for the objects
    again = S.redraw_motion(scene, cfg, generator=torch.Generator().manual_seed(0))
    assert again == twin  # reproducible from the generator
    calm = S.redraw_motion(scene, S.SceneConfig(drag_probability=0.0), generator=torch.Generator().manual_seed(0))
    assert calm.drags == ()
