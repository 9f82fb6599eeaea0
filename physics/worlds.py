"""Simulated world datasets: sample scenes, simulate, render with ground truth, write and read shards.

Worlds. ``rigid``: 1-3 rigid bodies (physics.rigid) falling, bouncing, rolling, sometimes dragged.
``mpm``: elastic / plasticine / sand / rigid objects in batched MLS-MPM (physics.mpm). ``mixed``: every
clip is a rigid-world clip with probability ``rigid_fraction``, else an MPM clip. Every clip is rendered
by physics.render's splat renderer and carries its ground truth: depth, instance mask, 2D tracks with
visibility, 3D point trajectories, the camera, the physical parameters and a caption.

On-disk format (a directory)::

    index.json          header: format, config, seed, shard_size, num_clips, array specs, and per committed
                        shard {name, start, count, sha256, records_offset, records_length}; "complete"
    clips.jsonl         one JSON line per clip, in clip order: index, shard, row, seed, kind, caption and
                        the full scene (all physical parameters); byte range per shard given in index.json
    shard-00000/        one directory per shard, one .npy per array with a leading clip axis:
        rgb.npy         [S, T, H, W, 3] uint8
        depth.npy       [S, T, H, W] float16 (or float32): camera-frame z (m), 0 where nothing is hit
        mask.npy        [S, T, H, W] int8: object index, -1 for background
        tracks.npy      [S, T, N, 2] float32 pixel (x, y), integer pixel centres (CoTracker)
        visible.npy     [S, T, N] bool
        points.npy      [S, T, N, 3] float32 world positions of the tracked particles (m)
        object_ids.npy  [S, N] int8 object index of each track
        K.npy, E.npy    [S, 3, 3], [S, 4, 4] float32 intrinsics, world-to-camera extrinsics

The sha256 of a shard covers its .npy files and its lines of clips.jsonl. Arrays open with
``np.load(mmap_mode="r")``, so a reader touches only the clips it serves.

Generation is deterministic and resumable: clip i's scene is drawn from ``scene_seed(seed, i)`` and
simulated in batches formed within its shard (the solvers' substeps, contact sampling and float sums can
depend on the batch, never on the worker count or the machine's threads); shards are built
in a temporary directory and renamed into place, then committed to clips.jsonl and index.json in shard
order (index.json is replaced atomically and clips.jsonl is truncated back to the committed length on
resume), so a killed run leaves no half-written shard and a rerun continues where it stopped, producing
the same bytes as an uninterrupted run whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from physics import mpm as mpm_sim
from physics import rigid as rigid_sim
from physics.render import RenderConfig, checker_colors, render
from physics.scenes import (
    COLOURS,
    Drag,
    Scene,
    SceneConfig,
    describe,
    make_shape,
    quat_to_matrix,
    sample_scene,
    scene_seed,
)
from physics.shapes import sample_surface, sample_volume

__all__ = [
    "Clip",
    "CorruptShardError",
    "WorldConfig",
    "WorldDataset",
    "generate_dataset",
    "mpm_bounds",
    "preview",
    "sample_world_scene",
    "simulate_batch",
    "simulate_clip",
]

FORMAT = "wmgen.worlds"
VERSION = 1
INDEX, RECORDS = "index.json", "clips.jsonl"


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------


def _default_rigid() -> rigid_sim.RigidConfig:
    return rigid_sim.RigidConfig(substeps=16)


def _default_mpm() -> mpm_sim.MPMConfig:
    return mpm_sim.MPMConfig(grid_res=32)


@dataclass(frozen=True)
class WorldConfig:
    """One simulated world: what scenes look like, how they are simulated, rendered and stored."""

    kind: Literal["rigid", "mpm", "mixed"] = "rigid"  # simulator of every clip ("mixed": per clip)
    resolution: int = field(default=64, metadata={"range": (8, 4096)})  # H = W (pixels)
    frames: int = field(default=17, metadata={"range": (5, None)})  # T, 1 + 4k for the causal VAE
    fps: float = field(default=12.0, metadata={"range": (1.0, 240.0)})  # frames per second
    num_tracks: int = field(default=256, metadata={"range": (1, None)})  # N tracks stored per clip
    rigid_particles_per_object: int = field(default=384, metadata={"range": (8, None)})  # surface samples
    mpm_particles: int = field(default=2048, metadata={"range": (8, None)})  # per MPM scene, split by volume
    rigid_fraction: float = field(default=0.5, metadata={"range": (0.0, 1.0)})  # "mixed": rigid share
    # scenes per solver call. Rigid rollouts cost about the same for 1 or 32 scenes (per-substep overhead).
    # MPM scenes take their own CFL substeps (MPMConfig.per_scene_substeps); a batch amortises the ~1,000
    # kernel launches of a substep over its scenes while they all run, and scenes are sorted by stiffness
    # within a shard so that they finish their frames together (benchmarks/physics_worlds.py)
    batch_size: int = field(default=32, metadata={"range": (1, None)})
    mpm_batch_size: int = field(default=4, metadata={"range": (1, None)})
    supersample: int = field(default=2, metadata={"range": (1, 8)})  # render samples per pixel per axis
    splat_scale: float = field(default=0.9, metadata={"range": (0.1, 4.0)})  # splat radius / particle spacing
    checker_cell: float = field(default=0.05, metadata={"range": (0.0, None)})  # texture cell (m); 0: off
    # MPM drag region: particles of the dragged object within this fraction of its bounding radius
    drag_region: float = field(default=0.5, metadata={"range": (0.0, None)})
    depth_dtype: Literal["float16", "float32"] = "float16"  # storage precision of depth
    scene: SceneConfig = field(default_factory=SceneConfig)  # scene sampler ranges
    rigid: rigid_sim.RigidConfig = field(default_factory=_default_rigid)  # rigid solver (dt is per frame)
    mpm: mpm_sim.MPMConfig = field(default_factory=_default_mpm)  # MPM grid and time stepping

    def __post_init__(self) -> None:
        if (self.frames - 1) % 4:
            raise ValueError(
                f"frames must be 1 + 4k for the causal VAE (5, 9, 17, 33, ...), got {self.frames}"
            )
        if self.kind in ("rigid", "mixed"):
            least = self.rigid_particles_per_object * self.scene.min_objects
            if self.num_tracks > least:
                raise ValueError(
                    f"num_tracks ({self.num_tracks}) must be <= rigid_particles_per_object * "
                    f"scene.min_objects = {least}, the fewest particles of a rigid scene"
                )
        if self.kind in ("mpm", "mixed") and self.num_tracks > self.mpm_particles:
            raise ValueError(
                f"num_tracks ({self.num_tracks}) must be <= mpm_particles ({self.mpm_particles})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def mpm_bounds(config: mpm_sim.MPMConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Box in which MPM particles may start: the domain shrunk by the wall cells (m)."""
    margin = (config.boundary_cells + 0.5) * config.dx
    lo = tuple(o + margin for o in config.origin)
    hi = tuple(o + config.domain_size - margin for o in config.origin)
    return lo, hi


def sample_world_scene(config: WorldConfig, seed: int, index: int) -> Scene:
    """Scene of clip ``index`` of a dataset generated with ``seed`` (a function of the pair only)."""
    s = scene_seed(seed, index)
    g = torch.Generator().manual_seed(s)
    kind = config.kind
    if kind == "mixed":
        kind = (
            "rigid"
            if float(torch.rand((), generator=g, dtype=torch.float64)) < config.rigid_fraction
            else "mpm"
        )
    bounds = mpm_bounds(config.mpm) if kind == "mpm" else None
    scene = sample_scene(
        config.scene,
        kind=kind,
        frames=config.frames,
        fps=config.fps,
        width=config.resolution,
        height=config.resolution,
        seed=s,
        bounds=bounds,
        generator=g,
    )
    if kind == "mpm":  # the MPM floor's friction is global and MPM has no restitution parameter: record truth
        objects = tuple(
            dataclasses.replace(o, friction=config.mpm.floor_friction, restitution=0.0) for o in scene.objects
        )
        scene = dataclasses.replace(scene, objects=objects)
    return scene


# ---------------------------------------------------------------------------------------------------------
# simulation + rendering
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One simulated, rendered clip with its ground truth (T frames of H x W, N tracks).

    Attributes:
        rgb: [T, H, W, 3] uint8.
        depth: [T, H, W] float32 camera-frame z (m), 0 where no surface is hit (sky).
        mask: [T, H, W] int8 object index, -1 for background.
        tracks: [T, N, 2] float32 pixel (x, y), integer pixel centres.
        visible: [T, N] bool.
        points: [T, N, 3] float32 world positions of the tracked particles (m).
        object_ids: [N] int8 object index of each track.
        K: [3, 3] float32 intrinsics. E: [4, 4] float32 world-to-camera extrinsics.
        scene: the simulated scene. caption: English description of what happens.
    """

    rgb: Tensor
    depth: Tensor
    mask: Tensor
    tracks: Tensor
    visible: Tensor
    points: Tensor
    object_ids: Tensor
    K: Tensor
    E: Tensor
    scene: Scene
    caption: str

    @property
    def params(self) -> dict[str, Any]:
        """The scene's physical parameters as plain JSON types."""
        return self.scene.to_dict()


def _generator(scene: Scene, purpose: str) -> torch.Generator:
    """A random stream per scene and purpose, independent of which batch the scene is simulated in."""
    digest = hashlib.sha256(f"wmgen.worlds:{scene.seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """Integers >= 1 summing to ``total`` in proportion to ``weights`` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    raw = total * w / w.sum()
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() > total:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < total:
        counts[order[i % len(order)]] += 1
        i += 1
    return counts.tolist()


@dataclass
class _Particles:
    """Body-frame particle samples of one scene, concatenated over objects (P particles)."""

    body: Tensor  # [P, 3] float64, body frame of their object
    object_ids: Tensor  # [P] long
    radius: Tensor  # [P] float32 splat radius (m)
    colors: Tensor  # [P, 3] float32 albedo


def _particles(scene: Scene, config: WorldConfig, mode: Literal["surface", "volume"]) -> _Particles:
    g = _generator(scene, "particles")
    shapes = [make_shape(o) for o in scene.objects]
    if mode == "surface":
        counts = [config.rigid_particles_per_object] * len(shapes)
    else:
        counts = _split(config.mpm_particles, [s.volume for s in shapes])
    body, ids, radius, colors = [], [], [], []
    for k, (obj, shape, n) in enumerate(zip(scene.objects, shapes, counts, strict=True)):
        sampler = sample_surface if mode == "surface" else sample_volume
        pts = sampler(shape, n, g).double()  # (n, 3)
        # spacing of n samples: on the surface sqrt(area / n), in the volume (volume / n)^(1/3)
        spacing = math.sqrt(shape.mesh.area / n) if mode == "surface" else (shape.volume / n) ** (1 / 3)
        body.append(pts)
        ids.append(torch.full((n,), k, dtype=torch.long))
        radius.append(torch.full((n,), config.splat_scale * spacing, dtype=torch.float32))
        base = torch.tensor(COLOURS[obj.colour], dtype=torch.float32)
        if config.checker_cell > 0:
            colors.append(checker_colors(pts.float(), base, config.checker_cell, contrast=0.3))
        else:
            colors.append(base.expand(n, 3))
    return _Particles(torch.cat(body), torch.cat(ids), torch.cat(radius), torch.cat(colors))


def _drag_activity(drag: Drag, scene: Scene, frame: int) -> float:
    """Fraction of the frame interval [frame, frame + 1) during which ``drag`` acts."""
    t0, t1 = frame * scene.dt, (frame + 1) * scene.dt
    return max(0.0, min(t1, drag.start + drag.duration) - max(t0, drag.start)) / scene.dt


def _check_drags(scene: Scene, per_scene: int | None) -> None:
    targets = [d.object_index for d in scene.drags]
    if len(set(targets)) != len(targets) or (per_scene is not None and len(targets) > per_scene):
        raise ValueError(
            f"scene {scene.seed}: {scene.kind} scenes take at most "
            f"{'one drag per object' if per_scene is None else f'{per_scene} drag'}, got drags on {targets}"
        )
    for d in scene.drags:
        if not 0 <= d.object_index < len(scene.objects):
            raise ValueError(f"scene {scene.seed}: drag object_index {d.object_index} is not an object index")


def _simulate_rigid(scenes: Sequence[Scene], config: WorldConfig) -> list[tuple[Tensor, _Particles]]:
    """Rigid rollouts: per scene the world positions [T, P, 3] of its surface particles."""
    B, M = len(scenes), max(len(s.objects) for s in scenes)
    frames, fps = scenes[0].frames, scenes[0].fps
    _check_uniform(scenes)
    seeds = hashlib.sha256(",".join(str(s.seed) for s in scenes).encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(seeds[:8], "little") & (2**63 - 1))
    pad = lambda rows, fill: [r + [fill] * (M - len(r)) for r in rows]  # noqa: E731
    bodies = rigid_sim.RigidBodies.from_shapes(
        [[make_shape(o) for o in s.objects] for s in scenes],
        density=torch.tensor(
            pad([[o.density for o in s.objects] for s in scenes], 1000.0), dtype=torch.float32
        ),
        restitution=torch.tensor(pad([[o.restitution for o in s.objects] for s in scenes], 0.0)),
        mu=torch.tensor(pad([[o.friction for o in s.objects] for s in scenes], 0.0)),
        particles=1,  # rollout points are computed below from our own per-scene samples
        contact_particles=64,
        generator=g,
    )
    rcfg = dataclasses.replace(
        config.rigid, dt=1.0 / fps, gravity=tuple(scenes[0].gravity), ground=scenes[0].floor_height
    )
    world = rigid_sim.RigidWorld(rcfg, bodies)
    vec = lambda attr, fill: torch.tensor(  # noqa: E731
        pad([[list(getattr(o, attr)) for o in s.objects] for s in scenes], fill), dtype=torch.float32
    )
    state = world.initial_state(
        vec("position", [0.0, 0.0, -10.0]),
        vec("orientation", [1.0, 0.0, 0.0, 0.0]),
        vec("velocity", [0.0, 0.0, 0.0]),
        vec("angular_velocity", [0.0, 0.0, 0.0]),
    )

    # drags: a force at a body-fixed point, held constant within a frame (scaled by the active fraction)
    force = torch.zeros(B, frames, M, 3)
    arm = torch.zeros(B, M, 3)  # body frame
    for b, s in enumerate(scenes):
        _check_drags(s, per_scene=None)
        for d in s.drags:
            k = d.object_index
            activity = torch.tensor([_drag_activity(d, s, f) for f in range(frames)])  # (T,)
            force[b, :, k] = activity[:, None] * torch.tensor(d.force)
            R0 = quat_to_matrix(s.objects[k].orientation).float()
            arm[b, k] = R0.T @ (torch.tensor(d.point) - torch.tensor(s.objects[k].position)).float()

    def force_fn(frame: int, st: rigid_sim.RigidState) -> tuple[Tensor, Tensor] | None:
        if not bool(force[:, frame].any()):
            return None
        R = rigid_sim.quat_to_matrix(st.orientation)  # (B, M, 3, 3)
        point = st.position + (R @ arm.unsqueeze(-1)).squeeze(-1)  # (B, M, 3) moves with the body
        return force[:, frame], point

    out = world.rollout(state, frames, frame_dt=1.0 / fps, force_fn=force_fn, return_points=False)
    results = []
    for b, s in enumerate(scenes):
        parts = _particles(s, config, "surface")
        R = rigid_sim.quat_to_matrix(out.orientation[b].double())  # (T, M, 3, 3)
        rot = R[:, parts.object_ids]  # (T, P, 3, 3)
        pos = out.position[b].double()[:, parts.object_ids]  # (T, P, 3)
        world_pts = pos + (rot @ parts.body[None, :, :, None]).squeeze(-1)  # (T, P, 3)
        results.append((world_pts.float(), parts))
    return results


_MPM_FIELDS = {  # Materials field -> ObjectSpec attribute
    "E": "youngs_modulus",
    "nu": "poisson_ratio",
    "density": "density",
    "yield_stress": "yield_stress",
    "friction_angle": "friction_angle",
}


def _mpm_inputs(scene: Scene, parts: _Particles) -> dict[str, Tensor]:
    """Per-particle initial state and material of one scene ([P, ...] float64 / int64)."""
    objs, ids = scene.objects, parts.object_ids

    def per_object(values: Sequence[Any], dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.tensor(values, dtype=dtype)[ids]  # (P, ...) each particle takes its object's value

    rotation = torch.stack([quat_to_matrix(o.orientation) for o in objs])[ids]  # (P, 3, 3)
    counts = torch.bincount(ids, minlength=len(objs)).double()
    out = {
        "x": per_object([o.position for o in objs]) + (rotation @ parts.body[:, :, None]).squeeze(-1),
        "v": per_object([o.velocity for o in objs]),
        "volume": per_object([o.volume for o in objs]) / counts[ids],  # equal share of the object's volume
        "kind": per_object([mpm_sim.MATERIALS[o.material] for o in objs], torch.long),
        "body": ids,
    }
    for name, attr in _MPM_FIELDS.items():
        out[name] = per_object([float(getattr(o, attr)) for o in objs])
    return out


def _mpm_drag(
    scenes: Sequence[Scene], parts: Sequence[_Particles], state: mpm_sim.MPMState, config: WorldConfig
) -> mpm_sim.Drag:
    """PhysCtrl's drag on the MPM particles of the dragged object within ``drag_region`` times its bounding
    radius of the drag point (at least the nearest one); the force is shared in proportion to mass, so the
    region accelerates by F / (region mass). Scenes without a drag get zero force."""
    B, P = state.x.shape[:2]
    force, weight = torch.zeros(B, 3), torch.zeros(B, P)
    start, duration = torch.zeros(B), torch.zeros(B)
    for b, (scene, part) in enumerate(zip(scenes, parts, strict=True)):
        _check_drags(scene, per_scene=1)  # physics.mpm.Drag holds one force per scene
        for d in scene.drags:
            own = part.object_ids == d.object_index  # (P,) never pull a neighbouring object
            dist = (state.x[b].detach() - torch.tensor(d.point, dtype=state.x.dtype)).norm(dim=-1)
            radius = config.drag_region * scene.objects[d.object_index].bounding_radius
            inside = own & ((dist <= radius) | (dist == dist[own].min()))
            mass = state.mass[b].detach() * inside
            weight[b] = inside / mass.sum()  # (1/kg): acceleration per newton inside the region
            force[b], start[b], duration[b] = torch.tensor(d.force), d.start, d.duration
    return mpm_sim.Drag(
        force=force.to(state.x.dtype), weight=weight.to(state.x.dtype), start=start, duration=duration
    )


def _simulate_mpm(scenes: Sequence[Scene], config: WorldConfig) -> list[tuple[Tensor, _Particles]]:
    """MPM rollouts: per scene the world positions [T, P, 3] of its particles (P = mpm_particles)."""
    _check_uniform(scenes)
    frames, fps = scenes[0].frames, scenes[0].fps
    parts = [_particles(s, config, "volume") for s in scenes]
    inputs = [_mpm_inputs(s, p) for s, p in zip(scenes, parts, strict=True)]
    stack = lambda name, dtype=torch.float32: torch.stack([i[name] for i in inputs]).to(dtype)  # noqa: E731
    materials = mpm_sim.Materials.create(
        len(scenes),
        config.mpm_particles,
        kind=stack("kind", torch.long),
        body=stack("body", torch.long),
        **{name: stack(name) for name in _MPM_FIELDS},
    )
    solver = mpm_sim.MPMSolver(
        dataclasses.replace(config.mpm, gravity=tuple(scenes[0].gravity), floor_height=scenes[0].floor_height)
    )
    state = solver.init_state(stack("x"), materials, stack("v"), volume=stack("volume"))  # (B, P, ...)
    drag = _mpm_drag(scenes, parts, state, config) if any(s.drags for s in scenes) else None
    traj, _ = solver.rollout(state, frames, 1.0 / fps, drag=drag)  # (B, T, P, 3)
    if not bool(torch.isfinite(traj).all()):
        bad = [s.seed for b, s in enumerate(scenes) if not bool(torch.isfinite(traj[b]).all())]
        raise FloatingPointError(
            f"MPM diverged (non-finite positions) for scene seeds {bad}; lower the "
            "mpm.cfl or the scene.youngs_modulus range"
        )
    return [(traj[b], parts[b]) for b in range(len(scenes))]


def _wave_speed(scene: Scene) -> float:
    """Fastest elastic P-wave sqrt((lambda + 2 mu) / rho) over the scene's deformable objects (m/s)."""
    speeds = [0.0]
    for o in scene.objects:
        if o.material != "rigid":
            E, nu = o.youngs_modulus, o.poisson_ratio
            speeds.append(math.sqrt(E * (1 - nu) / ((1 + nu) * (1 - 2 * nu)) / o.density))
    return max(speeds)


def _check_uniform(scenes: Sequence[Scene]) -> None:
    first = scenes[0]
    for s in scenes[1:]:
        if (s.frames, s.fps, s.gravity, s.floor_height) != (
            first.frames,
            first.fps,
            first.gravity,
            first.floor_height,
        ):
            raise ValueError(
                "scenes simulated together must share frames, fps, gravity and floor_height; got "
                f"{(first.frames, first.fps, first.gravity, first.floor_height)} and "
                f"{(s.frames, s.fps, s.gravity, s.floor_height)}"
            )


def _finish(scene: Scene, traj: Tensor, parts: _Particles, config: WorldConfig) -> Clip:
    """Render one simulated scene, pick its tracks and write its caption."""
    cam = scene.camera
    K, E = cam.K(), cam.E()
    rcfg = RenderConfig(
        height=cam.height, width=cam.width, supersample=config.supersample, ground_height=scene.floor_height
    )
    frames = render(traj, parts.colors, parts.object_ids, K, E, radius=parts.radius, config=rcfg)
    P = traj.shape[1]
    if config.num_tracks > P:
        raise ValueError(f"num_tracks ({config.num_tracks}) exceeds the scene's {P} particles")
    pick = torch.randperm(P, generator=_generator(scene, "tracks"))[: config.num_tracks].sort().values  # (N,)
    return Clip(
        rgb=frames.rgb_uint8(),
        depth=frames.depth.float(),
        mask=frames.mask.to(torch.int8),
        tracks=frames.tracks[:, pick].float(),
        visible=frames.visible[:, pick].bool(),
        points=traj[:, pick].float(),
        object_ids=parts.object_ids[pick].to(torch.int8),
        K=K.float(),
        E=E.float(),
        scene=scene,
        caption=describe(scene, traj, parts.object_ids),
    )


def simulate_batch(scenes: Sequence[Scene], config: WorldConfig | None = None) -> list[Clip]:
    """Simulate and render scenes, batching those of the same kind into solver calls of
    ``config.batch_size`` (rigid) or ``config.mpm_batch_size`` (MPM) scenes; MPM scenes are sorted by
    stiffness first, so that a batch holds scenes with similar CFL substeps.

    Args:
        scenes: scenes (e.g. from ``sample_world_scene``); each is rendered at its camera's resolution.
        config: particles, tracks, rendering and solver settings; default ``WorldConfig()``.

    Returns:
        One :class:`Clip` per scene, in order.
    """
    config = config or WorldConfig()
    if not scenes:
        return []
    for i, s in enumerate(scenes):
        if not isinstance(s, Scene):
            raise TypeError(f"scenes[{i}] must be a physics.scenes.Scene, got {type(s).__name__}")
    clips: list[Clip | None] = [None] * len(scenes)
    for kind, simulate in (("rigid", _simulate_rigid), ("mpm", _simulate_mpm)):
        idx = [i for i, s in enumerate(scenes) if s.kind == kind]
        if kind == "mpm":  # scenes of similar stiffness take similar substep counts: batch them together
            idx.sort(key=lambda i: (_wave_speed(scenes[i]), i))
        size = config.batch_size if kind == "rigid" else config.mpm_batch_size
        for start in range(0, len(idx), size):
            chunk = idx[start : start + size]
            for i, (traj, parts) in zip(chunk, simulate([scenes[i] for i in chunk], config), strict=True):
                clips[i] = _finish(scenes[i], traj, parts, config)
    return clips  # type: ignore[return-value]


def simulate_clip(scene: Scene, config: WorldConfig | None = None) -> Clip:
    """Simulate and render one scene (see :func:`simulate_batch`)."""
    return simulate_batch([scene], config)[0]


# ---------------------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------------------


class CorruptShardError(ValueError):
    """A shard's bytes do not match the sha256 recorded in the dataset index."""


def _array_specs(config: WorldConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (numpy dtype, per-clip shape) of every stored array."""
    T, H, N = config.frames, config.resolution, config.num_tracks
    return {
        "rgb": ("uint8", (T, H, H, 3)),
        "depth": (config.depth_dtype, (T, H, H)),
        "mask": ("int8", (T, H, H)),
        "tracks": ("float32", (T, N, 2)),
        "visible": ("bool", (T, N)),
        "points": ("float32", (T, N, 3)),
        "object_ids": ("int8", (N,)),
        "K": ("float32", (3, 3)),
        "E": ("float32", (4, 4)),
    }


def _record(clip: Clip, index: int, shard: int, row: int) -> dict[str, Any]:
    return {
        "index": index,
        "shard": shard,
        "row": row,
        "seed": clip.scene.seed,
        "kind": clip.scene.kind,
        "caption": clip.caption,
        "scene": clip.scene.to_dict(),
    }


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _hash_shard(directory: Path, names: Sequence[str], records: bytes) -> str:
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(f"{name}\0".encode())
        with open(directory / f"{name}.npy", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    h.update(b"records\0")
    h.update(records)
    return h.hexdigest()


def _layout(num_clips: int, shard_size: int) -> list[tuple[int, int]]:
    """(start, count) of every shard."""
    return [(start, min(shard_size, num_clips - start)) for start in range(0, num_clips, shard_size)]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dump_index(index: dict[str, Any]) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode()


def _build_shard(config: WorldConfig, seed: int, out_dir: str, k: int, start: int, count: int) -> tuple:
    """Simulate clips [start, start + count), write shard k atomically; return (k, sha256, records)."""
    out = Path(out_dir)
    specs = _array_specs(config)
    arrays = {name: np.zeros((count, *shape), dtype=dtype) for name, (dtype, shape) in specs.items()}
    lines = []
    # the whole shard goes to simulate_batch, which batches scenes of one kind and similar stiffness
    scenes = [sample_world_scene(config, seed, i) for i in range(start, start + count)]
    for row, clip in enumerate(simulate_batch(scenes, config)):
        for name in specs:
            arrays[name][row] = getattr(clip, name).numpy()
        lines.append(json.dumps(_record(clip, start + row, k, row), sort_keys=True, separators=(",", ":")))
    records = ("\n".join(lines) + "\n").encode()
    tmp = out / f".tmp-{_shard_name(k)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, arr in arrays.items():
        with open(tmp / f"{name}.npy", "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    digest = _hash_shard(tmp, list(specs), records)
    final = out / _shard_name(k)
    if final.exists():  # left by a run killed before it committed this shard
        shutil.rmtree(final)
    os.replace(tmp, final)
    return k, digest, records


def _worker_init() -> None:
    torch.set_num_threads(1)


def _build_shard_job(job: tuple) -> tuple:
    return _build_shard(*job)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Generation runs on one thread per process: float reductions then do not depend on the machine's
    thread count, so the bytes do not either."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RuntimeError(
                f"{out} is being written by another generate_dataset run (.lock is held)"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1] or 'value'}: {a!r} -> {b!r}"]


def _prepare(out: Path, config: WorldConfig, seed: int, shard_size: int, num_clips: int) -> dict[str, Any]:
    """Load (or start) the index, check that it belongs to this run, and undo any uncommitted work."""
    path = out / INDEX
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "seed": seed,
        "shard_size": shard_size,
        "arrays": {n: {"dtype": d, "shape": list(s)} for n, (d, s) in _array_specs(config).items()},
    }
    if path.exists():
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ValueError(
                f"{path} is not a {FORMAT} v{VERSION} index (format={index.get('format')!r}, "
                f"version={index.get('version')!r})"
            )
        changes = _diff({k: index.get(k) for k in header}, header)
        if changes:
            raise ValueError(
                f"{out} holds a dataset generated with other settings, so it cannot be resumed: "
                + "; ".join(changes)
                + ". Use a new out_dir or the original settings."
            )
        layout = _layout(num_clips, shard_size)
        keep = 0
        for k, entry in enumerate(index["shards"]):
            if k < len(layout) and (entry["start"], entry["count"]) == layout[k]:
                keep += 1
                continue
            if entry["start"] >= num_clips or entry["start"] + entry["count"] > num_clips:
                raise ValueError(
                    f"{out} already holds {sum(e['count'] for e in index['shards'])} clips, more "
                    f"than num_clips={num_clips}; it is never shrunk: use a new out_dir"
                )
            break  # a partial last shard of a smaller run: regenerate it at its new size
        index["shards"] = index["shards"][:keep]
    else:
        index = {**header, "shards": []}
    committed = sum(e["records_length"] for e in index["shards"])
    records = out / RECORDS
    with open(records, "ab") as f:  # create if missing
        pass
    with open(records, "r+b") as f:
        if os.fstat(f.fileno()).st_size < committed:
            raise CorruptShardError(f"{records} is shorter than the {committed} bytes committed in {path}")
        f.truncate(committed)
    names = {e["name"] for e in index["shards"]}
    for entry in out.iterdir():
        stale = entry.name.startswith(".tmp-") or (
            entry.name.startswith("shard-") and entry.name not in names
        )
        if stale:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    index.update(num_clips=num_clips, complete=False)
    _write_atomic(path, _dump_index(index))
    return index


def _commit(
    out: Path, index: dict[str, Any], k: int, start: int, count: int, digest: str, records: bytes
) -> None:
    offset = sum(e["records_length"] for e in index["shards"])
    with open(out / RECORDS, "r+b") as f:
        f.seek(offset)
        f.truncate()
        f.write(records)
        f.flush()
        os.fsync(f.fileno())
    index["shards"].append(
        {
            "name": _shard_name(k),
            "start": start,
            "count": count,
            "sha256": digest,
            "records_offset": offset,
            "records_length": len(records),
        }
    )
    _write_atomic(out / INDEX, _dump_index(index))


def generate_dataset(
    config: WorldConfig,
    out_dir: str | os.PathLike,
    num_clips: int,
    *,
    workers: int = 1,
    seed: int = 0,
    shard_size: int = 64,
    progress: bool = True,
) -> Path:
    """Generate (or resume) a world dataset of ``num_clips`` clips in ``out_dir``.

    Clip i's scene is a function of ``(config, seed, i)`` alone, and its simulation is batched with the
    other clips of its shard (``shard_size`` is fixed for the life of a dataset), so the same arguments give
    the same bytes for any ``workers``. Call it under ``if __name__ == "__main__":`` when ``workers > 1``
    (worker processes are spawned). Rerunning after a kill continues with the first uncommitted shard;
    rerunning a finished dataset with a larger ``num_clips`` extends it. Every process simulates on one
    thread.

    Args:
        config: the world.
        out_dir: dataset directory (created if missing).
        num_clips: clips in the finished dataset (>= 1).
        workers: processes (spawned) building shards in parallel; 1 builds in this process.
        seed: dataset seed.
        shard_size: clips per shard (fixed for the life of a dataset).
        progress: show a tqdm bar.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``out_dir`` holds a dataset made with another config, seed or shard size, or more clips.
        RuntimeError: another run is writing the same directory.
    """
    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    for name, value in (("num_clips", num_clips), ("workers", workers), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        index = _prepare(out, config, seed, shard_size, num_clips)
        layout = _layout(num_clips, shard_size)
        done = len(index["shards"])
        jobs = [
            (config, seed, str(out), k, start, count) for k, (start, count) in enumerate(layout) if k >= done
        ]
        bar = tqdm(
            total=num_clips,
            initial=sum(e["count"] for e in index["shards"]),
            unit="clip",
            desc=f"{config.kind} world",
            disable=not progress,
        )
        pending: dict[int, tuple] = {}

        def accept(result: tuple) -> None:
            k, digest, records = result
            pending[k] = (digest, records)
            while len(index["shards"]) in pending:
                nxt = len(index["shards"])
                digest, records = pending.pop(nxt)
                start, count = layout[nxt]
                _commit(out, index, nxt, start, count, digest, records)
                bar.update(count)

        try:
            if workers == 1 or len(jobs) <= 1:
                with _single_thread():
                    for job in jobs:
                        accept(_build_shard(*job))
            else:
                ctx = mp.get_context("spawn")
                with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
                    for result in pool.imap_unordered(_build_shard_job, jobs):
                        accept(result)
        finally:
            bar.close()
        index["complete"] = len(index["shards"]) == len(layout)
        _write_atomic(out / INDEX, _dump_index(index))
    return out


class WorldDataset(torch.utils.data.Dataset):
    """Random access to a world dataset (complete, or the committed part of an unfinished one).

    Items are dicts in DESIGN.md §2 conventions::

        video [3, T, H, W] float32 in [-1, 1]     depth [T, H, W] float32 (m, 0 = sky)
        mask [T, H, W] int64 (object, -1 = background)
        tracks [T, N, 2] float32 pixels (x, y)    visible [T, N] bool
        points [T, N, 3] float32 (m, world)       object_ids [N] int64
        K [3, 3], E [4, 4] float32                params: dict (the scene)   caption: str   index: int

    Use ``collate=WorldDataset.collate`` in a DataLoader (params and captions stay lists).

    Args:
        path: dataset directory.
        verify: check each shard's sha256 the first time it is read (``verify()`` checks all at once).
        max_open_shards: memory maps kept open at a time.
        in_memory: read each shard's arrays into RAM on first use and keep them (training loops that visit
            clips at random: on machines that reclaim idle page cache, memory maps re-read the disk).
    """

    def __init__(
        self, path: str | os.PathLike, *, verify: bool = True, max_open_shards: int = 16, in_memory: bool = False
    ) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"no {INDEX} in {self.path}: not a world dataset (run generate_dataset)")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index_path} is not a {FORMAT} index (format={self.index.get('format')!r})")
        self.shards = self.index["shards"]
        self.shard_size = int(self.index["shard_size"])
        self.specs = {n: (s["dtype"], tuple(s["shape"])) for n, s in self.index["arrays"].items()}
        committed = sum(e["records_length"] for e in self.shards)
        with open(self.path / RECORDS, "rb") as f:
            self._records_bytes = f.read(committed)
        if len(self._records_bytes) < committed:
            raise CorruptShardError(
                f"{self.path / RECORDS} is truncated: {len(self._records_bytes)} of "
                f"{committed} committed bytes"
            )
        self.records = [json.loads(line) for line in self._records_bytes.splitlines()]
        self._length = sum(e["count"] for e in self.shards)
        if len(self.records) != self._length:
            raise CorruptShardError(
                f"{self.path / RECORDS} holds {len(self.records)} clips, the index {self._length}"
            )
        self.verify_on_read = verify
        self._verified: set[int] = set()
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._max_open = max(1, max_open_shards)
        self.in_memory = in_memory

    @property
    def complete(self) -> bool:
        """Whether generation finished (``len(self)`` equals the requested ``num_clips``)."""
        return bool(self.index.get("complete"))

    @property
    def config(self) -> dict[str, Any]:
        """The WorldConfig the dataset was generated with, as a dict."""
        return self.index["config"]

    def __len__(self) -> int:
        return self._length

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen their own memory maps
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _shard_records(self, k: int) -> bytes:
        e = self.shards[k]
        return self._records_bytes[e["records_offset"] : e["records_offset"] + e["records_length"]]

    def verify_shard(self, k: int) -> None:
        """Check shard k's sha256; raise :class:`CorruptShardError` naming it on a mismatch."""
        entry = self.shards[k]
        directory = self.path / entry["name"]
        try:
            digest = _hash_shard(directory, list(self.specs), self._shard_records(k))
        except FileNotFoundError as err:
            raise CorruptShardError(f"shard {entry['name']} of {self.path} is missing a file: {err}") from err
        if digest != entry["sha256"]:
            raise CorruptShardError(
                f"shard {entry['name']} of {self.path} failed its checksum (sha256 {digest[:16]}..., "
                f"index says {entry['sha256'][:16]}...): its files or its lines of {RECORDS} were modified "
                "or truncated. Regenerate the dataset (same config and seed give the same clips)."
            )
        self._verified.add(k)

    def verify(self) -> None:
        """Check every shard's sha256 (raises :class:`CorruptShardError` naming the first bad shard)."""
        for k in range(len(self.shards)):
            self.verify_shard(k)

    def _arrays(self, k: int) -> dict[str, np.ndarray]:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        if self.verify_on_read and k not in self._verified:
            self.verify_shard(k)
        directory = self.path / self.shards[k]["name"]
        arrays = {}
        for name, (dtype, shape) in self.specs.items():
            arr = np.load(directory / f"{name}.npy", mmap_mode=None if self.in_memory else "r", allow_pickle=False)
            if arr.dtype != np.dtype(dtype) or arr.shape != (self.shards[k]["count"], *shape):
                raise CorruptShardError(
                    f"shard {self.shards[k]['name']}: {name}.npy is {arr.dtype} "
                    f"{arr.shape}, expected {dtype} {(self.shards[k]['count'], *shape)}"
                )
            arrays[name] = arr
        self._open[k] = arrays
        if len(self._open) > self._max_open and not self.in_memory:
            self._open.popitem(last=False)
        return arrays

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} clips")
        i = int(i) % len(self)
        k, row = divmod(i, self.shard_size)
        a = self._arrays(k)
        rgb = torch.from_numpy(np.array(a["rgb"][row]))  # (T, H, W, 3) uint8
        record = self.records[i]
        return {
            "video": rgb.permute(3, 0, 1, 2).float() / 127.5 - 1.0,  # (3, T, H, W)
            "depth": torch.from_numpy(np.array(a["depth"][row], dtype=np.float32)),
            "mask": torch.from_numpy(np.array(a["mask"][row])).long(),
            "tracks": torch.from_numpy(np.array(a["tracks"][row])),
            "visible": torch.from_numpy(np.array(a["visible"][row])),
            "points": torch.from_numpy(np.array(a["points"][row])),
            "object_ids": torch.from_numpy(np.array(a["object_ids"][row])).long(),
            "K": torch.from_numpy(np.array(a["K"][row])),
            "E": torch.from_numpy(np.array(a["E"][row])),
            "params": record["scene"],
            "caption": record["caption"],
            "index": i,
        }

    def scene(self, i: int) -> Scene:
        """The :class:`Scene` of clip i."""
        return Scene.from_dict(self.records[i]["scene"])

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Stack tensors to [B, ...]; keep ``params`` and ``caption`` as lists; ``index`` as a [B] tensor."""
        out: dict[str, Any] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if isinstance(values[0], Tensor):
                out[key] = torch.stack(values)
            elif key == "index":
                out[key] = torch.tensor(values)
            else:
                out[key] = values
        return out


# ---------------------------------------------------------------------------------------------------------
# preview
# ---------------------------------------------------------------------------------------------------------


def _track_overlay(clip: Clip, scale: int, max_tracks: int = 20, trail: int = 3) -> list[np.ndarray]:
    """Frames upscaled ``scale`` times with tracks drawn: a trail and a dot, filled when visible."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    T, N = clip.visible.shape
    chosen = np.linspace(0, N - 1, min(max_tracks, N)).round().astype(int)
    colours = [tuple(int(255 * c) for c in colormaps["hsv"](i / len(chosen))[:3]) for i in range(len(chosen))]
    xy = (clip.tracks.numpy()[:, chosen] + 0.5) * scale - 0.5  # (T, n, 2) in upscaled pixels
    vis = clip.visible.numpy()[:, chosen]
    out = []
    for t in range(T):
        img = Image.fromarray(clip.rgb[t].numpy()).resize(
            (clip.rgb.shape[2] * scale, clip.rgb.shape[1] * scale), Image.NEAREST
        )
        draw = ImageDraw.Draw(img)
        r = max(1.5, scale * 0.6)
        for j, colour in enumerate(colours):
            path = [tuple(p) for p in xy[max(0, t - trail) : t + 1, j]]
            if len(path) > 1:
                draw.line(path, fill=colour, width=1)
            x, y = xy[t, j]
            box = (x - r, y - r, x + r, y + r)
            draw.ellipse(box, fill=colour if vis[t, j] else None, outline=colour)
        out.append(np.asarray(img))
    return out


def _depth_strip(clip: Clip, scale: int) -> np.ndarray:
    """Five depth frames side by side, colour-mapped (near = bright), sky black."""
    from matplotlib import colormaps

    T = clip.depth.shape[0]
    picks = sorted({round(t) for t in np.linspace(0, T - 1, 5)})
    depth = clip.depth.numpy()[picks]  # (5, H, W)
    valid = depth > 0
    lo, hi = (float(depth[valid].min()), float(depth[valid].max())) if valid.any() else (0.0, 1.0)
    norm = 1.0 - (depth - lo) / max(hi - lo, 1e-6)
    rgb = (colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    strip = np.concatenate(list(rgb), axis=1)  # (H, 5W, 3)
    return strip.repeat(scale, axis=0).repeat(scale, axis=1)


def _point_figure(clip: Clip, path: Path) -> None:
    """Frame 0 lifted from depth (coloured by rgb) beside the 3D trajectories of the tracked points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from physics.pointcloud import lift_depth

    cloud = lift_depth(clip.depth[0], clip.K, clip.E, mask=clip.mask[0] >= 0, rgb=clip.rgb[0].float() / 255.0)
    fig = Figure(figsize=(9, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    pts = cloud.points.numpy()
    if len(pts):
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], c=cloud.colors.numpy().clip(0, 1), s=4, depthshade=False)
    ax.set_title("frame 0 lifted from depth (objects)", fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2, projection="3d")
    traj = clip.points.numpy()  # (T, N, 3)
    colours = [COLOURS[o.colour] for o in clip.scene.objects]
    for n in range(0, traj.shape[1], max(1, traj.shape[1] // 64)):
        c = colours[int(clip.object_ids[n])]
        ax2.plot(traj[:, n, 0], traj[:, n, 1], traj[:, n, 2], color=c, lw=0.6)
    ax2.scatter(
        traj[-1, :, 0],
        traj[-1, :, 1],
        traj[-1, :, 2],
        s=2,
        c=[colours[int(i)] for i in clip.object_ids],
        depthshade=False,
    )
    ax2.set_title("3D tracks (last frame dotted)", fontsize=9)
    for a in (ax, ax2):
        a.set_xlabel("x (m)", fontsize=7)
        a.set_ylabel("y (m)", fontsize=7)
        a.set_zlabel("z (m)", fontsize=7)
        a.tick_params(labelsize=6)
    fig.suptitle(clip.caption, fontsize=8, wrap=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def preview(
    config: WorldConfig, out_dir: str | os.PathLike, seed: int = 0, *, index: int = 0
) -> dict[str, Path]:
    """Simulate clip ``index`` of the dataset ``generate_dataset(config, ..., seed=seed)`` would make and
    write pictures of it.

    Files: ``preview.gif`` (the clip with 2D tracks drawn, filled dots where visible), ``depth.png`` (five
    depth frames), ``points.png`` (frame 0 lifted from depth, and the 3D trajectories), ``preview.json``
    (caption and scene).

    Returns:
        ``{"gif": ..., "depth": ..., "points": ..., "json": ...}`` paths.
    """
    import imageio.v3 as iio

    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _single_thread():
        clip = simulate_clip(sample_world_scene(config, seed, index), config)
    scale = max(1, 256 // config.resolution)
    paths = {
        "gif": out / "preview.gif",
        "depth": out / "depth.png",
        "points": out / "points.png",
        "json": out / "preview.json",
    }
    frames = _track_overlay(clip, scale)
    gif = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000 / config.fps, loop=0)
    _write_atomic(paths["gif"], gif)
    _write_atomic(paths["depth"], iio.imwrite("<bytes>", _depth_strip(clip, scale), extension=".png"))
    _point_figure(clip, paths["points"])
    summary = {
        "caption": clip.caption,
        "seed": seed,
        "index": index,
        "scene": clip.params,
        "visible_fraction": float(clip.visible.float().mean()),
        "files": {k: p.name for k, p in paths.items()},
    }
    _write_atomic(paths["json"], (json.dumps(summary, indent=1) + "\n").encode())
    return paths
