"""controls.controlnet: ControlNet copies and zero projections (identity at init for every adapter kind, hints
on the declared blocks only, gradient flow into a frozen backbone's adapter, checkpointing), the map encoder's
causal grouping, the map preprocessing (depth, Canny edges, one-hot masks, world batches), input checks and
save / load round trips."""

import json

import pytest
import torch
from torch import Tensor

from controls.base import Control, ControlAdapter, compose_hints
from controls.controlnet import (
    MAP_ADAPTERS,
    ControlNetAdapter,
    DepthAdapter,
    MapAdapter,
    MapControl,
    MapEncoder,
    MaskAdapter,
    depth_to_map,
    edges_from_video,
    mask_to_map,
)
from wmgen.models.dit import DiTConfig, VideoDiT

CFG = DiTConfig(in_channels=4, out_channels=4, dim=32, num_layers=4, num_heads=2, ffn_dim=64, text_dim=16, freq_dim=32)
B, LATENT = 2, (4, 2, 4, 4)  # latents [B, C, T', H', W'] -> token grid (2, 2, 2), L = 8
PIXELS = (5, 16, 16)  # maps [B, C, T, H, W] for VAE factors f = 4, s = 4 (tests use s = 4 to stay small)
FACTORS = {"spatial_factor": 4, "temporal_factor": 4, "hidden_channels": 8}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def backbone(seed: int = 0) -> VideoDiT:
    """A frozen backbone with a non-zero head, so that its output depends on every block."""
    model = VideoDiT(CFG, generator=gen(seed))
    torch.nn.init.normal_(model.head.weight, std=0.2, generator=gen(seed + 100))
    torch.nn.init.normal_(model.head.bias, std=0.2, generator=gen(seed + 101))
    return model.requires_grad_(False)


def inputs(seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    g = gen(seed)
    x, t = torch.randn(B, *LATENT, generator=g), torch.rand(B, generator=g)
    return x, t, torch.randn(B, 3, CFG.text_dim, generator=g)


def trained(adapter: ControlNetAdapter, seed: int = 5) -> ControlNetAdapter:
    """Give the zero-initialised projections weights, as training would, so hints are non-zero."""
    for m in (adapter.control_embed, *adapter.zero_proj):
        torch.nn.init.normal_(m.weight, std=0.3, generator=gen(seed))
        seed += 1
    return adapter


def make_adapter(kind: str, model: VideoDiT, **kw) -> ControlNetAdapter:
    if kind == "features":
        return ControlNetAdapter(model, control_channels=3, **kw)
    extra = {"in_channels": 2} if kind == "map" else {}
    return MAP_ADAPTERS[kind](model, generator=gen(7), **FACTORS, **extra, **kw)


def make_control(adapter: ControlNetAdapter, seed: int = 2):
    g = gen(seed)
    if not isinstance(adapter, MapAdapter):
        return torch.randn(B, adapter.control_channels, *LATENT[1:], generator=g)
    return MapControl(adapter.kind, torch.rand(B, adapter.in_channels, *PIXELS, generator=g))


KINDS = ["features", *MAP_ADAPTERS]


# --- ControlNet structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_adapter_leaves_the_backbone_output_bit_identical(kind):
    model = backbone()
    adapter = make_adapter(kind, model, num_blocks=3)
    x, t, context = inputs()
    emb = model.embed(x, t, context=context)
    control = make_control(adapter)
    hints = adapter.hints(emb, control)
    assert sorted(hints) == [0, 1, 2] and all(h.shape == (B, 8, CFG.dim) for h in hints.values())
    assert torch.equal(model(x, t, context=context, hints=hints), model(x, t, context=context))
    composed = compose_hints([Control(adapter, control, scale=2.0)], emb, t)
    assert torch.equal(model(x, t, context=context, hints=composed), model(x, t, context=context))
    trained(adapter)  # the same adapter with trained projections does change the output
    assert not torch.allclose(model(x, t, context=context, hints=adapter.hints(emb, control)), model(x, t))


def test_hints_land_on_the_declared_blocks_and_change_only_later_blocks():
    model = backbone()
    adapter = trained(ControlNetAdapter(model, control_channels=3, num_blocks=2, target_blocks=[1, 3]))
    x, t, context = inputs()
    control = make_control(adapter)
    hints = adapter.hints(model.embed(x, t, context=context), control)
    assert list(hints) == [1, 3] and adapter.blocks == (1, 3)

    outputs: dict[int, Tensor] = {}
    handles = [
        blk.register_forward_hook(lambda mod, args, out, i=i: outputs.__setitem__(i, out.clone()))
        for i, blk in enumerate(model.blocks)
    ]
    model(x, t, context=context)
    plain = dict(outputs)
    model(x, t, context=context, hints=hints)
    for h in handles:
        h.remove()
    # a hook sees the block's own output, before the hint is added: block 1's hint first shows in block 2
    assert torch.equal(outputs[0], plain[0]) and torch.equal(outputs[1], plain[1])
    assert not torch.allclose(outputs[2], plain[2]) and not torch.allclose(outputs[3], plain[3])


def test_copies_start_equal_to_the_backbone_blocks_but_are_separate_tensors():
    model = backbone()
    adapter = ControlNetAdapter(model, control_channels=3, num_blocks=2, target_blocks=[0, 2])
    for copy, original in zip(adapter.copies, model.blocks[:2], strict=True):
        for (name, p), q in zip(copy.named_parameters(), original.parameters(), strict=True):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
            assert p.requires_grad and not q.requires_grad  # trainable copy of a frozen backbone
    with torch.no_grad():
        model.blocks[0].ffn[0].weight.add_(1.0)
    assert not torch.equal(adapter.copies[0].ffn[0].weight, model.blocks[0].ffn[0].weight)
    assert not any(n.startswith("backbone") for n, _ in adapter.named_parameters())  # backbone not a submodule
    for m in (adapter.control_embed, *adapter.zero_proj):
        assert not m.weight.any() and not m.bias.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_blocks": 0}, "num_blocks"), ({"num_blocks": 5}, r"num_blocks must be an int in \[1, 4\]"),
     ({"num_blocks": 2, "target_blocks": [0]}, "one backbone block per copied block"),
     ({"num_blocks": 2, "target_blocks": [0, 4]}, r"index 4 .*range\(0, 4\)"),
     ({"num_blocks": 2, "target_blocks": [2, 2]}, "unique"), ({"control_channels": 0}, "control_channels")],
)  # fmt: skip
def test_bad_constructor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlNetAdapter(backbone(), **{"control_channels": 3, **kwargs})
    with pytest.raises(TypeError, match="VideoDiT"):
        ControlNetAdapter(CFG, control_channels=3)


def test_gradient_reaches_the_adapter_through_a_frozen_backbone():
    model = backbone()
    adapter = DepthAdapter(model, generator=gen(7), **FACTORS)
    x, t, context = inputs()
    control = make_control(adapter)

    def loss() -> Tensor:
        emb = model.embed(x, t, context=context)
        return model(x, t, context=context, hints=adapter.hints(emb, control)).square().mean()

    loss().backward()
    # ControlNet at init: only the zero output projections get gradient (their input is non-zero) ...
    for proj in adapter.zero_proj:
        assert proj.weight.grad.abs().sum() > 0
    assert adapter.control_embed.weight.grad.abs().sum() == 0
    assert all(p.grad is None for p in model.parameters())
    # ... and once they are non-zero, gradient flows back through the copies into the encoder
    adapter.zero_grad(set_to_none=True)
    trained(adapter)
    loss().backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_hints_and_gradients():
    model = backbone()
    adapter = trained(ControlNetAdapter(model, control_channels=3, num_blocks=2))
    x, t, context = inputs()
    control = make_control(adapter)
    results = []
    for flag in (False, True):
        adapter.gradient_checkpointing = flag
        adapter.zero_grad(set_to_none=True)
        hints = adapter.hints(model.embed(x, t, context=context), control)
        sum(h.square().sum() for h in hints.values()).backward()
        results.append((hints, [p.grad.clone() for p in adapter.parameters()]))
    (h0, g0), (h1, g1) = results
    assert all(torch.equal(h0[k], h1[k]) for k in h0)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b)


# --- the map encoder and map adapters ---------------------------------------------------------------------


def test_map_encoder_groups_frames_causally():
    enc = MapEncoder(1, 3, spatial_factor=4, temporal_factor=4, hidden_channels=8, generator=gen(0))
    maps = torch.rand(1, 1, 9, 8, 8, generator=gen(1))
    out = enc(maps)
    assert out.shape == (1, 3, 3, 2, 2)  # T = 1 + 4 * 2 -> T' = 3, 8 / 4 = 2
    later = maps.clone()
    later[:, :, 5:] += 1.0  # pixel frames 5-8 form latent frame 2
    changed = (enc(later) - out).abs().amax(dim=(0, 1, 3, 4))
    assert changed[:2].eq(0).all() and changed[2] > 0  # earlier latent frames do not see later pixels
    first = maps.clone()
    first[:, :, 0] += 1.0
    assert (enc(first) - out)[:, :, 0].abs().max() > 0  # frame 0 alone makes latent frame 0


def test_map_adapters_check_their_controls():
    model = backbone()
    depth = DepthAdapter(model, generator=gen(7), **FACTORS)
    emb = model.embed(*inputs()[:2])
    maps = torch.rand(B, 1, *PIXELS)
    with pytest.raises(ValueError, match="kind 'depth', got 'edges'"):
        depth.hints(emb, MapControl("edges", maps))
    with pytest.raises(TypeError, match="needs a MapControl"):
        depth.hints(emb, maps)
    with pytest.raises(ValueError, match=r"C = 1 channels"):
        depth.hints(emb, MapControl("depth", torch.rand(B, 2, *PIXELS)))
    with pytest.raises(ValueError, match=r"T = 1 \+ 4 k"):
        depth.hints(emb, MapControl("depth", torch.rand(B, 1, 4, 16, 16)))
    with pytest.raises(ValueError, match=r"multiples of the VAE's spatial factor 4"):
        depth.hints(emb, MapControl("depth", torch.rand(B, 1, 5, 18, 16)))
    # valid maps of the wrong size for these latents: the message names both shapes
    with pytest.raises(ValueError, match=r"\[2, 1, 5, 16, 16\].*\[2, 1, 9, 16, 16\]"):
        depth.hints(emb, MapControl("depth", torch.rand(B, 1, 9, 16, 16)))
    with pytest.raises(ValueError, match=r"C = 3 channels, got \(2, 2, 5, 16, 16\)"):
        MapAdapter(model, in_channels=3, **FACTORS).hints(emb, MapControl("map", torch.rand(B, 2, *PIXELS)))
    with pytest.raises(ValueError, match="features must match the latents"):
        ControlNetAdapter(model, control_channels=3).hints(emb, torch.rand(B, 3, 2, 4, 6))
    with pytest.raises(TypeError, match="float tensor"):
        ControlNetAdapter(model, control_channels=3).hints(emb, torch.ones(B, 3, 2, 4, 4, dtype=torch.long))


def test_map_control_validation():
    with pytest.raises(ValueError, match="NaN"):
        MapControl("depth", torch.full((1, 1, 5, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        MapControl("depth", torch.rand(1, 5, 16, 16))
    with pytest.raises(TypeError, match="float tensor"):
        MapControl("mask", torch.zeros(1, 1, 5, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="kind must be one of"):
        MapControl("normals", torch.rand(1, 1, 5, 16, 16))


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_is_bit_exact(kind, tmp_path):
    model = backbone()
    adapter = trained(make_adapter(kind, model, num_blocks=2, target_blocks=[3, 1]))
    path = adapter.save_pretrained(tmp_path / kind)
    meta = json.loads((path / "config.json").read_text())
    assert meta["_class_name"] == type(adapter).__name__ and meta["args"]["target_blocks"] == [3, 1]
    for loaded in (type(adapter).from_pretrained(path), ControlAdapter.from_pretrained(path)):
        assert type(loaded) is type(adapter) and loaded.kind == adapter.kind
        assert loaded.constructor_args() == adapter.constructor_args()
        for (name, p), q in zip(adapter.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
        assert all(p.requires_grad and not p.is_meta for p in loaded.parameters())
        emb = model.embed(*inputs()[:2])
        control = make_control(adapter)
        a, b = adapter.hints(emb, control), loaded.hints(emb, control)
        assert list(a) == list(b) == [3, 1] and all(torch.equal(a[k], b[k]) for k in a)


def test_mask_adapter_saves_its_object_count(tmp_path):
    adapter = MaskAdapter(backbone(), num_objects=2, **FACTORS)
    assert adapter.in_channels == 3
    loaded = MaskAdapter.from_pretrained(adapter.save_pretrained(tmp_path / "mask"))
    assert loaded.num_objects == 2 and loaded.in_channels == 3 and loaded.encoder.pointwise.in_channels == 3 * 64


# --- map preprocessing ------------------------------------------------------------------------------------


def test_depth_to_map_is_normalised_disparity_with_sky_at_zero():
    depth = torch.tensor([[2.0, 4.0], [0.0, 8.0]]).view(1, 1, 2, 2).expand(2, 3, 2, 2).clone()
    depth[1] *= 10  # scale-free: the same scene at ten times the distance gives the same map
    out = depth_to_map(depth)
    assert out.shape == (2, 1, 3, 2, 2)
    expected = torch.tensor([[1.0, 0.5], [0.0, 0.25]])
    torch.testing.assert_close(out[0, 0, 0], expected)
    torch.testing.assert_close(out[1], out[0])
    assert torch.equal(depth_to_map(torch.zeros(1, 1, 2, 2)), torch.zeros(1, 1, 1, 2, 2))  # all sky
    with pytest.raises(ValueError, match=">= 0"):
        depth_to_map(-depth)
    with pytest.raises(ValueError, match=r"\[B, T, H, W\]"):
        depth_to_map(depth[0])


def test_edges_from_video_finds_the_edges_of_a_drawn_square():
    video = torch.full((1, 3, 1, 32, 32), -1.0)
    video[..., 10:22, 10:22] = 1.0  # a white square on black, pixels 10..21
    edges = edges_from_video(video)[0, 0, 0]
    assert edges.shape == (32, 32) and set(edges.unique().tolist()) <= {0.0, 1.0}
    rows, cols = torch.nonzero(edges, as_tuple=True)
    # every edge pixel lies within one pixel of the square's border ...
    near = lambda v: ((v - 9.5).abs() <= 1) | ((v - 21.5).abs() <= 1)  # noqa: E731
    inside = lambda v: (v >= 9) & (v <= 22)  # noqa: E731
    assert (inside(rows) & inside(cols) & (near(rows) | near(cols))).all()
    # ... each side has edges along most of its length, and the interior and far background have none
    for side in (edges[9:11, 12:20], edges[21:23, 12:20], edges[12:20, 9:11], edges[12:20, 21:23]):
        assert side.amax(dim=0 if side.shape[0] == 2 else 1).sum() >= 6
    assert edges[13:19, 13:19].sum() == 0 and edges[:6].sum() == 0
    assert edges_from_video(torch.zeros(1, 3, 1, 32, 32)).sum() == 0  # a flat frame has no edges
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        edges_from_video(video[:, :1])


def test_mask_to_map_is_one_hot_with_background_first():
    mask = torch.tensor([[-1, 0], [1, 3]]).view(1, 1, 2, 2)
    out = mask_to_map(mask)
    assert out.shape == (1, 5, 1, 2, 2) and torch.equal(out.sum(1), torch.ones(1, 1, 2, 2))
    assert out[0, 0, 0, 0, 0] == 1 and out[0, 1, 0, 0, 1] == 1 and out[0, 2, 0, 1, 0] == 1 and out[0, 4, 0, 1, 1] == 1
    with pytest.raises(ValueError, match=r"\[-1, 1\].*num_objects"):
        mask_to_map(mask, num_objects=2)
    with pytest.raises(TypeError, match="integer dtype"):
        mask_to_map(mask.float())


def test_map_control_from_a_generated_world_batch(tmp_path):
    from physics.mpm import MPMConfig
    from physics.rigid import RigidConfig
    from physics.scenes import SceneConfig
    from physics.worlds import WorldConfig, WorldDataset, generate_dataset

    config = WorldConfig(
        kind="rigid", resolution=16, frames=5, num_tracks=8, rigid_particles_per_object=24, batch_size=2,
        supersample=1, scene=SceneConfig(max_objects=2), mpm=MPMConfig(grid_res=16, max_dt=4e-3),
        rigid=RigidConfig(substeps=4),
    )  # fmt: skip
    ds = WorldDataset(generate_dataset(config, tmp_path / "world", 2, seed=0, progress=False))
    batch = WorldDataset.collate([ds[0], ds[1]])
    depth, edges, mask = (MapControl.from_world(k, batch) for k in ("depth", "edges", "mask"))
    assert depth.maps.shape == edges.maps.shape == (2, 1, 5, 16, 16) and mask.maps.shape == (2, 5, 5, 16, 16)
    assert depth.maps.min() >= 0 and depth.maps.amax(dim=(1, 2, 3, 4)).eq(1).all()  # normalised per clip
    assert torch.equal(depth.maps[:, 0] == 0, batch["depth"] == 0)  # sky stays 0
    assert torch.equal(mask.maps.argmax(1) - 1, batch["mask"])
    assert set(edges.maps.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="from_world kind"):
        MapControl.from_world("map", batch)
    with pytest.raises(ValueError, match=r"batch\['depth'\]"):
        MapControl.from_world("depth", {"video": batch["video"]})
    # the maps drive their adapters on latents of the matching size
    model = backbone()
    emb = model.embed(*inputs()[:2])
    for control in (depth, edges, mask):
        adapter = MAP_ADAPTERS[control.kind](model, **FACTORS)
        assert sorted(adapter.hints(emb, control)) == [0, 1]
