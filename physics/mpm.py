"""MLS-MPM simulator (Hu et al. 2018, "A moving least squares material point method"), batched over scenes.

Scene: B independent scenes advance together on grids of the same layout. Each scene holds N particles whose
material is chosen per particle, so one batch can mix elastic, plasticine, sand and rigid objects. A scene
has gravity, a floor at a given height, slip walls around a cubic domain, and optionally a drag force that
pulls the particles around a point for a while (PhysCtrl's control signal). World frame z-up, SI units
(m, s, kg, Pa) throughout.

One substep (Hu et al. 2018, section 4; the layout of taichi's mpm88):

1. plasticity + stress: return-map the trial deformation gradient F in Hencky (log) strain (von Mises for
   plasticine, Drucker-Prager for sand after Klar et al. 2016 with Tampubolon et al. 2017's volume
   correction) and evaluate the Kirchhoff stress tau (fixed-corotated for elastic, Stomakhin et al. 2012);
2. P2G: each particle scatters mass and the MLS-MPM momentum ``w (m v + A (x_i - x_p))`` to its 27 nodes,
   ``A = m C - dt V0 (4 / dx^2) tau`` (quadratic B-splines, one ``index_add_`` for the whole batch);
3. grid: velocity = momentum / mass (gravity and drag entered P2G as a velocity kick dt a), then the floor
   (sticky, or slip with Coulomb friction) and slip walls;
4. G2P: gather velocity and the APIC matrix C, advect x, update ``F <- (I + dt C) F``; particles of a
   rigid body are then projected onto the body's rigid motion (linear and angular momentum preserved).

Everything is torch and differentiable: gradients flow from positions to initial velocities, forces and
material parameters. There is no Python loop over particles; the 3x3 polar decomposition, matrix log and
exp are unrolled, vectorised iterations and series (LAPACK's batched 3x3 SVD is ~20x slower on CPU, and its
derivative is undefined at the rest state F = I, where singular values repeat).

Usage::

    sim = MPMSolver(MPMConfig(grid_res=32))
    mat = Materials.create(B, N, kind="elastic", E=1e5, nu=0.3, density=1e3)
    state = sim.init_state(x, mat)                    # x [B, N, 3] (m)
    drag = Drag.around(state, point, force=f, radius=0.05, duration=0.2)
    traj, state = sim.rollout(state, frames=17, frame_dt=1 / 16, drag=drag)   # [B, T, N, 3]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "ELASTIC",
    "PLASTICINE",
    "SAND",
    "RIGID",
    "MATERIALS",
    "MPMConfig",
    "Materials",
    "MPMState",
    "Drag",
    "MPMSolver",
    "polar_rotation",
    "log_spd",
    "exp_sym",
]

# Material ids (per particle). Rigid is the infinitely stiff limit: no stress, motion projected per body.
ELASTIC, PLASTICINE, SAND, RIGID = 0, 1, 2, 3
MATERIALS: dict[str, int] = {"elastic": ELASTIC, "plasticine": PLASTICINE, "sand": SAND, "rigid": RIGID}

_TINY = 1e-30  # keeps sqrt/division finite (and their gradients NaN-free) at exactly zero strain


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class MPMConfig:
    """Grid, time stepping and boundaries shared by all scenes of a batch.

    The domain is the cube ``[origin, origin + domain_size]^3`` split into ``grid_res^3`` cells of edge
    ``dx = domain_size / grid_res``. Particles must start inside it, at least ``boundary_cells`` cells
    from its faces.
    """

    grid_res: int = field(default=64, metadata={"range": (8, 1024)})  # cells per axis
    domain_size: float = field(default=1.0, metadata={"range": (1e-3, None)})  # cube edge (m)
    # Lower corner of the domain (m), world z-up. None: x and y centred on 0, bottom at
    # z = -(boundary_cells + 0.5) dx, which puts the default floor (z = 0) just above the bottom wall and
    # half a cell above a node layer (see floor below).
    domain_origin: tuple[float, float, float] | None = None
    # Substep (s). None: automatic, dt = cfl * dx / (c_p + |v|max), capped at max_dt (MPMSolver.max_substep).
    dt: float | None = field(default=None, metadata={"range": (1e-9, 1.0)})
    # CFL number c of dt <= c dx / c_p, c_p = sqrt((lambda + 2 mu) / rho) the P-wave speed. Measured while
    # building this: elastic and plasticine cubes blow up at c = 1.0 (nu = 0.45) and 1.1 (nu = 0.3), and
    # are stable at 0.9; 0.5 leaves a factor ~2 for collisions, plasticity and the velocity term.
    cfl: float = field(default=0.5, metadata={"range": (0.01, 1.0)})
    # Automatic substeps per scene: step() gives every scene of a batch the fewest CFL-safe substeps of its
    # own (scenes that finished their interval wait), instead of the stiffest scene's for all; a scene then
    # takes the substeps it would take alone, whatever it is batched with. False: one count for the batch.
    per_scene_substeps: bool = True
    # Cap on the automatic substep (s). Soft scenes are otherwise limited by the CFL bound alone: 1 s drops of
    # elastic, plasticine and sand cubes (E = 1e4, 32^3 grid) deviated from a 5e-4 s reference by the same
    # 1.5 cm on average with caps of 2e-3 and 4e-3 s.
    max_dt: float = field(default=4e-3, metadata={"range": (1e-9, 1.0)})
    gravity: tuple[float, float, float] = (0.0, 0.0, -9.81)  # (m/s^2); (0, 0, 0) switches it off
    floor_height: float | None = 0.0  # z of the floor plane (m); None: no floor (the bottom wall remains)
    # Floor contact, applied to the grid nodes at least half a cell below the floor plane (a particle feels
    # nodes 1.5 cells away, so deformable objects then rest on the plane; rigid bodies collide with the
    # plane itself). "sticky" stops those nodes; "slip" removes only the velocity into the floor and applies
    # Coulomb friction (coefficient floor_friction) to the tangential part.
    floor: Literal["sticky", "slip"] = "slip"
    floor_friction: float = field(default=0.5, metadata={"range": (0.0, None)})  # Coulomb mu of "slip"
    boundary_cells: int = field(default=3, metadata={"range": (2, None)})  # slip-wall thickness (cells)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            lo, hi = f.metadata.get("range", (None, None))
            value = getattr(self, f.name)
            if value is None or (lo is None and hi is None):
                continue
            if (
                isinstance(value, float)
                and math.isnan(value)
                or (lo is not None and value < lo)
                or (hi is not None and value > hi)
            ):
                raise ValueError(f"MPMConfig.{f.name} must be in [{lo}, {hi}], got {value!r}")
        for name in ("domain_origin", "gravity"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 3 or not all(math.isfinite(float(c)) for c in value):
                raise ValueError(f"MPMConfig.{name} must be 3 finite numbers, got {value!r}")
        if self.floor not in ("sticky", "slip"):
            raise ValueError(f"MPMConfig.floor must be 'sticky' or 'slip', got {self.floor!r}")
        if self.floor_height is not None and not math.isfinite(self.floor_height):
            raise ValueError(f"MPMConfig.floor_height must be finite or None, got {self.floor_height!r}")
        if 2 * self.boundary_cells + 4 > self.grid_res:
            raise ValueError(
                f"MPMConfig.boundary_cells must leave room inside the grid (2 * boundary_cells + 4 <= "
                f"grid_res = {self.grid_res}), got {self.boundary_cells}"
            )

    @property
    def dx(self) -> float:
        """Grid spacing (m)."""
        return self.domain_size / self.grid_res

    @property
    def origin(self) -> tuple[float, float, float]:
        """Lower corner of the domain (m): ``domain_origin`` or its default (see the field)."""
        if self.domain_origin is not None:
            return tuple(float(c) for c in self.domain_origin)  # type: ignore[return-value]
        half = 0.5 * self.domain_size
        return (-half, -half, -(self.boundary_cells + 0.5) * self.dx)


# --------------------------------------------------------------------------------------------- materials


def _scene_wave_speed(materials: Materials) -> Tensor:
    """[B] largest P-wave speed sqrt((lambda + 2 mu) / rho) of each scene (m/s), 0 without soft particles."""
    mu, lam = materials.lame()
    return torch.sqrt((lam + 2 * mu) / materials.density).detach().amax(dim=1)


def _per_particle(name: str, value, B: int, N: int, dtype, device) -> Tensor:
    """Broadcast a float, a per-scene [B] or a per-particle [B, N] value to [B, N]."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim == 1 and t.shape[0] == B:
        t = t[:, None]
    if t.ndim > 2 or (t.ndim >= 1 and t.shape not in ((1,), (B, N), (B, 1), (1, N), (1, 1))):
        raise ValueError(f"{name} must be a number, [B] = [{B}] or [B, N] = [{B}, {N}], got {tuple(t.shape)}")
    return t.expand(B, N).contiguous()


@dataclass
class Materials:
    """Per-particle materials, batched [B, N]. Build with :meth:`Materials.create`.

    Attributes:
        kind: [B, N] int64, one of ELASTIC, PLASTICINE, SAND, RIGID.
        E: [B, N] Young's modulus (Pa).
        nu: [B, N] Poisson ratio in [0, 0.5).
        density: [B, N] (kg/m^3).
        yield_stress: [B, N] von Mises yield stress (Pa); used by plasticine only.
        friction_angle: [B, N] Drucker-Prager friction angle (deg) in [0, 90); used by sand only.
        body: [B, N] int64 >= 0, rigid-body id inside the scene; rigid particles sharing an id move as one.
    """

    kind: Tensor
    E: Tensor
    nu: Tensor
    density: Tensor
    yield_stress: Tensor
    friction_angle: Tensor
    body: Tensor

    @classmethod
    def create(
        cls,
        batch: int,
        n: int,
        *,
        kind: str | int | Tensor = "elastic",
        E: float | Tensor = 1e5,
        nu: float | Tensor = 0.3,
        density: float | Tensor = 1e3,
        yield_stress: float | Tensor = 1e4,
        friction_angle: float | Tensor = 30.0,
        body: int | Tensor = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Materials:
        """Broadcast scalars, per-scene [B] or per-particle [B, N] values to a checked ``Materials``.

        ``kind`` is a name of MATERIALS, an id, or an int tensor of ids ([B] or [B, N]). Defaults follow
        PhysCtrl's data (plasticine yield 1e4 Pa) and typical dry sand (30 deg).
        """
        if isinstance(kind, str):
            if kind not in MATERIALS:
                raise ValueError(f"kind must be one of {list(MATERIALS)}, got {kind!r}")
            kind = MATERIALS[kind]
        kind_t = torch.as_tensor(kind, device=device)
        if kind_t.is_floating_point() or kind_t.dtype == torch.bool:
            raise TypeError(f"kind must be a name or integer material ids, got dtype {kind_t.dtype}")
        mat = cls(
            kind=_per_particle("kind", kind_t.long(), batch, n, torch.long, device),
            E=_per_particle("E", E, batch, n, dtype, device),
            nu=_per_particle("nu", nu, batch, n, dtype, device),
            density=_per_particle("density", density, batch, n, dtype, device),
            yield_stress=_per_particle("yield_stress", yield_stress, batch, n, dtype, device),
            friction_angle=_per_particle("friction_angle", friction_angle, batch, n, dtype, device),
            body=_per_particle(
                "body", torch.as_tensor(body, device=device).long(), batch, n, torch.long, device
            ),
        )
        mat.validate()
        return mat

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kind.shape)  # type: ignore[return-value]

    def validate(self) -> None:
        """Raise ValueError naming the first parameter that is NaN, out of range or of the wrong shape."""
        shape = self.kind.shape
        if len(shape) != 2:
            raise ValueError(f"kind must be [B, N], got {tuple(shape)}")
        bad = (self.kind < 0) | (self.kind > RIGID)
        if bool(bad.any()):
            raise ValueError(
                f"kind must hold ids in 0..{RIGID} ({MATERIALS}), got {self.kind[bad][0].item()}"
            )
        if bool((self.body < 0).any()):
            raise ValueError(f"body ids must be >= 0, got min {self.body.min().item()}")
        limits = {  # name: (lo, lo inclusive, hi, hi inclusive)
            "E": (0.0, False, math.inf, False),
            "nu": (0.0, True, 0.5, False),
            "density": (0.0, False, math.inf, False),
            "yield_stress": (0.0, False, math.inf, False),
            "friction_angle": (0.0, True, 90.0, False),
        }
        for name, (lo, lo_in, hi, hi_in) in limits.items():
            t = getattr(self, name)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name} must be [B, N] = {list(shape)}, got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
            ok = (t >= lo if lo_in else t > lo) & (t <= hi if hi_in else t < hi)  # False for NaN
            if not bool(ok.all()):
                bad_value = t[~ok][0].item()
                interval = f"{'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
                raise ValueError(f"{name} must be in {interval}, got {bad_value}")

    def lame(self) -> tuple[Tensor, Tensor]:
        """Lame parameters (mu, lambda) [B, N] (Pa), zero for rigid particles (they carry no stress)."""
        mu = self.E / (2 * (1 + self.nu))
        lam = self.E * self.nu / ((1 + self.nu) * (1 - 2 * self.nu))
        soft = self.kind != RIGID
        return mu * soft, lam * soft

    def wave_speed(self) -> float:
        """Largest P-wave speed sqrt((lambda + 2 mu) / rho) over the non-rigid particles (m/s); 0 if none."""
        mu, lam = self.lame()
        c = torch.sqrt((lam + 2 * mu) / self.density)
        return float(c.max().item()) if c.numel() else 0.0


# ------------------------------------------------------------------------------------------ state, drag


@dataclass
class MPMState:
    """Particle state of B scenes, batched [B, N, ...]; returned fresh by every step (never mutated).

    Dynamic fields: ``x`` and ``v`` [B, N, 3] positions (m) and velocities (m/s); ``F`` [B, N, 3, 3] trial
    elastic deformation gradient (plasticity projects it at the start of the next substep, as in taichi's
    mpm88, so one decomposition serves both the projection and the stress); ``C`` [B, N, 3, 3] APIC
    velocity gradient (1/s); ``log_jp`` [B, N] log plastic volume ratio (sand's volume correction,
    Tampubolon et al. 2017); ``t`` simulated time (s).

    Constants set by :meth:`MPMSolver.init_state`: ``materials``, ``mass`` and ``volume`` [B, N] (kg, m^3,
    at rest), ``mu`` and ``lam`` [B, N] (Pa), ``gravity`` [B, 3] (m/s^2), ``floor_height`` [B] (m; -inf for
    no floor), and ``layout``, precomputed indices of this batch.
    """

    x: Tensor
    v: Tensor
    F: Tensor
    C: Tensor
    log_jp: Tensor
    t: float
    materials: Materials
    mass: Tensor
    volume: Tensor
    mu: Tensor
    lam: Tensor
    gravity: Tensor
    floor_height: Tensor
    layout: _Layout

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def n(self) -> int:
        return self.x.shape[1]


@dataclass(frozen=True)
class _Layout:
    """Per-batch constants derived once in init_state (index tensors, which branches run, CFL speed)."""

    scene_offset: Tensor  # [B*N] int64, b * G: index of each particle's grid block
    kinds: frozenset[int]  # material ids present in the batch
    # [Ms] int64 flat indices of the stressed particles grouped by material (elastic, plasticine, sand), and
    # the size of each group: every constitutive model runs on its own particles only (see _stress)
    stress_index: Tensor
    stress_counts: tuple[int, int, int]
    wave_speed: float  # max P-wave speed (m/s) over non-rigid particles
    scene_wave_speed: Tensor  # [B] max P-wave speed (m/s) of each scene, 0 for a rigid-only scene
    floor_layers: int  # z-layers of nodes (from the bottom) that hold a floor node in some scene
    floor_mask: Tensor  # [B, floor_layers, 1, 1] bool, node layer >= dx/2 below that scene's floor
    rigid_index: Tensor  # [Mr] int64 flat indices of rigid particles
    rigid_segment: Tensor  # [Mr] int64 body segment (b * bodies + body) of each rigid particle
    rigid_segments: int  # number of segments (B * bodies)
    rigid_floor: Tensor | None  # [Mr] floor height (m) under each rigid particle; None without any floor


@dataclass
class Drag:
    """A force pulling the particles around a point (PhysCtrl's drag), active on [start, start + duration).

    The total ``force`` of each scene is shared by its selected particles in proportion to their mass, so
    the selected region accelerates uniformly by ``force / (mass of the region)``.

    Attributes:
        force: [B, 3] total force (N).
        weight: [B, N] per-particle acceleration per newton (1/kg): 1 / region mass inside, 0 outside.
        start: [B] time the force switches on (s).
        duration: [B] how long it acts (s).
    """

    force: Tensor
    weight: Tensor
    start: Tensor
    duration: Tensor

    @classmethod
    def around(
        cls,
        state: MPMState,
        point: Tensor,
        force: Tensor,
        radius: float | Tensor = 0.05,
        start: float | Tensor = 0.0,
        duration: float | Tensor = math.inf,
    ) -> Drag:
        """Select the particles within ``radius`` (m) of ``point`` [B, 3] (at least the nearest one).

        Args:
            state: the state whose current positions choose the particles (they stay selected).
            point: [B, 3] drag point D (m).
            force: [B, 3] total force f (N).
            radius: float or [B] (m).
            start, duration: float or [B] (s).
        """
        B = state.batch
        x = state.x.detach()
        point = torch.as_tensor(point, dtype=x.dtype, device=x.device)
        force = torch.as_tensor(force, dtype=x.dtype, device=x.device)
        for name, t in (("point", point), ("force", force)):
            if t.shape != (B, 3):
                raise ValueError(f"{name} must be [B, 3] = [{B}, 3], got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite, got {t.tolist()}")
        radius_t = torch.as_tensor(radius, dtype=x.dtype, device=x.device).expand(B)
        start_t = torch.as_tensor(start, dtype=x.dtype, device=x.device).expand(B).clone()
        duration_t = torch.as_tensor(duration, dtype=x.dtype, device=x.device).expand(B).clone()
        if not bool((radius_t >= 0).all()):
            raise ValueError(f"radius must be >= 0, got {radius_t.tolist()}")
        if not bool((duration_t >= 0).all()) or bool(torch.isnan(start_t).any()):
            raise ValueError(
                f"duration must be >= 0 and start a number, got {duration_t.tolist()}, {start_t.tolist()}"
            )
        dist = (x - point[:, None, :]).norm(dim=-1)  # [B, N]
        inside = dist <= radius_t[:, None]
        nearest = dist == dist.min(dim=1, keepdim=True).values
        inside = inside | (nearest & ~inside.any(dim=1, keepdim=True))
        mass = state.mass.detach() * inside
        weight = inside / mass.sum(dim=1, keepdim=True)  # [B, N] (1/kg)
        return cls(force=force, weight=weight.to(x.dtype), start=start_t, duration=duration_t)

    def acceleration(self, t: float | Tensor) -> Tensor:
        """[B, N, 3] acceleration (m/s^2) of each particle at time ``t`` (s): a float or per scene [B]."""
        active = (t >= self.start) & (t < self.start + self.duration)  # [B]
        return self.weight[:, :, None] * (self.force * active[:, None])[:, None, :]


# ------------------------------------------------------------------------------ small-matrix kernels
# Per-particle 3x3 algebra in a particle-last layout: a batch of matrices is a [3, 3, M] tensor, so every
# elementwise op runs along M, vectorised. torch.bmm on [M, 3, 3] was ~5x slower, LAPACK's batched 3x3
# SVD ~20x. The public functions take the usual [..., 3, 3] and convert.


def _soa(A: Tensor) -> Tensor:
    """[..., 3, 3] -> [3, 3, M] (a copy)."""
    return A.reshape(-1, 3, 3).permute(1, 2, 0).contiguous()


def _aos(A: Tensor, shape: torch.Size) -> Tensor:
    """[3, 3, M] -> ``shape`` = [..., 3, 3] (a copy)."""
    return A.permute(2, 0, 1).reshape(shape)


def _mm(A: Tensor, B: Tensor) -> Tensor:
    """Matrix products of [3, 3, M] batches: (A B)_ij = sum_k A_ik B_kj."""
    return A[:, 0, None] * B[None, 0] + A[:, 1, None] * B[None, 1] + A[:, 2, None] * B[None, 2]


def _eye(like: Tensor) -> Tensor:
    """The identity as a [3, 3, 1] tensor that broadcasts against [3, 3, M]."""
    return torch.eye(3, dtype=like.dtype, device=like.device)[:, :, None]


def _cofactors(A: Tensor) -> tuple[list[Tensor], Tensor]:
    """(cofactor matrix of [3, 3, M] as nine [M] rows, row-major; determinant [M])."""
    x00, x01, x02, x10, x11, x12, x20, x21, x22 = A.reshape(9, -1).unbind(0)
    c = [
        x11 * x22 - x12 * x21,
        x12 * x20 - x10 * x22,
        x10 * x21 - x11 * x20,
        x21 * x02 - x22 * x01,
        x22 * x00 - x20 * x02,
        x20 * x01 - x21 * x00,
        x01 * x12 - x02 * x11,
        x02 * x10 - x00 * x12,
        x00 * x11 - x01 * x10,
    ]
    return c, x00 * c[0] + x01 * c[1] + x02 * c[2]


def _det(A: Tensor) -> Tensor:
    return _cofactors(A)[1]


def _inv(A: Tensor) -> Tensor:
    """Inverse of [3, 3, M] (the adjugate over the determinant; callers keep det away from 0)."""
    c, det = _cofactors(A)
    return (torch.stack(c).view(3, 3, -1) / det).transpose(0, 1)  # adj(A) = cof(A)^T


def _polar(F: Tensor, iters: int) -> Tensor:
    X = F
    for _ in range(iters):
        c, det = _cofactors(X)  # X^-T = cof(X) / det(X)
        det = torch.where(det.abs() < 1e-20, torch.full_like(det, 1e-20), det)
        g = det.abs().pow(-1.0 / 3.0)
        X = (0.5 * g) * X + (0.5 / (g * det)) * torch.stack(c).view(3, 3, -1)
    return X


def polar_rotation(F: Tensor, iters: int | None = None) -> Tensor:
    """Orthogonal factor R of the polar decomposition F = R S, for [..., 3, 3] with det F > 0.

    Newton's iteration X <- (g X + X^-T / g) / 2 with determinant scaling g = |det X|^(-1/3) (Higham 1986;
    Byers & Xu 2008) converges quadratically: 4 (fp32) or 6 (fp64) iterations reach machine precision for
    principal stretches within [0.5, 2] (fp32 error 2e-6 within [0.2, 5]). R is smooth in F, unlike the
    SVD-based R, whose derivative is undefined at repeated singular values (F = I is the rest state). For
    det F < 0 the result is the nearest orthogonal matrix (a reflection).
    """
    if iters is None:
        iters = 6 if F.dtype == torch.float64 else 4
    return _aos(_polar(_soa(F), iters), F.shape)


def _series_tolerance(dtype: torch.dtype) -> float:
    return 1e-16 if dtype == torch.float64 else 1e-8


def _log_spd(V: Tensor, terms: int | None) -> Tensor:
    eye = _eye(V)
    s = _det(V).clamp_min(1e-30).pow(1.0 / 3.0)  # [M]
    Vs = V / s
    Z = _mm(Vs - eye, _inv(Vs + eye))
    if terms is None:
        z = min(float(Z.detach().square().sum((0, 1)).max().sqrt()) if Z.numel() else 0.0, 0.95)
        tol, terms = _series_tolerance(V.dtype), 1
        while terms < 30 and 2 * z ** (2 * terms + 1) / ((2 * terms + 1) * (1 - z * z)) > tol:
            terms += 1
    W = _mm(Z, Z)
    acc = eye / (2 * terms - 1)
    for k in range(terms - 2, -1, -1):
        acc = eye / (2 * k + 1) + _mm(W, acc)
    return torch.log(s) * eye + 2 * _mm(Z, acc)


def log_spd(V: Tensor, terms: int | None = None) -> Tensor:
    """Matrix logarithm of symmetric positive definite [..., 3, 3] matrices, without eigenvectors.

    log V = log(s) I + 2 atanh(Z) with s = det(V)^(1/3), which takes out the volume change, and
    Z = (V/s - I)(V/s + I)^-1, whose eigenvalues z lie in (-1, 1); the series 2 sum_k Z^(2k+1) / (2k+1) is
    summed in Horner form. ``terms`` None picks the fewest terms whose tail bound
    2 z^(2K+1) / ((2K+1)(1 - z^2)) (z bounded by the largest ||Z||_F of the batch) is below 1e-8 (fp32) or
    1e-16 (fp64): 2-4 terms for the small elastic strains plasticity allows, 8 when the stretches differ by
    2.5x from their geometric mean. Unlike an eigen-decomposition this is smooth where eigenvalues repeat
    (V = I is the rest state), so gradients through it are exact.
    """
    return _aos(_log_spd(_soa(V), terms), V.shape)


def _exp(A: Tensor, order: int | None) -> Tensor:
    eye = _eye(A)
    if order is None:
        a = float(A.detach().square().sum((0, 1)).max().sqrt()) if A.numel() else 0.0
        tol, order, bound = _series_tolerance(A.dtype), 1, a * a / 2
        while order < 30 and bound > tol:
            order += 1
            bound *= a / (order + 1)
    acc = eye + A / order
    for k in range(order - 1, 0, -1):
        acc = eye + _mm(A, acc) / k
    return acc


def exp_sym(A: Tensor, order: int | None = None) -> Tensor:
    """Matrix exponential of [..., 3, 3] matrices by a Horner-form Taylor series, for the small plastic
    corrections of one substep. ``order`` None picks the lowest order n whose remainder bound
    a^(n+1) / (n+1)! (a the largest ||A||_F of the batch) is below 1e-8 (fp32) or 1e-16 (fp64)."""
    return _aos(_exp(_soa(A), order), A.shape)


# --------------------------------------------------------------------------- constitutive models
# All on [3, 3, M] tensors with per-particle parameters [M].


def _fixed_corotated_tau(F: Tensor, R: Tensor, mu: Tensor, lam: Tensor) -> Tensor:
    """Fixed-corotated Kirchhoff stress (Stomakhin et al. 2012): tau = P F^T = 2 mu (F - R) F^T +
    lambda J (J - 1) I, with R the polar rotation of F."""
    J = _det(F)
    return 2 * mu * _mm(F - R, F.transpose(0, 1)) + lam * J * (J - 1) * _eye(F)


def _hencky_tau(eps: Tensor, mu: Tensor, lam: Tensor) -> Tensor:
    """Kirchhoff stress of St. Venant-Kirchhoff in Hencky strain: tau = 2 mu eps + lambda tr(eps) I."""
    return 2 * mu * eps + lam * _dev(eps)[0] * _eye(eps)


def _dev(e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(trace [M], deviatoric part [3, 3, M], its Frobenius norm [M]) of strains [3, 3, M]."""
    tr = e[0, 0] + e[1, 1] + e[2, 2]
    dev = e - tr / 3 * _eye(e)
    return tr, dev, torch.sqrt(dev.square().sum((0, 1)) + _TINY)


def _von_mises(eps: Tensor, mu: Tensor, yield_stress: Tensor) -> Tensor:
    """Return-map Hencky strains [3, 3, M] onto the von Mises cylinder ||dev tau|| <= sqrt(2/3) s_y.

    With tau = 2 mu eps + lambda tr(eps) I, ||dev tau|| = 2 mu ||dev eps||, so the radial return shrinks
    dev eps to sqrt(2/3) s_y / (2 mu) and keeps the volume (von Mises flow is isochoric).
    """
    _, dev, norm = _dev(eps)
    excess = torch.relu(norm - math.sqrt(2.0 / 3.0) * yield_stress / (2 * mu))
    return eps - excess / norm * dev


def _drucker_prager(eps: Tensor, mu: Tensor, lam: Tensor, friction_angle: Tensor, log_jp: Tensor) -> Tensor:
    """Klar et al. 2016 (section 7.3) sand return mapping on Hencky strains [3, 3, M], cohesionless.

    Expansion (tr eps > 0) goes to the cone tip (stress-free); compression outside the cone is projected
    onto it: eps -= dgamma dev/||dev||, dgamma = ||dev|| + (3 lambda + 2 mu) / (2 mu) tr(eps) alpha with
    alpha = sqrt(2/3) 2 sin(phi) / (3 - sin(phi)). Tampubolon et al. 2017: the strain is first shifted by
    log_jp / 3 so that earlier plastic dilation is undone by later compression instead of resisted. Klar
    et al. write it on principal strains; it only uses the trace, the deviator and its norm, so it reads
    the same on the strain tensor.
    """
    e = eps + log_jp / 3 * _eye(eps)
    tr, dev, norm = _dev(e)
    sin_phi = torch.sin(torch.deg2rad(friction_angle))
    alpha = math.sqrt(2.0 / 3.0) * 2 * sin_phi / (3 - sin_phi)
    dgamma = norm + (3 * lam + 2 * mu) / (2 * mu) * tr * alpha
    cone = e - torch.relu(dgamma) / norm * dev
    return torch.where(tr >= 0, torch.zeros_like(e), cone)


class _Workspace:
    """Reusable buffers for the large temporaries of a substep when autograd is not recording.

    On CPU every fresh multi-megabyte tensor costs page faults (the allocator returns big blocks to the
    OS), which doubled the cost of a 32k-particle substep; reusing the buffers avoids that. When autograd
    records, each op keeps its own output and nothing is reused.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        b = self._buffers.get(name)
        if b is None or b.shape != shape or b.dtype != dtype or b.device != device:
            b = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return b


def _buf(
    ws: _Workspace | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """A reusable output buffer, or None (allocate) when autograd records."""
    return None if ws is None else ws.get(name, shape, dtype, device)


class _Kernel(NamedTuple):
    """Transfer stencil of every particle (M = B N), particle index last."""

    w: Tensor  # [27, M] quadratic B-spline weights
    index: Tensor  # [27 * M] int64 flat node indices into the batched grid [B * G]
    fx: Tensor  # [3, M] particle position relative to its first stencil node (cells)


class _Constants(NamedTuple):
    """Solver constants for one dtype and device."""

    stencil: Tensor  # [27] flat index offsets of the stencil nodes
    offsets: Tensor  # [4, 27] node offsets (x, y, z) in cells, and a row of ones
    offsets_m: Tensor  # [4, 27] the same with the offsets in metres
    origin: Tensor  # [3] domain corner (m)


def _records_grad(state: MPMState, drag: Drag | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    m = state.materials
    tensors = [
        state.x,
        state.v,
        state.F,
        state.C,
        state.log_jp,
        state.mass,
        state.volume,
        state.mu,
        state.lam,
        state.gravity,
        m.yield_stress,
        m.friction_angle,
    ]
    if drag is not None:
        tensors += [drag.force, drag.weight]
    return any(t.requires_grad for t in tensors)


# -------------------------------------------------------------------------------------------- solver

_DYNAMIC = ("x", "v", "F", "C", "log_jp")  # MPMState fields a substep changes (besides t)


class MPMSolver:
    """Batched MLS-MPM on a regular grid; see the module docstring for the algorithm.

    A solver reuses work buffers between substeps (when autograd is not recording), so use one solver per
    thread.

    Args:
        config: grid, time stepping and boundaries.
    """

    def __init__(self, config: MPMConfig | None = None) -> None:
        self.config = config or MPMConfig()
        R = self.config.grid_res
        # 27-node stencil, node offsets (a, b, c) along (z, y, x); flat node index = z R^2 + y R + x.
        a, b, c = torch.meshgrid(torch.arange(3), torch.arange(3), torch.arange(3), indexing="ij")
        self._stencil = (a * R * R + b * R + c).reshape(27)  # [27]
        # O_aug [4, 27]: the offset (x, y, z) of every stencil node in cells, plus a row of ones.
        self._offsets = torch.stack(
            [c.reshape(27), b.reshape(27), a.reshape(27), torch.ones(27, dtype=torch.long)]
        )
        self._cache: dict[tuple[torch.dtype, torch.device], _Constants] = {}
        self._workspace = _Workspace()

    # ----------------------------------------------------------------------------------------- setup

    def init_state(
        self,
        x: Tensor,
        materials: Materials,
        v: Tensor | None = None,
        *,
        volume: float | Tensor | None = None,
        gravity: Tensor | None = None,
        floor_height: float | Tensor | None = None,
    ) -> MPMState:
        """Build the initial state (F = I, C = 0) of B scenes.

        Args:
            x: [B, N, 3] initial positions (m), inside the domain at least ``boundary_cells`` from its faces.
            materials: per-particle materials of shape [B, N].
            v: [B, N, 3] initial velocities (m/s); zero if None.
            volume: rest volume per particle (m^3): a float, [B] or [B, N]. None: (dx / 2)^3, the usual 8
                particles per cell; pass the object volume / its particle count when sampling differs.
            gravity: [B, 3] or [3] (m/s^2); None: ``config.gravity`` for every scene.
            floor_height: float or [B] (m); None: ``config.floor_height`` (no floor if that is None).
        """
        cfg = self.config
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"x must be [B, N, 3], got {tuple(x.shape)}")
        B, N = x.shape[:2]
        dtype, device = x.dtype, x.device
        if not isinstance(materials, Materials):
            raise TypeError(f"materials must be a Materials, got {type(materials).__name__}")
        if materials.shape != (B, N):
            raise ValueError(f"materials must be [B, N] = [{B}, {N}] like x, got {list(materials.shape)}")
        materials.validate()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must be finite, got NaN or inf")
        origin = torch.tensor(cfg.origin, dtype=dtype, device=device)
        margin = cfg.boundary_cells * cfg.dx
        lo, hi = origin + margin, origin + cfg.domain_size - margin
        outside = (x < lo) | (x > hi)
        if bool(outside.any()):
            raise ValueError(
                f"x must lie in the domain shrunk by boundary_cells ([{lo.tolist()}, {hi.tolist()}] m), "
                f"got points from {x.detach().amin(dim=(0, 1)).tolist()} "
                f"to {x.detach().amax(dim=(0, 1)).tolist()}"
            )
        if v is None:
            v = torch.zeros_like(x)
        elif v.shape != x.shape or not bool(torch.isfinite(v).all()):
            raise ValueError(f"v must be finite and [B, N, 3] = {list(x.shape)}, got {tuple(v.shape)}")
        if volume is None:
            volume = (0.5 * cfg.dx) ** 3
        vol = _per_particle("volume", volume, B, N, dtype, device)
        if not bool((vol > 0).all()):
            raise ValueError(f"volume must be > 0, got min {vol.min().item()}")
        if gravity is None:
            gravity = torch.tensor(cfg.gravity, dtype=dtype, device=device)
        gravity = torch.as_tensor(gravity, dtype=dtype, device=device)
        if gravity.shape not in ((3,), (B, 3)) or not bool(torch.isfinite(gravity).all()):
            raise ValueError(f"gravity must be finite, [B, 3] = [{B}, 3] or [3], got {gravity.tolist()}")
        gravity = gravity.expand(B, 3)
        if floor_height is None:
            floor_height = -math.inf if cfg.floor_height is None else cfg.floor_height
        floor = torch.as_tensor(floor_height, dtype=dtype, device=device)
        if floor.shape not in ((), (B,)):
            raise ValueError(f"floor_height must be a number or [B] = [{B}], got {tuple(floor.shape)}")
        floor = floor.expand(B).clone()
        if bool(torch.isnan(floor).any()) or bool((floor == math.inf).any()):
            raise ValueError(f"floor_height must be a number or -inf (no floor), got {floor.tolist()}")

        mu, lam = materials.lame()
        eye = torch.eye(3, dtype=dtype, device=device).expand(B, N, 3, 3).clone()
        return MPMState(
            x=x,
            v=v,
            F=eye,
            C=torch.zeros_like(eye),
            log_jp=torch.zeros(B, N, dtype=dtype, device=device),
            t=0.0,
            materials=materials,
            mass=materials.density * vol,
            volume=vol,
            mu=mu,
            lam=lam,
            gravity=gravity,
            floor_height=floor,
            layout=self._layout(materials, floor),
        )

    def _layout(self, materials: Materials, floor: Tensor) -> _Layout:
        cfg = self.config
        R, G = cfg.grid_res, cfg.grid_res**3
        B, N = materials.shape
        device = materials.kind.device
        if B * G >= 2**31:
            raise ValueError(f"batch * grid_res^3 must stay below 2^31 nodes, got {B} * {G}")
        scene_offset = (torch.arange(B, device=device) * G).repeat_interleave(N)
        # Node layer k (z = z0 + k dx) is floor when it lies at least half a cell below the floor plane.
        k_floor = torch.floor((floor - cfg.origin[2]) / cfg.dx - 0.5).clamp(-1, R - 1) + 1  # [B] layers
        layers = int(k_floor.max().item())
        floor_mask = torch.arange(layers, device=device)[None, :] < k_floor[:, None]
        kind = materials.kind.reshape(-1)
        rigid_index = torch.nonzero(kind == RIGID).reshape(-1)
        bodies = int(materials.body.max().item()) + 1
        scene = torch.arange(B, device=device).repeat_interleave(N)
        segment = (scene * bodies + materials.body.reshape(-1))[rigid_index]
        rigid_floor = floor[scene[rigid_index]] if bool(torch.isfinite(floor).any()) else None
        groups = [torch.nonzero(kind == k).reshape(-1) for k in (ELASTIC, PLASTICINE, SAND)]
        return _Layout(
            scene_offset=scene_offset,
            kinds=frozenset(int(k) for k in kind.unique().tolist()),
            stress_index=torch.cat(groups),
            stress_counts=tuple(int(g.numel()) for g in groups),  # type: ignore[arg-type]
            wave_speed=materials.wave_speed(),
            scene_wave_speed=_scene_wave_speed(materials),
            floor_layers=layers,
            floor_mask=floor_mask[:, :, None, None],
            rigid_index=rigid_index,
            rigid_segment=segment,
            rigid_segments=B * bodies,
            rigid_floor=rigid_floor,
        )

    # ------------------------------------------------------------------------------------- time step

    def max_substep(self, state: MPMState, extra_speed: float = 0.0) -> float:
        """Largest stable substep (s): ``cfl * dx / (c_p + |v|max + extra_speed)``, at most ``max_dt``.

        c_p = sqrt((lambda + 2 mu) / rho) is the fastest elastic (P) wave; it is >= sqrt(E / rho), equal at
        nu = 0 and 2.1x larger at nu = 0.45, where sqrt(E / rho) alone would be unsafe. Particle speed is
        added so that no particle crosses more than ``cfl`` cells per substep either.
        """
        cfg = self.config
        speed = state.layout.wave_speed + float(state.v.detach().norm(dim=-1).max().item()) + extra_speed
        return min(cfg.max_dt, cfg.cfl * cfg.dx / speed) if speed > 0 else cfg.max_dt

    def _check_dt(self, state: MPMState, dt: float, what: str) -> None:
        cfg = self.config
        c_p = state.layout.wave_speed
        if c_p > 0 and dt > cfg.cfl * cfg.dx / c_p:
            mat = state.materials
            mu, lam = mat.lame()
            worst = torch.argmax(((lam + 2 * mu) / mat.density).reshape(-1))
            E = mat.E.reshape(-1)[worst].item()
            rho = mat.density.reshape(-1)[worst].item()
            raise ValueError(
                f"{what} = {dt:.3g} s is too large for E = {E:.3g} Pa (density {rho:.3g} kg/m^3): the CFL "
                f"condition dt <= {cfg.cfl} * dx / c_p needs dt <= {cfg.cfl * cfg.dx / c_p:.3g} s on this "
                f"grid (dx = {cfg.dx:.3g} m, c_p = {c_p:.3g} m/s); use dt=None (automatic substeps) or a "
                f"lower E"
            )

    def plan(
        self, state: MPMState, dt: float | None = None, substeps: int | None = None
    ) -> tuple[float, int]:
        """How :meth:`step` splits ``dt``: returns (dt, number of equal substeps); checks both.

        dt None means one substep of ``config.dt`` or of :meth:`max_substep`. With ``substeps`` None, the
        fewest substeps that respect ``config.dt`` (if set) or :meth:`max_substep` (with the speed gravity
        adds during dt). An explicit ``substeps`` whose substep breaks the CFL condition raises ValueError.
        """
        cfg = self.config
        if cfg.dt is not None:
            self._check_dt(state, cfg.dt, "MPMConfig.dt")
        if dt is None:
            return (cfg.dt if cfg.dt is not None else self.max_substep(state)), 1
        if isinstance(dt, bool) or not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
        if substeps is not None:
            if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
                raise ValueError(f"substeps must be a positive int, got {substeps!r}")
            self._check_dt(state, dt / substeps, f"dt / substeps = {dt:.3g} / {substeps}")
            return float(dt), substeps
        g = float(state.gravity.norm(dim=-1).max().item())
        h = cfg.dt if cfg.dt is not None else self.max_substep(state, extra_speed=g * dt)
        return float(dt), max(1, math.ceil(dt / h * (1 - 1e-9)))

    def step(
        self,
        state: MPMState,
        dt: float | None = None,
        *,
        substeps: int | None = None,
        drag: Drag | None = None,
    ) -> MPMState:
        """Advance all scenes by ``dt`` seconds in equal substeps (see :meth:`plan`).

        With automatic substeps (``substeps`` and ``config.dt`` None) and ``config.per_scene_substeps``,
        every scene takes the fewest CFL-safe substeps of its own (:meth:`scene_substeps`; :meth:`plan`
        gives the largest count); scenes that have finished ``dt`` drop out of the batch until the others
        catch up.

        Args:
            state: current state.
            dt: time to advance (s). None: one substep of ``config.dt`` or of the automatic CFL length.
            substeps: number of substeps of ``dt``. None: the fewest that keep every substep CFL-safe.
            drag: optional drag force.

        Raises:
            ValueError: dt is not positive and finite, or a substep is too large for the stiffest material.
            FloatingPointError: the state became non-finite (it cannot once the CFL condition holds).
        """
        per_scene = dt is not None and substeps is None and self.config.dt is None
        dt, n = self.plan(state, dt, substeps)
        counts = self.scene_substeps(state, dt) if per_scene and self.config.per_scene_substeps else [n]
        if len(set(counts)) > 1:
            state = self._step_per_scene(state, dt, counts, drag)
            n = max(counts)
        else:
            for _ in range(n):
                state = self._substep(state, dt / n, drag)
        if not bool(torch.isfinite(state.x).all()):
            raise FloatingPointError(
                f"MPM state became non-finite by t = {state.t:.4g} s (substep {dt / n:.3g} s): the substep "
                f"is too large for the material or the motion; use automatic substeps (dt=None, "
                f"substeps=None)"
            )
        return state

    def scene_substeps(self, state: MPMState, dt: float) -> list[int]:
        """Fewest CFL-safe substeps of ``dt`` (s) for each scene alone: B counts, as :meth:`plan` would
        give that scene (its own wave speed, particle speed and gravity; ``max_dt`` caps the substep)."""
        cfg = self.config
        g = state.gravity.detach().norm(dim=-1).double()  # [B]
        speed = state.layout.scene_wave_speed.double() + state.v.detach().norm(dim=-1).amax(dim=1) + g * dt
        h = torch.where(speed > 0, cfg.cfl * cfg.dx / speed, torch.full_like(speed, cfg.max_dt))
        h = h.clamp(max=cfg.max_dt)
        return [max(1, math.ceil(dt / float(hb) * (1 - 1e-9))) for hb in h.tolist()]

    def _step_per_scene(self, state: MPMState, dt: float, counts: list[int], drag: Drag | None) -> MPMState:
        """Advance scene b by ``counts[b]`` substeps of ``dt / counts[b]``.

        Substep k of the interval runs on the scenes with more than k substeps. Those sets shrink as k grows,
        so there are at most B of them: each is gathered once into a smaller batch (its own layout and drag)
        that takes all its substeps before being written back.
        """
        B, t0 = state.batch, state.t
        device = state.x.device
        h = torch.tensor([dt / n for n in counts], dtype=torch.float64, device=device)  # [B] (s)
        done = 0
        for level in sorted(set(counts)):
            active = [b for b in range(B) if counts[b] > done]
            idx = torch.tensor(active, device=device)
            sub, sub_drag = (state, drag) if len(active) == B else self._select(state, idx, drag)
            h_a = h[idx]
            for k in range(done, level):
                sub = dataclasses.replace(sub, t=t0 + k * h_a)  # per-scene time [A] (s) for the drag
                sub = self._substep(sub, h_a.to(state.x.dtype), sub_drag)
            if len(active) == B:
                state = sub
            else:
                state = dataclasses.replace(
                    state, **{f: getattr(state, f).index_copy(0, idx, getattr(sub, f)) for f in _DYNAMIC}
                )
            done = level
        return dataclasses.replace(state, t=t0 + dt)

    def _select(self, state: MPMState, idx: Tensor, drag: Drag | None) -> tuple[MPMState, Drag | None]:
        """The scenes ``idx`` [A] of a state (and of its drag) as a batch of their own."""
        pick = lambda t: t.index_select(0, idx)  # noqa: E731
        mat = state.materials
        mat = Materials(**{f.name: pick(getattr(mat, f.name)) for f in dataclasses.fields(Materials)})
        fields = ("x", "v", "F", "C", "log_jp", "mass", "volume", "mu", "lam", "gravity", "floor_height")
        sub = dataclasses.replace(
            state,
            materials=mat,
            layout=self._layout(mat, pick(state.floor_height)),
            **{f: pick(getattr(state, f)) for f in fields},
        )
        if drag is not None:
            drag = Drag(**{f.name: pick(getattr(drag, f.name)) for f in dataclasses.fields(Drag)})
        return sub, drag

    def rollout(
        self,
        state: MPMState,
        frames: int,
        frame_dt: float,
        *,
        drag: Drag | None = None,
        progress: bool = False,
    ) -> tuple[Tensor, MPMState]:
        """Simulate ``frames - 1`` frame intervals and return positions per frame.

        Args:
            state: initial state (frame 0).
            frames: T >= 1, number of frames returned (frame 0 is ``state.x``).
            frame_dt: time between frames (s), split into CFL-safe substeps by :meth:`step`.
            drag: optional drag force.
            progress: show a tqdm bar over frames.

        Returns:
            (positions [B, T, N, 3] (m), final state).
        """
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        xs = [state.x]
        for _ in tqdm(range(frames - 1), desc="mpm", disable=not progress):
            state = self.step(state, frame_dt, drag=drag)
            xs.append(state.x)
        return torch.stack(xs, dim=1), state  # [B, T, N, 3]

    # --------------------------------------------------------------------------------------- substep

    def _constants(self, dtype: torch.dtype, device: torch.device) -> _Constants:
        key = (dtype, device)
        if key not in self._cache:
            dx = self.config.dx
            offsets = self._offsets.to(device=device, dtype=dtype)
            scale = torch.tensor([[dx], [dx], [dx], [1.0]], dtype=dtype, device=device)
            self._cache[key] = _Constants(
                stencil=self._stencil.to(device),
                offsets=offsets,
                offsets_m=offsets * scale,
                origin=torch.tensor(self.config.origin, dtype=dtype, device=device),
            )
        return self._cache[key]

    def _stress(self, state: MPMState) -> tuple[Tensor, Tensor, Tensor]:
        """Phase 1: return mapping and Kirchhoff stress, in the particle-last layout.

        Each model runs on its own particles only (gathered by ``layout.stress_index``, grouped elastic,
        plasticine, sand): rigid particles carry no stress and skip the polar decomposition, elastic ones
        skip the matrix log/exp of the return mappings. Returns (F [3, 3, M] after plasticity, log_jp [M],
        tau [3, 3, M] (Pa)).
        """
        M = state.batch * state.n
        F, log_jp = _soa(state.F), state.log_jp.reshape(M)
        layout = state.layout
        idx = layout.stress_index
        if not idx.numel():
            return F, log_jp, torch.zeros_like(F)  # rigid particles: no stress
        n_el, n_pl, n_sand = layout.stress_counts
        # A batch of one material (no rigid particles) needs no gather and no scatter.
        every = idx.numel() == M and n_el + n_pl + n_sand == max(n_el, n_pl, n_sand)
        Fs = F if every else F.index_select(2, idx)  # [3, 3, Ms]
        mu, lam = state.mu.reshape(M), state.lam.reshape(M)
        if not every:
            mu, lam = mu[idx], lam[idx]  # [Ms], all > 0
        R = _polar(Fs, 6 if F.dtype == torch.float64 else 4)
        taus = []
        if n_el:
            el = slice(0, n_el)
            taus.append(_fixed_corotated_tau(Fs[..., el], R[..., el], mu[el], lam[el]))
        if n_pl + n_sand:
            pl, pl_idx = slice(n_el, None), idx[n_el:]
            Fp, mu_p, lam_p = Fs[..., pl], mu[pl], lam[pl]
            # Hencky strain eps = log V of the left stretch V = F R^T (Klar et al. 2016), by a matrix
            # logarithm rather than an SVD so that gradients stay exact at F = I.
            V = _mm(Fp, R[..., pl].transpose(0, 1))
            eps = _log_spd(0.5 * (V + V.transpose(0, 1)), None)  # [3, 3, Mp]
            eps_new = []
            if n_pl:
                a = slice(0, n_pl)
                ys = state.materials.yield_stress.reshape(M)[pl_idx[a]]
                eps_new.append(_von_mises(eps[..., a], mu_p[a], ys))
            if n_sand:
                b, sand_idx = slice(n_pl, None), pl_idx[n_pl:]
                phi = state.materials.friction_angle.reshape(M)[sand_idx]
                jp = log_jp[sand_idx]
                dp = _drucker_prager(eps[..., b], mu_p[b], lam_p[b], phi, jp)
                eps_new.append(dp)
                jp_new = jp + _dev(eps[..., b])[0] - _dev(dp)[0]
                log_jp = jp_new if every else log_jp.index_copy(0, sand_idx, jp_new)
            eps_new = torch.cat(eps_new, dim=2) if len(eps_new) > 1 else eps_new[0]
            # eps_new commutes with eps (it is a eps + b I), so V_new R = exp(eps_new - eps) V R keeps F's
            # rotation.
            Fp = _mm(_exp(eps_new - eps, None), Fp)
            F = Fp if every else F.index_copy(2, pl_idx, Fp)
            taus.append(_hencky_tau(eps_new, mu_p, lam_p))
        tau_s = torch.cat(taus, dim=2) if len(taus) > 1 else taus[0]
        return F, log_jp, tau_s if every else torch.zeros_like(F).index_copy(2, idx, tau_s)

    def _substep(self, state: MPMState, dt: float | Tensor, drag: Drag | None) -> MPMState:
        """One MLS-MPM substep of length dt (s), a float or per scene [B]: the module docstring's phases."""
        cfg = self.config
        B, N = state.batch, state.n
        M = B * N
        dt_p = dt.repeat_interleave(N)[:, None] if isinstance(dt, Tensor) else dt  # [M, 1] per particle
        # Without autograd recording, the large temporaries go to reusable buffers (see _Workspace).
        ws = None if _records_grad(state, drag) else self._workspace
        F, log_jp, tau = self._stress(state)  # 1. plasticity and stress
        kernel = self._kernel(state, ws)
        grid = self._p2g(state, dt, tau, kernel, drag, ws)  # 2. P2G
        vg = self._grid_velocity(grid, state, ws)  # 3. grid update
        v_new, C_new = self._g2p(vg, kernel, ws)  # 4. G2P: [3, M], [3, 3, M]

        x = state.x.reshape(M, 3)
        v_new = v_new.T  # [M, 3]
        if state.layout.rigid_index.numel():
            x_new, v_new, C_aos = _project_rigid(x, v_new, _aos(C_new, (M, 3, 3)), state, dt_p, cfg)
            C_new = _soa(C_aos)
        else:
            x_new = x + dt_p * v_new
        F_new = F + (dt_p if isinstance(dt_p, float) else dt_p.T) * _mm(C_new, F)  # (I + dt C) F
        if RIGID in state.layout.kinds:  # rigid particles carry no strain
            F_new = torch.where(state.materials.kind.reshape(M) == RIGID, _eye(F), F_new)
        return dataclasses.replace(
            state,
            x=x_new.reshape(B, N, 3),
            v=v_new.reshape(B, N, 3).contiguous(),
            F=_aos(F_new, (B, N, 3, 3)),
            C=_aos(C_new, (B, N, 3, 3)),
            log_jp=log_jp.reshape(B, N),
            t=state.t + dt,
        )

    def _kernel(self, state: MPMState, ws: _Workspace | None) -> _Kernel:
        """Quadratic B-spline weights and flat node indices of every particle's 27 nodes.

        Per-particle stencil data is laid out particle-last ([27, M], [3, M]): every elementwise op then runs
        along M, vectorised, instead of over tiny trailing dimensions of size 3.
        """
        cfg = self.config
        R, dx = cfg.grid_res, cfg.dx
        M = state.batch * state.n
        dtype, device = state.x.dtype, state.x.device
        const = self._constants(dtype, device)
        # Grid coordinates are clamped so that a stray particle still finds its 27 nodes inside the grid (and
        # a diverged, non-finite one indexes node 0 instead of crashing; step() then reports the divergence).
        xg = (state.x.reshape(M, 3).T - const.origin[:, None]) / dx  # [3, M] in cells
        xg = torch.nan_to_num(xg, nan=0.5).clamp(0.5, R - 1.5 - 1e-4)
        base = torch.floor(xg - 0.5)
        fx = xg - base  # [3, M] in [0.5, 1.5): position seen from the first stencil node, in cells
        w1 = torch.stack(
            [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1) ** 2, 0.5 * (fx - 0.5) ** 2], dim=1
        )  # [3,3,M]
        wzy = w1[2, :, None] * w1[1, None, :]  # [3, 3, M]
        out = _buf(ws, "w", (3, 3, 3, M), dtype, device)
        w = torch.mul(wzy[:, :, None], w1[0, None, None], out=out).view(27, M)  # stencil order (z, y, x)
        bi = base.long()
        first = bi[2] * (R * R) + bi[1] * R + bi[0] + state.layout.scene_offset  # [M] flat node
        out = _buf(ws, "index", (27, M), torch.long, device)
        index = torch.add(first[None, :], const.stencil[:, None], out=out).view(-1)  # [27 M]
        return _Kernel(w=w, index=index, fx=fx)

    def _p2g(
        self,
        state: MPMState,
        dt: float | Tensor,
        tau: Tensor,
        kernel: _Kernel,
        drag: Drag | None,
        ws: _Workspace | None,
    ) -> Tensor:
        """Scatter mass and momentum to the grid: [4, B*G] (momentum x, y, z in kg m/s; mass in kg).

        ``tau`` [3, 3, M] is the Kirchhoff stress from :meth:`_stress`. Gravity and drag enter here as a
        velocity kick dt a before the scatter: node velocity = sum w m (v + dt a) / sum w m equals adding dt a
        to every node afterwards (partition of unity), without a pass over the whole grid.
        """
        cfg = self.config
        dx, G = cfg.dx, cfg.grid_res**3
        B, N = state.batch, state.n
        M = B * N
        dtype, device = state.x.dtype, state.x.device
        mass = state.mass.reshape(M)
        accel = state.gravity[:, None, :]  # [B, 1, 3]
        if drag is not None:
            accel = accel + drag.acceleration(state.t)  # [B, N, 3]
        dt_b = dt[:, None, None] if isinstance(dt, Tensor) else dt  # per scene
        v = (state.v + dt_b * accel).reshape(M, 3)
        dt_p = dt.repeat_interleave(N) if isinstance(dt, Tensor) else dt  # per particle [M]
        # MLS-MPM (Hu et al. 2018, eq. 29): node momentum w (m v + A (x_i - x_p)) with
        # A = m C - dt V0 (4/dx^2) tau and x_i - x_p = (o - fx) dx. As a GEMM: rows [A | m v - dx A fx]
        # and [0 | m] times [dx o; 1].
        rows = _buf(ws, "rows", (4, 4, M), dtype, device)
        rows = torch.empty(4, 4, M, dtype=dtype, device=device) if rows is None else rows
        C = state.C.reshape(M, 3, 3).permute(1, 2, 0)  # [3, 3, M] view
        A = torch.addcmul((-4 / dx**2) * dt_p * state.volume.reshape(M) * tau, mass, C)  # [3, 3, M]
        rows[:3, :3] = A
        rows[:3, 3] = mass * v.T - dx * (A * kernel.fx[None]).sum(1)
        rows[3, :3] = 0
        rows[3, 3] = mass
        out = _buf(ws, "src", (4, 27, M), dtype, device)
        src = torch.matmul(self._constants(dtype, device).offsets_m.T, rows, out=out)  # [4, 27, M]
        src = src * kernel.w if ws is None else src.mul_(kernel.w)  # momentum (3) and mass
        grid = _buf(ws, "grid", (4, B * G), dtype, device)
        grid = torch.zeros(4, B * G, dtype=dtype, device=device) if grid is None else grid.zero_()
        return grid.index_add_(1, kernel.index, src.view(4, 27 * M))  # [4, B*G]

    def _grid_velocity(self, grid: Tensor, state: MPMState, ws: _Workspace | None) -> Tensor:
        """Node velocities [3, B*G] (m/s): momentum / mass, then floor and walls."""
        R = self.config.grid_res
        mass = grid[3].add_(_TINY)  # empty nodes: 0 / tiny = 0, no NaN
        vg = torch.div(grid[:3], mass, out=_buf(ws, "vg", (3, grid.shape[1]), grid.dtype, grid.device))
        self._boundaries(vg.view(3, state.batch, R, R, R), state)
        return vg

    def _g2p(self, vg: Tensor, kernel: _Kernel, ws: _Workspace | None) -> tuple[Tensor, Tensor]:
        """Gather particle velocities [3, M] and APIC matrices C [3, 3, M] from node velocities vg [3, B*G].

        v_p = sum_i w v_i; C_p = (4 / dx^2) sum_i w v_i (x_i - x_p)^T = (4 / dx) (sum_i w v_i o^T - v_p fx^T).
        """
        dx = self.config.dx
        M = kernel.fx.shape[1]
        out = _buf(ws, "gathered", (3, 27 * M), vg.dtype, vg.device)
        gathered = torch.index_select(vg, 1, kernel.index, out=out).view(3, 27, M)
        gathered = gathered * kernel.w if ws is None else gathered.mul_(kernel.w)
        moments = torch.matmul(self._constants(vg.dtype, vg.device).offsets, gathered)  # [3, 4, M]
        v_new = moments[:, 3]  # [3, M]
        C_new = (4 / dx) * (moments[:, :3] - v_new[:, None, :] * kernel.fx[None, :, :])  # [3, 3, M]
        return v_new, C_new

    def _boundaries(self, vg: Tensor, state: MPMState) -> None:
        """Apply floor and wall conditions in place to grid velocities vg [3, B, R, R, R] (z, y, x order)."""
        cfg = self.config
        R, nb = cfg.grid_res, cfg.boundary_cells
        layers = state.layout.floor_layers
        if layers > 0:
            # Only the bottom `layers` z-slices can hold floor nodes: work on that slab alone. The slab is a
            # copy, so that autograd never sees a saved tensor modified by the assignment below.
            slab = vg[:, :, :layers].clone()  # [3, B, layers, R, R]
            floor = state.layout.floor_mask  # [B, layers, 1, 1]
            if cfg.floor == "sticky":
                slab = torch.where(floor, torch.zeros_like(slab), slab)
            else:
                vz = slab[2]
                into = floor & (vz < 0)
                # Coulomb friction (Stomakhin et al. 2013): |v_t| shrinks by mu |v_n|, to zero at most.
                vt_norm = torch.sqrt(slab[0] ** 2 + slab[1] ** 2 + _TINY)
                scale = torch.clamp(1 + cfg.floor_friction * vz / vt_norm, min=0.0)
                scale = torch.where(into, scale, torch.ones_like(scale))
                slab = torch.stack(
                    [slab[0] * scale, slab[1] * scale, torch.where(into, torch.zeros_like(vz), vz)]
                )
            vg[:, :, :layers] = slab
        # Slip walls: inside the outer `nb` node layers remove the velocity component pointing outwards.
        for axis, dim in ((0, 4), (1, 3), (2, 2)):
            low = vg[axis].narrow(dim - 1, 0, nb)
            vg[axis].narrow(dim - 1, 0, nb).copy_(torch.where(low < 0, torch.zeros_like(low), low))
            high = vg[axis].narrow(dim - 1, R - nb, nb)
            vg[axis].narrow(dim - 1, R - nb, nb).copy_(torch.where(high > 0, torch.zeros_like(high), high))

    # ---------------------------------------------------------------------------------- diagnostics

    def energy(self, state: MPMState) -> dict[str, Tensor]:
        """Energies per scene [B] (J): ``kinetic`` (APIC: 1/2 m (|v|^2 + dx^2/4 ||C||^2), Jiang et al.
        2015), ``elastic`` (V0 psi(F) of the return-mapped F: fixed-corotated or Hencky StVK), ``potential``
        (-m g . x, zero at the origin), ``total``.
        """
        dx = self.config.dx
        m = state.mass
        kinetic = 0.5 * (m * ((state.v**2).sum(-1) + 0.25 * dx * dx * (state.C**2).sum((-1, -2)))).sum(-1)
        potential = -(m * (state.x * state.gravity[:, None, :]).sum(-1)).sum(-1)
        F = _aos(self._stress(state)[0], state.F.shape)  # after the return mapping
        sigma = torch.linalg.svdvals(F)  # [B, N, 3] descending
        J = torch.linalg.det(F)
        signed = torch.cat([sigma[..., :2], sigma[..., 2:] * torch.sign(J)[..., None]], dim=-1)
        psi_fcr = state.mu * ((signed - 1) ** 2).sum(-1) + 0.5 * state.lam * (J - 1) ** 2
        eps = torch.log(sigma.clamp_min(1e-12))
        psi_hencky = state.mu * (eps**2).sum(-1) + 0.5 * state.lam * eps.sum(-1) ** 2
        kind = state.materials.kind
        psi = torch.where((kind == PLASTICINE) | (kind == SAND), psi_hencky, psi_fcr)
        elastic = (state.volume * psi).sum(-1)
        return {
            "kinetic": kinetic,
            "elastic": elastic,
            "potential": potential,
            "total": kinetic + elastic + potential,
        }


def _project_rigid(
    x: Tensor, v: Tensor, C: Tensor, state: MPMState, dt: float | Tensor, cfg: MPMConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Replace the grid motion of rigid particles by their body's rigid motion; advect everything.

    Per body: linear momentum P and angular momentum L (with APIC's particle spin m dx^2/4 axial(C - C^T),
    Jiang et al. 2015) are kept: omega = I^-1 L, I = sum m (|r|^2 I - r r^T) + m dx^2/2 I. Floor contact is
    then resolved on the body (:func:`_floor_contacts`), since the grid's floor nodes alone would only stop
    the body's bottom layer. Rigid particles move exactly: x <- c + dt v_c + Rot(dt omega) r (Rodrigues), so
    a spinning body does not swell. Takes and returns x, v [M, 3] and C [M, 3, 3] of all particles; dt (s)
    is a float or per particle [M, 1].
    """
    layout, dx, mass = state.layout, cfg.dx, state.mass.reshape(-1)
    idx, seg, S = layout.rigid_index, layout.rigid_segment, layout.rigid_segments
    dt_r = dt[idx] if isinstance(dt, Tensor) else dt  # [Mr, 1] or float
    xr, vr, Cr, mr = x[idx], v[idx], C[idx], mass[idx]
    dtype, device = x.dtype, x.device
    m_b = torch.zeros(S, dtype=dtype, device=device).index_add(0, seg, mr)  # [S]
    empty = m_b == 0  # segment of a body id absent from that scene
    m_b = torch.where(empty, torch.ones_like(m_b), m_b)
    c_b = torch.zeros(S, 3, dtype=dtype, device=device).index_add(0, seg, mr[:, None] * xr) / m_b[:, None]
    v_b = torch.zeros(S, 3, dtype=dtype, device=device).index_add(0, seg, mr[:, None] * vr) / m_b[:, None]
    r = xr - c_b[seg]  # [Mr, 3]
    spin = torch.stack([Cr[:, 2, 1] - Cr[:, 1, 2], Cr[:, 0, 2] - Cr[:, 2, 0], Cr[:, 1, 0] - Cr[:, 0, 1]], -1)
    L = torch.linalg.cross(r, vr, dim=-1) + 0.25 * dx * dx * spin
    L_b = torch.zeros(S, 3, dtype=dtype, device=device).index_add(0, seg, mr[:, None] * L)
    eye = torch.eye(3, dtype=dtype, device=device)
    inertia = (r * r).sum(-1)[:, None, None] * eye - r[:, :, None] * r[:, None, :] + 0.5 * dx * dx * eye
    I_b = torch.zeros(S, 3, 3, dtype=dtype, device=device).index_add(0, seg, mr[:, None, None] * inertia)
    I_inv = torch.linalg.inv(torch.where(empty[:, None, None], eye, I_b))  # [S, 3, 3]
    omega = (I_inv @ L_b[:, :, None])[..., 0]  # [S, 3]
    if layout.rigid_floor is not None:
        mu = 1e6 if cfg.floor == "sticky" else cfg.floor_friction
        gap = xr[:, 2] - layout.rigid_floor  # [Mr]
        # Contact candidates: a particle becomes a contact only if it can close its gap within the substep.
        # Contact impulses only slow approaching points, but through a body's rotation they can speed up
        # others (a rod that stops at one end swings its far end down at up to 1.5x its speed), so a
        # particle farther than 3 dt |u|max (|u|max: its body's fastest point before contact, u = v +
        # omega x r; bodies are solved independently) never activates, and dropping it leaves every
        # impulse bit-identical. The floor contacts then cost little while bodies are airborne or resting
        # on a face (a few % of their particles are candidates).
        spin = omega.detach().norm(dim=-1) * _body_radius(r, seg, S)  # [S] fastest rotation speed (m/s)
        u_max = (v_b.detach().norm(dim=-1) + spin)[seg]  # [Mr] bound on the speed of a point of the body
        dt_c = dt_r[:, 0] if isinstance(dt_r, Tensor) else dt_r  # [Mr] or float
        near = torch.nonzero(gap.detach() < 3 * dt_c * u_max + 0.5 * dx).reshape(-1)
        if near.numel():
            if isinstance(dt_c, Tensor):
                dt_c = dt_c[near]
            v_b, omega = _floor_contacts(gap[near], r[near], v_b, omega, m_b, I_inv, seg[near], dt_c, mu)

    w = omega[seg]  # [Mr, 3]
    v_rigid = v_b[seg] + torch.linalg.cross(w, r, dim=-1)
    zero = torch.zeros_like(w[:, 0])
    C_rigid = torch.stack(  # skew(omega): C r = omega x r
        [zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], dim=-1
    ).reshape(-1, 3, 3)
    # Rodrigues rotation of r by the angle dt |omega| about omega
    theta = dt_r * torch.sqrt((w * w).sum(-1, keepdim=True) + _TINY)
    k = dt_r * w / theta
    r_rot = (
        r * torch.cos(theta)
        + torch.linalg.cross(k, r, dim=-1) * torch.sin(theta)
        + k * (k * r).sum(-1, keepdim=True) * (1 - torch.cos(theta))
    )
    x_rigid = c_b[seg] + dt_r * v_b[seg] + r_rot
    x_new = (x + dt * v).index_copy(0, idx, x_rigid)
    return x_new, v.index_copy(0, idx, v_rigid), C.index_copy(0, idx, C_rigid)


def _body_radius(r: Tensor, seg: Tensor, S: int) -> Tensor:
    """Largest |r| of each body segment [S] (m), from offsets r [Mr, 3] to the segment centres."""
    dist = r.detach().norm(dim=-1)
    return torch.zeros(S, dtype=r.dtype, device=r.device).scatter_reduce_(0, seg, dist, "amax")


def _floor_contacts(
    gap: Tensor,
    r: Tensor,
    v_b: Tensor,
    w_b: Tensor,
    m_b: Tensor,
    I_inv: Tensor,
    seg: Tensor,
    dt: float | Tensor,
    mu: float,
    iters: int = 10,
) -> tuple[Tensor, Tensor]:
    """Rigid bodies against the floor plane (normal +z): projected Jacobi over particle contacts.

    Every rigid particle at height ``gap`` above the floor constrains its velocity u = v + omega x r to
    u_z >= -gap / dt (it may close the gap within the substep) or, already below it, u_z >= 0.2 |gap| / dt
    (pushed out over a few substeps, Baumgarte stabilisation). Accumulated normal impulses stay >= 0 and
    friction impulses inside the Coulomb disc |P_t| <= mu P_n (Catto's sequential impulses). Each
    contact's impulse is divided by its body's number of active contacts, the Jacobi form of the solve.

    Args: gap [Mr] (m); r [Mr, 3] offsets from the body centre; v_b, w_b [S, 3] body velocity and angular
    velocity; m_b [S]; I_inv [S, 3, 3]; seg [Mr] body of each particle; dt (s) a float or per contact
    [Mr]. Returns the new (v_b, w_b).
    """
    S = m_b.shape[0]
    target = torch.where(gap > 0, -gap / dt, -0.2 * gap / dt)  # [Mr] lowest allowed u_z
    I_p, inv_m = I_inv[seg], 1 / m_b[seg]  # [Mr, 3, 3], [Mr]

    def eff_mass(d: Tensor) -> Tensor:  # 1 / (1/m + (r x d) . I^-1 (r x d)) for unit directions d [Mr, 3]
        rd = torch.linalg.cross(r, d, dim=-1)
        return 1 / (inv_m + (rd * (I_p @ rd[..., None])[..., 0]).sum(-1))

    n = torch.zeros_like(r)
    n[:, 2] = 1
    k_n = eff_mass(n)
    p_n = torch.zeros_like(gap)
    p_t = torch.zeros_like(r[:, :2])
    for _ in range(iters):
        u = v_b[seg] + torch.linalg.cross(w_b[seg], r, dim=-1)  # [Mr, 3]
        want = (target - u[:, 2]) * k_n
        active = ((want > 0) | (p_n > 0)).to(gap.dtype)
        count = torch.zeros(S, dtype=gap.dtype, device=gap.device).index_add(0, seg, active).clamp_min(1)[seg]
        p_n_new = torch.relu(p_n + want / count)
        # friction along the tangential velocity, clamped to the Coulomb disc of the new normal impulse
        u_t = u[:, :2]
        speed = torch.sqrt((u_t * u_t).sum(-1) + _TINY)
        t_dir = torch.cat([-u_t / speed[:, None], torch.zeros_like(speed[:, None])], dim=-1)
        p_t_new = p_t + (speed * eff_mass(t_dir) / count)[:, None] * t_dir[:, :2]
        norm = torch.sqrt((p_t_new * p_t_new).sum(-1) + _TINY)
        p_t_new = p_t_new * torch.clamp(mu * p_n_new / norm, max=1.0)[:, None]
        impulse = torch.cat([p_t_new - p_t, (p_n_new - p_n)[:, None]], dim=-1)  # [Mr, 3]
        p_n, p_t = p_n_new, p_t_new
        v_b = v_b + torch.zeros_like(v_b).index_add(0, seg, impulse) / m_b[:, None]
        torque = torch.zeros_like(w_b).index_add(0, seg, torch.linalg.cross(r, impulse, dim=-1))
        w_b = w_b + (I_inv @ torque[:, :, None])[..., 0]
    return v_b, w_b
