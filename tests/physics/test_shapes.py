"""physics.shapes: mass properties against closed forms and fine tessellations, samplers against the
geometry they sample (inside / on the surface, uniform by volume and by area), determinism, bad inputs."""

import math

import numpy as np
import pytest
import torch
import trimesh

from physics import shapes as S


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def primitives() -> list[S.Shape]:
    return [S.sphere(0.3), S.box((0.2, 0.3, 0.5)), S.capsule(0.1, 0.4), S.cylinder(0.15, 0.4)]


def analytic_sdf(shape: S.Shape, p: np.ndarray) -> np.ndarray:
    """Signed distance of the primitive at points p [N, 3] (negative inside), written independently."""
    r, a, b = shape.size
    if shape.kind == "sphere":
        return np.linalg.norm(p, axis=1) - r
    if shape.kind == "box":
        q = np.abs(p) - np.array([r, a, b])
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)
    if shape.kind == "capsule":
        closest = np.stack([0 * p[:, 0], 0 * p[:, 0], np.clip(p[:, 2], -a, a)], axis=1)
        return np.linalg.norm(p - closest, axis=1) - r
    d = np.stack([np.linalg.norm(p[:, :2], axis=1) - r, np.abs(p[:, 2]) - a], axis=1)
    return np.linalg.norm(np.maximum(d, 0), axis=1) + np.minimum(d.max(axis=1), 0)


# ---------------------------------------------------------------------------------------------------
# mass properties
# ---------------------------------------------------------------------------------------------------


def test_primitive_volumes_and_inertia_match_textbook_formulas():
    r = 0.3
    s = S.sphere(r)
    v = 4 / 3 * math.pi * r**3
    assert s.volume == pytest.approx(v, rel=1e-12)
    assert torch.allclose(s.inertia, torch.eye(3, dtype=torch.float64) * 2 / 5 * v * r * r)

    sx, sy, sz = 0.2, 0.3, 0.5
    s = S.box((sx, sy, sz))
    v = sx * sy * sz
    assert s.volume == pytest.approx(v, rel=1e-12)
    expected = (
        torch.diag(torch.tensor([sy**2 + sz**2, sx**2 + sz**2, sx**2 + sy**2], dtype=torch.float64)) * v / 12
    )
    assert torch.allclose(s.inertia, expected)
    assert s.size == pytest.approx((0.1, 0.15, 0.25))

    r, h = 0.15, 0.4
    s = S.cylinder(r, h)
    v = math.pi * r * r * h
    expected = torch.diag(torch.tensor([(3 * r * r + h * h) / 12, (3 * r * r + h * h) / 12, r * r / 2]))
    assert s.volume == pytest.approx(v, rel=1e-12)
    assert torch.allclose(s.inertia, expected.double() * v)

    # capsule: about z, cylinder r^2/2 plus a solid ball 2/5 r^2; volume cylinder + ball
    r, h = 0.1, 0.4
    s = S.capsule(r, h)
    vc, vs = math.pi * r * r * h, 4 / 3 * math.pi * r**3
    assert s.volume == pytest.approx(vc + vs, rel=1e-12)
    assert s.inertia[2, 2].item() == pytest.approx(vc * r * r / 2 + vs * 2 / 5 * r * r, rel=1e-12)
    assert s.size == pytest.approx((0.1, 0.2, 0.0))


@pytest.mark.parametrize(
    "shape, fine",
    [
        (S.sphere(0.3), trimesh.creation.icosphere(subdivisions=5, radius=0.3)),
        (S.box((0.2, 0.3, 0.5)), trimesh.creation.box(extents=(0.2, 0.3, 0.5))),
        (S.capsule(0.1, 0.4), trimesh.creation.capsule(height=0.4, radius=0.1, count=[256, 256])),
        (S.cylinder(0.1, 0.4), trimesh.creation.cylinder(radius=0.1, height=0.4, sections=512)),
    ],
    ids=["sphere", "box", "capsule", "cylinder"],
)
def test_primitive_mass_properties_match_fine_tessellations(shape, fine):
    # trimesh integrates the divergence theorem over a fine mesh: an independent check of the formulas
    assert shape.volume == pytest.approx(fine.volume, rel=2e-3)
    expected = torch.tensor(np.array(fine.moment_inertia))  # density 1, about the centre of mass
    assert torch.allclose(shape.inertia, expected, rtol=2e-3, atol=1e-12)
    assert shape.center_of_mass == (0.0, 0.0, 0.0)
    assert shape.mesh.is_watertight


def test_from_mesh_centres_the_mesh_and_keeps_exact_mass_properties():
    mesh = trimesh.creation.box(extents=(0.2, 0.3, 0.5))
    mesh.apply_translation((1.0, -2.0, 0.5))
    mesh.invert()  # inside-out winding must be repaired, not give negative volume
    shape = S.from_mesh(mesh)
    ref = S.box((0.2, 0.3, 0.5))
    assert shape.kind == "mesh" and shape.watertight
    assert shape.volume == pytest.approx(ref.volume, rel=1e-9)
    assert shape.center_of_mass == pytest.approx((1.0, -2.0, 0.5))
    assert torch.allclose(shape.inertia, ref.inertia, rtol=1e-9, atol=1e-12)
    assert np.allclose(shape.mesh.vertices.mean(axis=0), 0, atol=1e-12)
    assert shape.size == pytest.approx((0.1, 0.15, 0.25))
    assert shape.bounding_radius == pytest.approx(math.sqrt(0.1**2 + 0.15**2 + 0.25**2))
    # the caller's mesh is left as it was
    assert np.allclose(mesh.bounds.mean(axis=0), (1.0, -2.0, 0.5))


# ---------------------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------------------


def torus() -> S.Shape:
    mesh = trimesh.creation.torus(major_radius=0.3, minor_radius=0.1)
    mesh.apply_translation((0.5, 0.0, 0.2))
    return S.from_mesh(mesh)


@pytest.mark.parametrize("shape", primitives() + [torus()], ids=lambda s: s.kind)
def test_volume_samples_are_inside_and_their_moments_give_the_inertia(shape):
    n = 20000
    pts = S.sample_volume(shape, n, gen(1))
    assert pts.shape == (n, 3) and pts.dtype == torch.float32
    p = pts.double().numpy()
    if shape.kind == "mesh":  # the torus (ring radius 0.3, tube 0.1) is non-convex: its hole stays empty
        tube = np.sqrt((np.linalg.norm(p[:, :2], axis=1) - 0.3) ** 2 + p[:, 2] ** 2)
        assert (tube <= 0.1 * 1.01).all()  # the 32 x 32 tessellation's chords bulge inwards by < 1 %
    else:
        assert (analytic_sdf(shape, p) <= 1e-6).all()
    # uniform density: centroid at the centre of mass, second moments reproduce the inertia tensor
    scale = shape.bounding_radius
    assert np.abs(p.mean(axis=0)).max() < 0.02 * scale
    q = torch.tensor(p)
    moments = ((q * q).sum(1)[:, None, None] * torch.eye(3) - q[:, :, None] * q[:, None, :]).mean(0)
    estimate = moments * shape.volume
    assert torch.allclose(estimate, shape.inertia, rtol=0.04, atol=0.02 * shape.inertia.abs().max().item())


@pytest.mark.parametrize("shape", primitives(), ids=lambda s: s.kind)
def test_surface_samples_lie_on_the_surface_uniformly_by_area(shape):
    n = 20000
    p = S.sample_surface(shape, n, gen(2)).double().numpy()
    assert np.abs(analytic_sdf(shape, p)).max() < 1e-6
    assert (np.linalg.norm(p, axis=1) <= shape.bounding_radius + 1e-6).all()
    r, a, b = shape.size
    if shape.kind == "box":
        on = np.abs(np.abs(p) - np.array([r, a, b])) < 1e-7  # which faces each point is on
        areas = np.array([a * b, r * b, r * a])
        assert on.mean(axis=0) == pytest.approx(areas / areas.sum(), abs=0.015)
    elif shape.kind == "cylinder":  # caps 2 pi r^2 of 2 pi r^2 + 2 pi r (2a)
        caps = np.abs(np.abs(p[:, 2]) - a) < 1e-7
        assert caps.mean() == pytest.approx(r / (r + 2 * a), abs=0.015)
        assert np.abs(p.mean(axis=0)).max() < 0.01
    elif shape.kind == "capsule":  # hemispheres 4 pi r^2 of 4 pi r^2 + 2 pi r (2a)
        ends = np.abs(p[:, 2]) > a
        assert ends.mean() == pytest.approx(4 * r / (4 * r + 4 * a), abs=0.015)
    else:  # a uniform sphere has zero mean and isotropic covariance r^2/3
        assert np.abs(p.mean(axis=0)).max() < 0.01
        assert np.cov(p.T) == pytest.approx(np.eye(3) * r * r / 3, abs=0.002)


def test_mesh_surface_samples_are_on_faces_and_weighted_by_area():
    mesh = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    shape = S.from_mesh(mesh)
    p = S.sample_surface(shape, 20000, gen(3)).double().numpy()
    on = np.abs(np.abs(p) - np.array([0.5, 1.0, 1.5])) < 1e-9
    assert (on.sum(axis=1) >= 1).all() and (np.abs(p) <= np.array([0.5, 1.0, 1.5]) + 1e-9).all()
    areas = np.array([2 * 3, 1 * 3, 1 * 2], dtype=float)
    assert on.mean(axis=0) == pytest.approx(areas / areas.sum(), abs=0.015)


@pytest.mark.parametrize("sampler", [S.sample_surface, S.sample_volume], ids=["surface", "volume"])
@pytest.mark.parametrize("shape", primitives() + [torus()], ids=lambda s: s.kind)
def test_same_generator_seed_gives_the_same_samples(sampler, shape):
    a = sampler(shape, 500, gen(7))
    b = sampler(shape, 500, gen(7))
    c = sampler(shape, 500, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_mesh_contains_agrees_with_closed_form_insides():
    points = (torch.rand(4000, 3, generator=gen(4), dtype=torch.float64) - 0.5) * 1.2
    shape = torus()  # centred at its centre of mass: ring radius 0.3 about z, tube radius 0.1
    p = points.numpy()
    tube = np.sqrt((np.linalg.norm(p[:, :2], axis=1) - 0.3) ** 2 + p[:, 2] ** 2)
    inside = S.mesh_contains(shape.mesh, points).numpy()
    clear = np.abs(tube - 0.1) > 0.005  # away from the tessellation's deviation from the true torus
    assert (inside[clear] == (tube[clear] < 0.1)).all()
    assert inside.sum() > 50
    box_mesh = trimesh.creation.box(extents=(0.2, 0.4, 0.6))
    expected = (np.abs(p) < np.array([0.1, 0.2, 0.3])).all(axis=1)
    assert (S.mesh_contains(box_mesh, points).numpy() == expected).all()


def test_non_watertight_mesh_refuses_volume_sampling_but_samples_its_surface():
    mesh = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    mesh.update_faces(np.arange(len(mesh.faces)) != 0)  # punch a hole
    assert not mesh.is_watertight
    shape = S.from_mesh(mesh)
    assert not shape.watertight
    assert shape.volume == pytest.approx(6.0)  # its convex hull's, as documented
    with pytest.raises(ValueError, match="watertight.*fill_holes"):
        S.sample_volume(shape, 10, gen())
    assert S.sample_surface(shape, 10, gen()).shape == (10, 3)


# ---------------------------------------------------------------------------------------------------
# collision geometry
# ---------------------------------------------------------------------------------------------------


def test_support_points_span_the_shape():
    corners, r = S.support_points(S.box((0.2, 0.4, 0.6)))
    assert r == 0.0
    expected = {(sx * 0.1, sy * 0.2, sz * 0.3) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)}
    assert {tuple(np.round(c, 12)) for c in corners.tolist()} == {tuple(np.round(e, 12)) for e in expected}
    ends, r = S.support_points(S.capsule(0.1, 0.4))
    assert r == 0.1 and torch.allclose(ends, torch.tensor([[0.0, 0, -0.2], [0, 0, 0.2]], dtype=torch.float64))
    centre, r = S.support_points(S.sphere(0.3))
    assert r == 0.3 and torch.equal(centre, torch.zeros(1, 3, dtype=torch.float64))
    rims, r = S.support_points(S.cylinder(0.1, 0.4))
    assert torch.allclose(rims[:, :2].norm(dim=1), torch.full((len(rims),), 0.1, dtype=torch.float64))
    assert set(rims[:, 2].tolist()) == {-0.2, 0.2}
    # a general mesh: hull vertices, lowest point along any direction among them
    shape = torus()
    pts, r = S.support_points(shape)
    assert r == 0.0 and len(pts) <= S.MAX_SUPPORT_POINTS
    verts = torch.tensor(np.array(shape.mesh.vertices))
    d = torch.nn.functional.normalize(torch.randn(20, 3, generator=gen(), dtype=torch.float64), dim=1)
    gap = (verts @ d.T).max(0).values - (pts @ d.T).max(0).values  # support shortfall per direction
    assert gap.min() >= 0 and gap.max() < 0.03 * shape.bounding_radius


def test_hull_planes_enclose_the_mesh_and_touch_it():
    shape = torus()
    planes = S.hull_planes(shape)
    verts = torch.tensor(np.array(shape.mesh.vertices))
    assert torch.allclose(planes[:, :3].norm(dim=1), torch.ones(len(planes), dtype=torch.float64))
    s = verts @ planes[:, :3].T - planes[:, 3]  # (V, F) signed distances to each plane
    assert s.max() < 1e-9  # every vertex inside every plane
    assert torch.allclose(s.max(0).values, torch.zeros(len(planes), dtype=torch.float64), atol=1e-9)
    box_planes = S.hull_planes(S.from_mesh(trimesh.creation.box(extents=(1.0, 2.0, 3.0))))
    assert len(box_planes) == 6  # coplanar triangles merged


# ---------------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: S.sphere(-1.0), "radius"),
        (lambda: S.sphere(0.0), "radius"),
        (lambda: S.sphere(float("nan")), "radius"),
        (lambda: S.box((1.0, 2.0)), "extents"),
        (lambda: S.box((1.0, -2.0, 3.0)), r"extents\[1\]"),
        (lambda: S.cylinder(0.1, 0.0), "height"),
        (lambda: S.capsule(0.0, 1.0), "radius"),
        (lambda: S.from_mesh(trimesh.Trimesh()), "at least one triangle"),
        (lambda: S.from_mesh(trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]])), "volume"),
        (lambda: S.sample_surface(S.sphere(1.0), 0), "n must be"),
        (lambda: S.sample_volume(S.sphere(1.0), 2.5), "n must be"),
        (lambda: S.sample_volume(S.sphere(1.0), True), "n must be"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="radius"):
        S.sphere("big")
    with pytest.raises(TypeError, match="trimesh.Trimesh"):
        S.from_mesh("mesh.obj")
    with pytest.raises(TypeError, match="generator"):
        S.sample_surface(S.sphere(1.0), 4, generator=np.random.default_rng(0))
    with pytest.raises(TypeError, match="shape"):
        S.sample_volume(trimesh.creation.box(), 4)
