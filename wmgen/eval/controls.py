"""Adapter obedience: do generations follow their controls, and how much better than without the adapter?

**Track adapter** (issue 5). Per held-out clip, the requested tracks are a fixed (seeded per clip) subset of
``num_tracks`` of the simulator's tracks visible at frame 0 -- physically plausible motion by construction. The
model generates from the clip's first frame (+ caption) twice with the same noise: with
``Control(adapter, TrackControl(requested))`` and without any control. A point tracker then re-tracks the
requested points (queries at their frame-0 positions) in both generations and in the ground-truth video. The
end-point error (``wmgen.eval.tracks.track_epe``) against the requested tracks, over the (frame, point) pairs
where the requested track is visible, gives three numbers:

- ``epe_with``: the controlled generation; ``epe_without``: the same model without the adapter;
- ``epe_floor``: the ground-truth render, which moves exactly as requested: whatever error remains there is the
  tracker's own, the floor of any generation;
- ``epe_vae``: the ground truth through the model's VAE (encode, decode): the floor of any generation in this
  latent space, i.e. what a perfectly obedient model would score. Not part of the goal; it tells whether the
  goal's "2x the floor" is reachable by the DiT and adapter at all, or first needs a better VAE.

Goal: ``epe_with <= 0.3 epe_without`` and ``epe_with <= 2 epe_floor``.

**Control guidance** (``control_guidance = w``, both evaluations; 1 = off): classifier-free guidance on the control
instead of the text, ``v = v_without + w (v_with - v_without)`` with the same prompt in both branches
(``Control(uncond=False)``, ``negative_prompt`` = the prompt), as ControlNet's guess mode does. It extrapolates
the adapter's effect on the velocity; it needs text CFG off (``cfg_scale`` 1), since one CFG pair holds one
difference. The generation without the adapter is unchanged.

**Map adapters** (depth; edges and masks the same way). The control is ``MapControl.from_world`` of the clip.
Its *reference edges* are the object silhouettes it describes: Canny edges of the depth map (for edges
controls: the control itself; for masks: the boundaries between instance ids). The generated frames' Canny
edges (``controls.controlnet.edges_from_video``) are matched against them with a tolerance of ``tolerance``
pixels (a 3x3 dilation for 1 px):

- recall = reference edge pixels with a generated edge pixel within the tolerance / reference edge pixels:
  are the silhouettes the control asks for there? This is the primary number: frames also show edges that a
  depth map does not (the floor's checker texture), which keeps precision low even for the ground truth;
- precision = generated edge pixels within the tolerance of a reference edge / generated edge pixels;
- F1 = 2 P R / (P + R).

Counts are summed over frames 1..T-1 of all clips (frame 0 is given) before dividing (micro-average), with and
without the adapter, and for the ground-truth frames (the ceiling). Goal: F1 with the adapter above F1 without.

Sharding and seeds work as in ``wmgen.eval.world``: batch k uses seed ``batch_seed(seed, k)`` and belongs to rank
``k % world_size``; ``summarize_track_adapter`` / ``summarize_map_adapter`` combine gathered per-clip records.

Example::

    adapter = ControlAdapter.from_pretrained("outputs/tiny/adapter_tracks/adapter")
    results = evaluate_track_adapter(world, adapter, WorldDataset("outputs/tiny/data/val"), clips=64)
    results["epe_with_px"], results["epe_without_px"], results["epe_floor_px"], results["goal"]
"""

from __future__ import annotations

import colorsys
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from controls.base import Control, ControlAdapter
from controls.controlnet import MapControl, edges_from_video
from controls.tracks import TrackControl
from wmgen.eval.tracks import LucasKanadeTracker, PointTracker, track_epe
from wmgen.eval.world import (
    add_titles,
    batch_seed,
    check_run_args,
    check_shard,
    figure_frames,
    frame0_queries,
    load_batch,
    markdown_table,
    prompts_of,
    save_frames,
    shard_batches,
    to_uint8,
    video_grid,
    video_strip,
    visible_in_frame,
)

__all__ = [
    "TRACK_GOAL_FLOOR",
    "TRACK_GOAL_UNCONTROLLED",
    "adapter_figures",
    "adapter_table",
    "draw_tracks",
    "edge_scores",
    "evaluate_adapter",
    "evaluate_map_adapter",
    "evaluate_track_adapter",
    "map_figures",
    "map_table",
    "reference_edges",
    "requested_tracks",
    "select_tracks",
    "summarize_map_adapter",
    "summarize_track_adapter",
    "track_figures",
    "track_table",
]

TRACK_GOAL_UNCONTROLLED = 0.3  # issue 5: EPE with control at most 30% of the EPE without it
TRACK_GOAL_FLOOR = 2.0  # issue 5: and within 2x of the tracker's floor on the ground-truth render


# ---------------------------------------------------------------------------------------------------------
# 1. track adapter


def select_tracks(visible0: Tensor, num_tracks: int, *, seed: int, clip: int) -> Tensor:
    """The requested tracks of one clip: ``num_tracks`` of the tracks visible at frame 0, chosen at random.

    The choice depends only on (seed, clip index), never on batching or sharding.

    Args:
        visible0: [N] bool, tracks visible (and inside the frame) at frame 0.
        num_tracks: how many to keep (all candidates when there are fewer).
        seed: evaluation seed.
        clip: the clip's index in the dataset.

    Returns:
        [K] long track indices in increasing order, K = min(num_tracks, candidates).
    """
    candidates = visible0.nonzero()[:, 0].cpu()  # (M,)
    generator = torch.Generator().manual_seed(batch_seed(seed, clip))
    pick = candidates[torch.randperm(len(candidates), generator=generator)[:num_tracks]]
    return pick.sort().values


def requested_tracks(tracks: Tensor, visible: Tensor, chosen: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The track check's request: the ``chosen`` simulator tracks of each clip (``select_tracks``), padded to one K.

    Args:
        tracks: [B, T, N, 2] the simulator's tracks (pixels).
        visible: [B, T, N] bool, visible and inside the frame (``visible_in_frame``).
        chosen: per clip, a LongTensor of track indices.

    Returns:
        queries [B, K, 3] (the tracker's frame-0 queries), requested [B, T, K, 2], requested_visible [B, T, K]
        (False on padded slots).
    """
    T = tracks.shape[1]
    queries, index, valid = frame0_queries(tracks, chosen)  # (B, K, 3), (B, K), (B, K)
    requested = tracks.gather(2, index[:, None, :, None].expand(-1, T, -1, 2))  # (B, T, K, 2)
    requested_visible = visible.gather(2, index[:, None].expand(-1, T, -1)) & valid[:, None]  # (B, T, K)
    return queries, requested, requested_visible


def _ratio(a: float, b: float) -> float:
    """a / b, with 0 / 0 = 1 (equal) and a / 0 = inf for a > 0."""
    if b > 0:
        return a / b
    return 1.0 if a == 0 else float("inf")


def summarize_track_adapter(per_clip: Sequence[dict[str, Any]], *, skipped: Sequence[int] = ()) -> dict[str, Any]:
    """The summary of ``evaluate_track_adapter``'s per-clip records (e.g. gathered from several ranks).

    EPEs are averaged over all scored (frame, point) pairs of all clips (point-weighted).
    """
    points = sum(r["points"] for r in per_clip)
    out: dict[str, Any] = {"kind": "tracks", "clips": len(per_clip), "skipped_clips": sorted(skipped), "points": points}
    for name in ("with", "without", "floor", "vae"):
        for unit in ("px", "norm"):
            key = f"epe_{name}_{unit}"
            out[key] = sum(r[key] * r["points"] for r in per_clip) / points if points else None
    if points:
        out["ratio_to_uncontrolled"] = _ratio(out["epe_with_px"], out["epe_without_px"])
        out["ratio_to_floor"] = _ratio(out["epe_with_px"], out["epe_floor_px"])
        out["ratio_to_vae"] = _ratio(out["epe_with_px"], out["epe_vae_px"])
        a = out["ratio_to_uncontrolled"] <= TRACK_GOAL_UNCONTROLLED
        b = out["ratio_to_floor"] <= TRACK_GOAL_FLOOR
    else:
        out["ratio_to_uncontrolled"] = out["ratio_to_floor"] = out["ratio_to_vae"] = None
        a = b = False
    out["goal"] = {
        f"at_most_{TRACK_GOAL_UNCONTROLLED:g}x_uncontrolled": bool(a),
        f"within_{TRACK_GOAL_FLOOR:g}x_floor": bool(b),
        "met": bool(a and b),
    }
    return out


def _settings(world: Any, **kwargs: Any) -> dict[str, Any]:
    c = world.config
    defaults = {"steps": c.steps, "method": c.method, "cfg_scale": c.cfg_scale, "shift": c.shift}
    out = {k: (defaults[k] if v is None and k in defaults else v) for k, v in kwargs.items()}
    out["shard"] = list(check_shard(out["shard"]))
    return out


def _check_common(world: Any, control_scale: Any, control_guidance: Any, cfg_scale: Any, keep_examples: Any) -> None:
    if isinstance(control_scale, bool) or not isinstance(control_scale, (int, float)):
        raise TypeError(f"control_scale must be a number, got {control_scale!r}")
    if isinstance(control_guidance, bool) or not isinstance(control_guidance, (int, float)):
        raise TypeError(f"control_guidance must be a number, got {control_guidance!r}")
    if not 0.0 <= control_guidance < float("inf"):
        raise ValueError(f"control_guidance must be a finite number >= 0 (1: off), got {control_guidance!r}")
    text_cfg = world.config.cfg_scale if cfg_scale is None else cfg_scale
    if control_guidance != 1.0 and text_cfg != 1.0:
        raise ValueError(
            f"control_guidance = {control_guidance} needs text guidance off (cfg_scale 1), got cfg_scale = {text_cfg}: "
            "one CFG pair guides either the text or the control"
        )
    if isinstance(keep_examples, bool) or not isinstance(keep_examples, int) or keep_examples < 0:
        raise ValueError(f"keep_examples must be an int >= 0, got {keep_examples!r}")


def _generate_controlled(
    world: Any, prompts: Any, first: Tensor, control: Control, *, control_guidance: float, sample: dict[str, Any],
    **kwargs: Any,
) -> Tensor:
    """Pixels [B, 3, T, H, W] of the generation with ``control``, guided on it when ``control_guidance != 1``."""
    if control_guidance == 1.0:
        return world.generate(prompts, first, controls=[control], **sample, **kwargs).pixels
    cond_only = dataclasses.replace(control, uncond=False)
    guided = {**sample, "cfg_scale": float(control_guidance)}
    return world.generate(prompts, first, controls=[cond_only], negative_prompt=prompts, **guided, **kwargs).pixels


def _subset(batch: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """Rows ``keep`` of every tensor / list of a collated batch."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v[torch.tensor(keep, device=v.device, dtype=torch.long)]
        elif isinstance(v, list):
            out[k] = [v[i] for i in keep]
        else:
            out[k] = v
    return out


@torch.no_grad()
def evaluate_track_adapter(
    world: Any,
    adapter: ControlAdapter,
    dataset: Any,
    *,
    clips: int | None = 64,
    num_tracks: int = 16,
    batch_size: int = 8,
    tracker: PointTracker | None = None,
    seed: int = 0,
    steps: int | None = None,
    method: str | None = None,
    cfg_scale: float | None = None,
    shift: float | None = None,
    control_scale: float = 1.0,
    control_guidance: float = 1.0,
    use_caption: bool = True,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    keep_examples: int = 0,
) -> dict[str, Any]:
    """Track EPE of generations with the track adapter, without it, and of the ground truth (the floor).

    See the module docstring. Clips without any track visible at frame 0 cannot be asked anything: they are
    skipped and listed in ``skipped_clips``.

    Args:
        world: an image-to-video ``wmgen.pipeline.WorldModel`` (the adapter's backbone).
        adapter: a track adapter (``kind == "tracks"``, e.g. ``controls.tracks.TrackAdapter``).
        dataset: a ``physics.worlds.WorldDataset`` (or a sequence of its item dicts) at the model's resolution.
        clips: number of clips (the first ones); None: all.
        num_tracks: requested tracks per clip (fewer where fewer are visible at frame 0).
        batch_size: clips generated together.
        tracker: the point tracker (default ``LucasKanadeTracker()``).
        seed: batch k is generated with ``batch_seed(seed, k)``; clip i's tracks are drawn with
            ``batch_seed(seed, i)``.
        steps, method, cfg_scale, shift: sampling settings (None: the model's defaults).
        control_scale: the ``Control``'s scale.
        control_guidance: CFG weight on the control (module docstring; 1: off, needs cfg_scale 1 otherwise).
        use_caption: condition on each clip's caption; False: the empty prompt.
        progress: show a progress bar over batches.
        shard: (rank, world_size): evaluate only the batches k with k % world_size == rank.
        keep_examples: keep the videos and tracks of this shard's first ``keep_examples`` clips for figures.

    Returns:
        ``summarize_track_adapter`` of this shard's clips -- ``clips``, ``skipped_clips``, ``points`` (scored
        pairs), ``epe_{with,without,floor,vae}_{px,norm}`` (norm: divided by the frame diagonal),
        ``ratio_to_uncontrolled`` (with / without), ``ratio_to_floor`` (with / floor), ``ratio_to_vae``
        (with / vae), ``goal`` -- plus ``settings``, ``per_clip`` (clip, tracks, points and the eight EPEs)
        and, with ``keep_examples``,
        ``examples``: [{clip, caption, tracks [T, K, 2], visible [T, K], with_control, without_control,
        ground_truth [3, T, H, W]}] (CPU tensors, not JSON: pop it before writing the rest).
    """
    clips = check_run_args(dataset, clips, batch_size, seed, world)
    if not isinstance(adapter, ControlAdapter) or adapter.kind != "tracks":
        got = f"kind {adapter.kind!r}" if isinstance(adapter, ControlAdapter) else type(adapter).__name__
        raise ValueError(f"adapter must be a track ControlAdapter (kind 'tracks'), got {got}")
    if isinstance(num_tracks, bool) or not isinstance(num_tracks, int) or num_tracks < 1:
        raise ValueError(f"num_tracks must be an int >= 1, got {num_tracks!r}")
    _check_common(world, control_scale, control_guidance, cfg_scale, keep_examples)
    tracker = LucasKanadeTracker() if tracker is None else tracker
    if not isinstance(tracker, PointTracker):
        raise TypeError(f"tracker must be a wmgen.eval.tracks.PointTracker, got {type(tracker).__name__}")
    adapter = adapter.to(world.device).eval()
    sample = {"steps": steps, "method": method, "cfg_scale": cfg_scale, "shift": shift}

    per_clip: list[dict[str, Any]] = []
    skipped: list[int] = []
    examples: list[dict[str, Any]] = []
    for k, indices in tqdm(shard_batches(clips, batch_size, shard), desc="track adapter", disable=not progress):
        batch = load_batch(dataset, indices, world, ("tracks", "visible"))
        _, _, T, H, W = batch["video"].shape
        vis = visible_in_frame(batch["tracks"], batch["visible"], H, W)  # (B, T, N)
        chosen = [select_tracks(vis[b, 0], num_tracks, seed=seed, clip=i) for b, i in enumerate(indices)]
        keep = [b for b, c in enumerate(chosen) if len(c)]
        skipped += [i for b, i in enumerate(indices) if not len(chosen[b])]
        if not keep:
            continue
        batch, vis = _subset(batch, keep), vis[keep]
        indices, chosen = [indices[b] for b in keep], [chosen[b] for b in keep]
        gt = batch["video"]  # (B, 3, T, H, W)

        # 1. the requested tracks: the chosen simulator tracks, visible where the simulator sees them
        queries, requested, req_visible = requested_tracks(batch["tracks"], vis, chosen)
        control = Control(adapter, TrackControl(requested, req_visible), scale=float(control_scale))

        # 2. the same noise with and without the control
        prompts, first = prompts_of(batch, use_caption), gt[:, :, 0]
        s = batch_seed(seed, k)
        videos = {
            "with": _generate_controlled(world, prompts, first, control, control_guidance=control_guidance,
                                         sample=sample, num_frames=T, seed=s),
            "without": world.generate(prompts, first, num_frames=T, seed=s, **sample).pixels,
            "floor": gt,
            "vae": world.decode(world.encode_video(gt)),  # (B, 3, T, H, W) the latent space's floor
        }

        # 3. re-track the requested points in each video
        records = [{"clip": i, "tracks": len(c)} for i, c in zip(indices, chosen, strict=True)]
        for name, video in videos.items():
            pred = tracker.track(video, queries)[0]  # (B, T, K, 2)
            for b, r in enumerate(records):
                e = track_epe(pred[b : b + 1], requested[b : b + 1], req_visible[b : b + 1], (H, W))
                r.update({f"epe_{name}_px": e["epe_px"], f"epe_{name}_norm": e["epe_norm"], "points": e["num_points"]})
        per_clip += records
        for b, i in enumerate(indices):
            if len(examples) < keep_examples:
                n = len(chosen[b])
                examples.append({
                    "clip": i, "caption": batch["caption"][b] if isinstance(batch.get("caption"), list) else "",
                    "tracks": requested[b, :, :n].cpu(), "visible": req_visible[b, :, :n].cpu(),
                    "with_control": videos["with"][b].cpu(), "without_control": videos["without"][b].cpu(),
                    "ground_truth": gt[b].cpu(),
                })  # fmt: skip

    out = summarize_track_adapter(per_clip, skipped=skipped)
    out["settings"] = _settings(
        world, **sample, seed=seed, batch_size=batch_size, num_tracks=num_tracks, control_scale=control_scale,
        control_guidance=control_guidance,
        use_caption=use_caption, tracker=repr(tracker), clips_requested=clips, shard=shard,
    )  # fmt: skip
    out["per_clip"] = per_clip
    if keep_examples > 0:
        out["examples"] = examples
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. map adapters: edge agreement


def _boundaries(ids: Tensor) -> Tensor:
    """[B, T, H, W] integer labels -> [B, 1, T, H, W] float, 1 on pixels whose right or lower neighbour differs."""
    edge = torch.zeros_like(ids, dtype=torch.bool)
    edge[..., :, :-1] |= ids[..., :, 1:] != ids[..., :, :-1]
    edge[..., :-1, :] |= ids[..., 1:, :] != ids[..., :-1, :]
    return edge[:, None].float()


def reference_edges(control: MapControl) -> Tensor:
    """The edges a map control asks for, [B, 1, T, H, W] in {0, 1}.

    depth: Canny edges (``edges_from_video``) of the disparity map seen as a grey image -- object silhouettes
    and depth steps, not texture; edges: the control's own edge map; mask: pixels whose right or lower
    neighbour has another instance id; map: Canny edges of the channel mean, scaled to [0, 1] per clip.
    """
    if not isinstance(control, MapControl):
        raise TypeError(f"control must be a MapControl, got {type(control).__name__}")
    maps = control.maps.float()  # (B, C, T, H, W)
    if control.kind == "edges":
        return (maps[:, :1] > 0.5).float()
    if control.kind == "mask":
        return _boundaries(maps.argmax(dim=1))
    if control.kind == "depth":
        grey = maps[:, :1]
    else:  # "map": user maps of any range
        grey = maps.mean(dim=1, keepdim=True)  # (B, 1, T, H, W)
        lo = grey.amin(dim=(2, 3, 4), keepdim=True)
        hi = grey.amax(dim=(2, 3, 4), keepdim=True)
        grey = (grey - lo) / (hi - lo).clamp_min(1e-12)
    return edges_from_video(grey.clamp(0, 1).expand(-1, 3, -1, -1, -1) * 2 - 1)  # (B, 1, T, H, W)


def edge_scores(pred: Tensor, target: Tensor, *, tolerance: int = 1) -> dict[str, Tensor]:
    """Edge agreement with a pixel tolerance, per sample.

    A predicted edge pixel is matched when a target edge pixel lies within ``tolerance`` pixels (Chebyshev
    distance, in the same frame), and vice versa.

    Args:
        pred: [B, 1, T, H, W] predicted edges (> 0.5 is an edge).
        target: [B, 1, T, H, W] reference edges.
        tolerance: pixels, >= 0 (0: exact positions).

    Returns:
        [B] tensors: ``pred``, ``pred_matched``, ``target``, ``target_matched`` (pixel counts, float64) and
        ``precision`` = pred_matched / pred, ``recall`` = target_matched / target, ``f1`` (0 where a count is 0).
    """
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, Tensor) or x.ndim != 5 or x.shape[1] != 1:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be an edge map [B, 1, T, H, W], got {got}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)}, {tuple(target.shape)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    p, q = (pred > 0.5).float(), (target.to(pred.device) > 0.5).float()

    def dilate(x: Tensor) -> Tensor:  # a (2 tol + 1)^2 square in each frame
        k = 2 * tolerance + 1
        return F.max_pool3d(x, (1, k, k), stride=1, padding=(0, tolerance, tolerance)) if tolerance else x

    dims = (1, 2, 3, 4)
    counts = {
        "pred": p.sum(dims).double(),
        "pred_matched": (p * dilate(q)).sum(dims).double(),
        "target": q.sum(dims).double(),
        "target_matched": (q * dilate(p)).sum(dims).double(),
    }
    return {**counts, **_prf(counts)}


def _prf(c: dict[str, Any]) -> dict[str, Any]:
    """precision, recall, F1 from counts (tensors or floats); 0 where a denominator is 0."""

    def div(a: Any, b: Any) -> Any:
        if isinstance(b, Tensor):
            return torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(b))
        return a / b if b > 0 else 0.0

    precision, recall = div(c["pred_matched"], c["pred"]), div(c["target_matched"], c["target"])
    return {"precision": precision, "recall": recall, "f1": div(2 * precision * recall, precision + recall)}


def summarize_map_adapter(per_clip: Sequence[dict[str, Any]], *, kind: str) -> dict[str, Any]:
    """Micro-averaged precision / recall / F1 with, without and for the ground truth (the ceiling), from
    ``evaluate_map_adapter``'s per-clip records (e.g. gathered from several ranks) of a ``kind`` adapter."""
    out: dict[str, Any] = {"kind": kind, "clips": len(per_clip)}
    for name in ("with", "without", "ground_truth"):
        counts = {
            k: float(sum(r[name][k] for r in per_clip)) for k in ("pred", "pred_matched", "target", "target_matched")
        }
        for metric, value in _prf(counts).items():
            out[f"{metric}_{name}"] = float(value)
        out[f"edge_pixels_{name}"] = counts["pred"]
    out["reference_edge_pixels"] = float(sum(r["with"]["target"] for r in per_clip))
    better = bool(per_clip) and out["f1_with"] > out["f1_without"]
    out["goal"] = {"f1_with_above_without": better, "recall_with_above_without": bool(per_clip) and
                   out["recall_with"] > out["recall_without"], "met": better}  # fmt: skip
    return out


@torch.no_grad()
def evaluate_map_adapter(
    world: Any,
    adapter: ControlAdapter,
    dataset: Any,
    *,
    clips: int | None = 64,
    batch_size: int = 8,
    seed: int = 0,
    steps: int | None = None,
    method: str | None = None,
    cfg_scale: float | None = None,
    shift: float | None = None,
    control_scale: float = 1.0,
    control_guidance: float = 1.0,
    tolerance: int = 1,
    use_caption: bool = True,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    keep_examples: int = 0,
) -> dict[str, Any]:
    """Edge agreement of generations with a dense-map control (depth, edges or mask), with and without it.

    The metric (module docstring): the control's reference edges (``reference_edges``: for depth, Canny edges of
    the depth map, i.e. object silhouettes) against the Canny edges of the generated RGB frames
    (``edges_from_video``), matched within ``tolerance`` pixels, over frames 1..T-1; recall (are the requested
    silhouettes drawn?), precision and F1, micro-averaged over all clips, with the adapter, without it (same
    noise), and for the ground-truth frames (ceiling).

    Args:
        world: an image-to-video ``wmgen.pipeline.WorldModel`` (the adapter's backbone).
        adapter: a map adapter of kind "depth", "edges" or "mask" (``controls.controlnet.MAP_ADAPTERS``).
        dataset: a ``physics.worlds.WorldDataset`` (or a sequence of its item dicts) at the model's resolution.
        clips: number of clips (the first ones); None: all.
        batch_size: clips generated together.
        seed: batch k is generated with ``batch_seed(seed, k)``.
        steps, method, cfg_scale, shift: sampling settings (None: the model's defaults).
        control_scale: the ``Control``'s scale.
        control_guidance: CFG weight on the control (module docstring; 1: off, needs cfg_scale 1 otherwise).
        tolerance: edge matching tolerance in pixels.
        use_caption: condition on each clip's caption; False: the empty prompt.
        progress: show a progress bar over batches.
        shard: (rank, world_size): evaluate only the batches k with k % world_size == rank.
        keep_examples: keep the videos of this shard's first ``keep_examples`` clips for figures.

    Returns:
        ``summarize_map_adapter`` of this shard -- ``clips``, ``{precision,recall,f1}_{with,without,ground_truth}``,
        ``edge_pixels_*``, ``reference_edge_pixels``, ``goal`` -- plus ``settings``, ``per_clip`` (clip and the
        four counts and three scores for with / without / ground_truth) and, with ``keep_examples``,
        ``examples``: [{clip, caption, kind, control [1, T, H, W] in [-1, 1] (a grey view of the control),
        reference_edges [1, T, H, W] in {0, 1}, with_control, without_control, ground_truth [3, T, H, W]}].
    """
    clips = check_run_args(dataset, clips, batch_size, seed, world)
    sources = {"depth": "depth", "edges": "video", "mask": "mask"}
    if not isinstance(adapter, ControlAdapter) or adapter.kind not in sources:
        got = f"kind {adapter.kind!r}" if isinstance(adapter, ControlAdapter) else type(adapter).__name__
        raise ValueError(
            f"adapter must be a map ControlAdapter of kind {sorted(sources)} (world ground truth), got {got}"
        )
    _check_common(world, control_scale, control_guidance, cfg_scale, keep_examples)
    kind = adapter.kind
    adapter = adapter.to(world.device).eval()
    sample = {"steps": steps, "method": method, "cfg_scale": cfg_scale, "shift": shift}

    per_clip: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for k, indices in tqdm(shard_batches(clips, batch_size, shard), desc=f"{kind} adapter", disable=not progress):
        batch = load_batch(dataset, indices, world, (sources[kind],))
        gt = batch["video"]  # (B, 3, T, H, W)
        T = gt.shape[2]
        control = MapControl.from_world(kind, batch)  # maps (B, C, T, H, W)
        reference = reference_edges(control)  # (B, 1, T, H, W)
        prompts, first, s = prompts_of(batch, use_caption), gt[:, :, 0], batch_seed(seed, k)
        ctrl = Control(adapter, control, scale=float(control_scale))
        videos = {
            "with": _generate_controlled(world, prompts, first, ctrl, control_guidance=control_guidance,
                                         sample=sample, num_frames=T, seed=s),
            "without": world.generate(prompts, first, num_frames=T, seed=s, **sample).pixels,
            "ground_truth": gt,
        }
        records: list[dict[str, Any]] = [{"clip": i} for i in indices]
        for name, video in videos.items():
            scores = edge_scores(edges_from_video(video)[:, :, 1:], reference[:, :, 1:], tolerance=tolerance)
            for b, r in enumerate(records):
                r[name] = {key: float(v[b]) for key, v in scores.items()}
        per_clip += records
        for b, i in enumerate(indices):
            if len(examples) < keep_examples:
                examples.append({
                    "clip": i, "caption": batch["caption"][b] if isinstance(batch.get("caption"), list) else "",
                    "kind": kind, "control": _control_view(control)[b].cpu(), "reference_edges": reference[b].cpu(),
                    "with_control": videos["with"][b].cpu(), "without_control": videos["without"][b].cpu(),
                    "ground_truth": gt[b].cpu(),
                })  # fmt: skip

    out = summarize_map_adapter(per_clip, kind=kind)
    out["settings"] = _settings(
        world, **sample, seed=seed, batch_size=batch_size, control_scale=control_scale,
        control_guidance=control_guidance, tolerance=tolerance, use_caption=use_caption, clips_requested=clips,
        shard=shard,
    )  # fmt: skip
    out["per_clip"] = per_clip
    if keep_examples > 0:
        out["examples"] = examples
    return out


def _control_view(control: MapControl) -> Tensor:
    """A grey picture of a map control: [B, 1, T, H, W] in [-1, 1] (depth and edges as they are, masks as ids)."""
    maps = control.maps.float()
    if control.kind == "mask":
        ids = maps.argmax(dim=1, keepdim=True).float()  # 0 = background
        return ids / max(1, maps.shape[1] - 1) * 2 - 1
    if control.kind in ("depth", "edges"):
        return maps[:, :1].clamp(0, 1) * 2 - 1
    grey = maps.mean(dim=1, keepdim=True)
    lo, hi = grey.amin(dim=(2, 3, 4), keepdim=True), grey.amax(dim=(2, 3, 4), keepdim=True)
    return (grey - lo) / (hi - lo).clamp_min(1e-12) * 2 - 1


# ---------------------------------------------------------------------------------------------------------
# 3. pictures


def _colours(n: int) -> np.ndarray:
    """n distinct saturated colours, uint8 [n, 3] (hues evenly around the HSV circle)."""
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0)] for i in range(n)],
                    dtype=np.uint8).reshape(n, 3)  # fmt: skip


def _disc(image: np.ndarray, x: float, y: float, radius: float, colour: np.ndarray) -> None:
    H, W = image.shape[:2]
    x0, x1 = max(0, int(np.floor(x - radius))), min(W, int(np.ceil(x + radius)) + 1)
    y0, y1 = max(0, int(np.floor(y - radius))), min(H, int(np.ceil(y + radius)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    image[y0:y1, x0:x1][inside] = colour


def draw_tracks(
    frames: np.ndarray, tracks: Tensor, visible: Tensor, *, scale: int = 1, trail: int = 4, radius: float | None = None
) -> np.ndarray:
    """Draw point tracks on a video: a coloured dot (dark rim) per visible point and a trail of its last frames.

    Args:
        frames: uint8 [T, H s, W s, 3], the video already upscaled ``scale`` times (``to_uint8(video, s)``).
        tracks: [T, N, 2] pixel (x, y) in the original resolution (pixel centres at integers).
        visible: [T, N] bool; invisible points and trail segments are not drawn.
        scale: the upscaling s of ``frames``.
        trail: frames of history drawn as a line behind each dot.
        radius: dot radius in output pixels (default about 0.4 s + 1).

    Returns:
        A copy of ``frames`` with the tracks drawn, uint8 [T, H s, W s, 3].
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    T, N = visible.shape
    if tuple(tracks.shape) != (T, N, 2) or frames.shape[0] != T:
        raise ValueError(f"tracks [T, N, 2] and visible [T, N] must match frames' T = {frames.shape[0]}, got "
                         f"{tuple(tracks.shape)} and {tuple(visible.shape)}")  # fmt: skip
    out = frames.copy()
    xy = (tracks.detach().double().cpu().numpy() + 0.5) * scale - 0.5  # (T, N, 2) in output pixels
    vis = visible.cpu().numpy()
    colours = _colours(N)
    r = 0.4 * scale + 1 if radius is None else radius
    dark = np.zeros(3, dtype=np.uint8)
    for t in range(T):
        for n in range(N):
            for u in range(max(0, t - trail), t):  # trail: dense dots along each visible segment
                if vis[u, n] and vis[u + 1, n]:
                    (ax, ay), (bx, by) = xy[u, n], xy[u + 1, n]
                    steps = int(np.ceil(max(abs(bx - ax), abs(by - ay)))) + 1
                    for a in np.linspace(0.0, 1.0, steps + 1):
                        _disc(out[t], ax + a * (bx - ax), ay + a * (by - ay), max(0.5, r / 3), colours[n])
            if vis[t, n]:
                _disc(out[t], *xy[t, n], r + 1, dark)
                _disc(out[t], *xy[t, n], r, colours[n])
    return out


def _scale_of(video: Tensor, scale: int | None, target: int = 192) -> int:
    return scale or max(1, target // video.shape[-2])


def track_figures(examples: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, fps: float = 12.0,
                  scale: int | None = None) -> list[Path]:  # fmt: skip
    """``tracks.gif``: one row per clip, the requested tracks drawn on the generation WITH the control | WITHOUT
    it | the ground truth; ``tracks.png``: the same panels at the first, middle and last frames (one row per clip
    and panel). From ``evaluate_track_adapter(..., keep_examples=n)["examples"]``."""
    if not examples:
        return []
    s = _scale_of(examples[0]["ground_truth"], scale)
    rows = [
        [draw_tracks(to_uint8(e[k], s), e["tracks"], e["visible"], scale=s)
         for k in ("with_control", "without_control", "ground_truth")]
        for e in examples
    ]  # fmt: skip
    kinds = ("with control", "without", "ground truth")
    return _save_panels(rows, examples, kinds, Path(out_dir) / "tracks", fps)


def map_figures(examples: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, fps: float = 12.0,
                scale: int | None = None) -> list[Path]:  # fmt: skip
    """``<kind>.gif``: one row per clip, the control | generated WITH it | WITHOUT it | ground truth;
    ``<kind>.png``: the same at the first, middle and last frames. From ``evaluate_map_adapter(...)["examples"]``."""
    if not examples:
        return []
    s = _scale_of(examples[0]["ground_truth"], scale)
    rows = [[to_uint8(e[k], s) for k in ("control", "with_control", "without_control", "ground_truth")]
            for e in examples]  # fmt: skip
    kind = examples[0]["kind"]
    kinds = (f"{kind} control", "with control", "without", "ground truth")
    return _save_panels(rows, examples, kinds, Path(out_dir) / kind, fps)


def _save_panels(
    rows: list[list[np.ndarray]], examples: Sequence[dict[str, Any]], kinds: Sequence[str], stem: Path, fps: float
) -> list[Path]:
    """``stem``.gif: the grid of ``rows`` (one per clip, one column per kind), titled; ``stem``.png: every panel at
    the first, middle and last frames, one row per (clip, kind)."""
    T, h, w, _ = rows[0][0].shape
    clips = [f"clip {e['clip']}" for e in examples]
    grid = add_titles(video_grid(rows), columns=kinds, rows=clips, cell=(h, w))
    gif = save_frames(stem.with_suffix(".gif"), grid, fps=fps)
    times = figure_frames(T)
    strip = video_strip([v for r in rows for v in r], times)
    names = [f"{e['clip']}: {k}" for e in examples for k in kinds]
    png = save_frames(
        stem.with_suffix(".png"), add_titles(strip, columns=[f"t = {t}" for t in times], rows=names, cell=(h, w))
    )
    return [gif, png]


# ---------------------------------------------------------------------------------------------------------
# 4. tables


def track_table(results: dict[str, Any]) -> str:
    """The markdown table of ``evaluate_track_adapter``'s results (EPE with / without the adapter / floor)."""
    r = results
    return markdown_table(
        ["video", "track EPE (px)", "EPE / diagonal", "ratio of EPE with control", "goal"],
        [
            ["with the track adapter", r["epe_with_px"], r["epe_with_norm"], 1.0, None],
            ["without (same model, same noise)", r["epe_without_px"], r["epe_without_norm"],
             r["ratio_to_uncontrolled"], f"ratio <= {TRACK_GOAL_UNCONTROLLED:g}"],
            ["ground truth (tracker floor)", r["epe_floor_px"], r["epe_floor_norm"], r["ratio_to_floor"],
             f"ratio <= {TRACK_GOAL_FLOOR:g}"],
            ["ground truth through the VAE (latent floor)", r["epe_vae_px"], r["epe_vae_norm"], r["ratio_to_vae"],
             None],
        ],
    )  # fmt: skip


def map_table(results: dict[str, Any]) -> str:
    """The markdown table of ``evaluate_map_adapter``'s results (edge agreement with the control)."""
    r = results
    rows = [
        [f"with the {r['kind']} adapter", r["recall_with"], r["precision_with"], r["f1_with"]],
        ["without (same model, same noise)", r["recall_without"], r["precision_without"], r["f1_without"]],
        ["ground truth (ceiling)", r["recall_ground_truth"], r["precision_ground_truth"], r["f1_ground_truth"]],
    ]
    return markdown_table([f"video ({r['kind']} edges, 1 px)", "recall", "precision", "F1"], rows)


# ---------------------------------------------------------------------------------------------------------
# 5. any adapter by its kind (the scripts' entry points)


def evaluate_adapter(
    world: Any,
    adapter: ControlAdapter,
    dataset: Any,
    *,
    num_tracks: int = 16,
    tracker: PointTracker | None = None,
    tolerance: int = 1,
    **kwargs: Any,
) -> dict[str, Any]:
    """``evaluate_track_adapter`` for a "tracks" adapter, else ``evaluate_map_adapter``.

    ``num_tracks`` and ``tracker`` go to the track evaluation, ``tolerance`` to the map evaluation, ``kwargs``
    (clips, batch_size, seed, steps, method, cfg_scale, shift, control_scale, control_guidance, use_caption,
    progress, shard, keep_examples) to either.
    """
    if not isinstance(adapter, ControlAdapter):
        raise TypeError(f"adapter must be a ControlAdapter, got {type(adapter).__name__}")
    if adapter.kind == "tracks":
        return evaluate_track_adapter(world, adapter, dataset, num_tracks=num_tracks, tracker=tracker, **kwargs)
    return evaluate_map_adapter(world, adapter, dataset, tolerance=tolerance, **kwargs)


def adapter_table(results: dict[str, Any]) -> str:
    """``track_table`` or ``map_table`` by ``results["kind"]``."""
    return track_table(results) if results["kind"] == "tracks" else map_table(results)


def adapter_figures(
    examples: Sequence[dict[str, Any]], out_dir: str | os.PathLike, kind: str, *, fps: float = 12.0
) -> list[Path]:
    """``track_figures`` or ``map_figures`` by the adapter kind."""
    return (track_figures if kind == "tracks" else map_figures)(examples, out_dir, fps=fps)
