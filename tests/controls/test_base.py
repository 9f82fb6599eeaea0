"""controls.base: block-index checks, Control validation, compose_hints (scale 0 = no control through the
backbone, sums, t-range gating per sample and per token, the CFG branch, Cosmos-Transfer weight-map
normalisation with hand-computed numbers, pixel / latent / token maps) and adapter checkpoints."""

import dataclasses
import json

import pytest
import torch
from torch import Tensor

from controls.base import AdapterConfig, Control, ControlAdapter, compose_hints, weights_to_tokens
from controls.controlnet import ControlNetAdapter
from wmgen.models.dit import DiTConfig, DiTEmbeddings, VideoDiT

CFG = DiTConfig(in_channels=4, out_channels=4, dim=32, num_layers=4, num_heads=2, ffn_dim=64, text_dim=16, freq_dim=32)
B, LATENT = 2, (4, 2, 4, 4)  # latents [B, C, T', H', W'] -> token grid (2, 2, 2), L = 8
L, D = 8, 32


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def backbone(seed: int = 0) -> VideoDiT:
    """A frozen backbone with a non-zero head, so that its output depends on every block."""
    model = VideoDiT(CFG, generator=gen(seed))
    torch.nn.init.normal_(model.head.weight, std=0.2, generator=gen(seed + 100))
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


class ConstantAdapter(ControlAdapter):
    """Hints = the control tensor [B, L, D] on every block: makes the composed sums hand-computable."""

    kind = "map"

    def check_control(self, control):
        if not isinstance(control, Tensor) or control.shape[1:] != (L, D):
            raise ValueError(f"ConstantAdapter control must be [B, {L}, {D}], got {control!r:.40}")
        return control

    def hints(self, emb: DiTEmbeddings, control: Tensor) -> dict[int, Tensor]:
        return {b: control.expand(emb.tokens.shape[0], -1, -1) for b in self.blocks}

    def constructor_args(self):
        return {"blocks": list(self.blocks)}


def emb_for(model: VideoDiT | None = None) -> tuple[DiTEmbeddings, Tensor]:
    model = model or backbone()
    x, t, context = inputs()
    return model.embed(x, t, context=context), t


def ones(value: float = 1.0) -> Tensor:
    return torch.full((1, L, D), value)


# --- the ABC ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [[4], [-1], [0, 0], [True], [1.0], [], "01"])
def test_invalid_block_indices_are_rejected_with_the_valid_range(blocks):
    with pytest.raises(ValueError, match=r"blocks") as err:
        ConstantAdapter(CFG, blocks)
    if blocks in ([4], [-1]):
        assert f"{blocks[0]}" in str(err.value) and "range(0, 4)" in str(err.value)
    if blocks == [0, 0]:
        assert "repeated: [0]" in str(err.value)


def test_blocks_are_stored_sorted_and_the_config_checked():
    adapter = ConstantAdapter(CFG, [3, 1])
    assert adapter.blocks == (1, 3) and adapter.backbone_config is CFG
    with pytest.raises(TypeError, match="DiTConfig"):
        ConstantAdapter({"dim": 32}, [0])
    with pytest.raises(TypeError, match="abstract"):
        ControlAdapter(CFG, [0])


# --- Control ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_range", [(0.6, 0.4), (-0.1, 0.5), (0.0, 1.5), (float("nan"), 1.0), (0.5,), "01"])
def test_bad_t_range_raises(t_range):
    with pytest.raises(ValueError, match="t_range"):
        Control(ConstantAdapter(CFG, [0]), ones(), t_range=t_range)


def test_bad_scales_raise():
    adapter = ConstantAdapter(CFG, [0])
    with pytest.raises(ValueError, match="finite"):
        Control(adapter, ones(), scale=float("inf"))
    with pytest.raises(TypeError, match="scale"):
        Control(adapter, ones(), scale=True)
    with pytest.raises(TypeError, match="float tensor"):
        Control(adapter, ones(), scale=torch.ones(1, L, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        Control(adapter, ones(), scale=-torch.ones(1, L))
    with pytest.raises(ValueError, match="finite"):
        Control(adapter, ones(), scale=torch.full((1, L), float("nan")))
    with pytest.raises(ValueError, match=r"\[B\|1, T, H, W\]"):
        Control(adapter, ones(), scale=torch.ones(L))
    with pytest.raises(TypeError, match="ControlAdapter"):
        Control(object(), ones())
    with pytest.raises(TypeError, match="uncond"):
        Control(adapter, ones(), uncond=1)
    assert Control(adapter, ones(), scale=torch.tensor(0.5)).scale == 0.5  # 0-dim tensors are scalars


# --- compose_hints ----------------------------------------------------------------------------------------


def test_scale_zero_is_bit_exactly_no_control_through_the_backbone():
    model = backbone()
    adapter = trained(ControlNetAdapter(model, control_channels=3, num_blocks=2))
    x, t, context = inputs()
    emb = model.embed(x, t, context=context)
    feats = torch.randn(B, 3, *LATENT[1:], generator=gen(2))
    assert adapter.hints(emb, feats)[0].abs().max() > 0  # the control would act...
    for scale in (0.0, 0, torch.zeros(1, L), torch.zeros(B, 5, 16, 16)):
        hints = compose_hints([Control(adapter, feats, scale=scale)], emb, t)  # ...but scale 0 switches it off
        assert hints == {}
        assert torch.equal(model(x, t, context=context, hints=hints), model(x, t, context=context))
    with_control = model(x, t, context=context, hints=compose_hints([Control(adapter, feats)], emb, t))
    assert not torch.allclose(with_control, model(x, t, context=context))


def test_two_controls_sum_with_their_scales():
    model = backbone()
    a = trained(ControlNetAdapter(model, control_channels=3, num_blocks=2), seed=5)
    b = trained(ControlNetAdapter(model, control_channels=2, num_blocks=2, target_blocks=[1, 3]), seed=9)
    emb, t = emb_for(model)
    fa, fb = torch.randn(B, 3, *LATENT[1:], generator=gen(3)), torch.randn(B, 2, *LATENT[1:], generator=gen(4))
    ha, hb = a.hints(emb, fa), b.hints(emb, fb)
    out = compose_hints([Control(a, fa, scale=0.5), Control(b, fb, scale=2.0)], emb, t)
    assert sorted(out) == [0, 1, 3]
    torch.testing.assert_close(out[0], 0.5 * ha[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], 0.5 * ha[1] + 2.0 * hb[1], rtol=0, atol=0)
    torch.testing.assert_close(out[3], 2.0 * hb[3], rtol=0, atol=0)


def test_t_range_gates_each_sample_and_each_token():
    adapter = ConstantAdapter(CFG, [2])
    emb, _ = emb_for()
    t = torch.tensor([0.2, 0.8])
    out = compose_hints([Control(adapter, ones(3.0), t_range=(0.5, 1.0))], emb, t)[2]
    assert torch.equal(out[0], torch.zeros(L, D)) and torch.equal(out[1], torch.full((L, D), 3.0))
    # the bounds are inclusive
    assert torch.equal(compose_hints([Control(adapter, ones(), t_range=(0.2, 0.2))], emb, t)[2][0], ones()[0])
    # nothing active: no hints at all
    assert compose_hints([Control(adapter, ones(), t_range=(0.9, 1.0))], emb, t) == {}
    # a 0-dim t broadcasts; per-token t [B, L] gates per token
    assert compose_hints([Control(adapter, ones())], emb, torch.tensor(0.3))[2].shape == (B, L, D)
    t_tok = torch.linspace(0, 1, B * L).view(B, L)
    out = compose_hints([Control(adapter, ones(), t_range=(0.0, 0.5))], emb, t_tok)[2]
    assert torch.equal(out[..., 0], (t_tok <= 0.5).float())
    with pytest.raises(ValueError, match=r"t must be \[B\]"):
        compose_hints([Control(adapter, ones())], emb, torch.rand(3))
    with pytest.raises(TypeError, match="float tensor"):
        compose_hints([Control(adapter, ones())], emb, 0.5)


def test_uncond_branch_skips_cond_only_controls():
    both, cond_only = ConstantAdapter(CFG, [0]), ConstantAdapter(CFG, [1])
    emb, t = emb_for()
    controls = [Control(both, ones(1.0)), Control(cond_only, ones(2.0), uncond=False)]
    assert sorted(compose_hints(controls, emb, t, branch="cond")) == [0, 1]
    assert sorted(compose_hints(controls, emb, t, branch="uncond")) == [0]
    with pytest.raises(ValueError, match="branch"):
        compose_hints(controls, emb, t, branch="negative")


def test_weight_maps_are_normalised_where_they_sum_above_one():
    """Per token: maps (0.75, 0.75) sum to 1.5 -> each / 1.5 = 0.5; (0.2, 0.3) sum to 0.5 -> kept; a scalar
    control on top is not normalised and does not count towards the sum."""
    a, b, c = (ConstantAdapter(CFG, [0]) for _ in range(3))
    emb, t = emb_for()
    wa, wb = torch.zeros(1, L), torch.zeros(1, L)
    wa[0, :2], wb[0, :2] = torch.tensor([0.75, 0.2]), torch.tensor([0.75, 0.3])
    wa[0, 2], wb[0, 3] = 4.0, 1.0  # alone: 4 -> 4 / 4 = 1; exactly 1 -> kept
    controls = [Control(a, ones(1.0), scale=wa), Control(b, ones(10.0), scale=wb), Control(c, ones(100.0), scale=0.5)]
    out = compose_hints(controls, emb, t)[0][..., 0]  # (B, L)
    expected = torch.tensor([0.5 * 1 + 0.5 * 10, 0.2 + 0.3 * 10, 1.0, 10.0, 0, 0, 0, 0]) + 50.0
    torch.testing.assert_close(out, expected.expand(B, L))
    # an inactive map control does not dilute an active one
    controls[1] = Control(b, ones(10.0), scale=wb, t_range=(1.0, 1.0))
    t = torch.tensor([0.5, 1.0])
    out = compose_hints(controls, emb, t)[0][..., 0]
    torch.testing.assert_close(out[0, :2], torch.tensor([0.75, 0.2]) + 50.0)
    torch.testing.assert_close(out[1, :2], expected[:2])


def test_pixel_latent_and_token_maps_give_the_same_token_weights():
    grid, patch = (2, 2, 2), (1, 2, 2)
    # latent map [1, T'=2, H'=4, W'=4]: token (t, i, j) averages a 2x2 patch
    latent = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    tokens = weights_to_tokens(latent, grid, patch, B)
    assert tokens.shape == (B, L)
    assert tokens[0, 0] == (0 + 1 + 4 + 5) / 4 and tokens[0, 7] == (26 + 27 + 30 + 31) / 4
    # pixel map [1, T=5, 16, 16]: frame 0 alone, frames 1-4 averaged, then 8x8 spatial pooling per token
    pixel = torch.zeros(1, 5, 16, 16)
    pixel[:, 0] = 1.0
    pixel[:, 1:, :8, :8] = torch.tensor([1.0, 2.0, 3.0, 6.0]).view(4, 1, 1)  # mean 3 on token (1, 0, 0)
    tok = weights_to_tokens(pixel, grid, patch, B)
    assert torch.equal(tok[0], torch.tensor([1.0, 1, 1, 1, 3, 0, 0, 0])) and torch.equal(tok[0], tok[1])
    # per-token maps pass through; [B, ...] maps keep their samples apart
    per_token = torch.rand(B, L)
    assert torch.equal(weights_to_tokens(per_token, grid, patch, B), per_token)
    two = torch.stack([latent[0], 2 * latent[0]])
    assert torch.equal(weights_to_tokens(two, grid, patch, B)[1], 2 * tokens[0])
    # the VAE's temporal factor is derived from the frame counts and must be an integer: 1 + f (T' - 1)
    assert weights_to_tokens(torch.ones(1, 9, 16, 16), (3, 2, 2), patch, B).shape == (B, 12)  # f = 4
    with pytest.raises(ValueError, match="1 \\+ f \\* 2 pixel frames"):
        weights_to_tokens(torch.ones(1, 6, 16, 16), (3, 2, 2), patch, B)


@pytest.mark.parametrize(
    "shape, match",
    [((1, 1, 16, 16), "frames"), ((1, 5, 15, 16), "integer multiple"), ((3, 2, 4, 4), "batch size"),
     ((1, L + 1), "per-token"), ((1, 2, 4, 5), "integer multiple")],
)  # fmt: skip
def test_weight_maps_of_the_wrong_shape_raise(shape, match):
    adapter = ConstantAdapter(CFG, [0])
    emb, t = emb_for()
    with pytest.raises(ValueError, match=match):
        compose_hints([Control(adapter, ones(), scale=torch.ones(shape))], emb, t)


def test_controls_are_checked_even_when_inactive():
    adapter = ConstantAdapter(CFG, [0])
    emb, t = emb_for()
    with pytest.raises(ValueError, match="ConstantAdapter control"):
        compose_hints([Control(adapter, torch.ones(1, 3, 3), scale=0.0)], emb, t)
    with pytest.raises(TypeError, match=r"controls\[0\] must be a Control"):
        compose_hints([adapter], emb, t)
    with pytest.raises(TypeError, match="sequence of Control"):
        compose_hints(Control(adapter, ones()), emb, t)
    wide = ConstantAdapter(dataclasses.replace(CFG, dim=48), [0])
    with pytest.raises(ValueError, match="width 48"):
        compose_hints([Control(wide, ones())], emb, t)


def test_hints_outside_the_declared_blocks_are_an_error():
    class Stray(ConstantAdapter):
        def hints(self, emb, control):
            return {3: control.expand(B, -1, -1)}

    emb, t = emb_for()
    with pytest.raises(ValueError, match=r"key 3"):
        compose_hints([Control(Stray(CFG, [0]), ones())], emb, t)


# --- checkpoints ------------------------------------------------------------------------------------------


def test_save_and_load_through_the_base_class(tmp_path):
    adapter = ConstantAdapter(CFG, [2, 0])
    path = adapter.save_pretrained(tmp_path / "const")
    meta = json.loads((path / "config.json").read_text())
    assert meta["_class_name"] == "ConstantAdapter" and meta["kind"] == "map" and meta["args"] == {"blocks": [0, 2]}
    assert meta["backbone"]["dim"] == CFG.dim and meta["module"] == __name__
    loaded = ControlAdapter.from_pretrained(path)  # found among the subclasses
    assert type(loaded) is ConstantAdapter and loaded.blocks == (0, 2) and loaded.backbone_config == CFG
    with pytest.raises(ValueError, match="ConstantAdapter"):
        ControlNetAdapter.from_pretrained(path)  # not a subclass of the class asked for
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        ControlAdapter.from_pretrained(tmp_path / "missing")


def test_adapters_without_constructor_args_cannot_be_saved(tmp_path):
    class Unsaveable(ConstantAdapter):
        constructor_args = ControlAdapter.constructor_args

    with pytest.raises(NotImplementedError, match="Unsaveable"):
        Unsaveable(CFG, [0]).save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_config_json_with_unknown_keys_is_rejected(tmp_path):
    path = ConstantAdapter(CFG, [0]).save_pretrained(tmp_path / "c")
    meta = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(ValueError, match="surprise"):
        ControlAdapter.from_pretrained(path)
    assert AdapterConfig("map", CFG, {}, "m").backbone is CFG
