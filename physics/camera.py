"""Pinhole cameras in the OpenCV / kornia convention.

Conventions (DESIGN.md section 2):

* Intrinsics ``K`` are ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``; extrinsics ``E`` are the 4x4
  **world-to-camera** transform ``[R | t]``. The camera frame is OpenCV's: x right, y down, z forward, so a
  point's camera-frame ``z`` is its *depth*.
* Pixel coordinates are ``(x, y)`` = (column, row) with **integer pixel centres**: pixel ``(i, j)`` (row i,
  column j) is centred at ``x = j, y = i``. This is kornia's convention (``create_meshgrid``,
  ``depth_to_3d_v2``, ``PinholeCamera``) and CoTracker's (a query at pixel (i, j) is ``(t, j, i)``). The
  frame therefore spans ``[-0.5, W - 0.5) x [-0.5, H - 0.5)`` and a centred camera has
  ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``.
* Functions take batched cameras (``K`` [B, 3, 3], ``E`` [B, 4, 4]) and also accept a single unbatched
  camera (``K`` [3, 3], ``E`` [4, 4]), which is broadcast over the batch.

The world frame is z-up (DESIGN.md), which is why :func:`look_at` defaults ``up`` to +z.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.geometry.camera as kcam
import kornia.geometry.linalg as klin
import torch
from torch import Tensor

__all__ = [
    "look_at",
    "intrinsics",
    "resize_intrinsics",
    "camera_center",
    "world_to_camera",
    "project",
    "unproject",
    "in_frame",
    "check_visible",
]

VectorLike = Tensor | Sequence[float]


# ----------------------------------------------------------------------------------------------- checks


def _check_k(K: Tensor, name: str = "K") -> None:
    if not isinstance(K, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(K).__name__}")
    if K.ndim not in (2, 3) or K.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must be [B, 3, 3] or [3, 3], got {tuple(K.shape)}")


def _check_e(E: Tensor, name: str = "E") -> None:
    if not isinstance(E, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(E).__name__}")
    if E.ndim not in (2, 3) or E.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be [B, 4, 4] or [4, 4], got {tuple(E.shape)}")


def _batch_cameras(K: Tensor, E: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Expand (possibly unbatched) ``K``, ``E`` to [B, 3, 3], [B, 4, 4] for a batch of size ``batch``."""
    K = K.expand(batch, 3, 3) if K.ndim == 2 else K
    E = E.expand(batch, 4, 4) if E.ndim == 2 else E
    if K.shape[0] != batch or E.shape[0] != batch:
        raise ValueError(
            f"camera batch must match the points' batch {batch}: got K {tuple(K.shape)}, E {tuple(E.shape)}"
        )
    return K, E


def _as_vector(v: VectorLike, name: str, dtype: torch.dtype | None = None) -> Tensor:
    t = torch.as_tensor(v, dtype=dtype if dtype is not None else torch.get_default_dtype())
    if t.ndim not in (1, 2) or t.shape[-1] != 3:
        raise ValueError(f"{name} must be [3] or [B, 3], got {tuple(t.shape)}")
    return t


# ---------------------------------------------------------------------------------------------- cameras


def look_at(eye: VectorLike, target: VectorLike, up: VectorLike = (0.0, 0.0, 1.0)) -> Tensor:
    """World-to-camera extrinsics of a camera at ``eye`` looking at ``target`` (OpenCV axes).

    The camera's z axis points from ``eye`` to ``target``, its x axis to the right of the view and its
    y axis down, i.e. towards ``-up`` as seen in the image.

    Args:
        eye: camera centre in world coordinates, [3] or [B, 3] (m).
        target: point the optical axis passes through, [3] or [B, 3] (m).
        up: world direction that appears upwards in the image, [3] or [B, 3]; default +z (world z-up).

    Returns:
        E: [4, 4] if every input is unbatched, else [B, 4, 4]; ``E @ [X, 1]`` maps world to camera frame.

    Raises:
        ValueError: on bad shapes, when ``eye == target``, or when the view direction is parallel to ``up``.
    """
    eye_t = _as_vector(eye, "eye")
    dtype = eye_t.dtype
    target_t = _as_vector(target, "target", dtype).to(eye_t.device)
    up_t = _as_vector(up, "up", dtype).to(eye_t.device)
    unbatched = eye_t.ndim == 1 and target_t.ndim == 1 and up_t.ndim == 1
    eye_t, target_t, up_t = torch.broadcast_tensors(
        eye_t.reshape(-1, 3), target_t.reshape(-1, 3), up_t.reshape(-1, 3)
    )  # (B, 3) each

    forward = target_t - eye_t
    dist = forward.norm(dim=-1, keepdim=True)
    if bool((dist <= 1e-12).any()):
        raise ValueError("look_at: eye and target coincide, the view direction is undefined")
    forward = forward / dist
    right = torch.cross(forward, up_t, dim=-1)  # OpenCV x = z cross up: x right when y is down
    norm = right.norm(dim=-1, keepdim=True)
    if bool((norm <= 1e-6 * up_t.norm(dim=-1, keepdim=True).clamp_min(1e-12)).any()):
        raise ValueError("look_at: the view direction is parallel to `up`; pass a different `up` vector")
    right = right / norm
    down = torch.cross(forward, right, dim=-1)  # right-handed: y = z cross x

    R = torch.stack([right, down, forward], dim=-2)  # (B, 3, 3), rows are the camera axes in world
    E = torch.zeros(eye_t.shape[0], 4, 4, dtype=dtype, device=eye_t.device)
    E[:, :3, :3] = R
    E[:, :3, 3] = -(R @ eye_t.unsqueeze(-1)).squeeze(-1)  # t = -R c
    E[:, 3, 3] = 1.0
    return E[0] if unbatched else E


def intrinsics(
    width: int,
    height: int,
    *,
    fov_deg: float | Tensor | None = None,
    focal: float | Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Pinhole intrinsics with square pixels and a centred principal point.

    Exactly one of ``fov_deg`` and ``focal`` must be given. The field of view is the **horizontal** one,
    measured across the full image width (from the left edge of pixel 0 to the right edge of pixel W-1),
    so ``fx = fy = (W / 2) / tan(fov / 2)``. The principal point is ``((W - 1) / 2, (H - 1) / 2)`` (integer
    pixel centres, see the module docstring).

    Args:
        width: image width W in pixels.
        height: image height H in pixels.
        fov_deg: horizontal field of view in degrees, in (0, 180); scalar or [B].
        focal: focal length in pixels, > 0; scalar or [B].
        dtype: result dtype (default: torch's default dtype).

    Returns:
        K: [3, 3] for a scalar ``fov_deg``/``focal``, [B, 3, 3] for a [B] tensor.
    """
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive ints, got width={width!r}, height={height!r}")
    if (fov_deg is None) == (focal is None):
        raise ValueError("intrinsics: give exactly one of fov_deg and focal")
    dtype = dtype or torch.get_default_dtype()
    if fov_deg is not None:
        fov = torch.as_tensor(fov_deg, dtype=dtype)
        if fov.ndim > 1 or not bool(((fov > 0) & (fov < 180)).all()):
            raise ValueError(f"fov_deg must be a scalar or [B] in (0, 180) degrees, got {fov_deg!r}")
        f = (width / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)
    else:
        f = torch.as_tensor(focal, dtype=dtype)
        if f.ndim > 1 or not bool((f > 0).all()):
            raise ValueError(f"focal must be a scalar or [B] of positive pixel lengths, got {focal!r}")
    K = torch.zeros(*f.shape, 3, 3, dtype=dtype)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = (width - 1) / 2.0
    K[..., 1, 2] = (height - 1) / 2.0
    K[..., 2, 2] = 1.0
    return K


def resize_intrinsics(K: Tensor, scale: float) -> Tensor:
    """Intrinsics of the same camera rendered at ``scale`` times the resolution.

    With integer pixel centres a pixel edge sits at ``-0.5``, so ``cx' = scale * (cx + 0.5) - 0.5``
    (kornia's ``PinholeCamera.scale`` uses ``cx' = scale * cx``, the half-pixel rule: kornia issue #4263).

    Args:
        K: [B, 3, 3] or [3, 3].
        scale: resolution factor, > 0 (2 = twice as many pixels along each axis).

    Returns:
        K': same shape as ``K``.
    """
    _check_k(K)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    K2 = K.clone()
    K2[..., 0, 0] = K[..., 0, 0] * scale
    K2[..., 1, 1] = K[..., 1, 1] * scale
    K2[..., 0, 1] = K[..., 0, 1] * scale
    K2[..., 0, 2] = scale * (K[..., 0, 2] + 0.5) - 0.5
    K2[..., 1, 2] = scale * (K[..., 1, 2] + 0.5) - 0.5
    return K2


def camera_center(E: Tensor) -> Tensor:
    """Camera centre in world coordinates, ``c = -R^T t``: [B, 3] for E [B, 4, 4], [3] for E [4, 4]."""
    _check_e(E)
    R, t = E[..., :3, :3], E[..., :3, 3]
    return -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------------------------------- projection


def _check_points(points: Tensor, name: str = "points") -> None:
    if not isinstance(points, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(points).__name__}")
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be [B, N, 3], got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {points.dtype}")


def world_to_camera(points: Tensor, E: Tensor) -> Tensor:
    """Move world points [B, N, 3] into the camera frame of E [B, 4, 4] (or [4, 4]): [B, N, 3]."""
    _check_points(points)
    _check_e(E)
    E = E.expand(points.shape[0], 4, 4) if E.ndim == 2 else E
    if E.shape[0] != points.shape[0]:
        raise ValueError(f"E batch {E.shape[0]} does not match points batch {points.shape[0]}")
    return klin.transform_points(E.to(points.dtype), points)  # (B, N, 3)


def project(points: Tensor, K: Tensor, E: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points to pixels.

    Args:
        points: world points [B, N, 3] (m).
        K: intrinsics [B, 3, 3] or [3, 3].
        E: world-to-camera extrinsics [B, 4, 4] or [4, 4].

    Returns:
        pixels: [B, N, 2] as (x, y) with integer pixel centres (module docstring). Meaningless where
            ``depth <= 0`` (the point is behind the camera); use :func:`in_frame` to select usable ones.
        depth: [B, N] camera-frame z (m).
    """
    _check_points(points)
    _check_k(K)
    _check_e(E)
    K, E = _batch_cameras(K, E, points.shape[0])
    p_cam = world_to_camera(points, E)  # (B, N, 3)
    depth = p_cam[..., 2]  # (B, N)
    # kornia divides by z except at |z| <= 1e-8 (issue #4267); such points have depth ~ 0 and fail in_frame
    pixels = kcam.project_points(p_cam, K.to(points.dtype).unsqueeze(1))  # (B, N, 2)
    return pixels, depth


def unproject(pixels: Tensor, depth: Tensor, K: Tensor, E: Tensor) -> Tensor:
    """Lift pixels with a camera-frame depth back to world points (inverse of :func:`project`).

    Args:
        pixels: [B, N, 2] as (x, y), integer pixel centres.
        depth: [B, N] camera-frame z (m).
        K: intrinsics [B, 3, 3] or [3, 3].
        E: world-to-camera extrinsics [B, 4, 4] or [4, 4].

    Returns:
        points: world points [B, N, 3].
    """
    if not isinstance(pixels, Tensor) or pixels.ndim != 3 or pixels.shape[-1] != 2:
        raise ValueError(f"pixels must be a [B, N, 2] tensor, got {getattr(pixels, 'shape', type(pixels))}")
    if not isinstance(depth, Tensor) or depth.shape != pixels.shape[:-1]:
        raise ValueError(
            f"depth must be [B, N] = {tuple(pixels.shape[:-1])}, got {getattr(depth, 'shape', type(depth))}"
        )
    _check_k(K)
    _check_e(E)
    K, E = _batch_cameras(K, E, pixels.shape[0])
    p_cam = kcam.unproject_points(pixels, depth.unsqueeze(-1), K.to(pixels.dtype).unsqueeze(1))  # (B, N, 3)
    return klin.transform_points(torch.linalg.inv(E.to(pixels.dtype)), p_cam)  # (B, N, 3)


def in_frame(pixels: Tensor, depth: Tensor, height: int, width: int, near: float = 1e-6) -> Tensor:
    """Mask [B, N] of projections in front of the camera (``depth > near``) and inside the H x W frame.

    The frame spans ``[-0.5, W - 0.5) x [-0.5, H - 0.5)`` (integer pixel centres).
    """
    x, y = pixels[..., 0], pixels[..., 1]
    return (depth > near) & (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


def check_visible(
    points: Tensor, K: Tensor, E: Tensor, height: int, width: int, *, min_points: int = 1
) -> Tensor:
    """Raise if a camera sees none of the points; used by scene samplers to reject bad cameras.

    Args:
        points: world points [B, N, 3] or [N, 3] (e.g. all particles of the first frame).
        K: intrinsics [B, 3, 3] or [3, 3].
        E: world-to-camera extrinsics [B, 4, 4] or [4, 4].
        height: image height H in pixels.
        width: image width W in pixels.
        min_points: how many points each camera must see at least (>= 1).

    Returns:
        in_view: [B, N] (or [N] for unbatched points) bool, points in front of the camera and in the frame.

    Raises:
        ValueError: "camera looks away from every object ..." when a camera sees fewer than ``min_points``.
    """
    if not isinstance(points, Tensor) or points.ndim not in (2, 3) or points.shape[-1] != 3:
        raise ValueError(f"points must be [B, N, 3] or [N, 3], got {getattr(points, 'shape', type(points))}")
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    unbatched = points.ndim == 2
    pts = points.unsqueeze(0) if unbatched else points  # (B, N, 3)
    if pts.shape[1] == 0:
        raise ValueError("check_visible: points is empty, there is nothing to look at")
    pixels, depth = project(pts, K, E)
    mask = in_frame(pixels, depth, height, width)  # (B, N)
    seen = mask.sum(dim=-1)  # (B,)
    bad = (seen < min_points).nonzero().flatten().tolist()
    if bad:
        b = bad[0]
        behind = int((depth[b] <= 0).sum())
        raise ValueError(
            f"camera looks away from every object: camera {b} sees {int(seen[b])} of {pts.shape[1]} points "
            f"(need >= {min_points}); {behind} are behind it, the rest fall outside the "
            f"{height}x{width} frame" + (f" (also cameras {bad[1:]})" if len(bad) > 1 else "")
        )
    return mask[0] if unbatched else mask
