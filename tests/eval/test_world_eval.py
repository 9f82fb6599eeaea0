"""wmgen.eval.world: PSNR on hand-made numbers, the world-model check with stand-in generators (the ground truth
beats copy-first-frame and falls; a frozen first frame ties the copy and never falls), sharding, and the figures.

The data is a hand-made clip of a falling checker square (eval_helpers.square_clip) that Lucas-Kanade follows to
a fraction of a pixel, so the motion numbers have known answers."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from eval_helpers import FRAMES, StandIn, make_wm, square_clip, squares

from physics.rigid import RigidConfig
from physics.scenes import SceneConfig
from physics.worlds import WorldConfig, WorldDataset, generate_dataset
from wmgen.eval.tracks import LucasKanadeTracker
from wmgen.eval.world import (
    batch_seed,
    evaluate_twins,
    evaluate_world_model,
    markdown_table,
    object_motion,
    psnr,
    shard_batches,
    summarize_world_model,
    video_grid,
    world_figures,
    world_table,
    write_json,
)
from wmgen.models.vae import CausalVAE, VAEConfig

RES = 32


@pytest.fixture(scope="module")
def data():
    return squares(speeds=(2, 1.5))  # clip 0 falls 8 px, clip 1 falls 6 px over its 5 frames


@pytest.fixture(scope="module")
def wm(data):
    return make_wm(RES, [it["caption"] for it in data])


# --- metrics -----------------------------------------------------------------------------------------------


def test_psnr_hand_made_numbers():
    a = torch.zeros(3, 3, 2, 4, 4)
    b = a.clone()
    b[0] = 0.5  # MSE 0.25 -> 10 log10(4 / 0.25) = 10 log10(16)
    b[1, :, 1] = 1.0  # half the frames off by 1: MSE 0.5 -> 10 log10(8)
    p = psnr(a, b)
    assert p.dtype == torch.float64 and p.shape == (3,)
    assert p[0].item() == pytest.approx(10 * math.log10(16))
    assert p[1].item() == pytest.approx(10 * math.log10(8))
    assert p[2].item() == math.inf  # identical
    assert psnr(a[:, :, 1:], b[:, :, 1:])[1].item() == pytest.approx(10 * math.log10(4))  # only the frames given
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:, :, :1])
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        psnr(a[:, :1], b[:, :1])
    with pytest.raises(TypeError, match="float"):
        psnr(a.long(), b)


def test_object_motion_per_object_means():
    queries = torch.tensor([[[0, 1.0, 2.0], [0, 5.0, 5.0], [0, 9.0, 9.0]]])  # (1, 3, 3)
    tracks = torch.zeros(1, 3, 3, 2)
    tracks[0, -1, :, 1] = torch.tensor([6.0, 9.0, 0.0])  # last-frame y
    valid = torch.tensor([[True, True, False]])
    ids = torch.tensor([[0, 0, 1]])
    out = object_motion(tracks, queries, valid, ids)
    assert out == [{0: (pytest.approx(4.0), 2)}]  # (6 - 2 + 9 - 5) / 2; object 1's only point is padding


def test_shard_batches_and_seeds_cover_every_clip_once():
    everything = shard_batches(10, 3, (0, 1))
    assert everything == [(0, [0, 1, 2]), (1, [3, 4, 5]), (2, [6, 7, 8]), (3, [9])]
    parts = [shard_batches(10, 3, (r, 2)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == everything and [k for k, _ in parts[1]] == [1, 3]
    assert len({batch_seed(0, k) for k in range(100)} | {batch_seed(1, k) for k in range(100)}) == 200
    with pytest.raises(ValueError, match="rank"):
        shard_batches(10, 3, (2, 2))


# --- the evaluation with stand-in generators ---------------------------------------------------------------


def test_ground_truth_generator_beats_copy_and_falls(wm, data, monkeypatch, tmp_path):
    stand_in = StandIn(data, "truth")
    monkeypatch.setattr(wm, "generate", stand_in)
    r = evaluate_world_model(wm, data, clips=2, batch_size=1, seed=5, shift=3.0, progress=False, keep_examples=1)

    # generate saw each clip's caption and ground-truth first frame, with one seed per batch, and the shift
    assert [c["prompt"] for c in stand_in.calls] == [[data[0]["caption"]], [data[1]["caption"]]]
    for call, item in zip(stand_in.calls, data, strict=True):
        assert torch.equal(call["first_frame"][0].cpu(), item["video"][:, 0])
    assert [c["seed"] for c in stand_in.calls] == [batch_seed(5, 0), batch_seed(5, 1)]
    assert [c["shift"] for c in stand_in.calls] == [3.0, 3.0] and r["settings"]["shift"] == 3.0

    assert r["clips"] == 2 and r["beats_copy_fraction"] == 1.0 and r["psnr_generated"] == math.inf
    assert r["psnr_copy"] < 30 and 0 < r["psnr_vae"] < math.inf
    assert r["objects"] == 4 and r["falling_objects"] == 2  # the still squares do not fall
    assert r["falls_fraction"] == 1.0 and r["floor_falls_fraction"] == 1.0 and r["copy_falls_fraction"] == 0.0
    assert r["dy_ground_truth"] == pytest.approx(7.0)  # (8 + 6) / 2
    assert r["dy_generated"] == r["dy_floor"] == pytest.approx(7.0, abs=0.5)  # LK follows the squares
    assert r["dy_copy"] == 0.0 and r["goal"] == {"beats_copy_psnr": True, "falling_objects_fall": True, "met": True}
    still = [o for c in r["per_clip"] for o in c["objects"] if o["object"] == 1]
    assert all(abs(o["dy_generated"]) < 0.5 and not o["falls"] and o["tracks"] == 4 for o in still)

    # examples for the figures, and a strict-JSON results file (inf -> null)
    (example,) = r.pop("examples")
    assert example["clip"] == 0 and torch.equal(example["generated"], data[0]["video"])
    saved = json.loads(write_json(tmp_path / "r.json", r).read_text())
    assert saved["psnr_generated"] is None and saved["psnr_copy"] == pytest.approx(r["psnr_copy"])


def test_frozen_first_frame_ties_copy_and_never_falls(wm, data, monkeypatch):
    monkeypatch.setattr(wm, "generate", StandIn(data, "frozen"))
    r = evaluate_world_model(wm, data, clips=2, batch_size=2, progress=False, use_caption=False)
    assert wm.generate.calls[0]["prompt"] == ["", ""]
    assert r["psnr_generated"] == r["psnr_copy"] and r["beats_copy_fraction"] == 0.0
    assert r["falls_fraction"] == 0.0 and r["dy_generated"] == pytest.approx(0.0, abs=1e-3)
    assert r["floor_falls_fraction"] == 1.0 and not r["goal"]["met"]
    table = world_table(r)
    assert table.count("\n") == 6 and "copy first frame" in table and "(floor)" in table


def test_vae_row_tracks_the_reconstruction(wm, data, monkeypatch):
    """The VAE row is the motion check's latent ceiling: a perfect autoencoder falls like the tracked ground
    truth, one that decodes every clip into its first frame held still never falls."""
    monkeypatch.setattr(wm, "generate", StandIn(data, "frozen"))
    monkeypatch.setattr(wm, "encode_video", lambda video: video)
    monkeypatch.setattr(wm, "decode", lambda z: z)  # a perfect autoencoder
    r = evaluate_world_model(wm, data, clips=2, batch_size=2, progress=False)
    assert r["psnr_vae"] == math.inf and r["vae_falls_fraction"] == 1.0
    assert r["dy_vae"] == r["dy_floor"] == pytest.approx(7.0, abs=0.5) and r["falls_fraction"] == 0.0
    objects = [o for c in r["per_clip"] for o in c["objects"]]
    assert all(o["vae_falls"] == o["floor_falls"] for o in objects)

    monkeypatch.setattr(wm, "decode", lambda z: z[:, :, :1].expand_as(z))  # holds frame 0 still
    r = evaluate_world_model(wm, data, clips=2, batch_size=2, progress=False)
    assert r["vae_falls_fraction"] == 0.0 and r["dy_vae"] == pytest.approx(0.0, abs=1e-3)
    (row,) = [line for line in world_table(r).splitlines() if line.startswith("| VAE reconstruction")]
    assert row.endswith("| - | 0 | 0 |")


def test_fall_threshold_is_an_argument(wm, data, monkeypatch):
    monkeypatch.setattr(wm, "generate", StandIn(data, "truth"))
    r = evaluate_world_model(wm, data, clips=2, batch_size=2, progress=False, fall_px=7.0)  # only clip 0 (8 px)
    assert r["falling_objects"] == 1 and r["dy_ground_truth"] == pytest.approx(8.0) and r["fall_px"] == 7.0


# --- the real model, sharded -------------------------------------------------------------------------------


def test_shards_reproduce_the_single_process_run(wm, data):
    kw = {"clips": 2, "batch_size": 1, "seed": 3, "progress": False, "tracker": LucasKanadeTracker(levels=1)}
    whole = evaluate_world_model(wm, data, **kw)
    parts = [evaluate_world_model(wm, data, shard=(r, 2), **kw)["per_clip"] for r in (1, 0)]
    assert [c["clip"] for c in parts[0]] == [1]
    merged = summarize_world_model(parts[0] + parts[1])
    assert merged == {k: v for k, v in whole.items() if k not in ("settings", "per_clip")}
    assert 0 < whole["psnr_generated"] < 60  # a real (random) generation, not the ground truth


def test_bad_arguments(wm, data):
    with pytest.raises(ValueError, match=r"clips must be an int in \[1, 2\]"):
        evaluate_world_model(wm, data, clips=3)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_world_model(wm, data, clips=2, batch_size=0)
    with pytest.raises(ValueError, match="fall_px"):
        evaluate_world_model(wm, data, clips=2, fall_px=0)
    with pytest.raises(TypeError, match="PointTracker"):
        evaluate_world_model(wm, data, clips=2, tracker="lk")
    with pytest.raises(TypeError, match="WorldModel"):
        evaluate_world_model(object(), data, clips=2)
    small = square_clip(1)
    small["video"] = small["video"][..., :16, :16]
    with pytest.raises(ValueError, match="H = W = 32"):
        evaluate_world_model(wm, [small], clips=None, progress=False)


# --- pictures ----------------------------------------------------------------------------------------------


def test_world_figures_and_tables(tmp_path, data):
    examples = [{"clip": i, "caption": it["caption"], "ground_truth": it["video"], "generated": -it["video"],
                 "copy": it["video"][:, :1].expand(-1, FRAMES, -1, -1)} for i, it in enumerate(data)]  # fmt: skip
    gif, png = world_figures(examples, tmp_path, scale=2)
    frames = iio.imread(gif)[..., :3]
    gap = 2
    # rows: clips; columns: gt | generated | copy, under a title bar and right of a title column
    top, left = frames.shape[1] - (2 * 64 + gap), frames.shape[2] - (3 * 64 + 2 * gap)
    assert frames.shape[0] == FRAMES and 10 < top < 30 and 20 < left < 120
    assert frames[:, :top, :left].min() == 255 and frames[:, :top].min() < 100  # white, with black titles
    # cell (clip 1, generated) at frame 3 is the negated ground truth, upscaled 2x
    want = ((-data[1]["video"][:, 3] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy().repeat(2, 0).repeat(2, 1)
    y, x = top + 64 + gap, left + 64 + gap
    assert np.array_equal(frames[3, y : y + 64, x : x + 64], want)
    still = iio.imread(png)
    assert still.shape[0] - top == 6 * 64 + 5 * gap and still.shape[1] > 5 * 64 + 4 * gap  # 2 clips x 3, 5 frames
    with pytest.raises(ValueError, match="same shape"):
        video_grid([[frames, frames[:, :10]]])
    assert (
        markdown_table(["a", "b"], [[1.23456, None], [True, "x"]]) == "| a | b |\n|---|---|\n| 1.23 | - |\n| yes | x |"
    )


# --- twins ------------------------------------------------------------------------------------------------


def _world(tmp_path, name: str, **scene) -> WorldDataset:
    config = WorldConfig(
        kind="rigid", resolution=16, frames=5, num_tracks=8, rigid_particles_per_object=24, batch_size=8,
        supersample=1, scene=SceneConfig(max_objects=2, **scene), rigid=RigidConfig(substeps=4),
    )  # fmt: skip
    return WorldDataset(generate_dataset(config, tmp_path / name, 6, shard_size=8, seed=0, progress=False))


def test_twins_reproduce_a_future_that_frame_zero_fixes_and_vary_one_it_does_not(tmp_path):
    # nothing hidden: no initial motion, spin or drags and one restitution / friction -> the twin IS the clip
    fixed = _world(tmp_path, "fixed", horizontal_speed=(0.0, 0.0), vertical_speed=(0.0, 0.0), spin=0.0,
                   restitution=(0.5, 0.5), friction=(0.5, 0.5), drag_probability=0.0)  # fmt: skip
    r = evaluate_twins(fixed, clips=6)
    assert r["psnr_twin"] == math.inf and r["psnr_twin_vae"] is None
    # the default ranges hide velocities, spins and drags: the twins are other futures
    hidden = _world(tmp_path, "hidden")
    tiny = VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True))
    vae = CausalVAE(tiny, generator=torch.Generator().manual_seed(0))
    r = evaluate_twins(hidden, clips=6, vae=vae, batch_size=4, keep_drags=False)
    assert math.isfinite(r["psnr_twin"]) and 0 <= r["twin_beats_copy_fraction"] <= 1
    assert r["psnr_twin_vae"] < r["psnr_twin"]  # an untrained VAE only loses
    assert evaluate_twins(hidden, clips=6, vae=vae, keep_drags=False) == r  # seeded per clip, any batch size
    assert evaluate_twins(hidden, clips=6, seed=1, keep_drags=False)["psnr_twin"] != r["psnr_twin"]
    table = world_table({**summarize_world_model([]), **r})
    assert "twin through the VAE (a perfect latent model)" in table
    with pytest.raises(ValueError, match=r"clips must be an int in \[1, 6\]"):
        evaluate_twins(hidden, clips=7)
    with pytest.raises(TypeError, match="must be a physics.worlds.WorldDataset"):
        evaluate_twins([{"video": torch.zeros(3, 5, 16, 16)}], clips=1)
