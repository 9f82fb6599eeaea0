"""VideoDiT: shapes, zero-initialised output, hints, per-token time, attention backends, forward-mode AD,
gradient checkpointing, checkpoints, the 1.3B shapes on the meta device, the diffusers Wan key mapping,
image-to-video channels and input checking. Tiny 2-layer configs throughout."""

import dataclasses
import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from wmgen.config import ConfigError, from_dict
from wmgen.flow.paths import to_diffusers
from wmgen.models import io as checkpoint_io
from wmgen.models.dit import (
    DIT_PRESETS,
    DiTConfig,
    VideoDiT,
    config_from_diffusers,
    config_to_diffusers,
    from_diffusers_state_dict,
    load_wan_diffusers,
    to_diffusers_state_dict,
    unpatchify,
)
from wmgen.models.layers import use_attention_backend

CFG = DiTConfig(
    in_channels=4, out_channels=4, dim=24, num_layers=2, num_heads=2, ffn_dim=32, text_dim=16, freq_dim=32
)
B, SHAPE = 2, (4, 3, 4, 6)  # latents [B, C, T', H', W'] -> grid (3, 2, 3), L = 18
L = 18


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(config: DiTConfig = CFG, seed: int = 0, trained_head: bool = True) -> VideoDiT:
    """A seeded model; ``trained_head`` replaces the zero head so outputs depend on everything upstream."""
    model = VideoDiT(config, generator=gen(seed))
    if trained_head:
        torch.nn.init.normal_(model.head.weight, std=0.2, generator=gen(seed + 100))
        torch.nn.init.normal_(model.head.bias, std=0.2, generator=gen(seed + 101))
    return model


def inputs(seed: int = 1, dtype=torch.float32):
    g = gen(seed)
    x = torch.randn(B, *SHAPE, generator=g, dtype=dtype)
    t = torch.rand(B, generator=g, dtype=dtype)
    context = torch.randn(B, 5, CFG.text_dim, generator=g, dtype=dtype)
    return x, t, context


# --- shapes and initialisation ----------------------------------------------------------------------------


def test_shapes_dtypes_and_fresh_model_predicts_zero_velocity():
    x, t, context = inputs()
    fresh = VideoDiT(CFG, generator=gen())
    v = fresh(x, t, context=context)
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.equal(v, torch.zeros_like(v))  # zero-initialised head: the identity flow
    model = make_model()
    v = model(x, t, context=context)
    assert v.abs().min() > 0 and torch.isfinite(v).all()
    assert model(x, torch.tensor(0.3), context=context).shape == x.shape  # 0-dim t broadcasts
    assert model(x, t).shape == x.shape  # no text: cross-attention skipped
    assert not torch.allclose(model(x, t), v)
    wide = make_model(dataclasses.replace(CFG, out_channels=6))
    assert wide(x, t, context=context).shape == (B, 6, *SHAPE[1:])


def test_seeded_initialisation_is_reproducible_and_follows_wan():
    a, b, c = (VideoDiT(CFG, generator=gen(seed)) for seed in (3, 3, 4))
    states = a.state_dict().items(), b.state_dict().values(), c.state_dict().values()
    for (name, pa), pb, pc in zip(*states, strict=True):
        assert torch.equal(pa, pb), name
        if pa.abs().sum() > 0 and "norm" not in name:
            assert not torch.equal(pa, pc), name
    assert a.blocks[0].self_attn.qkv.bias.abs().sum() == 0  # Xavier weights, zero biases
    assert abs(a.time_embed[0].weight.std().item() - 0.02) < 0.004  # N(0, 0.02) embeddings
    assert abs(a.blocks[1].modulation.std().item() - CFG.dim**-0.5) < 0.05  # tables N(0, 1/D)


def test_embed_exposes_what_the_blocks_consume():
    x, t, context = inputs()
    model = make_model()
    e = model.embed(x, t, context=context)
    assert e.grid == (3, 2, 3) == model.token_grid(x.shape)
    assert e.tokens.shape == (B, L, CFG.dim) and e.t_emb.shape == (B, 1, CFG.dim)
    assert e.modulation.shape == (B, 1, 6, CFG.dim) and e.context.shape == (B, 5, CFG.dim)
    assert e.rope.shape == (L, CFG.head_dim // 2)
    assert model.embed(x, t[:, None].expand(B, L)).modulation.shape == (B, L, 6, CFG.dim)


def test_tiny_preset_runs_at_its_latent_size():
    model = VideoDiT(DIT_PRESETS["tiny"], generator=gen())
    x = torch.randn(1, 16, 5, 8, 8, generator=gen(1))  # 64x64, 17 frames through the 4x/8x VAE
    assert model.token_grid(x.shape) == (5, 4, 4)  # 80 tokens
    assert model(x, torch.rand(1, generator=gen(2)), context=torch.randn(1, 3, 384)).shape == x.shape
    assert set(DIT_PRESETS) == {"tiny", "tiny-s4", "small", "wan-1.3b"}
    # the tiny recipe's pairing with the 4x-spatial VAE: 16 x 5 x 16 x 16 latents, 1x4x4 patches, also 80 tokens
    s4 = VideoDiT(DIT_PRESETS["tiny-s4"], generator=gen())
    x4 = torch.randn(1, 16, 5, 16, 16, generator=gen(1))
    assert s4.token_grid(x4.shape) == (5, 4, 4)
    assert s4(x4, torch.rand(1, generator=gen(2)), context=torch.randn(1, 3, 384)).shape == x4.shape


# --- hints ------------------------------------------------------------------------------------------------


def _stream(model, x, t, context, hints=None):
    """What follows each block j (its output + hint): the input of block j + 1, or for the last block the
    input of the head (the modulated norm of the stream, which changes exactly when the stream does)."""
    seen = []

    def record(_module, args):
        seen.append(args[0].clone())

    hooks = [m.register_forward_pre_hook(record) for m in (*model.blocks[1:], model.head)]
    out = model(x, t, context=context, hints=hints)
    for h in hooks:
        h.remove()
    return seen, out


@pytest.mark.parametrize("k", [0, 1])
def test_hint_at_block_k_changes_only_blocks_from_k_on(k):
    x, t, context = inputs()
    model = make_model()
    base, out = _stream(model, x, t, context)
    hint = torch.randn(B, L, CFG.dim, generator=gen(5))
    hinted, out_h = _stream(model, x, t, context, hints={k: hint})
    for j in range(CFG.num_layers):
        if j < k:
            assert torch.equal(base[j], hinted[j]), f"block {j} < {k} changed"
        else:
            assert not torch.allclose(base[j], hinted[j]), f"block {j} >= {k} unchanged"
    assert not torch.allclose(out, out_h)
    # The hint is added to block k's output: with one block, stream = block output + hint exactly.
    if k == 0:
        torch.testing.assert_close(hinted[0], base[0] + hint, rtol=0, atol=0)


def test_zero_hints_change_nothing():
    x, t, context = inputs()
    model = make_model()
    zero = {i: torch.zeros(B, L, CFG.dim) for i in range(CFG.num_layers)}
    assert torch.equal(model(x, t, context=context), model(x, t, context=context, hints=zero))


# --- time, backends, AD, checkpointing --------------------------------------------------------------------


def test_per_token_time_equal_to_broadcast_time_gives_the_same_output():
    x, t, context = inputs()
    model = make_model()
    v = model(x, t, context=context)
    v_tok = model(x, t[:, None].expand(B, L), context=context)
    torch.testing.assert_close(v_tok, v, rtol=1e-5, atol=1e-6)
    t_tok = t[:, None].repeat(1, L)
    t_tok[:, :6] = 1.0  # first latent frame clean (2 x 3 tokens of frame 0), as in first-frame conditioning
    v_mixed = model(x, t_tok, context=context)
    assert not torch.allclose(v_mixed, v)


def test_attention_backends_give_the_same_model_output():
    x, t, context = inputs()
    model = make_model()
    v_sdpa = model(x, t, context=context)
    with use_attention_backend("math"):
        v_math = model(x, t, context=context)
    torch.testing.assert_close(v_math, v_sdpa, rtol=1e-5, atol=1e-5)


def test_forward_mode_jvp_through_the_model_with_the_math_backend():
    """torch.func.jvp in x and t (what MeanFlow needs) against central differences, in fp64."""
    model = make_model().double()
    x, t, context = inputs(dtype=torch.float64)
    dx = torch.randn(x.shape, generator=gen(9), dtype=torch.float64)

    def f(x, t):
        return model(x, t, context=context)

    with use_attention_backend("math"), torch.no_grad():
        v, dv = torch.func.jvp(f, (x, t), (dx, torch.ones_like(t)))
        eps = 1e-6
        fd = (f(x + eps * dx, t + eps) - f(x - eps * dx, t - eps)) / (2 * eps)
    torch.testing.assert_close(v, f(x, t))
    torch.testing.assert_close(dv, fd, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, context = inputs()
    model = make_model()
    grads = []
    for enabled in (False, True):
        model.gradient_checkpointing = enabled
        model.zero_grad()
        model(x, t, context=context).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert g.abs().sum() > 0, name  # every parameter is reached
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)


# --- checkpoints ------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_exact(tmp_path):
    config = dataclasses.replace(CFG, image_to_video=True, cross_attn_norm=False)
    model = make_model(config)
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["_class_name"] == "VideoDiT"
    loaded = VideoDiT.from_pretrained(path)
    assert loaded.config == config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(p.requires_grad and not p.is_meta for p in loaded.parameters())
    x, t, context = inputs()
    first = x[:, :, 0]
    v, v_loaded = (m(x, t, context=context, image_latent=first) for m in (model, loaded))
    assert torch.equal(v, v_loaded)
    # Saving again over an existing checkpoint replaces it.
    make_model(config, seed=7).save_pretrained(path)
    assert not torch.equal(VideoDiT.from_pretrained(path).head.weight, model.head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_failed_save_leaves_the_old_checkpoint_and_no_temporaries(tmp_path, monkeypatch):
    model = make_model()
    path = model.save_pretrained(tmp_path / "ckpt")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make_model(seed=5).save_pretrained(path)
    assert torch.equal(VideoDiT.from_pretrained(path).head.weight, model.head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_checkpoint_errors(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        make_model().save_pretrained(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoDiT.from_pretrained(tmp_path / "missing")
    path = make_model().save_pretrained(tmp_path / "ckpt")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "depth": 3}))
    with pytest.raises(ConfigError, match="unknown key depth"):
        VideoDiT.from_pretrained(path)


# --- Wan2.1-T2V-1.3B shapes and the diffusers key mapping -------------------------------------------------


def test_wan_1_3b_preset_builds_on_meta_with_diffusers_parameter_count():
    config = DIT_PRESETS["wan-1.3b"]
    assert (config.dim, config.num_layers, config.num_heads, config.ffn_dim) == (1536, 30, 12, 8960)
    assert (config.head_dim, config.text_dim, config.patch, config.freq_dim) == (128, 4096, (1, 2, 2), 256)
    with torch.device("meta"):
        ours = VideoDiT(config)
        theirs = WanTransformer3DModel(**config_to_diffusers(config))
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_theirs == 1_418_996_800
    assert n_ours == n_theirs
    assert all(p.is_meta for p in ours.parameters())
    # The mapping covers every tensor of the real-size model (shapes only, on meta).
    mapped = from_diffusers_state_dict(theirs.state_dict(), config)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def _random_diffusers(config: DiTConfig, seed: int = 0) -> WanTransformer3DModel:
    """A diffusers Wan model whose every parameter (norm gains included) is random."""
    model = WanTransformer3DModel(**config_to_diffusers(config)).eval()
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_diffusers_mapping_reproduces_wan_outputs_in_our_convention():
    """ours(x, t) == -diffusers(x, timestep = 1000 sigma), sigma = 1 - t (wmgen.flow.paths.to_diffusers)."""
    theirs = _random_diffusers(CFG)
    ours = VideoDiT(CFG)
    ours.load_state_dict(from_diffusers_state_dict(theirs.state_dict(), CFG))
    x, _, context = inputs()
    with torch.no_grad():
        for t in (torch.tensor([0.25, 0.8]), torch.rand(B, L, generator=gen(3))):  # per-sample, per-token
            sigma, _ = to_diffusers(t)
            v_theirs = theirs(x, timestep=1000 * sigma, encoder_hidden_states=context, return_dict=False)[0]
            v_ours = ours(x, t, context=context)
            _, v_converted = to_diffusers(t, v_ours)
            assert v_ours.abs().max() > 1
            torch.testing.assert_close(v_converted, v_theirs, rtol=1e-4, atol=1e-4)
    # And back: our state dict in diffusers' names loads into diffusers and gives the same numbers.
    back = to_diffusers_state_dict(ours.state_dict(), CFG)
    reference = theirs.state_dict()
    assert set(back) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(back[name], value, rtol=1e-6, atol=1e-6, msg=name)


def test_load_wan_diffusers_reads_a_saved_diffusers_folder(tmp_path):
    theirs = _random_diffusers(CFG, seed=2)
    theirs.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    ours = load_wan_diffusers(tmp_path / "transformer")
    assert ours.config == CFG
    x, t, context = inputs()
    with torch.no_grad():
        v_theirs = theirs(x, timestep=1000 * (1 - t), encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context=context), -v_theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wan_diffusers(tmp_path / "nowhere")
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing weight files"):
        load_wan_diffusers(tmp_path / "transformer")


def test_diffusers_mapping_errors_name_the_problem():
    state = _random_diffusers(CFG).state_dict()
    with pytest.raises(ValueError, match=r"missing .*blocks\.1\.attn1\.to_k\.weight"):
        from_diffusers_state_dict({k: v for k, v in state.items() if k != "blocks.1.attn1.to_k.weight"}, CFG)
    with pytest.raises(ValueError, match=r"unexpected .*add_k_proj"):
        from_diffusers_state_dict({**state, "blocks.0.attn2.add_k_proj.weight": torch.zeros(1)}, CFG)
    with pytest.raises(ValueError, match="CLIP image cross-attention"):
        config_from_diffusers({**config_to_diffusers(CFG), "image_dim": 1280})
    with pytest.raises(ValueError, match="lacks 'ffn_dim'"):
        config_from_diffusers({k: v for k, v in config_to_diffusers(CFG).items() if k != "ffn_dim"})
    with pytest.raises(ValueError, match="qk-norm"):
        config_to_diffusers(dataclasses.replace(CFG, qk_norm=False))


# --- image-to-video ---------------------------------------------------------------------------------------


def test_image_to_video_channel_layout():
    config = dataclasses.replace(CFG, image_to_video=True)
    assert config.patch_in_channels == 4 + 4 + 4  # x | mask (M = 4) | condition latent
    model = make_model(config)
    assert model.patch_embed.in_features == 12 * 4  # x 2x2 patches
    x, t, context = inputs()
    seen = []
    model.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    for k in (1, 2):
        cond = torch.randn(B, 4, k, 4, 6, generator=gen(k))
        v = model(x, t, context=context, image_latent=cond if k > 1 else cond[:, :, 0])
        assert v.shape == x.shape
        channels = unpatchify(seen[-1], (3, 2, 3), (1, 2, 2))  # (B, 12, T', H', W') at the patch embedding
        assert torch.equal(channels[:, :4], x)
        assert torch.equal(channels[:, 4:8, :k], torch.ones(B, 4, k, 4, 6))  # mask: 1 on the given frames
        assert torch.equal(channels[:, 4:8, k:], torch.zeros(B, 4, 3 - k, 4, 6))
        assert torch.equal(channels[:, 8:, :k], cond)  # the given frames, zeros after them
        assert torch.equal(channels[:, 8:, k:], torch.zeros(B, 4, 3 - k, 4, 6))
    other = model(x, t, context=context, image_latent=torch.randn(B, 4, 4, 6, generator=gen(9)))
    assert not torch.allclose(other, model(x, t, context=context, image_latent=x[:, :, 0]))
    with pytest.raises(ValueError, match="needs image_latent"):
        model(x, t, context=context)
    with pytest.raises(ValueError, match=r"image_latent must be .*1 <= K <= 3"):
        model(x, t, image_latent=torch.zeros(B, 4, 4, 4, 6))
    with pytest.raises(ValueError, match="image_to_video = False"):
        make_model()(x, t, image_latent=x[:, :, 0])


def test_image_to_video_token_layout_is_a_t2v_model_with_clean_given_frames():
    """Wan2.2-TI2V layout: no extra channels; the given frames replace x's first frames at t = 1 (clean), their
    velocity is 0, and the rest equals the same weights run as a text-to-video model on that input."""
    config = dataclasses.replace(CFG, image_to_video=True, image_condition="tokens")
    assert config.patch_in_channels == 4
    model = make_model(config)
    t2v = make_model(dataclasses.replace(CFG, image_to_video=False))
    t2v.load_state_dict(model.state_dict())
    x, t, context = inputs()
    for k in (1, 2):
        cond = torch.randn(B, 4, k, 4, 6, generator=gen(k))
        v = model(x, t, context=context, image_latent=cond if k > 1 else cond[:, :, 0])
        assert model.pinned_frames(cond if k > 1 else cond[:, :, 0]) == k
        assert torch.equal(v[:, :, :k], torch.zeros(B, 4, k, 4, 6))  # the given frames are held
        pinned = torch.cat([cond, x[:, :, k:]], dim=2)
        t_tok = t[:, None].expand(B, L).clone()
        t_tok[:, : k * 6] = 1.0  # grid (3, 2, 3): 6 tokens per latent frame, (t h w) order
        reference = t2v(pinned, t_tok, context=context)
        torch.testing.assert_close(v[:, :, k:], reference[:, :, k:], rtol=1e-5, atol=1e-6)
        # what x holds on the given frames is ignored; the given frames themselves matter
        noisy = x.clone()
        noisy[:, :, :k] += 3.0
        assert torch.equal(model(noisy, t, context=context, image_latent=cond if k > 1 else cond[:, :, 0]), v)
    other = model(x, t, context=context, image_latent=torch.randn(B, 4, 4, 6, generator=gen(9)))
    assert not torch.allclose(other[:, :, 1:], model(x, t, context=context, image_latent=x[:, :, 0])[:, :, 1:])
    assert make_model(dataclasses.replace(CFG, image_to_video=True)).pinned_frames(x[:, :, 0]) == 0
    assert model.pinned_frames(None) == 0
    with pytest.raises(ValueError, match="needs image_latent"):
        model(x, t, context=context)
    temporal = make_model(dataclasses.replace(config, patch=(2, 2, 2)))
    with pytest.raises(ValueError, match=r"multiple of the temporal patch 2 frames, got K = 1"):
        temporal(torch.randn(B, 4, 4, 4, 6), t, image_latent=x[:, :, 0])
    with pytest.raises(ConfigError, match="image_condition"):
        DiTConfig(image_condition="concat")


# --- bad inputs and configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, t, c: (x[0], t, c), r"x must be a float tensor \[B, C, T', H', W'\], got \(4, 3, 4, 6\)"),
        (lambda x, t, c: (x[:, :3], t, c), r"C = in_channels = 4 channels, got \(2, 3, 3, 4, 6\)"),
        (lambda x, t, c: (x[..., :5], t, c), r"\(3, 4, 5\) must be positive multiples of the patch \(1, 2"),
        (lambda x, t, c: (x.long(), t, c), "x must be a float tensor"),
        (lambda x, t, c: (x, t[:1], c), r"t must be \[B\] = \[2\] or per-token \[B, L\] = \[2, 18\].*\(1,\)"),
        (lambda x, t, c: (x, t[:, None].expand(B, 5), c), r"got \(2, 5\)"),
        (lambda x, t, c: (x, c, c), r"t must be"),
        (lambda x, t, c: (x, t, c[..., :8]), r"context must be \[B, Lc, Dc\] = \[2, Lc, 16\].*\(2, 5, 8\)"),
        (lambda x, t, c: (x, t, c[:1]), r"context must be .*got \(1, 5, 16\)"),
        (lambda x, t, c: (x, t, c[:, :0]), "at least one token"),
    ],
)
def test_bad_inputs_raise_with_shapes(change, match):
    model = make_model()
    x, t, context = change(*inputs())
    with pytest.raises(ValueError, match=match):
        model(x, t, context=context)


def test_bad_inputs_types_and_hints():
    model = make_model()
    x, t, context = inputs()
    with pytest.raises(TypeError, match="t must be a float tensor"):
        model(x, torch.ones(B, dtype=torch.long))
    for key in (2, -1, True, "0"):
        with pytest.raises(ValueError, match=r"block indices in \[0, 1\]"):
            model(x, t, hints={key: torch.zeros(B, L, CFG.dim)})
    with pytest.raises(ValueError, match=r"hints\[1\] must be \[B, L, D\] = \[2, 18, 24\], got \(2, 18, 8\)"):
        model(x, t, hints={1: torch.zeros(B, L, 8)})
    with pytest.raises(TypeError, match="hints must be a dict"):
        model(x, t, hints=[torch.zeros(B, L, CFG.dim)])


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="head_dim"):
        DiTConfig(dim=8, num_heads=2)  # 4 channels per head cannot carry a 3-axis RoPE
    with pytest.raises(ValueError, match="freq_dim"):
        DiTConfig(freq_dim=33)
    with pytest.raises(ConfigError, match="num_layers"):
        DiTConfig(num_layers=0)
    with pytest.raises(ConfigError, match="patch"):
        DiTConfig(patch=(1, 0, 2))
    with pytest.raises(ConfigError, match="unknown key heads"):
        from_dict(DiTConfig, {"heads": 3})
    assert from_dict(DiTConfig, {"patch": [1, 2, 2], "dim": 48, "num_heads": 4}).patch == (1, 2, 2)
    assert DiTConfig(patch=[1, 2, 2]).patch == (1, 2, 2)
    with pytest.raises(TypeError, match="DiTConfig"):
        VideoDiT({"dim": 24})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast is used on CUDA only")
def test_cuda_bf16_autocast_stays_close_to_fp32():
    model = make_model().cuda()
    x, t, context = (a.cuda() for a in inputs())
    v = model(x, t, context=context)
    model.autocast_cuda = False
    v32 = model(x, t, context=context)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, v32, rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_torch_compile_gives_the_eager_outputs_and_gradients():
    """What ``loop.compile`` runs: inductor (real-arithmetic RoPE, fused elementwise kernels) == eager."""
    model = make_model(dataclasses.replace(CFG, image_to_video=True, image_condition="tokens"))
    x, t, context = inputs()
    image = torch.randn(B, 4, 4, 6, generator=gen(5))
    compiled = torch.compile(model)
    for run in (model, compiled):
        run.zero_grad(set_to_none=True)
        out = run(x, t, context=context, image_latent=image)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        if run is model:
            eager_out, eager_grads = out.detach(), grads
    torch.testing.assert_close(out.detach(), eager_out, rtol=1e-4, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-3, atol=1e-5, msg=name)
