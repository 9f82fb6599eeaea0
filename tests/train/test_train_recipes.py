"""Training recipes end to end on tiny models: `train_vae`, `encode_latents`, `train_flow`, the `wmgen train` /
`wmgen data encode` commands, DDP under torchrun and kill + --resume.

Everything runs on a 16x16x5-pixel world dataset (16 training and 4 held-out rigid clips) with a test VAE preset
(4x spatial, 4x temporal: 4 x 2 x 4 x 4 latents), a 2-layer DiT of width 32 and a deterministic 16-d hash text
encoder. Subprocess runs (torchrun, the killed run) cannot see pytest's monkeypatching, so they execute a runner
script that imports this module and calls ``register_tiny`` before ``wmgen.cli.main()``: one definition of the
test components for both sides.

The issue's claims, each proven here:

- ``torchrun --nproc_per_node 2`` (gloo, CPU) follows the 1-process loss trajectory on the same global batch
  and ends with the same weights; ``grad_accum=2`` equals ``grad_accum=1``; a DDP checkpoint resumes on one
  process.
- A run SIGKILLed mid-training and rerun with ``--resume`` ends with model, EMA and optimizer tensors identical
  to an uninterrupted run's, and its metrics.jsonl has every step once.
- The "tokens" image-to-video layout trains and generates from the given first latent; ``train_adapter``
  trains only the adapter (the backbone's weights never move), validates with and without the control,
  exports a loadable adapter and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from controls.base import ControlAdapter
from controls.controlnet import DepthAdapter
from controls.tracks import TrackAdapter
from physics.rigid import RigidConfig
from physics.scenes import SceneConfig
from physics.worlds import WorldConfig, WorldDataset, generate_dataset
from wmgen.cli import app
from wmgen.config import to_dict
from wmgen.models.dit import DiTConfig
from wmgen.models.text import TextEncoder, _pad
from wmgen.models.vae import CausalVAE, VAEConfig
from wmgen.pipeline import WorldModel
from wmgen.train.adapter import AdapterTrainConfig, train_adapter
from wmgen.train.common import LoopConfig, latest_checkpoint, read_metrics
from wmgen.train.flow import (
    FlowTrainConfig,
    LatentClips,
    encode_latents,
    export_checkpoint,
    object_cell_weights,
    train_flow,
    velocity_error,
)
from wmgen.train.vae import VAETrainConfig, _crop, export_vae_checkpoint, object_psnr, object_weights, train_vae

RES, FRAMES, LC = 16, 5, 8  # pixels, frames per clip, text tokens
LATENT = (4, 2, 4, 4)  # C, T', H', W' of one clip under the test VAE
CHECKPOINT_TENSORS = ("model", "ema", "optimizer")
# small, fast-moving loop: lr high enough that every step visibly changes the weights
LOOP = dict(
    steps=4, batch_size=4, lr=1e-3, warmup_steps=1, log_every=1, val_every=0, ckpt_every=2, ema_decay=0.9,
    progress=False,
)  # fmt: skip


# --- the test components (also registered by the subprocess runner) ---------------------------------------


class HashText(TextEncoder):
    """A deterministic 16-d text encoder: word w -> N(0, I) drawn from a generator seeded by crc32(w)."""

    name, dim = "hash16", 16

    def __init__(self, max_length: int = LC, device: str | torch.device = "cpu"):
        self.max_length, self.device = max_length, torch.device(device)

    def encode(self, prompts):
        rows = [
            torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                         for w in (p.split() or [""])])
            for p in prompts
        ]  # B x (Li, Dc)
        return _pad(rows, self.max_length, self.dim, self.device)  # (B, Lc, Dc)


def register_tiny(setitem) -> None:
    """Add the "test" VAE and DiT presets and the "hash16" text encoder via ``setitem(dict, key, value)``."""
    from wmgen.models import dit, text, vae

    setitem(vae.VAE_PRESETS, "test", VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1,
                                               temporal_downsample=(True, True)))
    setitem(dit.DIT_PRESETS, "test", DiTConfig(dim=32, num_layers=2, num_heads=2, ffn_dim=64))
    setitem(text.TEXT_ENCODERS, "hash16", HashText)


RUNNER = """\
import os, sys, time
from pathlib import Path

sys.path.insert(0, {tests!r})
import torch

torch.set_num_threads(1)
import test_train_recipes

test_train_recipes.register_tiny(lambda d, k, v: d.__setitem__(k, v))
stall = int(os.environ.get("WMGEN_TEST_STALL_AT", "0"))
if stall:  # after logging step `stall`, announce it and wait to be killed (a kill mid-run, deterministically)
    from wmgen.train import common

    log = common.Trainer.log

    def stalling_log(self, record):
        log(self, record)
        if record["step"] == stall and "loss" in record:
            Path(os.environ["WMGEN_TEST_STALL_FILE"]).write_text(str(stall))
            time.sleep(600)

    common.Trainer.log = stalling_log
from wmgen.cli import main

sys.argv = ["wmgen", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module", autouse=True)
def tiny_components():
    """The test presets and text encoder; and CPU even on a GPU machine (the comparisons are CPU-exact)."""
    with pytest.MonkeyPatch.context() as mp:
        register_tiny(mp.setitem)
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield


def world_config() -> WorldConfig:
    return WorldConfig(
        kind="rigid", resolution=RES, frames=FRAMES, num_tracks=8, rigid_particles_per_object=24, batch_size=8,
        supersample=1, scene=SceneConfig(max_objects=2), rigid=RigidConfig(substeps=4),
    )  # fmt: skip


def vae_config(data, out, **kw) -> VAETrainConfig:
    loop = LoopConfig(**{**LOOP, "steps": 3, "val_every": 2, **kw.pop("loop", {})})
    return VAETrainConfig(
        data=str(data.train), val_data=str(data.val), out=str(out), preset="test", crop_frames=5, crop_size=8,
        val_clips=4, stats_clips=16, loop=loop, **kw,
    )  # fmt: skip


def flow_config(data, out, *, latents: bool = False, **loop) -> FlowTrainConfig:
    sources = (
        dict(latents=str(data.latents), val_latents=str(data.val_latents))
        if latents
        else dict(data=str(data.train), val_data=str(data.val))
    )
    return FlowTrainConfig(
        **sources, vae=str(data.vae), out=str(out), preset="test", text_encoder="hash16", text_max_length=LC,
        val_clips=4, val_times=2, sample_steps=2, loop=LoopConfig(**{**LOOP, **loop}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """Datasets, a 3-step VAE run (its exported vae/) and the latents of both datasets (via the CLI)."""
    root = tmp_path_factory.mktemp("recipes")
    train = generate_dataset(world_config(), root / "train", 16, shard_size=8, seed=0, progress=False)
    val = generate_dataset(world_config(), root / "val", 4, shard_size=8, seed=1, progress=False)
    ns = SimpleNamespace(root=root, train=train, val=val, vae_run=root / "vae-run")
    ns.vae = train_vae(vae_config(ns, ns.vae_run))
    for name, source in (("latents", train), ("val_latents", val)):
        result = CliRunner().invoke(
            app, ["data", "encode", "--data", str(source), "--vae", str(ns.vae), "--out", str(root / name), "-q"]
        )
        assert result.exit_code == 0, result.output
        setattr(ns, name, root / name)
    return ns


def tensors(run: Path, step: int) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    return {name: load_file(ckpt / f"{name}.safetensors") for name in CHECKPOINT_TENSORS}


def train_losses(run: Path) -> dict[int, float]:
    records = [m for m in read_metrics(run) if "loss" in m]
    steps = [m["step"] for m in records]
    assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
    return {m["step"]: m["loss"] for m in records}


def write_runner(tmp_path: Path) -> Path:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(tests=str(Path(__file__).resolve().parent)))
    return runner


def write_yaml(path: Path, section: str, config) -> Path:
    path.write_text(yaml.safe_dump({section: to_dict(config)}))
    return path


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


# --- VAE ---------------------------------------------------------------------------------------------------


def test_train_vae_exports_model_with_finite_stats_and_validates(data):
    vae = CausalVAE.from_pretrained(data.vae)
    assert data.vae == data.vae_run / "vae"
    assert vae.config == VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1,
                                   temporal_downsample=(True, True))
    assert torch.isfinite(vae.latents_mean).all() and torch.isfinite(vae.latents_std).all()
    assert (vae.latents_std > 0).all() and not torch.equal(vae.latents_std, torch.ones(4))  # measured, not default
    metrics = read_metrics(data.vae_run)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]
    assert all({"l1", "ssim", "kl", "lr", "grad_norm"} <= set(m) for m in metrics if "loss" in m)
    val = [m for m in metrics if "val_psnr" in m]
    assert [m["step"] for m in val] == [2, 3]  # val_every=2 and the end
    assert all(0 < m["val_psnr"] < 100 and -1 <= m["val_ssim"] <= 1 for m in val)
    # the export holds the EMA weights of the last checkpoint
    ema = load_file(data.vae_run / "checkpoints" / "step-00000003" / "ema.safetensors")
    for name, value in vae.state_dict().items():
        if f"vae.{name}" in ema:
            assert torch.equal(value, ema[f"vae.{name}"]), name


def test_export_of_a_vae_run_writes_the_vae_of_any_step(data, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "export", str(data.vae_run), "--out", str(tmp_path / "latest")])
    assert result.exit_code == 0, result.output
    final = CausalVAE.from_pretrained(data.vae).state_dict()
    latest = CausalVAE.from_pretrained(tmp_path / "latest").state_dict()
    assert all(torch.equal(v, final[k]) for k, v in latest.items())  # the newest = the run's own export, stats too
    have = sorted(int(p.name[5:]) for p in (data.vae_run / "checkpoints").glob("step-*"))
    early = export_vae_checkpoint(data.vae_run, tmp_path / "early", step=have[0])
    ema = tensors(data.vae_run, have[0])["ema"]
    vae = CausalVAE.from_pretrained(early)
    for name, value in vae.state_dict().items():
        if f"vae.{name}" in ema:
            assert torch.equal(value, ema[f"vae.{name}"]), name
    assert not torch.equal(vae.latents_std, torch.ones_like(vae.latents_std))  # measured for this step's encoder
    assert not torch.equal(vae.latents_mean, final["latents_mean"])

    # a decoder fine-tune's checkpoint keeps init's encoder and statistics
    tuned_run = tmp_path / "decoder"
    train_vae(vae_config(data, tuned_run, init=str(data.vae), train_encoder=False))
    tuned = CausalVAE.from_pretrained(export_vae_checkpoint(tuned_run, tmp_path / "tuned", step=2)).state_dict()
    frozen = ("encoder.", "quant.", "latents_mean", "latents_std")
    assert all(torch.equal(tuned[k], final[k]) for k in final if k.startswith(frozen))

    # refusals: --vae belongs to flow runs; a missing step names the ones there are; an adapter run is not exported
    export = ["train", "export", str(data.vae_run), "--out", str(tmp_path / "x")]
    bad = runner.invoke(app, [*export, "--vae", str(data.vae)])
    assert bad.exit_code == 2 and "holds a `wmgen train vae` run" in bad.output
    bad = runner.invoke(app, [*export, "--step", "1"])
    assert bad.exit_code == 2 and "step = 1: " in bad.output and str(have) in bad.output
    assert not (tmp_path / "x").exists()


def test_train_vae_with_discriminator_trains_both_players(data, tmp_path):
    out = tmp_path / "disc"
    config = vae_config(data, out, disc_weight=0.5, disc_start=1, disc_channels=4, loop={"val_every": 0})
    train_vae(config)
    records = [m for m in read_metrics(out) if "loss" in m]
    assert "g_adv" not in records[0] and "d_loss" not in records[0]  # step 0 < disc_start
    assert all({"g_adv", "d_loss"} <= set(m) for m in records[1:])
    assert all(torch.isfinite(torch.tensor([m["g_adv"], m["d_loss"]])).all() for m in records[1:])
    model = load_file(out / "checkpoints" / "step-00000003" / "model.safetensors")
    first = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")  # keep_checkpoints=2
    disc = [k for k in model if k.startswith("disc.")]
    assert disc and any(not torch.equal(model[k], first[k]) for k in disc)  # the discriminator learns
    # the exported VAE holds no discriminator weights (from_pretrained loads strictly)
    CausalVAE.from_pretrained(out / "vae")
    # the discriminator's initialisation depends on the seed only, like the VAE's: a second run is identical
    again = tmp_path / "disc-again"
    torch.manual_seed(1234)  # the global RNG must not matter
    train_vae(dataclasses.replace(config, out=str(again)))
    assert train_losses(again) == train_losses(out)


def test_object_weights_and_object_psnr():
    mask = torch.full((2, 5, 8, 8), -1)
    mask[0, :, 2:4, 2:4] = 1  # clip 0: a 2x2 object in every frame; clip 1: background only
    w = object_weights(mask, 9.0)
    assert w.shape == (2, 1, 5, 8, 8)
    assert w[0, 0, :, 2:4, 2:4].eq(10).all() and w.sum() == 2 * 5 * 64 + 9 * 5 * 4
    assert object_weights(mask, 0.0).eq(1).all()  # the plain mean
    video = torch.zeros(2, 3, 5, 8, 8)
    recon = video.clone()
    recon[:, :, :, 5:, 5:] = 0.7  # background errors do not count
    recon[0, 0, :, 2:4, 2:4] = 0.2  # one channel of the object off by 0.2: MSE 0.04 / 3
    p = object_psnr(recon, video, mask)
    assert p[0].item() == pytest.approx(10 * math.log10(4 / (0.04 / 3)), rel=1e-5) and p[1].isnan()


def test_vae_crop_cuts_video_and_mask_alike():
    T, H, W = 9, 16, 12
    video = torch.arange(T * H * W, dtype=torch.float32).reshape(1, T, H, W).expand(3, -1, -1, -1)
    mask = torch.arange(T * H * W).reshape(T, H, W)  # the same numbering: equal where the windows agree
    for seed in range(5):
        v, m = _crop(video, mask, 5, 8, torch.Generator().manual_seed(seed))
        assert v.shape == (3, 5, 8, 8) and m.shape == (5, 8, 8) and torch.equal(v[1], m.float())
    with pytest.raises(ValueError, match="larger than the clips"):
        _crop(video, mask, 13, 8, torch.Generator())


def test_object_weight_changes_the_loss_and_decoder_fine_tuning_keeps_the_latent_space(data, tmp_path):
    # object_weight reaches the loss (first step: same weights, same crops, different L1)
    plain = vae_config(data, tmp_path / "plain", loop={"steps": 1, "val_every": 0})
    train_vae(plain)
    weighted = dataclasses.replace(plain, out=str(tmp_path / "weighted"), object_weight=20.0)
    train_vae(weighted)
    assert train_losses(tmp_path / "plain")[1] != train_losses(tmp_path / "weighted")[1]

    # decoder fine-tuning: the encoder side and latent statistics are init's, bit for bit; the decoder moves
    out = tmp_path / "decoder"
    config = vae_config(data, out, init=str(data.vae), train_encoder=False, object_weight=10.0)
    tuned = CausalVAE.from_pretrained(train_vae(config))
    source = CausalVAE.from_pretrained(data.vae)
    frozen = ("encoder.", "quant.", "latents_mean", "latents_std")
    new, old = tuned.state_dict(), source.state_dict()
    assert all(torch.equal(new[k], old[k]) for k in old if k.startswith(frozen))
    assert any(not torch.equal(new[k], old[k]) for k in old if k.startswith("decoder."))
    assert not any(k.startswith(frozen) for k in load_file(out / "checkpoints" / "step-00000003" / "model.safetensors"))
    val = [m for m in read_metrics(out) if "val_psnr" in m]
    assert val and all(0 < m["val_object_psnr"] < 100 for m in val)  # the test clips have objects
    # resuming loads init again for the frozen parts and continues
    train_vae(dataclasses.replace(config, loop=dataclasses.replace(config.loop, steps=4)), resume=True)
    again = CausalVAE.from_pretrained(out / "vae").state_dict()
    assert all(torch.equal(again[k], old[k]) for k in old if k.startswith(frozen))

    # refusals
    with pytest.raises(ValueError, match="init must name"):
        vae_config(data, tmp_path / "x", train_encoder=False)
    other = dataclasses.replace(source.config, z_dim=8)
    CausalVAE(other).save_pretrained(tmp_path / "other-vae")
    with pytest.raises(ValueError, match="config differs from preset 'test'"):
        train_vae(vae_config(data, tmp_path / "y", init=str(tmp_path / "other-vae")))
    assert not (tmp_path / "y").exists()


# --- latents -----------------------------------------------------------------------------------------------


def test_encode_latents_writes_posterior_of_every_clip(data, tmp_path):
    latents = load_file(data.latents / "latents.safetensors")
    meta = json.loads((data.latents / "latents.json").read_text())
    dataset = WorldDataset(data.train)
    assert latents["mean"].shape == latents["std"].shape == (16, *LATENT)
    assert latents["mean"].dtype == latents["std"].dtype == torch.float16
    assert (latents["std"] > 0).all()
    assert meta["captions"] == [r["caption"] for r in dataset.records]
    assert meta["data"] == str(Path(data.train).resolve()) and meta["vae"] == str(Path(data.vae).resolve())
    vae = CausalVAE.from_pretrained(data.vae)
    with torch.no_grad():
        posterior = vae.encode(dataset[3]["video"][None])
    torch.testing.assert_close(latents["mean"][3].float(), posterior.mean[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(latents["std"][3].float(), posterior.std[0], atol=2e-3, rtol=2e-3)
    # the still video of each clip's first frame (the still-residual target's reference)
    assert latents["still"].shape == (16, *LATENT) and latents["still"].dtype == torch.float16
    with torch.no_grad():
        still = vae.encode(dataset[3]["video"][None, :, :1].expand(-1, -1, FRAMES, -1, -1).contiguous()).mean
    torch.testing.assert_close(latents["still"][3].float(), still[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(latents["still"][3, :, 0], latents["mean"][3, :, 0], atol=2e-3, rtol=2e-3)
    # an existing out directory is refused and left alone
    with pytest.raises(FileExistsError, match="exists"):
        encode_latents(data.train, data.vae, data.latents, progress=False)
    assert load_file(data.latents / "latents.safetensors")["mean"].shape == (16, *LATENT)
    with pytest.raises(FileNotFoundError, match="vae"):
        encode_latents(data.train, tmp_path, tmp_path / "x", progress=False)
    # a prefix of the dataset: the first num_clips clips, the same numbers as the full encoding
    head = encode_latents(data.train, data.vae, tmp_path / "head", num_clips=5, progress=False)
    assert load_file(head / "latents.safetensors")["mean"].shape == (5, *LATENT)
    torch.testing.assert_close(load_file(head / "latents.safetensors")["mean"], latents["mean"][:5])
    assert json.loads((head / "latents.json").read_text())["captions"] == meta["captions"][:5]
    for bad in (0, 17):
        with pytest.raises(ValueError, match="num_clips must be in"):
            encode_latents(data.train, data.vae, tmp_path / f"bad{bad}", num_clips=bad, progress=False)
        assert not (tmp_path / f"bad{bad}").exists()


# --- flow --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("latents", [True, False], ids=["pre-encoded", "on-the-fly"])
def test_train_flow_exports_a_world_model_that_generates(data, tmp_path, latents):
    out = tmp_path / "flow"
    path = train_flow(flow_config(data, out, latents=latents, steps=3))
    assert path == out / "model"
    metrics = read_metrics(out)
    assert sorted(train_losses(out)) == [1, 2, 3]
    val = [m for m in metrics if "val_loss" in m]
    assert [m["step"] for m in val] == [3] and len(val[0]["val_loss_t"]) == 2
    wm = WorldModel.from_pretrained(path)
    assert (wm.config.resolution, wm.config.num_frames, wm.config.steps) == (RES, FRAMES, 2)
    assert wm.config.text_encoder == "hash16" and isinstance(wm.text_encoder, HashText)
    # the export holds the EMA weights of the final checkpoint
    ema = tensors(out, 3)["ema"]
    for name, value in wm.dit.state_dict().items():
        assert torch.equal(value, ema[f"dit.{name}"]), name
    assert torch.equal(wm.null_text.embedding, ema["null_text.embedding"])
    first = WorldDataset(data.val)[0]
    video = wm.generate(first["caption"], first["video"][:, 0], steps=2, seed=0)
    assert video.pixels.shape == (1, 3, FRAMES, RES, RES) and torch.isfinite(video.pixels).all()


def test_pre_encoded_and_on_the_fly_latents_train_the_same(data, tmp_path):
    # same clips, same per-example noise: the losses differ only by the fp16 storage of the latents
    a = train_losses(train_flow(flow_config(data, tmp_path / "a", latents=True, steps=1)).parent)
    b = train_losses(train_flow(flow_config(data, tmp_path / "b", latents=False, steps=1)).parent)
    assert a[1] == pytest.approx(b[1], rel=1e-2)


def test_grad_accum_matches_one_micro_batch(data, tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    train_flow(flow_config(data, one, latents=True, steps=3))
    train_flow(flow_config(data, two, latents=True, steps=3, grad_accum=2))
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5)
    for name, ref in tensors(one, 3).items():
        for key, value in tensors(two, 3)[name].items():
            torch.testing.assert_close(value, ref[key], atol=1e-5, rtol=1e-5, msg=f"{name}/{key}")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_two_gloo_processes_match_one_process(data, tmp_path, parallel):
    """DDP, and FSDP2 (every block and the root sharded across the 2 ranks), follow one process exactly."""
    one, two = tmp_path / "one", tmp_path / "two"
    config = flow_config(data, one, latents=True, steps=4, ckpt_every=2)
    train_flow(config)
    runner = write_runner(tmp_path)
    sharded = dataclasses.replace(config, out=str(two), loop=dataclasses.replace(config.loop, parallel=parallel))
    cfg = write_yaml(tmp_path / "ddp.yaml", "flow", sharded)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(runner),
           "train", "flow", "--config", str(cfg), "-q"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), (step, a, b)
    for name, ref in tensors(one, 4).items():
        got = tensors(two, 4)[name]
        assert set(got) == set(ref), name
        for key, value in got.items():
            torch.testing.assert_close(value, ref[key], atol=1e-5, rtol=1e-5, msg=f"{name}/{key}")
    va = [m["val_loss"] for m in read_metrics(one) if "val_loss" in m]
    vb = [m["val_loss"] for m in read_metrics(two) if "val_loss" in m]
    assert vb == pytest.approx(va, rel=1e-5)
    # the checkpoint of step 2 written by 2 processes resumes on 1 process and lands on the same weights
    pointer = two / "checkpoints" / "latest.json"
    pointer.write_text(json.dumps({"name": "step-00000002", "step": 2}))
    for path in (two / "checkpoints" / "step-00000004", two / "model"):
        shutil.rmtree(path)
    train_flow(dataclasses.replace(config, out=str(two)), resume=True)
    assert list(train_losses(two)) == [1, 2, 3, 4]
    for name, ref in tensors(one, 4).items():
        for key, value in tensors(two, 4)[name].items():
            torch.testing.assert_close(value, ref[key], atol=1e-5, rtol=1e-5, msg=f"{name}/{key}")


@pytest.mark.slow
@pytest.mark.parametrize("disc", [False, True], ids=["vae", "vae+discriminator"])
def test_ddp_vae_recipe_matches_one_process(data, tmp_path, disc):
    gan = dict(disc_weight=0.5, disc_start=1, disc_channels=4) if disc else {}
    one, two = tmp_path / "one", tmp_path / "two"
    config = vae_config(data, one, loop={"val_every": 0}, **gan)
    train_vae(config)
    runner = write_runner(tmp_path)
    cfg = write_yaml(tmp_path / "ddp.yaml", "vae", dataclasses.replace(config, out=str(two)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(runner),
           "train", "vae", "--config", str(cfg), "-q"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    a, b = train_losses(one), train_losses(two)
    assert list(a) == list(b) == [1, 2, 3]
    assert [b[s] for s in b] == pytest.approx([a[s] for s in a], rel=1e-5)
    if disc:
        # The losses agree, the weights only to ~1e-3: Adam turns the float-noise gradients of the conv biases
        # in front of the discriminator's GroupNorms (mathematically zero) into lr-sized steps of random sign.
        assert all("g_adv" in m for m in read_metrics(two) if "loss" in m and m["step"] > 1)
        return
    for name, ref in tensors(one, 3).items():
        for key, value in tensors(two, 3)[name].items():
            torch.testing.assert_close(value, ref[key], atol=5e-5, rtol=1e-4, msg=f"{name}/{key}")


def test_kill_then_resume_is_bit_exact(data, tmp_path):
    steps, ckpt_every, stall = 12, 5, 7
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    config = flow_config(data, ref, latents=True, steps=steps, ckpt_every=ckpt_every)
    train_flow(config)
    runner = write_runner(tmp_path)
    cfg = write_yaml(tmp_path / "flow.yaml", "flow", dataclasses.replace(config, out=str(run)))
    cmd = [sys.executable, str(runner), "train", "flow", "--config", str(cfg), "-q"]
    marker = tmp_path / "stalled"
    env = child_env(WMGEN_TEST_STALL_AT=str(stall), WMGEN_TEST_STALL_FILE=str(marker))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert marker.exists(), "the run did not reach the stall step in time"
        assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 5
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert not (run / "model").exists()
    assert sorted(train_losses(run)) == list(range(1, stall + 1))  # steps 6 and 7 logged after the checkpoint
    assert latest_checkpoint(run).name == "step-00000005"

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert train_losses(run) == train_losses(ref)  # every step once, the same losses bit for bit
    want, got = tensors(ref, steps), tensors(run, steps)
    for name in CHECKPOINT_TENSORS:
        assert set(got[name]) == set(want[name]), name
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), f"{name}/{key}"
    state = json.loads((run / "checkpoints" / f"step-{steps:08d}" / "state.json").read_text())
    assert state["step"] == steps and state["ema_updates"] == steps
    exported = WorldModel.from_pretrained(run / "model").dit.state_dict()
    for key, value in WorldModel.from_pretrained(ref / "model").dit.state_dict().items():
        assert torch.equal(exported[key], value), key


def test_export_checkpoint_writes_the_world_model_of_any_step(data, tmp_path):
    run = tmp_path / "run"
    train_flow(flow_config(data, run, latents=True))  # 4 steps, checkpoints at 2 and 4
    final = WorldModel.from_pretrained(run / "model").dit.state_dict()
    runner = CliRunner()
    result = runner.invoke(app, ["train", "export", str(run), "--out", str(tmp_path / "latest")])
    assert result.exit_code == 0, result.output
    for name, value in WorldModel.from_pretrained(tmp_path / "latest").dit.state_dict().items():
        assert torch.equal(value, final[name]), name  # the newest checkpoint = the run's own export
    mid = WorldModel.from_pretrained(export_checkpoint(run, tmp_path / "mid", step=2))
    ema = tensors(run, 2)["ema"]
    for name, value in mid.dit.state_dict().items():
        assert torch.equal(value, ema[f"dit.{name}"]), name
    assert torch.equal(mid.null_text.embedding, ema["null_text.embedding"])
    assert not torch.equal(mid.dit.head.weight, final["head.weight"])
    assert mid.config == WorldModel.from_pretrained(run / "model").config
    with pytest.raises(ValueError, match=r"step = 3: .* \[2, 4\]"):
        export_checkpoint(run, tmp_path / "x", step=3)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        export_checkpoint(tmp_path / "nothing", tmp_path / "x")
    bad = runner.invoke(app, ["train", "export", str(run), "--out", str(tmp_path / "x"), "--step", "3"])
    assert bad.exit_code == 2 and "step = 3" in bad.output


def test_export_checkpoint_with_a_decoder_fine_tune_keeps_the_latent_space(data, tmp_path):
    run = tmp_path / "run"
    train_flow(flow_config(data, run, latents=True))
    tuned = train_vae(vae_config(data, tmp_path / "decoder", init=str(data.vae), train_encoder=False))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "export", str(run), "--out", str(tmp_path / "wm"), "--vae", str(tuned)])
    assert result.exit_code == 0, result.output
    plain, swapped = WorldModel.from_pretrained(run / "model"), WorldModel.from_pretrained(tmp_path / "wm")
    decoder = CausalVAE.from_pretrained(tuned).state_dict()
    assert all(torch.equal(v, decoder[k]) for k, v in swapped.vae.state_dict().items())
    frame = WorldDataset(data.val)[0]["video"][:, 0][None]  # (1, 3, H, W)
    a, b = (m.generate(["a cube"], frame, steps=2, seed=3) for m in (plain, swapped))
    assert torch.equal(a.latents, b.latents)  # the same flow in the same latent space
    assert not torch.equal(a.pixels, b.pixels)  # decoded by another decoder
    # a VAE that encodes differently (its encoder trained too) or has another shape is refused
    retrained = train_vae(vae_config(data, tmp_path / "whole", init=str(data.vae)))
    with pytest.raises(ValueError, match="encodes differently from the run's VAE"):
        export_checkpoint(run, tmp_path / "x", vae=retrained)
    other = dataclasses.replace(CausalVAE.from_pretrained(data.vae).config, z_dim=8)
    CausalVAE(other).save_pretrained(tmp_path / "other-vae")
    with pytest.raises(ValueError, match="another config than the run's VAE"):
        export_checkpoint(run, tmp_path / "x", vae=tmp_path / "other-vae")
    assert not (tmp_path / "x").exists()


# --- image-to-video layouts and adapters ----------------------------------------------------------------


def test_velocity_error_skips_the_pinned_frames():
    g = torch.Generator().manual_seed(0)
    x1, x0, v = (torch.randn(2, *LATENT, generator=g) for _ in range(3))
    full = velocity_error(v, x1, x0)
    torch.testing.assert_close(full, (v - (x1 - x0)).square().flatten(1).mean(1))
    moved = v.clone()
    moved[:, :, 0] += 10.0
    assert torch.equal(velocity_error(moved, x1, x0, 1), velocity_error(v, x1, x0, 1))
    torch.testing.assert_close(velocity_error(v, x1, x0, 1), (v - (x1 - x0))[:, :, 1:].square().flatten(1).mean(1))
    assert not torch.allclose(velocity_error(moved, x1, x0), full)


def test_velocity_error_weighted_mean():
    g = torch.Generator().manual_seed(0)
    x1, x0, v = (torch.randn(2, *LATENT, generator=g) for _ in range(3))
    C, T, H, W = LATENT
    uniform = torch.full((2, 1, T, H, W), 3.0)
    torch.testing.assert_close(velocity_error(v, x1, x0, 1, uniform), velocity_error(v, x1, x0, 1))
    one_cell = torch.full((2, 1, T, H, W), 1e-12)
    one_cell[:, :, 1, 0, 0] = 1.0  # all the weight on latent cell (1, 0, 0)
    expected = (v - (x1 - x0))[:, :, 1, 0, 0].square().mean(1)  # (2,) mean over channels
    torch.testing.assert_close(velocity_error(v, x1, x0, 1, one_cell), expected, rtol=1e-5, atol=1e-8)


def test_latents_must_be_the_first_clips_of_their_dataset(data):
    vae = CausalVAE.from_pretrained(data.vae)
    clips = LatentClips(vae, latents=str(data.latents), device=torch.device("cpu"))
    clips.check_first_clips_of(WorldDataset(data.train), "latents")  # encoded from it: accepted
    with pytest.raises(ValueError, match=r"val_latents \(\d+ clips.*not the latents of the first clips"):
        clips.check_first_clips_of(WorldDataset(data.val), "val_latents")


def test_object_cell_weights_follow_the_causal_grouping():
    mask = torch.full((1, 9, 16, 16), -1)  # 9 frames -> latent frames {0}, {1..4}, {5..8}; 4 x 4 cells of 4 px
    mask[0, 0, 0, 0] = 2  # frame 0, pixel (y 0, x 0): latent frame 0, cell (0, 0)
    mask[0, 6, 9, 14] = 0  # frame 6, pixel (y 9, x 14): latent frame 2, cell (2, 3)
    w = object_cell_weights(mask, 4.0, temporal_factor=4, spatial_factor=4)
    assert w.shape == (1, 1, 3, 4, 4) and w.dtype == torch.float32
    expected = torch.ones(1, 1, 3, 4, 4)
    expected[0, 0, 0, 0, 0] = expected[0, 0, 2, 2, 3] = 5.0
    assert torch.equal(w, expected)
    assert torch.equal(object_cell_weights(mask, 0.0, temporal_factor=4, spatial_factor=4), torch.ones(1, 1, 3, 4, 4))


def tokens_flow_config(data, out, **loop) -> FlowTrainConfig:
    return dataclasses.replace(flow_config(data, out, latents=True, **loop), image_condition="tokens")


def test_train_flow_token_layout_generates_from_the_given_latent(data, tmp_path):
    wm = WorldModel.from_pretrained(train_flow(tokens_flow_config(data, tmp_path / "tokens", steps=2)))
    assert wm.dit.config.image_condition == "tokens" and wm.dit.config.patch_in_channels == LATENT[0]
    first = WorldDataset(data.val)[0]
    video = wm.generate(first["caption"], first["video"][:, 0], steps=2, seed=0)
    assert torch.equal(video.latents[:, :, 0], wm.encode_first_frame(first["video"][:, 0]))
    with pytest.raises(ValueError, match="image_dropout must be 0 with image_condition='tokens'"):
        dataclasses.replace(tokens_flow_config(data, tmp_path / "x"), image_dropout=0.1)


def residual_flow_config(data, out, *, latents: bool = True, **loop) -> FlowTrainConfig:
    base = flow_config(data, out, latents=latents, **loop)
    return dataclasses.replace(base, image_condition="tokens", target="still_residual", residual_clips=12)


@pytest.mark.parametrize("latents", [True, False], ids=["pre-encoded", "on-the-fly"])
def test_still_residual_target_trains_on_residuals_and_exports_its_scale(data, tmp_path, latents):
    run = tmp_path / "residual"
    wm = WorldModel.from_pretrained(train_flow(residual_flow_config(data, run, latents=latents, steps=2)))
    # the scale: the residual's per-channel std over the first residual_clips training clips (posterior means)
    stored = load_file(data.latents / "latents.safetensors")
    with torch.no_grad():
        mean, still = wm.vae.normalize(stored["mean"][:12].float()), wm.vae.normalize(stored["still"][:12].float())
    expected = (mean[:, :, 1:] - still[:, :, 1:]).transpose(0, 1).flatten(1).std(dim=1)
    assert len(wm.config.residual_scale) == LATENT[0]
    torch.testing.assert_close(torch.tensor(wm.config.residual_scale), expected, atol=2e-3, rtol=5e-3)
    # the loss is taken in residual coordinates: step 1 differs from the plain-latent run on the same draws
    plain = train_losses(train_flow(tokens_flow_config(data, tmp_path / "plain", steps=1)).parent)
    assert train_losses(run)[1] != pytest.approx(plain[1], rel=1e-3)
    first = WorldDataset(data.val)[0]
    video = wm.generate(first["caption"], first["video"][:, 0], steps=2, seed=0)
    assert torch.isfinite(video.pixels).all()
    if latents:  # a part-way export measures the same scale
        mid = WorldModel.from_pretrained(export_checkpoint(run, tmp_path / "mid", step=2))
        assert mid.config.residual_scale == wm.config.residual_scale


def test_still_residual_target_refusals(data, tmp_path):
    with pytest.raises(ValueError, match="target = 'still_residual' needs image_to_video"):
        dataclasses.replace(residual_flow_config(data, tmp_path / "x"), image_to_video=False)
    old = tmp_path / "old-latents"  # latents written before the still video was stored
    shutil.copytree(data.latents, old)
    tensors_ = load_file(old / "latents.safetensors")
    save_file({k: v for k, v in tensors_.items() if k != "still"}, old / "latents.safetensors")
    config = dataclasses.replace(residual_flow_config(data, tmp_path / "y"), latents=str(old))
    with pytest.raises(ValueError, match="hold no still-video latents.*encode them again"):
        train_flow(config)
    assert not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def backbones(data, tmp_path_factory) -> dict[str, Path]:
    """Exported world models (2 flow steps) in both image-to-video layouts, and a still-residual one."""
    root = tmp_path_factory.mktemp("backbones")
    return {
        "channels": train_flow(flow_config(data, root / "channels", latents=True, steps=2)),
        "tokens": train_flow(tokens_flow_config(data, root / "tokens", steps=2)),
        "residual": train_flow(residual_flow_config(data, root / "residual", steps=2)),
    }


def test_train_flow_init_starts_from_an_exported_model(data, backbones, tmp_path):
    start = WorldModel.from_pretrained(backbones["tokens"])
    config = tokens_flow_config(data, tmp_path / "a", steps=1, lr=1e-9)
    config = dataclasses.replace(config, init=str(backbones["tokens"]))
    tuned = WorldModel.from_pretrained(train_flow(config))
    fresh = WorldModel.from_pretrained(train_flow(tokens_flow_config(data, tmp_path / "b", steps=1, lr=1e-9)))
    for name, value in start.dit.state_dict().items():  # one step at lr 1e-9 from the init's weights
        torch.testing.assert_close(tuned.dit.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert not torch.allclose(fresh.dit.blocks[0].self_attn.qkv.weight, start.dit.blocks[0].self_attn.qkv.weight)
    torch.testing.assert_close(tuned.null_text.embedding, start.null_text.embedding, rtol=0, atol=1e-6)
    # a resumed run takes its weights from its checkpoint, not from init
    run = tmp_path / "a"
    train_flow(dataclasses.replace(config, out=str(run), loop=dataclasses.replace(config.loop, steps=2)), resume=True)
    assert sorted(train_losses(run)) == [1, 2]


def test_train_flow_init_refusals(data, backbones, tmp_path):
    tokens = tokens_flow_config(data, tmp_path / "x", steps=1)
    with pytest.raises(ValueError, match="init = .* has another DiT config"):
        train_flow(dataclasses.replace(tokens, init=str(backbones["channels"])))
    with pytest.raises(ValueError, match="generates still residuals .* target = 'latents'"):
        train_flow(dataclasses.replace(tokens, init=str(backbones["residual"])))
    with pytest.raises(FileNotFoundError, match="init = .* world_model.json"):
        train_flow(dataclasses.replace(tokens, init=str(tmp_path / "nothing")))
    assert not (tmp_path / "x").exists()  # nothing written


def adapter_config(data, model: Path, out: Path, kind: str, carry: bool = False, **loop) -> AdapterTrainConfig:
    return AdapterTrainConfig(
        kind=kind, model=str(model), data=str(data.train), val_data=str(data.val), latents=str(data.latents),
        val_latents=str(data.val_latents), out=str(out), num_blocks=1, id_dim=8, max_tracks=8, val_clips=4,
        val_times=2, carry=carry, loop=LoopConfig(**{**LOOP, "val_every": 4, **loop}),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "layout", "cls", "carry"),
    [
        ("tracks", "tokens", TrackAdapter, False),
        ("tracks", "tokens", TrackAdapter, True),
        ("depth", "channels", DepthAdapter, False),
        ("tracks", "residual", TrackAdapter, False),
    ],
)
def test_train_adapter_moves_only_the_adapter_and_exports_it(data, backbones, tmp_path, kind, layout, cls, carry):
    out = tmp_path / kind
    path = train_adapter(adapter_config(data, backbones[layout], out, kind, carry))
    assert path == out / "adapter" and sorted(train_losses(out)) == [1, 2, 3, 4]
    val = [m for m in read_metrics(out) if "val_loss" in m]
    assert [m["step"] for m in val] == [4]
    # the zero-initialised branch has learned something, so the control changes the prediction
    assert val[0]["val_loss"] != val[0]["val_loss_nocontrol"]
    state = tensors(out, 4)
    adapter = ControlAdapter.from_pretrained(path)
    assert type(adapter) is cls and adapter.kind == kind
    assert (getattr(adapter, "carry_embed", None) is not None) == carry
    # the backbone is frozen: only the adapter's parameters are optimised, averaged and checkpointed
    trained = {f"adapter.{name}" for name, _ in adapter.named_parameters()}
    assert set(state["model"]) == set(state["ema"]) == trained
    for name, value in adapter.state_dict().items():  # the export holds the EMA weights
        assert torch.equal(value, state["ema"][f"adapter.{name}"]), name


def test_train_adapter_on_a_still_residual_backbone_trains_in_its_coordinates(data, backbones, tmp_path, monkeypatch):
    from wmgen.train import flow

    scales = []
    use = flow.LatentClips.use_residual
    monkeypatch.setattr(flow.LatentClips, "use_residual", lambda self, r: (scales.append(r), use(self, r))[1])
    train_adapter(adapter_config(data, backbones["residual"], tmp_path / "a", "depth", steps=1))
    expected = torch.tensor(WorldModel.from_pretrained(backbones["residual"]).config.residual_scale)
    assert len(scales) == 2 and all(torch.equal(r, expected) for r in scales)  # training and validation clips


def test_train_adapter_object_weight_weighs_the_object_cells(data, backbones, tmp_path, monkeypatch):
    from wmgen.train import adapter as adapter_recipe

    weights = []
    error = adapter_recipe.velocity_error
    monkeypatch.setattr(adapter_recipe, "velocity_error", lambda *a: (weights.append(a[4:]), error(*a))[1])
    plain = train_losses(train_adapter(adapter_config(data, backbones["tokens"], tmp_path / "a", "tracks",
                                                      steps=1, val_every=0)).parent)  # fmt: skip
    assert weights == [(None,), (), (), (), ()]  # the training step, then the final validation (unweighted)
    del weights[:]
    config = dataclasses.replace(
        adapter_config(data, backbones["tokens"], tmp_path / "b", "tracks", steps=1, val_every=0), object_weight=4.0
    )
    weighted = train_losses(train_adapter(config).parent)
    (w,) = weights[0]
    assert all(a == () for a in weights[1:])  # validation stays unweighted: comparable across runs
    assert w.shape[:2] == (LOOP["batch_size"], 1) and w.shape[2:] == LATENT[1:]
    assert set(w.unique().tolist()) == {1.0, 5.0}  # the clips' objects and the background
    assert weighted[1] != pytest.approx(plain[1], rel=1e-4)  # same draws, another loss
    with pytest.raises(ValueError, match="object_weight"):
        dataclasses.replace(config, object_weight=-1.0)


@pytest.mark.parametrize("latents", [True, False], ids=["pre-encoded", "on-the-fly"])
def test_train_flow_object_weight_weighs_the_object_cells(data, tmp_path, monkeypatch, latents):
    from wmgen.train import flow

    weights = []
    error = flow.velocity_error
    monkeypatch.setattr(flow, "velocity_error", lambda *a: (weights.append(a[4:]), error(*a))[1])
    plain = train_losses(train_flow(flow_config(data, tmp_path / "a", latents=latents, steps=1)).parent)
    del weights[:]
    config = dataclasses.replace(flow_config(data, tmp_path / "b", latents=latents, steps=1), object_weight=3.0)
    weighted = train_losses(train_flow(config).parent)
    (w,) = weights[0]
    assert all(a == () for a in weights[1:])  # validation stays unweighted
    train_set = WorldDataset(data.train)
    every = object_cell_weights(torch.stack([train_set[i]["mask"] for i in range(len(train_set))]), 3.0,
                                temporal_factor=4, spatial_factor=4)  # fmt: skip  (N, 1, T', H', W')
    assert w.shape == (LOOP["batch_size"], 1, *LATENT[1:]) and set(w.unique().tolist()) == {1.0, 4.0}
    assert all(any(torch.equal(row, e) for e in every) for row in w)  # each clip's own object cells
    assert weighted[1] != pytest.approx(plain[1], rel=1e-4)  # same draws, another loss
    if latents:  # pre-encoded latents need the dataset they were encoded from, for its masks
        moved = tmp_path / "moved"
        shutil.copytree(data.latents, moved)
        meta = json.loads((moved / "latents.json").read_text())
        (moved / "latents.json").write_text(json.dumps({**meta, "data": str(tmp_path / "gone")}))
        with pytest.raises(FileNotFoundError, match="object_weight needs the instance masks .* not there"):
            train_flow(dataclasses.replace(config, latents=str(moved), out=str(tmp_path / "c")))


def test_train_adapter_resumes_exactly_and_refuses_bad_settings(data, backbones, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    config = adapter_config(data, backbones["tokens"], ref, "tracks", val_every=0)
    train_adapter(config)
    # "killed" after the step-2 checkpoint: the run directory as it was then, plus steps 3-4 in the log
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "adapter")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step-00000002", "step": 2}))
    train_adapter(dataclasses.replace(config, out=str(run)), resume=True)
    assert train_losses(run) == train_losses(ref)
    want, got = tensors(ref, 4), tensors(run, 4)
    for name in CHECKPOINT_TENSORS:
        for key, value in want[name].items():
            assert torch.equal(got[name][key], value), f"{name}/{key}"
    with pytest.raises(FileExistsError, match="--resume"):
        train_adapter(config)
    with pytest.raises(ValueError, match="fsdp"):
        fsdp = LoopConfig(**{**LOOP, "parallel": "fsdp"})
        train_adapter(dataclasses.replace(config, out=str(tmp_path / "f"), loop=fsdp))
    with pytest.raises(ValueError, match="model must be given"):
        train_adapter(dataclasses.replace(config, model=""))
    with pytest.raises(ValueError, match="carry is an option of the tracks adapter, got kind = 'depth'"):
        dataclasses.replace(config, kind="depth", carry=True)
    # `wmgen train export` exports flow and VAE runs; an adapter run's export is its own adapter/
    bad = CliRunner().invoke(app, ["train", "export", str(run), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "holds a `wmgen train adapter` run" in bad.output and not (tmp_path / "x").exists()


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_train_vae_reads_its_section_and_set_overrides(data, tmp_path):
    out = tmp_path / "cli-vae"
    vae = to_dict(vae_config(data, out, loop={"steps": 5, "val_every": 0}))
    # the flow section is ignored by `train vae`; an unknown key there would otherwise be an error
    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump({"vae": vae, "flow": {"not_a_key": 1}}))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "vae", "--config", str(cfg), "--set", "loop.steps=2", "-q"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'vae'}" in result.output
    assert sorted(train_losses(out)) == [1, 2]  # --set beat the file's loop.steps = 5
    state = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert state["config"]["loop"]["steps"] == 2 and state["config"]["loop"]["progress"] is False  # -q
    CausalVAE.from_pretrained(out / "vae")

    # a bad key, from --set or from the file's section, exits 2 and names it
    bad = runner.invoke(app, ["train", "vae", "--config", str(cfg), "--set", "loop.stepz=2"])
    assert bad.exit_code == 2 and "loop.stepz" in bad.output
    cfg.write_text(yaml.safe_dump({"vae": {**vae, "crop_sise": 8}}))
    bad = runner.invoke(app, ["train", "vae", "--config", str(cfg)])
    assert bad.exit_code == 2 and "crop_sise" in bad.output and "crop_size" in bad.output  # lists valid keys
    # a second run into the same out directory needs --resume
    cfg.write_text(yaml.safe_dump({"vae": vae}))
    again = runner.invoke(app, ["train", "vae", "--config", str(cfg), "--set", "loop.steps=2"])
    assert again.exit_code == 2 and "--resume" in again.output
    # resuming a finished run with a changed recipe setting is refused, naming the key
    changed = runner.invoke(app, ["train", "vae", "--config", str(cfg), "--set", "loop.steps=2", "--set",
                                  "l1_weight=2.0", "--resume"])  # fmt: skip
    assert changed.exit_code == 2 and "l1_weight" in changed.output
