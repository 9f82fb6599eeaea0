"""wmgen.eval.vae: latent ceilings of a VAE -- a lossless "VAE" scores the ground truth's numbers exactly, one that
loses the motion scores copy-first-frame's; colour errors by hand; reachability; benchmarks/vae.py end to end on
a tiny simulated dataset with a real tiny VAE (twins included)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import VAE_CFG, gen, load_script, squares

from wmgen.eval.controls import select_tracks
from wmgen.eval.tracks import LucasKanadeTracker
from wmgen.eval.vae import evaluate_vae, object_colour_errors, summarize_vae, vae_table
from wmgen.models.vae import CausalVAE

ROOT = Path(__file__).resolve().parents[2]


class _Mode:
    def __init__(self, z):
        self.z = z

    def mode(self):
        return self.z


def _stand_in_vae(decode):
    """A real CausalVAE whose encode passes pixels through and whose decode is ``decode`` (pixels -> pixels)."""
    vae = CausalVAE(VAE_CFG, generator=gen(0))
    vae.encode = lambda video: _Mode(video)
    vae.decode = decode
    return vae


LK = LucasKanadeTracker()  # follows the hand-made squares exactly (the colour tracker, the default, not quite)


@pytest.fixture(scope="module")
def data():
    return squares(speeds=(2, 1))


def test_object_colour_errors_by_hand():
    video = torch.full((1, 3, 2, 4, 4), -1.0)
    mask = torch.full((1, 2, 4, 4), -1, dtype=torch.long)
    video[0, :, :, :2, :2] = torch.tensor([0.5, -0.5, 0.0])[:, None, None, None]
    mask[0, :, :2, :2] = 0
    video[0, :, 1, 2:, 2:] = 0.25  # object 3 shows in frame 1 only
    mask[0, 1, 2:, 2:] = 3
    recon = video.clone()
    recon[0, 0, 0, :2, :2] = 0.2  # red off by 0.3 in frame 0 only: mean over the object's 8 pixels, 0.15
    recon[0, 2, :, 2:, 2:] = 1.7  # clamped to 1: blue off by 0.75 (frame 0 there is background, not the object)
    errors = object_colour_errors(recon, video, mask)
    assert errors[0].keys() == {0, 3}
    assert errors[0][0] == pytest.approx(0.15) and errors[0][3] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="mask must be"):
        object_colour_errors(recon, video, mask[:, :1])


def test_lossless_vae_scores_the_ground_truth(data):
    lossless = _stand_in_vae(lambda z: z)
    r = evaluate_vae(lossless, data, clips=2, num_tracks=6, seed=1, twins=False, progress=False, track_tracker=LK)
    assert r["clips"] == 2 and r["points"] == 2 * 6 * 5
    assert r["epe_vae_px"] == r["epe_floor_px"] < 0.5 and r["epe_still_px"] > 1.0
    assert r["vae_falls_fraction"] == r["floor_falls_fraction"] == 1.0 and r["dy_vae"] == r["dy_floor"]
    assert r["falling_objects"] == 2 and r["objects"] == 4  # the falling and the still square of each clip
    assert r["colour_error_mean"] == 0.0 and r["colour_off_fraction"] == 0.0
    assert r["psnr"] == r["psnr_vae"] == float("inf") and r["psnr_copy"] < 30
    assert "psnr_twin_vae" not in r  # twins=False: no twins measured
    assert r["reachable"] == {"world_psnr": None, "world_motion": True, "tracks_within_2x_floor": True}
    # the still EPE is how far the requested points move from frame 0
    moved = []
    for b, item in enumerate(data):
        chosen = select_tracks(item["visible"][0], 6, seed=1, clip=b)
        moved.append((item["tracks"][:, chosen] - item["tracks"][:1, chosen]).norm(dim=-1).flatten())
    assert r["epe_still_px"] == pytest.approx(torch.cat(moved).mean().item(), abs=0.5)
    assert "| lossless |" in vae_table({"lossless": r})


def test_vae_that_loses_motion_scores_copy_first_frame(data):
    still = _stand_in_vae(lambda z: z[:, :, :1].expand_as(z))  # every frame decodes to frame 0
    r = evaluate_vae(still, data, clips=2, num_tracks=6, seed=1, twins=False, progress=False, track_tracker=LK)
    assert r["epe_vae_px"] == pytest.approx(r["epe_still_px"]) and r["epe_vae_px"] > 2 * r["epe_floor_px"]
    assert r["psnr_vae"] == pytest.approx(r["psnr_copy"])
    assert r["vae_falls_fraction"] == 0.0 and r["dy_vae"] == 0.0
    assert r["reachable"]["world_motion"] is False and r["reachable"]["tracks_within_2x_floor"] is False


def test_summary_reachability_of_the_world_psnr():
    record = {"clip": 0, "psnr": 25.0, "psnr_vae": 24.0, "psnr_copy": 20.0, "object_psnr": None, "colour_errors": {},
              "objects": [], "points": 0, "epe_floor_px": 0.0, "epe_vae_px": 0.0, "epe_still_px": 0.0}  # fmt: skip
    assert summarize_vae([record], {"psnr_twin_vae": 20.5})["reachable"]["world_psnr"] is True
    assert summarize_vae([record], {"psnr_twin_vae": 19.5})["reachable"]["world_psnr"] is False
    s = summarize_vae([record])
    assert s["reachable"] == {"world_psnr": None, "world_motion": None, "tracks_within_2x_floor": None}
    assert s["object_psnr"] is None and s["epe_vae_px"] is None


def test_bad_arguments(data):
    vae = _stand_in_vae(lambda z: z)
    with pytest.raises(TypeError, match="vae must be"):
        evaluate_vae(object(), data, clips=1)
    with pytest.raises(ValueError, match="clips must be"):
        evaluate_vae(vae, data, clips=3)
    with pytest.raises(ValueError, match="num_tracks must be"):
        evaluate_vae(vae, data, clips=1, num_tracks=0)
    with pytest.raises(TypeError, match="track_tracker must be"):
        evaluate_vae(vae, data, clips=1, track_tracker="color")


def test_script_compares_vaes_on_a_simulated_dataset(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tests" / "physics"))
    try:
        from test_worlds import tiny
    finally:
        sys.path.remove(str(ROOT / "tests" / "physics"))
    from physics.worlds import generate_dataset

    data = generate_dataset(tiny(), tmp_path / "data", 3, seed=0, progress=False)
    for seed in (0, 1):
        CausalVAE(VAE_CFG, generator=gen(seed)).save_pretrained(tmp_path / f"vae{seed}")
    args = ["--vae", f"a={tmp_path / 'vae0'}", "--vae", f"b={tmp_path / 'vae1'}", "--data", str(data), "--clips", "3",
            "--out", str(tmp_path / "out")]  # fmt: skip
    r = load_script(ROOT / "benchmarks" / "vae.py").main(args)
    assert set(r) == {"a", "b"} and r["a"]["psnr_vae"] != r["b"]["psnr_vae"]
    for v in r.values():
        assert v["clips"] == 3 and v["twin_clips"] == 3 and v["psnr_twin_vae"] is not None
        assert v["epe_floor_px"] == r["a"]["epe_floor_px"]  # the ground truth does not depend on the VAE
    out = capsys.readouterr().out
    assert "| a |" in out and "| b |" in out and "| copy first frame |" in out
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["b"]["settings"]["vae"] == str(tmp_path / "vae1")
    with pytest.raises(SystemExit):
        load_script(ROOT / "benchmarks" / "vae.py").main(["--vae", "novalue", "--data", str(data)])
