"""World-model check: from a held-out first frame, does a generation beat copying that frame, and do falling
objects fall?

For each held-out clip of a simulated world dataset (``physics.worlds.WorldDataset``), the model generates a clip
from the ground-truth first frame (and the clip's caption), and the result is compared with the simulation:

1. **PSNR** over frames 1 .. T-1 (frame 0 is given) against the ground truth, for
   (a) the generation, (b) *copy-first-frame*, the baseline that holds frame 0 still, and (c) the VAE
   reconstruction of the ground truth, the ceiling of any model that generates in this VAE's latent space.
   Reported: the three means and the fraction of clips where (a) beats (b).
2. **Motion direction.** An object *falls* in the ground truth when its tracks visible at frame 0 move down the
   image (+y) by more than ``fall_px`` pixels on average from frame 0 to the last frame (the simulator's exact
   tracks, which stay defined where a point is occluded). The same points -- their frame-0 positions as queries
   -- are tracked with a point tracker in the generated video and in the ground-truth video (the *tracker
   floor*: what the tracker measures on a perfect video) and in the VAE reconstruction of the ground truth (the
   *latent ceiling* of the motion check: what the tracker measures on the best video this VAE can decode). An
   object falls in a video when its tracked mean dy exceeds ``fall_px / 2``. Copying the first frame never
   moves (dy = 0, never falls).

The goal (issue "world model"): mean PSNR of the generations above copy-first-frame, and most falling objects
falling in the generations (``falls_fraction > 0.5``).

**Twins** calibrate the PSNR (``evaluate_twins``). One frame does not fix the future: initial velocities,
spins, restitution, friction and drags are not visible in it. A *twin* of a held-out scene keeps everything
frame 0 shows and redraws the rest (``physics.scenes.redraw_motion``), and is simulated and rendered like the
dataset: another future exactly as likely given the first frame. A perfect world model's samples are distributed
like twins, so the twins' PSNR against the ground truth is what a perfect sampler scores, and the twins passed
through the VAE are what a perfect *latent* model scores: if that does not beat copy-first-frame, no model in
this latent space can pass the PSNR part of the goal by sampling.

Sharding: the clips are cut into batches of ``batch_size`` in order; batch k is generated with a seed derived
from (seed, k) and is evaluated by rank ``k % world_size`` (``shard=(rank, world_size)``), so a run under
``torchrun`` gives the same numbers as one process. ``summarize_world_model`` turns the gathered per-clip
records into the summary.

Example::

    world = WorldModel.from_pretrained("checkpoints/tiny/world_model")
    results = evaluate_world_model(world, WorldDataset("outputs/tiny/data/val"), clips=64, steps=16)
    results["psnr_generated"], results["psnr_copy"], results["falls_fraction"]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from wmgen.eval.tracks import LucasKanadeTracker, PointTracker

__all__ = [
    "FALL_PX",
    "add_generation_arguments",
    "add_titles",
    "batch_seed",
    "evaluate_twins",
    "evaluate_world_model",
    "load_world_model",
    "object_motion",
    "psnr",
    "save_frames",
    "summarize_world_model",
    "markdown_table",
    "to_uint8",
    "tracked_object_motion",
    "video_grid",
    "video_strip",
    "world_figures",
    "world_table",
    "write_json",
]

FALL_PX = 3.0  # px: mean downward motion over a clip above which a ground-truth object "falls"


# ---------------------------------------------------------------------------------------------------------
# 1. metrics


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of videos in [-1, 1] (data range 2): ``10 log10(2^2 / MSE)`` per sample.

    The MSE is the mean over every channel, frame and pixel given: slice the frames to score before calling
    (``psnr(x[:, :, 1:], y[:, :, 1:])`` skips frame 0). Computed in float64; identical inputs give +inf.

    Args:
        a: [B, 3, T, H, W] float.
        b: [B, 3, T, H, W] float, the same shape.

    Returns:
        [B] float64 PSNR in dB.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"psnr: {name} must be a float tensor [B, 3, T, H, W] in [-1, 1], got {got}")
        if x.ndim != 5 or x.shape[1] != 3 or 0 in x.shape:
            raise ValueError(f"psnr: {name} must be a non-empty [B, 3, T, H, W] tensor, got {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"psnr: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.double() - b.to(a.device).double()).square().mean(dim=(1, 2, 3, 4))  # (B,)
    return 10.0 * torch.log10(4.0 / mse)  # MSE 0 -> +inf


def object_motion(
    tracks: Tensor, queries: Tensor, valid: Tensor, object_ids: Tensor
) -> list[dict[int, tuple[float, int]]]:
    """Mean vertical displacement (last frame minus frame 0) of each object's query points.

    Args:
        tracks: [B, T, K, 2] pixel (x, y) of the K query points (a tracker's output or the simulator's tracks).
        queries: [B, K, 3] (t, x, y) rows with t = 0: the points' frame-0 positions.
        valid: [B, K] bool, which of the K points are real (the rest is padding).
        object_ids: [B, K] int object index of each point.

    Returns:
        per clip, {object id: (mean dy in pixels, number of points)} over its valid points; +dy is down.
    """
    dy = tracks[:, -1, :, 1].double() - queries[..., 2].double()  # (B, K)
    out = []
    for b in range(tracks.shape[0]):
        per_object = {}
        for o in object_ids[b][valid[b]].unique().tolist():
            sel = valid[b] & (object_ids[b] == o)  # (K,)
            per_object[int(o)] = (float(dy[b][sel].mean()), int(sel.sum()))
        out.append(per_object)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _fraction(flags: Sequence[bool]) -> float | None:
    return float(np.mean([bool(f) for f in flags])) if len(flags) else None


def summarize_world_model(per_clip: Sequence[dict[str, Any]], *, fall_px: float = FALL_PX) -> dict[str, Any]:
    """The summary of ``evaluate_world_model``'s per-clip records (e.g. gathered from several ranks).

    Args:
        per_clip: the records of ``evaluate_world_model(...)["per_clip"]``, in any order.
        fall_px: the fall threshold the records were made with (recorded, not re-applied).

    Returns:
        The summary numbers described in ``evaluate_world_model`` (None where there is nothing to average).
    """
    per_clip = sorted(per_clip, key=lambda r: r["clip"])
    falling = [o for r in per_clip for o in r["objects"] if o["falls"]]
    gen, copy = [r["psnr_generated"] for r in per_clip], [r["psnr_copy"] for r in per_clip]
    summary = {
        "clips": len(per_clip),
        "psnr_generated": _mean(gen),
        "psnr_copy": _mean(copy),
        "psnr_vae": _mean([r["psnr_vae"] for r in per_clip]),
        "beats_copy_fraction": _fraction([r["beats_copy"] for r in per_clip]),
        "objects": sum(len(r["objects"]) for r in per_clip),
        "falling_objects": len(falling),
        "falls_fraction": _fraction([o["generated_falls"] for o in falling]),
        "floor_falls_fraction": _fraction([o["floor_falls"] for o in falling]),
        "vae_falls_fraction": _fraction([o["vae_falls"] for o in falling]),
        "copy_falls_fraction": 0.0 if falling else None,  # a still video never moves
        "dy_generated": _mean([o["dy_generated"] for o in falling]),
        "dy_ground_truth": _mean([o["dy_ground_truth"] for o in falling]),
        "dy_floor": _mean([o["dy_floor"] for o in falling]),
        "dy_vae": _mean([o["dy_vae"] for o in falling]),
        "dy_copy": 0.0 if falling else None,
        "fall_px": float(fall_px),
    }
    beats = summary["psnr_generated"] is not None and summary["psnr_generated"] > summary["psnr_copy"]
    falls = summary["falls_fraction"] is not None and summary["falls_fraction"] > 0.5
    summary["goal"] = {
        "beats_copy_psnr": bool(beats),
        "falling_objects_fall": bool(falls),
        "met": bool(beats and falls),
    }
    return summary


# ---------------------------------------------------------------------------------------------------------
# 2. shared plumbing of the evaluations (batches, shards, seeds, data)


def check_shard(shard: Any) -> tuple[int, int]:
    """(rank, world_size) with 0 <= rank < world_size."""
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return int(shard[0]), int(shard[1])


def shard_batches(clips: int, batch_size: int, shard: tuple[int, int]) -> list[tuple[int, list[int]]]:
    """This rank's batches: (k, clip indices) for the batches k = rank, rank + world_size, ... of range(clips)."""
    rank, world_size = check_shard(shard)
    starts = range(0, clips, batch_size)
    return [(k, list(range(s, min(s + batch_size, clips)))) for k, s in enumerate(starts) if k % world_size == rank]


def batch_seed(seed: int, k: int) -> int:
    """Generation seed of batch k: a function of (seed, k) only, so shards reproduce a single-process run."""
    return (seed * 1_000_003 + k) % 2**63


def check_run_args(dataset: Any, clips: Any, batch_size: Any, seed: Any, world: Any) -> int:
    """Validate the arguments the evaluations share; return the number of clips (None -> all)."""
    from wmgen.pipeline import WorldModel

    if not isinstance(world, WorldModel):
        raise TypeError(f"world must be a wmgen.pipeline.WorldModel, got {type(world).__name__}")
    if not world.image_to_video:
        raise ValueError("the evaluations generate from each clip's first frame: world must be an image-to-video model")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a WorldDataset (or a sequence of its item dicts), got {type(dataset).__name__}"
        )
    n = len(dataset)
    clips = n if clips is None else clips
    if isinstance(clips, bool) or not isinstance(clips, int) or not 1 <= clips <= n:
        raise ValueError(f"clips must be an int in [1, {n}] (the dataset's size) or None (all), got {clips!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return clips


def load_batch(dataset: Any, indices: Sequence[int], world: Any, keys: Sequence[str]) -> dict[str, Any]:
    """Items ``indices`` of ``dataset`` collated (``WorldDataset.collate``), tensors on the world's device.

    Checks that every key in ``keys`` is there and that the frames are the model's resolution.
    """
    from physics.worlds import WorldDataset

    items = [dataset[i] for i in indices]
    missing = [k for k in ("video", *keys) if k not in items[0]]
    if missing:
        raise ValueError(f"dataset items must hold {sorted({'video', *keys})} (WorldDataset items), missing {missing}")
    batch = WorldDataset.collate(items)
    video = batch["video"]
    R = world.config.resolution
    if video.ndim != 5 or video.shape[1] != 3 or tuple(video.shape[3:]) != (R, R):
        raise ValueError(
            f"dataset videos must be [3, T, H, W] with H = W = {R} (the model's config.resolution), got "
            f"{tuple(video.shape[1:])} per clip"
        )
    return {k: v.to(world.device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def prompts_of(batch: dict[str, Any], use_caption: bool) -> list[str]:
    """The batch's captions, or empty prompts when ``use_caption`` is False."""
    B = batch["video"].shape[0]
    if not use_caption:
        return [""] * B
    captions = batch.get("caption")
    if not isinstance(captions, list) or len(captions) != B or not all(isinstance(c, str) for c in captions):
        raise ValueError("use_caption=True needs a 'caption' string per dataset item (or pass use_caption=False)")
    return captions


def frame0_queries(tracks: Tensor, chosen: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Tracker queries at frame 0 for a different set of tracks per clip, padded to one K.

    Args:
        tracks: [B, T, N, 2] the simulator's tracks.
        chosen: per clip, a LongTensor of track indices (visible and inside the frame at frame 0).

    Returns:
        queries [B, K, 3] (0, x, y), index [B, K] long (the chosen track of each slot), valid [B, K] bool. Padded
        slots repeat a real query (or pixel (0, 0) for a clip without tracks), so every query is valid for a
        tracker; ``valid`` is False there.
    """
    B = tracks.shape[0]
    K = max(1, max((len(c) for c in chosen), default=1))
    index = torch.zeros(B, K, dtype=torch.long, device=tracks.device)
    valid = torch.zeros(B, K, dtype=torch.bool, device=tracks.device)
    for b, c in enumerate(chosen):
        if len(c):
            index[b, : len(c)] = c.to(tracks.device)
            index[b, len(c) :] = int(c[0])
            valid[b, : len(c)] = True
    xy = tracks[:, 0].gather(1, index[..., None].expand(-1, -1, 2))  # (B, K, 2)
    empty = ~valid.any(dim=1)  # (B,) clips without a query: any in-frame point will do, pixel (0, 0)
    xy = torch.where(empty[:, None, None], torch.zeros_like(xy), xy)
    queries = torch.cat([torch.zeros_like(xy[..., :1]), xy], dim=-1)  # (B, K, 3)
    return queries.float(), index, valid


def visible_in_frame(tracks: Tensor, visible: Tensor, H: int, W: int) -> Tensor:
    """``visible`` [B, T, N] and inside the frame [-0.5, W - 0.5) x [-0.5, H - 0.5)."""
    x, y = tracks.unbind(-1)
    return visible & (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5)


def tracked_object_motion(
    batch: dict[str, Any], videos: dict[str, Tensor], tracker: PointTracker
) -> dict[str, list[dict[int, tuple[float, int]]]]:
    """``object_motion`` of every object's tracks visible at frame 0: simulated (key ``"sim"``, the batch's
    tracks) and re-tracked by ``tracker`` in each of ``videos`` ({name: [B, 3, T, H, W]}, same keys out).

    ``batch`` holds ``tracks`` [B, T, N, 2], ``visible`` [B, T, N] and ``object_ids`` [B, N] (a collated
    WorldDataset batch)."""
    tracks = batch["tracks"]
    _, T, _, _ = tracks.shape
    H, W = next(iter(videos.values())).shape[-2:]
    vis0 = visible_in_frame(tracks[:, :1], batch["visible"][:, :1], H, W)[:, 0]  # (B, N)
    queries, index, valid = frame0_queries(tracks, [v.nonzero()[:, 0] for v in vis0])
    ids = batch["object_ids"].gather(1, index)  # (B, K)
    sim = tracks.gather(2, index[:, None, :, None].expand(-1, T, -1, 2))  # (B, T, K, 2)
    motion = {"sim": object_motion(sim, queries, valid, ids)}
    for name, video in videos.items():
        motion[name] = object_motion(tracker.track(video, queries)[0], queries, valid, ids)
    return motion


def finite_or_none(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no inf / NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# 3. the evaluation


@torch.no_grad()
def evaluate_world_model(
    world: Any,
    dataset: Any,
    *,
    clips: int | None = 64,
    batch_size: int = 8,
    steps: int | None = None,
    method: str | None = None,
    cfg_scale: float | None = None,
    shift: float | None = None,
    seed: int = 0,
    tracker: PointTracker | None = None,
    use_caption: bool = True,
    fall_px: float = FALL_PX,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    keep_examples: int = 0,
) -> dict[str, Any]:
    """Generate every clip from its ground-truth first frame and score it against the simulation.

    See the module docstring for the metrics. Clips are the first ``clips`` of ``dataset``.

    Args:
        world: an image-to-video ``wmgen.pipeline.WorldModel``.
        dataset: a ``physics.worlds.WorldDataset`` (or a sequence of its item dicts: video, tracks, visible,
            object_ids, caption) at the model's resolution.
        clips: number of clips evaluated (the first ones); None: all.
        batch_size: clips generated together.
        steps, method, cfg_scale, shift: sampling settings (None: the model's defaults).
        seed: batch k is generated with seed ``batch_seed(seed, k)``.
        tracker: point tracker of the motion check (default ``LucasKanadeTracker()``).
        use_caption: condition on each clip's caption; False: the empty prompt.
        fall_px: pixels of mean downward motion above which a ground-truth object falls; a tracked object falls
            above ``fall_px / 2``.
        progress: show a progress bar over batches.
        shard: (rank, world_size): evaluate only the batches k with k % world_size == rank (``torchrun``).
        keep_examples: keep the videos of this shard's first ``keep_examples`` clips for figures.

    Returns:
        A dict with the summary numbers (``summarize_world_model`` of this shard's clips): ``clips``,
        ``psnr_generated`` / ``psnr_copy`` / ``psnr_vae`` (mean dB over frames 1..T-1), ``beats_copy_fraction``,
        ``objects``, ``falling_objects``, ``falls_fraction`` / ``floor_falls_fraction`` / ``vae_falls_fraction`` /
        ``copy_falls_fraction`` (fraction of ground-truth falling objects that fall in the generation / in the
        tracked ground truth / in its VAE reconstruction / in copy-first-frame), ``dy_generated`` /
        ``dy_ground_truth`` (simulator) / ``dy_floor`` / ``dy_vae`` / ``dy_copy`` (mean dy in pixels over falling
        objects), ``goal``; ``settings``; ``per_clip``, one record per clip (psnr_generated, psnr_copy, psnr_vae,
        beats_copy, objects: [{object, tracks, falls, dy_ground_truth, dy_generated, dy_floor, dy_vae,
        generated_falls, floor_falls, vae_falls}]). With ``keep_examples`` > 0 also ``examples``:
        [{clip, caption, ground_truth, generated, copy: [3, T, H, W] CPU tensors in [-1, 1]}] (not JSON: pop it
        before writing the rest).
    """
    clips = check_run_args(dataset, clips, batch_size, seed, world)
    if isinstance(fall_px, bool) or not isinstance(fall_px, (int, float)) or not fall_px > 0:
        raise ValueError(f"fall_px must be a number > 0 (pixels), got {fall_px!r}")
    if isinstance(keep_examples, bool) or not isinstance(keep_examples, int) or keep_examples < 0:
        raise ValueError(f"keep_examples must be an int >= 0, got {keep_examples!r}")
    if tracker is None:
        tracker = LucasKanadeTracker()
    if not isinstance(tracker, PointTracker):
        raise TypeError(f"tracker must be a wmgen.eval.tracks.PointTracker, got {type(tracker).__name__}")
    batches = shard_batches(clips, batch_size, shard)
    per_clip: list[dict[str, Any]] = []
    examples: list[dict[str, Any]] = []
    for k, indices in tqdm(batches, desc="world model", disable=not progress):
        batch = load_batch(dataset, indices, world, ("tracks", "visible", "object_ids"))
        gt = batch["video"]  # (B, 3, T, H, W)
        B, _, T, H, W = gt.shape
        if T < 2:
            raise ValueError(f"clips need at least 2 frames to score frames 1..T-1, got T = {T}")

        # 1. generate from the ground-truth first frame; the two references
        video = world.generate(
            prompts_of(batch, use_caption),
            gt[:, :, 0],
            num_frames=T,
            steps=steps,
            method=method,
            cfg_scale=cfg_scale,
            shift=shift,
            seed=batch_seed(seed, k),
        ).pixels  # fmt: skip  (B, 3, T, H, W)
        copy = gt[:, :, :1].expand(-1, -1, T, -1, -1)  # (B, 3, T, H, W) frame 0 held still
        vae = world.decode(world.encode_video(gt))  # (B, 3, T, H, W) reconstruction, the latent ceiling
        p_gen, p_copy, p_vae = (psnr(x[:, :, 1:], gt[:, :, 1:]).tolist() for x in (video, copy, vae))

        # 2. motion: the frame-0-visible tracks of every object, simulated and re-tracked
        motion = tracked_object_motion(batch, {"gen": video, "floor": gt, "vae": vae}, tracker)

        for b, i in enumerate(indices):
            objects = []
            for o, (dy, n) in sorted(motion["sim"][b].items()):
                dy_gen, dy_floor, dy_vae = (motion[v][b][o][0] for v in ("gen", "floor", "vae"))
                objects.append({
                    "object": o, "tracks": n, "falls": dy > fall_px, "dy_ground_truth": dy,
                    "dy_generated": dy_gen, "dy_floor": dy_floor, "dy_vae": dy_vae,
                    "generated_falls": dy_gen > fall_px / 2, "floor_falls": dy_floor > fall_px / 2,
                    "vae_falls": dy_vae > fall_px / 2,
                })  # fmt: skip
            caption = batch["caption"][b] if isinstance(batch.get("caption"), list) else ""
            per_clip.append({
                "clip": i, "caption": caption, "psnr_generated": p_gen[b], "psnr_copy": p_copy[b],
                "psnr_vae": p_vae[b], "beats_copy": p_gen[b] > p_copy[b], "objects": objects,
            })  # fmt: skip
            if len(examples) < keep_examples:
                examples.append({"clip": i, "caption": caption, "ground_truth": gt[b].cpu(),
                                 "generated": video[b].cpu(), "copy": copy[b].cpu()})  # fmt: skip

    out = summarize_world_model(per_clip, fall_px=fall_px)
    out["settings"] = {
        "steps": world.config.steps if steps is None else steps,
        "method": world.config.method if method is None else method,
        "cfg_scale": world.config.cfg_scale if cfg_scale is None else cfg_scale,
        "shift": world.config.shift if shift is None else shift,
        "seed": seed, "batch_size": batch_size, "tracker": repr(tracker), "use_caption": use_caption,
        "clips_requested": clips, "shard": list(check_shard(shard)),
    }  # fmt: skip
    out["per_clip"] = per_clip
    if keep_examples > 0:
        out["examples"] = examples
    return out


@torch.no_grad()
def evaluate_twins(
    dataset: Any, *, clips: int, vae: Any = None, keep_drags: bool = True, seed: int = 0, batch_size: int = 16
) -> dict[str, Any]:
    """PSNR (frames 1..) of twins of the first ``clips`` held-out clips against their ground truth (module
    docstring), and of the twins' VAE reconstructions (posterior mode) when ``vae`` is given.

    Args:
        dataset: a ``physics.worlds.WorldDataset`` (its records hold the scenes, its index the world config).
        clips: how many clips, the first ones.
        vae: a ``CausalVAE`` (e.g. ``WorldModel.vae``) or None.
        keep_drags: keep each scene's drags (the captions the models see name them), redraw the rest.
        seed: seeds the redraws (twin of clip i: generator seeded by (seed, i)).
        batch_size: scenes simulated (and encoded) together.

    Returns:
        ``{"twin_clips", "keep_drags", "psnr_twin", "twin_beats_copy_fraction", "psnr_twin_vae",
        "twin_vae_beats_copy_fraction"}`` (the VAE entries None without ``vae``).
    """
    from physics.scenes import Scene, redraw_motion
    from physics.worlds import WorldConfig, simulate_batch
    from wmgen.config import from_dict

    if not hasattr(dataset, "records") or not hasattr(dataset, "index"):
        raise TypeError(
            f"dataset must be a physics.worlds.WorldDataset (scenes and config), got {type(dataset).__name__}"
        )
    if isinstance(clips, bool) or not isinstance(clips, int) or not 1 <= clips <= len(dataset):
        raise ValueError(f"clips must be an int in [1, {len(dataset)}] (the dataset's clips), got {clips!r}")
    config = from_dict(WorldConfig, dataset.index["config"])
    p_twin, p_vae, p_copy = [], [], []
    for start in range(0, clips, batch_size):
        indices = range(start, min(start + batch_size, clips))
        twins = [
            redraw_motion(Scene.from_dict(dataset.records[i]["scene"]), config.scene, keep_drags=keep_drags,
                          generator=torch.Generator().manual_seed(batch_seed(seed, i)))
            for i in indices
        ]  # fmt: skip
        truth = torch.stack([dataset[i]["video"] for i in indices])  # (b, 3, T, H, W) in [-1, 1]
        twin = torch.stack([c.rgb.permute(3, 0, 1, 2) for c in simulate_batch(twins, config)]).float() / 127.5 - 1
        copy = truth[:, :, :1].expand_as(truth)
        p_twin.append(psnr(twin[:, :, 1:], truth[:, :, 1:]))
        p_copy.append(psnr(copy[:, :, 1:], truth[:, :, 1:]))
        if vae is not None:
            device = next(vae.parameters()).device
            rec = vae.decode(vae.encode(twin.to(device)).mode()).clamp(-1, 1).cpu()  # (b, 3, T, H, W)
            p_vae.append(psnr(rec[:, :, 1:], truth[:, :, 1:]))
    p_twin, p_copy = torch.cat(p_twin), torch.cat(p_copy)
    p_vae = torch.cat(p_vae) if p_vae else None
    return {
        "twin_clips": clips,
        "keep_drags": keep_drags,
        "psnr_twin": _mean(p_twin.tolist()),
        "twin_beats_copy_fraction": _fraction((p_twin > p_copy).tolist()),
        "psnr_twin_vae": None if p_vae is None else _mean(p_vae.tolist()),
        "twin_vae_beats_copy_fraction": None if p_vae is None else _fraction((p_vae > p_copy).tolist()),
    }


# ---------------------------------------------------------------------------------------------------------
# 4. pictures: grids of videos (shared by the benchmarks and apps/evaluate.py)


def to_uint8(video: Tensor, scale: int = 1) -> np.ndarray:
    """[3, T, H, W] float in [-1, 1] (or [1, T, H, W] grey) -> uint8 [T, H s, W s, 3], nearest upscaling by s."""
    if not isinstance(video, Tensor) or video.ndim != 4 or video.shape[0] not in (1, 3):
        got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be [3, T, H, W] (or [1, T, H, W]) in [-1, 1], got {got}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    x = rearrange(x.expand(3, -1, -1, -1), "c t h w -> t h w c").numpy()  # (T, H, W, 3)
    return x.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else x


def video_grid(rows: Sequence[Sequence[np.ndarray]], *, gap: int = 2, background: int = 255) -> np.ndarray:
    """Tile videos into one video: ``rows[r][c]`` uint8 [T, H, W, 3] (all the same shape) -> [T, H', W', 3]."""
    if not rows or not all(rows) or len({len(r) for r in rows}) != 1:
        raise ValueError("rows must be a non-empty list of equally long, non-empty lists of videos")
    shape = rows[0][0].shape
    if any(v.shape != shape or v.dtype != np.uint8 for r in rows for v in r) or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"every cell must be uint8 [T, H, W, 3] of the same shape, the first is {shape}")
    T, H, W, _ = shape
    R, C = len(rows), len(rows[0])
    out = np.full((T, R * H + (R - 1) * gap, C * W + (C - 1) * gap, 3), background, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            out[:, r * (H + gap) : r * (H + gap) + H, c * (W + gap) : c * (W + gap) + W] = v
    return out


def video_strip(videos: Sequence[np.ndarray], frames: Sequence[int], *, gap: int = 2) -> np.ndarray:
    """One picture: row r shows ``videos[r]`` (uint8 [T, H, W, 3]) at the time steps ``frames``, left to right."""
    rows = [[v[t : t + 1] for t in frames] for v in videos]  # one-frame "videos"
    return video_grid(rows, gap=gap)[0]


def add_titles(
    image: np.ndarray,
    *,
    columns: Sequence[str] = (),
    rows: Sequence[str] = (),
    cell: tuple[int, int],
    gap: int = 2,
    size: int = 12,
) -> np.ndarray:
    """Write column titles above and row titles left of a ``video_grid`` / ``video_strip`` picture or video.

    Args:
        image: uint8 [H, W, 3] or [T, H, W, 3], a grid of cells of ``cell`` = (h, w) pixels ``gap`` apart.
        columns: one title per column (or none); rows: one title per row (or none).
        cell: (h, w) of a cell.
        gap: pixels between cells.
        size: font size (Pillow's built-in font).

    Returns:
        The image with a white title bar on top and a white title column on the left, same dtype and rank.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max((probe.textbbox((0, 0), t, font=font)[2] for t in rows), default=-8) + 8 if rows else 0
    top = size + 6 if columns else 0
    frames = image[None] if image.ndim == 3 else image
    T, H, W, _ = frames.shape
    canvas = Image.new("RGB", (left + W, top + H), "white")
    draw = ImageDraw.Draw(canvas)
    h, w = cell
    for c, text in enumerate(columns):
        draw.text((left + c * (w + gap) + 2, 2), text, fill="black", font=font)
    for r, text in enumerate(rows):
        draw.text((2, top + r * (h + gap) + h // 2 - size // 2), text, fill="black", font=font)
    out = np.repeat(np.asarray(canvas)[None], T, axis=0)  # (T, top + H, left + W, 3)
    out[:, top:, left:] = frames
    return out[0] if image.ndim == 3 else out


def save_frames(path: str | os.PathLike, frames: np.ndarray, *, fps: float = 12.0) -> Path:
    """Write uint8 frames [T, H, W, 3] as a looping GIF, or one picture [H, W, 3] as a PNG, atomically."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".png"):
        raise ValueError(f"path must end in .gif or .png, got {str(path)!r}")
    if frames.dtype != np.uint8 or frames.ndim != (4 if suffix == ".gif" else 3) or frames.shape[-1] != 3:
        want = "[T, H, W, 3]" if suffix == ".gif" else "[H, W, 3]"
        raise ValueError(f"{suffix} frames must be uint8 {want}, got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, plugin="pillow", extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, frames, plugin="pillow", extension=".png")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def figure_frames(T: int) -> list[int]:
    """The time steps shown in still figures: first, middle and last (0 / 8 / 16 for 17 frames)."""
    return sorted({0, (T - 1) // 2, T - 1})


def world_figures(examples: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, fps: float = 12.0,
                  scale: int | None = None) -> list[Path]:  # fmt: skip
    """``world_model.gif`` (one row per clip: ground truth | generated | copy-first-frame) and
    ``world_model.png`` (per clip three rows, ground truth / generated / copy, at five evenly spaced frames) in
    ``out_dir``.

    Args:
        examples: ``evaluate_world_model(..., keep_examples=n)["examples"]``.
        out_dir: output folder.
        fps: GIF playback rate.
        scale: nearest upscaling (default: to about 128 pixels).
    """
    if not examples:
        return []
    T, H = examples[0]["ground_truth"].shape[1:3]
    s = scale or max(1, 128 // H)
    kinds = ("ground truth", "generated", "copy frame 0")
    rows = [[to_uint8(e[k], s) for k in ("ground_truth", "generated", "copy")] for e in examples]
    cell = (H * s, H * s)
    grid = add_titles(video_grid(rows), columns=kinds, rows=[f"clip {e['clip']}" for e in examples], cell=cell)
    gif = save_frames(Path(out_dir) / "world_model.gif", grid, fps=fps)
    times = sorted({round(j * (T - 1) / 4) for j in range(5)})  # 0, 4, 8, 12, 16 for 17 frames
    strip = video_strip([v for r in rows for v in r], times)
    names = [f"{e['clip']}: {k}" for e in examples for k in kinds]
    png = save_frames(
        Path(out_dir) / "world_model.png", add_titles(strip, columns=[f"t = {t}" for t in times], rows=names, cell=cell)
    )
    return [gif, png]


# ---------------------------------------------------------------------------------------------------------
# 5. reports: markdown tables and results.json


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 3 significant digits, None as "-", bools as yes / no."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def world_table(results: dict[str, Any]) -> str:
    """The markdown table of ``evaluate_world_model``'s results: generated vs copy-first-frame vs ceilings."""
    r = results
    return markdown_table(
        ["video", "PSNR frames 1.. (dB)", "beats copy", "falling objects that fall", "mean dy of falling (px)"],
        [
            ["generated", r["psnr_generated"], r["beats_copy_fraction"], r["falls_fraction"], r["dy_generated"]],
            ["copy first frame", r["psnr_copy"], None, r["copy_falls_fraction"], r["dy_copy"]],
            ["VAE reconstruction (ceiling)", r["psnr_vae"], None, r["vae_falls_fraction"], r["dy_vae"]],
            *(
                [
                    ["twin: another true future (a perfect sampler)", r["psnr_twin"], r["twin_beats_copy_fraction"],
                     None, None],
                    ["twin through the VAE (a perfect latent model)", r["psnr_twin_vae"],
                     r["twin_vae_beats_copy_fraction"], None, None],
                ]
                if "psnr_twin" in r
                else []
            ),  # fmt: skip
            ["ground truth, tracked (floor)", None, None, r["floor_falls_fraction"], r["dy_floor"]],
            ["ground truth, simulator", None, None, 1.0 if r["falling_objects"] else None, r["dy_ground_truth"]],
        ],
    )


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """The sampling, figure and device options shared by the evaluation scripts (benchmarks/world_model.py,
    benchmarks/adapters.py)."""
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--method", default=None, help="ODE solver (default: the model's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--shift", type=float, default=None, help="time-grid shift, > 1: more steps near the noise "
                   "(default: the model's)")
    p.add_argument("--no-caption", action="store_true", help="generate from the empty prompt, not the captions")
    p.add_argument("--text", default=None, help="PrecomputedText table (.safetensors) instead of the model's encoder")
    p.add_argument("--examples", type=int, default=4, help="clips shown in the figures (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def load_world_model(
    directory: str | os.PathLike, *, text: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> Any:
    """``WorldModel.from_pretrained(directory)``, with a ``PrecomputedText`` table file as its text encoder when
    ``text`` is given (e.g. captions embedded by an encoder too big to load here)."""
    from wmgen.models.text import PrecomputedText
    from wmgen.pipeline import WorldModel

    encoder = PrecomputedText.load(text, device=device) if text else None
    return WorldModel.from_pretrained(directory, device=device, text_encoder=encoder)


def write_json(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write ``results`` as strict JSON (non-finite floats as null), atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
