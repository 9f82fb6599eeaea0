"""Pictures of 2-D flows: the velocity field, its streamlines, and particles carried by it.

Three views of one learned flow (in the spirit of the flow-matching tutorials' 2-D figures):

- ``quiver``: arrows of v(x, t) on a grid, one panel per time, coloured by speed;
- ``streamlines``: the instantaneous field's streamlines at each time (a frozen-time picture: particles do
  *not* follow them, because the field changes while they move);
- ``particles`` / ``particles_gif``: where samples actually go, from an ``integrate(...,
  return_path=True)`` trajectory, with 2-D histograms of the density at snapshot times.

Plus the comparisons a run reports: ``samples_vs_data`` (scatter) and ``density_grid`` (2-D histograms or
evaluated densities side by side), and ``loss_curve``.

All functions build a ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot, no global state),
return it, and when given ``path`` also write it; every file is written to a temporary name in the same
folder and renamed, so a failed call never leaves a half-written picture. Coordinates are x right, y up.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from wmgen.flow.solvers import Trajectory, VelocityFn

__all__ = [
    "quiver",
    "streamlines",
    "particles",
    "particles_gif",
    "samples_vs_data",
    "density_grid",
    "loss_curve",
    "state_at",
]

Bounds = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max)
DEFAULT_BOUNDS: Bounds = (-4.5, 4.5, -4.5, 4.5)
DEFAULT_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)

_DATA_COLOR = "#9aa0a6"  # held-out / reference points
_SAMPLE_COLOR = "#d9480f"  # learned samples
_FIELD_CMAP = "viridis"  # speed
_DENSITY_CMAP = "magma"
_PARTICLE_CMAP = "hsv"  # cyclic: particles coloured by the angle of their start point


# --------------------------------------------------------------------------------------------------------
# Helpers.


def _check_bounds(bounds: Bounds) -> Bounds:
    if len(bounds) != 4 or not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
        raise ValueError(f"bounds must be (x_min, x_max, y_min, y_max) with min < max, got {bounds!r}")
    return tuple(float(b) for b in bounds)  # type: ignore[return-value]


def _check_times(times: Sequence[float]) -> list[float]:
    times = [float(t) for t in times]
    if not times or any(not 0.0 <= t <= 1.0 for t in times):
        raise ValueError(f"times must be a non-empty sequence of values in [0, 1], got {times!r}")
    return times


def _check_points(name: str, x: Tensor | np.ndarray) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2], got {tuple(x.shape)}")
    return x.astype(np.float64)


def _check_trajectory(trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """-> times [S + 1] increasing, states [S + 1, B, 2] (flipped if the solve ran backwards)."""
    times = getattr(trajectory, "times", None)
    states = getattr(trajectory, "states", None)
    if not isinstance(times, Tensor) or not isinstance(states, Tensor):
        raise TypeError(f"trajectory must be a Trajectory (Tensor .times, .states), got {type(trajectory)}")
    if states.ndim != 3 or states.shape[-1] != 2 or times.shape != (states.shape[0],) or len(times) < 2:
        raise ValueError(
            "trajectory must hold times [S + 1] and 2-D states [S + 1, B, 2] with S >= 1, "
            f"got times {tuple(times.shape)} and states {tuple(states.shape)}"
        )
    t = times.detach().cpu().double().numpy()
    s = states.detach().cpu().double().numpy()
    if t[-1] < t[0]:
        t, s = t[::-1].copy(), s[::-1].copy()
    return t, s


def state_at(trajectory: Trajectory, t: float) -> Tensor:
    """Particle positions at time t [B, 2], linearly interpolated between the trajectory's recorded states.

    ``t`` must lie within the trajectory's time span.
    """
    times, states = _check_trajectory(trajectory)
    return torch.from_numpy(_interp(times, states, t)).float()


def _interp(times: np.ndarray, states: np.ndarray, t: float) -> np.ndarray:
    if not times[0] - 1e-9 <= t <= times[-1] + 1e-9:
        raise ValueError(f"t must lie in the trajectory's span [{times[0]}, {times[-1]}], got {t}")
    i = int(np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2))
    w = 0.0 if times[i + 1] == times[i] else (t - times[i]) / (times[i + 1] - times[i])
    return (1.0 - w) * states[i] + w * states[i + 1]


def _grid(bounds: Bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    x_min, x_max, y_min, y_max = bounds
    return np.meshgrid(np.linspace(x_min, x_max, n), np.linspace(y_min, y_max, n))  # [n, n] each, y rows


@torch.no_grad()
def _field(velocity_fn: VelocityFn, xs: np.ndarray, ys: np.ndarray, t: float, device) -> np.ndarray:
    """v at every grid point [n, n, 2]."""
    pts = torch.from_numpy(np.stack([xs.ravel(), ys.ravel()], axis=-1)).float().to(device)  # [n*n, 2]
    v = velocity_fn(pts, torch.full((pts.shape[0],), float(t), device=pts.device))
    if not isinstance(v, Tensor) or v.shape != pts.shape:
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"velocity_fn must return [N, 2] for x [N, 2], got {got}")
    return v.float().cpu().numpy().reshape(*xs.shape, 2)


def _panels(n: int, size: float, rows: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(size * n, size * rows + 0.5 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, n, squeeze=False))
    return fig, axes


def _style(ax, bounds: Bounds, title: str | None = None) -> None:
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color("#cccccc")
    if title:
        ax.set_title(title, fontsize=11)


def _atomic(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _save(fig: Figure, path: str | os.PathLike | None, dpi: int) -> None:
    if path is None:
        return
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white"))


def _colors(x0: np.ndarray) -> np.ndarray:
    """A cyclic value in [0, 1] per particle from the angle of its start point about the start mean."""
    c = x0 - x0.mean(0, keepdims=True)
    return (np.arctan2(c[:, 1], c[:, 0]) + math.pi) / (2 * math.pi)


def _subsample(n: int, k: int | None) -> np.ndarray:
    """min(n, k) evenly spread indices into range(n) (deterministic, so pictures do not depend on a seed)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(int)


# --------------------------------------------------------------------------------------------------------
# Field views.


def quiver(
    velocity_fn: VelocityFn,
    times: Sequence[float] = DEFAULT_TIMES,
    *,
    bounds: Bounds = DEFAULT_BOUNDS,
    grid: int = 21,
    trajectory: Trajectory | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
    dpi: int = 100,
    device: torch.device | str | None = None,
) -> Figure:
    """Arrows of v(x, t) on a ``grid`` x ``grid`` lattice, one panel per time, coloured by speed.

    Arrow lengths share one scale across panels (the longest arrow spans about 1.5 grid cells), so panels
    compare directly; colour is |v| on a shared scale.

    Args:
        velocity_fn: ``(x [N, 2], t [N]) -> v [N, 2]``; evaluated under ``torch.no_grad()``.
        times: panel times in [0, 1].
        bounds: plot box (x_min, x_max, y_min, y_max).
        grid: lattice points per axis, >= 2.
        trajectory: optional; the particles at each panel's time are drawn faintly underneath.
        path: write the figure here (PNG, or any matplotlib format by suffix).
        title: figure title.
        panel_size: inches per panel.
        dpi: resolution of the written file.
        device: where to evaluate the field (default CPU).
    Returns:
        the figure.
    """
    times, bounds = _check_times(times), _check_bounds(bounds)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an int >= 2, got {grid!r}")
    xs, ys = _grid(bounds, grid)
    fields = [_field(velocity_fn, xs, ys, t, device) for t in times]  # each [n, n, 2]
    speeds = [np.linalg.norm(v, axis=-1) for v in fields]
    vmax = max(float(s.max()) for s in speeds) or 1.0
    cell = (bounds[1] - bounds[0]) / (grid - 1)
    scale = vmax / (1.5 * cell)  # data units of v per unit of arrow length
    norm = Normalize(0.0, vmax)
    fig, axes = _panels(len(times), panel_size)
    for ax, t, v, speed in zip(axes[0], times, fields, speeds, strict=False):
        if trajectory is not None:
            pts = state_at(trajectory, t).numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, color=_DATA_COLOR, alpha=0.35, linewidths=0)
        q = ax.quiver(
            xs, ys, v[..., 0], v[..., 1], speed, cmap=_FIELD_CMAP, norm=norm,
            angles="xy", scale_units="xy", scale=scale, width=0.006, headwidth=3.5, headlength=4,
        )
        _style(ax, bounds, f"t = {t:.2f}")
    fig.colorbar(q, ax=axes[0].tolist(), shrink=0.8, label="|v|")
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


def streamlines(
    velocity_fn: VelocityFn,
    times: Sequence[float] = DEFAULT_TIMES,
    *,
    bounds: Bounds = DEFAULT_BOUNDS,
    grid: int = 64,
    density: float = 1.2,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
    dpi: int = 100,
    device: torch.device | str | None = None,
) -> Figure:
    """Streamlines of the frozen field v(., t) at each time, coloured by speed (shared scale).

    Args:
        velocity_fn: ``(x [N, 2], t [N]) -> v [N, 2]``.
        times: panel times in [0, 1].
        bounds: plot box.
        grid: lattice points per axis on which the field is sampled for ``streamplot`` (>= 4).
        density: matplotlib's streamline density (1 = about 30 x 30 cells per panel).
        path, title, panel_size, dpi, device: as in ``quiver``.
    Returns:
        the figure.
    """
    times, bounds = _check_times(times), _check_bounds(bounds)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 4:
        raise ValueError(f"grid must be an int >= 4, got {grid!r}")
    if not density > 0:
        raise ValueError(f"density must be > 0, got {density}")
    xs, ys = _grid(bounds, grid)
    fields = [_field(velocity_fn, xs, ys, t, device) for t in times]
    speeds = [np.linalg.norm(v, axis=-1) for v in fields]
    norm = Normalize(0.0, max(float(s.max()) for s in speeds) or 1.0)
    fig, axes = _panels(len(times), panel_size)
    for ax, t, v, speed in zip(axes[0], times, fields, speeds, strict=False):
        sp = ax.streamplot(
            xs, ys, v[..., 0], v[..., 1], color=speed, cmap=_FIELD_CMAP, norm=norm,
            density=density, linewidth=0.9, arrowsize=0.8,
        )
        _style(ax, bounds, f"t = {t:.2f}")
    fig.colorbar(sp.lines, ax=axes[0].tolist(), shrink=0.8, label="|v|")
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


# --------------------------------------------------------------------------------------------------------
# Particle views.


def particles(
    trajectory: Trajectory,
    *,
    snapshots: int | Sequence[float] = 5,
    bounds: Bounds = DEFAULT_BOUNDS,
    n_paths: int = 300,
    n_points: int | None = 4000,
    bins: int = 90,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
    dpi: int = 100,
) -> Figure:
    """Particles carried by the flow: positions with trails (top row) and density (bottom row) at snapshots.

    Top row, at each snapshot time t_k: the particles at t_k, coloured by the angle of their start point
    (so one can follow where each part of the source goes), with the paths of ``n_paths`` of them from the
    start to t_k. Bottom row: a 2-D histogram of all particles at t_k (log-scaled counts).

    Args:
        trajectory: a ``Trajectory`` with times [S + 1] and states [S + 1, B, 2] (e.g. from
            ``integrate(..., return_path=True)``); states between recorded times are interpolated linearly.
        snapshots: number of evenly spaced snapshot times over the trajectory's span, or the times.
        bounds: plot box.
        n_paths: how many particle paths to draw.
        n_points: at most this many particles in the scatter (all are histogrammed); None = all.
        bins: histogram bins per axis.
        path, title, panel_size, dpi: as in ``quiver``.
    Returns:
        the figure.
    """
    times, states = _check_trajectory(trajectory)
    bounds = _check_bounds(bounds)
    if isinstance(snapshots, int) and not isinstance(snapshots, bool):
        if snapshots < 1:
            raise ValueError(f"snapshots must be >= 1 or a sequence of times, got {snapshots}")
        snap = list(np.linspace(times[0], times[-1], snapshots)) if snapshots > 1 else [times[-1]]
    else:
        snap = _check_times(snapshots)
    colors = _colors(states[0])
    shown = _subsample(states.shape[1], n_points)
    traced = _subsample(states.shape[1], n_paths)
    fig, axes = _panels(len(snap), panel_size, rows=2)
    extent = [[bounds[0], bounds[1]], [bounds[2], bounds[3]]]
    for k, t in enumerate(snap):
        x_t = _interp(times, states, t)  # [B, 2]
        ax = axes[0, k]
        upto = times <= t + 1e-12
        trail = np.concatenate([states[upto][:, traced], x_t[None, traced]], axis=0)  # [s, n_paths, 2]
        if trail.shape[0] > 1:
            ax.plot(trail[..., 0], trail[..., 1], color="#444444", alpha=0.18, linewidth=0.5)
        ax.scatter(
            x_t[shown, 0], x_t[shown, 1], c=colors[shown], cmap=_PARTICLE_CMAP, vmin=0, vmax=1,
            s=2.0, linewidths=0,
        )
        _style(ax, bounds, f"t = {t:.2f}")
        hist, _, _ = np.histogram2d(x_t[:, 0], x_t[:, 1], bins=bins, range=extent)
        ax = axes[1, k]
        ax.imshow(
            np.log1p(hist.T), origin="lower", extent=(*extent[0], *extent[1]), cmap=_DENSITY_CMAP,
            interpolation="nearest", aspect="equal",
        )
        _style(ax, bounds)
    axes[0, 0].set_ylabel("particles", fontsize=11)
    axes[1, 0].set_ylabel("density (log counts)", fontsize=11)
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


def particles_gif(
    trajectory: Trajectory,
    path: str | os.PathLike,
    *,
    frames: int | None = None,
    fps: float = 20.0,
    hold: float = 1.0,
    bounds: Bounds = DEFAULT_BOUNDS,
    n_points: int | None = 3000,
    reference: Tensor | np.ndarray | None = None,
    size: float = 4.0,
    dpi: int = 80,
    title: str | None = None,
) -> Path:
    """Animate particles moving along the flow into a looping GIF.

    Args:
        trajectory: a ``Trajectory`` with times [S + 1] and states [S + 1, B, 2].
        path: output file (.gif).
        frames: number of frames, at evenly spaced times over the span (states interpolated linearly);
            None = one frame per recorded state (S + 1).
        fps: frames per second.
        hold: extra seconds the last frame stays on screen before the loop restarts.
        bounds: plot box.
        n_points: at most this many particles drawn; None = all.
        reference: optional target points [M, 2] drawn in light grey underneath.
        size: figure size in inches (square).
        dpi: pixels per inch.
        title: text above the time label.
    Returns:
        the written path. The GIF has exactly ``frames`` (or S + 1) frames.
    """
    times, states = _check_trajectory(trajectory)
    bounds = _check_bounds(bounds)
    n_frames = len(times) if frames is None else frames
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"frames must be an int >= 1 or None, got {frames!r}")
    if not fps > 0 or not hold >= 0:
        raise ValueError(f"fps must be > 0 and hold >= 0, got fps={fps}, hold={hold}")
    if Path(path).suffix.lower() != ".gif":
        raise ValueError(f"path must end in .gif, got {str(path)!r}")
    frame_times = times if frames is None else np.linspace(times[0], times[-1], n_frames)
    shown = _subsample(states.shape[1], n_points)
    colors = _colors(states[0])[shown]

    # One figure, updated in place: drawing a scatter once and moving its offsets is ~10x faster than
    # re-plotting every frame.
    fig = Figure(figsize=(size, size), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    if reference is not None:
        ref = _check_points("reference", reference)
        ax.scatter(ref[:, 0], ref[:, 1], s=1.5, color=_DATA_COLOR, alpha=0.35, linewidths=0)
    dots = ax.scatter(
        states[0, shown, 0], states[0, shown, 1], c=colors, cmap=_PARTICLE_CMAP, vmin=0, vmax=1,
        s=3.0, linewidths=0,
    )
    _style(ax, bounds)
    head = f"{title}\n" if title else ""
    images = []
    for t in frame_times:
        dots.set_offsets(_interp(times, states, float(t))[shown])
        ax.set_title(f"{head}t = {t:.2f}", fontsize=11)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())  # [H, W, 3] uint8
    # Per-frame durations in milliseconds; the last one holds. Distinct time labels keep every frame
    # distinct, so the GIF encoder merges none and the file has exactly n_frames frames.
    durations = [1000.0 / fps] * n_frames
    durations[-1] += 1000.0 * hold
    return _atomic(
        path, lambda tmp: iio.imwrite(tmp, np.stack(images), extension=".gif", duration=durations, loop=0)
    )


# --------------------------------------------------------------------------------------------------------
# Comparisons.


def samples_vs_data(
    samples: Tensor | np.ndarray,
    data: Tensor | np.ndarray,
    *,
    bounds: Bounds = DEFAULT_BOUNDS,
    labels: tuple[str, str] = ("learned samples", "held-out data"),
    n_points: int | None = 4000,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.6,
    dpi: int = 100,
) -> Figure:
    """Scatter of samples [N, 2] and data [M, 2]: each alone, then overlaid (three panels)."""
    a, b = _check_points("samples", samples), _check_points("data", data)
    bounds = _check_bounds(bounds)
    a, b = a[_subsample(len(a), n_points)], b[_subsample(len(b), n_points)]
    fig, axes = _panels(3, panel_size)
    ax0, ax1, ax2 = axes[0]
    ax0.scatter(a[:, 0], a[:, 1], s=1.5, color=_SAMPLE_COLOR, linewidths=0)
    _style(ax0, bounds, labels[0])
    ax1.scatter(b[:, 0], b[:, 1], s=1.5, color="#1c7ed6", linewidths=0)
    _style(ax1, bounds, labels[1])
    ax2.scatter(b[:, 0], b[:, 1], s=1.5, color="#1c7ed6", alpha=0.5, linewidths=0, label=labels[1])
    ax2.scatter(a[:, 0], a[:, 1], s=1.5, color=_SAMPLE_COLOR, alpha=0.5, linewidths=0, label=labels[0])
    _style(ax2, bounds, "overlay")
    ax2.legend(loc="lower right", fontsize=8, markerscale=5, frameon=False)
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


def density_grid(
    panels: Mapping[str, Tensor | np.ndarray],
    *,
    bounds: Bounds = DEFAULT_BOUNDS,
    bins: int = 100,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.6,
    dpi: int = 100,
) -> Figure:
    """Densities side by side, one panel per entry, on one colour scale (saturating at the 99.5th percentile).

    Each value is either points [N, 2] (shown as a normalised 2-D histogram with ``bins`` bins per axis) or
    a density already evaluated on a grid [G, G] (rows = y from ``bounds[2]`` up, columns = x), e.g.
    exp(log_likelihood) on a lattice. Both are shown as probability density per unit area.
    """
    if not panels:
        raise ValueError("panels must hold at least one entry, got none")
    bounds = _check_bounds(bounds)
    extent = [[bounds[0], bounds[1]], [bounds[2], bounds[3]]]
    images = {}
    for name, value in panels.items():
        arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] != 2:
            hist, _, _ = np.histogram2d(arr[:, 0], arr[:, 1], bins=bins, range=extent, density=True)
            # histogram2d(density=True) normalises over the box; rescale to the fraction inside it.
            inside = np.mean(
                (arr[:, 0] >= bounds[0]) & (arr[:, 0] <= bounds[1]) & (arr[:, 1] >= bounds[2])
                & (arr[:, 1] <= bounds[3])
            )
            images[name] = hist.T * inside
        elif arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
            images[name] = arr.astype(np.float64)
        else:
            raise ValueError(f"panels[{name!r}] must be points [N, 2] or a density grid [G, G], "
                             f"got {arr.shape}")
    # Shared scale up to the 99.5th percentile: single noisy histogram bins would otherwise wash out the rest.
    vmax = max(float(np.nanpercentile(im, 99.5)) for im in images.values()) or 1.0
    fig, axes = _panels(len(images), panel_size)
    for ax, (name, im) in zip(axes[0], images.items(), strict=False):
        shown = ax.imshow(
            im, origin="lower", extent=(*extent[0], *extent[1]), cmap=_DENSITY_CMAP, vmin=0.0, vmax=vmax,
            interpolation="nearest", aspect="equal",
        )
        _style(ax, bounds, name)
    fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label="density")
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    return fig


def loss_curve(
    losses: Sequence[float],
    *,
    lrs: Sequence[float] | None = None,
    smooth: int = 50,
    path: str | os.PathLike | None = None,
    title: str | None = "training loss",
    dpi: int = 100,
) -> Figure:
    """Per-step loss (faint) with a running mean over ``smooth`` steps, and the learning rate if given."""
    y = np.asarray(losses, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"losses must be a non-empty 1-D sequence, got shape {y.shape}")
    fig = Figure(figsize=(6.0, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    steps = np.arange(1, len(y) + 1)
    ax.plot(steps, y, color="#1c7ed6", alpha=0.25, linewidth=0.6)
    k = max(1, min(int(smooth), len(y)))
    running = np.convolve(y, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1 :], running, color="#1c7ed6", linewidth=1.6, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    if lrs is not None:
        ax2 = ax.twinx()
        ax2.plot(steps[: len(lrs)], np.asarray(lrs), color="#868e96", linewidth=1.0, linestyle="--")
        ax2.set_ylabel("learning rate", color="#868e96")
    ax.legend(loc="upper right", frameon=False)
    if title:
        ax.set_title(title)
    _save(fig, path, dpi)
    return fig
