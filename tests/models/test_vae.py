"""CausalVAE: shapes, causality, chunked == unchunked, the Gaussian posterior, latent normalisation,
checkpoints, input checking and gradient flow. A tiny 4x-spatial config throughout; Wan2.1's shapes on meta."""

import json

import pytest
import torch

from wmgen.config import ConfigError, from_dict
from wmgen.models.vae import VAE_PRESETS, CausalConv3d, CausalVAE, DiagonalGaussian, VAEConfig

CFG = VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True))
HW = 16  # pixels; latents 4 x 4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def video(T: int, B: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, 3, T, HW, HW, generator=gen(seed)) * 2 - 1


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    return CausalVAE(CFG, generator=gen()).eval()


# --- config ----------------------------------------------------------------------------------------------


def test_config_factors_and_checks():
    assert (CFG.spatial_factor, CFG.temporal_factor) == (4, 4)
    wan = VAE_PRESETS["wan2.1"]
    assert (wan.spatial_factor, wan.temporal_factor, wan.z_dim, wan.base_dim) == (8, 4, 16, 96)
    assert wan.dim_mult == (1, 2, 4, 4) and wan.temporal_downsample == (False, True, True)
    assert wan.latent_frames(81) == 21
    with pytest.raises(ValueError, match="temporal_downsample must have len"):
        VAEConfig(dim_mult=(1, 2), temporal_downsample=(True, True))
    with pytest.raises(ConfigError, match="z_dim"):
        VAEConfig(z_dim=0)
    assert from_dict(VAEConfig, {"dim_mult": [1, 2], "temporal_downsample": [True]}).dim_mult == (1, 2)


# --- shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 5, 9])
def test_encode_decode_shapes(vae, T):
    with torch.no_grad():
        post = vae.encode(video(T, B=2))
        assert post.mean.shape == post.logvar.shape == (2, 4, 1 + (T - 1) // 4, 4, 4)
        assert vae.decode(post.mode()).shape == (2, 3, T, HW, HW)


def test_wan_shapes_on_meta():
    with torch.device("meta"):
        wan = CausalVAE(VAE_PRESETS["wan2.1"])
        post = wan.encode(torch.empty(1, 3, 81, 480, 832))
        assert post.mean.shape == (1, 16, 21, 60, 104)
        assert wan.decode(post.mean).shape == (1, 3, 81, 480, 832)


@pytest.mark.parametrize(
    ("preset", "latent"),
    [("tiny", (16, 5, 8, 8)), ("tiny-s4", (16, 5, 16, 16)), ("small-s4", (16, 5, 16, 16)),
     ("tiny-s4-z32", (32, 5, 16, 16))],
)  # fmt: skip
def test_tiny_presets_on_meta(preset, latent):
    """The tiny recipes' 64x64 x 17-frame clips: 8x spatial (48x compression) and 4x spatial (12x)."""
    with torch.device("meta"):
        vae = CausalVAE(VAE_PRESETS[preset])
        post = vae.encode(torch.empty(2, 3, 17, 64, 64))
        assert post.mean.shape == (2, *latent)
        assert vae.decode(post.mean).shape == (2, 3, 17, 64, 64)


def test_causal_conv_pads_only_the_past():
    conv = CausalConv3d(1, 1, (3, 1, 1))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 3, 1, 1))
        conv.bias.zero_()
        x = torch.arange(1.0, 5.0).view(1, 1, 4, 1, 1)
        # out_t = x_{t-2} + 10 x_{t-1} + 100 x_t, zeros before frame 0
        assert conv(x).flatten().tolist() == [100.0, 210.0, 321.0, 432.0]


# --- causality -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame, unchanged", [(1, 1), (4, 1), (5, 2), (8, 2)])
def test_encoder_is_causal(vae, frame, unchanged):
    """Frames group as [0], [1-4], [5-8]: changing frame k leaves earlier latent frames bit-identical."""
    x = video(9)
    x2 = x.clone()
    x2[:, :, frame] = -x2[:, :, frame]
    with torch.no_grad():
        a, b = vae.encode(x), vae.encode(x2)
    assert torch.equal(a.mean[:, :, :unchanged], b.mean[:, :, :unchanged])
    assert torch.equal(a.logvar[:, :, :unchanged], b.logvar[:, :, :unchanged])
    assert not torch.equal(a.mean[:, :, unchanged], b.mean[:, :, unchanged])  # the change does arrive


def test_decoder_is_causal(vae):
    """Latent frame 0 -> pixel frame 0, latent frame j -> pixel frames 4j-3 .. 4j."""
    z = torch.randn(1, 4, 3, 4, 4, generator=gen(1))
    z2 = z.clone()
    z2[:, :, 2] += 1.0
    with torch.no_grad():
        a, b = vae.decode(z), vae.decode(z2)
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert not torch.equal(a[:, :, 5:], b[:, :, 5:])


# --- chunking --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_matches_unchunked(vae, chunk):
    x = video(13, B=2, seed=3)
    with torch.no_grad():
        full, part = vae.encode(x), vae.encode(x, chunk_frames=chunk)
    torch.testing.assert_close(part.mean, full.mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.logvar, full.logvar, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_decode_matches_unchunked(vae, chunk):
    z = torch.randn(2, 4, 4, 4, 4, generator=gen(4))
    with torch.no_grad():
        full, part = vae.decode(z), vae.decode(z, chunk_frames=chunk)
    scale = full.abs().max()
    torch.testing.assert_close(part / scale, full / scale, atol=1e-5, rtol=1e-5)


# --- posterior -------------------------------------------------------------------------------------------


def test_kl_nonnegative_and_zero_at_standard_normal(vae):
    zero = torch.zeros(2, 4, 3, 4, 4)
    assert torch.equal(DiagonalGaussian(zero, zero).kl(), torch.zeros(2))
    with torch.no_grad():
        kl = vae.encode(video(9, B=2)).kl()
    assert kl.shape == (2,) and (kl > 0).all()
    # analytic value for one element: KL(N(1, e) || N(0, 1)) = 0.5 (1 + e - 1 - 1)
    one = DiagonalGaussian(torch.ones(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1))
    torch.testing.assert_close(one.kl(), torch.tensor([0.5 * (torch.e - 1)]))


def test_sample_uses_generator_and_std():
    post = DiagonalGaussian(torch.full((2, 4, 1, 8, 8), 3.0), torch.full((2, 4, 1, 8, 8), 2 * 0.5))
    a, b = post.sample(gen(5)), post.sample(gen(5))
    assert torch.equal(a, b) and not torch.equal(a, post.sample(gen(6)))
    assert torch.equal(post.mode(), post.mean)
    eps = (a - 3.0) / torch.exp(torch.tensor(0.5))
    assert abs(eps.mean().item()) < 0.2 and abs(eps.std().item() - 1) < 0.2
    with pytest.raises(ValueError, match="same shape"):
        DiagonalGaussian(torch.zeros(1, 2), torch.zeros(1, 3))


# --- normalisation and checkpoints -----------------------------------------------------------------------


def test_normalize_round_trip_and_stats_in_checkpoint(tmp_path):
    model = CausalVAE(CFG, generator=gen(7))
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([2.0, 0.5, 1.0, 4.0])
    model.set_latent_stats(mean, std)
    z = torch.randn(2, 4, 3, 4, 4, generator=gen(8))
    n = model.normalize(z)
    torch.testing.assert_close(n[:, 1], (z[:, 1] + 1.0) / 0.5)
    torch.testing.assert_close(model.denormalize(n), z)
    loaded = CausalVAE.from_pretrained(model.save_pretrained(tmp_path / "vae"))
    assert torch.equal(loaded.latents_mean, mean) and torch.equal(loaded.latents_std, std)
    with pytest.raises(ValueError, match="std must be > 0"):
        model.set_latent_stats(mean, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"mean must be a float tensor \[C\] = \[4\], got \(3,\)"):
        model.set_latent_stats(torch.zeros(3), std)


def test_save_load_round_trip_bit_exact(tmp_path):
    model = CausalVAE(CFG, generator=gen(9)).eval()
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["_class_name"] == "CausalVAE"
    loaded = CausalVAE.from_pretrained(path).eval()
    assert loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    x = video(5)
    with torch.no_grad():
        assert torch.equal(model.encode(x).mean, loaded.encode(x).mean)
    model.save_pretrained(path)  # replacing a checkpoint folder is allowed
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        model.save_pretrained(path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        CausalVAE.from_pretrained(tmp_path / "half")


# --- input checking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 6, 16, 16), r"T = 1 \+ 4 k frames, got T = 6"),
        ((1, 3, 5, 18, 16), r"multiples of the spatial factor 4, got \(1, 3, 5, 18, 16\)"),
        ((1, 4, 5, 16, 16), r"3 channels .* got \(1, 4, 5, 16, 16\)"),
        ((3, 5, 16, 16), r"video must be a float tensor \[B, 3, T, H, W\], got \(3, 5, 16, 16\)"),
    ],
)
def test_bad_video(vae, shape, match):
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


def test_bad_latents_and_chunks(vae):
    with pytest.raises(ValueError, match=r"z must be \[B, 4, T', H', W'\] .* got \(1, 3, 2, 4, 4\)"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"z must be a float tensor .* got \(4, 2, 4, 4\)"):
        vae.normalize(torch.zeros(4, 2, 4, 4))
    with pytest.raises(ValueError, match="chunk_frames must be a positive multiple of 4 pixel frames, got 3"):
        vae.encode(video(5), chunk_frames=3)
    with pytest.raises(TypeError, match="chunk_frames must be an int"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4), chunk_frames=1.0)
    with pytest.raises(TypeError, match="config must be a VAEConfig"):
        CausalVAE({"z_dim": 4})


# --- training signal -------------------------------------------------------------------------------------


def test_a_few_steps_reduce_reconstruction_loss():
    """Gradients reach every parameter and Adam on one tiny video lowers the loss (not a quality claim)."""
    model = CausalVAE(CFG, generator=gen(10))
    x = video(5, seed=11)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss_fn() -> torch.Tensor:
        recon, post = model(x, generator=gen(12))
        return (recon - x).square().mean() + 1e-6 * post.kl().mean()

    first = loss_fn()
    first.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # only the attention's q, k, v (and the norm before them) wait for their zero-initialised output projection
    assert no_grad and all(n.split(".")[1:3] == ["mid", "1"] and "proj" not in n for n in no_grad), no_grad
    opt.step()
    for _ in range(24):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    # 0.4 -> about 0.2 measured; a constant guess scores the pixel variance, 1/3 for U(-1, 1)
    final = loss_fn().item()
    assert final < 0.7 * first.item() and final < 0.3
