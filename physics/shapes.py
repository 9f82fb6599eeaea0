"""Rigid shapes: trimesh primitives and user meshes with their mass properties and point samplers.

A :class:`Shape` is one solid in its *body frame*: the centre of mass sits at the origin, axes are those of
the primitive (capsules and cylinders lie along z) or of the user's mesh. It holds the triangle mesh (for
rendering), the size parameters the simulator's contact code needs, and the mass properties per unit
density, so a body of density ``rho`` has mass ``rho * volume`` and body-frame inertia ``rho * inertia``::

    ball = sphere(0.1)                                    # radius 0.1 m
    crate = box((0.3, 0.2, 0.1))                          # full side lengths (m), like trimesh's extents
    pts = sample_volume(crate, 2048, torch.Generator().manual_seed(0))   # (N, 3) float32, body frame

Primitives use closed-form volumes and inertia tensors (their meshes are only tessellations) and exact
analytic samplers; a general mesh uses trimesh's mass properties, area-weighted surface sampling and
rejection sampling from its bounding box with a vectorised torch ray-parity inside test (no spatial index
package needed; 0.15 s against about 4 s for ``trimesh``'s ``mesh.contains`` on 20,000 points and a
2,048-face torus, one core).
Every random draw comes from ``torch`` with the caller's generator, never from numpy's global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import trimesh

__all__ = [
    "KINDS",
    "Shape",
    "box",
    "capsule",
    "cylinder",
    "from_mesh",
    "hull_planes",
    "sample_surface",
    "sample_volume",
    "sphere",
    "mesh_contains",
    "support_points",
]

Kind = Literal["sphere", "box", "capsule", "cylinder", "mesh"]
KINDS: tuple[str, ...] = ("sphere", "box", "capsule", "cylinder", "mesh")  # index = kind id in physics.rigid

SPHERE_SUBDIVISIONS = 3  # icosphere level of the render mesh (642 vertices)
ROUND_SECTIONS = 32  # segments around the axis of capsule/cylinder meshes and cylinder support rims
MAX_SUPPORT_POINTS = 128  # cap on convex-hull vertices kept as ground-contact points of a general mesh


@dataclass(frozen=True, eq=False)
class Shape:
    """A solid in its body frame (centre of mass at the origin) with mass properties per unit density.

    Attributes:
        kind: ``"sphere" | "box" | "capsule" | "cylinder" | "mesh"``.
        size: three lengths in m whose meaning depends on ``kind``: sphere ``(r, 0, 0)``; box half extents
            ``(hx, hy, hz)``; capsule ``(r, half_length, 0)`` with the two hemisphere centres at
            ``z = +-half_length``; cylinder ``(r, half_height, 0)`` along z; mesh: half extents of the
            centred mesh's axis-aligned bounding box (informative only).
        mesh: triangle mesh in the body frame (for rendering and general-mesh sampling).
        volume: m^3. For a mesh that is not watertight this is the volume of its convex hull.
        center_of_mass: where the origin of the body frame lies in the frame of the mesh the user passed
            (m); zeros for primitives.
        inertia: [3, 3] float64 body-frame inertia tensor about the centre of mass per unit density
            (m^5; multiply by the density in kg/m^3 to get kg m^2).
        watertight: whether the mesh encloses a volume (always True for primitives); volume sampling
            needs it.
    """

    kind: Kind
    size: tuple[float, float, float]
    mesh: trimesh.Trimesh
    volume: float
    center_of_mass: tuple[float, float, float]
    inertia: torch.Tensor
    watertight: bool = True

    @property
    def bounding_radius(self) -> float:
        """Largest distance from the centre of mass to a point of the solid (m)."""
        r, a, b = self.size
        if self.kind == "sphere":
            return r
        if self.kind == "box":
            return math.sqrt(r * r + a * a + b * b)
        if self.kind == "capsule":
            return a + r
        if self.kind == "cylinder":
            return math.hypot(r, a)
        return float(np.linalg.norm(self.mesh.vertices, axis=1).max())


# ----------------------------------------------------------------------------------------------------
# constructors
# ----------------------------------------------------------------------------------------------------


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in m, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite length > 0 (m), got {value!r}")
    return v


def _diag(a: float, b: float, c: float) -> torch.Tensor:
    return torch.diag(torch.tensor([a, b, c], dtype=torch.float64))


def sphere(radius: float) -> Shape:
    """Solid ball of ``radius`` m. Inertia per unit density: ``2/5 V r^2`` on the diagonal."""
    r = _positive("radius", radius)
    volume = 4.0 / 3.0 * math.pi * r**3
    i = 0.4 * volume * r * r
    mesh = trimesh.creation.icosphere(subdivisions=SPHERE_SUBDIVISIONS, radius=r)
    return Shape("sphere", (r, 0.0, 0.0), mesh, volume, (0.0, 0.0, 0.0), _diag(i, i, i))


def box(extents: tuple[float, float, float] | list[float]) -> Shape:
    """Solid box with full side lengths ``extents = (sx, sy, sz)`` in m (trimesh's convention).

    Inertia per unit density about x: ``V (sy^2 + sz^2) / 12``, and cyclically.
    """
    if not isinstance(extents, (tuple, list, np.ndarray, torch.Tensor)) or len(extents) != 3:
        raise ValueError(f"extents must be three side lengths (sx, sy, sz) in m, got {extents!r}")
    sx, sy, sz = (_positive(f"extents[{k}]", float(e)) for k, e in enumerate(extents))
    volume = sx * sy * sz
    inertia = _diag(sy * sy + sz * sz, sx * sx + sz * sz, sx * sx + sy * sy) * (volume / 12.0)
    mesh = trimesh.creation.box(extents=(sx, sy, sz))
    return Shape("box", (sx / 2, sy / 2, sz / 2), mesh, volume, (0.0, 0.0, 0.0), inertia)


def cylinder(radius: float, height: float) -> Shape:
    """Solid cylinder along z, ``radius`` and full ``height`` in m, centred at the origin.

    Inertia per unit density: ``V r^2 / 2`` about z, ``V (3 r^2 + h^2) / 12`` about x and y.
    """
    r, h = _positive("radius", radius), _positive("height", height)
    volume = math.pi * r * r * h
    ixx = volume * (3 * r * r + h * h) / 12.0
    mesh = trimesh.creation.cylinder(radius=r, height=h, sections=ROUND_SECTIONS)
    return Shape(
        "cylinder", (r, h / 2, 0.0), mesh, volume, (0.0, 0.0, 0.0), _diag(ixx, ixx, volume * r * r / 2)
    )


def capsule(radius: float, height: float) -> Shape:
    """Solid capsule along z: a cylinder of ``radius`` and ``height`` (m) capped by two hemispheres.

    ``height`` is the distance between the hemisphere centres (trimesh's convention); the total length is
    ``height + 2 radius``. Inertia per unit density, with cylinder volume ``Vc = pi r^2 h`` and ball volume
    ``Vs = 4/3 pi r^3``: about z ``Vc r^2/2 + 2/5 Vs r^2``; about x and y
    ``Vc (h^2/12 + r^2/4) + Vs (2/5 r^2 + h^2/4 + 3/8 h r)`` (each hemisphere moved by the parallel-axis
    theorem from its own centre of mass, 3r/8 from its flat face).
    """
    r, h = _positive("radius", radius), _positive("height", height)
    vc, vs = math.pi * r * r * h, 4.0 / 3.0 * math.pi * r**3
    izz = vc * r * r / 2 + 0.4 * vs * r * r
    ixx = vc * (h * h / 12 + r * r / 4) + vs * (0.4 * r * r + h * h / 4 + 3.0 * h * r / 8)
    mesh = trimesh.creation.capsule(height=h, radius=r, count=[ROUND_SECTIONS, ROUND_SECTIONS])
    return Shape("capsule", (r, h / 2, 0.0), mesh, vc + vs, (0.0, 0.0, 0.0), _diag(ixx, ixx, izz))


def from_mesh(mesh: trimesh.Trimesh) -> Shape:
    """A shape from any triangle mesh; the returned mesh is a translated copy centred at its centre of mass.

    A watertight mesh gets its exact mass properties (trimesh's divergence-theorem integrals; inverted
    winding is fixed). A mesh that is not watertight has no inside, so its mass properties are those of
    its convex hull, ``watertight`` is False and :func:`sample_volume` refuses it; surface sampling works.

    Raises:
        TypeError: ``mesh`` is not a ``trimesh.Trimesh``.
        ValueError: the mesh has no faces, non-finite vertices or zero volume.
    """
    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0:
        raise ValueError("mesh must have at least one triangle, got an empty mesh")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError("mesh vertices must be finite, got NaN or inf")
    mesh = mesh.copy()
    watertight = bool(mesh.is_watertight)
    try:
        solid = mesh if watertight else mesh.convex_hull
    except Exception as err:  # qhull fails on flat or degenerate point sets
        raise ValueError(
            f"mesh must enclose a volume > 0, got a flat or degenerate mesh ({err.__class__.__name__})"
        ) from err
    solid.density = 1.0
    if solid.volume < 0:  # inside-out winding: flip so the divergence-theorem integrals are positive
        solid.invert()
    volume = float(solid.volume)
    scale = float(np.ptp(mesh.vertices, axis=0).max())
    if not volume > 1e-12 * scale**3:
        raise ValueError(f"mesh must enclose a volume > 0, got volume {volume:.3g} m^3 (flat or degenerate)")
    com = np.asarray(solid.center_mass, dtype=np.float64)
    inertia = torch.tensor(np.array(solid.moment_inertia), dtype=torch.float64)  # about the centre of mass
    inertia = (inertia + inertia.T) / 2
    mesh.apply_translation(-com)
    half = np.abs(mesh.bounds).max(axis=0)
    size = (float(half[0]), float(half[1]), float(half[2]))
    return Shape("mesh", size, mesh, volume, tuple(float(c) for c in com), inertia, watertight)


# ----------------------------------------------------------------------------------------------------
# samplers (analytic for primitives, trimesh for general meshes)
# ----------------------------------------------------------------------------------------------------


def _check_sampling_args(shape: Shape, n: int, generator: torch.Generator | None) -> None:
    if not isinstance(shape, Shape):
        raise TypeError(f"shape must be a physics.shapes.Shape, got {type(shape).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (number of points), got {n!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _rand(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, k, generator=generator, dtype=torch.float64)


def _unit_vectors(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform directions on the unit sphere (normalised Gaussians; Muller 1959)."""
    g = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (N, 3)


def _disc(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform points in the unit disc (radius sqrt(u) makes the density uniform in area)."""
    u = _rand(n, 2, generator)
    rho, theta = u[:, 0].sqrt(), 2 * math.pi * u[:, 1]
    return torch.stack([rho * theta.cos(), rho * theta.sin()], dim=1)  # (N, 2)


def _choose(weights: list[float], n: int, generator: torch.Generator | None) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)  # (N,) region index


def sample_surface(shape: Shape, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Points uniformly distributed (by area) on the surface of ``shape``, in its body frame.

    Args:
        shape: the solid.
        n: number of points N.
        generator: torch random generator; the same seed gives the same points.

    Returns:
        [N, 3] float32 positions in m, centred at the centre of mass.
    """
    _check_sampling_args(shape, n, generator)
    r, a, b = shape.size
    if shape.kind == "sphere":
        pts = _unit_vectors(n, generator) * r
    elif shape.kind == "box":
        half = torch.tensor([r, a, b], dtype=torch.float64)
        areas = [a * b, r * b, r * a]  # face of constant x, y, z (half-size products; ratios suffice)
        face = _choose([areas[k // 2] for k in range(6)], n, generator)  # (N,) in 0..5
        pts = (2 * _rand(n, 3, generator) - 1) * half
        axis = face // 2
        sign = (face % 2).to(torch.float64) * 2 - 1
        on_face = torch.nn.functional.one_hot(axis, 3).bool()
        pts = torch.where(on_face, (sign[:, None] * half).expand(n, 3), pts)
    elif shape.kind in ("cylinder", "capsule"):
        # cylinder: side 2 pi r (2a) + two caps pi r^2; capsule: side + one sphere's worth 4 pi r^2
        side = 4 * math.pi * r * a
        ends = 2 * math.pi * r * r if shape.kind == "cylinder" else 4 * math.pi * r * r
        region = _choose([side, ends], n, generator)  # (N,) 0 side, 1 ends
        theta = 2 * math.pi * _rand(n, 1, generator)
        side_pts = torch.cat([r * theta.cos(), r * theta.sin(), (2 * _rand(n, 1, generator) - 1) * a], dim=1)
        if shape.kind == "cylinder":
            sign = torch.where(_rand(n, 1, generator) < 0.5, -1.0, 1.0).to(torch.float64)
            end_pts = torch.cat([_disc(n, generator) * r, sign * a], dim=1)
        else:
            end_pts = _unit_vectors(n, generator) * r
            end_pts = end_pts + torch.nn.functional.pad(torch.sign(end_pts[:, 2:]) * a, (2, 0))
        pts = torch.where((region == 0)[:, None], side_pts, end_pts)
    else:
        mesh = shape.mesh
        areas = torch.tensor(np.array(mesh.area_faces), dtype=torch.float64)
        face = torch.multinomial(areas / areas.sum(), n, replacement=True, generator=generator)  # (N,)
        tri = torch.tensor(np.array(mesh.triangles), dtype=torch.float64)[face]  # (N, 3, 3)
        u = _rand(n, 2, generator)
        # uniform barycentric coordinates (Osada et al. 2002): (1 - sqrt(u1), sqrt(u1)(1 - u2), sqrt(u1) u2)
        s = u[:, :1].sqrt()
        w = torch.cat([1 - s, s * (1 - u[:, 1:]), s * u[:, 1:]], dim=1)  # (N, 3)
        pts = torch.einsum("nk,nkd->nd", w, tri)
    return pts.to(torch.float32)


def sample_volume(shape: Shape, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Points uniformly distributed inside ``shape``, in its body frame.

    Primitives are sampled in closed form; a general mesh by rejection from its bounding box with the
    ray-parity inside test :func:`mesh_contains` (candidates drawn with torch from ``generator``).

    Args:
        shape: the solid; a mesh shape must be watertight.
        n: number of points N.
        generator: torch random generator; the same seed gives the same points.

    Returns:
        [N, 3] float32 positions in m, centred at the centre of mass.

    Raises:
        ValueError: the mesh is not watertight (it has no inside: repair it with ``mesh.fill_holes()`` or
            ``trimesh.repair``, or use :func:`sample_surface`).
    """
    _check_sampling_args(shape, n, generator)
    r, a, b = shape.size
    if shape.kind == "sphere":
        pts = _unit_vectors(n, generator) * r * _rand(n, 1, generator).pow(1 / 3)  # radius ~ u^(1/3)
    elif shape.kind == "box":
        pts = (2 * _rand(n, 3, generator) - 1) * torch.tensor([r, a, b], dtype=torch.float64)
    elif shape.kind == "cylinder":
        pts = torch.cat([_disc(n, generator) * r, (2 * _rand(n, 1, generator) - 1) * a], dim=1)
    elif shape.kind == "capsule":
        # the capsule is a cylinder plus a ball split at its equator and moved to +-a
        region = _choose([2 * math.pi * r * r * a, 4.0 / 3.0 * math.pi * r**3], n, generator)
        cyl = torch.cat([_disc(n, generator) * r, (2 * _rand(n, 1, generator) - 1) * a], dim=1)
        ball = _unit_vectors(n, generator) * r * _rand(n, 1, generator).pow(1 / 3)
        ball = ball + torch.nn.functional.pad(torch.sign(ball[:, 2:]) * a, (2, 0))
        pts = torch.where((region == 0)[:, None], cyl, ball)
    else:
        pts = _rejection_sample(shape, n, generator)
    return pts.to(torch.float32)


def mesh_contains(mesh: trimesh.Trimesh, points: torch.Tensor) -> torch.Tensor:
    """Inside test for a watertight mesh by ray parity: a point is inside iff a ray from it along +z
    crosses the surface an odd number of times.

    Vectorised in torch: triangles are binned by their xy bounding boxes into a grid of about ``F / 4``
    cells, and the points of each cell are tested against that cell's triangles at once (three edge
    functions in the xy plane decide whether the ray hits a triangle, barycentric interpolation of its
    corner heights gives where). No spatial index package is needed. Points exactly on a triangle edge's
    vertical plane (measure zero for random candidates) may be misclassified.

    Args:
        mesh: watertight triangle mesh.
        points: [N, 3] positions in the mesh's frame.

    Returns:
        [N] bool.
    """
    tri = torch.tensor(np.array(mesh.triangles), dtype=torch.float64)  # (F, 3, 3)
    x, y, z = tri.unbind(-1)  # (F, 3) corner coordinates
    # edge function of the edge opposite corner k (from corner k+1 to corner k+2): A x + B y + C, so that
    # its value at a point is twice the signed area of (point, k+1, k+2): the unnormalised barycentric
    # weight of corner k
    x1, y1, x2, y2 = x.roll(-1, 1), y.roll(-1, 1), x.roll(-2, 1), y.roll(-2, 1)
    A, B, C = y1 - y2, x2 - x1, x1 * y2 - x2 * y1
    area2 = (A * x + B * y + C)[:, 0]  # (F,) twice the signed projected area
    keep = area2.abs() > 1e-15  # a vertical ray never crosses a vertical triangle
    A, B, C, z, x, y, area2 = A[keep], B[keep], C[keep], z[keep], x[keep], y[keep], area2[keep]
    orient = torch.sign(area2)[:, None]

    # bin triangles by the xy cells their bounding boxes overlap
    p = points.to(torch.float64)
    lo = torch.stack([x.min(), y.min()])
    cells = int(min(max(math.sqrt(len(area2) / 4), 1), 32))
    size = (torch.stack([x.max(), y.max()]) - lo).clamp(min=1e-12) / cells
    cell = lambda u, d: ((u - lo[d]) / size[d]).floor().clamp(0, cells - 1).long()  # noqa: E731
    tri_lo = torch.stack([cell(x.min(1).values, 0), cell(y.min(1).values, 1)], dim=1)  # (F, 2)
    tri_hi = torch.stack([cell(x.max(1).values, 0), cell(y.max(1).values, 1)], dim=1)
    point_cell = cell(p[:, 0], 0) * cells + cell(p[:, 1], 1)  # (N,)
    inside = torch.zeros(len(p), dtype=torch.bool)
    outside_xy = ((p[:, :2] < lo) | (p[:, :2] > lo + size * cells)).any(1)
    for c in torch.unique(point_cell[~outside_xy]).tolist():
        ci, cj = divmod(c, cells)
        t = (
            (tri_lo[:, 0] <= ci) & (tri_hi[:, 0] >= ci) & (tri_lo[:, 1] <= cj) & (tri_hi[:, 1] >= cj)
        ).nonzero()[:, 0]
        idx = ((point_cell == c) & ~outside_xy).nonzero()[:, 0]
        q = p[idx]
        e = A[t] * q[:, 0, None, None] + B[t] * q[:, 1, None, None] + C[t]  # (n, f, 3)
        hit = ((e * orient[t]) > 0).all(-1)  # (n, f) the ray's xy lies inside the projected triangle
        z_hit = (e * z[t]).sum(-1) / area2[t]  # (n, f) height of the triangle's plane there
        inside[idx] = ((hit & (z_hit > q[:, 2, None])).sum(1) % 2) == 1
    return inside


def _rejection_sample(shape: Shape, n: int, generator: torch.Generator | None) -> torch.Tensor:
    if not shape.watertight:
        raise ValueError(
            "sample_volume needs a watertight mesh (it has no inside otherwise), got a mesh with "
            f"{len(shape.mesh.faces)} faces that is not watertight; repair it first (mesh.fill_holes() or "
            "trimesh.repair) or sample its surface with sample_surface"
        )
    lo, hi = (torch.tensor(np.array(v), dtype=torch.float64) for v in shape.mesh.bounds)
    accept = max(shape.volume / float((hi - lo).prod()), 1e-3)  # expected acceptance rate
    chunks, have = [], 0
    for _ in range(1000):
        m = int(min(max(1.2 * (n - have) / accept, 256), 1_000_000))
        cand = lo + (hi - lo) * _rand(m, 3, generator)  # (m, 3) candidates in the bounding box
        kept = cand[mesh_contains(shape.mesh, cand)]
        chunks.append(kept)
        have += len(kept)
        if have >= n:
            return torch.cat(chunks)[:n]
    raise ValueError(f"sample_volume: rejection sampling found only {have} of {n} points inside the mesh")


# ----------------------------------------------------------------------------------------------------
# collision geometry used by physics.rigid
# ----------------------------------------------------------------------------------------------------


def support_points(shape: Shape) -> tuple[torch.Tensor, float]:
    """Points whose ``radius``-inflation is the shape's convex hull: the lowest point of the solid along
    any direction is one of them moved by ``radius`` (exact for all but cylinders, whose rims are sampled
    at ``ROUND_SECTIONS`` points, and meshes whose hulls have more than ``MAX_SUPPORT_POINTS`` vertices).

    Returns:
        points [K, 3] float64 in the body frame (m) and the radius (m) that inflates each of them:
        sphere: centre, r; capsule: the two hemisphere centres, r; box: 8 corners, 0; cylinder: two rims,
        0; mesh: convex-hull vertices (farthest-point subsampled to at most ``MAX_SUPPORT_POINTS``), 0.
    """
    r, a, b = shape.size
    if shape.kind == "sphere":
        return torch.zeros(1, 3, dtype=torch.float64), r
    if shape.kind == "capsule":
        return torch.tensor([[0.0, 0.0, -a], [0.0, 0.0, a]], dtype=torch.float64), r
    if shape.kind == "box":
        signs = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        return signs.to(torch.float64) * torch.tensor([r, a, b], dtype=torch.float64), 0.0
    if shape.kind == "cylinder":
        theta = torch.arange(ROUND_SECTIONS, dtype=torch.float64) * (2 * math.pi / ROUND_SECTIONS)
        ring = torch.stack([r * theta.cos(), r * theta.sin()], dim=1)  # (S, 2)
        z = torch.full((ROUND_SECTIONS, 1), a, dtype=torch.float64)
        return torch.cat([torch.cat([ring, -z], 1), torch.cat([ring, z], 1)]), 0.0
    pts = torch.tensor(np.array(shape.mesh.convex_hull.vertices), dtype=torch.float64)
    return _farthest_points(pts, MAX_SUPPORT_POINTS), 0.0


def _farthest_points(pts: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic farthest-point subsampling (starting from the point farthest from the origin)."""
    if len(pts) <= k:
        return pts
    chosen = [int(pts.norm(dim=1).argmax())]
    dist = (pts - pts[chosen[0]]).norm(dim=1)
    for _ in range(k - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, (pts - pts[i]).norm(dim=1))
    return pts[chosen]


def hull_planes(shape: Shape) -> torch.Tensor:
    """Face planes of the shape mesh's convex hull in the body frame: rows ``(nx, ny, nz, d)`` with unit
    outward normals, a point ``p`` is inside iff ``n . p <= d`` for every row. Coplanar triangles are
    merged.

    Returns:
        [F, 4] float64.
    """
    hull = shape.mesh.convex_hull
    normals = np.asarray(hull.face_normals, dtype=np.float64)
    offsets = np.einsum("fd,fd->f", normals, np.asarray(hull.triangles_center, dtype=np.float64))
    planes = np.concatenate([normals, offsets[:, None]], axis=1)
    key = np.round(planes * np.array([1e6, 1e6, 1e6, 1e6 / max(shape.bounding_radius, 1e-9)]))
    _, keep = np.unique(key, axis=0, return_index=True)
    return torch.tensor(planes[np.sort(keep)], dtype=torch.float64)
