"""Pieces shared by the video networks: timestep embedding, fp32 norms, 3D RoPE, attention backends.

Everything here follows Wan2.1 (Wan Team 2025) so that Wan weights keep their meaning when loaded into our
modules: the sinusoid is [cos | sin] with geometric frequencies down to 1 / 10000, norms run in fp32, and the
rotary embedding rotates *adjacent* channel pairs (x0, x1), (x2, x3), ... with the head dimension split
across the time, height and width axes.

Attention takes and returns ``[B, L, H, Dh]`` (tokens before heads, as in xformers and flash-attn) and runs
on one of ``ATTENTION_BACKENDS``:

- ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention``, fused kernels on CPU and CUDA.
- ``"math"``: softmax(q k^T / sqrt(Dh)) v written out with matmuls. Slower, but every op has forward-mode
  AD, so ``torch.func.jvp`` works through it on CPU (the CPU flash SDPA kernel has no forward AD; MeanFlow
  training needs the JVP).
- ``"xformers"``: ``xformers.ops.memory_efficient_attention``; CUDA only, imported on first use.

Choose per call (``attention(..., backend="math")``), for a block of code
(``with use_attention_backend("math"): ...``) or for the process (``set_attention_backend("math")``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ATTENTION_BACKENDS",
    "FP32LayerNorm",
    "RMSNorm",
    "apply_rope",
    "attention",
    "get_attention_backend",
    "layer_norm_fp32",
    "maybe_checkpoint",
    "modulate",
    "rope_axis_dims",
    "rope_frequencies",
    "set_attention_backend",
    "timestep_embedding",
    "timestep_frequencies",
    "upcast",
    "use_attention_backend",
]


# ---------------------------------------------------------------------------------------------------------
# 1. timestep embedding


def upcast(x: Tensor) -> Tensor:
    """x in at least fp32: half types become fp32, fp32 and fp64 stay as they are."""
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t w_i) | sin(t w_i)]`` with ``w_i = max_period^(-i / (dim / 2))``.

    The layout (cosines first, frequencies from 1 down to 1 / max_period) is Wan's and diffusers'
    ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``; callers scale t to the range the network
    was trained on (Wan: 1000 sigma; wmgen's VideoDiT: 1000 t).

    Args:
        t: times of any shape [...].
        dim: number of features (even).
        max_period: longest period, in units of t.

    Returns:
        [..., dim] in fp32 (fp64 for fp64 t).
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even int >= 2, got {dim}")
    half = dim // 2
    freqs = timestep_frequencies(half, max_period=max_period, device=t.device)  # [dim / 2]
    arg = upcast(t)[..., None] * freqs  # [..., dim / 2]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)  # [..., dim]


def timestep_frequencies(half: int, *, max_period: float = 10000.0, device=None) -> Tensor:
    """The ``half`` angular frequencies of ``timestep_embedding`` in fp32, computed as diffusers does."""
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half
    return torch.exp(exponent)  # [half]


# ---------------------------------------------------------------------------------------------------------
# 2. norms (always in fp32: under bf16 autocast the residual stream statistics need the range)


def layer_norm_fp32(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6):
    """LayerNorm over the last dimension in at least fp32 (``upcast``); returns that dtype."""
    x = upcast(x)
    weight = weight.to(x.dtype) if weight is not None else None
    bias = bias.to(x.dtype) if bias is not None else None
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


class FP32LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that normalises in at least fp32 and returns that (Wan's ``WanLayerNorm``)."""

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_fp32(x, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension with a learned gain, in fp32 (Zhang & Sennrich 2019).

    Wan applies it to q and k over all heads at once ("rms_norm_across_heads") before splitting them.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., D] -> [..., D] in at least fp32."""
        x = upcast(x)
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x (1 + scale) + shift`` (Peebles & Xie 2023, DiT), one fused kernel."""
    return torch.addcmul(shift, x, 1 + scale)


# ---------------------------------------------------------------------------------------------------------
# 3. rotary position embedding over (t, h, w)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of one head given to the time, height and width axes (Wan: 128 -> 44, 42, 42).

    Height and width get ``2 (head_dim // 6)`` each, time gets the rest, so each axis rotates whole pairs.
    """
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 6 for 3D RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(
    grid: tuple[int, int, int],
    head_dim: int,
    *,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unit complex rotations ``exp(i p w)`` of every token of a (T', H', W') token grid.

    Each axis a with d_a channels (``rope_axis_dims``) has frequencies ``w_j = theta^(-2j / d_a)`` and
    position p = the token's index along a (Su et al. 2021, RoFormer; 3D split as in Wan2.1). Angles are
    formed in fp64 (as Wan and diffusers do) so positions up to thousands keep their precision.

    Args:
        grid: token counts (T', H', W') along time, height, width.
        head_dim: channels per attention head.
        theta: RoPE base.
        device: where to build the table.

    Returns:
        complex64 [L, head_dim / 2], tokens in (t h w) order (t slowest), matching ``apply_rope``.
    """
    dims = rope_axis_dims(head_dim)
    f64 = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    angles = []
    for axis, (n, d) in enumerate(zip(grid, dims, strict=True)):
        w = 1.0 / theta ** (torch.arange(0, d, 2, dtype=f64, device=device) / d)  # [d / 2]
        a = torch.outer(torch.arange(n, dtype=f64, device=device), w)  # [n, d / 2]
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, d // 2))  # [T', H', W', d / 2]
    angle = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)  # [L, head_dim / 2]
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of every head by the token's angles.

    One complex multiply: (x_{2j} + i x_{2j+1}) exp(i theta_j), in at least fp32, returned in x's dtype.

    Args:
        x: [B, L, H, Dh] queries or keys.
        freqs: complex [L, Dh / 2] from ``rope_frequencies``.
    """
    B, L, H, Dh = x.shape
    if freqs.shape != (L, Dh // 2):
        raise ValueError(f"freqs must be [L, Dh/2] = [{L}, {Dh // 2}], got {tuple(freqs.shape)}")
    if torch.compiler.is_compiling():
        # Inductor generates no code for complex ops (it would fall back to eager kernels): the same rotation
        # in real arithmetic, (a, b) -> (a cos - b sin, a sin + b cos), fuses into one elementwise kernel.
        a, b = upcast(x).reshape(B, L, H, Dh // 2, 2).unbind(-1)  # 2 x [B, L, H, Dh / 2]
        rot = torch.view_as_real(freqs)[:, None]  # (L, 1, Dh / 2, 2): cos, sin
        cos, sin = rot[..., 0], rot[..., 1]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(3).to(x.dtype)
    xc = torch.view_as_complex(upcast(x).reshape(B, L, H, Dh // 2, 2))  # [B, L, H, Dh / 2] complex
    return torch.view_as_real(xc * freqs[:, None, :]).flatten(3).to(x.dtype)  # [B, L, H, Dh]


# ---------------------------------------------------------------------------------------------------------
# 4. attention backends: (q, k, v) [B, L, H, Dh] x [B, M, H, Dh] x [B, M, H, Dh] -> [B, L, H, Dh]


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # [B, L, H, Dh]


def _math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("blhd,bmhd->bhlm", q * scale, k)  # [B, H, L, M]
    probs = upcast(scores).softmax(dim=-1).to(v.dtype)  # softmax in at least fp32
    return torch.einsum("bhlm,bmhd->blhd", probs, v)  # [B, L, H, Dh]


def _xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if q.device.type != "cuda":
        raise ValueError(
            f"attention backend 'xformers' has no kernels for {q.device.type} tensors; use 'sdpa' or 'math'"
        )
    import xformers.ops  # optional dependency, imported on first use

    return xformers.ops.memory_efficient_attention(q, k, v)  # [B, L, H, Dh]


ATTENTION_BACKENDS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "sdpa": _sdpa,
    "math": _math,
    "xformers": _xformers,
}
_default_backend = "sdpa"


def _check_backend(name: Any) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid backends: {sorted(ATTENTION_BACKENDS)}")
    if name == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ValueError(
            "attention backend 'xformers' needs the xformers package: pip install 'wmgen[xformers]'"
        )
    return name


def get_attention_backend() -> str:
    """Name of the process-wide default attention backend."""
    return _default_backend


def set_attention_backend(name: str) -> str:
    """Make ``name`` the process-wide default attention backend; returns the previous one."""
    global _default_backend
    previous, _default_backend = _default_backend, _check_backend(name)
    return previous


@contextmanager
def use_attention_backend(name: str) -> Iterator[None]:
    """Use ``name`` as the default attention backend inside a ``with`` block (not thread-local).

    Example::

        with use_attention_backend("math"):
            v, dv = torch.func.jvp(lambda x: model(x, t), (x,), (dx,))
    """
    previous = set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: Tensor, k: Tensor, v: Tensor, *, backend: str | None = None) -> Tensor:
    """Scaled dot-product attention without mask or dropout (Vaswani et al. 2017).

    Args:
        q: [B, L, H, Dh] queries.
        k: [B, M, H, Dh] keys.
        v: [B, M, H, Dh] values.
        backend: a key of ``ATTENTION_BACKENDS``; None uses ``get_attention_backend()``.

    Returns:
        [B, L, H, Dh].
    """
    same_heads = q.ndim == k.ndim == 4 and q.shape[0] == k.shape[0] and q.shape[2:] == k.shape[2:]
    if not same_heads or k.shape != v.shape:
        raise ValueError(
            "q, k, v must be [B, L, H, Dh], [B, M, H, Dh], [B, M, H, Dh], got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    name = _default_backend if backend is None else _check_backend(backend)
    return ATTENTION_BACKENDS[name](q, k, v)


# ---------------------------------------------------------------------------------------------------------
# 5. activation checkpointing


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool) -> Any:
    """``fn(*args)``, recomputed in the backward pass instead of storing activations when ``enabled``.

    Only active when gradients are being recorded; uses the non-reentrant implementation, which works with
    inputs that do not require grad and with ``torch.func`` transforms.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
