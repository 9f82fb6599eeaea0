"""WorldModel and Video: generation (I2V shapes, seeds, CFG, controls, gradient guidance, rollout), checkpoints
(bit-exact round trip, pickles refused, atomic save), video files, input errors and the `wmgen generate` CLI.

A tiny random world model throughout: a 4x-spatial VAE (16x16x5 pixels -> 4x4x2 latents), a 2-layer DiT of
width 32 with a random head (a fresh DiT's zero head predicts v = 0, which would hide most bugs) and
precomputed 16-d text; the real MiniLM encoder in two tests."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from controls.base import Control, ControlAdapter
from wmgen.cli import app
from wmgen.config import ConfigError
from wmgen.flow.guidance import GradientGuidance
from wmgen.flow.schedules import time_grid
from wmgen.flow.solvers import integrate
from wmgen.models.dit import DiTConfig, VideoDiT
from wmgen.models.text import NullText, PrecomputedText
from wmgen.models.vae import CausalVAE, VAEConfig
from wmgen.pipeline import Video, WorldModel, WorldModelConfig, _clip_seeds, frame_grid

RES, FRAMES, LC, DC = 16, 5, 8, 16  # pixels, frames per clip, text tokens, text width
VAE_CFG = VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True))
PROMPTS = ["a red ball falls", "two cubes collide", "a blue ball rolls", ""]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dit_config(image_to_video: bool = True, text_dim: int = DC, image_condition: str = "channels") -> DiTConfig:
    return DiTConfig(
        dim=32, num_layers=2, num_heads=2, ffn_dim=64, text_dim=text_dim, in_channels=4, out_channels=4,
        image_to_video=image_to_video, image_condition=image_condition,
    )  # fmt: skip


def make_text(dim: int = DC) -> PrecomputedText:
    table = {p: torch.randn(2 + i, dim, generator=gen(100 + i)) for i, p in enumerate(PROMPTS)}
    return PrecomputedText(table, max_length=LC)


def make_wm(
    *, image_to_video: bool = True, seed: int = 0, text_encoder: str = "none", text=None, text_dim: int = DC,
    image_condition: str = "channels", residual_scale: tuple[float, ...] | None = None,
) -> WorldModel:
    vae = CausalVAE(VAE_CFG, generator=gen(seed))
    dit = VideoDiT(dit_config(image_to_video, text_dim, image_condition), generator=gen(seed + 1))
    nn.init.normal_(dit.head.weight, std=0.3, generator=gen(seed + 2))
    null = NullText(LC, text_dim)
    nn.init.normal_(null.embedding, std=1.0, generator=gen(seed + 3))
    config = WorldModelConfig(
        resolution=RES, num_frames=FRAMES, text_encoder=text_encoder, text_max_length=LC, steps=4, method="heun",
        residual_scale=residual_scale,
    )
    text = make_text(text_dim) if text is None and text_encoder == "none" else text
    return WorldModel(vae, dit, null_text=null, config=config, text_encoder=text).eval()


def frame(seed: int = 0, batch: int | None = None) -> torch.Tensor:
    shape = (3, RES, RES) if batch is None else (batch, 3, RES, RES)
    return torch.rand(shape, generator=gen(seed)) * 2 - 1


@pytest.fixture(scope="module")
def wm() -> WorldModel:
    return make_wm()


class ScaledAdapter(ControlAdapter):
    """A minimal adapter: hint of block 0 = Linear(tokens) * the control input (a float)."""

    kind = "map"

    def __init__(self, backbone_config: DiTConfig):
        super().__init__(backbone_config, [0])
        self.proj = nn.Linear(backbone_config.dim, backbone_config.dim)
        nn.init.normal_(self.proj.weight, std=0.5, generator=gen(7))  # non-zero: a "trained" adapter

    def hints(self, emb, control):
        return {0: self.proj(emb.tokens) * control}


# --- generation ------------------------------------------------------------------------------------------


def test_generate_i2v_shapes_range_and_batching(wm):
    video = wm.generate(PROMPTS[:2], frame(0), seed=0)
    assert isinstance(video, Video) and len(video) == 2
    assert video.pixels.shape == (2, 3, FRAMES, RES, RES)
    assert video.latents.shape == (2, 4, 2, 4, 4) == (2, *wm.latent_shape())
    assert video.pixels.min() >= -1 and video.pixels.max() <= 1 and video.fps == wm.config.fps
    assert video.frames.shape == (2, FRAMES, RES, RES, 3) and video.frames.dtype == torch.uint8
    assert not torch.equal(video.pixels[0], video.pixels[1])  # different prompts, different noise
    # one prompt and one frame broadcast over batch_size; frames per sample give a batch too
    assert len(wm.generate(PROMPTS[0], frame(0), batch_size=3, seed=0)) == 3
    assert len(wm.generate(PROMPTS[0], frame(0, batch=2), seed=0)) == 2
    # decode(latents) is how the pixels were made
    assert torch.equal(wm.decode(video.latents), video.pixels)


def test_seeds_reproduce_and_differ(wm):
    a = wm.generate(PROMPTS[0], frame(0), seed=3)
    b = wm.generate(PROMPTS[0], frame(0), seed=3)
    c = wm.generate(PROMPTS[0], frame(0), seed=4)
    d = wm.generate(PROMPTS[0], frame(0), generator=gen(3))
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.latents, b.latents)
    assert torch.equal(a.latents, d.latents)  # seed s == a CPU generator seeded with s
    assert (a.latents - c.latents).abs().max() > 0.1
    e, f = wm.generate(PROMPTS[0], frame(0)), wm.generate(PROMPTS[0], frame(0))  # no seed: fresh randomness
    assert not torch.equal(e.latents, f.latents)


def test_first_frame_forms_agree(wm):
    """PIL, uint8 numpy / tensor and float tensor of the same picture give the same conditioning latent."""
    u8 = (torch.rand(RES, RES, 3, generator=gen(5)) * 255).round().to(torch.uint8)  # (H, W, 3)
    as_float = u8.permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    ref = wm.encode_first_frame(as_float)
    assert ref.shape == (1, 4, 4, 4)
    for form in (Image.fromarray(u8.numpy()), u8.numpy(), u8, u8[None], as_float[None]):
        assert torch.equal(wm.encode_first_frame(form), ref), type(form)


def test_cfg_scale_one_is_the_conditional_sampler(wm):
    calls = []
    hook = wm.dit.register_forward_hook(lambda *_: calls.append(1))
    try:
        video = wm.generate(PROMPTS[0], frame(0), seed=1, cfg_scale=1.0, steps=3, method="euler")
        assert len(calls) == 3  # one forward per Euler step: no wasted unconditional branch
        calls.clear()
        guided = wm.generate(PROMPTS[0], frame(0), seed=1, cfg_scale=4.0, steps=3, method="euler")
        assert len(calls) == 6
    finally:
        hook.remove()
    # the plain sampler from the same pieces
    context = wm.encode_prompt(PROMPTS[0], 1)
    v = wm.velocity_fn(context=context, image_latent=wm.encode_first_frame(frame(0)))
    x0 = torch.randn(1, *wm.latent_shape(), generator=gen(1))
    with torch.no_grad():
        x1 = integrate(v, x0, method="euler", time_grid=time_grid(3, dtype=torch.float64))
    assert torch.equal(video.latents, x1)
    assert (guided.latents - video.latents).abs().max() > 1e-3


def test_negative_prompt_replaces_the_null_branch(wm):
    null = wm.generate(PROMPTS[0], frame(0), seed=1, cfg_scale=3.0)
    neg = wm.generate(PROMPTS[0], frame(0), seed=1, cfg_scale=3.0, negative_prompt=PROMPTS[1])
    assert (null.latents - neg.latents).abs().max() > 1e-3
    with pytest.raises(ValueError, match="cfg_scale is 1"):
        wm.generate(PROMPTS[0], frame(0), seed=1, negative_prompt=PROMPTS[1])


def test_control_scale_zero_is_bit_identical_and_uncond_flag_acts(wm):
    adapter = ScaledAdapter(wm.dit.config)
    plain = wm.generate(PROMPTS[0], frame(0), seed=2, cfg_scale=2.0)
    off = wm.generate(PROMPTS[0], frame(0), seed=2, cfg_scale=2.0, controls=[Control(adapter, 1.0, scale=0.0)])
    assert torch.equal(plain.pixels, off.pixels) and torch.equal(plain.latents, off.latents)
    on = wm.generate(PROMPTS[0], frame(0), seed=2, cfg_scale=2.0, controls=[Control(adapter, 1.0)])
    cond_only = wm.generate(PROMPTS[0], frame(0), seed=2, cfg_scale=2.0, controls=[Control(adapter, 1.0, uncond=False)])
    assert (on.latents - plain.latents).abs().max() > 1e-3
    assert (cond_only.latents - on.latents).abs().max() > 1e-3
    with pytest.raises(TypeError, match="controls must be a sequence"):
        wm.generate(PROMPTS[0], frame(0), controls=Control(adapter, 1.0))


def test_gradient_guidance_with_a_pixel_cost_moves_brightness(wm):
    def brightness(pixels):  # [B, 3, T, H, W] -> [B]
        return pixels.mean(dim=(1, 2, 3, 4))

    def darkness(pixels):
        return -brightness(pixels)

    kw = {"seed": 5, "steps": 4}
    base = wm.generate(PROMPTS[0], frame(0), **kw).pixels.mean()
    darker = wm.generate(
        PROMPTS[0], frame(0), guidance=[GradientGuidance(wm.pixel_cost(brightness), 20.0, normalize=True)], **kw
    ).pixels.mean()
    brighter = wm.generate(
        PROMPTS[0], frame(0), guidance=[GradientGuidance(wm.pixel_cost(darkness), 20.0, normalize=True)], **kw
    ).pixels.mean()
    assert darker < base - 0.02 and brighter > base + 0.02, (darker, base, brighter)
    with pytest.raises(TypeError, match="guidance must be a sequence"):
        wm.generate(PROMPTS[0], frame(0), guidance=GradientGuidance(wm.pixel_cost(brightness), 1.0))


def test_token_layout_keeps_the_given_first_latent_under_cfg_controls_and_guidance():
    """"tokens" I2V layout: latent frame 0 of every sample is the encoded first frame, bit-exactly, whatever
    else acts on the velocity (CFG, a control, gradient guidance); the later frames depend on the frame."""
    wm = make_wm(image_condition="tokens")
    given = wm.encode_first_frame(frame(0))  # (1, C, H', W')

    def darkness(pixels):
        return pixels.mean(dim=(1, 2, 3, 4))

    adapter = ScaledAdapter(wm.dit.config)
    kw = {"seed": 3, "steps": 3, "batch_size": 2}
    for extra in ({}, {"cfg_scale": 3.0}, {"controls": [Control(adapter, 1.0)]},
                  {"guidance": [GradientGuidance(wm.pixel_cost(darkness), 20.0, normalize=True)]}):  # fmt: skip
        video = wm.generate(PROMPTS[0], frame(0), **kw, **extra)
        assert torch.equal(video.latents[:, :, 0], given.expand(2, -1, -1, -1)), extra
    other = wm.generate(PROMPTS[0], frame(1), **kw)
    assert not torch.allclose(other.latents[:, :, 1:], wm.generate(PROMPTS[0], frame(0), **kw).latents[:, :, 1:])


SCALE = (0.5, 1.0, 2.0, 0.25)


@pytest.mark.parametrize("layout", ["tokens", "channels"])
def test_still_residual_model_integrates_the_dit_in_residual_coordinates(layout):
    """A still-residual model's sample is the DiT's own ODE in y = to_residual(x) coordinates, started from
    noise, mapped back to latents: checked against that ODE written out by hand (Euler, 3 steps)."""
    wm = make_wm(image_condition=layout, residual_scale=SCALE)
    r = torch.tensor(SCALE)
    still = wm.encode_still(frame(0))  # (1, C, T', H', W')
    assert still.shape == (1, *wm.latent_shape())
    # causal: frame 0 is encoded alone (equal up to the convolutions' float order on a longer input)
    torch.testing.assert_close(still[:, :, 0], wm.encode_first_frame(frame(0)), atol=1e-6, rtol=1e-5)
    context = wm.text_encoder([PROMPTS[0]])
    image = still[:, :, 0]
    y = torch.randn((1, *wm.latent_shape()), generator=gen(3))  # generate's noise for seed 3
    if layout == "tokens":
        y[:, :, 0] = image
    grid = time_grid(3, dtype=torch.float64)
    with torch.no_grad():
        for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
            y = y + (t1 - t0).item() * wm.dit(y, torch.full((1,), t0.item()), context=context, image_latent=image)
    expected = torch.cat([y[:, :, :1], still[:, :, 1:] + y[:, :, 1:] * r.view(1, -1, 1, 1, 1)], dim=2)
    video = wm.generate(PROMPTS[0], frame(0), steps=3, method="euler", seed=3)
    torch.testing.assert_close(video.latents, expected, atol=1e-5, rtol=1e-5)


def test_still_residual_model_that_predicts_no_change_returns_the_still_video(monkeypatch):
    """If the DiT says nothing changes (it flows every residual to 0: v = -y / (1 - t)), the generated latents
    after frame 0 are exactly the still video's, whatever the noise: static content needs no learning."""
    wm = make_wm(image_condition="tokens", residual_scale=SCALE)

    def no_change(x, t, **kwargs):
        v = -x / (1 - t).view(-1, 1, 1, 1, 1)
        v[:, :, 0] = 0  # the given frame is held
        return v

    monkeypatch.setattr(wm.dit, "forward", no_change)
    still = wm.encode_still(frame(0))
    for seed in (0, 1):
        latents = wm.generate(PROMPTS[0], frame(0), steps=4, method="euler", seed=seed).latents
        torch.testing.assert_close(latents, still, atol=1e-5, rtol=0)


def test_still_residual_checks():
    wm = make_wm(image_condition="tokens", residual_scale=SCALE)
    with pytest.raises(ValueError, match="still must be given for a still-residual model"):
        wm.velocity_fn(context=None, image_latent=None)
    plain = make_wm(image_condition="tokens")
    with pytest.raises(ValueError, match="still must be given .* and only for one"):
        plain.velocity_fn(context=None, image_latent=None, still=torch.zeros(1, *plain.latent_shape()))
    parts = {"null_text": wm.null_text, "text_encoder": wm.text_encoder}
    bad = WorldModelConfig(resolution=RES, num_frames=FRAMES, text_max_length=LC, residual_scale=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"residual_scale must have one value per latent channel \(vae z_dim = 4\)"):
        WorldModel(wm.vae, wm.dit, config=bad, **parts)
    t2v = make_wm(image_to_video=False)
    with pytest.raises(ValueError, match="residual_scale needs an image-to-video dit"):
        WorldModel(t2v.vae, t2v.dit, config=wm.config, null_text=t2v.null_text, text_encoder=t2v.text_encoder)
    with pytest.raises(ConfigError, match="residual_scale"):
        WorldModelConfig(residual_scale=(1.0, 0.0, 1.0, 1.0))


def test_callback_and_solver_options(wm):
    seen = []
    wm.generate(PROMPTS[0], frame(0), seed=0, steps=3, method="euler", callback=lambda i, t, x: seen.append((i, t)))
    assert [i for i, _ in seen] == [0, 1, 2] and seen[-1][1] == pytest.approx(1.0)
    shifted = wm.generate(PROMPTS[0], frame(0), seed=0, shift=3.0)
    assert not torch.equal(shifted.latents, wm.generate(PROMPTS[0], frame(0), seed=0).latents)
    assert wm.generate(PROMPTS[0], frame(0), seed=0, num_frames=9).pixels.shape[2] == 9
    # the stochastic sampler draws its noise from the same generator: still reproducible
    sde = [wm.generate(PROMPTS[0], frame(0), seed=0, method="euler_maruyama").latents for _ in range(2)]
    assert torch.equal(sde[0], sde[1])
    assert wm.generate(PROMPTS[0], frame(0), seed=0, method="dopri5", steps=2).pixels.shape[2] == FRAMES


# --- rollout ---------------------------------------------------------------------------------------------


def test_rollout_length_continuity_and_reproducibility(wm):
    clips, T = 3, FRAMES
    long = wm.rollout(PROMPTS[0], frame(1), num_clips=clips, seed=11, cfg_scale=2.0)
    assert long.pixels.shape == (1, 3, 1 + clips * (T - 1), RES, RES)
    assert long.latents.shape == (1, 4, 1 + clips * (2 - 1), 4, 4)
    again = wm.rollout(PROMPTS[0], frame(1), num_clips=clips, seed=11, cfg_scale=2.0)
    assert torch.equal(long.pixels, again.pixels)
    # clip 0 is generate(seed); clip k + 1 is generate(first_frame = clip k's last frame, derived seed)
    seeds = _clip_seeds(11, clips)
    prev = wm.generate(PROMPTS[0], frame(1), seed=seeds[0], cfg_scale=2.0)
    assert torch.equal(long.pixels[:, :, :T], prev.pixels) and torch.equal(long.latents[:, :, :2], prev.latents)
    for k in range(1, clips):
        clip = wm.generate(PROMPTS[0], prev.pixels[:, :, -1], seed=seeds[k], cfg_scale=2.0)
        start = k * (T - 1)
        # the boundary frame is clip k - 1's last frame, which clip k was conditioned on
        assert torch.equal(long.pixels[:, :, start], prev.pixels[:, :, -1])
        assert torch.equal(long.pixels[:, :, start + 1 : start + T], clip.pixels[:, :, 1:])
        assert torch.equal(long.latents[:, :, k + 1 : k + 2], clip.latents[:, :, 1:])
        prev = clip
    other = wm.rollout(PROMPTS[0], frame(1), num_clips=2, seed=12)
    assert not torch.equal(other.pixels, long.pixels[:, :, : other.pixels.shape[2]])
    with pytest.raises(ValueError, match="num_clips"):
        wm.rollout(PROMPTS[0], frame(1), num_clips=0)


# --- checkpoints -----------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_exact(wm, tmp_path):
    path = wm.save_pretrained(tmp_path / "wm")
    assert sorted(p.name for p in path.iterdir()) == ["dit", "null_text.safetensors", "vae", "world_model.json"]
    assert not list(path.rglob("*.pt")) and not list(path.rglob("*.bin"))
    loaded = WorldModel.from_pretrained(path, text_encoder=wm.text_encoder)
    assert loaded.config == wm.config and not loaded.training
    a = wm.generate(PROMPTS[1], frame(2), seed=9, cfg_scale=2.5)
    b = loaded.generate(PROMPTS[1], frame(2), seed=9, cfg_scale=2.5)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.latents, b.latents)
    # saving again over a world model replaces it; a folder with foreign files is refused
    make_wm(seed=40).save_pretrained(path)
    replaced = WorldModel.from_pretrained(path, text_encoder=wm.text_encoder)
    assert not torch.equal(replaced.generate(PROMPTS[1], frame(2), seed=9).pixels, a.pixels)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        wm.save_pretrained(tmp_path / "other")
    # config.text_encoder == "none" and no encoder given: prompts cannot be encoded
    bare = WorldModel.from_pretrained(path)
    with pytest.raises(ValueError, match="no text encoder"):
        bare.generate(PROMPTS[0], frame(0))


def test_failed_save_leaves_the_old_model_intact(wm, tmp_path, monkeypatch):
    path = wm.save_pretrained(tmp_path / "wm")
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    reference = wm.generate(PROMPTS[0], frame(0), seed=1)

    def fail(*args, **kwargs):  # the VAE and DiT are already written when the null text fails
        raise OSError("disk full")

    monkeypatch.setattr("wmgen.pipeline.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        make_wm(seed=50).save_pretrained(path)
    monkeypatch.undo()
    after = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]  # no temporary directory left behind
    loaded = WorldModel.from_pretrained(path, text_encoder=wm.text_encoder)
    assert torch.equal(loaded.generate(PROMPTS[0], frame(0), seed=1).pixels, reference.pixels)
    # a failure on a fresh target leaves nothing at all
    monkeypatch.setattr("wmgen.pipeline.save_file", fail)
    with pytest.raises(OSError):
        wm.save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]


def test_pickles_refused_and_missing_files_named(wm, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(wm.dit.state_dict(), pickled / "model.pt")
    (pickled / "vae.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match=r"pickle.*model\.pt"):
        WorldModel.from_pretrained(pickled)
    path = wm.save_pretrained(tmp_path / "wm")
    (path / "dit" / "model.safetensors").unlink()
    (path / "null_text.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"dit/model\.safetensors.*null_text\.safetensors"):
        WorldModel.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        WorldModel.from_pretrained(tmp_path / "nothing")


# --- video files -----------------------------------------------------------------------------------------


def test_video_save_mp4_gif_png(wm, tmp_path):
    video = wm.generate(PROMPTS[:2], frame(3), seed=0, num_frames=9)
    frames = video.frames[1].numpy()  # (T, H, W, 3)
    assert len({f.tobytes() for f in frames}) == 9  # distinct frames (Pillow merges identical GIF frames)

    gif = iio.imread(video.save(tmp_path / "v.gif", index=1))
    assert gif.shape[:3] == (9, RES, RES)
    mp4 = iio.imread(video.save(tmp_path / "out" / "v.mp4", index=1))
    assert mp4.shape == (9, RES, RES, 3)
    assert np.abs(mp4.astype(float) - frames).mean() < 40  # lossy, but the same pictures
    png = iio.imread(video.save(tmp_path / "v.png", index=1))
    assert png.shape == (3 * RES, 3 * RES, 3)  # 9 frames on a 3 x 3 sheet
    assert np.array_equal(png[RES : 2 * RES, 2 * RES :], frames[5])  # lossless, row by row
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "v.gif", "v.mp4", "v.png"]  # no temp files

    with pytest.raises(ValueError, match=r"\.mp4.*\.gif.*\.png"):
        video.save(tmp_path / "v.avi")
    with pytest.raises(ValueError, match="index"):
        video.save(tmp_path / "v.gif", index=2)
    assert frame_grid(frames[:5], columns=2).shape == (3 * RES, 2 * RES, 3)


def test_mp4_without_imageio_ffmpeg_names_the_package(wm, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a)
    )
    video = wm.generate(PROMPTS[0], frame(0), seed=0)
    with pytest.raises(ImportError, match="pip install imageio-ffmpeg"):
        video.save(tmp_path / "v.mp4")
    assert not list(tmp_path.iterdir())


# --- errors ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(wm):
    for bad in (None, 3, b"bytes", ["ok", 4]):
        with pytest.raises(TypeError, match="prompt must be a string or a sequence of strings"):
            wm.generate(bad, frame(0))
    with pytest.raises(ValueError, match="first_frame must be 16x16 pixels.*got 32x32"):
        wm.generate(PROMPTS[0], torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="mode 'RGB', got mode 'L'"):
        wm.generate(PROMPTS[0], Image.new("L", (RES, RES)))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        wm.generate(PROMPTS[0], torch.full((3, RES, RES), 2.0))
    with pytest.raises(TypeError, match="uint8"):
        wm.encode_first_frame(np.zeros((RES, RES, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="image-to-video model.*pass first_frame"):
        wm.generate(PROMPTS[0])
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4 k"):
        wm.generate(PROMPTS[0], frame(0), num_frames=6)
    with pytest.raises(ValueError, match="first_frame gives 2 samples.*B = 3"):
        wm.generate(PROMPTS[:3], frame(0, batch=2))
    with pytest.raises(ValueError, match="seed or generator"):
        wm.generate(PROMPTS[0], frame(0), seed=1, generator=gen(1))
    with pytest.raises(ValueError, match="method must be one of"):
        wm.generate(PROMPTS[0], frame(0), method="rk5")
    with pytest.raises(KeyError, match="not among"):
        wm.generate("an unknown prompt", frame(0))


def test_text_to_video_model_and_component_checks():
    t2v = make_wm(image_to_video=False)
    assert t2v.generate(PROMPTS[0], seed=0).pixels.shape == (1, 3, FRAMES, RES, RES)
    with pytest.raises(ValueError, match="text-to-video model"):
        t2v.generate(PROMPTS[0], frame(0))
    with pytest.raises(ValueError, match="image-to-video"):
        t2v.rollout(PROMPTS[0], frame(0), num_clips=2)

    wm = make_wm()
    parts = {"null_text": wm.null_text, "config": wm.config, "text_encoder": wm.text_encoder}
    with pytest.raises(ValueError, match="null_text must be"):
        WorldModel(wm.vae, wm.dit, **{**parts, "null_text": NullText(LC + 1, DC)})
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4 k"):
        WorldModel(
            wm.vae, wm.dit, **{**parts, "config": WorldModelConfig(resolution=RES, num_frames=6, text_max_length=LC)}
        )
    with pytest.raises(ValueError, match="resolution must be a multiple"):
        WorldModel(
            wm.vae, wm.dit, **{**parts, "config": WorldModelConfig(resolution=12, num_frames=5, text_max_length=LC)}
        )
    with pytest.raises(ValueError, match="text_encoder .* must give"):
        WorldModel(wm.vae, wm.dit, **{**parts, "text_encoder": make_text(DC + 1)})
    with pytest.raises(ValueError, match="in_channels == out_channels == vae z_dim"):
        WorldModel(CausalVAE(VAEConfig(z_dim=8, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1,
                                       temporal_downsample=(True, True))), wm.dit, **parts)  # fmt: skip
    with pytest.raises(TypeError, match="dit must be a VideoDiT"):
        WorldModel(wm.vae, wm.vae, **parts)
    with pytest.raises(ConfigError, match="method: expected one of"):
        WorldModelConfig(method="rk5")
    with pytest.raises(ConfigError, match="text_encoder: expected one of"):
        WorldModelConfig(text_encoder="t5")
    with pytest.raises(ConfigError, match="fps"):
        WorldModelConfig(fps=0.0)


# --- the real text encoder and the CLI -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_model_dir(tmp_path_factory):
    """A tiny world model whose config names MiniLM (384-d), saved once for the two tests below."""
    from wmgen.models.text import MiniLMEncoder

    wm = make_wm(text_encoder="minilm", text=MiniLMEncoder(max_length=LC), text_dim=384)
    return wm.save_pretrained(tmp_path_factory.mktemp("minilm") / "wm")


def test_real_minilm_text_encoder(minilm_model_dir):
    wm = WorldModel.from_pretrained(minilm_model_dir)  # MiniLM rebuilt from config.text_encoder
    assert wm.text_encoder.name == "minilm" and wm.text_encoder.dim == 384
    a = wm.generate("a red ball falls", frame(0), seed=0)
    b = wm.generate("the stock market closed higher", frame(0), seed=0)
    assert a.pixels.shape == (1, 3, FRAMES, RES, RES)
    assert (a.latents - b.latents).abs().max() > 1e-4  # the text reaches the model


def test_cli_generate_writes_a_gif(minilm_model_dir, tmp_path):
    runner = CliRunner()
    image = tmp_path / "start.png"
    Image.fromarray(((frame(0).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()).save(image)
    out = tmp_path / "out" / "ball.gif"
    args = ["generate", str(minilm_model_dir), "--prompt", "a red ball falls", "--first-frame", str(image)]
    result = runner.invoke(app, [*args, "--steps", "2", "--seed", "3", "--num-clips", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert iio.imread(out).shape[:3] == (1 + 2 * (FRAMES - 1), RES, RES)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["seed"] == 3 and record["steps"] == 2 and record["num_clips"] == 2

    missing = runner.invoke(app, ["generate", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gif")])
    assert missing.exit_code == 2 and "not a directory" in missing.output
    (tmp_path / "bad.png").write_text("not an image")
    bad = runner.invoke(app, [*args[:4], "--first-frame", str(tmp_path / "bad.png"), "--out", str(tmp_path / "x.gif")])
    assert bad.exit_code == 2 and "not an image" in bad.output
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    small = runner.invoke(
        app, [*args[:4], "--first-frame", str(tmp_path / "small.png"), "--out", str(tmp_path / "x.gif")]
    )
    assert small.exit_code == 2 and "16x16" in small.output
    suffix = runner.invoke(app, [*args, "--out", str(tmp_path / "x.avi")])
    assert suffix.exit_code == 2 and ".gif" in suffix.output
    assert not (tmp_path / "x.gif").exists()
