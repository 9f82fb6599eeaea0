"""Particle splat renderer with ground truth: RGB, depth, instance mask, 2D tracks and their visibility.

Every particle is drawn as a small sphere impostor: its splat covers the pixels whose camera ray passes
within ``radius`` of the particle centre, and at each covered pixel it has the depth and normal of the
sphere's front surface there. A z-buffer keeps the nearest fragment per sample (one ``scatter_reduce``
``amin`` over packed (depth, particle) keys, no Python loop over points). Colours are Lambert-shaded,
rendered at ``supersample`` times the resolution and box-filtered down, so that a 64x64 frame shows
smooth objects rather than speckle. An optional ground plane ``z = ground_height`` with a checker texture
gives the eye something fixed to judge motion against.

Conventions of the outputs (:class:`Frames`):

* pixels: integer pixel centres, pixel (i, j) is centred at ``(x, y) = (j, i)`` (kornia, CoTracker; see
  :mod:`physics.camera`). ``tracks`` use the same coordinates.
* ``rgb`` float32 in [0, 1], [T, H, W, 3] (``rgb_uint8()`` and ``pixels()`` convert).
* ``depth`` float32 camera-frame z in metres, [T, H, W]; **0 where no surface is hit** (sky). The ground
  plane has real depth.
* ``mask`` int64 [T, H, W]: the object id of the visible particle, **-1 for background** (sky and ground).
* depth and mask are those of the nearest surface on the ray through the pixel centre (no anti-aliasing:
  a pixel whose centre misses an object is background even if the object covers part of it), so lifting
  the depth map (physics.pointcloud) gives points on the rendered surface.
* ``visible[t, n]`` is true when particle n projects inside the frame, in front of the near plane, and
  either is the nearest surface at one of the samples its splat covers, or its centre lies at most
  ``(1 + visibility_tol) * radius`` behind the visible surface at its own sample. Particles hidden behind
  another object, under the ground, inside a solid or on the far side of their object are invisible;
  surface particles seen at more than ~70 degrees incidence may be too (their splats' envelope lies
  ``radius / cos(incidence)`` in front of them).

Example::

    cam_K = intrinsics(64, 64, fov_deg=50.0)
    cam_E = look_at([2.5, 0.0, 1.2], [0.0, 0.0, 0.3])
    frames = render(points, colors, object_ids, cam_K, cam_E, radius=0.02)   # points [T, N, 3]
    frames.rgb.shape, frames.tracks.shape   # (T, 64, 64, 3), (T, N, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from physics.camera import resize_intrinsics

__all__ = ["RenderConfig", "Frames", "render", "render_batch", "checker_colors"]

Color = tuple[float, float, float]


@dataclass(frozen=True)
class RenderConfig:
    """Settings of :func:`render` (image size, anti-aliasing, lighting, ground plane, visibility)."""

    height: int = field(default=64, metadata={"range": (1, None)})  # image height H (pixels)
    width: int = field(default=64, metadata={"range": (1, None)})  # image width W (pixels)
    supersample: int = field(default=2, metadata={"range": (1, 8)})  # samples per pixel along each axis
    background: Color = (0.80, 0.86, 0.94)  # sky colour, RGB in [0, 1]
    ground: bool = True  # draw the plane z = ground_height
    ground_height: float = 0.0  # height of the ground plane (m, world z)
    ground_cell: float = field(default=0.25, metadata={"range": (1e-6, None)})  # checker square side (m)
    ground_color_a: Color = (0.50, 0.50, 0.52)  # checker colour of the even squares, RGB in [0, 1]
    ground_color_b: Color = (0.70, 0.70, 0.72)  # checker colour of the odd squares, RGB in [0, 1]
    light_dir: Color = (0.3, 0.5, 1.0)  # world direction towards a distant light (normalised inside)
    ambient: float = field(default=0.35, metadata={"range": (0.0, 1.0)})  # light that reaches every surface
    near: float = field(default=0.01, metadata={"range": (0.0, None)})  # closer particles are culled (m)
    max_splat_px: float = field(default=16.0, metadata={"range": (0.5, None)})  # splat radius cap (output px)
    # depth slack of the visibility test, in particle radii: a particle is visible when its centre is at most
    # (1 + visibility_tol) radii behind the visible surface (splats put the surface r / cos(incidence) in
    # front of a surface particle's centre, so 2 keeps surfaces up to ~70 degrees incidence visible)
    visibility_tol: float = field(default=2.0, metadata={"range": (0.0, None)})


@dataclass
class Frames:
    """A rendered clip and its ground truth (shapes for T frames of H x W pixels and N particles).

    Attributes:
        rgb: [T, H, W, 3] float32 in [0, 1].
        depth: [T, H, W] float32 camera-frame z (m); 0 where no surface (sky).
        mask: [T, H, W] int64 object id; -1 for background (sky and ground plane).
        tracks: [T, N, 2] float32 pixel (x, y) of every particle centre, integer pixel centres.
        visible: [T, N] bool, particle centre in frame and not occluded.
        points: [T, N, 3] world positions of the particles (m).
        K: [3, 3] intrinsics.
        E: [4, 4] world-to-camera extrinsics, or [T, 4, 4] for a moving camera.
    """

    rgb: Tensor
    depth: Tensor
    mask: Tensor
    tracks: Tensor
    visible: Tensor
    points: Tensor
    K: Tensor
    E: Tensor

    def rgb_uint8(self) -> Tensor:
        """rgb as uint8 [T, H, W, 3] (rounded)."""
        return (self.rgb * 255.0).round().clamp(0, 255).to(torch.uint8)

    def pixels(self) -> Tensor:
        """rgb in the models' pixel convention (DESIGN.md): float in [-1, 1], [3, T, H, W]."""
        return self.rgb.permute(3, 0, 1, 2) * 2.0 - 1.0  # (3, T, H, W)


# ------------------------------------------------------------------------------------------------ inputs


def checker_colors(
    body_points: Tensor, colors: Tensor | Color, cell: float, contrast: float = 0.35
) -> Tensor:
    """Per-point colours with a 3D checker in body coordinates, so that rotation and sliding are visible.

    Args:
        body_points: [N, 3] particle positions in the object's own (rest) frame (m).
        colors: base colour [3] or per-point [N, 3] in [0, 1].
        cell: checker cell side (m), > 0.
        contrast: odd cells are darkened by this fraction, in [0, 1].

    Returns:
        colors: [N, 3] in [0, 1].
    """
    if not isinstance(body_points, Tensor) or body_points.ndim != 2 or body_points.shape[-1] != 3:
        raise ValueError(
            f"body_points must be [N, 3], got {getattr(body_points, 'shape', type(body_points))}"
        )
    if not cell > 0:
        raise ValueError(f"cell must be > 0 (m), got {cell!r}")
    if not 0.0 <= contrast <= 1.0:
        raise ValueError(f"contrast must be in [0, 1], got {contrast!r}")
    base = torch.as_tensor(colors, dtype=body_points.dtype, device=body_points.device)
    if base.shape not in ((3,), (body_points.shape[0], 3)):
        raise ValueError(
            f"colors must be [3] or [N, 3] with N={body_points.shape[0]}, got {tuple(base.shape)}"
        )
    parity = torch.floor(body_points / cell).sum(dim=-1).remainder(2.0)  # (N,) 0 or 1
    return base.expand(body_points.shape[0], 3) * (1.0 - contrast * parity).unsqueeze(-1)  # (N, 3)


def _check_render_inputs(
    points: Tensor, colors: Tensor, object_ids: Tensor, K: Tensor, E: Tensor, radius: Tensor, batched: bool
) -> tuple[int, int, int]:
    """Validate clips already given a batch axis (points [B, T, N, 3], colors [B, 1|T, N, 3], object_ids
    [B, N], K [B, 3, 3], E [B, 1|T, 4, 4], radius [] or [B, N]); messages use the caller's shapes.
    Returns (B, T, N)."""
    b_ = "B, " if batched else ""

    def shape(x: Tensor) -> tuple[int, ...]:
        return tuple(x.shape) if batched else tuple(x.shape[1:])

    if not points.is_floating_point():
        raise TypeError(f"points must be a floating-point tensor, got {points.dtype}")
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must be [{b_}T, N, 3], got {shape(points)}")
    B, T, N, _ = points.shape
    if N == 0 or T == 0:
        raise ValueError(f"points must hold at least one frame and one particle, got {shape(points)}")
    if (
        colors.ndim != 4
        or colors.shape[0] != B
        or colors.shape[1] not in (1, T)
        or colors.shape[2:] != (N, 3)
    ):
        c_shape = shape(colors)
        if colors.ndim == 4 and colors.shape[1] == 1:
            c_shape = c_shape[:-3] + c_shape[-2:]
        raise ValueError(f"colors must be [{b_}N, 3] or [{b_}T, N, 3] with T={T}, N={N}, got {c_shape}")
    if not colors.is_floating_point() or bool(((colors < 0) | (colors > 1)).any()):
        raise ValueError("colors must be floats in [0, 1]")
    if object_ids.shape != (B, N) or object_ids.is_floating_point() or object_ids.dtype == torch.bool:
        raise ValueError(
            f"object_ids must be an integer tensor [{b_}N] with N={N}, "
            + f"got {object_ids.dtype} {shape(object_ids)}"
        )
    if bool((object_ids < 0).any()):
        raise ValueError("object_ids must be >= 0 (-1 is reserved for background in the mask)")
    if K.shape != (B, 3, 3):
        raise ValueError(f"K must be [{b_}3, 3], got {shape(K)}")
    if E.ndim != 4 or E.shape[0] != B or E.shape[1] not in (1, T) or E.shape[-2:] != (4, 4):
        e_shape = shape(E)
        if E.ndim == 4 and E.shape[1] == 1:
            e_shape = e_shape[:-3] + e_shape[-2:]
        raise ValueError(f"E must be [{b_}4, 4] or [{b_}T, 4, 4] with T={T}, got {e_shape}")
    if radius.ndim not in (0, 2) or (radius.ndim == 2 and radius.shape != (B, N)):
        raise ValueError(f"radius must be a float or an [{b_}N] tensor with N={N}, got {shape(radius)}")
    if not bool(torch.isfinite(radius).all() & (radius > 0).all()):
        raise ValueError("radius must be positive and finite (m)")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points must be finite (got NaN or inf particle positions)")
    return B, T, N


# ------------------------------------------------------------------------------------------------- core


def _float_key(depth: Tensor, index: Tensor) -> Tensor:
    """Pack a positive float32 depth and an int index into one int64 whose order is the depth's order.

    The bit pattern of a non-negative IEEE float, read as an integer, increases with the float, so
    ``amin`` over keys finds the nearest fragment and, in the low 32 bits, which particle it belongs to.
    """
    bits = depth.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | index


def _key_depth(key: Tensor) -> Tensor:
    return (key >> 32).to(torch.int32).view(torch.float32)


def _block_mean(x: Tensor, s: int) -> Tensor:
    """Mean over s x s sample blocks: [V, H*s, W*s, 3] -> [V, H, W, 3] (a box filter)."""
    out = x[:, 0::s, 0::s].clone()
    for i in range(s):
        for j in range(s):
            if i or j:
                out += x[:, i::s, j::s]
    return out / (s * s)


def _cast_ground(
    K: Tensor, E: Tensor, height: int, width: int, cfg: RenderConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Cast the pixel-centre rays of C cameras at the ground plane.

    Returns depth [C, h*w] (camera z of the hit, inf where the ray misses), ray_w [C, h*w, 3] (world
    direction of each ray, scaled so that its camera z is 1) and the camera centres [C, 3].
    """
    C = K.shape[0]
    device = K.device
    R, t = E[:, :3, :3], E[:, :3, 3]
    gy, gx = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    ray = torch.stack(
        [
            (gx.reshape(1, -1) - K[:, 0, 2, None]) / K[:, 0, 0, None],
            (gy.reshape(1, -1) - K[:, 1, 2, None]) / K[:, 1, 1, None],
            torch.ones(C, height * width, device=device),
        ],
        -1,
    )  # (C, h*w, 3) camera ray, z = 1
    ray_w = ray @ R  # (C, h*w, 3) world direction R^T ray
    center = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # (C, 3) camera centre (world)
    depth = torch.full((C, height * width), math.inf, device=device)
    if cfg.ground:
        # the hit's camera z equals the ray parameter because the camera-frame ray has z = 1
        lam = (cfg.ground_height - center[:, 2, None]) / ray_w[..., 2]  # (C, h*w)
        depth = torch.where(torch.isfinite(lam) & (lam > cfg.near), lam, depth)
    return depth, ray_w, center


def _background(K: Tensor, E: Tensor, cfg: RenderConfig, light: Tensor) -> tuple[Tensor, Tensor]:
    """Depth [C, Hs*Ws] (inf = sky) and colour [C, Hs*Ws, 3] of the empty scene for C supersampled cameras."""
    s = cfg.supersample
    depth, ray_w, center = _cast_ground(K, E, cfg.height * s, cfg.width * s, cfg)
    sky = torch.tensor(cfg.background, dtype=torch.float32, device=K.device)
    rgb = sky.expand(*depth.shape, 3)
    if not cfg.ground:
        return depth, rgb
    hit = torch.isfinite(depth)
    lam = torch.where(hit, depth, torch.zeros_like(depth))
    ground = center[:, None, :2] + ray_w[..., :2] * lam[..., None]  # (C, Hs*Ws, 2) hit point (world xy)
    odd = torch.floor(ground / cfg.ground_cell).sum(-1).remainder(2.0)[..., None]  # (C, Hs*Ws, 1)
    ca = torch.tensor(cfg.ground_color_a, device=K.device)
    cb = torch.tensor(cfg.ground_color_b, device=K.device)
    mean = (ca + cb) / 2
    # fade the checker to its mean colour where a sample's ground footprint nears a cell: it would alias
    cos_in = (ray_w[..., 2].abs() / ray_w.norm(dim=-1)).clamp_min(1e-3)
    footprint = lam / (K[:, 0, 0, None] * cos_in)  # (C, Hs*Ws) metres of ground per sample
    fade = (1.5 - 2.0 * footprint / cfg.ground_cell).clamp(0.0, 1.0)[..., None]
    tex = mean + fade * (torch.where(odd > 0.5, cb, ca) - mean)
    ground_rgb = tex * (cfg.ambient + (1.0 - cfg.ambient) * max(0.0, float(light[2])))  # Lambert, normal +z
    return depth, torch.where(hit[..., None], ground_rgb, rgb)


def _fragments(
    part: Tensor, view: Tensor, g: Tensor, k: int, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Fragments of the particles ``g`` (whose splats fit a (2k+1)^2 sample patch): flat sample index,
    depth of the sphere's front along that sample's ray, and particle index, each [Fr]."""
    side = 2 * k + 1
    off = torch.arange(-k, k + 1, device=part.device, dtype=torch.float32)  # (2k+1,)
    uc, vc, zc, mxc, myc, rc = part.index_select(0, g).unbind(-1)  # (M,) each
    ix0, iy0 = uc.round(), vc.round()  # nearest sample centre
    ixs, iys = ix0[:, None] + off, iy0[:, None] + off  # (M, 2k+1) sample column / row of the patch
    dx2 = ((ixs - uc[:, None]) * mxc[:, None]) ** 2  # (M, 2k+1) squared metric offset along x
    dy2 = ((iys - vc[:, None]) * myc[:, None]) ** 2
    dx2 = torch.where((ixs >= 0) & (ixs < width), dx2, math.inf)  # samples off the image are never covered
    dy2 = torch.where((iys >= 0) & (iys < height), dy2, math.inf)
    d2 = dy2[:, :, None] + dx2[:, None, :]  # (M, 2k+1, 2k+1) [row, col]
    # 1-D nonzero and integer division beat a multi-dimensional nonzero on CPU
    frag = (d2 <= (rc**2)[:, None, None]).view(-1).nonzero().squeeze(1)  # (Fr,) covered samples
    fm, rem = frag // (side * side), frag % (side * side)  # live particle, position in its patch
    # flat index of each particle's patch corner, so a fragment's sample is corner + row * width + col
    corner = view[g] * (height * width) + (iy0.long() - k) * width + (ix0.long() - k)  # (M,)
    flat = corner[fm] + (rem // side) * width + rem % side  # (Fr,)
    zr = torch.stack([zc, rc**2], -1).index_select(0, fm)  # (Fr, 2)
    depth = zr[:, 0] - (zr[:, 1] - d2.view(-1)[frag]).clamp_min(0.0).sqrt()  # front of the sphere impostor
    return flat, depth, g[fm]


def _splat(zkey: Tensor, part: Tensor, view: Tensor, height: int, width: int, near: float) -> Tensor:
    """Z-buffer sphere impostors into ``zkey`` [V*height*width] in place (one ``scatter_reduce`` amin).

    ``part`` [V*N, 6] holds each particle's (u, v, z, mx, my, r) in the coordinates of this sample grid:
    centre (u, v) in samples, camera depth z, metres per sample (mx, my) at that depth and radius r (m);
    ``view`` [V*N] is each particle's view. A sample is covered when its ray passes within r of the
    centre, at depth ``z - sqrt(r^2 - d^2)`` (the front of the sphere). Returns a [V*N] bool: the particle
    is the nearest surface at one of its samples.
    """
    u, v, z, mx, my, r = part.unbind(-1)
    r_px = r / torch.minimum(mx, my)
    wins = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
    live = (
        (z > near)
        & (u + r_px >= -0.5)
        & (u - r_px < width - 0.5)
        & (v + r_px >= -0.5)
        & (v - r_px < height - 0.5)
    )
    g = live.nonzero().squeeze(1)  # (M,) global particle index view * N + n
    if g.numel() == 0:
        return wins
    # A sample o samples away from the one nearest the centre is at least |o| - 1/2 from it, so a patch of
    # half-size k = floor(r_px + 1/2) holds the whole splat. Half-sizes are rounded up to powers of two, so
    # that one particle near the camera does not blow every patch up to its size (a loop over at most ~8
    # size classes, not over particles).
    k_need = (r_px[g] + 0.5).floor()  # (M,)
    k_class = torch.where(
        k_need < 1, 0.0, torch.exp2(torch.log2(k_need.clamp_min(1.0)).ceil())
    )  # 0, 1, 2, 4..
    top = int(k_class.max())
    frags = []
    for k in [0] + [2**i for i in range(top.bit_length())]:
        members = g[k_class == k]
        if members.numel() > 0:
            flat, depth, gm = _fragments(part, view, members, k, height, width)
            key = _float_key(
                depth.clamp_min(0.0) + 0.0, gm
            )  # (+0.0 turns -0.0 into +0.0: keys stay positive)
            zkey.scatter_reduce_(0, flat, key, reduce="amin")  # amin is order-free: classes may go one by one
            frags.append((flat, key, gm))
    for flat, key, gm in frags:  # only once every class is in the buffer
        wins[gm[zkey[flat] == key]] = True
    return wins


@torch.no_grad()
def _render_views(
    points: Tensor,
    colors: Tensor,
    ids: Tensor,
    radius: Tensor,
    K: Tensor,
    E: Tensor,
    view_cam: Tensor,
    cfg: RenderConfig,
) -> dict[str, Tensor]:
    """Render V views of N particles seen by C cameras.

    points [V, N, 3], colors [V, N, 3], ids [V, N], radius [V, N] (float32 except ids); K [C, 3, 3] and
    E [C, 4, 4] at output resolution; view_cam [V] the camera of each view (static cameras share their
    background). Returns a dict of [V, ...] tensors (rgb, depth, mask, tracks, visible).
    """
    V, N, _ = points.shape
    s = cfg.supersample
    H, W = cfg.height, cfg.width
    Hs, Ws = H * s, W * s
    P = Hs * Ws  # samples per view
    device = points.device
    light = torch.tensor(cfg.light_dir, dtype=torch.float32, device=device)
    light = light / light.norm().clamp_min(1e-12)
    none = torch.full((1,), V * N, device=device)  # particle index of "no particle" in the z-buffer keys
    Ks = resize_intrinsics(K, float(s))  # (C, 3, 3) camera of the supersampled image

    # 1. particles into each view's camera frame and supersampled pixels (flattened to V*N)
    Kv, Ev = Ks[view_cam], E[view_cam]  # (V, 3, 3), (V, 4, 4)
    p_cam = points @ Ev[:, :3, :3].transpose(1, 2) + Ev[:, None, :3, 3]  # (V, N, 3)
    z = p_cam[..., 2]  # (V, N)
    # divide by z keeping its sign, so tracks behind the camera match camera.project (they are culled)
    z_safe = torch.where(z.abs() < 1e-6, 1e-6, z)
    fx, fy = Kv[:, 0, 0, None], Kv[:, 1, 1, None]  # (V, 1)
    u = fx * p_cam[..., 0] / z_safe + Kv[:, 0, 2, None]  # (V, N) supersampled pixel x
    v = fy * p_cam[..., 1] / z_safe + Kv[:, 1, 2, None]
    mx, my = z_safe / fx, z_safe / fy  # metres per supersampled pixel at the particle's depth
    r_cap = cfg.max_splat_px * s * torch.minimum(mx, my)  # the documented cap on the projected radius
    r = torch.minimum(radius, r_cap)  # (V, N) splat radius (m)
    part = torch.stack([u, v, z, mx, my, r], -1).view(V * N, 6)  # per-particle table for the splats
    view = torch.arange(V, device=device).repeat_interleave(N)  # (V*N,) view of each particle

    # 2. z-buffer of the samples: background (ground plane or sky, once per camera), then the splats
    bg_depth_c, bg_rgb_c = _background(Ks, E, cfg, light)  # (C, P), (C, P, 3)
    zkey = _float_key(bg_depth_c, none)[view_cam].reshape(-1)  # (V*P,)
    wins = _splat(zkey, part, view, Hs, Ws, cfg.near)

    # 3. shade: sphere-impostor normals + Lambert for particle samples, background colour elsewhere
    # The box filter is linear: average the background once per camera, then add each particle sample's
    # difference from the background, divided by the s*s samples of its pixel.
    rgb = _block_mean(bg_rgb_c.reshape(-1, Hs, Ws, 3), s)[view_cam].reshape(V * H * W, 3)  # (V*H*W, 3)
    win = zkey & 0xFFFFFFFF  # (V*P,) winning particle (global index), V*N = background
    hit = (win < V * N).nonzero().squeeze(1)  # (S,) samples showing a particle
    if hit.numel() > 0:
        sv, pix = hit // P, hit % P
        row, col = pix // Ws, pix % Ws
        light_cam = Ev[:, :3, :3] @ light  # (V, 3) light direction in each camera frame
        shade_tab = torch.cat(
            [part[:, [0, 1, 3, 4, 5]], colors.reshape(-1, 3), light_cam[view]], -1
        )  # (V*N, 11)
        pu, pv, pmx, pmy, pr, cr, cg, cb, lx, ly, lz = shade_tab.index_select(0, win[hit]).unbind(-1)
        nx = (col.to(torch.float32) - pu) * pmx  # metric offset from the particle's centre
        ny = (row.to(torch.float32) - pv) * pmy
        nz = -(pr**2 - nx**2 - ny**2).clamp_min(0.0).sqrt()  # the sphere faces the camera (-z)
        lambert = ((nx * lx + ny * ly + nz * lz) / pr).clamp_min(0.0)
        intensity = cfg.ambient + (1.0 - cfg.ambient) * lambert
        shaded = torch.stack([cr, cg, cb], -1) * intensity[:, None]  # (S, 3)
        bg = bg_rgb_c.reshape(-1, 3).index_select(0, view_cam[sv] * P + pix)  # (S, 3)
        out_px = sv * (H * W) + (row // s) * W + col // s  # (S,) output pixel of each sample
        rgb.index_add_(0, out_px, (shaded - bg) / (s * s))
    rgb = rgb.view(V, H, W, 3)

    # 4. depth and mask on the pixel-centre rays: the centre samples when s is odd, else a second
    # z-buffer at the output resolution (depth is then exact on the centre ray: lifting it lands on the
    # rendered surface)
    if s % 2 == 1:
        c = (s - 1) // 2
        key_px = zkey.view(V, Hs, Ws)[:, c::s, c::s].reshape(V, H, W)
    else:
        key_px = _float_key(_cast_ground(K, E, H, W, cfg)[0], none)[view_cam].reshape(-1)  # (V*H*W,)
        native = torch.stack([(u + 0.5) / s - 0.5, (v + 0.5) / s - 0.5, z, mx * s, my * s, r], -1)
        _splat(key_px, native.view(V * N, 6), view, H, W, cfg.near)
        key_px = key_px.view(V, H, W)
    depth = _key_depth(key_px)
    depth = torch.where(torch.isfinite(depth), depth, 0.0)  # sky -> 0
    win_px = key_px & 0xFFFFFFFF
    mask = torch.where(win_px < V * N, ids.reshape(-1)[win_px.clamp(max=V * N - 1)], -1)  # (V, H, W)

    # 5. tracks, and visibility against the supersampled z-buffer
    tracks = torch.stack([(u + 0.5) / s - 0.5, (v + 0.5) / s - 0.5], -1)  # (V, N, 2) output pixels
    in_frame = (z > cfg.near) & (u >= -0.5) & (u < Ws - 0.5) & (v >= -0.5) & (v < Hs - 0.5)
    own = (
        view * P
        + v.reshape(-1).round().clamp(0, Hs - 1).long() * Ws
        + u.reshape(-1).round().clamp(0, Ws - 1).long()
    )
    front = _key_depth(zkey[own]).view(V, N)  # visible surface depth at the particle's own sample
    visible = in_frame & (wins.view(V, N) | (z - front <= (1.0 + cfg.visibility_tol) * radius))
    return {"rgb": rgb.clamp(0.0, 1.0), "depth": depth, "mask": mask, "tracks": tracks, "visible": visible}


# ------------------------------------------------------------------------------------------------ entry


def _as_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _render_clips(
    points: Tensor,
    colors: Tensor,
    object_ids: Tensor,
    K: Tensor,
    E: Tensor,
    radius: float | Tensor,
    config: RenderConfig | None,
    batched: bool,
) -> list[Frames]:
    """Shared body of :func:`render` and :func:`render_batch`; inputs carry a leading clip axis B."""
    cfg = config or RenderConfig()
    B = points.shape[0]
    if colors.ndim == 3:
        colors = colors[:, None]  # (B, 1, N, 3)
    if E.ndim == 3:
        E = E[:, None]  # (B, 1, 4, 4)
    r = torch.as_tensor(radius, dtype=torch.float32, device=points.device)
    if r.ndim == 1:
        r = r[None].expand(B, -1)  # one [N] radius shared by all clips
    B, T, N = _check_render_inputs(points, colors, object_ids, K, E, r, batched)
    V = B * T
    if V * N >= 2**31:  # the z-buffer packs the particle index into 32 bits
        raise ValueError(f"too many particle-frames in one call ({V * N}); split the batch")
    f32 = torch.float32
    p = points.to(f32).reshape(V, N, 3)
    c = colors.to(f32).expand(B, T, N, 3).reshape(V, N, 3)
    ids = object_ids.long()[:, None].expand(B, T, N).reshape(V, N)
    r = (r.expand(B, N) if r.ndim == 0 else r)[:, None].expand(B, T, N).reshape(V, N)
    # static cameras (E [B, 1, 4, 4]) are one camera per clip; moving ones one per frame
    cams_per_clip = E.shape[1]
    Kc = K.to(f32)[:, None].expand(B, cams_per_clip, 3, 3).reshape(-1, 3, 3)  # (C, 3, 3)
    Ec = E.to(f32).reshape(-1, 4, 4)  # (C, 4, 4)
    view_cam = torch.arange(B * cams_per_clip, device=points.device).view(B, cams_per_clip)
    view_cam = view_cam.expand(B, T).reshape(V) if cams_per_clip == 1 else view_cam.reshape(V)
    out = _render_views(p, c, ids, r, Kc, Ec, view_cam, cfg)
    res = {k: val.view(B, T, *val.shape[1:]) for k, val in out.items()}
    return [
        Frames(
            rgb=res["rgb"][b],
            depth=res["depth"][b],
            mask=res["mask"][b],
            tracks=res["tracks"][b],
            visible=res["visible"][b],
            points=points[b],
            K=K[b],
            E=E[b, 0] if E.shape[1] == 1 else E[b],
        )
        for b in range(B)
    ]


def render_batch(
    points: Tensor,
    colors: Tensor,
    object_ids: Tensor,
    K: Tensor,
    E: Tensor,
    *,
    radius: float | Tensor,
    config: RenderConfig | None = None,
) -> list[Frames]:
    """Render B clips at once (one vectorised pass over all B*T frames).

    Args:
        points: [B, T, N, 3] world particle positions (m); every clip has the same N (pad if needed).
        colors: [B, N, 3] or [B, T, N, 3] albedo in [0, 1].
        object_ids: [B, N] integer object id (>= 0) of each particle.
        K: [B, 3, 3] intrinsics at the output resolution.
        E: [B, 4, 4] world-to-camera extrinsics, or [B, T, 4, 4] for moving cameras.
        radius: particle radius in metres: a float, [N] (shared) or [B, N].
        config: image size and shading; default :class:`RenderConfig`.

    Returns:
        One :class:`Frames` per clip, as :func:`render` returns it.
    """
    for name, x in (("points", points), ("colors", colors), ("object_ids", object_ids), ("K", K), ("E", E)):
        _as_tensor(x, name)
    if points.ndim != 4:
        raise ValueError(f"points must be [B, T, N, 3], got {tuple(points.shape)}")
    if colors.ndim not in (3, 4) or E.ndim not in (3, 4):
        raise ValueError(
            f"colors must be [B, N, 3] or [B, T, N, 3] and E [B, 4, 4] or [B, T, 4, 4], "
            f"got {tuple(colors.shape)} and {tuple(E.shape)}"
        )
    return _render_clips(points, colors, object_ids, K, E, radius, config, batched=True)


def render(
    points: Tensor,
    colors: Tensor,
    object_ids: Tensor,
    K: Tensor,
    E: Tensor,
    *,
    radius: float | Tensor,
    config: RenderConfig | None = None,
) -> Frames:
    """Render one clip of particles with depth, instance mask, tracks and visibility.

    Args:
        points: [T, N, 3] world particle positions per frame (m).
        colors: [N, 3] or [T, N, 3] albedo in [0, 1] (see :func:`checker_colors` for a body texture).
        object_ids: [N] integer object id (>= 0) of each particle; written into ``Frames.mask``.
        K: [3, 3] intrinsics at the output resolution (``config.height`` x ``config.width``).
        E: [4, 4] world-to-camera extrinsics, or [T, 4, 4] for a moving camera.
        radius: particle radius in metres, a float or [N]; its projected size is ``f * radius / depth``,
            capped at ``config.max_splat_px`` output pixels (particles very close to the camera).
        config: image size and shading; default :class:`RenderConfig`.

    Returns:
        :class:`Frames` (see the module docstring for the conventions of each field).
    """
    for name, x in (("points", points), ("colors", colors), ("object_ids", object_ids), ("K", K), ("E", E)):
        _as_tensor(x, name)
    if points.ndim != 3:
        raise ValueError(f"points must be [T, N, 3], got {tuple(points.shape)}")
    if colors.ndim not in (2, 3) or E.ndim not in (2, 3):
        raise ValueError(
            f"colors must be [N, 3] or [T, N, 3] and E [4, 4] or [T, 4, 4], "
            f"got {tuple(colors.shape)} and {tuple(E.shape)}"
        )
    if isinstance(radius, Tensor) and radius.ndim > 1:
        raise ValueError(f"radius must be a float or [N], got {tuple(radius.shape)}")
    return _render_clips(
        points[None], colors[None], object_ids[None], K[None], E[None], radius, config, batched=False
    )[0]
