"""Point tracking for evaluation: how faithfully does a video follow requested point tracks?

A :class:`PointTracker` re-tracks query points in a (generated) video; :func:`track_epe` compares the result
with the tracks that were requested. Three trackers ship:

* :class:`LucasKanadeTracker`: pyramidal Lucas-Kanade (Bouguet 2001), pure torch, always available, fast on
  CPU. Good on textured, rigidly moving surfaces; it cannot re-detect a point after an occlusion.
* :class:`ColorObjectTracker`: finds each query's object by its colour in every frame and follows the object's
  region (translation, similarity, affine or rotating-sphere model), pure torch. Made for wmgen's simulated
  worlds (uniformly coloured objects on a grey ground), where its error floor on ground-truth renders is far
  below Lucas-Kanade's.
* :class:`CoTrackerTracker`: CoTracker3 (Karaev et al. 2024) from a local clone of its repository and a local
  checkpoint (nothing is ever downloaded).

Conventions (DESIGN.md §2, CoTracker's): videos [B, 3, T, H, W] float in [-1, 1]; tracks [B, T, N, 2] float
pixel coordinates (x right, y down, pixel centres at integer coordinates, so a frame spans
[-0.5, W - 0.5) x [-0.5, H - 0.5)); visible [B, T, N] bool; queries [B, N, 3] as (t, x, y).

Example::

    tracker = make_tracker("lk")
    queries = queries_from_tracks(requested, requested_visible)      # (B, N, 3)
    tracks, visible = tracker.track(video, queries)                  # (B, T, N, 2), (B, T, N)
    track_epe(tracks, requested, requested_visible, frame_size=video.shape[-2:])
"""

from __future__ import annotations

import math
import os
import pickle
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import kornia.filters as KF
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = [
    "PointTracker",
    "LucasKanadeTracker",
    "ColorObjectTracker",
    "COLOR_MOTIONS",
    "CoTrackerTracker",
    "COTRACKER_MODELS",
    "TRACKERS",
    "make_tracker",
    "track_epe",
    "queries_from_tracks",
]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for RGB -> grey
_RANGE_SLACK = 1e-3  # float rounding tolerated outside [-1, 1] before a video is called out of range


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _in_frame(xy: Tensor, height: int, width: int) -> Tensor:
    """[..., 2] pixel (x, y) -> [...] bool: inside [-0.5, W - 0.5) x [-0.5, H - 0.5) (pixel-centre convention)."""
    x, y = xy.unbind(-1)
    return (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)


# ---------------------------------------------------------------------------------------------------------
# the extension point
# ---------------------------------------------------------------------------------------------------------


class PointTracker(ABC):
    """Tracks query points through a video (an evaluation tool; no gradients flow through it).

    Subclasses implement :meth:`track` and start it with ``self.check_inputs(video, queries)``::

        class StandStill(PointTracker):
            name = "still"

            def track(self, video, queries):
                B, _, T, H, W = self.check_inputs(video, queries)
                tracks = queries[:, None, :, 1:].expand(B, T, -1, 2)      # (B, T, N, 2)
                return tracks, torch.ones(tracks.shape[:-1], dtype=torch.bool, device=video.device)
    """

    name: str = "tracker"

    @abstractmethod
    def track(self, video: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Track the query points through the video.

        Args:
            video: [B, 3, T, H, W] float in [-1, 1].
            queries: [B, N, 3] float rows (t, x, y): integer frame index t in [0, T) and a pixel position
                inside that frame (pixel centres at integer coordinates).

        Returns:
            tracks [B, T, N, 2] float32 pixel (x, y) and visible [B, T, N] bool, on ``video``'s device. At a
            query's own frame the track is the query point and it is visible. Positions where a point is not
            visible are the tracker's best guess and should not be scored.

        Raises:
            ValueError / TypeError: malformed video or queries (see :meth:`check_inputs`).
        """

    @staticmethod
    def check_inputs(video: Tensor, queries: Tensor) -> tuple[int, int, int, int, int]:
        """Validate a ``track`` call's arguments and return (B, C, T, H, W) of the video.

        Raises:
            TypeError: a non-tensor or a non-float tensor.
            ValueError: wrong shapes, non-finite values, a video outside [-1, 1], a query frame that is not an
                integer in [0, T), or a query position outside its frame.
        """
        for arg, value in (("video", video), ("queries", queries)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{arg} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{arg} must be a float tensor, got dtype {value.dtype}")
        if video.ndim != 5 or video.shape[1] != 3 or min(video.shape) < 1:
            raise ValueError(f"video must be [B, 3, T, H, W] with B, T, H, W >= 1, got {tuple(video.shape)}")
        B, C, T, H, W = video.shape
        if queries.ndim != 3 or queries.shape[0] != B or queries.shape[2] != 3 or queries.shape[1] < 1:
            raise ValueError(f"queries must be [B={B}, N >= 1, 3] rows (t, x, y), got {tuple(queries.shape)}")
        if queries.device != video.device:
            raise ValueError(f"queries must be on video's device {video.device}, got {queries.device}")
        if not bool(torch.isfinite(video).all()):
            raise ValueError("video contains NaN or inf")
        lo, hi = float(video.min()), float(video.max())
        if lo < -1.0 - _RANGE_SLACK or hi > 1.0 + _RANGE_SLACK:
            raise ValueError(
                f"video must be in [-1, 1] (DESIGN.md pixels), got values in [{lo:.3g}, {hi:.3g}]; "
                "map [0, 255] or [0, 1] videos to [-1, 1], clamp generated ones"
            )
        if not bool(torch.isfinite(queries).all()):
            raise ValueError("queries contain NaN or inf")
        t, xy = queries[..., 0], queries[..., 1:]
        bad = (t != t.round()) | (t < 0) | (t > T - 1)
        if bool(bad.any()):
            b, n = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"query frame indices must be integers in [0, {T - 1}] (T={T}); queries[{b}, {n}] has "
                f"t={float(t[b, n])}"
            )
        outside = ~_in_frame(xy, H, W)
        if bool(outside.any()):
            b, n = (int(i) for i in outside.nonzero()[0])
            x, y = (float(v) for v in xy[b, n])
            raise ValueError(
                f"query positions must lie in the frame, x in [-0.5, {W - 0.5}) and y in [-0.5, {H - 0.5}) "
                f"for {H}x{W} frames; queries[{b}, {n}] is at (x={x:g}, y={y:g})"
            )
        return B, C, T, H, W


# ---------------------------------------------------------------------------------------------------------
# pyramidal Lucas-Kanade
# ---------------------------------------------------------------------------------------------------------


def _windows(image: Tensor, xy: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear samples of ``image`` [B, C, h, w] in windows around ``xy`` [B, N, 2] -> [B, C, N, K].

    ``offsets`` [K, 2] are the window's pixel offsets. The last channel of ``image`` must be all ones; it is
    returned as a 0/1 weight: 1 where the sample is interpolated from four image pixels, 0 where it reaches
    past the outermost pixel centres (where zero padding or any border rule would make up the values).
    """
    h, w = image.shape[-2:]
    # align_corners=True puts pixel centres at integer coordinates, as in our track convention
    scale = xy.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = (xy * scale - 1.0)[:, :, None, :] + offsets * scale  # (B, N, K, 2) in [-1, 1] image units
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (B, C, N, K)
    return torch.cat([out[:, :-1], (out[:, -1:] > 1.0 - 1e-4).to(out.dtype)], 1)


def _textured(G: Tensor, threshold: float) -> Tensor:
    """Whether structure tensors [..., 3] (gxx, gxy, gyy) are well conditioned -> [...] bool.

    det(G) / trace(G) lies between lambda_min / 2 and lambda_min, a cheap stand-in for Shi-Tomasi's
    smaller eigenvalue (Shi & Tomasi 1994).
    """
    gxx, gxy, gyy = G.unbind(-1)
    return gxx * gyy - gxy * gxy > threshold * (gxx + gyy)


class LucasKanadeTracker(PointTracker):
    """Pyramidal Lucas-Kanade point tracker with forward-backward visibility (Bouguet 2001; Kalal et al. 2010).

    The video is turned grey (BT.601 luma) and into a Gaussian pyramid per frame. Each point is tracked frame to
    frame, forward from its query frame to the last frame and backward from it to the first. One step solves,
    coarse to fine, the Lucas-Kanade normal equations ``G eta = sum_window (I_a - I_b) grad I_a`` of a
    ``window`` x ``window`` patch with ``iterations`` Gauss-Newton updates per level (Bouguet's iterative
    scheme, the structure tensor G taken from the source frame). A step starts from the point's previous
    motion (constant velocity; zero at its query frame). Window pixels that fall off the image are left out
    of the sums, so that points near the border are not pulled towards the static border.

    Visibility: every step is checked by tracking the result back to the source frame (forward-backward
    error, Kalal et al. 2010); an error above ``fb_threshold`` pixels, a position leaving the frame, or a
    textureless window (G near singular: the motion is undetermined, Shi & Tomasi 1994) loses the point.
    Lucas-Kanade
    cannot re-detect a point, so a lost point stays not visible for the rest of that direction and its
    position is frozen at its last tracked one.

    All points of a batch are tracked together (vectorised over B and N); Python loops run over frames,
    pyramid levels and iterations only: about 0.3 s of CPU time (one thread) for 300 points on a
    64x64 x 17-frame video.

    Args:
        levels: pyramid levels (1 = no pyramid). Levels whose image would be smaller than the window are
            skipped, so 16x16 frames with ``window=9`` use one level. Each level doubles the largest motion
            that can be followed, roughly ``window // 2 * (2**levels - 1)`` pixels per frame.
        window: odd side of the square integration window in pixels (at every level).
        iterations: Gauss-Newton updates per level; a level stops early once every update is below 0.01 px.
        fb_threshold: largest forward-backward error (pixels, per frame step) of a visible point;
            ``math.inf`` disables the check.
    """

    name = "lk"
    _MIN_TEXTURE = 1e-6  # det(G) / trace(G) per window pixel (grey in [0, 1], ~lambda_min) below: flat patch
    _CONVERGED = 1e-2  # px: a level's iterations stop once every update is smaller

    def __init__(self, *, levels: int = 3, window: int = 9, iterations: int = 10, fb_threshold: float = 1.5):
        for arg, value, least in (("levels", levels, 1), ("window", window, 3), ("iterations", iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{arg} must be an int >= {least}, got {value!r}")
        if window % 2 == 0:
            raise ValueError(f"window must be odd (a patch centred on the point), got {window}")
        if isinstance(fb_threshold, bool) or not isinstance(fb_threshold, (int, float)) or not fb_threshold > 0:
            raise ValueError(f"fb_threshold must be a number > 0 (pixels; math.inf disables), got {fb_threshold!r}")
        self.levels, self.window, self.iterations = levels, window, iterations
        self.fb_threshold = float(fb_threshold)
        r = torch.arange(window, dtype=torch.float32) - window // 2
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self._offsets = torch.stack([dx.flatten(), dy.flatten()], -1)  # (K, 2), K = window^2

    def __repr__(self) -> str:
        return (
            f"LucasKanadeTracker(levels={self.levels}, window={self.window}, iterations={self.iterations}, "
            f"fb_threshold={self.fb_threshold})"
        )

    @torch.no_grad()
    def track(self, video: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Track ``queries`` [B, N, 3] (t, x, y) through ``video`` [B, 3, T, H, W] in [-1, 1].

        Returns:
            tracks [B, T, N, 2] float32 pixels and visible [B, T, N] bool (see :meth:`PointTracker.track`).
        """
        B, _, T, H, W = self.check_inputs(video, queries)
        luma = video.new_tensor(_LUMA).view(1, 3, 1, 1, 1)
        grey = ((video.float() + 1.0) * 0.5 * luma).sum(1)  # (B, T, H, W) in [0, 1]
        pyramid = self._pyramid(grey)
        q = queries.float()
        start, xy = q[..., 0].long(), q[..., 1:]  # (B, N), (B, N, 2)
        fwd, fwd_vis = self._sweep(pyramid, list(range(T)), start, xy, (H, W))
        bwd, bwd_vis = self._sweep(pyramid, list(range(T - 1, -1, -1)), start, xy, (H, W))
        before = torch.arange(T, device=video.device)[None, :, None] < start[:, None, :]  # (B, T, N)
        tracks = torch.where(before[..., None], bwd, fwd)  # (B, T, N, 2)
        visible = torch.where(before, bwd_vis, fwd_vis)  # (B, T, N)
        return tracks, visible

    def _pyramid(self, grey: Tensor) -> list[Tensor]:
        """[B, T, H, W] grey -> per level [B, T, 4, H_l, W_l] holding (I, dI/dx, dI/dy, 1), finest first."""
        B = grey.shape[0]
        image = rearrange(grey, "b t h w -> (b t) 1 h w")
        out = []
        for level in range(self.levels):
            if level > 0:
                if min(image.shape[-2:]) // 2 < self.window:
                    break
                # Gaussian anti-aliasing, then 2x2 averaging: coarse pixel centres sit at x_l = (x + 0.5) / 2 - 0.5
                image = F.avg_pool2d(KF.gaussian_blur2d(image, (5, 5), (1.0, 1.0)), 2)  # (BT, 1, H_l, W_l)
            grad = KF.spatial_gradient(image, mode="sobel", normalized=True)[:, 0]  # (BT, 2, H_l, W_l) per pixel
            feats = torch.cat([image, grad, torch.ones_like(image)], 1)  # (BT, 4, H_l, W_l)
            out.append(rearrange(feats, "(b t) c h w -> b t c h w", b=B))
        return out

    def _flow(self, pyramid: list[Tensor], a: int, b: int, xy: Tensor, guess: Tensor) -> tuple[Tensor, Tensor]:
        """Track ``xy`` [B, N, 2] from frame a to frame b, starting at ``guess`` [B, N, 2] in frame b.

        Returns the position in frame b [B, N, 2] and whether the window was textured [B, N] bool.
        """
        offsets = self._offsets.to(xy.device)
        threshold = self._MIN_TEXTURE * offsets.shape[0]
        textured = torch.ones(xy.shape[:-1], dtype=torch.bool, device=xy.device)
        for level in reversed(range(len(pyramid))):
            s = 2.0**level
            src = (xy + 0.5) / s - 0.5  # (B, N, 2) at this level
            dst = (guess + 0.5) / s - 0.5
            I_a, gx, gy, w_a = _windows(pyramid[level][:, a], src, offsets).unbind(1)  # (B, N, K) each
            grad = torch.stack([gx, gy], -2)  # (B, N, 2, K)
            moments = torch.stack([gx * gx, gx * gy, gy * gy], -2)  # (B, N, 3, K): entries of G per pixel
            textured &= _textured((w_a[..., None, :] * moments).sum(-1), threshold)
            target = pyramid[level][:, b, ::3]  # (B, 2, H_l, W_l): I and the ones channel
            for _ in range(self.iterations):
                I_b, w_b = _windows(target, dst, offsets).unbind(1)  # (B, N, K) each
                # window pixels off either image carry no information about the motion
                weight = w_a * w_b
                G = (weight[..., None, :] * moments).sum(-1)  # (B, N, 3): gxx, gxy, gyy
                bx, by = ((weight * (I_a - I_b))[..., None, :] * grad).sum(-1).unbind(-1)  # (B, N) each
                gxx, gxy, gyy = G.unbind(-1)
                det = gxx * gyy - gxy * gxy
                inv_det = torch.where(_textured(G, threshold), 1.0 / det, 0.0)  # flat windows do not move
                eta = torch.stack([gyy * bx - gxy * by, gxx * by - gxy * bx], -1) * inv_det[..., None]  # G^-1 b
                dst = dst + eta
                if float(eta.abs().max()) < self._CONVERGED:
                    break
            guess = (dst + 0.5) * s - 0.5
        return guess, textured

    def _sweep(
        self, pyramid: list[Tensor], frames: list[int], start: Tensor, xy: Tensor, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Track frame to frame along ``frames`` (forward or reversed order); each point joins at its query.

        Returns tracks [B, T, N, 2] and visible [B, T, N] indexed by frame; entries a point never reached
        (frames before its query in this order) are its query position and not visible.
        """
        B, N = start.shape
        T = len(frames)
        tracks = xy[:, None].repeat(1, T, 1, 1)  # (B, T, N, 2)
        visible = torch.zeros(B, T, N, dtype=torch.bool, device=xy.device)
        pos, alive = xy.clone(), torch.zeros(B, N, dtype=torch.bool, device=xy.device)
        velocity = torch.zeros_like(xy)  # (B, N, 2) px per frame of the last step, the next step's prior
        for i, f in enumerate(frames):
            if i > 0 and bool(alive.any()):
                prev = frames[i - 1]
                nxt, textured = self._flow(pyramid, prev, f, pos, pos + velocity)
                back, _ = self._flow(pyramid, f, prev, nxt, nxt - velocity)  # same prior, no peeking at pos
                consistent = (back - pos).norm(dim=-1) <= self.fb_threshold  # Kalal et al. 2010
                alive = alive & textured & consistent & _in_frame(nxt, *size)
                velocity = torch.where(alive[..., None], nxt - pos, 0.0)
                pos = torch.where(alive[..., None], nxt, pos)  # a lost point keeps its last tracked position
            joins = start == f
            pos = torch.where(joins[..., None], xy, pos)
            velocity = torch.where(joins[..., None], 0.0, velocity)
            alive = alive | joins
            tracks[:, f], visible[:, f] = pos, alive
        return tracks, visible


# ---------------------------------------------------------------------------------------------------------
# colour / instance templates: uniformly coloured objects in a grey world
# ---------------------------------------------------------------------------------------------------------

COLOR_MOTIONS = ("translation", "similarity", "affine", "sphere")


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of [B, C, H, W] with standard deviation ``sigma`` pixels (3-sigma kernel)."""
    k = 2 * math.ceil(3.0 * sigma) + 1
    return KF.gaussian_blur2d(x, (k, k), (sigma, sigma))


def _pixel_grid(height: int, width: int, device: torch.device) -> Tensor:
    """[H * W, 2] pixel-centre coordinates (x, y) in row-major order."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def _label_components(mask: Tensor) -> Tensor:
    """Connected components (8-connectivity) of bool masks [M, H, W] -> int64 labels [M, H, W].

    0 outside the mask; inside, every pixel of a component carries the component's largest flat pixel index + 1
    within its own slice (labels repeat across slices). Max pooling spreads that label over its component, one
    pixel ring per pass, so the loop ends after as many passes as the longest path inside a component.
    """
    M, H, W = mask.shape
    # float32 max pooling: flat indices up to H * W are exact below 2^24 pixels per frame
    index = torch.arange(1, H * W + 1, device=mask.device, dtype=torch.float32).view(1, 1, H, W)
    inside = mask[:, None].float()  # (M, 1, H, W)
    labels = index * inside
    for _ in range(H * W):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels[:, 0].long()


def _skew(w: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrices: skew(w) @ v = w x v."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2)


class ColorObjectTracker(PointTracker):
    """Tracks points on uniformly coloured objects by colour segmentation and region alignment.

    Made for wmgen's simulated worlds (uniformly coloured objects with a fine body texture on a grey checkerboard
    ground under a pale sky), where Lucas-Kanade loses points: objects move several pixels per frame, tumble,
    and leave the frame. Here an object is found again in every frame by its colour, so errors do not pile up
    the way frame-to-frame point tracking lets them. Each query goes through four stages:

    1. **Colour.** Every pixel's RGB direction ``rgb / |rgb|`` (unchanged by Lambert shading, a common factor) is
       compared with the video's dominant direction (the per-channel median over all pixels: the ground). The
       difference vector's length, the *contrast* (about the angle in radians), separates objects from the
       ground and its direction says which way the colour departs from it: saturated objects have contrast
       0.25-0.8, the worlds' white objects 0.02-0.04 (they are warmer than the bluish-grey ground), the ground
       itself < 0.01. A pixel is *coloured* where its contrast exceeds ``min_contrast`` and ``noise_factor``
       times the video's median contrast (the ground's colour noise), and its brightest channel ``min_value``.
       A query's signature is the mean direction of the coloured pixels in the ``(2 window + 1)^2`` window
       around it (in its query frame) within ``color_tolerance`` radians of the coloured pixel nearest to the
       query. Queries with signatures within tolerance share a colour mask.
    2. **Region.** The object's region in a frame is a connected component (8-connected after closing one-pixel
       gaps) of the pixels within ``color_tolerance`` of the signature (anti-aliased rim pixels, mostly ground,
       fall out, which keeps the outline sharp): in the query frame, the component under the query; in every
       other frame, going forward and backward from the query frame, the component with at least
       ``min_pixels`` pixels whose centroid is nearest to the centroid predicted at constant velocity, if within
       ``search_radius`` pixels per frame since the object was last seen. Position separates two objects of
       similar colour, and an object is found again after it was lost (occluded or out of view).
    3. **Motion.** Between consecutive frames where the object was found, a ``motion`` model is fitted by
       Gauss-Newton with Marquardt damping (Lucas & Kanade 1981; Baker & Matthews 2004) to two blurred
       channels of the region, its silhouette and its texture (luma over its mean on the region shrunk by a
       pixel, weighted by ``texture_weight``), coarse to fine, starting from the centroid's displacement so that
       fast objects need no pyramid. Pixels next to another object (which may be covering this one) or
       warped out of the frame are left out; an object mostly hidden or out of view gets only its translation
       fitted. The steps are chained from the query frame and carry the query point along. Models:
       ``"translation"``; ``"similarity"`` (plus scale and in-plane rotation); ``"affine"``; ``"sphere"``: the
       region is the image of a sphere of the region's area, a query point sits on its visible half, and a step
       is a 3D rotation plus image translation and scale (orthographic), which follows rolling and tumbling
       objects better than the 2D models.
    4. **Snap.** With ``snap``, a point that the chain carries off its object's region (by more than 0.75 px,
       inside the frame) is put on the nearest pixel of the region: a point on an object stays on it.

    Visibility: a point is visible where its object's region was found (at least ``min_pixels`` pixels) and the
    point lies inside the frame; where the object was not found the point holds its last position. A point that
    turns to the far side of its object cannot be told apart in 2D and stays visible.

    Queries without a coloured pixel in their window (on the ground or the sky) are background queries: their
    track stays at the query position, visible in the frames where the pixel's colour is still within
    ``background_tolerance`` (max abs RGB difference in [0, 1]) of its colour in the query frame, i.e. not
    covered by a passing object. A static background is right for wmgen's fixed cameras.

    Measured on ground-truth renders (``outputs/tiny/data/val``, 64x64 x 17 frames, first 64 clips, every stored
    track visible in frame 0 queried there, 71k scored pairs): mean EPE 3.4 px with ``"sphere"`` (3.5
    ``"similarity"``, 3.7 ``"affine"``, 4.3 ``"translation"``) against 8.8 px for :class:`LucasKanadeTracker`
    and 14.1 px for standing still. Points that stay in view are followed to 2.4 px; points that turn to an
    object's far side and come back (30% of the scored pairs) to 5.6 px, the part a 2D tracker cannot see.
    With the videos blurred (sigma 1 px) and noised (sigma 0.03), 4.4 px (16 clips; LK 7.9). Limits: errors
    made while an object is mostly covered stay in its chain; achromatic objects on an achromatic ground are
    background. 0.3-0.6 s per clip on one CPU thread.

    Python loops run over the batch, colour groups, objects x frames (region selection) and frame steps (the
    alignment of all objects of a video at one step is batched); pixels and points are vectorised.

    Args:
        min_contrast: least contrast (radians) from the video's dominant colour for a pixel to be coloured.
            The worlds' ground stays below 0.01 and white objects reach 0.02.
        noise_factor: a coloured pixel's contrast must also exceed this times the video's median contrast
            (0.003 in clean renders, ~0.05 with pixel noise of 0.03), so that noise on the ground is not colour.
        min_value: least brightest channel, in [0, 1), for a pixel to be coloured (the colour of near-black
            pixels is noise).
        color_tolerance: angle (radians) within which two colour directions match; the worlds' named colours
            lie >= 0.3 apart except brown and orange (0.1, which position tells apart).
        window: half side (pixels) of the square window around a query searched for its object's colour.
        min_pixels: fewest pixels of a region for its object to be visible in a frame.
        search_radius: largest centroid jump (pixels per frame since last seen) when finding a region again.
        motion: model of a region's motion between frames, one of ``COLOR_MOTIONS``.
        iterations: Gauss-Newton iterations per blur level (3 levels: sigma 2, 1 and 0.5 px).
        texture_weight: weight of the texture channel against the silhouette channel (0: silhouette only).
        snap: keep points on their object's region (see above).
        background_tolerance: largest max-abs RGB change, in [0, 1], of a background query's pixel for it to
            count as still visible.
        smooth: Gaussian blur (sigma, pixels; 0 = none) of the video before colours are classified, against
            pixel noise in generated videos (0.7 lowered the noisy-video error above from 4.4 to 4.0 px).
        device: where the tracking runs (inputs are moved there, results back to the video's device); None:
            on the video's device.

    Raises:
        ValueError: an argument out of range or an unknown ``motion``.
        TypeError: ``snap`` not a bool.
    """

    name = "color"
    _SIGMAS = (2.0, 1.0, 0.5)  # px: coarse-to-fine blur levels of the alignment (wide basin, then detail)
    _SUPPORT = 2  # px: the source region is grown by this much so that its silhouette's edge counts
    _SNAP_DISTANCE = 0.75  # px: points farther than this from every region pixel centre are put on the region
    _DAMPING = 0.1  # Marquardt: the normal matrix's diagonal is scaled by 1 + this (steadier steps)
    _MAX_SHIFT = 1.0  # px: largest update of a translation or affine entry per iteration
    _MAX_TURN = 0.2  # rad: largest rotation update per iteration
    _MAX_ZOOM = 0.1  # largest log-scale update per iteration
    _CONVERGED = 1e-2  # px: iterations of a level stop once no support pixel moves more than this
    _MIN_SEEN = 0.8  # fraction of an object's support that must stay usable to fit more than its translation

    def __init__(
        self,
        *,
        min_contrast: float = 0.015,
        noise_factor: float = 4.0,
        min_value: float = 0.05,
        color_tolerance: float = 0.2,
        window: int = 2,
        min_pixels: int = 4,
        search_radius: float = 12.0,
        motion: str = "sphere",
        iterations: int = 10,
        texture_weight: float = 10.0,
        snap: bool = True,
        background_tolerance: float = 0.1,
        smooth: float = 0.0,
        device: str | torch.device | None = None,
    ):
        for arg, value, lo, hi in (
            ("min_contrast", min_contrast, 0.0, 2.0),
            ("min_value", min_value, 0.0, 1.0),
            ("color_tolerance", color_tolerance, 0.0, math.pi),
            ("background_tolerance", background_tolerance, 0.0, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value < hi:
                raise ValueError(f"{arg} must be a number in ({lo:g}, {hi:g}), got {value!r}")
        for arg, value, least in (("window", window, 0), ("min_pixels", min_pixels, 1), ("iterations", iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{arg} must be an int >= {least}, got {value!r}")
        for arg, value in (
            ("noise_factor", noise_factor),
            ("search_radius", search_radius),
            ("texture_weight", texture_weight),
            ("smooth", smooth),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{arg} must be a finite number >= 0, got {value!r}")
        if search_radius <= 0:
            raise ValueError(f"search_radius must be > 0 (pixels per frame), got {search_radius!r}")
        if motion not in COLOR_MOTIONS:
            raise ValueError(f"motion must be one of {list(COLOR_MOTIONS)}, got {motion!r}")
        if not isinstance(snap, bool):
            raise TypeError(f"snap must be a bool, got {type(snap).__name__}")
        self.min_contrast, self.noise_factor = float(min_contrast), float(noise_factor)
        self.min_value = float(min_value)
        self.color_tolerance, self.window, self.min_pixels = float(color_tolerance), window, min_pixels
        self.search_radius, self.motion, self.iterations = float(search_radius), motion, iterations
        self.texture_weight, self.snap = float(texture_weight), snap
        self.background_tolerance, self.smooth = float(background_tolerance), float(smooth)
        try:
            self.device = None if device is None else torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be None or a torch device ('cpu', 'cuda:0'), got {device!r}") from err

    def __repr__(self) -> str:
        return (
            f"ColorObjectTracker(min_contrast={self.min_contrast}, noise_factor={self.noise_factor}, "
            f"min_value={self.min_value}, "
            f"color_tolerance={self.color_tolerance}, window={self.window}, min_pixels={self.min_pixels}, "
            f"search_radius={self.search_radius}, motion={self.motion!r}, iterations={self.iterations}, "
            f"texture_weight={self.texture_weight}, snap={self.snap}, "
            f"background_tolerance={self.background_tolerance}, smooth={self.smooth}, device={self.device})"
        )

    @torch.no_grad()
    def track(self, video: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Track ``queries`` [B, N, 3] (t, x, y) through ``video`` [B, 3, T, H, W] in [-1, 1].

        Returns:
            tracks [B, T, N, 2] float32 pixels and visible [B, T, N] bool (see :meth:`PointTracker.track`).
        """
        B = self.check_inputs(video, queries)[0]
        where = self.device or video.device
        rgb = ((video.to(where).float() + 1.0) * 0.5).clamp(0.0, 1.0)  # (B, 3, T, H, W) in [0, 1]
        out = [self._track_one(rgb[b], queries[b].to(where).float()) for b in range(B)]  # objects differ per video
        tracks = torch.stack([o[0] for o in out]).to(video.device)  # (B, T, N, 2)
        return tracks, torch.stack([o[1] for o in out]).to(video.device)  # (B, T, N)

    # -- one video: colours, objects, their motion ---------------------------------------------------------

    def _track_one(self, rgb: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """rgb [3, T, H, W] in [0, 1], queries [N, 3] -> tracks [T, N, 2], visible [T, N]."""
        _, T, H, W = rgb.shape
        start, xy = queries[:, 0].long(), queries[:, 1:]  # (N,), (N, 2)
        tracks = xy[None].repeat(T, 1, 1)  # (T, N, 2): background queries stay put
        visible = self._background_visibility(rgb, start, xy)  # (T, N)

        # 1. colour: contrast and direction of every pixel's colour against the video's dominant colour
        if self.smooth > 0:
            rgb = rearrange(_blur(rearrange(rgb, "c t h w -> t c h w"), self.smooth), "t c h w -> c t h w")
        unit = rgb / rgb.norm(dim=0, keepdim=True).clamp_min(1e-6)  # (3, T, H, W) RGB directions: shading-free
        reference = unit.flatten(1).median(1).values  # (3,) the dominant colour: the ground
        reference = (reference / reference.norm().clamp_min(1e-6)).view(3, 1, 1, 1)
        offset = unit - reference  # (3, T, H, W)
        contrast = offset.norm(dim=0)  # (T, H, W), about the angle from the dominant colour
        direction = offset / contrast.clamp_min(1e-6)  # (3, T, H, W) which way each colour departs from it
        # most pixels are ground, so the median contrast measures the video's colour noise (0.003 in clean
        # renders, ~0.05 with pixel noise of 0.03): a colour must stand out of it as well
        threshold = max(self.min_contrast, self.noise_factor * float(contrast.median()))
        coloured = (contrast > threshold) & (rgb.amax(0) > self.min_value)  # (T, H, W)
        signature, has_colour = self._signatures(direction, coloured, start, xy)  # (N, 3), (N,)
        if not bool(has_colour.any()):
            return tracks, visible
        group, group_dirs = self._group(signature, has_colour)  # (N,), (G, 3)

        # 2. regions: components of each group's colour, closed by one pixel so that specks and anti-aliased
        # seams do not split an object
        cos = torch.einsum("gc,cthw->gthw", group_dirs, direction)  # (G, T, H, W)
        # a rim pixel mixed mostly with the ground points elsewhere and drops out: the outline stays sharp
        match = coloured[None] & (cos > math.cos(self.color_tolerance))  # (G, T, H, W)
        closed = F.max_pool2d(match.flatten(0, 1)[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
        labels = _label_components(closed).view(match.shape) * match  # (G, T, H, W), 0 off the colour
        first = self._first_labels(labels, group, start, xy)  # (N,) each query's component, 0 = none found
        on_object = has_colour & (first > 0)
        if not bool(on_object.any()):
            return tracks, visible
        idx = on_object.nonzero()[:, 0]  # (M,) queries on objects
        keys = torch.stack([group[idx], start[idx], first[idx]], -1)  # (M, 3): one object instance per key
        units, unit_of = torch.unique(keys, dim=0, return_inverse=True)  # (U, 3), (M,)
        chosen = self._follow(labels, units)  # (U, T) the component of each unit per frame, 0 = not found
        kept, chain_of_unit = torch.unique(self._share(units, chosen), return_inverse=True)  # (C,), (U,)
        chain = chain_of_unit[unit_of]  # (M,) the chain that carries each point
        groups = units[kept, 0]  # (C,)
        regions = labels[groups] == chosen[kept][..., None, None]  # (C, T, H, W)
        present = chosen[kept] > 0  # (C, T)

        # 3. motion: each chain's pose per frame; a point is fixed to its object's body at its own query frame
        luma = (rgb * rgb.new_tensor(_LUMA).view(3, 1, 1, 1)).sum(0)  # (T, H, W)
        others = self._others(unit, reference.view(3), coloured, group_dirs[groups])  # (C, T, H, W)
        centre, linear, rotation = self._poses(luma, regions, others, present, units[kept, 1])  # (C, T, ...)
        anchor, pts = start[idx], xy[idx]  # (M,), (M, 2)
        u = torch.linalg.solve(linear[chain, anchor], (pts - centre[chain, anchor])[..., None])[..., 0]  # (M, 2)
        body = rotation[chain, anchor].transpose(-1, -2) @ torch.cat([u, self._depth(u)[:, None]], -1)[..., None]
        Y = (rotation[chain] @ body[:, None])[..., 0]  # (M, T, 3) the body point in every frame
        moved = centre[chain] + (linear[chain] @ Y[..., :2, None])[..., 0]  # (M, T, 2)
        moved, seen = moved.transpose(0, 1), present[chain].T  # (T, M, 2), (T, M)

        # 4. snap
        if self.snap:
            moved = self._snap(moved, regions, seen, chain, anchor)
        moved[anchor, torch.arange(len(idx), device=xy.device)] = pts  # the query frame returns the query
        tracks[:, idx] = moved
        visible[:, idx] = seen & _in_frame(moved, H, W)
        return tracks, visible

    @staticmethod
    def _share(units: Tensor, chosen: Tensor) -> Tensor:
        """[U] the unit whose chain carries each unit's points: an object queried in several frames is followed
        once, so a unit whose query-frame component an earlier unit's chain already found uses that chain."""
        serve = torch.arange(len(units), device=units.device)
        for u in range(1, len(units)):
            g, a, label = units[u].tolist()
            own = serve[:u] == serve.new_tensor(range(u))  # earlier units that run their own chain
            same = ((units[:u, 0] == g) & (chosen[:u, a] == label) & own).nonzero()
            if len(same):
                serve[u] = same[0, 0]
        return serve

    def _others(self, unit: Tensor, reference: Tensor, coloured: Tensor, dirs: Tensor) -> Tensor:
        """[C, T, H, W] bool: pixels of (or next to) another object than each chain's, where it may cover it.

        Those are coloured pixels of another hue, grown by a pixel. The hue is the direction across the
        reference, which mixing a colour with the ground leaves unchanged, so that an object's own anti-aliased
        rim is not taken for another object.

        Args:
            unit: [3, T, H, W] RGB directions. reference: [3] the dominant one. coloured: [T, H, W] bool.
            dirs: [C, 3] each chain's colour direction (``unit - reference``, normalised).
        """
        across = unit - torch.einsum("cthw,c->thw", unit, reference)[None] * reference.view(3, 1, 1, 1)
        hues = F.normalize(dirs - (dirs @ reference)[:, None] * reference, dim=-1)  # (C, 3)
        cos = torch.einsum("gc,cthw->gthw", hues, F.normalize(across, dim=0))  # (C, T, H, W)
        others = (coloured & (cos < math.cos(self.color_tolerance))).flatten(0, 1)[:, None].float()
        return F.max_pool2d(others, 3, stride=1, padding=1).view(cos.shape) > 0

    def _background_visibility(self, rgb: Tensor, start: Tensor, xy: Tensor) -> Tensor:
        """[T, N] bool: the colour at each query's (nearest) pixel is within tolerance of its query-frame colour."""
        _, T, H, W = rgb.shape
        ix = xy[:, 0].round().long().clamp(0, W - 1)
        iy = xy[:, 1].round().long().clamp(0, H - 1)
        colour = rgb[:, :, iy, ix]  # (3, T, N)
        own = colour.gather(1, start[None, None].expand(3, 1, -1))  # (3, 1, N)
        return (colour - own).abs().amax(0) <= self.background_tolerance  # (T, N)

    def _window(self, xy: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel columns, rows [N, K] of the window around each query (clamped) and whether inside the frame."""
        r = torch.arange(-self.window, self.window + 1, device=xy.device)
        oy, ox = torch.meshgrid(r, r, indexing="ij")
        px = xy[:, :1].round().long() + ox.flatten()  # (N, K)
        py = xy[:, 1:].round().long() + oy.flatten()  # (N, K)
        inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        return px.clamp(0, width - 1), py.clamp(0, height - 1), inside

    def _signatures(self, direction: Tensor, coloured: Tensor, start: Tensor, xy: Tensor) -> tuple[Tensor, Tensor]:
        """Per query: mean colour direction [N, 3] of the matching coloured pixels of its window, and whether any."""
        px, py, inside = self._window(xy, *coloured.shape[-2:])
        t = start[:, None].expand_as(px)
        ok = coloured[t, py, px] & inside  # (N, K)
        dirs = direction[:, t, py, px]  # (3, N, K)
        dist = (px - xy[:, :1]) ** 2 + (py - xy[:, 1:]) ** 2  # (N, K) squared distance to the query
        nearest = torch.where(ok, dist, math.inf).argmin(1)  # (N,)
        anchor = dirs.gather(2, nearest[None, :, None].expand(3, -1, 1))  # (3, N, 1)
        same = ok & ((dirs * anchor).sum(0) > math.cos(self.color_tolerance))  # (N, K)
        mean = (dirs * same).sum(-1).T  # (N, 3)
        return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-6), ok.any(1)

    def _group(self, signature: Tensor, has_colour: Tensor) -> tuple[Tensor, Tensor]:
        """Leader clustering of signatures: group per query [N] (-1 without colour), group directions [G, 3]."""
        group = torch.full_like(has_colour, -1, dtype=torch.long)
        left = has_colour.clone()
        dirs = []
        while bool(left.any()):  # one pass per colour group (a handful)
            lead = int(left.nonzero()[0, 0])
            members = left & ((signature @ signature[lead]) > math.cos(self.color_tolerance))
            mean = signature[members].sum(0)
            group[members] = len(dirs)
            dirs.append(mean / mean.norm().clamp_min(1e-6))
            left &= ~members
        return group, torch.stack(dirs)

    def _first_labels(self, labels: Tensor, group: Tensor, start: Tensor, xy: Tensor) -> Tensor:
        """[N] label of each query's object in its query frame (nearest labelled pixel of its window; 0: none)."""
        px, py, inside = self._window(xy, *labels.shape[-2:])
        g = group.clamp_min(0)[:, None].expand_as(px)
        lab = labels[g, start[:, None].expand_as(px), py, px] * inside  # (N, K)
        dist = torch.where(lab > 0, (px - xy[:, :1]) ** 2 + (py - xy[:, 1:]) ** 2, math.inf)
        best = lab.gather(1, dist.argmin(1, keepdim=True))[:, 0]
        return torch.where(group >= 0, best, 0)

    def _follow(self, labels: Tensor, units: Tensor) -> Tensor:
        """Each unit's region per frame, found forward and backward from its query frame.

        Args:
            labels: [G, T, H, W] component labels per colour group.
            units: [U, 3] rows (group, query frame, label in the query frame).

        Returns:
            [U, T] the label of the unit's component in every frame; 0 where none of >= min_pixels pixels was
            near enough.
        """
        G, T, H, W = labels.shape
        U = units.shape[0]
        grid = _pixel_grid(H, W, labels.device)  # (HW, 2)
        stats: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

        def components(g: int, t: int) -> tuple[Tensor, Tensor]:
            """(labels [k], centroids [k, 2]) of group g's components of >= min_pixels pixels in frame t."""
            if (g, t) not in stats:
                ids, inverse, counts = torch.unique(labels[g, t], return_inverse=True, return_counts=True)
                sums = torch.zeros(len(ids), 2, device=labels.device).index_add_(0, inverse.flatten(), grid)
                keep = (ids > 0) & (counts >= self.min_pixels)
                stats[g, t] = (ids[keep], sums[keep] / counts[keep, None])
            return stats[g, t]

        chosen = torch.zeros(U, T, dtype=torch.long, device=labels.device)
        for u, (g, a, label) in enumerate(units.tolist()):
            chosen[u, a] = label  # the query says where its object is, whatever its size
            origin = grid[(labels[g, a] == label).flatten()].mean(0)
            for step in (1, -1):
                last, centre, velocity = a, origin, torch.zeros_like(origin)
                for t in range(a + step, T if step > 0 else -1, step):
                    ids, centroids = components(g, t)
                    if len(ids) == 0:
                        continue
                    gap = abs(t - last)
                    distance = (centroids - (centre + velocity * gap)).norm(dim=-1)  # (k,)
                    best = int(distance.argmin())
                    if float(distance[best]) > self.search_radius * gap:
                        continue
                    chosen[u, t] = ids[best]
                    velocity = (centroids[best] - centre) / gap
                    last, centre = t, centroids[best]
        return chosen

    def _poses(
        self, luma: Tensor, regions: Tensor, others: Tensor, present: Tensor, anchors: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each object's pose in every frame, chained by :meth:`_fit` forward and backward from its anchor frame.

        A pose is a centre c [2], a linear map L [2, 2] (the radius times the identity except for ``"affine"``)
        and a rotation R [3, 3] (about the view axis only for ``"similarity"``; the identity for translation and
        affine). A body point X (``u = L^-1 (p - c)`` with depth ``z(u)`` on the sphere, 0 otherwise, turned
        back by R) is seen at ``c + L (R X)_xy``. Frames where the object was not found keep the last pose.

        Args:
            luma: [T, H, W] in [0, 1]. regions: [C, T, H, W] bool. others: [C, T, H, W] bool, pixels of (or next
                to) other coloured things. present: [C, T] bool.
            anchors: [C] frames where the chains start (the region's centroid and radius give the first pose).

        Returns:
            centre [C, T, 2], linear [C, T, 2, 2], rotation [C, T, 3, 3].
        """
        C, T, H, W = regions.shape
        dev = luma.device
        every = torch.arange(C, device=dev)
        first = regions[every, anchors].flatten(1).float()  # (C, HW)
        area = first.sum(1).clamp_min(1.0)
        c0 = first @ _pixel_grid(H, W, dev) / area[:, None]  # (C, 2)
        L0 = torch.eye(2, device=dev) * (area / math.pi).sqrt().clamp_min(1.0)[:, None, None]  # (C, 2, 2)
        centre, linear = c0[:, None].repeat(1, T, 1), L0[:, None].repeat(1, T, 1, 1)  # (C, T, 2), (C, T, 2, 2)
        rotation = torch.eye(3, device=dev).repeat(C, T, 1, 1)  # (C, T, 3, 3)
        for step in (1, -1):
            c, L, R = c0.clone(), L0.clone(), torch.eye(3, device=dev).repeat(C, 1, 1)
            last = anchors.clone()
            for k in range(1, T):
                f = anchors + step * k
                inside = (f >= 0) & (f < T)
                if not bool(inside.any()):
                    break
                f = f.clamp(0, T - 1)
                fit = (inside & present[every, f]).nonzero()[:, 0]  # the objects seen in their k-th frame
                if len(fit):
                    s, d = last[fit], f[fit]
                    c[fit], L[fit], turn = self._fit(
                        luma[s],
                        regions[fit, s],
                        others[fit, s],
                        luma[d],
                        regions[fit, d],
                        others[fit, d],
                        c[fit],
                        L[fit],
                    )
                    R[fit] = turn @ R[fit]
                    last[fit] = d
                i = inside.nonzero()[:, 0]
                centre[i, f[i]], linear[i, f[i]], rotation[i, f[i]] = c[i], L[i], R[i]
        return centre, linear, rotation

    def _depth(self, u: Tensor) -> Tensor:
        """[...] z of body coordinates u [..., 2]: on the unit sphere's visible half for ``"sphere"``, else 0."""
        if self.motion != "sphere":
            return torch.zeros_like(u[..., 0])
        return (1.0 - (u * u).sum(-1)).clamp_min(0.0).sqrt()

    def _fit(
        self,
        src: Tensor,
        src_region: Tensor,
        src_other: Tensor,
        dst: Tensor,
        dst_region: Tensor,
        dst_other: Tensor,
        centre: Tensor,
        linear: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fit one step of ``self.motion`` from source to destination frames, batched over P objects.

        Gauss-Newton with Marquardt damping on the blurred silhouette and texture of the source region's pixels
        (grown by ``_SUPPORT``), warped into the destination (forward-additive Lucas-Kanade, Baker & Matthews
        2004), coarse to fine over ``_SIGMAS``. A source pixel x has body coordinates S = (u, z(u)),
        u = linear^-1 (x - centre); it lands at x' = shift + A (Q S)_xy. Starts from A = linear, Q = I and the
        shift of the region centroids.

        Only pixels whose look this object decides count: pixels next to another object (whose outline cuts
        this one's silhouette where it covers it) in either frame, and pixels warped out of the frame, are left
        out. When under ``_MIN_SEEN`` of the support is left (the object is mostly hidden or out of view), its
        outline no longer tells its scale and turn: only the translation is fitted.

        Args:
            src, dst: [P, H, W] luma. src_region, dst_region: [P, H, W] bool.
            src_other, dst_other: [P, H, W] bool, pixels of (or next to) other coloured things.
            centre: [P, 2] and linear: [P, 2, 2], the object's pose in the source frame.

        Returns:
            the pose in the destination frame, centre [P, 2] and linear [P, 2, 2], and the rotation Q [P, 3, 3].
        """
        P, H, W = src.shape
        dev = src.device
        grid = _pixel_grid(H, W, dev)
        rs, rd = src_region.flatten(1).float(), dst_region.flatten(1).float()  # (P, HW)
        moved = rd @ grid / rd.sum(1).clamp_min(1.0)[:, None] - rs @ grid / rs.sum(1).clamp_min(1.0)[:, None]
        support = F.max_pool2d(src_region[:, None].float(), 2 * self._SUPPORT + 1, 1, self._SUPPORT).flatten(1) > 0
        K = int(support.sum(1).max())
        order = torch.sort(support.float(), dim=1, descending=True, stable=True).indices[:, :K]  # (P, K)
        valid = torch.arange(K, device=dev)[None] < support.sum(1, keepdim=True)  # (P, K) padding is invalid
        valid &= ~src_other.flatten(1).gather(1, order)
        enough = valid.sum(1).clamp_min(1) * self._MIN_SEEN  # (P,) support pixels needed to fit scale and turn
        u = torch.linalg.solve(linear[:, None], (grid[order] - centre[:, None])[..., None])[..., 0]  # (P, K, 2)
        S = torch.cat([u, self._depth(u)[..., None]], -1)  # (P, K, 3)
        on_sphere = S[..., 2] > 0
        shift, A, Q = centre + moved, linear.clone(), torch.eye(3, device=dev).repeat(P, 1, 1)
        channel_weight = torch.tensor([1.0, self.texture_weight], device=dev).view(1, 2, 1)
        to_unit = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=dev)
        for sigma in self._SIGMAS:
            previous = None
            f_src = self._features(src, src_region, sigma).flatten(2).gather(2, order[:, None].expand(-1, 2, -1))
            f_dst = self._features(dst, dst_region, sigma)  # (P, 2, H, W)
            grad = KF.spatial_gradient(f_dst, mode="sobel", normalized=True).flatten(1, 2)  # (P, 4, H, W)
            # (P, 7, H, W): mask, texture, d/dx and d/dy of each, other objects
            target = torch.cat([f_dst, grad, dst_other[:, None].float()], 1)
            for _ in range(self.iterations):
                Y = S @ Q.transpose(1, 2)  # (P, K, 3)
                warped = shift[:, None] + Y[..., :2] @ A.transpose(1, 2)  # (P, K, 2) px
                if previous is not None and float((warped - previous).abs().max()) < self._CONVERGED:
                    break
                previous = warped
                at = (warped * to_unit - 1.0)[:, None]  # (P, 1, K, 2) in grid_sample's [-1, 1] units
                sampled = F.grid_sample(target, at, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0]
                behind = on_sphere & (Y[..., 2] < 0)  # turned to the sphere's far side: hidden in dst
                kept = valid & ~behind & _in_frame(warped, H, W) & (sampled[:, 6] < 0.5)  # (P, K)
                weight = kept.float()[:, None] * channel_weight  # (P, 2, K)
                residual = sampled[:, :2] - f_src  # (P, 2, K)
                g = torch.stack([sampled[:, 2:6:2], sampled[:, 3:6:2]], -1)  # (P, 2, K, 2) image gradient per channel
                J = self._jacobian(g, Y, A, warped - shift[:, None])  # (P, 2, K, n)
                J[..., 2:] *= (kept.sum(1) >= enough).float()[:, None, None, None]  # mostly hidden: translate only
                Jw = J * weight[..., None]
                normal = torch.einsum("pcki,pckj->pij", Jw, J)  # (P, n, n)
                rhs = torch.einsum("pcki,pck->pi", Jw, residual)  # (P, n)
                diag = normal.diagonal(dim1=1, dim2=2)  # (P, n)
                # Marquardt's scaling, plus a floor for directions the images do not constrain (a textureless
                # sphere's rotation): without it their steps would be noise divided by ~0
                floor = 1e-3 * diag.mean(-1, keepdim=True) + 1e-12
                normal = normal + torch.diag_embed(self._DAMPING * diag + floor)
                delta = -torch.linalg.solve(normal, rhs[..., None])[..., 0]  # (P, n)
                shift = shift + delta[:, :2].clamp(-self._MAX_SHIFT, self._MAX_SHIFT)
                if self.motion in ("similarity", "sphere"):
                    A = A * delta[:, 2].clamp(-self._MAX_ZOOM, self._MAX_ZOOM).exp()[:, None, None]
                    turn = delta[:, 3:] if self.motion == "sphere" else F.pad(delta[:, 3:], (2, 0))  # (P, 3)
                    turn = turn * (self._MAX_TURN / turn.norm(dim=-1, keepdim=True).clamp_min(self._MAX_TURN))
                    Q = torch.linalg.matrix_exp(_skew(turn)) @ Q
                elif self.motion == "affine":
                    A = A + delta[:, 2:].clamp(-self._MAX_SHIFT, self._MAX_SHIFT).view(P, 2, 2)
        return shift, A, Q

    def _jacobian(self, g: Tensor, Y: Tensor, A: Tensor, arm: Tensor) -> Tensor:
        """d(warped features)/d(parameters) [P, 2, K, n] from image gradients g [P, 2, K, 2] (channel, pixel,
        d/dx d/dy), rotated body points Y [P, K, 3], the linear map A [P, 2, 2] and arm = x' - shift [P, K, 2].

        Parameters: shift (2), then log-scale and rotation (similarity: about z; sphere: x, y, z), or the four
        entries of A (affine). A rotation increment w moves Y by w x Y; in the image by A (w x Y)_xy.
        """
        columns = [g[..., 0], g[..., 1]]  # d/d shift
        if self.motion in ("similarity", "sphere"):
            columns.append((g * arm[:, None]).sum(-1))  # d/d log-scale: the warp grows about the shift
            x, y, z = Y.unbind(-1)  # (P, K) each
            o = torch.zeros_like(x)
            # d (w x Y)_xy / d w, rows x and y, columns wx, wy, wz: [[0, z, -y], [-z, 0, x]]
            cross = torch.stack([torch.stack([o, z, -y], -1), torch.stack([-z, o, x], -1)], -2)  # (P, K, 2, 3)
            image = torch.einsum("pij,pkjl->pkil", A, cross)  # (P, K, 2, 3): image motion per unit rotation
            per_axis = torch.einsum("pcki,pkil->pckl", g, image)  # (P, 2, K, 3)
            axes = range(3) if self.motion == "sphere" else (2,)
            columns += [per_axis[..., a] for a in axes]
        elif self.motion == "affine":  # x' = shift + A Y_xy: d/dA_ij = e_i Y_j
            columns += [g[..., i] * Y[:, None, :, j] for i in range(2) for j in range(2)]
        return torch.stack(columns, -1)

    @staticmethod
    def _features(luma: Tensor, region: Tensor, sigma: float) -> Tensor:
        """[P, H, W] luma and bool region -> [P, 2, H, W] blurred silhouette and texture.

        The texture is the luma divided by its mean, minus one, on the region shrunk by a pixel: shading that
        scales the whole object (it turns towards or away from the light) cancels, and the anti-aliased rim,
        whose luma is partly the ground's behind it, is left out.
        """
        r = region.float()[:, None]  # (P, 1, H, W)
        inner = -F.max_pool2d(-r, 3, stride=1, padding=1)  # (P, 1, H, W) eroded by one pixel
        mean = (luma[:, None] * inner).sum((1, 2, 3)) / inner.sum((1, 2, 3)).clamp_min(1.0)  # (P,)
        texture = inner * (luma[:, None] / mean.clamp_min(1e-3)[:, None, None, None] - 1.0)
        return _blur(torch.cat([r, texture], 1), sigma)

    def _snap(self, moved: Tensor, regions: Tensor, seen: Tensor, chain: Tensor, start: Tensor) -> Tensor:
        """Put points [T, M, 2] that left their region (inside the frame, where it was seen) on its nearest pixel."""
        T = moved.shape[0]
        H, W = regions.shape[-2:]
        out = moved.clone()
        for u in range(regions.shape[0]):
            members = (chain == u).nonzero()[:, 0]
            for t in range(T):
                rows = members[seen[t, members] & (start[members] != t) & _in_frame(moved[t, members], H, W)]
                if len(rows) == 0:
                    continue
                pixels = regions[u, t].nonzero().flip(-1).float()  # (R, 2) as (x, y)
                nearest = torch.cdist(moved[t, rows], pixels).min(1)
                far = nearest.values > self._SNAP_DISTANCE
                out[t, rows[far]] = pixels[nearest.indices[far]]
        return out


# ---------------------------------------------------------------------------------------------------------
# CoTracker3 from a local clone and a local checkpoint
# ---------------------------------------------------------------------------------------------------------

_COTRACKER_GIT = "https://github.com/facebookresearch/co-tracker"
REPO_ENV, CHECKPOINT_ENV = "WMGEN_COTRACKER_REPO", "WMGEN_COTRACKER_CKPT"

# offline hub entry points (whole video at once, the call convention used here) -> checkpoint file, its URL
COTRACKER_MODELS: dict[str, tuple[str, str]] = {
    "cotracker3_offline": ("scaled_offline.pth", "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth"),
    "cotracker2v1": ("cotracker2v1.pth", "https://huggingface.co/facebook/cotracker/resolve/main/cotracker2v1.pth"),
    "cotracker2": ("cotracker2.pth", "https://huggingface.co/facebook/cotracker/resolve/main/cotracker2.pth"),
}  # fmt: skip


class CoTrackerTracker(PointTracker):
    """CoTracker3 (Karaev et al. 2024, "CoTracker3: Simpler and Better Point Tracking by Pseudo-Labelling Real
    Videos") loaded from local files only.

    The model code comes from a local clone of facebookresearch/co-tracker through
    ``torch.hub.load(repo, model, source="local", pretrained=False)``, then the weights from ``checkpoint``
    with ``torch.load(..., weights_only=True)`` (nothing is unpickled) into the predictor's ``.model``. Nothing
    is downloaded: a missing clone or checkpoint raises at construction, naming the path and how to fill it.

    Setup on a machine with internet, then copy both to the same places here (default locations)::

        HUB=$(python -c "import torch; print(torch.hub.get_dir())")
        git clone https://github.com/facebookresearch/co-tracker "$HUB/facebookresearch_co-tracker_main"
        wget -P "$HUB/checkpoints" https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth

    The hub predictor takes video [B, T, 3, H, W] in [0, 255] and queries [B, N, 3] (t, x, y) in the same pixel
    convention as ours, and returns tracks [B, T, N, 2] and visibility [B, T, N] (bool, thresholded at 0.9 by
    the predictor; a float visibility is read as a probability and thresholded at 0.9 here too).

    Args:
        checkpoint: weights file; default env ``WMGEN_COTRACKER_CKPT``, else
            ``torch.hub.get_dir()/checkpoints/<file>`` with the file of ``COTRACKER_MODELS[model]``.
        repo: the co-tracker clone (a directory holding ``hubconf.py``); default env ``WMGEN_COTRACKER_REPO``,
            else ``torch.hub.get_dir()/facebookresearch_co-tracker_main`` (where torch.hub would put it).
        model: a hub entry point of ``COTRACKER_MODELS`` (the offline predictors).
        device: where the model runs; inputs are moved there and results moved back.

    Raises:
        FileNotFoundError: the clone or the checkpoint is missing (both are named if both are).
        ValueError: unknown model, or a checkpoint that is not a plain state dict or does not fit the model.
    """

    name = "cotracker"
    _VISIBILITY_THRESHOLD = 0.9  # CoTrackerPredictor's own threshold on visibility probabilities

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        repo: str | os.PathLike | None = None,
        model: str = "cotracker3_offline",
        device: str | torch.device = "cpu",
    ):
        if model not in COTRACKER_MODELS:
            raise ValueError(
                f"model must be one of {sorted(COTRACKER_MODELS)} (offline CoTracker predictors), got {model!r}"
            )
        file_name, url = COTRACKER_MODELS[model]
        hub = Path(torch.hub.get_dir())
        # an explicit argument beats the environment, which beats torch.hub's own layout
        repo_path = Path(repo or os.environ.get(REPO_ENV) or hub / "facebookresearch_co-tracker_main")
        ckpt_path = Path(checkpoint or os.environ.get(CHECKPOINT_ENV) or hub / "checkpoints" / file_name)
        missing = []
        if not (repo_path / "hubconf.py").is_file():
            missing.append(
                f"the co-tracker code: {repo_path / 'hubconf.py'} does not exist. On a machine with internet run "
                f"`git clone {_COTRACKER_GIT} {repo_path}` and copy the directory here, or pass repo= / set "
                f"{REPO_ENV} to an existing clone."
            )
        if not ckpt_path.is_file():
            missing.append(
                f"the {model} weights: {ckpt_path} does not exist. Download {file_name} from {url} on a machine "
                f"with internet and put it at {ckpt_path}, or pass checkpoint= / set {CHECKPOINT_ENV}."
            )
        if missing:
            raise FileNotFoundError(
                "CoTrackerTracker loads only local files and never downloads. Missing:\n- " + "\n- ".join(missing)
            )

        state = _load_state_dict(ckpt_path)
        predictor = torch.hub.load(str(repo_path), model, source="local", pretrained=False)
        if not isinstance(predictor, torch.nn.Module):
            raise TypeError(f"{repo_path}/hubconf.py:{model} returned {type(predictor).__name__}, not an nn.Module")
        net = getattr(predictor, "model", predictor)  # hub predictors wrap the network as .model
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"checkpoint {ckpt_path} does not fit {model} from {repo_path}: {err}") from err
        self.model = predictor.to(device).eval()
        self.device = torch.device(device)
        self.model_name, self.repo, self.checkpoint = model, repo_path, ckpt_path

    def __repr__(self) -> str:
        return f"CoTrackerTracker({str(self.checkpoint)!r}, repo={str(self.repo)!r}, model={self.model_name!r})"

    @torch.no_grad()
    def track(self, video: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """Track ``queries`` [B, N, 3] (t, x, y) through ``video`` [B, 3, T, H, W] in [-1, 1] with CoTracker.

        Returns:
            tracks [B, T, N, 2] float32 pixels and visible [B, T, N] bool (see :meth:`PointTracker.track`).
        """
        B, _, T, H, W = self.check_inputs(video, queries)
        N = queries.shape[1]
        frames = rearrange((video.float() + 1.0) * 127.5, "b c t h w -> b t c h w")  # (B, T, 3, H, W) in [0, 255]
        out = self.model(frames.to(self.device), queries=queries.float().to(self.device))
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise TypeError(f"{self.model_name} returned {type(out).__name__}, expected (tracks, visibility)")
        tracks, vis = out[0], out[1]
        if tuple(tracks.shape) != (B, T, N, 2) or tuple(vis.shape) != (B, T, N):
            raise ValueError(
                f"{self.model_name} returned tracks {_shape(tracks)} and visibility {_shape(vis)}, expected "
                f"{(B, T, N, 2)} and {(B, T, N)}"
            )
        if vis.dtype != torch.bool:
            vis = vis > self._VISIBILITY_THRESHOLD
        return tracks.float().to(video.device), vis.to(video.device)


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    """A checkpoint's tensors, loaded with ``weights_only=True`` (a ``{"model": ...}`` wrapper is unwrapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {path}: it holds Python objects besides tensors, and checkpoints are only read "
            f"with torch.load(weights_only=True) (never unpickled). Re-save its state_dict. ({err})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints of co-tracker wrap the weights (build_cotracker does too)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} is not a state dict (a dict of name -> tensor), got {type(state).__name__}")
    return state


# ---------------------------------------------------------------------------------------------------------
# metrics and helpers
# ---------------------------------------------------------------------------------------------------------


def _check_tracks(tracks: Any, visible: Any, tracks_name: str, visible_name: str) -> None:
    if not isinstance(tracks, Tensor) or not tracks.is_floating_point():
        raise TypeError(f"{tracks_name} must be a float tensor [B, T, N, 2], got {_shape(tracks)}")
    if tracks.ndim != 4 or tracks.shape[-1] != 2:
        raise ValueError(f"{tracks_name} must be [B, T, N, 2], got {tuple(tracks.shape)}")
    if not isinstance(visible, Tensor) or visible.dtype != torch.bool:
        dtype = visible.dtype if isinstance(visible, Tensor) else type(visible).__name__
        raise TypeError(f"{visible_name} must be a bool tensor [B, T, N], got {dtype}")
    if tuple(visible.shape) != tuple(tracks.shape[:-1]):
        raise ValueError(
            f"{visible_name} must be [B, T, N] = {tuple(tracks.shape[:-1])} to match {tracks_name}, got "
            f"{tuple(visible.shape)}"
        )


def track_epe(
    pred: Tensor,
    target: Tensor,
    visible: Tensor,
    frame_size: tuple[int, int],
    *,
    pred_visible: Tensor | None = None,
) -> dict[str, float]:
    """End-point error of predicted tracks against target tracks, over the points visible in the target.

    Every (frame, point) pair with ``visible`` true counts, including each track's query frame. By default
    the predicted visibility is ignored: a point the tracker lost still counts at its (stale) position, so
    losing points cannot hide errors. Pass ``pred_visible`` to score only pairs visible in both; the result
    then also reports ``coverage``, the fraction of target-visible pairs that the prediction kept.

    Args:
        pred: [B, T, N, 2] predicted pixel (x, y).
        target: [B, T, N, 2] target pixel (x, y).
        visible: [B, T, N] bool, where the target point is visible.
        frame_size: (H, W) in pixels, for the normalised error.
        pred_visible: optional [B, T, N] bool predicted visibility, AND-ed into ``visible``.

    Returns:
        ``{"epe_px": mean L2 distance in pixels, "epe_norm": epe_px / sqrt(H^2 + W^2), "num_points": number
        of scored (frame, point) pairs}``, plus ``"coverage"`` when ``pred_visible`` is given.

    Raises:
        ValueError: mismatched shapes, a bad frame size, no scored pair, or non-finite coordinates there.
        TypeError: non-tensor, non-float tracks or non-bool visibility.
    """
    _check_tracks(target, visible, "target", "visible")
    if not isinstance(pred, Tensor) or not pred.is_floating_point():
        raise TypeError(f"pred must be a float tensor [B, T, N, 2], got {_shape(pred)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if (
        not isinstance(frame_size, (tuple, list, torch.Size))
        or len(frame_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in frame_size)
    ):
        raise ValueError(f"frame_size must be (H, W), two ints >= 1, got {frame_size!r}")
    mask = visible
    extra: dict[str, float] = {}
    if pred_visible is not None:
        _check_tracks(pred, pred_visible, "pred", "pred_visible")
        mask = visible & pred_visible
        if bool(visible.any()):
            extra["coverage"] = float(mask.sum()) / float(visible.sum())
    count = int(mask.sum())
    if count == 0:
        why = "" if pred_visible is None or not bool(visible.any()) else " (pred_visible keeps none of them)"
        raise ValueError(f"no target-visible points to score{why}: visible has {int(visible.sum())} true entries")
    p, q = pred[mask].double(), target[mask].double()  # (count, 2)
    if not bool(torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise ValueError("pred and target must be finite at the scored (visible) points")
    epe = float((p - q).norm(dim=-1).mean())
    H, W = frame_size
    return {"epe_px": epe, "epe_norm": epe / math.hypot(H, W), "num_points": count, **extra}


def queries_from_tracks(tracks: Tensor, visible: Tensor) -> Tensor:
    """Queries at each track's first visible frame.

    Args:
        tracks: [B, T, N, 2] pixel (x, y).
        visible: [B, T, N] bool.

    Returns:
        [B, N, 3] rows (t, x, y) in ``tracks``' dtype and device, t the first frame where the track is visible.

    Raises:
        ValueError: a track that is never visible (named by batch and track index), or mismatched shapes.
        TypeError: non-float tracks or non-bool visibility.
    """
    _check_tracks(tracks, visible, "tracks", "visible")
    never = ~visible.any(dim=1)  # (B, N)
    if bool(never.any()):
        where = [tuple(int(i) for i in bn) for bn in never.nonzero()[:5]]
        raise ValueError(
            f"{int(never.sum())} track(s) are never visible, so they have no query frame; (batch, track) "
            f"{', '.join(map(str, where))}{' ...' if int(never.sum()) > 5 else ''}"
        )
    first = visible.int().argmax(dim=1)  # (B, N): argmax returns the first maximum
    xy = tracks.gather(1, first[:, None, :, None].expand(-1, 1, -1, 2))[:, 0]  # (B, N, 2)
    return torch.cat([first[..., None].to(tracks.dtype), xy], -1)  # (B, N, 3)


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------

TRACKERS: dict[str, type[PointTracker]] = {
    "lk": LucasKanadeTracker,
    "color": ColorObjectTracker,
    "cotracker": CoTrackerTracker,
}


def make_tracker(name: str, **kwargs: Any) -> PointTracker:
    """Build the tracker registered under ``name`` in :data:`TRACKERS` with ``kwargs``.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; choose one of {sorted(TRACKERS)}")
    return TRACKERS[name](**kwargs)
