"""Point-track motion prompting (Geng et al. 2025, "Motion Prompting: Controlling Video Generation with Motion
Trajectories").

Sparse 2D point tracks steer the video model: each track gets a sinusoidal ID embedding, every visible
track point writes its embedding into a space-time volume at latent resolution (bilinear splatting), and
the volume enters the frozen backbone through a ControlNet branch (``TrackAdapter``); optionally the branch
also gets each track's first-frame token carried along the track (``carry_first_frame``). Users make tracks
by hand (``pin_tracks`` holds points still, ``expand_drag`` turns one mouse drag into a grid of tracks on
the dragged object); training draws them from the simulator's ground truth (``sample_tracks``).

Conventions (DESIGN.md §2, CoTracker): ``tracks`` [B, T, N, 2] float pixel coordinates (x right, y down)
with pixel centres at integer coordinates, so pixel (0, 0) covers [-0.5, 0.5)^2 and a frame of H x W
pixels covers [-0.5, W - 0.5) x [-0.5, H - 0.5); ``visible`` [B, T, N] bool. Frames T = 1 + 4k map to latent
frames like the causal VAE: latent frame 0 is frame 0, latent frame j >= 1 holds frames 4j - 3 .. 4j.
Latent cell (i, j) of a VAE with spatial factor s covers pixels [j s, (j + 1) s) in x, so its centre is at
pixel coordinate j s + (s - 1) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from controls.controlnet import ControlNetAdapter
from wmgen.models.dit import DiTEmbeddings, VideoDiT
from wmgen.models.layers import timestep_embedding, upcast

__all__ = [
    "TrackAdapter",
    "TrackControl",
    "carry_first_frame",
    "expand_drag",
    "pin_tracks",
    "rasterize_tracks",
    "sample_tracks",
    "track_id_embedding",
]


# ---------------------------------------------------------------------------------------------------------
# 1. the control input


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_frame_size(frame_size: object, name: str = "frame_size") -> tuple[int, int]:
    if (
        not isinstance(frame_size, Sequence)
        or len(frame_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in frame_size)
    ):
        raise ValueError(f"{name} must be (H, W), two positive ints, got {frame_size!r}")
    return int(frame_size[0]), int(frame_size[1])


@dataclass
class TrackControl:
    """Point tracks that steer a generation (the input of ``TrackAdapter``).

    Example::

        tracks = torch.tensor([[[[10.0, 20.0]], [[12.0, 20.0]], [[14.0, 20.0]], [[16.0, 20.0]], [[18.0, 20.0]]]])
        control = TrackControl(tracks, visible=torch.ones(1, 5, 1, dtype=torch.bool))  # one track moving right
        control.validate(frame_size=(64, 64))

    Attributes:
        tracks: [B, T, N, 2] float pixel coordinates (x, y), pixel centres at integer coordinates. Values at
            invisible points are ignored (NaN allowed there).
        visible: [B, T, N] bool; an invisible point writes nothing.
        ids: [B, N] int track ids fed to the sinusoidal ID embedding; None means 0 .. N - 1 in every clip.
    """

    tracks: Tensor
    visible: Tensor
    ids: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.tracks.shape[0]

    @property
    def num_frames(self) -> int:
        return self.tracks.shape[1]

    @property
    def num_tracks(self) -> int:
        return self.tracks.shape[2]

    def to(self, device: torch.device | str) -> TrackControl:
        """The same control with every tensor on ``device``."""
        ids = self.ids.to(device) if self.ids is not None else None
        return TrackControl(self.tracks.to(device), self.visible.to(device), ids)

    def validate(self, frame_size: tuple[int, int] | None = None) -> None:
        """Raise ``TypeError`` / ``ValueError`` unless the tracks are well formed.

        Args:
            frame_size: (H, W) in pixels; when given, every visible point must lie inside the frame
                [-0.5, W - 0.5) x [-0.5, H - 0.5).

        Raises:
            TypeError: tracks not floating point, visible not bool, ids not an integer tensor.
            ValueError: wrong shapes, NaN/Inf at a visible point, a visible point outside the frame (the
                message names the first offending (b, t, n, x, y)).
        """
        tracks, visible, ids = self.tracks, self.visible, self.ids
        if not isinstance(tracks, Tensor) or tracks.ndim != 4 or tracks.shape[-1] != 2:
            raise ValueError(f"tracks must be a tensor [B, T, N, 2], got {_shape(tracks)}")
        if not tracks.is_floating_point():
            raise TypeError(f"tracks must be a float tensor of pixel coordinates, got dtype {tracks.dtype}")
        if not isinstance(visible, Tensor):
            raise TypeError(f"visible must be a bool tensor [B, T, N], got {type(visible).__name__}")
        if visible.dtype != torch.bool:
            raise TypeError(
                f"visible must be a bool tensor [B, T, N], got dtype {visible.dtype} "
                "(convert thresholded visibility with `visible > 0.5`)"
            )
        if visible.shape != tracks.shape[:3]:
            raise ValueError(
                f"visible must be [B, T, N] = {list(tracks.shape[:3])} to match tracks {list(tracks.shape)}, "
                f"got {list(visible.shape)}"
            )
        if visible.device != tracks.device:
            raise ValueError(f"visible is on {visible.device} but tracks are on {tracks.device}")
        if ids is not None:
            if not isinstance(ids, Tensor) or ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
                what = f"dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
                raise TypeError(f"ids must be an integer tensor [B, N] or None, got {what}")
            B, _, N, _ = tracks.shape
            if ids.shape != (B, N):
                raise ValueError(f"ids must be [B, N] = [{B}, {N}], got {list(ids.shape)}")
        bad = visible & ~torch.isfinite(tracks).all(dim=-1)  # (B, T, N)
        if bad.any():
            b, t, n = (int(i) for i in bad.nonzero()[0])
            x, y = tracks[b, t, n].tolist()
            raise ValueError(
                f"tracks must be finite at visible points; {int(bad.sum())} are not, the first at "
                f"(b, t, n) = ({b}, {t}, {n}) with (x, y) = ({x}, {y}) (mark such points invisible)"
            )
        if frame_size is None:
            return
        H, W = _check_frame_size(frame_size)
        x, y = tracks.unbind(-1)  # 2 x (B, T, N)
        outside = visible & ((x < -0.5) | (x >= W - 0.5) | (y < -0.5) | (y >= H - 0.5))
        if outside.any():
            b, t, n = (int(i) for i in outside.nonzero()[0])
            px, py = tracks[b, t, n].tolist()
            raise ValueError(
                f"visible track points must lie in the frame [-0.5, {W - 0.5}) x [-0.5, {H - 0.5}) of "
                f"frame_size (H, W) = ({H}, {W}); {int(outside.sum())} do not, the first at "
                f"(b, t, n, x, y) = ({b}, {t}, {n}, {px}, {py}) (mark points that left the frame invisible)"
            )


# ---------------------------------------------------------------------------------------------------------
# 2. ID embedding and rasterisation


def track_id_embedding(ids: Tensor, dim: int) -> Tensor:
    """Sinusoidal ID code of each track: ``[cos(id w_i) | sin(id w_i)]``, ``w_i = 10000^(-i / (dim / 2))``.

    Motion Prompting gives every track a unique sinusoidal embedding so that the network can tell tracks
    apart and follow one through time. The layout is ``wmgen.models.layers.timestep_embedding``'s; every
    code has norm sqrt(dim / 2), so no track outweighs another.

    Args:
        ids: [...] integer track ids.
        dim: embedding width (even, >= 2).

    Returns:
        [..., dim] fp32.
    """
    if not isinstance(ids, Tensor) or ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        what = f"dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"ids must be an integer tensor, got {what}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
    return timestep_embedding(ids.float(), dim)  # (..., dim)


def _bilinear_cells(xy: Tensor, visible: Tensor, cell_size: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The 4 cells around each pixel point on a grid of ``cell_size``-pixel cells, and their bilinear weights.

    Cell (i, j) covers pixels [j s, (j + 1) s) in x, so its centre is at pixel j s + (s - 1) / 2. A point
    between the centre of a border cell and the frame's edge is clamped to that centre, so the weights of a
    visible point sum to 1; an invisible point gets weight 0 (its coordinates, NaN allowed, are not read).

    Args:
        xy: [..., 2] pixel coordinates (x, y).
        visible: [...] bool.
        cell_size: s, pixels per cell side.
        grid: (H', W') cells.

    Returns:
        cells [..., 4] long flat index h' W' + w' within a frame; weights [..., 4] in xy's dtype.
    """
    Hl, Wl = grid
    s = cell_size
    xy = torch.where(visible[..., None], xy, torch.zeros((), dtype=xy.dtype, device=xy.device))  # NaN must not reach w
    g = (xy - (s - 1) / 2) / s  # (..., 2) grid coordinates, cell centres at integers
    gx, gy = g[..., 0].clamp(0, Wl - 1), g[..., 1].clamp(0, Hl - 1)  # 2 x (...)
    x0, y0 = gx.detach().floor(), gy.detach().floor()
    fx, fy = gx - x0, gy - y0  # fractional offsets in [0, 1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=Wl - 1), (y0 + 1).clamp(max=Hl - 1)  # a clamped neighbour gets weight 0
    cells = torch.stack([y0 * Wl + x0, y0 * Wl + x1, y1 * Wl + x0, y1 * Wl + x1], dim=-1)  # (..., 4)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)  # (..., 4)
    return cells, w * visible[..., None]


def _splat(cells: Tensor, w: Tensor, values: Tensor, cells_per_frame: int) -> Tensor:
    """Sum each track's value into its 4 cells of every frame, with the bilinear weights.

    Args:
        cells: [B, T', N, 4] flat cell index within a frame (``_bilinear_cells``).
        w: [B, T', N, 4] weights (0 where invisible).
        values: [B, N, D] one value per track.
        cells_per_frame: H' W'.

    Returns:
        [B T' H' W', D] in (b t h w) order, in values' dtype.
    """
    B, Tl = cells.shape[:2]
    D = values.shape[-1]
    bt = torch.arange(B * Tl, device=cells.device).view(B, Tl, 1, 1)  # flat (b, t') index
    flat = (bt * cells_per_frame + cells).flatten()  # (B T' N 4,) flat (b t' h' w') index
    weighted = w[..., None].to(values.dtype) * values[:, None, :, None, :]  # (B, T', N, 4, D)
    out = torch.zeros(B * Tl * cells_per_frame, D, dtype=values.dtype, device=values.device)
    return out.index_add(0, flat, weighted.reshape(-1, D))  # (B T' H' W', D)


def rasterize_tracks(
    control: TrackControl,
    *,
    frame_size: tuple[int, int],
    latent_grid: tuple[int, int, int],
    spatial_factor: int,
    temporal_factor: int = 4,
    dim: int = 64,
) -> Tensor:
    """Splat track ID embeddings into a space-time volume at latent resolution (Motion Prompting §3).

    Latent frame j reads pixel frame ``temporal_factor * j`` (0, 4, 8, ...: the last frame of the group the
    causal VAE folds into latent frame j). Each track visible at that frame adds its ID embedding to the 4
    latent cells around its latent-grid coordinate ``((x - (s - 1) / 2) / s, (y - (s - 1) / 2) / s)`` with
    bilinear weights; invisible points add nothing. A point between the centre of a border cell and the
    frame's edge is clamped to that cell's centre, so the weights of every point sum to 1. The volume is
    differentiable in the track coordinates (except where clamped).

    Args:
        control: the tracks, [B, T, N, 2] with T = 1 + temporal_factor (T' - 1).
        frame_size: (H, W) pixels of the video, equal to latent_grid's (H', W') times spatial_factor.
        latent_grid: (T', H', W') of the latents.
        spatial_factor: VAE spatial downsampling s (8 for the tiny preset).
        temporal_factor: VAE temporal downsampling (4).
        dim: ID embedding width.

    Returns:
        [B, dim, T', H', W'] volume in the tracks' dtype (fp32 for half-precision tracks).
    """
    for name, v in (("spatial_factor", spatial_factor), ("temporal_factor", temporal_factor)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    H, W = _check_frame_size(frame_size)
    if (
        not isinstance(latent_grid, Sequence)
        or len(latent_grid) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in latent_grid)
    ):
        raise ValueError(f"latent_grid must be (T', H', W'), three positive ints, got {latent_grid!r}")
    Tl, Hl, Wl = latent_grid
    s = spatial_factor
    if (H, W) != (Hl * s, Wl * s):
        raise ValueError(
            f"frame_size (H, W) = {(H, W)} must be the latent grid's (H', W') = {(Hl, Wl)} times "
            f"spatial_factor {s} = {(Hl * s, Wl * s)}"
        )
    control.validate(frame_size)
    B, T, N, _ = control.tracks.shape
    if T != 1 + temporal_factor * (Tl - 1):
        raise ValueError(
            f"tracks have T = {T} frames but the latent grid's T' = {Tl} needs 1 + {temporal_factor} (T' - 1) "
            f"= {1 + temporal_factor * (Tl - 1)} frames"
        )
    dtype = control.tracks.dtype if control.tracks.dtype in (torch.float32, torch.float64) else torch.float32
    device = control.tracks.device
    ids = control.ids if control.ids is not None else torch.arange(N, device=device).expand(B, N)
    emb = track_id_embedding(ids.to(device), dim).to(dtype)  # (B, N, D)

    frames = torch.arange(Tl, device=device) * temporal_factor  # (T',) pixel frame read by each latent frame
    vis = control.visible[:, frames]  # (B, T', N)
    cells, w = _bilinear_cells(control.tracks[:, frames].to(dtype), vis, s, (Hl, Wl))  # 2 x (B, T', N, 4)
    volume = _splat(cells, w, emb, Hl * Wl)  # (B T' H' W', D)
    return rearrange(volume, "(b t h w) d -> b d t h w", b=B, t=Tl, h=Hl, w=Wl)  # (B, D, T', H', W')


def carry_first_frame(
    control: TrackControl,
    frame0: Tensor,
    *,
    grid: tuple[int, int, int],
    cell_size: int,
    temporal_factor: int = 4,
) -> Tensor:
    """Carry each track's first-frame feature along the track (appearance transport).

    Motion Prompting's IDs say *that* the point at a track's start goes to its later positions; the network
    must still learn to match IDs across frames to know *what* goes there. This gives the answer directly:
    each track visible at frame 0 reads the frame-0 feature at its start point (bilinear over the cells),
    then writes it at its point of every later frame j >= 1 (pixel frame ``temporal_factor * j``) where it is
    visible (bilinear splat). A cell's value is ``sum(w f) / max(sum(w), 1)``: the weighted mean where tracks
    overlap, faded where only part of one track lands. Frame 0 gets nothing (it already shows the content);
    tracks that start later carry nothing (there is no first-frame content for them).

    Args:
        control: the tracks, [B, T, N, 2] with T = 1 + temporal_factor (T' - 1), checked by the caller.
        frame0: [B, H' W', D] features of frame 0 on the cell grid, in (h w) order.
        grid: (T', H', W') cells.
        cell_size: pixels per cell side.
        temporal_factor: pixel frames per grid frame after the first.

    Returns:
        [B, T' H' W', D] in (t h w) order, in frame0's dtype.
    """
    Tl, Hl, Wl = grid
    B, T, N, _ = control.tracks.shape
    D = frame0.shape[-1]
    if frame0.shape != (B, Hl * Wl, D):
        raise ValueError(f"frame0 must be [B, H' W', D] = [{B}, {Hl * Wl}, D], got {tuple(frame0.shape)}")
    if T != 1 + temporal_factor * (Tl - 1):
        raise ValueError(f"tracks have T = {T} frames but the grid's T' = {Tl} needs {1 + temporal_factor * (Tl - 1)}")
    device, dtype = frame0.device, frame0.dtype
    tracks, visible = control.tracks.to(device, dtype), control.visible.to(device)

    # 1. read: each track's feature at its frame-0 point
    start, w0 = _bilinear_cells(tracks[:, 0], visible[:, 0], cell_size, (Hl, Wl))  # 2 x (B, N, 4)
    picked = frame0.gather(1, start.reshape(B, N * 4, 1).expand(B, N * 4, D)).view(B, N, 4, D)
    feature = (w0[..., None] * picked).sum(dim=2)  # (B, N, D)

    # 2. write: at its point of every later grid frame, weighted mean over overlapping tracks
    frames = torch.arange(Tl, device=device) * temporal_factor  # (T',)
    vis = visible[:, frames] & visible[:, :1]  # (B, T', N) visible now and at frame 0
    vis[:, 0] = False
    cells, w = _bilinear_cells(tracks[:, frames], vis, cell_size, (Hl, Wl))  # 2 x (B, T', N, 4)
    total = _splat(cells, w, feature, Hl * Wl)  # (B T' H' W', D)
    weight = _splat(cells, w, torch.ones(B, N, 1, dtype=dtype, device=device), Hl * Wl)  # (B T' H' W', 1)
    return (total / weight.clamp(min=1)).view(B, Tl * Hl * Wl, D)  # (B, T' H' W', D)


# ---------------------------------------------------------------------------------------------------------
# 3. making tracks: pins, drags, training samples


def pin_tracks(points: Tensor, num_frames: int) -> TrackControl:
    """Static "pin" tracks: each point stays where it is, visible in every frame (hold this still).

    Args:
        points: [B, N, 2] float pixel coordinates (x, y).
        num_frames: T.

    Returns:
        TrackControl with tracks [B, T, N, 2] and visible [B, T, N] all True.
    """
    if not isinstance(points, Tensor) or points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be a tensor [B, N, 2], got {_shape(points)}")
    if not points.is_floating_point():
        raise TypeError(f"points must be a float tensor of pixel coordinates, got dtype {points.dtype}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    B, N, _ = points.shape
    tracks = points[:, None].expand(B, num_frames, N, 2).clone()  # (B, T, N, 2)
    visible = torch.ones(B, num_frames, N, dtype=torch.bool, device=points.device)  # (B, T, N)
    return TrackControl(tracks, visible)


def _point(value: object, name: str) -> tuple[float, float]:
    if isinstance(value, Tensor):
        if value.shape != (2,):
            raise ValueError(f"{name} must be a point (x, y), got a tensor of shape {tuple(value.shape)}")
        value = value.tolist()
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a point (x, y), got {value!r}")
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a point (x, y) of numbers, got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{name} must be finite, got {(x, y)}")
    return x, y


def expand_drag(
    start: tuple[float, float] | Tensor,
    end: tuple[float, float] | Tensor,
    *,
    mask: Tensor,
    num_frames: int,
    spacing: float = 4.0,
    start_frame: int = 0,
    end_frame: int | None = None,
) -> TrackControl:
    """One mouse drag -> a grid of tracks on the object under the start point, all moving with the drag.

    The dragged object is the region of ``mask`` under the start pixel: the instance with that id for an
    integer mask, the True region for a bool mask. Tracks are placed every ``spacing`` pixels on a grid
    through the start point (so the start point itself is always a track) wherever the grid point's pixel
    belongs to the object, and every track moves by the drag's displacement: with ``end`` a point, linearly
    from 0 at ``start_frame`` to ``end - start`` at ``end_frame`` and held after; with ``end`` a path
    [T, 2] of the drag point's positions, by ``path[t] - start`` at frame t. Tracks are invisible before
    ``start_frame`` (a partial-length prompt: earlier frames are left free) and at frames where they have
    moved out of the frame (as a tracker would report them); visible everywhere else.

    Example::

        control = expand_drag((20, 30), (40, 30), mask=world["mask"][0], num_frames=17)  # drag right by 20 px

    Args:
        start: (x, y) pixel where the drag begins, inside the frame.
        end: (x, y) where it ends, or a [T, 2] path of the drag point, one position per frame.
        mask: [H, W] frame-0 instance ids (int, -1 background) or a bool user mask; sets the frame size.
        num_frames: T.
        spacing: grid step in pixels (> 0).
        start_frame: first frame of the motion; tracks are invisible before it.
        end_frame: frame where a point ``end`` is reached (default T - 1); not allowed with a path.

    Returns:
        TrackControl with B = 1: tracks [1, T, N, 2] fp32, visible [1, T, N].

    Raises:
        ValueError: the start point is outside the frame or on the background ("no object under the start
            point"), bad frames, spacing or path shape.
    """
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        raise ValueError(f"mask must be a tensor [H, W] (instance ids or bool), got {_shape(mask)}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must hold int instance ids (-1 background) or bools, got dtype {mask.dtype}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not 0 < spacing < math.inf:
        raise ValueError(f"spacing must be a positive number of pixels, got {spacing!r}")
    if isinstance(start_frame, bool) or not isinstance(start_frame, int) or not 0 <= start_frame < num_frames:
        raise ValueError(f"start_frame must be an int in [0, {num_frames - 1}], got {start_frame!r}")
    H, W = mask.shape
    device = mask.device
    sx, sy = _point(start, "start")
    if not (-0.5 <= sx < W - 0.5 and -0.5 <= sy < H - 0.5):
        raise ValueError(
            f"start point (x, y) = {(sx, sy)} is outside the frame [-0.5, {W - 0.5}) x [-0.5, {H - 0.5}) "
            f"of the mask [H, W] = [{H}, {W}]"
        )

    # 1. the object under the start point
    px, py = math.floor(sx + 0.5), math.floor(sy + 0.5)  # pixel containing the start point
    if mask.dtype == torch.bool:
        if not mask[py, px]:
            raise ValueError(f"no object under the start point {(sx, sy)}: the bool mask is False at pixel {(px, py)}")
        region = mask
    else:
        label = int(mask[py, px])
        if label < 0:
            raise ValueError(
                f"no object under the start point {(sx, sy)}: pixel {(px, py)} is background (mask id {label})"
            )
        region = mask == label  # (H, W)

    # 2. grid through the start point, kept where it lands on the object
    kx = torch.arange(math.ceil((-0.5 - sx) / spacing), math.floor((W - 0.5 - sx) / spacing) + 1, device=device)
    ky = torch.arange(math.ceil((-0.5 - sy) / spacing), math.floor((H - 0.5 - sy) / spacing) + 1, device=device)
    gy, gx = torch.meshgrid(sy + spacing * ky.double(), sx + spacing * kx.double(), indexing="ij")
    gx, gy = gx.flatten(), gy.flatten()  # (M,)
    cols = torch.floor(gx + 0.5).long().clamp(0, W - 1)
    rows = torch.floor(gy + 0.5).long().clamp(0, H - 1)
    keep = region[rows, cols] & (gx < W - 0.5) & (gy < H - 0.5)  # the far edges belong to no pixel
    points = torch.stack([gx[keep], gy[keep]], dim=-1)  # (N, 2), fp64 until the end

    # 3. displacement of the drag at every frame
    frames = torch.arange(num_frames, device=device, dtype=torch.float64)  # (T,)
    if isinstance(end, Tensor) and end.ndim == 2:
        if end_frame is not None:
            raise ValueError("end_frame cannot be combined with a path `end` [T, 2]: the path sets every frame")
        if end.shape != (num_frames, 2) or not end.is_floating_point():
            raise ValueError(
                f"end as a path must be a float tensor [T, 2] = [{num_frames}, 2], got {tuple(end.shape)} "
                f"of dtype {end.dtype}"
            )
        if not torch.isfinite(end).all():
            raise ValueError("end path must be finite")
        offset = end.to(device, torch.float64) - torch.tensor([sx, sy], dtype=torch.float64, device=device)
    else:
        ex, ey = _point(end, "end")
        end_frame = num_frames - 1 if end_frame is None else end_frame
        if isinstance(end_frame, bool) or not isinstance(end_frame, int) or not start_frame <= end_frame < num_frames:
            raise ValueError(
                f"end_frame must be an int in [start_frame={start_frame}, {num_frames - 1}], got {end_frame!r}"
            )
        if end_frame > start_frame:
            alpha = ((frames - start_frame) / (end_frame - start_frame)).clamp(0, 1)  # (T,)
        else:
            alpha = (frames >= end_frame).double()
        offset = alpha[:, None] * torch.tensor([ex - sx, ey - sy], dtype=torch.float64, device=device)  # (T, 2)

    tracks = points[None] + offset[:, None]  # (T, N, 2)
    x, y = tracks.unbind(-1)
    inside = (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)  # (T, N)
    visible = inside & (frames >= start_frame)[:, None]
    return TrackControl(tracks.float()[None], visible[None])  # (1, T, N, 2), (1, T, N)


def sample_tracks(
    tracks: Tensor,
    visible: Tensor,
    *,
    generator: torch.Generator | None = None,
    min_tracks: int = 1,
    max_tracks: int | None = None,
    require_first_visible: bool = True,
    max_id: int = 4096,
) -> TrackControl:
    """Training-time track prompts drawn from ground-truth tracks (Motion Prompting's sparse sampling).

    Per clip: the candidates are the tracks visible at frame 0 (``require_first_visible``) or at any frame;
    a count k is drawn log-uniformly in [min_tracks, min(max_tracks or N, candidates)] (few tracks as often
    as many, so the model learns both sparse drags and dense motion); k candidates are kept at random and
    every other track is marked invisible (the shape stays [B, T, N, 2] so batches stack). A clip with fewer
    candidates than ``min_tracks`` keeps all of them (possibly none: an empty prompt, the unconditional
    case). Ids are a random slice of a permutation of range(max_id), so the model cannot rely on track
    order. Random numbers come from ``generator`` on its own device (CPU when None): the same generator
    state gives the same sample on any device of the tracks.

    Args:
        tracks: [B, T, N, 2] float ground-truth pixel tracks.
        visible: [B, T, N] bool.
        generator: source of randomness.
        min_tracks: least number of tracks per clip (>= 1).
        max_tracks: most tracks per clip (default N).
        require_first_visible: only tracks visible at frame 0 are candidates.
        max_id: ids are drawn from range(max_id); must be >= N.

    Returns:
        TrackControl(tracks (the input tensor), visible & kept, ids [B, N] int64).
    """
    TrackControl(tracks, visible).validate()
    B, T, N, _ = tracks.shape
    if isinstance(min_tracks, bool) or not isinstance(min_tracks, int) or min_tracks < 1:
        raise ValueError(f"min_tracks must be an int >= 1, got {min_tracks!r}")
    if max_tracks is not None and (
        isinstance(max_tracks, bool) or not isinstance(max_tracks, int) or max_tracks < min_tracks
    ):
        raise ValueError(f"max_tracks must be None or an int >= min_tracks = {min_tracks}, got {max_tracks!r}")
    if isinstance(max_id, bool) or not isinstance(max_id, int) or max_id < N:
        raise ValueError(f"max_id must be an int >= N = {N} (the number of tracks), got {max_id!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")

    candidates = visible[:, 0] if require_first_visible else visible.any(dim=1)  # (B, N)
    count = candidates.sum(dim=1).cpu().double()  # (B,)
    hi = count.clamp(max=min(max_tracks or N, N))
    lo = hi.clamp(max=min_tracks)
    # log-uniform on [lo, hi + 1) then floor: every integer in [lo, hi] has probability mass ~ log(1 + 1/k)
    u = torch.rand(B, generator=generator, device=gen_device).cpu().double()
    k = torch.exp(torch.log(lo.clamp(min=1)) + u * (torch.log(hi + 1) - torch.log(lo.clamp(min=1)))).floor()
    k = torch.minimum(torch.maximum(k, lo), hi).long()  # (B,); 0 only where there are no candidates

    scores = torch.rand(B, N, generator=generator, device=gen_device).to(tracks.device)  # (B, N) in [0, 1)
    scores = torch.where(candidates, scores, torch.full_like(scores, 2.0))  # candidates first
    rank = scores.argsort(dim=1, stable=True).argsort(dim=1, stable=True)  # (B, N) position in the order
    keep = (rank < k.to(tracks.device)[:, None]) & candidates  # (B, N)
    ids = torch.rand(B, max_id, generator=generator, device=gen_device).argsort(dim=1)[:, :N]  # (B, N)
    return TrackControl(tracks, visible & keep[:, None], ids.to(tracks.device))


# ---------------------------------------------------------------------------------------------------------
# 4. the adapter


class TrackAdapter(ControlNetAdapter):
    """Motion Prompting's ControlNet: rasterised track IDs -> (small conv) -> ControlNet branch -> hints.

    ``features`` splats the tracks' ID embeddings into a [B, id_dim, T', H', W'] volume at latent resolution
    (``rasterize_tracks``) and, with ``encoder=True``, refines it with a small residual conv,
    ``volume + Conv1x1x1(SiLU(Conv3x3x3(volume)))``: the residual keeps each cell's exact ID code in reach
    of the zero-initialised patch embedding, while the 3x3x3 conv lets a cell see its neighbours' tracks
    (local motion direction) before the 2x2 patchify. The conv is not causal in time: the whole prompt is
    given up front. The rest is ``ControlNetAdapter``: copies of the first ``num_blocks`` backbone blocks
    and zero-initialised projections, so an untrained adapter leaves the backbone unchanged.

    With ``carry=True`` the branch is also told *what* moves, not only where: each track's frame-0 token
    (the backbone's embedding of the first frame at the track's start) is carried along the track
    (``carry_first_frame``, on the token grid) and added through its own zero-initialised Linear(D, D), so
    the copied blocks see the object's appearance at the cells where the prompt puts it.

    Example::

        backbone = VideoDiT(DIT_PRESETS["tiny"]).requires_grad_(False)
        adapter = TrackAdapter(backbone, frame_size=(64, 64))           # 64 x 64 pixels -> 8 x 8 latents
        control = expand_drag((20, 30), (40, 30), mask=mask, num_frames=17)
        emb = backbone.embed(x_t, t, context=text)                       # x_t [B, 16, 5, 8, 8]
        v = backbone(x_t, t, context=text, hints=adapter.hints(emb, control))

    Args:
        backbone: the VideoDiT whose first ``num_blocks`` blocks are copied.
        frame_size: (H, W) pixels of the videos, multiples of ``spatial_factor``.
        spatial_factor: the VAE's spatial downsampling (8 for the tiny preset).
        temporal_factor: the VAE's temporal downsampling (4).
        id_dim: width of the track ID embedding (even); the control feature channels.
        num_blocks: number of copied blocks.
        target_blocks: backbone block receiving copy i's hint (default copy i -> block i).
        encoder: refine the rasterised volume with the residual conv above.
        carry: carry each track's first-frame token along the track (needs a 1 x p x p patch).
        generator: draws the encoder's initial weights (the copies come from the backbone, the projections
            are zero).
    """

    kind = "tracks"

    def __init__(
        self,
        backbone: VideoDiT,
        *,
        frame_size: tuple[int, int],
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        id_dim: int = 64,
        num_blocks: int = 2,
        target_blocks: Sequence[int] | None = None,
        encoder: bool = True,
        carry: bool = False,
        generator: torch.Generator | None = None,
    ):
        H, W = _check_frame_size(frame_size)
        for name, v in (("spatial_factor", spatial_factor), ("temporal_factor", temporal_factor)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if H % spatial_factor or W % spatial_factor:
            raise ValueError(f"frame_size (H, W) = {(H, W)} must be multiples of spatial_factor = {spatial_factor}")
        if isinstance(id_dim, bool) or not isinstance(id_dim, int) or id_dim < 2 or id_dim % 2:
            raise ValueError(f"id_dim must be an even int >= 2 (sinusoidal ID embedding), got {id_dim!r}")
        if not isinstance(encoder, bool):
            raise TypeError(f"encoder must be a bool, got {encoder!r}")
        if not isinstance(carry, bool):
            raise TypeError(f"carry must be a bool, got {carry!r}")
        pt, ph, pw = backbone.config.patch
        if carry and (pt != 1 or ph != pw):
            raise ValueError(
                f"carry=True reads frame 0 from the first token frame on square token cells: the backbone's patch "
                f"must be (1, p, p), got {(pt, ph, pw)}"
            )
        super().__init__(
            backbone, control_channels=id_dim, num_blocks=num_blocks, target_blocks=target_blocks, kind="tracks"
        )
        self.frame_size = (H, W)
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.id_dim = id_dim
        self.encoder = (
            nn.Sequential(nn.Conv3d(id_dim, id_dim, kernel_size=3, padding=1), nn.SiLU(), nn.Conv3d(id_dim, id_dim, 1))
            if encoder
            else None
        )
        if self.encoder is not None and not any(p.is_meta for p in self.encoder.parameters()):
            for m in self.encoder:
                if isinstance(m, nn.Conv3d):
                    nn.init.xavier_uniform_(m.weight, generator=generator)
                    nn.init.zeros_(m.bias)
        D = backbone.config.dim
        self.carry_embed = nn.Linear(D, D) if carry else None
        if self.carry_embed is not None and not self.carry_embed.weight.is_meta:
            nn.init.zeros_(self.carry_embed.weight)  # zero-initialised like every input of the branch
            nn.init.zeros_(self.carry_embed.bias)

    def constructor_args(self) -> dict:
        return {
            "frame_size": list(self.frame_size),
            "spatial_factor": self.spatial_factor,
            "temporal_factor": self.temporal_factor,
            "id_dim": self.id_dim,
            "num_blocks": len(self.copies),
            "target_blocks": list(self.target_blocks),
            "encoder": self.encoder is not None,
            "carry": self.carry_embed is not None,
        }

    def latent_grid(self, num_frames: int) -> tuple[int, int, int]:
        """(T', H', W') of the latents of ``num_frames`` video frames of ``frame_size``."""
        tf = self.temporal_factor
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(f"tracks must have T = 1 + {tf} k frames (the causal VAE's), got T = {num_frames!r}")
        H, W = self.frame_size
        s = self.spatial_factor
        return 1 + (num_frames - 1) // tf, H // s, W // s

    def check_control(self, control: TrackControl) -> TrackControl:
        """A ``TrackControl`` whose visible points lie in ``frame_size`` and whose T is 1 + temporal_factor k."""
        if not isinstance(control, TrackControl):
            raise TypeError(f"TrackAdapter control must be a TrackControl, got {type(control).__name__}")
        control.validate(self.frame_size)
        self.latent_grid(control.num_frames)
        return control

    def features(self, control: TrackControl) -> Tensor:
        """The rasterised ID volume [B, id_dim, T', H', W'] (encoded when ``encoder``), on the adapter's device.

        Args:
            control: tracks [B, T, N, 2] in pixels of ``frame_size``, T = 1 + temporal_factor (T' - 1).
        """
        control = control.to(self.control_embed.weight.device)
        volume = rasterize_tracks(
            control,
            frame_size=self.frame_size,
            latent_grid=self.latent_grid(control.num_frames),
            spatial_factor=self.spatial_factor,
            temporal_factor=self.temporal_factor,
            dim=self.id_dim,
        )  # (B, id_dim, T', H', W')
        volume = volume.to(self.control_embed.weight.dtype)
        return volume if self.encoder is None else volume + self.encoder(volume)  # (B, id_dim, T', H', W')

    def embed_control(self, emb: DiTEmbeddings, control: TrackControl) -> Tensor:
        """The embedded ID volume, plus (``carry``) the first-frame tokens carried along the tracks: [B, L, D]."""
        h = super().embed_control(emb, control)  # (B, L, D)
        if self.carry_embed is None:
            return h
        _, Hg, Wg = emb.grid
        frame0 = emb.tokens[:, : Hg * Wg]  # (B, Hg Wg, D) tokens of latent frame 0 (patch (1, p, p))
        cell = self.spatial_factor * self.backbone_config.patch[1]  # pixels per token side
        tf = self.temporal_factor
        carried = carry_first_frame(control, frame0, grid=emb.grid, cell_size=cell, temporal_factor=tf)  # (B, L, D)
        return h + upcast(self.carry_embed(carried.to(self.carry_embed.weight.dtype)))  # (B, L, D)

    def hints(self, emb: DiTEmbeddings, control: TrackControl) -> dict[int, Tensor]:
        """``ControlNetAdapter.hints`` after checking the tracks against the latents in ``emb``.

        Args:
            emb: ``VideoDiT.embed`` of latents [B, C, T', H', W'] of videos [B, 3, T, H, W] with
                (H, W) = frame_size and T = 1 + temporal_factor (T' - 1).
            control: the tracks.

        Returns:
            {target_blocks[i]: [B, L, D]}.
        """
        control = self.check_control(control)
        B = emb.tokens.shape[0]
        pt, ph, pw = self.backbone_config.patch
        latent = (emb.grid[0] * pt, emb.grid[1] * ph, emb.grid[2] * pw)
        expected = (1 + self.temporal_factor * (latent[0] - 1), latent[1] * self.spatial_factor,
                    latent[2] * self.spatial_factor)  # fmt: skip
        got = (control.num_frames, *self.frame_size)
        if got != expected or control.batch_size != B:
            raise ValueError(
                f"tracks of B = {control.batch_size} clips of (T, H, W) = {got} (frame_size {self.frame_size}) do "
                f"not match the latents: B = {B}, latent (T', H', W') = {latent} needs videos of (T, H, W) = "
                f"{expected} (temporal_factor {self.temporal_factor}, spatial_factor {self.spatial_factor})"
            )
        return super().hints(emb, control)
