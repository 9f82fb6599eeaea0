"""Point tracking for evaluation: how faithfully does a video follow requested point tracks?

A :class:`PointTracker` re-tracks query points in a (generated) video; :func:`track_epe` compares the result
with the tracks that were requested. Two trackers ship:

* :class:`LucasKanadeTracker`: pyramidal Lucas-Kanade (Bouguet 2001), pure torch, always available, fast on
  CPU. Good on textured, rigidly moving surfaces; it cannot re-detect a point after an occlusion.
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

TRACKERS: dict[str, type[PointTracker]] = {"lk": LucasKanadeTracker, "cotracker": CoTrackerTracker}


def make_tracker(name: str, **kwargs: Any) -> PointTracker:
    """Build the tracker registered under ``name`` in :data:`TRACKERS` with ``kwargs``.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; choose one of {sorted(TRACKERS)}")
    return TRACKERS[name](**kwargs)
