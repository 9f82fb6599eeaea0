"""Point clouds: lift depth maps to world points, clean them, sample a fixed count, read and write .ply.

Lifting follows :mod:`physics.camera`'s conventions (integer pixel centres, depth = camera-frame z, E
world-to-camera) and uses kornia's ``depth_to_3d_v2``. Cleaning (voxel down-sampling, statistical outlier
removal, normal estimation) and .ply I/O use open3d, which is imported on first use so that the renderer
and the simulators do not pay for it. Farthest-point sampling is our own torch code.

Example::

    frames = render(points, colors, ids, K, E, radius=0.02)
    cloud = lift_frame(frames, t=0, object_id=1)          # the pixels of object 1 in frame 0
    cloud = clean(cloud, CleanConfig(voxel_size=0.01))
    idx = farthest_point_sampling(cloud.points, 2048, generator=torch.Generator().manual_seed(0))
    save_ply("object.ply", cloud.select(idx))
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kornia.geometry.depth as kdepth
import kornia.geometry.linalg as klin
import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from physics.render import Frames

__all__ = [
    "PointCloud",
    "CleanConfig",
    "depth_to_world",
    "lift_depth",
    "lift_frame",
    "clean",
    "farthest_point_sampling",
    "save_ply",
    "load_ply",
]


def _o3d() -> Any:
    """Import open3d on first use, with a hint when its shared libraries are missing."""
    try:
        import open3d
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"physics.pointcloud needs open3d ({err}). Install it with `pip install open3d`; on "
            "Debian/Ubuntu its wheel also needs the system library libusb-1.0-0 "
            "(`apt-get install libusb-1.0-0`)."
        ) from err
    return open3d


@dataclass
class PointCloud:
    """An unordered set of M points with optional per-point colours and normals.

    Attributes:
        points: [M, 3] float positions (m, world frame unless stated otherwise).
        colors: [M, 3] float in [0, 1], or None.
        normals: [M, 3] unit normals, or None.
    """

    points: Tensor
    colors: Tensor | None = None
    normals: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.points, Tensor) or self.points.ndim != 2 or self.points.shape[-1] != 3:
            raise ValueError(f"points must be [M, 3], got {tuple(getattr(self.points, 'shape', ()))}")
        for name in ("colors", "normals"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Tensor) or value.shape != self.points.shape):
                raise ValueError(
                    f"{name} must be None or [M, 3] = {tuple(self.points.shape)}, "
                    f"got {tuple(getattr(value, 'shape', ()))}"
                )

    def __len__(self) -> int:
        return self.points.shape[0]

    def select(self, index: Tensor) -> PointCloud:
        """The sub-cloud at ``index`` ([K] long indices or [M] bool mask)."""
        return PointCloud(
            self.points[index],
            None if self.colors is None else self.colors[index],
            None if self.normals is None else self.normals[index],
        )


# ------------------------------------------------------------------------------------------------ lifting


def depth_to_world(depth: Tensor, K: Tensor, E: Tensor) -> Tensor:
    """Lift every pixel of depth maps to world coordinates.

    Args:
        depth: [B, H, W] camera-frame z (m).
        K: intrinsics [B, 3, 3] or [3, 3].
        E: world-to-camera extrinsics [B, 4, 4] or [4, 4].

    Returns:
        points: [B, H, W, 3] world positions of each pixel centre's surface point (meaningless where the
            depth is 0, the renderer's "no surface").
    """
    if not isinstance(depth, Tensor) or depth.ndim != 3 or not depth.is_floating_point():
        raise ValueError(f"depth must be a float [B, H, W] tensor, got {tuple(getattr(depth, 'shape', ()))}")
    B, H, W = depth.shape
    if not isinstance(K, Tensor) or K.shape not in ((3, 3), (B, 3, 3)):
        raise ValueError(f"K must be [3, 3] or [B, 3, 3] with B={B}, got {tuple(getattr(K, 'shape', ()))}")
    if not isinstance(E, Tensor) or E.shape not in ((4, 4), (B, 4, 4)):
        raise ValueError(f"E must be [4, 4] or [B, 4, 4] with B={B}, got {tuple(getattr(E, 'shape', ()))}")
    K = K.to(depth.dtype).expand(B, 3, 3)
    E = E.to(depth.dtype).expand(B, 4, 4)
    cam = kdepth.depth_to_3d_v2(depth, K)  # (B, H, W, 3) camera frame, integer pixel centres
    world = klin.transform_points(torch.linalg.inv(E), cam.reshape(B, H * W, 3))  # (B, H*W, 3)
    return world.view(B, H, W, 3)


def lift_depth(
    depth: Tensor, K: Tensor, E: Tensor, *, mask: Tensor | None = None, rgb: Tensor | None = None
) -> PointCloud:
    """Lift the valid pixels of one depth map to a world point cloud.

    Pixels are kept where ``mask`` is true (all if None) **and** the depth is finite and > 0 (0 is the
    renderer's "no surface").

    Args:
        depth: [H, W] camera-frame z (m).
        K: intrinsics [3, 3].
        E: world-to-camera extrinsics [4, 4].
        mask: optional [H, W] bool selection (e.g. ``frames.mask[t] == object_id``).
        rgb: optional [H, W, 3] colours in [0, 1], copied to the points.

    Returns:
        PointCloud with M = number of kept pixels, in row-major pixel order.
    """
    if not isinstance(depth, Tensor) or depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got {tuple(getattr(depth, 'shape', ()))}")
    if mask is not None and (
        not isinstance(mask, Tensor) or mask.shape != depth.shape or mask.dtype != torch.bool
    ):
        raise ValueError(
            f"mask must be a bool [H, W] = {tuple(depth.shape)} tensor, "
            f"got {getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}"
        )
    if rgb is not None and (not isinstance(rgb, Tensor) or rgb.shape != (*depth.shape, 3)):
        raise ValueError(
            f"rgb must be [H, W, 3] = {(*depth.shape, 3)}, got {tuple(getattr(rgb, 'shape', ()))}"
        )
    if not isinstance(K, Tensor) or K.shape != (3, 3):
        raise ValueError(f"K must be [3, 3], got {tuple(getattr(K, 'shape', ()))}")
    if not isinstance(E, Tensor) or E.shape != (4, 4):
        raise ValueError(f"E must be [4, 4], got {tuple(getattr(E, 'shape', ()))}")
    keep = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= mask
    safe = torch.where(keep, depth, torch.ones_like(depth))
    world = depth_to_world(safe[None], K[None], E[None])[0]  # (H, W, 3)
    colors = None if rgb is None else rgb[keep].to(world.dtype)
    return PointCloud(world[keep], colors)  # (M, 3)


def lift_frame(frames: Frames, t: int = 0, object_id: int | None = None) -> PointCloud:
    """Lift frame ``t`` of a rendered clip: the pixels of ``object_id`` (all objects if None), coloured.

    A moving camera's ``E`` [T, 4, 4] is indexed at ``t``. The ground plane and the sky (mask -1) are
    never lifted.
    """
    T = frames.depth.shape[0]
    if not -T <= t < T:
        raise ValueError(f"t must index one of the {T} frames, got {t}")
    sel = frames.mask[t] >= 0 if object_id is None else frames.mask[t] == object_id
    E = frames.E[t] if frames.E.ndim == 3 else frames.E
    return lift_depth(frames.depth[t], frames.K, E, mask=sel, rgb=frames.rgb[t])


# ----------------------------------------------------------------------------------------------- cleaning


@dataclass(frozen=True)
class CleanConfig:
    """Settings of :func:`clean` (open3d voxel down-sampling, statistical outlier removal, normals)."""

    # voxel side for down-sampling (m); None keeps every point
    voxel_size: float | None = field(default=None, metadata={"range": (0.0, None)})
    nb_neighbors: int = field(
        default=20, metadata={"range": (1, None)}
    )  # neighbours in the outlier statistic
    # drop points whose mean neighbour distance exceeds the cloud's mean by std_ratio standard deviations
    std_ratio: float = field(default=2.0, metadata={"range": (0.0, None)})
    estimate_normals: bool = True  # fit normals by PCA of each point's neighbourhood
    # neighbourhood radius for normals (m); None uses the normal_max_nn nearest neighbours instead
    normal_radius: float | None = field(default=None, metadata={"range": (0.0, None)})
    normal_max_nn: int = field(default=30, metadata={"range": (3, None)})  # neighbours used per normal


def _to_o3d(cloud: PointCloud) -> Any:
    o3d = _o3d()
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(cloud.points.detach().cpu().double().numpy())
    if cloud.colors is not None:
        pc.colors = o3d.utility.Vector3dVector(cloud.colors.detach().cpu().double().clamp(0, 1).numpy())
    if cloud.normals is not None:
        pc.normals = o3d.utility.Vector3dVector(cloud.normals.detach().cpu().double().numpy())
    return pc


def _from_o3d(pc: Any, dtype: torch.dtype, device: torch.device | str = "cpu") -> PointCloud:
    def conv(v: Any) -> Tensor:
        return torch.from_numpy(np.asarray(v)).to(dtype=dtype, device=device)

    return PointCloud(
        conv(pc.points).reshape(-1, 3),
        conv(pc.colors) if pc.has_colors() else None,
        conv(pc.normals) if pc.has_normals() else None,
    )


def clean(
    cloud: PointCloud, config: CleanConfig | None = None, *, camera_center: Tensor | None = None
) -> PointCloud:
    """Down-sample, remove outliers and estimate normals with open3d.

    Order: voxel down-sampling (if ``voxel_size``; averages points, colours and normals per voxel), then
    statistical outlier removal (a point is dropped when its mean distance to its ``nb_neighbors`` nearest
    neighbours exceeds the global mean of that statistic by ``std_ratio`` standard deviations), then normals
    by PCA of the neighbourhood, oriented towards ``camera_center`` when given (a lifted depth map's
    surfaces face its camera).

    Args:
        cloud: the input cloud; needs more than ``nb_neighbors`` points.
        config: settings, default :class:`CleanConfig`.
        camera_center: optional [3] world position that normals should face.

    Returns:
        A new PointCloud (same dtype and device as the input).
    """
    cfg = config or CleanConfig()
    if not isinstance(cloud, PointCloud):
        raise TypeError(f"cloud must be a PointCloud, got {type(cloud).__name__}")
    if camera_center is not None and (not isinstance(camera_center, Tensor) or camera_center.shape != (3,)):
        raise ValueError(
            f"camera_center must be a [3] tensor, got {tuple(getattr(camera_center, 'shape', ()))}"
        )
    if cfg.voxel_size is not None and not cfg.voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0 (m) or None, got {cfg.voxel_size}")
    if len(cloud) <= cfg.nb_neighbors:
        raise ValueError(
            f"cloud has {len(cloud)} points, outlier removal needs more than nb_neighbors={cfg.nb_neighbors}"
        )
    o3d = _o3d()
    pc = _to_o3d(cloud)
    if cfg.voxel_size is not None:
        pc = pc.voxel_down_sample(cfg.voxel_size)
    if len(pc.points) > cfg.nb_neighbors:
        pc, _ = pc.remove_statistical_outlier(nb_neighbors=cfg.nb_neighbors, std_ratio=cfg.std_ratio)
    if cfg.estimate_normals and len(pc.points) >= 3:
        if cfg.normal_radius is None:
            search = o3d.geometry.KDTreeSearchParamKNN(knn=cfg.normal_max_nn)
        else:
            search = o3d.geometry.KDTreeSearchParamHybrid(radius=cfg.normal_radius, max_nn=cfg.normal_max_nn)
        pc.estimate_normals(search_param=search)
        if camera_center is not None:
            pc.orient_normals_towards_camera_location(camera_center.detach().cpu().double().numpy())
    return _from_o3d(pc, cloud.points.dtype, cloud.points.device)


# ------------------------------------------------------------------------------------------------ sampling


def farthest_point_sampling(points: Tensor, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Indices of ``n`` points by farthest-point sampling (each pick maximises its distance to the set).

    The first index is drawn uniformly with ``generator``; the rest follow deterministically (ties go to
    the lowest index), so the same generator state gives the same indices. Indices are distinct even when
    the cloud holds duplicate positions.

    Args:
        points: [N, 3] or [B, N, 3] (any number of coordinates works, 3 is the usual).
        n: number of points to keep, 1 <= n <= N.
        generator: random source for the start index (None: torch's default generator).

    Returns:
        indices: [n] or [B, n] long, in the order picked.
    """
    if not isinstance(points, Tensor) or points.ndim not in (2, 3) or not points.is_floating_point():
        raise ValueError(
            f"points must be a float [N, 3] or [B, N, 3] tensor, got "
            f"{getattr(points, 'dtype', type(points))} {tuple(getattr(points, 'shape', ()))}"
        )
    unbatched = points.ndim == 2
    pts = points[None] if unbatched else points  # (B, N, 3)
    B, N, _ = pts.shape
    if not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(f"n must be an int in [1, N={N}], got {n!r}")
    pts = pts.detach()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    current = torch.randint(N, (B,), generator=generator, device=gen_device).to(pts.device)  # (B,)
    rows = torch.arange(B, device=pts.device)
    picked = torch.empty(B, n, dtype=torch.long, device=pts.device)
    nearest = torch.full((B, N), torch.inf, dtype=pts.dtype, device=pts.device)  # distance^2 to the set
    for i in range(n):
        picked[:, i] = current
        d2 = (pts - pts[rows, current][:, None]).square().sum(-1)  # (B, N)
        nearest = torch.minimum(nearest, d2)
        nearest[rows, current] = -1.0  # never pick an index twice, even at duplicate positions
        current = nearest.argmax(dim=-1)  # (B,) first maximum on ties
    return picked[0] if unbatched else picked


# ---------------------------------------------------------------------------------------------------- I/O


def save_ply(path: str | os.PathLike, cloud: PointCloud) -> Path:
    """Write ``cloud`` to a binary .ply (points as float64, colours as 8-bit, normals) atomically.

    The file is written next to ``path`` under a temporary name and renamed over it, so a failure never
    leaves a half-written file where a good one was.

    Returns:
        The path written.
    """
    if not isinstance(cloud, PointCloud):
        raise TypeError(f"cloud must be a PointCloud, got {type(cloud).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ValueError(f"path must end in .ply, got {str(path)!r}")
    if len(cloud) == 0:
        raise ValueError("cloud is empty; refusing to write a .ply with no points")
    o3d = _o3d()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.ply")
    os.close(fd)
    try:
        if not o3d.io.write_point_cloud(tmp, _to_o3d(cloud), write_ascii=False, print_progress=False):
            raise OSError(f"open3d could not write {tmp}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_ply(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> PointCloud:
    """Read a .ply point cloud (positions, and colours/normals when present) as tensors of ``dtype``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .ply file at {str(path)!r}")
    pc = _o3d().io.read_point_cloud(str(path), format="ply")
    if len(pc.points) == 0:
        raise ValueError(f"{str(path)!r} holds no points (not a point-cloud .ply?)")
    return _from_o3d(pc, dtype)
