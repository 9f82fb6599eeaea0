"""Shared layers: timestep embedding and RoPE against diffusers' Wan, RoPE's relative-position property,
fp32 norms, attention backends (agreement, selection, errors, forward-mode AD), activation checkpointing."""

import importlib.util

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from wmgen.models.layers import (
    ATTENTION_BACKENDS,
    FP32LayerNorm,
    RMSNorm,
    apply_rope,
    attention,
    get_attention_backend,
    layer_norm_fp32,
    maybe_checkpoint,
    modulate,
    rope_axis_dims,
    rope_frequencies,
    set_attention_backend,
    timestep_embedding,
    use_attention_backend,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- timestep embedding -----------------------------------------------------------------------------------


def test_timestep_embedding_matches_diffusers_wan_layout():
    t = torch.tensor([0.0, 1.5, 250.0, 999.0])
    ours = timestep_embedding(t, 256)
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert ours.shape == (4, 256) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert timestep_embedding(torch.zeros(2, 3), 8).shape == (2, 3, 8)  # any leading shape (per-token t)
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


# --- RoPE -------------------------------------------------------------------------------------------------


def test_rope_axis_split_is_wans():
    assert rope_axis_dims(128) == (44, 42, 42)
    assert rope_axis_dims(64) == (24, 20, 20)
    assert rope_axis_dims(12) == (4, 4, 4)
    for bad in (4, 7, 65):
        with pytest.raises(ValueError, match="head_dim"):
            rope_axis_dims(bad)


def test_rope_table_and_rotation_match_diffusers_wan():
    grid, head_dim = (3, 4, 5), 12
    freqs = rope_frequencies(grid, head_dim)
    assert freqs.shape == (60, 6) and freqs.dtype == torch.complex64
    cos, sin = WanRotaryPosEmbed(head_dim, (1, 2, 2), 64)(torch.zeros(1, 1, 3, 8, 10))  # [1, L, 1, Dh] each
    torch.testing.assert_close(freqs.real.repeat_interleave(2, dim=-1), cos[0, :, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(freqs.imag.repeat_interleave(2, dim=-1), sin[0, :, 0], rtol=0, atol=1e-6)
    # The rotation itself: pairs (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), as diffusers applies it.
    x = torch.randn(2, 60, 3, head_dim, generator=gen())
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[0, :, :, 0::2], sin[0, :, :, 0::2]
    expected = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)
    torch.testing.assert_close(apply_rope(x, freqs), expected, rtol=0, atol=1e-5)


def test_rope_real_arithmetic_path_used_under_torch_compile_matches(monkeypatch):
    """Under torch.compile apply_rope rotates in real arithmetic (inductor has no complex kernels); the
    branch is selected here by patching torch.compiler.is_compiling (compiling itself takes a minute)."""
    grid, head_dim = (3, 4, 5), 12
    freqs = rope_frequencies(grid, head_dim)
    x = torch.randn(2, 60, 3, head_dim, generator=gen(3))
    complex_path = apply_rope(x, freqs)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    real_path = apply_rope(x, freqs)
    torch.testing.assert_close(real_path, complex_path, rtol=0, atol=1e-6)
    assert not torch.equal(real_path, x)


def test_rope_scores_depend_only_on_relative_position():
    """q.k after rotation at grid positions p, r equals the one at p + s, r + s, for shifts on all axes."""
    grid, head_dim = (4, 5, 6), 24
    T, H, W = grid
    freqs = rope_frequencies(grid, head_dim)
    q, k = torch.randn(2, head_dim, generator=gen(1), dtype=torch.float32)

    def index(p):
        return (p[0] * H + p[1]) * W + p[2]  # (t h w) token order

    def score(p, r):
        qs = q.expand(1, T * H * W, 1, head_dim)
        ks = k.expand(1, T * H * W, 1, head_dim)
        return (apply_rope(qs, freqs)[0, index(p), 0] * apply_rope(ks, freqs)[0, index(r), 0]).sum()

    p, r = (0, 1, 2), (2, 0, 3)
    for shift in [(1, 0, 0), (0, 3, 0), (0, 0, 2), (1, 2, 1)]:
        ps = tuple(a + b for a, b in zip(p, shift, strict=True))
        rs = tuple(a + b for a, b in zip(r, shift, strict=True))
        torch.testing.assert_close(score(p, r), score(ps, rs), rtol=1e-5, atol=1e-5)
    # ... and does change with the offset along each axis (q.k is not just constant)
    for other in [(1, 0, 3), (2, 1, 3), (2, 0, 4)]:
        assert (score(p, r) - score(p, other)).abs() > 1e-3
    # Rotations preserve norms.
    x = torch.randn(2, T * H * W, 3, head_dim, generator=gen(2))
    torch.testing.assert_close(apply_rope(x, freqs).norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="freqs"):
        apply_rope(x[:, :10], freqs)


# --- norms ------------------------------------------------------------------------------------------------


def test_norms_compute_in_fp32_and_match_torch():
    x = torch.randn(3, 5, 16, generator=gen())
    rms = RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(rms.weight, generator=gen(1))
    ref = torch.nn.RMSNorm(16, eps=1e-6)
    ref.weight.data.copy_(rms.weight.data)
    torch.testing.assert_close(rms(x), ref(x))
    ln = FP32LayerNorm(16, eps=1e-6)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (16,), ln.weight, ln.bias, 1e-6))
    xb = x.bfloat16()  # half-precision input: statistics and output in fp32
    assert rms(xb).dtype == ln(xb).dtype == layer_norm_fp32(xb).dtype == torch.float32
    torch.testing.assert_close(rms(xb), ref(xb.float()))
    assert rms(x.double()).dtype == torch.float64  # fp64 is not downcast
    shift, scale = torch.randn(2, 3, 1, 16, generator=gen(2))
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)


# --- attention --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lk", [7, 20])
def test_attention_backends_agree(lk):
    q = torch.randn(2, 20, 3, 8, generator=gen(1))
    k, v = torch.randn(2, 2, lk, 3, 8, generator=gen(2))
    ref = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5, -1)
    ref = torch.einsum("bhlm,bmhd->blhd", ref, v)
    for name in ("sdpa", "math"):
        out = attention(q, k, v, backend=name)
        assert out.shape == (2, 20, 3, 8)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_backend_selection_and_errors():
    assert set(ATTENTION_BACKENDS) == {"sdpa", "math", "xformers"}
    assert get_attention_backend() == "sdpa"
    with use_attention_backend("math"):
        assert get_attention_backend() == "math"
    assert get_attention_backend() == "sdpa"
    previous = set_attention_backend("math")
    try:
        assert previous == "sdpa" and get_attention_backend() == "math"
    finally:
        set_attention_backend(previous)
    q = torch.randn(1, 4, 2, 8)
    valid = r"\['math', 'sdpa', 'xformers'\]"
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'; valid backends: " + valid):
        attention(q, q, q, backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend("nope")
    assert get_attention_backend() == "sdpa"  # a failed set changes nothing
    with pytest.raises(ValueError, match=r"q, k, v must be"):
        attention(q, q[..., :4], q[..., :4])


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed")
def test_xformers_backend_without_the_package_names_the_install():
    with pytest.raises(ValueError, match="pip install"):
        set_attention_backend("xformers")


@pytest.mark.skipif(importlib.util.find_spec("xformers") is None, reason="xformers is not installed")
def test_xformers_backend_rejects_cpu_tensors():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="no kernels for cpu"):
        attention(q, q, q, backend="xformers")


@pytest.mark.skipif(
    importlib.util.find_spec("xformers") is None or not torch.cuda.is_available(),
    reason="needs xformers and a CUDA device",
)
def test_xformers_agrees_with_sdpa_on_cuda():
    q, k, v = torch.randn(3, 2, 64, 4, 32, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(
        attention(q, k, v, backend="xformers"), attention(q, k, v, backend="sdpa"), rtol=2e-3, atol=2e-3
    )


def test_math_backend_supports_forward_mode_ad():
    q, k, v = torch.randn(3, 1, 6, 2, 4, generator=gen(), dtype=torch.float64)
    dq = torch.randn(q.shape, generator=gen(1), dtype=torch.float64)

    def f(q):
        return attention(q, k, v, backend="math")

    out, tangent = torch.func.jvp(f, (q,), (dq,))
    eps = 1e-6
    fd = (f(q + eps * dq) - f(q - eps * dq)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)


# --- checkpointing ----------------------------------------------------------------------------------------


def test_maybe_checkpoint_recomputes_and_keeps_gradients():
    calls = []
    lin = torch.nn.Linear(4, 4)

    def f(x, scale):
        calls.append(1)
        return torch.tanh(lin(x)) * scale

    x = torch.randn(3, 4, generator=gen(), requires_grad=True)
    grads = []
    for enabled in (False, True):
        calls.clear()
        out = maybe_checkpoint(f, x, 2.0, enabled=enabled)
        out.sum().backward()
        grads.append((x.grad.clone(), lin.weight.grad.clone()))
        x.grad = lin.weight.grad = lin.bias.grad = None
        assert len(calls) == (2 if enabled else 1)  # recomputed in the backward pass only when enabled
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        calls.clear()
        maybe_checkpoint(f, x, 2.0, enabled=True)
        assert len(calls) == 1
