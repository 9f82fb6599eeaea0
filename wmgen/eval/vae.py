"""Latent ceilings: what a VAE lets *any* model built on it score on the world-model and track checks.

A latent video model can do no better than its VAE decodes. Before a DiT and adapters are trained on a
candidate VAE (hours on a CPU), the ground truth of held-out clips is passed through it (encode, posterior
mode, decode) and scored by the same measurements as ``wmgen.eval.world`` and ``wmgen.eval.controls``:

- **Reconstruction**: PSNR over whole clips (the training validation's number), over frames 1..T-1 (the world
  check's frames), over object pixels only (instance masks), and each object's colour error: the largest
  per-channel difference between its mean colour in the reconstruction and in the ground truth, over every
  frame where the object shows (pixels in [-1, 1]). Objects cover a few percent of a frame; a VAE can make
  them all one dull colour at little cost to the whole-frame PSNR, and the trackers follow objects.
- **World check, PSNR half**: a *twin* (another equally likely future of the same first frame,
  ``evaluate_twins``) through the VAE against copy-first-frame. A perfect latent model's samples are twins
  decoded by this VAE: if these do not beat copy, no model in this latent space passes by sampling.
- **World check, motion half**: falling objects (``FALL_PX``) tracked in the reconstruction (the world check's
  tracker, LK by default) and in the ground truth (the tracker floor): the fraction that still fall.
- **Track check**: the EPE of ``num_tracks`` requested tracks per clip (chosen exactly as
  ``evaluate_track_adapter`` chooses them) re-tracked in the reconstruction (``epe_vae``), in the ground truth
  (``epe_floor``, the tracker's own error) and in copy-first-frame (``epe_still``: standing still, a
  model-free reference for "no control").

Reachability of the goals (``reachable``): the world PSNR half needs ``psnr_twin_vae > psnr_copy``, the motion
half ``vae_falls_fraction > 0.5``, the track goal ``epe_vae <= 2 epe_floor`` (its other half, 0.3x the
uncontrolled EPE, depends on the model's uncontrolled generations: compare ``epe_vae`` with the uncontrolled
EPE recorded for a model, or with ``epe_still``).

Example::

    vae = CausalVAE.from_pretrained("outputs/tiny/vae/vae")
    r = evaluate_vae(vae, WorldDataset("outputs/tiny/data/val"), clips=64)
    r["psnr_twin_vae"], r["vae_falls_fraction"], r["epe_vae_px"], r["reachable"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wmgen.eval.controls import TRACK_GOAL_FLOOR, requested_tracks, select_tracks
from wmgen.eval.tracks import ColorObjectTracker, LucasKanadeTracker, PointTracker, track_epe
from wmgen.eval.world import (
    FALL_PX,
    _fraction,
    _mean,
    evaluate_twins,
    markdown_table,
    psnr,
    tracked_object_motion,
    visible_in_frame,
)

__all__ = ["COLOUR_OFF", "evaluate_vae", "object_colour_errors", "summarize_vae", "vae_table"]

COLOUR_OFF = 0.2  # an object's mean colour is "off" when a channel differs by more than this ([-1, 1] pixels)


def object_colour_errors(recon: Tensor, video: Tensor, mask: Tensor) -> list[dict[int, float]]:
    """Per clip, {object id: largest per-channel |mean colour of recon - of video|} over the object's pixels.

    Args:
        recon, video: [B, 3, T, H, W] in [-1, 1] (recon is clamped to that range first).
        mask: [B, T, H, W] int instance mask, -1 = background.

    Returns:
        per clip, a dict over the objects that show in at least one pixel.
    """
    if recon.shape != video.shape or recon.ndim != 5 or recon.shape[1] != 3:
        raise ValueError(f"recon and video must be the same [B, 3, T, H, W], got {tuple(recon.shape)}, "
                         f"{tuple(video.shape)}")  # fmt: skip
    if mask.shape != (video.shape[0], *video.shape[2:]):
        raise ValueError(f"mask must be [B, T, H, W] = {(video.shape[0], *video.shape[2:])}, got {tuple(mask.shape)}")
    out = []
    recon = recon.double().clamp(-1, 1)
    for b in range(video.shape[0]):
        errors = {}
        for o in mask[b].unique().tolist():
            if o < 0:
                continue
            on = mask[b] == o  # (T, H, W)
            mean_r = recon[b][:, on].mean(dim=1)  # (3,)
            mean_v = video[b].double()[:, on].mean(dim=1)
            errors[int(o)] = float((mean_r - mean_v).abs().max())
        out.append(errors)
    return out


def summarize_vae(per_clip: Sequence[dict[str, Any]], twins: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of ``evaluate_vae``'s per-clip records (and its twins' numbers, when measured)."""
    per_clip = sorted(per_clip, key=lambda r: r["clip"])
    falling = [o for r in per_clip for o in r["objects"] if o["falls"]]
    colours = [e for r in per_clip for e in r["colour_errors"].values()]
    points = sum(r["points"] for r in per_clip)
    out: dict[str, Any] = {
        "clips": len(per_clip),
        "psnr": _mean([r["psnr"] for r in per_clip]),
        "psnr_vae": _mean([r["psnr_vae"] for r in per_clip]),
        "psnr_copy": _mean([r["psnr_copy"] for r in per_clip]),
        "object_psnr": _mean([r["object_psnr"] for r in per_clip if r["object_psnr"] is not None]),
        "objects": len(colours),
        "colour_error_mean": _mean(colours),
        "colour_error_median": float(np.median(colours)) if colours else None,
        "colour_off_fraction": _fraction([e > COLOUR_OFF for e in colours]),
        "falling_objects": len(falling),
        "floor_falls_fraction": _fraction([o["floor_falls"] for o in falling]),
        "vae_falls_fraction": _fraction([o["vae_falls"] for o in falling]),
        "dy_ground_truth": _mean([o["dy_ground_truth"] for o in falling]),
        "dy_floor": _mean([o["dy_floor"] for o in falling]),
        "dy_vae": _mean([o["dy_vae"] for o in falling]),
        "points": points,
    }
    for name in ("floor", "vae", "still"):
        out[f"epe_{name}_px"] = sum(r[f"epe_{name}_px"] * r["points"] for r in per_clip) / points if points else None
    out.update(twins or {})
    twin = out.get("psnr_twin_vae")
    out["reachable"] = {
        "world_psnr": None if twin is None else bool(twin > out["psnr_copy"]),
        "world_motion": None if out["vae_falls_fraction"] is None else bool(out["vae_falls_fraction"] > 0.5),
        f"tracks_within_{TRACK_GOAL_FLOOR:g}x_floor": (
            None if not points else bool(out["epe_vae_px"] <= TRACK_GOAL_FLOOR * out["epe_floor_px"])
        ),
    }
    return out


@torch.no_grad()
def evaluate_vae(
    vae: Any,
    dataset: Any,
    *,
    clips: int = 64,
    batch_size: int = 8,
    num_tracks: int = 16,
    seed: int = 0,
    motion_tracker: PointTracker | None = None,
    track_tracker: PointTracker | None = None,
    fall_px: float = FALL_PX,
    twins: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the ground truth of the first ``clips`` held-out clips through ``vae`` (module docstring).

    Args:
        vae: a ``wmgen.models.vae.CausalVAE`` (its device is used).
        dataset: a ``physics.worlds.WorldDataset`` (video, mask, tracks, visible, object_ids per item; scenes
            and config for the twins).
        clips: how many clips, the first ones.
        batch_size: clips encoded together.
        num_tracks: requested tracks per clip of the track check (``evaluate_track_adapter``'s default 16).
        seed: the track check's seed (``select_tracks``) and the twins' (``evaluate_twins``).
        motion_tracker: the world check's tracker (default ``LucasKanadeTracker()``, as ``evaluate_world_model``).
        track_tracker: the track check's tracker (default ``ColorObjectTracker()``, the recorded figures').
        fall_px: mean downward pixels above which a ground-truth object falls (tracked: above half of it).
        twins: also score twins through the VAE (``psnr_twin_vae``; simulates and renders every clip again).
        progress: show a progress bar over batches.

    Returns:
        ``summarize_vae``: ``clips``, ``psnr`` (whole clips), ``psnr_vae`` / ``psnr_copy`` (frames 1..),
        ``object_psnr``, ``objects``, ``colour_error_mean`` / ``_median``, ``colour_off_fraction``,
        ``falling_objects``, ``floor_falls_fraction`` / ``vae_falls_fraction``, ``dy_ground_truth`` /
        ``dy_floor`` / ``dy_vae``, ``points``, ``epe_{floor,vae,still}_px``, the twins' entries
        (``psnr_twin_vae``, ``twin_vae_beats_copy_fraction``, ...) and ``reachable``; plus ``settings`` and
        ``per_clip``.
    """
    from physics.worlds import WorldDataset
    from wmgen.models.vae import CausalVAE
    from wmgen.train.vae import object_psnr

    if not isinstance(vae, CausalVAE):
        raise TypeError(f"vae must be a wmgen.models.vae.CausalVAE, got {type(vae).__name__}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be a WorldDataset, got {type(dataset).__name__}")
    if isinstance(clips, bool) or not isinstance(clips, int) or not 1 <= clips <= len(dataset):
        raise ValueError(f"clips must be an int in [1, {len(dataset)}] (the dataset's size), got {clips!r}")
    for name, value in (("batch_size", batch_size), ("num_tracks", num_tracks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(fall_px, bool) or not isinstance(fall_px, (int, float)) or not fall_px > 0:
        raise ValueError(f"fall_px must be a number > 0 (pixels), got {fall_px!r}")
    motion_tracker = LucasKanadeTracker() if motion_tracker is None else motion_tracker
    track_tracker = ColorObjectTracker() if track_tracker is None else track_tracker
    for name, tracker in (("motion_tracker", motion_tracker), ("track_tracker", track_tracker)):
        if not isinstance(tracker, PointTracker):
            raise TypeError(f"{name} must be a wmgen.eval.tracks.PointTracker, got {type(tracker).__name__}")

    device = next(vae.parameters()).device
    vae = vae.eval()
    per_clip: list[dict[str, Any]] = []
    starts = range(0, clips, batch_size)
    for start in tqdm(starts, desc="vae ceilings", disable=not progress):
        indices = list(range(start, min(start + batch_size, clips)))
        batch = WorldDataset.collate([dataset[i] for i in indices])
        gt = batch["video"].float()  # (B, 3, T, H, W) in [-1, 1]
        _, _, _, H, W = gt.shape
        recon = vae.decode(vae.encode(gt.to(device)).mode()).clamp(-1, 1).cpu()  # (B, 3, T, H, W)
        copy = gt[:, :, :1].expand_as(gt)
        p_all = psnr(recon, gt).tolist()
        p_vae, p_copy = (psnr(x[:, :, 1:], gt[:, :, 1:]).tolist() for x in (recon, copy))
        p_obj = [None if math.isnan(v) else v for v in object_psnr(recon, gt, batch["mask"]).tolist()]  # no objects
        colours = object_colour_errors(recon, gt, batch["mask"])

        # world check, motion half: every object's frame-0-visible tracks, simulated and re-tracked
        motion = tracked_object_motion(batch, {"floor": gt, "vae": recon}, motion_tracker)

        # track check: the requested tracks evaluate_track_adapter asks for, re-tracked
        vis = visible_in_frame(batch["tracks"], batch["visible"], H, W)  # (B, T, N)
        chosen = [select_tracks(vis[b, 0], num_tracks, seed=seed, clip=i) for b, i in enumerate(indices)]
        queries, requested, req_visible = requested_tracks(batch["tracks"], vis, chosen)
        epes = {name: track_tracker.track(video, queries)[0] for name, video in
                (("floor", gt), ("vae", recon), ("still", copy))}  # fmt: skip

        for b, i in enumerate(indices):
            objects = []
            for o, (dy, _) in sorted(motion["sim"][b].items()):
                dy_floor, dy_vae = motion["floor"][b][o][0], motion["vae"][b][o][0]
                objects.append({
                    "object": o, "falls": dy > fall_px, "dy_ground_truth": dy, "dy_floor": dy_floor,
                    "dy_vae": dy_vae, "floor_falls": dy_floor > fall_px / 2, "vae_falls": dy_vae > fall_px / 2,
                })  # fmt: skip
            record = {
                "clip": i, "psnr": p_all[b], "psnr_vae": p_vae[b], "psnr_copy": p_copy[b], "object_psnr": p_obj[b],
                "colour_errors": colours[b], "objects": objects, "points": 0,
            }  # fmt: skip
            for name, pred in epes.items():
                if len(chosen[b]):
                    e = track_epe(pred[b : b + 1], requested[b : b + 1], req_visible[b : b + 1], (H, W))
                    record.update({f"epe_{name}_px": e["epe_px"], "points": e["num_points"]})
                else:
                    record[f"epe_{name}_px"] = 0.0  # no tracks: weighs nothing (points 0)
            per_clip.append(record)

    twin = evaluate_twins(dataset, clips=clips, vae=vae, seed=seed) if twins else None
    out = summarize_vae(per_clip, twin)
    out["settings"] = {
        "clips": clips, "batch_size": batch_size, "num_tracks": num_tracks, "seed": seed, "fall_px": float(fall_px),
        "motion_tracker": repr(motion_tracker), "track_tracker": repr(track_tracker), "twins": bool(twins),
    }  # fmt: skip
    out["per_clip"] = per_clip
    return out


def _columns(results: dict[str, Any]) -> list[Any]:
    r = results
    return [
        r["psnr"], r["object_psnr"], r["colour_error_mean"], r["colour_off_fraction"], r["psnr_vae"],
        r.get("psnr_twin_vae"), r.get("twin_vae_beats_copy_fraction"), r["vae_falls_fraction"], r["dy_vae"],
        r["epe_vae_px"], None if not r["points"] else r["epe_vae_px"] / r["epe_floor_px"],
    ]  # fmt: skip


def vae_table(named: dict[str, dict[str, Any]]) -> str:
    """Markdown table of several ``evaluate_vae`` results (one row per VAE) plus the references they share
    (copy-first-frame, the tracked ground truth), taken from the first result."""
    header = [
        "VAE", "PSNR (dB)", "object PSNR", "colour err", f"colours off > {COLOUR_OFF:g}", "PSNR frames 1..",
        "twin through VAE", "twin beats copy", "falls", "dy falling (px)", "track EPE (px)", "/ tracker floor",
    ]  # fmt: skip
    rows = [[name, *_columns(r)] for name, r in named.items()]
    r = next(iter(named.values()))
    ratio = (lambda epe: epe / r["epe_floor_px"]) if r["points"] else (lambda epe: None)
    rows += [
        ["copy first frame", None, None, None, None, r["psnr_copy"], None, None, 0.0, 0.0, r["epe_still_px"],
         ratio(r["epe_still_px"])],
        ["ground truth (tracked: the floor)", None, None, 0.0, 0.0, None, None, None, r["floor_falls_fraction"],
         r["dy_floor"], r["epe_floor_px"], ratio(r["epe_floor_px"])],
        ["twin in pixels (a perfect sampler)", None, None, None, None, r.get("psnr_twin"), None,
         r.get("twin_beats_copy_fraction"), None, None, None, None],
    ]  # fmt: skip
    return markdown_table(header, rows)
