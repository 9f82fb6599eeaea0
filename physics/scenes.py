"""Seeded scene sampler and captions for the simulated worlds.

A :class:`Scene` is everything a simulator and the renderer need to produce one clip: the objects (shape,
size, named colour, material and its physical parameters, initial pose and velocity), optional PhysCtrl-
style drag forces (a force vector applied at a point of an object's surface for a while; Wang et al.,
NeurIPS 2025), the camera and the clip's timing. Scenes are frozen, JSON-serialisable
(``to_dict``/``from_dict``) and a pure function of their seed: ``sample_scene(cfg, ...,
generator=torch.Generator().manual_seed(s))`` gives the same scene for the same ``s``.

Captions are short English sentences made from the parameters and, where needed, the simulated outcome
(``describe``): "a red rubber ball bounces twice and rolls to the left", "a blue plasticine cube is
dragged to the right and stays deformed".

World frame (DESIGN.md §2): z up, SI units, floor the plane ``z = floor_height``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from physics import shapes as shp
from physics.camera import check_visible, intrinsics, look_at

__all__ = [
    "COLOURS",
    "MATERIALS",
    "SHAPES",
    "CameraSpec",
    "Drag",
    "ObjectSpec",
    "Scene",
    "SceneConfig",
    "describe",
    "make_shape",
    "object_name",
    "quat_to_matrix",
    "redraw_motion",
    "sample_scene",
    "scene_seed",
]

SHAPES: tuple[str, ...] = ("sphere", "box", "capsule", "cylinder")
MATERIALS: tuple[str, ...] = ("rigid", "elastic", "plasticine", "sand")  # PhysCtrl's four material classes

# Named albedos (RGB in [0, 1]); chosen apart from the renderer's sky (light blue) and grey ground checker,
# and from each other, so that a caption's colour word picks out one object.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.10, 0.25, 0.90),
    "purple": (0.50, 0.15, 0.70),
    "pink": (0.95, 0.45, 0.70),
    "brown": (0.50, 0.30, 0.12),
    "white": (0.96, 0.96, 0.93),
}

Vec3 = tuple[float, float, float]
Bounds = tuple[Vec3, Vec3]  # (lower corner, upper corner) of an axis-aligned box (m)
Kind = Literal["rigid", "mpm"]


def scene_seed(seed: int, index: int) -> int:
    """Seed of clip ``index`` in a dataset generated with ``seed``: a 63-bit hash of the pair, so that clip i
    depends only on (seed, i) and neighbouring clips get unrelated random streams."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    digest = hashlib.sha256(f"wmgen.scene:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------------------
# scene description
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene. Units: m, s, kg, Pa. Fields that a material does not use are still set."""

    shape: str  # "sphere" | "box" | "capsule" | "cylinder"
    # physics.shapes.Shape.size (m): sphere (r, 0, 0); box half extents; capsule, cylinder (r, half length, 0)
    size: Vec3
    colour: str  # key of COLOURS
    material: str  # "rigid" | "elastic" | "plasticine" | "sand"
    density: float  # kg/m^3
    youngs_modulus: float  # E (Pa), elastic response of MPM materials
    poisson_ratio: float  # nu, in [0, 0.5)
    restitution: float  # coefficient of restitution (rigid world; 0 in MPM scenes, which have none)
    friction: float  # Coulomb friction with the floor (MPM scenes: the solver's global floor friction)
    yield_stress: float  # von Mises yield stress of plasticine (Pa)
    friction_angle: float  # Drucker-Prager friction angle of sand (degrees)
    position: Vec3  # centre of mass at t = 0 (m)
    orientation: tuple[float, float, float, float]  # unit quaternion (w, x, y, z), body -> world
    velocity: Vec3  # linear velocity at t = 0 (m/s)
    angular_velocity: Vec3  # world-frame angular velocity at t = 0 (rad/s)

    @property
    def volume(self) -> float:
        """m^3 (closed form, as physics.shapes)."""
        r, a, b = self.size
        if self.shape == "sphere":
            return 4.0 / 3.0 * math.pi * r**3
        if self.shape == "box":
            return 8.0 * r * a * b
        if self.shape == "cylinder":
            return 2.0 * math.pi * r * r * a
        return 2.0 * math.pi * r * r * a + 4.0 / 3.0 * math.pi * r**3  # capsule

    @property
    def mass(self) -> float:
        """kg."""
        return self.density * self.volume

    @property
    def bounding_radius(self) -> float:
        """Largest distance from the centre to a point of the solid (m)."""
        r, a, b = self.size
        return {
            "sphere": r,
            "box": math.sqrt(r * r + a * a + b * b),
            "capsule": a + r,
            "cylinder": math.hypot(r, a),
        }[self.shape]


@dataclass(frozen=True)
class Drag:
    """A PhysCtrl-style drag: ``force`` (N, world frame) pulls object ``object_index`` at ``point`` (world
    position at t = 0 on its surface, moving with the body) from ``start`` for ``duration`` seconds."""

    object_index: int
    point: Vec3
    force: Vec3
    start: float
    duration: float


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera looking at ``target`` from ``eye`` (OpenCV axes via physics.camera.look_at)."""

    eye: Vec3  # camera centre (m)
    target: Vec3  # point on the optical axis (m)
    fov_deg: float  # horizontal field of view (degrees)
    width: int  # W (pixels)
    height: int  # H (pixels)

    def K(self) -> Tensor:
        """[3, 3] float32 intrinsics."""
        return intrinsics(self.width, self.height, fov_deg=self.fov_deg, dtype=torch.float32)

    def E(self) -> Tensor:
        """[4, 4] float32 world-to-camera extrinsics."""
        return look_at(
            torch.tensor(self.eye, dtype=torch.float64), torch.tensor(self.target, dtype=torch.float64)
        ).to(torch.float32)


@dataclass(frozen=True)
class Scene:
    """One clip's worth of world: objects, drags, camera, gravity and timing. JSON-serialisable."""

    kind: Kind  # which simulator: "rigid" (physics.rigid) or "mpm" (physics.mpm)
    seed: int  # the seed the scene was sampled with
    objects: tuple[ObjectSpec, ...]
    drags: tuple[Drag, ...]
    camera: CameraSpec
    frames: int  # T
    fps: float  # frames per second (frame dt = 1 / fps)
    gravity: Vec3 = (0.0, 0.0, -9.81)  # m/s^2
    floor_height: float = 0.0  # z of the floor (m)

    @property
    def dt(self) -> float:
        """Time between frames (s)."""
        return 1.0 / self.fps

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        """Inverse of ``to_dict``."""
        try:
            objects = tuple(_build(ObjectSpec, o) for o in data["objects"])
            drags = tuple(_build(Drag, d) for d in data["drags"])
            camera = _build(CameraSpec, data["camera"])
            rest = {k: v for k, v in data.items() if k not in ("objects", "drags", "camera")}
            return _build(cls, {**rest, "objects": objects, "drags": drags, "camera": camera})
        except (KeyError, TypeError) as err:
            raise ValueError(f"data is not a Scene dict ({err}); keys: {sorted(data)}") from err


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise KeyError(f"{cls.__name__}.{f.name}")
            continue
        value = data[f.name]
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"unknown keys {sorted(unknown)} for {cls.__name__}")
    return cls(**kwargs)


def make_shape(obj: ObjectSpec) -> shp.Shape:
    """The physics.shapes solid of an object (body frame, centre of mass at the origin)."""
    return _shape(obj.shape, tuple(obj.size))


@functools.lru_cache(maxsize=512)
def _shape(kind: str, size: Vec3) -> shp.Shape:
    # cached: building a trimesh mesh costs more than the sampling done with it, and Shape is immutable
    r, a, b = size
    if kind == "sphere":
        return shp.sphere(r)
    if kind == "box":
        return shp.box((2 * r, 2 * a, 2 * b))
    if kind == "capsule":
        return shp.capsule(r, 2 * a)
    if kind == "cylinder":
        return shp.cylinder(r, 2 * a)
    raise ValueError(f"shape must be one of {SHAPES}, got {kind!r}")


# ---------------------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """Ranges the scene sampler draws from. ``(lo, hi)`` pairs are uniform unless the comment says log."""

    # objects per scene, at least / at most
    min_objects: int = field(default=1, metadata={"range": (1, len(COLOURS))})
    max_objects: int = field(default=3, metadata={"range": (1, len(COLOURS))})
    # shapes to draw from (uniformly)
    shapes: tuple[str, ...] = SHAPES
    # MPM-world materials and their relative frequencies (the rigid world is always "rigid")
    materials: tuple[str, ...] = MATERIALS
    material_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # object scale (m): sphere radius, box half side, ...; boxes have equal sides with cube_probability
    size: tuple[float, float] = field(default=(0.08, 0.16), metadata={"range": (1e-3, None)})
    cube_probability: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    # density (kg/m^3, log-uniform)
    density: tuple[float, float] = field(default=(400.0, 2500.0), metadata={"range": (1.0, None)})
    # Young's modulus E (Pa, log-uniform; PhysCtrl draws log10 E ~ U(4, 7) on a finer grid) and Poisson nu
    youngs_modulus: tuple[float, float] = field(default=(1e4, 1e6), metadata={"range": (1.0, None)})
    poisson_ratio: tuple[float, float] = field(default=(0.2, 0.4), metadata={"range": (0.0, 0.49)})
    # rigid world: coefficient of restitution and Coulomb friction with the floor
    restitution: tuple[float, float] = field(default=(0.1, 0.8), metadata={"range": (0.0, 1.0)})
    friction: tuple[float, float] = field(default=(0.2, 0.8), metadata={"range": (0.0, None)})
    # plasticine yield stress = E * yield strain (log-uniform), so that it yields under our drags for any E
    yield_strain: tuple[float, float] = field(default=(0.01, 0.05), metadata={"range": (1e-5, 1.0)})
    # sand's Drucker-Prager friction angle (degrees)
    friction_angle: tuple[float, float] = field(default=(25.0, 40.0), metadata={"range": (0.0, 89.0)})
    # |x|, |y| of object centres (m)
    spawn_half_width: float = field(default=0.3, metadata={"range": (0.0, None)})
    # gap between an object's lowest point and the floor at t = 0 (m)
    drop_height: tuple[float, float] = field(default=(0.0, 0.5), metadata={"range": (0.0, None)})
    # initial speed (m/s): horizontal (random heading) and vertical vz
    horizontal_speed: tuple[float, float] = field(default=(0.0, 1.2), metadata={"range": (0.0, None)})
    vertical_speed: tuple[float, float] = (-0.5, 1.5)
    # rigid world: std of each initial angular velocity component (rad/s)
    spin: float = field(default=3.0, metadata={"range": (0.0, None)})
    # largest initial tilt away from upright (rad), after a uniform yaw
    tilt: float = field(default=0.5, metadata={"range": (0.0, math.pi)})
    # share of scenes with a PhysCtrl-style drag on one object
    drag_probability: float = field(default=0.5, metadata={"range": (0.0, 1.0)})
    # |force| / object mass (m/s^2): the drag's strength relative to the object, whatever its mass
    drag_acceleration: tuple[float, float] = field(default=(3.0, 15.0), metadata={"range": (0.0, None)})
    # how long the drag pulls, from t = 0 (s)
    drag_duration: tuple[float, float] = field(default=(0.2, 0.6), metadata={"range": (0.0, None)})
    # vertical component of the drag direction before normalising (horizontal part has length 1)
    drag_lift: tuple[float, float] = (0.0, 0.5)
    # camera distance to the look-at point (m; plus the objects' horizontal spread), elevation and
    # horizontal field of view (degrees); azimuth is uniform
    camera_distance: tuple[float, float] = field(default=(1.1, 1.7), metadata={"range": (1e-3, None)})
    camera_elevation: tuple[float, float] = field(default=(20.0, 45.0), metadata={"range": (-89.0, 89.0)})
    camera_fov: tuple[float, float] = field(default=(40.0, 55.0), metadata={"range": (1.0, 179.0)})
    # std of the look-at point's offset from the objects' centre (m)
    target_jitter: float = field(default=0.05, metadata={"range": (0.0, None)})
    # draws of a scene (and placements of an object) before giving up
    max_tries: int = field(default=50, metadata={"range": (1, None)})

    def __post_init__(self) -> None:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes:
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        bad = [m for m in self.materials if m not in MATERIALS]
        if bad or not self.materials:
            raise ValueError(f"materials must be a non-empty subset of {MATERIALS}, got {self.materials}")
        if (
            len(self.material_weights) != len(self.materials)
            or min(self.material_weights) < 0
            or not sum(self.material_weights) > 0
        ):
            raise ValueError(
                f"material_weights must be {len(self.materials)} non-negative numbers with a "
                f"positive sum (one per material), got {self.material_weights}"
            )
        for name in (
            "size",
            "density",
            "youngs_modulus",
            "poisson_ratio",
            "restitution",
            "friction",
            "yield_strain",
            "friction_angle",
            "drop_height",
            "horizontal_speed",
            "vertical_speed",
            "drag_acceleration",
            "drag_duration",
            "drag_lift",
            "camera_distance",
            "camera_elevation",
            "camera_fov",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be an interval (lo, hi) with lo <= hi, got {(lo, hi)}")


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _log_uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return math.exp(_uniform(g, math.log(lo), math.log(hi)))


def _randint(g: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _choice(g: torch.Generator | None, weights: Sequence[float]) -> int:
    w = torch.tensor(weights, dtype=torch.float64)
    return int(torch.multinomial(w / w.sum(), 1, generator=g))


def _quat_mul(p: Sequence[float], q: Sequence[float]) -> tuple[float, float, float, float]:
    w1, x1, y1, z1 = p
    w2, x2, y2, z2 = q
    return (
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    )


def _axis_angle(axis: Sequence[float], angle: float) -> tuple[float, float, float, float]:
    norm = math.sqrt(sum(a * a for a in axis)) or 1.0
    s = math.sin(angle / 2) / norm
    return (math.cos(angle / 2), axis[0] * s, axis[1] * s, axis[2] * s)


def quat_to_matrix(q: Sequence[float]) -> Tensor:
    """[3, 3] float64 rotation matrix of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


def _lowest_extent(shape: shp.Shape, rotation: Tensor) -> float:
    """Distance from the centre of mass down to the lowest point of the rotated solid (m)."""
    support, inflate = shp.support_points(shape)
    return float(-(support @ rotation.T)[:, 2].min()) + inflate


def _sample_object(cfg: SceneConfig, kind: Kind, colour: str, g: torch.Generator | None) -> ObjectSpec:
    shape = cfg.shapes[_randint(g, 0, len(cfg.shapes) - 1)]
    s = _uniform(g, *cfg.size)
    if shape == "sphere":
        size = (s, 0.0, 0.0)
    elif shape == "box":
        if _uniform(g, 0.0, 1.0) < cfg.cube_probability:
            size = (s, s, s)
        else:
            size = (s * _uniform(g, 0.6, 1.4), s * _uniform(g, 0.6, 1.4), s * _uniform(g, 0.6, 1.4))
    elif shape == "capsule":
        size = (s * _uniform(g, 0.4, 0.7), s * _uniform(g, 0.4, 1.0), 0.0)
    else:  # cylinder
        size = (s * _uniform(g, 0.5, 0.9), s * _uniform(g, 0.4, 1.0), 0.0)
    material = "rigid" if kind == "rigid" else cfg.materials[_choice(g, cfg.material_weights)]
    youngs = _log_uniform(g, *cfg.youngs_modulus)
    # random yaw, then a tilt about a horizontal axis: objects land on different faces and edges
    yaw = _uniform(g, 0.0, 2 * math.pi)
    tilt_axis = _uniform(g, 0.0, 2 * math.pi)
    tilt = _uniform(g, 0.0, cfg.tilt)
    orientation = _quat_mul(
        _axis_angle((math.cos(tilt_axis), math.sin(tilt_axis), 0.0), tilt), _axis_angle((0.0, 0.0, 1.0), yaw)
    )
    heading = _uniform(g, 0.0, 2 * math.pi)
    speed = _uniform(g, *cfg.horizontal_speed)
    spin = tuple(float(v) * cfg.spin for v in torch.randn(3, generator=g, dtype=torch.float64))
    return ObjectSpec(
        shape=shape,
        size=size,
        colour=colour,
        material=material,
        density=_log_uniform(g, *cfg.density),
        youngs_modulus=youngs,
        poisson_ratio=_uniform(g, *cfg.poisson_ratio),
        restitution=_uniform(g, *cfg.restitution),
        friction=_uniform(g, *cfg.friction),
        yield_stress=youngs * _log_uniform(g, *cfg.yield_strain),
        friction_angle=_uniform(g, *cfg.friction_angle),
        position=(0.0, 0.0, 0.0),  # placed by _place
        orientation=orientation,
        velocity=(speed * math.cos(heading), speed * math.sin(heading), _uniform(g, *cfg.vertical_speed)),
        angular_velocity=spin if kind == "rigid" else (0.0, 0.0, 0.0),
    )


def _place(
    objs: list[ObjectSpec], cfg: SceneConfig, floor: float, bounds: Bounds | None, g: torch.Generator | None
) -> list[ObjectSpec]:
    """Positions without overlap (bounding spheres), each lowest point ``drop_height`` above the floor and,
    with ``bounds``, each bounding sphere inside the box."""
    placed: list[ObjectSpec] = []
    for obj in objs:
        rot = quat_to_matrix(obj.orientation)
        low = _lowest_extent(make_shape(obj), rot)
        reach = obj.bounding_radius
        lo = [-cfg.spawn_half_width] * 2
        hi = [cfg.spawn_half_width] * 2
        if bounds is not None:
            lo = [max(lo[a], bounds[0][a] + reach) for a in range(2)]
            hi = [min(hi[a], bounds[1][a] - reach) for a in range(2)]
        if lo[0] > hi[0] or lo[1] > hi[1]:
            raise _Resample(f"a {obj.shape} of reach {reach:.3f} m does not fit in the bounds {bounds}")
        for _ in range(cfg.max_tries):
            x = _uniform(g, lo[0], hi[0])
            y = _uniform(g, lo[1], hi[1])
            z = floor + low + _uniform(g, *cfg.drop_height)
            if bounds is not None:
                z = min(max(z, bounds[0][2] + reach), bounds[1][2] - reach)
                if z - low < floor - 1e-9 or z - reach < bounds[0][2] - 1e-9:
                    raise _Resample(
                        f"a {obj.shape} of reach {reach:.3f} m is too tall for the bounds {bounds}"
                    )
            clear = all(
                math.dist((x, y, z), p.position) > obj.bounding_radius + p.bounding_radius + 0.01
                for p in placed
            )
            if clear:
                placed.append(dataclasses.replace(obj, position=(x, y, z)))
                break
        else:
            raise _Resample("objects do not fit without overlap")
    return placed


class _Resample(Exception):
    """Internal: this draw failed a check; draw again."""


def _surface_point(obj: ObjectSpec, g: torch.Generator | None) -> Vec3:
    body = shp.sample_surface(make_shape(obj), 1, g).to(torch.float64)[0]  # (3,) body frame
    world = quat_to_matrix(obj.orientation) @ body + torch.tensor(obj.position, dtype=torch.float64)
    return tuple(float(v) for v in world)


def _sample_drag(objs: Sequence[ObjectSpec], cfg: SceneConfig, g: torch.Generator | None) -> Drag:
    index = _randint(g, 0, len(objs) - 1)
    obj = objs[index]
    heading = _uniform(g, 0.0, 2 * math.pi)
    lift = _uniform(g, *cfg.drag_lift)
    direction = torch.tensor([math.cos(heading), math.sin(heading), lift], dtype=torch.float64)
    direction = direction / direction.norm()
    magnitude = obj.mass * _uniform(g, *cfg.drag_acceleration)
    return Drag(
        object_index=index,
        point=_surface_point(obj, g),
        force=tuple(float(v) for v in magnitude * direction),
        start=0.0,
        duration=_uniform(g, *cfg.drag_duration),
    )


def _sample_camera(
    objs: Sequence[ObjectSpec], cfg: SceneConfig, width: int, height: int, g: torch.Generator | None
) -> CameraSpec:
    centres = torch.tensor([o.position for o in objs], dtype=torch.float64)  # (K, 3)
    target = centres.mean(0)
    target[2] = 0.5 * target[2]  # aim between the objects and the floor they will land on
    target = target + cfg.target_jitter * torch.randn(3, generator=g, dtype=torch.float64)
    azimuth = _uniform(g, 0.0, 2 * math.pi)
    elevation = math.radians(_uniform(g, *cfg.camera_elevation))
    spread = float((centres[:, :2] - centres[:, :2].mean(0)).norm(dim=1).max()) if len(objs) > 1 else 0.0
    distance = _uniform(g, *cfg.camera_distance) + spread
    offset = torch.tensor(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ],
        dtype=torch.float64,
    )
    eye = target + distance * offset
    return CameraSpec(
        eye=tuple(float(v) for v in eye),
        target=tuple(float(v) for v in target),
        fov_deg=_uniform(g, *cfg.camera_fov),
        width=width,
        height=height,
    )


def sample_scene(
    config: SceneConfig,
    *,
    kind: Kind,
    frames: int,
    fps: float,
    width: int,
    height: int,
    seed: int = 0,
    bounds: Bounds | None = None,
    generator: torch.Generator | None = None,
) -> Scene:
    """Draw one scene.

    Objects get distinct colours, are placed without overlap above the floor, and every object's surface
    samples at t = 0 must be in view of the camera (``physics.camera.check_visible``); a draw that fails
    a check is redrawn (up to ``config.max_tries`` times).

    Args:
        config: ranges to draw from.
        kind: "rigid" (every object rigid) or "mpm" (materials from ``config.materials``).
        frames: T, frames per clip.
        fps: frames per second.
        width, height: image size (pixels) of the camera.
        seed: recorded in the scene; when ``generator`` is None the scene is drawn from
            ``torch.Generator().manual_seed(seed)``, so ``sample_scene(cfg, ..., seed=s)`` is reproducible.
        bounds: optional box (lower, upper corners, m) that every object must start inside, e.g. an MPM
            domain shrunk by its wall cells.
        generator: explicit random stream (overrides ``seed`` for drawing).

    Returns:
        The scene, with an empty caption (``describe`` writes it after simulation).
    """
    if kind not in ("rigid", "mpm"):
        raise ValueError(f"kind must be 'rigid' or 'mpm', got {kind!r}")
    if frames < 2 or fps <= 0:
        raise ValueError(f"frames must be >= 2 and fps > 0, got frames={frames}, fps={fps}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    floor = 0.0
    last_error = ""
    for _ in range(config.max_tries):
        try:
            count = _randint(g, config.min_objects, config.max_objects)
            palette = list(COLOURS)
            order = torch.randperm(len(palette), generator=g)[:count].tolist()
            objs = [_sample_object(config, kind, palette[i], g) for i in order]
            objs = _place(objs, config, floor, bounds, g)
            drags = (
                (_sample_drag(objs, config, g),) if _uniform(g, 0.0, 1.0) < config.drag_probability else ()
            )
            camera = _sample_camera(objs, config, width, height, g)
            _check_in_view(objs, camera, g)
        except _Resample as err:
            last_error = str(err)
            continue
        return Scene(
            kind=kind,
            seed=int(seed),
            objects=tuple(objs),
            drags=drags,
            camera=camera,
            frames=frames,
            fps=float(fps),
            floor_height=floor,
        )
    raise ValueError(
        f"sample_scene: no valid scene in {config.max_tries} draws (last failure: {last_error}); "
        "widen the camera ranges or shrink spawn_half_width"
    )


def _check_in_view(objs: Sequence[ObjectSpec], camera: CameraSpec, g: torch.Generator | None) -> None:
    """Every object must show at least a few of its surface points at t = 0."""
    K, E = camera.K(), camera.E()
    for obj in objs:
        body = shp.sample_surface(make_shape(obj), 64, g).to(torch.float64)
        pts = body @ quat_to_matrix(obj.orientation).T + torch.tensor(obj.position, dtype=torch.float64)
        try:
            check_visible(pts.float(), K, E, camera.height, camera.width, min_points=8)
        except ValueError as err:
            raise _Resample(f"{obj.colour} {obj.shape} out of view: {err}") from err


# ---------------------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {1: "once", 2: "twice", 3: "three times"}


def object_name(obj: ObjectSpec) -> str:
    """Noun phrase from the parameters: colour, a material word and a shape noun ("red rubber ball")."""
    if obj.material == "rigid":
        if obj.restitution >= 0.6:
            stuff = "rubber"
        elif obj.restitution <= 0.3:
            stuff = "wooden"
        else:
            stuff = "plastic"
    elif obj.material == "elastic":
        stuff = "jelly" if obj.youngs_modulus < 1e5 else "rubber"
    else:
        stuff = obj.material  # plasticine, sand
    r, a, b = obj.size
    if obj.shape == "sphere":
        noun = "ball"
    elif obj.shape == "box":
        noun = "cube" if max(r, a, b) <= 1.1 * min(r, a, b) else "block"
    else:
        noun = obj.shape
    return f"{obj.colour} {stuff} {noun}"


def _direction(delta: Tensor, E: Tensor) -> str:
    """Word for a world-frame displacement [3] as the camera sees it (its horizontal part)."""
    right, forward = E[0, :3].double(), E[2, :3].double()
    right_h = torch.nn.functional.normalize(right * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), dim=0)
    fwd_h = torch.nn.functional.normalize(forward * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), dim=0)
    sideways, depthwise = float(delta @ right_h), float(delta @ fwd_h)
    if abs(sideways) >= abs(depthwise):
        return "to the right" if sideways > 0 else "to the left"
    return "away from the camera" if depthwise > 0 else "towards the camera"


def _shape_change(pts: Tensor) -> list[float]:
    """Per frame, the RMS residual of the best rigid fit (Kabsch) from frame 0 to that frame of ``pts``
    [T, N, 3], relative to the RMS radius at frame 0: 0 for rigid motion, ~0.1 for a squashed object."""
    centred = pts - pts.mean(1, keepdim=True)  # (T, N, 3)
    a, b = centred[:1], centred  # frame 0 against every frame
    u, _, vt = torch.linalg.svd(a.transpose(1, 2) @ b)  # (T, 3, 3) each
    flip = torch.ones(pts.shape[0], 3, dtype=pts.dtype)
    flip[:, 2] = torch.sign(torch.linalg.det(u @ vt))  # a proper rotation, no reflection
    rot = (u * flip[:, None, :]) @ vt  # (T, 3, 3): a @ rot ~ b
    residual = (a @ rot - b).square().sum(-1).mean(-1).sqrt()  # (T,)
    return (residual / a[0].square().sum(-1).mean().sqrt().clamp_min(1e-9)).tolist()


def _count_bounces(z_com: Tensor, z_low: Tensor, floor: float, dt: float) -> int:
    """Rebounds off the floor: runs of frames where the centre of mass is kicked upwards (second difference
    above +3 m/s^2, where free fall gives -9.81) near the floor, followed by rising faster than 0.25 m/s.
    A landing without rebound is kicked too but never rises, so it does not count."""
    vz = torch.diff(z_com) / dt  # (T-1,) velocity over each frame interval
    az = torch.diff(vz) / dt  # (T-2,) at frames 1..T-2
    count, t = 0, 0
    while t < len(az):
        near = float(z_low[t : t + 3].min()) < floor + 0.03 + float(vz[t].abs()) * dt
        if float(az[t]) > 3.0 and near:
            end = t
            while end + 1 < len(az) and float(az[end + 1]) > 3.0:
                end += 1
            if float(vz[t + 1 : end + 2].max()) > 0.25:
                count += 1
            t = end + 1
        else:
            t += 1
    return count


def describe(scene: Scene, trajectory: Tensor, object_ids: Tensor) -> str:
    """Caption a simulated clip from its parameters and outcome.

    Args:
        scene: the scene that was simulated.
        trajectory: [T, N, 3] world positions of the object particles.
        object_ids: [N] object index of each particle (into ``scene.objects``).

    Returns:
        One sentence, clauses per object joined by "; ", e.g. "a red rubber ball bounces twice and rolls
        to the left; a blue plasticine cube is dragged to the right and stays deformed".
    """
    if trajectory.ndim != 3 or trajectory.shape[-1] != 3:
        raise ValueError(f"trajectory must be [T, N, 3], got {tuple(trajectory.shape)}")
    if object_ids.shape != trajectory.shape[1:2]:
        raise ValueError(
            f"object_ids must be [N] = {tuple(trajectory.shape[1:2])}, got {tuple(object_ids.shape)}"
        )
    x = trajectory.detach().double().cpu()
    ids = object_ids.detach().cpu().long()
    E = scene.camera.E()
    dragged = {d.object_index: d for d in scene.drags}
    clauses = []
    for k, obj in enumerate(scene.objects):
        pts = x[:, ids == k]  # (T, M, 3)
        if pts.shape[1] == 0:
            continue
        clauses.append(f"{_article(object_name(obj))} {_verbs(obj, pts, dragged.get(k), scene, E)}")
    return "; ".join(clauses)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _verbs(obj: ObjectSpec, pts: Tensor, drag: Drag | None, scene: Scene, E: Tensor) -> str:
    floor, dt = scene.floor_height, scene.dt
    com = pts.mean(1)  # (T, 3)
    z_low = pts[..., 2].amin(1)  # (T,)
    heights = pts[..., 2].amax(1) - z_low
    moved = com[-1] - com[0]
    change = _shape_change(pts)
    bounces = _count_bounces(com[:, 2], z_low, floor, dt)
    airborne = float(z_low[0]) > floor + 0.05
    travel = float(moved[:2].norm())
    verbs: list[str] = []
    if drag is not None:
        force = torch.tensor(drag.force, dtype=torch.float64)
        if float(force[2]) > float(force[:2].norm()):
            verbs.append("is pulled upwards")
        else:
            verbs.append(f"is dragged {_direction(force, E)}")
    elif airborne:
        verbs.append("falls")
    if bounces:
        verbs.append(f"bounces {_NUMBER_WORDS.get(bounces, f'{bounces} times')}")
    if drag is None and travel > 0.08:
        verb = "slides" if obj.shape == "box" or obj.material in ("plasticine", "sand") else "rolls"
        if airborne and not bounces and float(z_low[-1]) > floor + 0.05:
            verb = "flies"
        verbs.append(f"{verb} {_direction(moved, E)}")
    if obj.material == "sand" and float(heights[-1]) < 0.7 * float(heights[0]):
        verbs.append("collapses into a pile")
    elif obj.material == "plasticine" and change[-1] > 0.08:
        verbs.append("stays deformed")
    elif obj.material == "elastic" and max(change) > 0.08 and change[-1] < 0.5 * max(change):
        verbs.append("squashes and springs back")
    if not verbs:
        verbs.append("rests on the floor" if float(z_low[0]) < floor + 0.05 else "hangs in the air")
    elif verbs == ["falls"]:
        verbs.append("lands on the floor")
    return verbs[0] if len(verbs) == 1 else ", ".join(verbs[:-1]) + " and " + verbs[-1]


def redraw_motion(
    scene: Scene, config: SceneConfig, *, generator: torch.Generator | None = None, keep_drags: bool = False
) -> Scene:
    """The same first frame with another future: what a single frame cannot show, drawn again.

    Each object's initial linear velocity, (rigid) angular velocity, restitution and friction, and (unless
    ``keep_drags``) the scene's drags are redrawn from ``config``'s ranges as ``sample_scene`` draws them;
    shapes, sizes, colours, materials, densities, poses, the camera and timing are kept, so frame 0 renders
    identically. Simulating such twins of a held-out scene gives other futures that are exactly as likely
    given its first frame: a perfect image-to-video world model's samples are distributed like them, which
    calibrates any frame-by-frame score of generated clips (``wmgen.eval.world``).

    Args:
        scene: the scene to redraw.
        config: the ranges to draw from (those the scene was drawn with, for twins of a dataset's scene).
        generator: random stream of the redraw.
        keep_drags: keep the drags (a caption names them: "is dragged to the right"), redraw only the rest.
    """
    g = generator
    rigid = scene.kind == "rigid"
    objects = []
    for obj in scene.objects:
        heading = _uniform(g, 0.0, 2 * math.pi)
        speed = _uniform(g, *config.horizontal_speed)
        velocity = (speed * math.cos(heading), speed * math.sin(heading), _uniform(g, *config.vertical_speed))
        spin = tuple(float(v) * config.spin for v in torch.randn(3, generator=g, dtype=torch.float64))
        changes: dict[str, Any] = {"velocity": velocity}
        if rigid:  # MPM scenes record the solver's global floor friction, no restitution and no spin
            changes.update(
                angular_velocity=spin, restitution=_uniform(g, *config.restitution),
                friction=_uniform(g, *config.friction),
            )  # fmt: skip
        objects.append(dataclasses.replace(obj, **changes))
    drags = scene.drags
    if not keep_drags:
        draw = _uniform(g, 0.0, 1.0) < config.drag_probability
        drags = (_sample_drag(objects, config, g),) if draw else ()
    return dataclasses.replace(scene, objects=tuple(objects), drags=drags)
