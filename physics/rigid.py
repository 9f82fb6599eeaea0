"""Batched, differentiable rigid-body worlds in torch.

Scene: B independent worlds, each with up to M rigid bodies (spheres, boxes, capsules, cylinders, convex
hulls of meshes; see physics.shapes) falling under gravity onto the ground plane ``z = ground`` (world
z-up, SI units), optionally inside axis-aligned walls, pushed by forces and impulses applied at points.

Method. ``step()`` advances ``dt`` in ``substeps`` substeps of ``h = dt / substeps``; each substep:

1. forces: ``v += h (g + F / m)``, ``w += h I_w^-1 tau`` with ``I_w = R I_body R^T``, and the gyroscopic
   term ``-w x I w`` implicitly (one Newton step, as Bullet does), which keeps thin, fast spinners stable.
2. contacts at the current pose: a body's support points (``physics.shapes.support_points``, each
   inflated by a radius: sphere centres, capsule ends, box corners, cylinder rims, hull vertices) against
   the ground and walls, which is exact for all but cylinder rims; and, where two bounding spheres
   overlap, one body's contact points (support points and surface particles) against the other's signed
   distance: closed form for sphere, box, capsule and cylinder (so sphere-sphere and sphere-primitive
   contacts are exact), hull planes for meshes (meshes collide as their convex hulls, as in MuJoCo and
   PyBullet; the plane distance is only a lower bound outside a hull, so a rounded point counts against
   a hull only where its deepest point lies inside it).
3. projection: a fraction ``correction`` of each penetration beyond ``slop`` is removed by moving
   positions only, so drift correction adds no kinetic energy (split impulses; Catto, GDC 2009).
4. impulses: ``iterations`` rounds of Jacobi over all contacts of all scenes at once with accumulated,
   clamped impulses (sequential impulses; Catto, GDC 2006) warm-started from the previous substep: the
   normal impulse ``j_n >= 0`` drives the normal velocity to ``-e v_n`` (Newton's restitution law; off
   below ``bounce_threshold``), the friction impulse stays inside the Coulomb disc ``|j_t| <= mu j_n``.
   The contacts of one body with one plane, or of one pair of bodies, form a group that splits evenly
   the impulse the group would need at its centroid, and groups meeting at a body are relaxed by their
   number (Jacobi relaxation in the spirit of mass splitting, Tonge et al. 2012), so a box landing flat
   settles in one round. Impulses are equal and opposite: linear momentum is conserved exactly.
5. integration: ``x += h (v_old + v_new) / 2`` (exact for constant forces: free flight is an exact
   parabola) and ``q = exp(h w / 2) q``, the exact rotation by ``|w| h`` about ``w``.

Everything is out-of-place torch with no ``.item()`` in the step (``nonzero`` and ``unique`` pick the
active contacts, a host sync on GPUs); gradients flow to the initial state, masses, inertias, forces,
per-body restitution and friction, except through the discrete choice of which contacts are active.
Accuracy: free flight, sliding friction and sphere contacts are exact up to the time step; at an impact
a body may sink by about its approach speed times ``h`` for one substep before projection lifts it.

Example::

    world = RigidWorld(RigidConfig(), RigidBodies.from_shapes([[sphere(0.1), box((0.2, 0.2, 0.2))]]))
    state = world.initial_state(torch.tensor([[[0.0, 0.0, 1.0], [0.5, 0.0, 0.1]]]))
    out = world.rollout(state, frames=17)             # out.points: (B, T, N, 3), out.object_id: (N,)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from physics.shapes import KINDS, Shape, hull_planes, sample_surface, sample_volume, support_points

__all__ = [
    "RigidBodies",
    "RigidConfig",
    "RigidRollout",
    "RigidState",
    "RigidWorld",
    "quat_multiply",
    "quat_to_matrix",
]

SPHERE, BOX, CAPSULE, CYLINDER, MESH = (
    KINDS.index(k) for k in ("sphere", "box", "capsule", "cylinder", "mesh")
)
# Roles of a contact point (bit flags; 0 marks padding): support points meet the ground, walls and other
# bodies; surface particles only other bodies (a plane's deepest point is always a support point).
WORLD, BODY = 1, 2
GRAVITY = (0.0, 0.0, -9.81)  # m/s^2, standard gravity along -z
EPS = 1e-12  # keeps norms and divisions smooth at zero


@dataclass(frozen=True)
class RigidConfig:
    """Rigid-world parameters. Ranges are declared as field metadata (checked here and by YAML loaders)."""

    dt: float = field(default=1 / 16, metadata={"range": (0.0, None)})  # s, time advanced by one step()
    substeps: int = field(default=16, metadata={"range": (1, None)})  # solver substeps per step()
    gravity: tuple[float, float, float] = GRAVITY  # m/s^2, world frame (z up)
    ground: float | None = 0.0  # m, height of the ground plane z = ground; None: no ground
    # m, half extents (hx, hy, hz) of an axis-aligned box centred at the world origin whose six faces
    # keep the bodies inside; None: no walls
    walls: tuple[float, float, float] | None = field(default=None, metadata={"range": (0.0, None)})
    restitution: float = field(default=0.3, metadata={"range": (0.0, 1.0)})  # Newton's coefficient e
    mu: float = field(default=0.5, metadata={"range": (0.0, None)})  # Coulomb friction coefficient
    iterations: int = field(default=4, metadata={"range": (1, None)})  # Jacobi impulse rounds per substep
    bounce_threshold: float = field(default=0.1, metadata={"range": (0.0, None)})  # m/s; slower: no bounce
    correction: float = field(default=0.5, metadata={"range": (0.0, 1.0)})  # share of penetration removed
    slop: float = field(default=1e-3, metadata={"range": (0.0, None)})  # m, penetration left uncorrected

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata.get("range", (None, None))
            for v in value if isinstance(value, tuple) else (value,):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    hi_s = "inf" if hi is None else hi
                    raise ValueError(f"{f.name} must be in [{lo}, {hi_s}], got {value!r}")
        if self.dt <= 0:
            raise ValueError(f"dt must be > 0 (s), got {self.dt!r}")
        for name in ("substeps", "iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.gravity, tuple) or len(self.gravity) != 3:
            raise ValueError(f"gravity must be a tuple (gx, gy, gz) in m/s^2, got {self.gravity!r}")
        if self.walls is not None and (not isinstance(self.walls, tuple) or len(self.walls) != 3):
            raise ValueError(f"walls must be None or half extents (hx, hy, hz) in m, got {self.walls!r}")
        if self.walls is not None and min(self.walls) <= 0:
            raise ValueError(f"walls must be half extents > 0 (m), got {self.walls!r}")


# ----------------------------------------------------------------------------------------------------
# small math: quaternions (w, x, y, z) rotate body-frame vectors into the world; batched 3x3 algebra
# ----------------------------------------------------------------------------------------------------


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a b`` of quaternions [..., 4] (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] of unit quaternions [..., 4] (w, x, y, z)."""
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def _norm(v: Tensor) -> Tensor:
    return (v * v).sum(-1).add(EPS).sqrt()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _mv(m: Tensor, v: Tensor) -> Tensor:
    """Batched matrix-vector product [..., r, c] x [..., c] -> [..., r] (batch dimensions broadcast)."""
    return (m @ v.unsqueeze(-1)).squeeze(-1)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product [..., r, k] x [..., k, c] -> [..., r, c]."""
    return a @ b


def _solve3(a: Tensor, b: Tensor) -> Tensor:
    """Solve [..., 3, 3] x = [..., 3] by Cramer's rule (rows of the inverse are cross products of columns)."""
    c0, c1, c2 = a.unbind(-1)
    rows = torch.stack(
        [torch.cross(c1, c2, dim=-1), torch.cross(c2, c0, dim=-1), torch.cross(c0, c1, dim=-1)], -2
    )
    return _mv(rows, b) / _dot(c0, rows[..., 0, :])[..., None]


def _skew(r: Tensor) -> Tensor:
    """Cross-product matrices [..., 3, 3] with ``_skew(r) v = r x v``."""
    x, y, z = r.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


# ----------------------------------------------------------------------------------------------------
# bodies, state, rollout record
# ----------------------------------------------------------------------------------------------------


def _geometry(
    shape: Shape | None, n_surf: int, particles: int, sampler: Callable, generator: torch.Generator | None
) -> tuple[Tensor, ...]:
    """Contact geometry of one body (float64): support points [Ks, 3], radii [Ks], flags [Ks], surface
    particles [n_surf, 3], their outward normals [n_surf, 3], flags [n_surf], hull planes [F, 4], rollout
    particles [P, 3]; empty for padding."""
    f64 = dict(dtype=torch.float64)
    if shape is None:
        empty3, none = torch.zeros(0, 3, **f64), torch.zeros(0, dtype=torch.long)
        return (
            empty3,
            torch.zeros(0, **f64),
            none,
            empty3,
            empty3,
            none,
            torch.zeros(0, 4, **f64),
            torch.zeros(particles, 3, **f64),
        )
    k = KINDS.index(shape.kind)
    pts, r = support_points(shape)
    planes = hull_planes(shape) if k == MESH else torch.zeros(0, 4, **f64)
    surf = sample_surface(shape, n_surf, generator).double() if n_surf else torch.zeros(0, 3, **f64)
    size = torch.tensor([shape.size], **f64)
    _, normals = _signed_distance(surf[None], torch.tensor([k]), size, planes[None])  # (1, n_surf, 3)
    return (
        pts,
        torch.full((len(pts),), r, **f64),
        torch.full((len(pts),), WORLD | BODY),
        surf,
        normals[0],
        torch.full((n_surf,), BODY),
        planes,
        sampler(shape, particles, generator).double(),
    )


def _per_body(name: str, value: float | Tensor, B: int, M: int, **to: object) -> Tensor:
    if isinstance(value, Tensor):
        if value.ndim == 0:
            return value.to(**to).expand(B, M)
        if tuple(value.shape) != (B, M):
            raise ValueError(
                f"{name} must be a number or a [B, M] = [{B}, {M}] tensor, got {tuple(value.shape)}"
            )
        return value.to(**to)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a [B, M] tensor, got {type(value).__name__}")
    return torch.full((B, M), float(value), **to)


@dataclass(frozen=True, eq=False)
class RigidBodies:
    """Shapes and mass properties of M bodies in each of B scenes (padded: ``active`` marks real bodies).

    Build with :meth:`from_shapes`. All float tensors share one dtype and device.

    Attributes:
        kind: [B, M] long, index into ``physics.shapes.KINDS``.
        size: [B, M, 3] m, ``Shape.size`` (sphere radius, box half extents, ...).
        mass: [B, M] kg.
        inertia: [B, M, 3, 3] kg m^2, body frame, about the centre of mass.
        contact_points: [B, M, K, 3] m, body-frame contact points: support points first (padded), then
            surface particles.
        contact_radius: [B, M, K] m, radius inflating each contact point (sphere or capsule radius, or 0).
        contact_normals: [B, M, K, 3] body-frame outward surface normals of the surface particles (zero for
            support points); a particle only touches surfaces it faces, which keeps a particle near an
            edge of the other body from being pushed out sideways through the wrong face.
        contact_flags: [B, M, K] long bit set of WORLD (ground, walls) and BODY (other bodies); 0: padding.
        hull_planes: [B, M, F, 4] body-frame planes (n, d) of mesh bodies' convex hulls (F may be 0).
        bounding_radius: [B, M] m, radius of a sphere about the centre of mass containing the body.
        particles: [B, M, P, 3] m, body-frame points reported by rollouts (surface or volume samples).
        active: [B, M] bool, False for padding slots (they neither move nor collide).
        fixed: [B, M] bool, immovable bodies (infinite mass: ramps, tables, obstacles).
        restitution: optional [B, M] per-body coefficient e in [0, 1] (a pair of bodies uses the mean);
            None: the world's ``RigidConfig.restitution``.
        mu: optional [B, M] per-body Coulomb coefficient >= 0 (a pair uses the mean); None: the config's.
    """

    kind: Tensor
    size: Tensor
    mass: Tensor
    inertia: Tensor
    contact_points: Tensor
    contact_radius: Tensor
    contact_normals: Tensor
    contact_flags: Tensor
    hull_planes: Tensor
    bounding_radius: Tensor
    particles: Tensor
    active: Tensor
    fixed: Tensor
    restitution: Tensor | None = None
    mu: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Tensor) or self.kind.ndim != 2 or self.kind.dtype != torch.long:
            got = tuple(self.kind.shape) if isinstance(self.kind, Tensor) else type(self.kind).__name__
            raise ValueError(f"kind must be a [B, M] long tensor, got {got}")
        B, M = self.kind.shape
        K, F, P = self.contact_points.shape[2], self.hull_planes.shape[2], self.particles.shape[2]
        expected = {
            "size": (B, M, 3), "mass": (B, M), "inertia": (B, M, 3, 3), "contact_points": (B, M, K, 3),
            "contact_radius": (B, M, K), "contact_normals": (B, M, K, 3), "contact_flags": (B, M, K),
            "hull_planes": (B, M, F, 4),
            "bounding_radius": (B, M), "particles": (B, M, P, 3), "active": (B, M), "fixed": (B, M),
            "restitution": (B, M), "mu": (B, M),
        }  # fmt: skip
        for name, shape in expected.items():
            t = getattr(self, name)
            if t is None and name in ("restitution", "mu"):
                continue
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a tensor of shape {list(shape)} (B={B}, M={M}), got {got}")
        if self.active.dtype != torch.bool or self.fixed.dtype != torch.bool:
            raise TypeError(f"active and fixed must be bool, got {self.active.dtype} and {self.fixed.dtype}")
        if ((self.kind < 0) | (self.kind >= len(KINDS))).any():
            raise ValueError(
                f"kind must index physics.shapes.KINDS {KINDS}, got {self.kind.unique().tolist()}"
            )
        on = self.active
        mass = self.mass.detach()
        if not (torch.isfinite(mass) & (mass > 0))[on].all():
            raise ValueError(
                f"mass must be finite and > 0 (kg) for every active body, got {mass[on].tolist()}"
            )
        inertia = self.inertia.detach()[on]
        sym = (inertia + inertia.transpose(-1, -2)) / 2
        if not torch.isfinite(inertia).all() or (torch.linalg.eigvalsh(sym) <= 0).any():
            raise ValueError("inertia must be finite and positive definite (kg m^2) for every active body")
        if self.restitution is not None:
            e = self.restitution.detach()[on]
            if not ((e >= 0) & (e <= 1)).all():
                raise ValueError(f"restitution must be in [0, 1] for every active body, got {e.tolist()}")
        if self.mu is not None:
            mu = self.mu.detach()[on]
            if not (torch.isfinite(mu) & (mu >= 0)).all():
                raise ValueError(f"mu must be finite and >= 0 for every active body, got {mu.tolist()}")

    @property
    def num_scenes(self) -> int:
        return self.kind.shape[0]

    @property
    def num_bodies(self) -> int:
        return self.kind.shape[1]

    @property
    def object_id(self) -> Tensor:
        """[N] long body index of each rollout particle (N = M * P, bodies' particles concatenated)."""
        M, P = self.particles.shape[1:3]
        return torch.arange(M, device=self.kind.device)[:, None].expand(M, P).reshape(M * P)

    @classmethod
    def from_shapes(
        cls,
        shapes: Sequence[Sequence[Shape]] | Sequence[Shape],
        *,
        density: float | Tensor = 1000.0,
        mass: Tensor | None = None,
        fixed: Tensor | None = None,
        restitution: float | Tensor | None = None,
        mu: float | Tensor | None = None,
        particles: int = 256,
        particle_mode: str = "surface",
        contact_particles: int = 64,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> RigidBodies:
        """Bodies from B lists of shapes (one list per scene; a flat list of shapes is one scene).

        Args:
            shapes: B sequences of up to M shapes; shorter scenes are padded with inactive slots.
            density: kg/m^3, a number or [B, M] tensor (mass = density * volume).
            mass: optional [B, M] kg, overrides ``density`` (inertia scales with it; differentiable).
            fixed: optional [B, M] bool, immovable bodies.
            restitution: coefficient e in [0, 1], a number or [B, M] tensor; None: the world's config.
            mu: Coulomb friction coefficient >= 0, a number or [B, M] tensor; None: the world's config.
            particles: P points per body reported by rollouts.
            particle_mode: ``"surface"`` or ``"volume"`` sampling of those points.
            contact_particles: surface samples per non-sphere body for body-body contacts (0: support points
                only, enough where every pair involves a sphere).
            generator: torch generator for the particle samples.
            dtype, device: of all float tensors.
        """
        if isinstance(shapes, Sequence) and len(shapes) > 0 and isinstance(shapes[0], Shape):
            shapes = [shapes]  # one scene
        if not isinstance(shapes, Sequence) or len(shapes) == 0:
            raise ValueError(f"shapes must be a non-empty list of scenes (lists of Shape), got {shapes!r}")
        for b, scene in enumerate(shapes):
            if (
                not isinstance(scene, Sequence)
                or len(scene) == 0
                or not all(isinstance(s, Shape) for s in scene)
            ):
                raise TypeError(
                    f"shapes[{b}] must be a non-empty list of physics.shapes.Shape, got {scene!r}"
                )
        if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
            raise ValueError(f"particles must be an int >= 1, got {particles!r}")
        if (
            isinstance(contact_particles, bool)
            or not isinstance(contact_particles, int)
            or contact_particles < 0
        ):
            raise ValueError(f"contact_particles must be an int >= 0, got {contact_particles!r}")
        if particle_mode not in ("surface", "volume"):
            raise ValueError(f"particle_mode must be 'surface' or 'volume', got {particle_mode!r}")
        B, M = len(shapes), max(len(s) for s in shapes)
        f64 = dict(dtype=torch.float64)
        has_mesh = any(s.kind == "mesh" for scene in shapes for s in scene)
        sampler = sample_surface if particle_mode == "surface" else sample_volume

        kind = torch.zeros(B, M, dtype=torch.long)
        size = torch.ones(B, M, 3, **f64)
        volume = torch.ones(B, M, **f64)
        unit_inertia = torch.eye(3, **f64).repeat(B, M, 1, 1)
        bound = torch.zeros(B, M, **f64)
        active = torch.zeros(B, M, dtype=torch.bool)
        geometry = []  # per body: support points, radii, flags, surface particles, flags, planes, particles
        for b in range(B):
            for i in range(M):
                if i >= len(shapes[b]):  # padding slot
                    geometry.append(_geometry(None, 0, particles, sampler, generator))
                    continue
                s = shapes[b][i]
                kind[b, i], active[b, i], volume[b, i] = KINDS.index(s.kind), True, s.volume
                size[b, i], unit_inertia[b, i], bound[b, i] = (
                    torch.tensor(s.size, **f64),
                    s.inertia,
                    s.bounding_radius,
                )
                # a sphere is exact as its centre inflated by its radius: it needs no surface particles
                n_surf = contact_particles if s.kind != "sphere" else 0
                geometry.append(_geometry(s, n_surf, particles, sampler, generator))
        sup, sup_r, sup_f, surf, surf_n, surf_f, planes, parts = zip(*geometry, strict=True)

        def pad(seq: Sequence[Tensor]) -> Tensor:
            n = max(len(t) for t in seq)
            return torch.stack(
                [torch.cat([t, t.new_zeros(n - len(t), *t.shape[1:])]) for t in seq]
            ).unflatten(0, (B, M))

        to = dict(dtype=dtype, device=device)
        if mass is None:
            rho = _per_body("density", density, B, M, **to)
            if not (torch.isfinite(rho.detach()) & (rho.detach() > 0)).all():
                raise ValueError(f"density must be finite and > 0 (kg/m^3), got {density!r}")
            mass_t = rho * volume.to(**to)
            inertia = rho[..., None, None] * unit_inertia.to(**to)
        else:
            mass_t = _per_body("mass", mass, B, M, **to)
            inertia = (mass_t / volume.to(**to))[..., None, None] * unit_inertia.to(**to)
        if fixed is None:
            fixed = torch.zeros(B, M, dtype=torch.bool)
        if not isinstance(fixed, Tensor) or tuple(fixed.shape) != (B, M) or fixed.dtype != torch.bool:
            raise ValueError(f"fixed must be a [B, M] = [{B}, {M}] bool tensor, got {fixed!r}")
        support_r = pad(sup_r)
        return cls(
            kind=kind.to(device),
            size=size.to(**to),
            mass=mass_t,
            inertia=inertia,
            contact_points=torch.cat([pad(sup), pad(surf)], dim=2).to(**to),
            contact_radius=torch.cat([support_r, torch.zeros_like(pad(surf)[..., 0])], dim=2).to(**to),
            contact_normals=torch.cat([torch.zeros_like(pad(sup)), pad(surf_n)], dim=2).to(**to),
            contact_flags=torch.cat([pad(sup_f), pad(surf_f)], dim=2).to(device),
            hull_planes=(pad(planes) if has_mesh else torch.zeros(B, M, 0, 4, **f64)).to(**to),
            bounding_radius=bound.to(**to),
            particles=pad(parts).to(**to),
            active=active.to(device),
            fixed=fixed.to(device) & active.to(device),
            restitution=None if restitution is None else _per_body("restitution", restitution, B, M, **to),
            mu=None if mu is None else _per_body("mu", mu, B, M, **to),
        )


@dataclass(frozen=True)
class RigidState:
    """Poses and velocities of all bodies.

    Attributes:
        position: [B, M, 3] m, centre of mass in the world frame.
        orientation: [B, M, 4] unit quaternion (w, x, y, z) rotating body-frame vectors into the world.
        velocity: [B, M, 3] m/s, linear velocity of the centre of mass.
        angular_velocity: [B, M, 3] rad/s, in the world frame.
        contact_slot, contact_impulse: solver cache of the world that made the state: ids [C] (ascending)
            and accumulated impulses [C, 4] (normal, then friction xyz; N s) of the last substep's
            contacts, used to warm-start the next solve (Catto 2006). None, as in a fresh state, starts
            from zero; drop them (``dataclasses.replace(s, contact_slot=None, contact_impulse=None)``)
            before using a state in a different world.
    """

    position: Tensor
    orientation: Tensor
    velocity: Tensor
    angular_velocity: Tensor
    contact_slot: Tensor | None = None
    contact_impulse: Tensor | None = None

    def __post_init__(self) -> None:
        lead = tuple(self.position.shape[:-1]) if isinstance(self.position, Tensor) else None
        for name, last in (("position", 3), ("orientation", 4), ("velocity", 3), ("angular_velocity", 3)):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.ndim != 3 or t.shape[-1] != last or tuple(t.shape[:-1]) != lead:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must be [B, M, {last}] matching position's [B, M], got {got}")
        slot, imp = self.contact_slot, self.contact_impulse
        if (slot is None) != (imp is None):
            raise ValueError("contact_slot and contact_impulse must be given together or both be None")
        if slot is not None and (slot.ndim != 1 or tuple(imp.shape) != (len(slot), 4)):
            raise ValueError(f"contact_slot must be [C] and contact_impulse [C, 4], got {tuple(slot.shape)}, "
                             f"{tuple(imp.shape)}")  # fmt: skip


@dataclass(frozen=True)
class RigidRollout:
    """Per-frame record of a rollout (T frames including the initial one).

    Attributes:
        times: [T] s.
        position: [B, T, M, 3] m.  orientation: [B, T, M, 4].  velocity, angular_velocity: [B, T, M, 3].
        points: [B, T, N, 3] m, world positions of every body's particles (N = M * P), or None.
        object_id: [N] long, body index of each point.
        point_valid: [B, N] bool, False for points of padding slots.
        final: the state at the last frame (to continue the rollout).
    """

    times: Tensor
    position: Tensor
    orientation: Tensor
    velocity: Tensor
    angular_velocity: Tensor
    points: Tensor | None
    object_id: Tensor
    point_valid: Tensor
    final: RigidState


# ----------------------------------------------------------------------------------------------------
# signed distances in a body's frame
# ----------------------------------------------------------------------------------------------------


def _signed_distance(p: Tensor, kind: Tensor, size: Tensor, planes: Tensor) -> tuple[Tensor, Tensor]:
    """Signed distance (m, negative inside) and outward unit normal of points in a body's frame.

    Args:
        p: [P, K, 3] points in the frame of the body (one body per row).
        kind: [P] long, size: [P, 3], planes: [P, F, 4] (F = 0 when there are no meshes).

    Returns:
        distance [P, K] and normal [P, K, 3]. Exact for sphere, box, capsule and cylinder; for meshes
        ``max_f (n_f . p - d_f)`` over the hull planes, exact inside and a lower bound outside.
    """
    r, a = size[:, 0, None], size[:, 1, None]  # (P, 1)
    sign = torch.copysign(torch.ones_like(p), p)
    zero = torch.zeros_like(p[..., 0])
    # sphere
    rho3 = _norm(p)
    d_sph, n_sph = rho3 - r, p / rho3[..., None]
    # capsule: distance to the segment z in [-a, a], minus r
    off = p - torch.stack([zero, zero, torch.clamp(p[..., 2], min=-a, max=a)], dim=-1)
    off_len = _norm(off)
    d_cap, n_cap = off_len - r, off / off_len[..., None]
    # box with half extents ``size``
    q = p.abs() - size[:, None, :]  # (P, K, 3)
    q_max, q_arg = q.max(dim=-1)
    q_out = q.clamp(min=0)
    out_len = torch.where(q_max > 0, (q_out * q_out).sum(-1), 1.0).sqrt()  # exact, and finite gradients
    d_box = torch.where(q_max > 0, out_len, q_max)
    n_box_in = sign * torch.nn.functional.one_hot(q_arg, 3).to(p.dtype)
    n_box = torch.where((q_max > 0)[..., None], sign * q_out / out_len[..., None], n_box_in)
    # cylinder along z: radial and axial distances
    rho = _norm(p[..., :2])
    d_r, d_z = rho - r, p[..., 2].abs() - a
    radial = torch.stack([p[..., 0] / rho, p[..., 1] / rho, zero], dim=-1)
    axial = torch.stack([zero, zero, sign[..., 2]], dim=-1)
    o_r, o_z = d_r.clamp(min=0), d_z.clamp(min=0)
    inner = torch.maximum(d_r, d_z)
    o_len = torch.where(inner > 0, o_r * o_r + o_z * o_z, 1.0).sqrt()
    d_cyl = torch.where(inner > 0, o_len, inner)
    n_cyl_out = (o_r[..., None] * radial + o_z[..., None] * axial) / o_len[..., None]
    n_cyl = torch.where((inner > 0)[..., None], n_cyl_out, torch.where((d_r > d_z)[..., None], radial, axial))

    k = kind[:, None]  # (P, 1)
    dist = torch.where(
        k == SPHERE, d_sph, torch.where(k == BOX, d_box, torch.where(k == CAPSULE, d_cap, d_cyl))
    )
    k3 = k[..., None]
    normal = torch.where(
        k3 == SPHERE, n_sph, torch.where(k3 == BOX, n_box, torch.where(k3 == CAPSULE, n_cap, n_cyl))
    )
    if planes.shape[1] > 0:
        d_hull, n_hull = _hull_distance(p, planes)
        dist = torch.where(k == MESH, d_hull, dist)
        normal = torch.where(k3 == MESH, n_hull, normal)
    return dist, normal


def _hull_distance(p: Tensor, planes: Tensor) -> tuple[Tensor, Tensor]:
    """``max_f (n_f . p - d_f)`` [P, K] over a convex hull's planes [P, F, 4] and the maximising normal."""
    s = torch.einsum("pkd,pfd->pkf", p, planes[..., :3]) - planes[:, None, :, 3]  # (P, K, F)
    d, f = s.max(dim=-1)
    return d, torch.gather(planes[..., :3], 1, f[..., None].expand(*f.shape, 3))  # (P, K), (P, K, 3)


@dataclass(frozen=True)
class _Contacts:
    """Active contacts of one substep, flattened over scenes (C of them).

    ``ia`` is pushed along +normal, ``ib`` the other way (``ib = BM`` is the static world); ``slot`` are
    ascending ids for warm starting; ``group`` keys one body with one plane, or one pair of bodies.
    """

    ia: Tensor  # (C,) long
    ib: Tensor  # (C,) long
    slot: Tensor  # (C,) long
    group: Tensor  # (C,) long
    point: Tensor  # (C, 3) m, on body ia's surface
    normal: Tensor  # (C, 3) unit, from ib towards ia
    depth: Tensor  # (C,) m, > 0
    e: Tensor  # (C,) restitution
    mu: Tensor  # (C,) friction coefficient


# ----------------------------------------------------------------------------------------------------
# the world
# ----------------------------------------------------------------------------------------------------


class RigidWorld:
    """B scenes of rigid bodies under one :class:`RigidConfig`; see the module docstring for the method.

    Args:
        config: world parameters.
        bodies: the bodies; their per-body ``restitution`` and ``mu``, where given, replace the config's.
    """

    def __init__(self, config: RigidConfig, bodies: RigidBodies) -> None:
        if not isinstance(config, RigidConfig):
            raise TypeError(f"config must be a RigidConfig, got {type(config).__name__}")
        if not isinstance(bodies, RigidBodies):
            raise TypeError(f"bodies must be RigidBodies, got {type(bodies).__name__}")
        self.config, self.bodies = config, bodies
        B, M = bodies.kind.shape
        BM = B * M
        dtype, device = bodies.mass.dtype, bodies.mass.device
        self.dtype, self.device = dtype, device
        self.gravity = torch.tensor(config.gravity, dtype=dtype, device=device)
        full = lambda value: torch.full((B, M), value, dtype=dtype, device=device)  # noqa: E731
        self.restitution = full(config.restitution) if bodies.restitution is None else bodies.restitution
        self.mu = full(config.mu) if bodies.mu is None else bodies.mu
        self.movable = bodies.active & ~bodies.fixed  # (B, M)
        mov = self.movable.to(dtype)
        self.inv_mass = mov / torch.where(self.movable, bodies.mass, torch.ones_like(bodies.mass))  # (B, M)
        eye = torch.eye(3, dtype=dtype, device=device)
        # (B, M, 3, 3) body-frame inertia, identity where immovable so that it inverts everywhere
        self._inertia = torch.where(self.movable[..., None, None], bodies.inertia, eye)
        self.inv_inertia = torch.linalg.inv(self._inertia) * mov[..., None, None]  # 0 where immovable

        # world planes (n, offset) with signed distance n . x - offset, positive on the allowed side
        planes = []
        if config.ground is not None:
            planes.append((0.0, 0.0, 1.0, config.ground))
        for axis, h in enumerate(config.walls or ()):
            for s in (1.0, -1.0):
                n = [0.0, 0.0, 0.0]
                n[axis] = s
                planes.append((*n, -h))
        self.world_planes = torch.tensor(planes, dtype=dtype, device=device).reshape(-1, 4)  # (Q, 4)
        self._plane_axis = self.world_planes[:, :3].abs().argmax(-1)  # (Q,)
        self._plane_sign = self.world_planes[:, :3].sum(-1)  # (Q,) +-1

        # contact points: support points (WORLD flag) come first, so planes test only the first Ks
        flags = bodies.contact_flags.reshape(BM, -1)
        has_world = ((flags & WORLD) > 0).any(0)
        self._ks = int(has_world.nonzero().max()) + 1 if has_world.any() else 0
        self._world_ok = ((flags[:, : self._ks] & WORLD) > 0) & self.movable.reshape(BM, 1)  # (BM, Ks)
        self._body_ok = (flags & BODY) > 0  # (BM, K)
        self._no_normal = (bodies.contact_normals.reshape(BM, -1, 3) == 0).all(-1)  # (BM, K) support points

        # which ordered pairs (i's points against j's distance) are tested: sphere-sphere once, and a
        # sphere's centre against a closed-form body replaces that body's points against the sphere
        i = torch.arange(M, device=device)
        ki, kj = bodies.kind[:, :, None], bodies.kind[:, None, :]  # (B, M, 1), (B, 1, M)
        redundant = (kj == SPHERE) & (ki != MESH) & ~((ki == SPHERE) & (i[:, None] < i[None, :]))
        both = bodies.active[:, :, None] & bodies.active[:, None, :]
        either_moves = self.movable[:, :, None] | self.movable[:, None, :]
        self.pair_mask = both & either_moves & (i[:, None] != i[None, :]) & ~redundant  # (B, M, M)
        self._any_pairs = bool(self.pair_mask.any())
        self._has_mesh = bodies.hull_planes.shape[2] > 0
        self._reach = bodies.bounding_radius[:, :, None] + bodies.bounding_radius[:, None, :]  # (B, M, M)

    # ------------------------------------------------------------------------------------------------
    def initial_state(
        self,
        position: Tensor,
        orientation: Tensor | None = None,
        velocity: Tensor | None = None,
        angular_velocity: Tensor | None = None,
    ) -> RigidState:
        """A checked state: missing orientations are identity, missing velocities zero.

        Args:
            position: [B, M, 3] m.
            orientation: [B, M, 4] (w, x, y, z), normalised here.
            velocity: [B, M, 3] m/s.
            angular_velocity: [B, M, 3] rad/s (world frame).
        """
        B, M = self.bodies.kind.shape
        to = dict(dtype=self.dtype, device=self.device)
        for name, t, last in (
            ("position", position, 3), ("orientation", orientation, 4),
            ("velocity", velocity, 3), ("angular_velocity", angular_velocity, 3),
        ):  # fmt: skip
            if t is None and name != "position":
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a tensor [B, M, {last}], got {type(t).__name__}")
            if tuple(t.shape) != (B, M, last):
                raise ValueError(f"{name} must be [B, M, {last}] = [{B}, {M}, {last}], got {tuple(t.shape)}")
            if not torch.isfinite(t.detach()).all():
                raise ValueError(f"{name} must be finite, got NaN or inf")
        if orientation is None:
            orientation = torch.tensor([1.0, 0.0, 0.0, 0.0], **to).expand(B, M, 4)
        if (orientation.detach().norm(dim=-1) < 1e-6).any():
            raise ValueError("orientation must be non-zero quaternions (w, x, y, z), got a zero quaternion")
        zeros = torch.zeros(B, M, 3, **to)
        return RigidState(
            position=position.to(**to),
            orientation=(orientation / orientation.norm(dim=-1, keepdim=True)).to(**to),
            velocity=zeros if velocity is None else velocity.to(**to),
            angular_velocity=zeros if angular_velocity is None else angular_velocity.to(**to),
        )

    def _check_state(self, state: RigidState) -> None:
        if not isinstance(state, RigidState):
            raise TypeError(f"state must be a RigidState, got {type(state).__name__}")
        shape = list(self.bodies.kind.shape)
        if list(state.position.shape[:2]) != shape:
            raise ValueError(
                f"state must be for [B, M] = {shape} bodies, got {list(state.position.shape[:2])}"
            )

    def _check_vectors(self, state: RigidState, **named: Tensor | None) -> None:
        shape = tuple(state.position.shape)
        for name, t in named.items():
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a [B, M, 3] = {list(shape)} tensor, got {got}")

    # ------------------------------------------------------------------------------------------------
    def apply_impulse(self, state: RigidState, impulse: Tensor, point: Tensor) -> RigidState:
        """Instantaneous impulses at world points: ``v += J / m``, ``w += I_w^-1 ((p - x) x J)``.

        Args:
            state: current state.
            impulse: [B, M, 3] N s, one per body (zeros for bodies not pushed; ignored for fixed bodies).
            point: [B, M, 3] m, world point where each impulse acts.
        """
        self._check_state(state)
        self._check_vectors(state, impulse=impulse, point=point)
        R = quat_to_matrix(state.orientation)
        inv_iw = _mm(_mm(R, self.inv_inertia), R.transpose(-1, -2))
        dw = _mv(inv_iw, torch.cross(point - state.position, impulse, dim=-1))
        return dataclasses.replace(
            state,
            velocity=state.velocity + self.inv_mass[..., None] * impulse,
            angular_velocity=state.angular_velocity + dw,
        )

    # ------------------------------------------------------------------------------------------------
    def step(
        self,
        state: RigidState,
        dt: float | None = None,
        substeps: int | None = None,
        force: Tensor | None = None,
        point: Tensor | None = None,
    ) -> RigidState:
        """Advance ``dt`` seconds in ``substeps`` substeps (defaults from the config).

        Args:
            state: current state, [B, M, ...].
            dt: s, > 0.
            substeps: >= 1.
            force: optional [B, M, 3] N, constant during the step, acting at ``point``.
            point: optional [B, M, 3] m, world point of application at the start of the step (it moves with
                the body during the step); default: the centres of mass (no torque).

        Returns:
            the state after ``dt``.
        """
        self._check_state(state)
        dt = self.config.dt if dt is None else dt
        substeps = self.config.substeps if substeps is None else substeps
        if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt must be a finite number > 0 (s), got {dt!r}")
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
        arm = None
        if force is not None:
            self._check_vectors(state, force=force)
            if point is not None:
                self._check_vectors(state, point=point)
                R0 = quat_to_matrix(state.orientation)
                arm = _mv(R0.transpose(-1, -2), point - state.position)  # (B, M, 3) body-frame lever arm
        elif point is not None:
            raise ValueError("point was given without force")
        h = dt / substeps
        for _ in range(substeps):
            state = self._substep(state, h, force, arm)
        return state

    def _substep(self, state: RigidState, h: float, force: Tensor | None, arm: Tensor | None) -> RigidState:
        B, M = self.bodies.kind.shape
        BM = B * M
        mov = self.movable.reshape(BM, 1).to(self.dtype)
        inertia, inv_inertia = self._inertia.reshape(BM, 3, 3), self.inv_inertia.reshape(BM, 3, 3)
        x, q = state.position.reshape(BM, 3), state.orientation.reshape(BM, 4)
        v0, w0 = state.velocity.reshape(BM, 3) * mov, state.angular_velocity.reshape(BM, 3) * mov
        R = quat_to_matrix(q)  # (BM, 3, 3)
        Rt = R.transpose(-1, -2)
        inv_iw = _mm(_mm(R, inv_inertia), Rt)  # (BM, 3, 3) world-frame inverse inertia

        # 1. forces: gravity and the optional point force; fixed bodies and padding never move. The
        # gyroscopic term is implicit: one Newton step on I (w' - w) + h w' x I w' = 0 in the body frame
        # (Bullet's implicit gyroscopic forces): explicit updates pump energy into fast, thin spinners
        v = v0 + (h * self.gravity) * mov
        w_b = _mv(Rt, w0)  # (BM, 3) body frame
        Iw = _mv(inertia, w_b)
        jac = inertia + h * (_mm(_skew(w_b), inertia) - _skew(Iw))
        w = _mv(R, w_b - _solve3(jac, h * torch.cross(w_b, Iw, dim=-1)))
        if force is not None:
            f = force.reshape(BM, 3)
            v = v + h * self.inv_mass.reshape(BM, 1) * f
            if arm is not None:
                w = w + h * _mv(inv_iw, torch.cross(_mv(R, arm.reshape(BM, 3)), f, dim=-1))

        # 2. contacts at the current pose;  3. + 4. projection and impulses
        con = self._contacts(x, R)
        x, v, w, impulse = self._solve(x, v, w, inv_iw, con, self._warm(state, con.slot))

        # 5. integration: trapezoidal positions; orientation turned by the exact rotation of angle |w| h
        # about w (the exponential map; sin(a/2)/|w| written with sinc so that it is smooth at w = 0)
        x = x + h * (v0 + v) / 2
        half = _norm(w) * (h / 2)  # (BM,)
        dq = torch.cat([half.cos()[:, None], w * ((h / 2) * torch.sinc(half / math.pi))[:, None]], dim=-1)
        q = quat_multiply(dq, q)
        q = q / q.norm(dim=-1, keepdim=True)
        return RigidState(
            position=x.reshape(B, M, 3),
            orientation=q.reshape(B, M, 4),
            velocity=v.reshape(B, M, 3),
            angular_velocity=w.reshape(B, M, 3),
            contact_slot=con.slot,
            contact_impulse=impulse,
        )

    @staticmethod
    def _warm(state: RigidState, slot: Tensor) -> Tensor | None:
        """Last substep's impulses [C, 4] of contacts that persist (zeros for new ones), or None."""
        prev, impulse = state.contact_slot, state.contact_impulse
        if prev is None or len(prev) == 0 or len(slot) == 0:
            return None
        pos = torch.searchsorted(prev, slot).clamp(max=len(prev) - 1)
        return torch.where((prev[pos] == slot)[:, None], impulse[pos], torch.zeros_like(impulse[pos]))

    def _contacts(self, x: Tensor, R: Tensor) -> _Contacts:
        """Active contacts at the pose (x [BM, 3], R [BM, 3, 3]); see :class:`_Contacts`."""
        bodies = self.bodies
        B, M = bodies.kind.shape
        BM, Ks, Q = B * M, self._ks, len(self.world_planes)
        pts = bodies.contact_points.reshape(BM, -1, 3)
        rad = bodies.contact_radius.reshape(BM, -1)
        K = pts.shape[1]
        e_body, mu_body = self.restitution.reshape(BM), self.mu.reshape(BM)
        parts: list[tuple[Tensor, ...]] = []

        if Q > 0 and Ks > 0:
            wp = self.world_planes
            pw = x[:, None, :] + _mv(R[:, None], pts[:, :Ks])  # (BM, Ks, 3) world support points
            # axis-aligned planes: the distance is one signed coordinate minus the offset
            dist = pw[..., self._plane_axis] * self._plane_sign - wp[:, 3]  # (BM, Ks, Q)
            depth = rad[:, :Ks, None] - dist
            body, k, plane = torch.nonzero((depth > 0) & self._world_ok[..., None], as_tuple=True)
            normal = wp[plane, :3]
            parts.append((
                body, torch.full_like(body, BM), (body * Ks + k) * Q + plane, body * Q + plane,
                pw[body, k] - rad[body, k, None] * normal, normal, depth[body, k, plane],
                e_body[body], mu_body[body],
            ))  # fmt: skip

        if self._any_pairs:
            xs = x.reshape(B, M, 3)
            gap = _norm(xs[:, :, None] - xs[:, None, :])  # (B, M, M)
            b, i, j = torch.nonzero(self.pair_mask & (gap < self._reach), as_tuple=True)
            a, o = b * M + i, b * M + j  # (P,) the points of body a against the distance of body o
            Ro_t = R[o].transpose(-1, -2)
            local = _mv(_mm(Ro_t, R[a])[:, None], pts[a]) + _mv(Ro_t, x[a] - x[o])[:, None]  # (P, K, 3)
            kind_o = bodies.kind.reshape(BM)[o]
            dist, n_local = _signed_distance(
                local, kind_o, bodies.size.reshape(BM, 3)[o], bodies.hull_planes.reshape(BM, -1, 4)[o]
            )
            depth = rad[a] - dist  # (P, K)
            # a surface particle touches only surfaces it faces (support points have no normal: always)
            n_a = _mv(R[a, None], bodies.contact_normals.reshape(BM, -1, 3)[a])  # (P, K, 3) world frame
            facing = _dot(n_a, _mv(R[o, None], n_local)) < -0.1
            usable = self._body_ok[a] & (facing | self._no_normal[a])
            if self._has_mesh:
                # hull planes bound the distance from below outside the hull: a rounded point's contact
                # with a mesh counts only where its deepest point is really inside (a face contact); edge
                # and vertex contacts come from the mesh's own points against the rounded body
                deep = local - rad[a, :, None] * n_local
                inside = _hull_distance(deep, bodies.hull_planes.reshape(BM, -1, 4)[o])[0] <= 0
                usable = usable & (inside | (kind_o != MESH)[:, None])
            p, k = torch.nonzero((depth > 0) & usable, as_tuple=True)
            ia, ib = a[p], o[p]
            normal = _mv(R[ib], n_local[p, k])  # (C', 3) world frame
            point = x[ia] + _mv(R[ia], pts[ia, k]) - rad[ia, k, None] * normal
            parts.append((
                ia, ib, BM * Ks * Q + (ia * M + j[p]) * K + k,
                BM * Q + torch.minimum(ia, ib) * BM + torch.maximum(ia, ib),
                point, normal, depth[p, k], (e_body[ia] + e_body[ib]) / 2, (mu_body[ia] + mu_body[ib]) / 2,
            ))  # fmt: skip

        if not parts:
            idx = torch.zeros(0, dtype=torch.long, device=x.device)
            return _Contacts(idx, idx, idx, idx, x[:0], x[:0], x[:0, 0], x[:0, 0], x[:0, 0])
        return _Contacts(*(torch.cat(t) for t in zip(*parts, strict=True)))

    def _solve(
        self, x: Tensor, v: Tensor, w: Tensor, inv_iw: Tensor, con: _Contacts, warm: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Projection and Jacobi impulses (steps 3 and 4 of the module docstring) on flat bodies [BM].

        Returns the new x, v, w [BM, 3] and the accumulated impulses [C, 4] (normal, friction xyz).
        """
        cfg = self.config
        BM, C = x.shape[0], len(con.ia)
        if C == 0:
            return x, v, w, x.new_zeros(0, 4)
        ia, ib, n, depth = con.ia, con.ib, con.normal, con.depth
        Q = len(self.world_planes)
        pad = lambda t: torch.cat([t, torch.zeros_like(t[:1])])  # noqa: E731  row BM: the static world
        mov_e = pad(self.movable.reshape(BM).to(x.dtype))
        inv_m_e, x_e = pad(self.inv_mass.reshape(BM)), pad(x)
        wa, wb = inv_m_e[ia], inv_m_e[ib]  # (C,)
        inv_iw_e = pad(inv_iw)
        Ia, Ib = inv_iw_e[ia], inv_iw_e[ib]  # (C, 3, 3) world-frame inverse inertias
        both = torch.cat([ia, ib])  # (2C,)

        # Jacobi share: a group (one body and one plane, or one pair) splits its impulse evenly, and the
        # groups meeting at the busier of the two bodies split that body (immovable bodies do not count)
        keys, gid, per_group = torch.unique(con.group, return_inverse=True, return_counts=True)  # (G,)
        world = keys < BM * Q
        pair_key = keys - BM * Q
        g_a = torch.where(world, keys // max(Q, 1), pair_key // BM)
        g_b = torch.where(world, BM, pair_key % BM)
        g_both = torch.cat([g_a, g_b])
        groups = torch.zeros_like(mov_e).index_add(0, g_both, mov_e[g_both])  # (BM + 1,) groups per body
        busier = torch.maximum(groups[ia], groups[ib]).clamp(min=1.0)
        share = 1.0 / (busier * per_group[gid].to(x.dtype))  # (C,)

        # 3. projection: translate along n, split by inverse mass
        push = cfg.correction * (depth - cfg.slop).clamp(min=0) * share / (wa + wb)  # (C,)
        dx = torch.cat([(push * wa)[:, None] * n, -(push * wb)[:, None] * n])
        x = x + torch.zeros_like(x_e).index_add(0, both, dx)[:BM]

        # 4. impulses with the contact Jacobians J = [I, -[r]x] (velocity at the contact from (v, w)) and
        # G = M^-1 J^T (change of (v, w) per unit impulse) (Catto 2006). Rows [0, C) are the a sides,
        # [C, 2C) the b sides with the sign of J folded in, so one gather and one scatter serve both bodies.
        S = _skew(con.point.repeat(2, 1) - x_e[both])  # (2C, 3, 3) lever arms
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        sign = torch.cat([torch.ones_like(depth), -torch.ones_like(depth)])[:, None, None]  # (2C, 1, 1)
        J = sign * torch.cat([eye.expand(2 * C, 3, 3), -S], dim=-1)  # (2C, 3, 6)
        G = sign * torch.cat([torch.cat([wa, wb])[:, None, None] * eye, _mm(torch.cat([Ia, Ib]), S)], dim=-2)
        # Jacobi step: the contacts of a group share the impulse that would fix their mean velocity error if
        # it acted at the group's centroid: the inverse effective mass is n^T K n with K = (wa + wb) I -
        # [ra] Ia [ra] - [rb] Ib [rb] taken at the centroid. A box landing flat then settles in one round,
        # where per-contact masses (long lever arms) crawl; rocking modes still converge (their response to
        # a spread impulse is bounded by the same lever arms), and K is positive definite whatever the
        # contacts' normals.
        count = per_group.to(x.dtype)[:, None]  # (G, 1)
        c_g = torch.zeros_like(count.expand(-1, 3)).index_add(0, gid, con.point) / count  # (G, 3) centroids
        S_g = _skew(c_g.repeat(2, 1) - x_e[g_both])  # (2G, 3, 3)
        rot = _mm(_mm(S_g, inv_iw_e[g_both]), S_g).unflatten(0, (2, -1)).sum(0)  # (G, 3, 3)
        K_g = (inv_m_e[g_a] + inv_m_e[g_b])[:, None, None] * eye - rot
        k_n = _dot(n, _mv(K_g[gid], n)).clamp(min=EPS)  # (C,)
        # friction steps with each contact's own tangential inverse mass (the mean over tangent directions of
        # its K = J G): the smaller steps keep the coupled friction-rocking modes of a stopping box from
        # ringing; the step sets the pace of the fixed point, not where it lands
        K = _mm(J, G).unflatten(0, (2, C)).sum(0)  # (C, 3, 3)
        k_t = ((K.diagonal(dim1=-2, dim2=-1).sum(-1) - _dot(n, _mv(K, n))) / 2).clamp(min=EPS)
        vw = pad(torch.cat([v, w], dim=-1))  # (BM + 1, 6)

        def rel_velocity(vw: Tensor) -> Tensor:
            return _mv(J, vw[both]).unflatten(0, (2, C)).sum(0)  # (C, 3) velocity of a relative to b

        def apply(vw: Tensor, P: Tensor) -> Tensor:
            return vw.index_add(0, both, _mv(G, torch.cat([P, P])))

        vn_pre = _dot(rel_velocity(vw), n)
        target = torch.where(vn_pre < -cfg.bounce_threshold, -con.e * vn_pre, torch.zeros_like(vn_pre))
        jn, jt = torch.zeros_like(depth), torch.zeros_like(n)  # accumulated impulses (N s)
        if warm is not None:
            # warm start: re-apply last substep's impulses of persisting contacts, friction projected on
            # the current tangent plane; a bouncing contact starts cold so that Newton's law sees the
            # approach velocity alone
            cold = (target > 0)[:, None]
            jn = torch.where(cold[:, 0], jn, warm[:, 0])
            jt = warm[:, 1:] - _dot(warm[:, 1:], n)[:, None] * n
            jt = torch.where(
                cold, torch.zeros_like(jt), jt * (con.mu * jn / _norm(jt)).clamp(max=1.0)[:, None]
            )
            vw = apply(vw, jn[:, None] * n + jt)
        step_n, step_t = share / k_n, (share / k_t)[:, None]
        for _ in range(cfg.iterations):
            vr = rel_velocity(vw)
            vn = _dot(vr, n)
            jn_new = (jn + step_n * (target - vn)).clamp(min=0)
            jt_try = jt - step_t * (vr - vn[:, None] * n)
            jt_new = jt_try * (con.mu * jn_new / _norm(jt_try)).clamp(max=1.0)[:, None]  # Coulomb disc
            vw = apply(vw, (jn_new - jn)[:, None] * n + (jt_new - jt))
            jn, jt = jn_new, jt_new
        return x, vw[:BM, :3], vw[:BM, 3:], torch.cat([jn[:, None], jt], dim=-1)

    # ------------------------------------------------------------------------------------------------
    def world_points(self, state: RigidState, points: Tensor | None = None) -> Tensor:
        """World positions of body-frame points.

        Args:
            state: [B, M, ...] state.
            points: [B, M, P, 3] body-frame points; defaults to ``bodies.particles``.

        Returns:
            [B, N, 3] with N = M * P (bodies' points concatenated; see ``bodies.object_id``).
        """
        self._check_state(state)
        pts = self.bodies.particles if points is None else points
        B, M = self.bodies.kind.shape
        if (
            not isinstance(pts, Tensor)
            or pts.ndim != 4
            or tuple(pts.shape[:2]) != (B, M)
            or pts.shape[3] != 3
        ):
            got = tuple(pts.shape) if isinstance(pts, Tensor) else type(pts).__name__
            raise ValueError(f"points must be [B, M, P, 3] with [B, M] = [{B}, {M}], got {got}")
        R = quat_to_matrix(state.orientation)  # (B, M, 3, 3)
        world = state.position[:, :, None, :] + torch.einsum("bmij,bmpj->bmpi", R, pts.to(R.dtype))
        return world.flatten(1, 2)  # (B, M * P, 3)

    def rollout(
        self,
        state: RigidState,
        frames: int,
        *,
        frame_dt: float | None = None,
        substeps: int | None = None,
        force_fn: Callable[[int, RigidState], tuple[Tensor, Tensor | None] | None] | None = None,
        return_points: bool = True,
    ) -> RigidRollout:
        """Simulate and record ``frames`` frames (frame 0 is ``state``), one :meth:`step` apart.

        Args:
            state: initial state.
            frames: T >= 1 output frames.
            frame_dt: s between frames (default ``config.dt``).
            substeps: substeps per frame (default ``config.substeps``).
            force_fn: optional ``(frame, state) -> (force [B, M, 3], point [B, M, 3] or None) | None``,
                the force held during the step from ``frame`` to ``frame + 1``.
            return_points: also record the world positions of every body's particles.

        Returns:
            a :class:`RigidRollout` with per-frame poses [B, T, M, ...] and points [B, T, N, 3].
        """
        self._check_state(state)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        frame_dt = self.config.dt if frame_dt is None else frame_dt
        states = [state]
        for f in range(frames - 1):
            push = force_fn(f, state) if force_fn is not None else None
            force, point = (None, None) if push is None else push
            state = self.step(state, dt=frame_dt, substeps=substeps, force=force, point=point)
            states.append(state)
        stack = lambda name: torch.stack([getattr(s, name) for s in states], dim=1)  # noqa: E731 (B, T, M, .)
        B, M, P = self.bodies.particles.shape[:3]
        return RigidRollout(
            times=torch.arange(frames, dtype=self.dtype, device=self.device) * frame_dt,
            position=stack("position"),
            orientation=stack("orientation"),
            velocity=stack("velocity"),
            angular_velocity=stack("angular_velocity"),
            points=torch.stack([self.world_points(s) for s in states], dim=1) if return_points else None,
            object_id=self.bodies.object_id,
            point_valid=self.bodies.active[:, :, None].expand(B, M, P).reshape(B, M * P),
            final=state,
        )

    # ------------------------------------------------------------------------------------------------
    def kinetic_energy(self, state: RigidState) -> Tensor:
        """[B] J, translational plus rotational kinetic energy of the movable bodies."""
        w_body = _mv(quat_to_matrix(state.orientation).transpose(-1, -2), state.angular_velocity)
        per_body = self.bodies.mass * _dot(state.velocity, state.velocity) + _dot(
            w_body, _mv(self.bodies.inertia, w_body)
        )
        return 0.5 * (per_body * self.movable.to(self.dtype)).sum(-1)

    def linear_momentum(self, state: RigidState) -> Tensor:
        """[B, 3] kg m/s, total linear momentum of the movable bodies."""
        mov = self.movable.to(self.dtype)
        return ((self.bodies.mass * mov)[..., None] * state.velocity).sum(1)

    def angular_momentum(self, state: RigidState) -> Tensor:
        """[B, 3] kg m^2/s about the world origin: orbital ``x x m v`` plus spin ``I_w w``."""
        R = quat_to_matrix(state.orientation)
        spin = _mv(R, _mv(self.bodies.inertia, _mv(R.transpose(-1, -2), state.angular_velocity)))
        orbital = torch.cross(state.position, self.bodies.mass[..., None] * state.velocity, dim=-1)
        return ((orbital + spin) * self.movable.to(self.dtype)[..., None]).sum(1)
