"""wmgen.eval.controls: track-adapter EPE with stand-in generators (the ground truth reaches the tracker's floor, a
frozen first frame does not), the edge metric on drawn squares, the map-adapter check, the track drawing, and the
three scripts (benchmarks/world_model.py, benchmarks/adapters.py, apps/evaluate.py) end to end on a tiny random
saved world model, two adapters and a tiny simulated dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from eval_helpers import SPATIAL, StandIn, load_script, make_text, make_wm, square_clip, squares

from controls.controlnet import DepthAdapter, MapControl, edges_from_video
from controls.tracks import TrackAdapter, TrackControl
from wmgen.eval.controls import (
    draw_tracks,
    edge_scores,
    evaluate_map_adapter,
    evaluate_track_adapter,
    reference_edges,
    select_tracks,
    summarize_track_adapter,
    track_figures,
    track_table,
)
from wmgen.eval.world import to_uint8

ROOT = Path(__file__).resolve().parents[2]
RES = 32


@pytest.fixture(scope="module")
def data():
    return squares(speeds=(2, 1))


@pytest.fixture(scope="module")
def wm(data):
    return make_wm(RES, [it["caption"] for it in data])


@pytest.fixture(scope="module")
def track_adapter(wm):
    return TrackAdapter(wm.dit, frame_size=(RES, RES), spatial_factor=SPATIAL, id_dim=8, num_blocks=1)


# --- track adapter ------------------------------------------------------------------------------------------


def test_select_tracks_is_a_seeded_subset_of_the_frame0_visible():
    visible0 = torch.tensor([True, False, True, True, True, False, True])
    a = select_tracks(visible0, 3, seed=0, clip=4)
    assert len(a) == 3 and bool(visible0[a].all()) and torch.equal(a, a.sort().values)
    assert torch.equal(a, select_tracks(visible0, 3, seed=0, clip=4))  # a function of (seed, clip) only
    others = {tuple(select_tracks(visible0, 3, seed=0, clip=c).tolist()) for c in range(8)}
    assert len(others) > 1
    assert select_tracks(visible0, 10, seed=0, clip=4).tolist() == [0, 2, 3, 4, 6]  # fewer candidates: all
    assert len(select_tracks(torch.zeros(4, dtype=torch.bool), 3, seed=0, clip=0)) == 0


def test_ground_truth_reaches_the_floor_and_a_frozen_frame_does_not(wm, track_adapter, data, monkeypatch):
    stand_in = StandIn(data, lambda controlled: "truth" if controlled else "frozen")
    monkeypatch.setattr(wm, "generate", stand_in)
    monkeypatch.setattr(wm, "encode_video", lambda video: video)  # a lossless "VAE": the latent floor is the floor
    monkeypatch.setattr(wm, "decode", lambda latents: latents)
    r = evaluate_track_adapter(wm, track_adapter, data, clips=2, num_tracks=6, batch_size=2, seed=1, progress=False)

    # the same noise with and without control; the control holds the chosen simulator tracks
    with_call, without_call = stand_in.calls
    assert with_call["seed"] == without_call["seed"] and not without_call["controls"]
    (control,) = with_call["controls"]
    assert control.adapter is track_adapter and isinstance(control.input, TrackControl)
    moved = []  # how far each requested point is from its frame-0 position: the EPE of a still video
    for b, item in enumerate(data):
        chosen = select_tracks(item["visible"][0], 6, seed=1, clip=b)
        assert torch.equal(control.input.tracks[b], item["tracks"][:, chosen])
        assert bool(control.input.visible[b].all())
        moved.append((item["tracks"][:, chosen] - item["tracks"][:1, chosen]).norm(dim=-1).flatten())

    assert r["clips"] == 2 and r["points"] == 2 * 6 * 5 and r["skipped_clips"] == []
    assert r["epe_with_px"] == r["epe_floor_px"] < 0.5  # the ground truth is the floor exactly
    assert r["epe_vae_px"] == r["epe_floor_px"] and r["ratio_to_vae"] == 1.0
    assert r["epe_without_px"] == pytest.approx(torch.cat(moved).mean().item(), abs=1e-4)  # held still
    assert r["epe_without_px"] > 1.0
    assert r["ratio_to_uncontrolled"] < 0.3 and r["ratio_to_floor"] == 1.0 and r["goal"]["met"]
    assert r["epe_with_norm"] == pytest.approx(r["epe_with_px"] / (RES * 2**0.5))
    assert "ratio <= 0.3" in track_table(r)

    monkeypatch.setattr(wm, "generate", StandIn(data, "frozen"))
    monkeypatch.setattr(wm, "decode", lambda video: video[:, :, :1].expand_as(video))  # a VAE that loses motion
    frozen = evaluate_track_adapter(wm, track_adapter, data, clips=2, num_tracks=6, progress=False, seed=1)
    assert frozen["epe_with_px"] == frozen["epe_without_px"] == pytest.approx(r["epe_without_px"])
    assert frozen["epe_vae_px"] == frozen["epe_without_px"] and "through the VAE" in track_table(frozen)
    assert frozen["ratio_to_uncontrolled"] == 1.0 and not frozen["goal"]["met"]


def test_clips_without_visible_tracks_are_skipped(wm, track_adapter, data, monkeypatch):
    hidden = square_clip(1, hidden=True, background=0.3, caption=data[0]["caption"])
    dataset = [hidden, *data]
    monkeypatch.setattr(wm, "generate", StandIn(dataset, "truth"))
    r = evaluate_track_adapter(wm, track_adapter, dataset, clips=3, batch_size=2, progress=False)
    assert r["skipped_clips"] == [0] and [c["clip"] for c in r["per_clip"]] == [1, 2]
    # the gathered records of two shards give the same summary
    merged = summarize_track_adapter(r["per_clip"][1:] + r["per_clip"][:1], skipped=[0])
    assert merged == {k: v for k, v in r.items() if k not in ("settings", "per_clip")}


def test_track_adapter_errors(wm, track_adapter, data):
    depth = DepthAdapter(wm.dit, spatial_factor=SPATIAL, hidden_channels=4, num_blocks=1)
    with pytest.raises(ValueError, match="kind 'tracks'"):
        evaluate_track_adapter(wm, depth, data, clips=2)
    with pytest.raises(ValueError, match="num_tracks"):
        evaluate_track_adapter(wm, track_adapter, data, clips=2, num_tracks=0)
    with pytest.raises(ValueError, match="kind"):
        evaluate_map_adapter(wm, track_adapter, data, clips=2)


def test_control_guidance_guides_on_the_control_with_the_same_prompt(wm, track_adapter, data, monkeypatch):
    stand_in = StandIn(data, lambda controlled: "truth" if controlled else "frozen")
    monkeypatch.setattr(wm, "generate", stand_in)
    r = evaluate_track_adapter(wm, track_adapter, data, clips=2, batch_size=2, progress=False, control_guidance=2.5,
                               shift=3.0)  # fmt: skip
    with_call, without_call = stand_in.calls
    assert with_call["shift"] == without_call["shift"] == r["settings"]["shift"] == 3.0
    (control,) = with_call["controls"]
    assert control.uncond is False  # the control only in the conditional branch ...
    assert with_call["negative_prompt"] == with_call["prompt"] and with_call["cfg_scale"] == 2.5  # ... same text
    assert "negative_prompt" not in without_call and without_call["cfg_scale"] is None
    assert r["settings"]["control_guidance"] == 2.5

    for bad, match in ((-1.0, "control_guidance must be a finite number >= 0"), (True, "must be a number")):
        with pytest.raises((ValueError, TypeError), match=match):
            evaluate_track_adapter(wm, track_adapter, data, clips=2, control_guidance=bad)
    with pytest.raises(ValueError, match="needs text guidance off .cfg_scale 1., got cfg_scale = 3"):
        evaluate_track_adapter(wm, track_adapter, data, clips=2, control_guidance=2.0, cfg_scale=3.0)


def test_control_guidance_zero_is_the_uncontrolled_model(wm, data):
    """Real sampling: at w = 0 the guided velocity is the model without the control, so the 'with' video equals the
    'without' one; at w = 1 it is the plain controlled generation, which differs (the adapter is not zero)."""
    adapter = TrackAdapter(wm.dit, frame_size=(RES, RES), spatial_factor=SPATIAL, id_dim=8, num_blocks=1)
    with torch.no_grad():
        for p in adapter.zero_proj.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        adapter.control_embed.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    kw = {"clips": 1, "batch_size": 1, "num_tracks": 4, "steps": 2, "method": "euler", "progress": False}
    off = evaluate_track_adapter(wm, adapter, data, control_guidance=0.0, keep_examples=1, **kw)
    plain = evaluate_track_adapter(wm, adapter, data, keep_examples=1, **kw)
    (ex_off,), (ex_plain,) = off["examples"], plain["examples"]
    assert torch.allclose(ex_off["with_control"], ex_off["without_control"], atol=1e-5)
    assert not torch.allclose(ex_plain["with_control"], ex_plain["without_control"], atol=1e-3)


# --- edges -------------------------------------------------------------------------------------------------


def test_edge_scores_hand_counts():
    pred, target = torch.zeros(2, 1, 1, 8, 8), torch.zeros(2, 1, 1, 8, 8)
    pred[0, 0, 0, 3, 3] = 1
    target[0, 0, 0, 3, 4] = 1  # one pixel to the right
    target[0, 0, 0, 7, 0] = 1  # far away
    s = edge_scores(pred, target, tolerance=1)
    assert s["pred"].tolist() == [1, 0] and s["target"].tolist() == [2, 0]
    assert s["pred_matched"][0] == 1 and s["target_matched"][0] == 1
    assert s["precision"][0] == 1.0 and s["recall"][0] == 0.5 and s["f1"][0] == pytest.approx(2 / 3)
    assert s["precision"][1] == s["recall"][1] == s["f1"][1] == 0.0  # nothing at all: 0, not NaN
    exact = edge_scores(pred, target, tolerance=0)
    assert exact["precision"][0] == 0.0 and exact["recall"][0] == 0.0
    with pytest.raises(ValueError, match="tolerance"):
        edge_scores(pred, target, tolerance=-1)
    with pytest.raises(ValueError, match="same shape"):
        edge_scores(pred, target[:1])


def test_edges_of_a_drawn_square_match_its_depth_and_mask_within_one_pixel():
    def square(offset: int) -> torch.Tensor:  # (1, 1, 1, 32, 32) in {0, 1}
        x = torch.zeros(1, 1, 1, 32, 32)
        x[..., 8 + offset : 20 + offset, 10:22] = 1.0
        return x

    depth = reference_edges(MapControl("depth", square(0)))
    ids = square(0)[:, 0].long() - 1  # object 0 on background -1
    mask = reference_edges(MapControl("mask", torch.nn.functional.one_hot(ids + 1, 2).permute(0, 4, 1, 2, 3).float()))
    assert 30 < depth.sum() < 60 and 30 < mask.sum() < 60  # a closed outline around a 12 x 12 square

    for reference in (depth, mask):
        rgb = (square(0) * 1.6 - 0.8).expand(-1, 3, -1, -1, -1)  # the square drawn as a picture
        same = edge_scores(edges_from_video(rgb), reference)
        assert same["recall"].item() == 1.0 and same["precision"].item() == 1.0
        moved = edge_scores(edges_from_video((square(4) * 1.6 - 0.8).expand(-1, 3, -1, -1, -1)), reference)
        assert moved["recall"].item() < 0.7  # the square drawn 4 px lower misses the top and bottom sides


def test_map_adapter_with_stand_ins(wm, data, monkeypatch):
    adapter = DepthAdapter(wm.dit, spatial_factor=SPATIAL, hidden_channels=4, num_blocks=1)
    stand_in = StandIn(data, lambda controlled: "truth" if controlled else "frozen")
    monkeypatch.setattr(wm, "generate", stand_in)
    r = evaluate_map_adapter(wm, adapter, data, clips=2, batch_size=2, progress=False, keep_examples=1)
    (control,) = stand_in.calls[0]["controls"]
    assert control.input.kind == "depth" and control.input.maps.shape == (2, 1, 5, RES, RES)
    assert r["recall_with"] == r["recall_ground_truth"] > 0.9  # the ground truth draws the silhouettes
    assert r["recall_without"] < r["recall_with"] - 0.1 and r["f1_without"] < r["f1_with"] and r["goal"]["met"]
    (ex,) = r["examples"]
    assert ex["kind"] == "depth" and ex["control"].shape == (1, 5, RES, RES) and ex["control"].max() == 1.0


# --- drawing -----------------------------------------------------------------------------------------------


def test_draw_tracks_puts_coloured_dots_on_visible_points():
    video = torch.zeros(3, 2, 8, 8)
    tracks = torch.tensor([[[1.0, 1.0], [6.0, 5.0]], [[2.0, 1.0], [6.0, 6.0]]])  # (T, N, 2)
    visible = torch.tensor([[True, True], [True, False]])
    frames = draw_tracks(to_uint8(video, 4), tracks, visible, scale=4)
    assert frames.shape == (2, 32, 32, 3)
    centre = lambda x, y: frames[:, round((y + 0.5) * 4 - 0.5), round((x + 0.5) * 4 - 0.5)]  # noqa: E731
    grey = to_uint8(video, 4)[0, 0, 0]
    assert not np.array_equal(centre(1, 1)[0], grey) and not np.array_equal(centre(2, 1)[1], grey)
    assert not np.array_equal(centre(6, 5)[0], centre(1, 1)[0])  # two tracks, two colours
    assert np.array_equal(centre(6, 6)[1], grey)  # invisible: not drawn
    with pytest.raises(ValueError, match="match"):
        draw_tracks(to_uint8(video, 4), tracks[:1], visible[:1], scale=4)


def test_track_figures_write_gif_and_png(tmp_path, data):
    ex = [{"clip": 0, "tracks": data[0]["tracks"], "visible": data[0]["visible"], "with_control": data[0]["video"],
           "without_control": data[1]["video"], "ground_truth": data[0]["video"]}]  # fmt: skip
    gif, png = track_figures(ex, tmp_path, scale=2)
    frames, still = iio.imread(gif), iio.imread(png)
    top = frames.shape[1] - 64  # the title bar
    assert frames.shape[0] == 5 and 10 < top < 30 and frames.shape[2] > 3 * 64 + 4  # with | without | truth
    assert still.shape[0] == top + 3 * 64 + 4 and still.shape[1] > 3 * 64 + 4  # the three at frames 0, 2, 4


# --- the scripts end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny simulated dataset, a saved tiny world model, its two adapters and a text table of the captions."""
    sys.path.insert(0, str(ROOT / "tests" / "physics"))
    try:
        from test_worlds import tiny
    finally:
        sys.path.remove(str(ROOT / "tests" / "physics"))
    from physics.worlds import WorldDataset, generate_dataset

    root = tmp_path_factory.mktemp("saved")
    data = generate_dataset(tiny(), root / "data", 3, seed=0, progress=False)
    captions = [WorldDataset(data)[i]["caption"] for i in range(3)]
    wm = make_wm(16, captions)
    wm.save_pretrained(root / "model")
    make_text(captions).save(root / "text.safetensors")
    TrackAdapter(wm.dit, frame_size=(16, 16), spatial_factor=SPATIAL, id_dim=8, num_blocks=1).save_pretrained(
        root / "tracks"
    )
    DepthAdapter(wm.dit, spatial_factor=SPATIAL, hidden_channels=4, num_blocks=1).save_pretrained(root / "depth")
    common = ["--model", str(root / "model"), "--data", str(data), "--text", str(root / "text.safetensors")]
    return root, [*common, "--clips", "3", "--batch-size", "2", "--steps", "1", "--examples", "2", "-q"]


def test_scripts_run_end_to_end(saved, capsys):
    root, common = saved
    adapters = ["--adapter", str(root / "tracks"), "--adapter", str(root / "depth")]

    world = load_script(ROOT / "benchmarks" / "world_model.py").main([*common, "--out", str(root / "w")])
    assert world["clips"] == 3 and "| generated |" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "w").iterdir()) == ["results.json", "world_model.gif", "world_model.png"]

    both = load_script(ROOT / "benchmarks" / "adapters.py").main([*common, *adapters, "--out", str(root / "a")])
    assert set(both) == {"tracks", "depth"} and both["tracks"]["clips"] + len(both["tracks"]["skipped_clips"]) == 3
    # an untrained (zero-initialised) adapter changes nothing: with == without
    assert both["tracks"]["epe_with_px"] == both["tracks"]["epe_without_px"]
    assert both["depth"]["f1_with"] == both["depth"]["f1_without"]
    out = capsys.readouterr().out
    assert "### tracks adapter" in out and "### depth adapter" in out
    names = sorted(p.name for p in (root / "a").iterdir())
    assert names == ["depth.gif", "depth.png", "results.json", "tracks.gif", "tracks.png"]
    saved_json = json.loads((root / "a" / "results.json").read_text())
    assert saved_json["depth"]["per_clip"][0]["clip"] == 0

    r = load_script(ROOT / "apps" / "evaluate.py").main([*common, *adapters, "--out", str(root / "e")])
    assert r["world_size"] == 1 and set(r["adapters"]) == {"tracks", "depth"}
    # the same seeds and clips as the single-purpose scripts: the same numbers
    assert r["world_model"]["psnr_generated"] == pytest.approx(world["psnr_generated"])
    assert r["adapters"]["depth"]["recall_with"] == pytest.approx(both["depth"]["recall_with"])
    assert (root / "e" / "results.json").is_file() and (root / "e" / "tracks.gif").is_file()


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(saved, tmp_path):
    """apps/evaluate.py under torchrun (gloo, 2 CPU processes) gives the numbers of a single process."""
    root, common = saved
    common = [*common, "--adapter", str(root / "tracks"), "--adapter", str(root / "depth")]
    one = load_script(ROOT / "apps" / "evaluate.py").main([*common, "--examples", "0", "--out", str(tmp_path / "1")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "apps" / "evaluate.py"), *common, "--device", "cpu", "--out", str(tmp_path / "2")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "2" / "results.json").read_text())
    assert two["world_size"] == 2
    for key in ("psnr_generated", "psnr_copy", "psnr_vae", "dy_generated", "falls_fraction"):
        assert two["world_model"][key] == pytest.approx(one["world_model"][key]), key
    assert [c["clip"] for c in two["world_model"]["per_clip"]] == [0, 1, 2]
    for kind, key in (("tracks", "epe_with_px"), ("tracks", "epe_floor_px"), ("depth", "f1_with")):
        assert two["adapters"][kind][key] == pytest.approx(one["adapters"][kind][key]), (kind, key)
    assert two["adapters"]["tracks"]["skipped_clips"] == one["adapters"]["tracks"]["skipped_clips"]
