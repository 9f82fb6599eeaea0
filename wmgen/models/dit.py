"""VideoDiT: the latent video transformer, Wan2.1's architecture in wmgen's flow-matching convention.

Architecture (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models"):

    x [B, C, T', H', W'] --(patchify 1x2x2, Linear)--> tokens [B, L, D], L = T' * H'/2 * W'/2, (t h w) order
    t --sinusoid(1000 t)--> MLP --> t_emb [B, D] --SiLU, one Linear shared by all blocks--> [B, 6, D]
    text tokens [B, Lc, Dc] --Linear, GELU-tanh, Linear--> [B, Lc, D]
    N x block:  self-attention (RMS qk-norm across heads, 3D RoPE), gated by adaLN-Zero modulation
                cross-attention to the text tokens (unmodulated, LayerNorm before it)
                GELU-tanh FFN, gated by adaLN-Zero modulation
                modulation = one shared Linear(t_emb) + the block's own learned table (1, 6, D)
    head: LayerNorm modulated by t_emb + a learned table (1, 2, D), Linear to pt*ph*pw*C_out, unpatchify.

Conventions (DESIGN.md §2): t in [0, 1] with t = 0 noise and t = 1 data, and the network predicts the
velocity v = x1 - x0. Wan and diffusers use sigma = 1 - t and predict noise - data = -v; the conversion
lives only in the diffusers key mapping at the bottom of this file, which folds it into the weights (the
time-MLP's first Linear and the sign of the head), so a mapped model satisfies
``ours(x, t) == -diffusers(x, timestep=1000 (1 - t))``.

Precision: parameters fp32; on CUDA the blocks run under bf16 autocast while the residual stream, the norms,
the time embedding and the modulation stay in fp32 (as Wan does). On CPU everything is fp32 (fp64 stays fp64).

Image-to-video (``DiTConfig.image_to_video``), Wan2.1-I2V's channel layout: the patch embedding sees
``[x (C) | mask (M) | condition latent (C)]`` along channels. The condition latent holds the K given latent
frames (``image_latent``) and zeros after them; the M mask channels are 1 on those K frames and 0 elsewhere
(Wan uses M = 4, one per pixel frame folded into a latent frame by the VAE's 4x temporal stride).
Wan2.1-I2V itself also attends to CLIP image tokens and puts the VAE encoding of blank frames after the
given one; neither is part of VideoDiT, so Wan2.1-I2V checkpoints do not load (``config_from_diffusers``
says so).

``DiTConfig.image_condition = "tokens"`` is the other layout, Wan2.2-TI2V's: no extra channels; the K given
latent frames replace the first K frames of x, their tokens get time t = 1 (clean data) while the rest keep
their t, and the predicted velocity is 0 on them (they are data already, so an ODE started with them keeps
them bit-exactly). The given frames then reach the generated ones through self-attention at full token width,
where the channel layout squeezes noisy x and the condition into one token (C + M + C inputs per patch).
Training losses skip the given frames (``pinned_frames``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from safetensors.torch import load_file
from torch import Tensor, nn

from wmgen.config import validate
from wmgen.models.io import load_pretrained, save_pretrained
from wmgen.models.layers import (
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
    timestep_embedding,
    timestep_frequencies,
    upcast,
)

__all__ = [
    "DIT_PRESETS",
    "DiTConfig",
    "DiTEmbeddings",
    "VideoDiT",
    "config_from_diffusers",
    "config_to_diffusers",
    "from_diffusers_state_dict",
    "load_wan_diffusers",
    "patchify",
    "to_diffusers_state_dict",
    "unpatchify",
]

TIME_SCALE = 1000.0  # t in [0, 1] is embedded as the sinusoid of 1000 t (Wan's timestep range)


# ---------------------------------------------------------------------------------------------------------
# 1. config


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of a ``VideoDiT``. Defaults are Wan2.1-T2V-1.3B's (see ``DIT_PRESETS``)."""

    in_channels: int = field(default=16, metadata={"range": (1, None)})  # latent channels C of x
    out_channels: int = field(default=16, metadata={"range": (1, None)})  # channels of the predicted velocity
    dim: int = field(default=1536, metadata={"range": (1, None)})  # token width D
    num_layers: int = field(default=30, metadata={"range": (1, None)})  # transformer blocks
    num_heads: int = field(default=12, metadata={"range": (1, None)})  # heads; D / heads even and >= 6 (RoPE)
    ffn_dim: int = field(default=8960, metadata={"range": (1, None)})  # hidden width of the GELU-tanh FFN
    # latent voxels (pt, ph, pw) per token
    patch: tuple[int, int, int] = field(default=(1, 2, 2), metadata={"range": (1, None)})
    freq_dim: int = field(default=256, metadata={"range": (2, None)})  # sinusoidal timestep features (even)
    text_dim: int = field(default=4096, metadata={"range": (1, None)})  # text width Dc: umT5 4096, MiniLM 384
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention (Wan: True)
    qk_norm: bool = True  # RMS-normalise q and k across all heads before RoPE (Wan: True)
    eps: float = field(default=1e-6, metadata={"range": (1e-12, 1.0)})  # epsilon of every norm
    rope_theta: float = field(default=10000.0, metadata={"range": (1.0, None)})  # RoPE base (Su et al. 2021)
    image_to_video: bool = False  # first-frame conditioning (module docstring)
    image_condition: Literal["channels", "tokens"] = "channels"  # I2V layout: Wan2.1 channels, Wan2.2 tokens
    image_mask_channels: int = field(default=4, metadata={"range": (1, None)})  # mask channels M ("channels")

    def __post_init__(self) -> None:
        if isinstance(self.patch, list):  # JSON / YAML give lists; keep the config hashable
            object.__setattr__(self, "patch", tuple(self.patch))
        validate(self)
        if self.dim % self.num_heads:
            raise ValueError(
                f"dim must be divisible by num_heads, got dim={self.dim}, num_heads={self.num_heads}"
            )
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        rope_axis_dims(self.head_dim)  # raises unless the head splits into (t, h, w) rotation pairs

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch)

    @property
    def patch_in_channels(self) -> int:
        """Channels the patch embedding sees: C, or C + M + C in image-to-video mode."""
        if self.image_to_video and self.image_condition == "channels":
            return 2 * self.in_channels + self.image_mask_channels
        return self.in_channels


# ---------------------------------------------------------------------------------------------------------
# 2. helpers and blocks


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """[B, C, T, H, W] -> [B, L, pt*ph*pw*C]: tokens in (t h w) order, features in (pt ph pw c) order.

    A Linear on these patches is Wan's Conv3d(kernel = stride = patch) with its weight permuted; gathering
    from channels-last memory moves runs of C floats instead of runs of pw (4x faster on CPU than the conv).
    """
    pt, ph, pw = patch
    x = rearrange(x, "b c t h w -> b t h w c").contiguous()
    return rearrange(x, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)


def unpatchify(x: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """Inverse of ``patchify``: [B, L, pt*ph*pw*C] -> [B, C, T, H, W]."""
    (t, h, w), (pt, ph, pw) = grid, patch
    x = rearrange(x, "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)
    return rearrange(x, "b t h w c -> b c t h w").contiguous()


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS qk-norm across heads and 3D RoPE (one fused qkv projection)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Tensor, backend: str) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, D)
        v = v.unflatten(-1, (self.num_heads, -1))  # (B, L, H, Dh)
        q = apply_rope(self.norm_q(q).unflatten(-1, (self.num_heads, -1)), rope).to(v.dtype)
        k = apply_rope(self.norm_k(k).unflatten(-1, (self.num_heads, -1)), rope).to(v.dtype)
        return self.out(attention(q, k, v, backend=backend).flatten(2))  # (B, L, D)


class CrossAttention(nn.Module):
    """Multi-head attention from video tokens to context tokens, RMS qk-norm across heads, no RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, backend: str) -> Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (B, Lc, D)
        v = v.unflatten(-1, (self.num_heads, -1))  # (B, Lc, H, Dh)
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).to(v.dtype)  # (B, L, H, Dh)
        k = self.norm_k(k).unflatten(-1, (self.num_heads, -1)).to(v.dtype)  # (B, Lc, H, Dh)
        return self.out(attention(q, k, v, backend=backend).flatten(2))  # (B, L, D)


class DiTBlock(nn.Module):
    """Wan's transformer block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        c = config
        self.eps = c.eps
        self.self_attn = SelfAttention(c.dim, c.num_heads, c.qk_norm, c.eps)
        self.norm_cross = FP32LayerNorm(c.dim, c.eps) if c.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(c.dim, c.num_heads, c.qk_norm, c.eps)
        self.ffn = nn.Sequential(
            nn.Linear(c.dim, c.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(c.ffn_dim, c.dim)
        )
        # This block's offset to the shared time modulation: shift, scale, gate of attention, then of the FFN.
        self.modulation = nn.Parameter(torch.zeros(1, 6, c.dim))

    def forward(self, x: Tensor, mod: Tensor, context: Tensor | None, rope: Tensor, backend: str) -> Tensor:
        """x [B, L, D] fp32, mod [B, 1 or L, 6, D] fp32, context [B, Lc, D] or None, rope [L, Dh/2]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.unsqueeze(0) + mod).unbind(2)
        # adaLN-Zero (Peebles & Xie 2023): modulate the normed stream, gate the residual update.
        h = modulate(layer_norm_fp32(x, eps=self.eps), shift1, scale1)  # (B, L, D)
        x = torch.addcmul(x, upcast(self.self_attn(h, rope, backend)), gate1)
        if context is not None:
            x = x + upcast(self.cross_attn(self.norm_cross(x), context, backend))
        h = modulate(layer_norm_fp32(x, eps=self.eps), shift2, scale2)
        return torch.addcmul(x, upcast(self.ffn(h)), gate2)  # (B, L, D)


@dataclass
class DiTEmbeddings:
    """Everything the blocks consume, as computed by ``VideoDiT.embed`` (phase 1 of ``forward``).

    Control adapters read ``tokens`` and ``t_emb`` from here to produce hints; ControlNet-style copies of the
    blocks can run on ``tokens`` with the same ``modulation``, ``context`` and ``rope``.
    """

    tokens: Tensor  # [B, L, D] fp32, tokens in (t h w) order
    t_emb: Tensor  # [B, 1 or L, D] fp32 time embedding (per token when t was [B, L])
    modulation: Tensor  # [B, 1 or L, 6, D] fp32 shared block modulation, before each block's table
    context: Tensor | None  # [B, Lc, D] projected text tokens
    rope: Tensor  # complex [L, Dh / 2] rotations
    grid: tuple[int, int, int]  # (T'/pt, H'/ph, W'/pw) token grid


# ---------------------------------------------------------------------------------------------------------
# 3. model


class VideoDiT(nn.Module):
    """Wan2.1-style flow-matching transformer on video latents: v = f(x_t, t | text, first frame, hints).

    Example::

        model = VideoDiT(DIT_PRESETS["tiny"], generator=torch.Generator().manual_seed(0))
        x = torch.randn(2, 16, 5, 8, 8)                      # [B, C, T', H', W'] noisy latents at time t
        v = model(x, torch.rand(2), context=torch.randn(2, 7, 384))   # [2, 16, 5, 8, 8]

        with torch.device("meta"):                           # the 1.3B shapes, no memory
            big = VideoDiT(DIT_PRESETS["wan-1.3b"])

    Attributes:
        gradient_checkpointing: recompute each block in the backward pass instead of storing activations.
        autocast_cuda: run the blocks under bf16 autocast when the input is on CUDA.
    """

    def __init__(self, config: DiTConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"config must be a DiTConfig, got {type(config).__name__}")
        c = self.config = config
        self.gradient_checkpointing = False
        self.autocast_cuda = True
        self.patch_embed = nn.Linear(c.patch_volume * c.patch_in_channels, c.dim)
        self.text_embed = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embed = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))  # shared by every block
        self.blocks = nn.ModuleList(DiTBlock(c) for _ in range(c.num_layers))
        self.head = nn.Linear(c.dim, c.patch_volume * c.out_channels)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, c.dim))  # shift, scale of the output norm
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Wan2.1's ``init_weights`` drawn from ``generator``; a zero head: a fresh model predicts v = 0.

        Xavier-uniform Linears with zero biases, N(0, 0.02) for the text and time embeddings, modulation
        tables N(0, 1/D) and a zero output projection: an untrained model is the identity flow, a calm
        starting point for training from scratch (DiT's adaLN-Zero idea applied at the output).
        """
        if any(p.is_meta for p in self.parameters()):
            return  # shapes only: nothing to draw
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (RMSNorm, nn.LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for m in (*self.text_embed, *self.time_embed):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02, generator=generator)
        scale = self.config.dim**-0.5
        for table in (self.head_modulation, *(b.modulation for b in self.blocks)):
            nn.init.normal_(table, std=scale, generator=generator)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # --- input checks --------------------------------------------------------------------------------------

    def token_grid(self, latent_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """(T'/pt, H'/ph, W'/pw) tokens for latents of shape [B, C, T', H', W'] (or [T', H', W'])."""
        *_, T, H, W = latent_shape
        pt, ph, pw = self.config.patch
        if T % pt or H % ph or W % pw or min(T, H, W) < 1:
            raise ValueError(
                f"latent size (T', H', W') = {(T, H, W)} must be positive multiples of the patch "
                f"{(pt, ph, pw)}"
            )
        return T // pt, H // ph, W // pw

    def _check_inputs(
        self, x: Tensor, t: Tensor, context: Tensor | None, image_latent: Tensor | None
    ) -> tuple[Tensor, Tensor, tuple[int, int, int]]:
        """Checked (patch input, t as [B, 1] or [B, L], token grid); builds the I2V channels."""
        c = self.config
        if not isinstance(x, Tensor) or x.ndim != 5 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float tensor [B, C, T', H', W'], got {shape}")
        B, C = x.shape[:2]
        if C != c.in_channels:
            raise ValueError(f"x must have C = in_channels = {c.in_channels} channels, got {tuple(x.shape)}")
        grid = self.token_grid(x.shape)
        L = math.prod(grid)
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"t must be a float tensor in [0, 1], got {t!r:.80}")
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape == (B,):
            t = t[:, None]  # (B, 1): one time per sample
        elif t.shape != (B, L):
            raise ValueError(
                f"t must be [B] = [{B}] or per-token [B, L] = [{B}, {L}] (tokens in (t h w) order of the "
                f"grid {grid}), got {tuple(t.shape)}"
            )
        if context is not None and (context.ndim != 3 or context.shape[::2] != (B, c.text_dim)):
            raise ValueError(
                f"context must be [B, Lc, Dc] = [{B}, Lc, {c.text_dim}] (Dc = text_dim), "
                f"got {tuple(context.shape)}"
            )
        if context is not None and context.shape[1] == 0:
            raise ValueError("context must hold at least one token (pass context=None for no text)")
        if image_latent is not None and not c.image_to_video:
            raise ValueError("image_latent was given but this model has config.image_to_video = False")
        if image_latent is None and c.image_to_video:
            raise ValueError(
                f"this image-to-video model needs image_latent [B, C, H', W'] or [B, C, K, H', W'] = "
                f"[{B}, {C}, K, {x.shape[3]}, {x.shape[4]}] with 1 <= K <= {x.shape[2]}"
            )
        if image_latent is not None:
            T, H, W = x.shape[2:]
            if image_latent.ndim == 4:
                image_latent = image_latent[:, :, None]  # (B, C, 1, H', W')
            if (
                image_latent.ndim != 5
                or image_latent.shape[:2] != (B, C)
                or image_latent.shape[3:] != (H, W)
                or not 1 <= image_latent.shape[2] <= T
            ):
                raise ValueError(
                    f"image_latent must be [B, C, H', W'] or [B, C, K, H', W'] = [{B}, {C}, K, {H}, {W}] "
                    f"with 1 <= K <= {T}, got {tuple(image_latent.shape)}"
                )
            if c.image_condition == "channels":
                x = torch.cat([x, self._image_condition(image_latent, T)], dim=1)  # (B, C + M + C, T', H', W')
            else:
                x, t = self._pin_frames(x, t, image_latent, grid)
        return x, t, grid

    def pinned_frames(self, image_latent: Tensor | None) -> int:
        """Latent frames K that ``forward`` holds fixed (v = 0): the given ones in "tokens" mode, else 0."""
        if image_latent is None or self.config.image_condition != "tokens":
            return 0
        return 1 if image_latent.ndim == 4 else image_latent.shape[2]

    def _pin_frames(
        self, x: Tensor, t: Tensor, image_latent: Tensor, grid: tuple[int, int, int]
    ) -> tuple[Tensor, Tensor]:
        """"tokens" layout: x with its first K frames replaced by the given ones, and per-token t [B, L] that
        is 1 (clean) on their tokens."""
        K, pt = image_latent.shape[2], self.config.patch[0]
        if K % pt:
            raise ValueError(f"image_latent must give a multiple of the temporal patch {pt} frames, got K = {K}")
        x = torch.cat([image_latent.to(x.dtype), x[:, :, K:]], dim=2)  # (B, C, T', H', W')
        _, h, w = grid
        given = torch.arange(math.prod(grid), device=t.device) < (K // pt) * h * w  # (L,) tokens in (t h w) order
        t = torch.where(given, torch.ones((), dtype=t.dtype, device=t.device), t)  # (B, L)
        return x, t

    def _check_hints(self, hints: Mapping[int, Tensor] | None, B: int, L: int) -> dict[int, Tensor]:
        if hints is None:
            return {}
        if not isinstance(hints, Mapping):
            raise TypeError(f"hints must be a dict {{block_index: [B, L, D]}}, got {type(hints).__name__}")
        n, D = self.config.num_layers, self.config.dim
        for k, h in hints.items():
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
                raise ValueError(f"hints keys must be block indices in [0, {n - 1}], got {k!r}")
            if not isinstance(h, Tensor) or h.shape != (B, L, D):
                shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(f"hints[{k}] must be [B, L, D] = [{B}, {L}, {D}], got {shape}")
        return dict(hints)

    def _image_condition(self, image_latent: Tensor, num_frames: int) -> Tensor:
        """[B, C, K, H', W'] given frames -> [B, M + C, T', H', W'] = [mask | latent, zeros after frame K]."""
        B, _, K, H, W = image_latent.shape
        latent = nn.functional.pad(image_latent, (0, 0, 0, 0, 0, num_frames - K))  # (B, C, T', H', W')
        given = (torch.arange(num_frames, device=latent.device) < K).to(latent.dtype)  # (T',)
        mask = given.view(1, 1, -1, 1, 1).expand(B, self.config.image_mask_channels, -1, H, W)
        return torch.cat([mask, latent], dim=1)

    # --- forward -------------------------------------------------------------------------------------------

    def embed(
        self, x: Tensor, t: Tensor, *, context: Tensor | None = None, image_latent: Tensor | None = None
    ) -> DiTEmbeddings:
        """Phase 1 of ``forward``: patch tokens, time embedding and modulation, text tokens, RoPE table.

        Same arguments as ``forward``; inputs are checked here.
        """
        c = self.config
        x, t, grid = self._check_inputs(x, t, context, image_latent)
        tokens = upcast(self.patch_embed(patchify(x, c.patch)))  # (B, L, D)
        # Time embedding and modulation in fp32 even under autocast (Wan keeps them out of bf16).
        with torch.autocast(device_type=x.device.type, enabled=False):
            t_emb = self.time_embed(timestep_embedding(TIME_SCALE * t, c.freq_dim))  # (B, 1|L, D)
            modulation = self.time_mod(t_emb).unflatten(-1, (6, c.dim))  # (B, 1|L, 6, D)
        context = self.text_embed(context) if context is not None else None  # (B, Lc, D)
        rope = rope_frequencies(grid, c.head_dim, theta=c.rope_theta, device=x.device)  # (L, Dh / 2)
        return DiTEmbeddings(tokens, t_emb, modulation, context, rope, grid)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        context: Tensor | None = None,
        image_latent: Tensor | None = None,
        hints: Mapping[int, Tensor] | None = None,
    ) -> Tensor:
        """Velocity v = dx_t/dt (t = 0 noise, t = 1 data) of noisy latents.

        Args:
            x: [B, C, T', H', W'] latents x_t; T', H', W' divisible by the patch (1, 2, 2).
            t: [B] times in [0, 1] (a 0-dim tensor broadcasts), or per-token [B, L] with
                L = T'/pt * H'/ph * W'/pw in (t h w) order (e.g. clean conditioning frames at t = 1).
            context: [B, Lc, Dc] text tokens (Dc = text_dim); None skips cross-attention.
            image_latent: image-to-video models only: [B, C, H', W'] first latent frame, or
                [B, C, K, H', W'] the first K latent frames (module docstring for the two layouts; in
                "tokens" layout they replace x's first K frames and their velocity is 0).
            hints: {block_index: [B, L, D]} added to the output of that block (control adapters).

        Returns:
            [B, C_out, T', H', W'] velocity in x's dtype.

        Attention runs on ``wmgen.models.layers.get_attention_backend()``; for ``torch.func.jvp`` on CPU call
        the model inside ``use_attention_backend("math")``.
        """
        c = self.config
        use_bf16 = self.autocast_cuda and isinstance(x, Tensor) and x.device.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
            # 1. patchify + position, time and text embeddings
            e = self.embed(x, t, context=context, image_latent=image_latent)
            hints = self._check_hints(hints, *e.tokens.shape[:2])
            # 2. blocks (+ control hints); the backend is fixed here so checkpoint recomputation matches
            backend = get_attention_backend()
            h = e.tokens
            for i, block in enumerate(self.blocks):
                args = (h, e.modulation, e.context, e.rope, backend)
                h = maybe_checkpoint(block, *args, enabled=self.gradient_checkpointing)
                if i in hints:
                    h = h + hints[i]
            # 3. output head + unpatchify
            shift, scale = (self.head_modulation.unsqueeze(0) + e.t_emb.unsqueeze(2)).unbind(2)  # (B, 1|L, D)
            out = self.head(modulate(layer_norm_fp32(h, eps=c.eps), shift, scale))  # (B, L, pt*ph*pw*C_out)
        v = unpatchify(upcast(out), e.grid, c.patch).to(x.dtype)  # (B, C_out, T', H', W')
        K = self.pinned_frames(image_latent)
        if K:  # "tokens" layout: the given frames are data already
            v = torch.cat([torch.zeros_like(v[:, :, :K]), v[:, :, K:]], dim=2)
        return v

    # --- checkpoints ---------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``, atomically
        (:func:`wmgen.models.io.save_pretrained`)."""
        return save_pretrained(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> VideoDiT:
        """Load a checkpoint written by ``save_pretrained`` (safetensors only; nothing is unpickled)."""
        return load_pretrained(cls, DiTConfig, directory, device=device)


# ---------------------------------------------------------------------------------------------------------
# 4. presets

DIT_PRESETS: dict[str, DiTConfig] = {
    # 2 CPU cores: 64x64 x 17 frames -> latents 16 x 5 x 8 x 8 -> 80 tokens; MiniLM text (384-d)
    "tiny": DiTConfig(dim=256, num_layers=4, num_heads=4, ffn_dim=1024, text_dim=384),
    # the same for the 4x-spatial VAE (VAE_PRESETS["tiny-s4"]): latents 16 x 5 x 16 x 16, 1x4x4 patches -> 80 tokens
    "tiny-s4": DiTConfig(dim=256, num_layers=4, num_heads=4, ffn_dim=1024, text_dim=384, patch=(1, 4, 4)),
    # one GPU: 256x256 x 33 frames -> latents 16 x 9 x 32 x 32 -> 2304 tokens; ~119M params.
    "small": DiTConfig(dim=768, num_layers=12, num_heads=6, ffn_dim=3072, text_dim=384),
    # Wan2.1-T2V-1.3B: 12 heads of 128, umT5-XXL text; 1,418,996,800 params like diffusers' port.
    "wan-1.3b": DiTConfig(
        in_channels=16, out_channels=16, dim=1536, num_layers=30, num_heads=12, ffn_dim=8960,
        patch=(1, 2, 2), freq_dim=256, text_dim=4096,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# 5. diffusers interop (WanTransformer3DModel): key mapping and the sigma = 1 - t, v' = -v conversion


def config_from_diffusers(cfg: Mapping[str, Any]) -> DiTConfig:
    """DiTConfig equivalent to a diffusers ``WanTransformer3DModel`` config (its ``config.json`` dict)."""
    for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
        if cfg.get(key) is not None:
            raise ValueError(
                f"diffusers config has {key}={cfg[key]!r}: Wan's CLIP image cross-attention "
                "(Wan2.1 I2V / FLF2V) is not part of VideoDiT"
            )
    try:
        heads, head_dim = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
        return DiTConfig(
            in_channels=int(cfg["in_channels"]),
            out_channels=int(cfg.get("out_channels") or cfg["in_channels"]),
            dim=heads * head_dim,
            num_layers=int(cfg["num_layers"]),
            num_heads=heads,
            ffn_dim=int(cfg["ffn_dim"]),
            patch=tuple(int(p) for p in cfg["patch_size"]),
            freq_dim=int(cfg["freq_dim"]),
            text_dim=int(cfg["text_dim"]),
            cross_attn_norm=bool(cfg["cross_attn_norm"]),
            qk_norm=True,  # diffusers' WanAttention always RMS-normalises q and k, whatever qk_norm says
            eps=float(cfg["eps"]),
        )
    except KeyError as err:
        raise ValueError(f"diffusers WanTransformer3DModel config lacks {err.args[0]!r}") from None


def config_to_diffusers(config: DiTConfig) -> dict[str, Any]:
    """Keyword arguments of a diffusers ``WanTransformer3DModel`` with ``config``'s shapes."""
    if not config.qk_norm or config.rope_theta != 10000.0:
        raise ValueError(
            f"diffusers' Wan model always uses qk-norm and RoPE theta 1e4, got qk_norm={config.qk_norm}, "
            f"rope_theta={config.rope_theta}"
        )
    return {
        "patch_size": tuple(config.patch),
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "in_channels": config.patch_in_channels,
        "out_channels": config.out_channels,
        "text_dim": config.text_dim,
        "freq_dim": config.freq_dim,
        "ffn_dim": config.ffn_dim,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": config.eps,
    }


def _diffusers_rules(config: DiTConfig) -> list[tuple[str, tuple[str, ...]]]:
    """(our parameter, the diffusers parameters concatenated along dim 0 to form it)."""
    rules: list[tuple[str, tuple[str, ...]]] = []

    def linear(ours: str, *theirs: str) -> None:
        for s in ("weight", "bias"):
            rules.append((f"{ours}.{s}", tuple(f"{t}.{s}" for t in theirs)))

    linear("patch_embed", "patch_embedding")
    linear("text_embed.0", "condition_embedder.text_embedder.linear_1")
    linear("text_embed.2", "condition_embedder.text_embedder.linear_2")
    linear("time_embed.0", "condition_embedder.time_embedder.linear_1")
    linear("time_embed.2", "condition_embedder.time_embedder.linear_2")
    linear("time_mod.1", "condition_embedder.time_proj")
    for i in range(config.num_layers):
        o, d = f"blocks.{i}.", f"blocks.{i}."
        linear(o + "self_attn.qkv", d + "attn1.to_q", d + "attn1.to_k", d + "attn1.to_v")
        linear(o + "self_attn.out", d + "attn1.to_out.0")
        linear(o + "cross_attn.q", d + "attn2.to_q")
        linear(o + "cross_attn.kv", d + "attn2.to_k", d + "attn2.to_v")
        linear(o + "cross_attn.out", d + "attn2.to_out.0")
        if config.qk_norm:
            for attn, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
                for n in ("norm_q", "norm_k"):
                    rules.append((f"{o}{attn}.{n}.weight", (f"{d}{theirs}.{n}.weight",)))
        if config.cross_attn_norm:
            linear(o + "norm_cross", d + "norm2")
        linear(o + "ffn.0", d + "ffn.net.0.proj")
        linear(o + "ffn.2", d + "ffn.net.2")
        rules.append((o + "modulation", (d + "scale_shift_table",)))
    linear("head", "proj_out")
    rules.append(("head_modulation", ("scale_shift_table",)))
    return rules


def _flip_time_features(weight: Tensor) -> Tensor:
    """Turn a Linear [D, F] reading sinusoid(1000 sigma) into one reading sinusoid(1000 t), t = 1 - sigma.

    Per frequency w: [cos, sin](1000 (1 - t) w) = R [cos, sin](1000 t w) with R = [[c, s], [s, -c]],
    c = cos(1000 w), s = sin(1000 w). R is its own inverse, so the same map also goes back.
    """
    half = weight.shape[1] // 2
    phase = TIME_SCALE * timestep_frequencies(half, device=weight.device).double()
    c, s = phase.cos(), phase.sin()
    w_cos, w_sin = weight.double().split(half, dim=1)
    return torch.cat([w_cos * c + w_sin * s, w_cos * s - w_sin * c], dim=1).to(weight.dtype)


def from_diffusers_state_dict(state: Mapping[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """Map a diffusers ``WanTransformer3DModel`` state dict onto a ``VideoDiT(config)`` state dict.

    Besides renaming and fusing (q, k, v) into one projection, this folds the time convention into the
    weights: the time MLP's first Linear is re-expressed on sinusoid(1000 t) (``_flip_time_features``) and the
    head is negated, so ``ours(x, t) == -diffusers(x, timestep=1000 (1 - t))``. The Conv3d patch weight
    [D, C, pt, ph, pw] becomes our Linear's [D, pt*ph*pw*C].
    """
    src = dict(state)
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for ours, theirs in _diffusers_rules(config):
        if any(k not in src for k in theirs):
            missing += [k for k in theirs if k not in src]
            continue
        parts = [src.pop(k) for k in theirs]
        out[ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    leftover = sorted(k for k in src if ".norm_added_q." not in k)  # diffusers itself ignores norm_added_q
    if missing or leftover:
        raise ValueError(
            f"diffusers state dict does not match VideoDiT({config}): {len(missing)} missing "
            f"(first: {missing[:6]}), {len(leftover)} unexpected (first: {leftover[:6]})"
        )
    w = out["patch_embed.weight"]  # (D, C, pt, ph, pw)
    out["patch_embed.weight"] = w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1)  # (D, pt*ph*pw*C)
    out["time_embed.0.weight"] = _flip_time_features(out["time_embed.0.weight"])
    out["head.weight"], out["head.bias"] = -out["head.weight"], -out["head.bias"]  # v = -(noise - data)
    return out


def to_diffusers_state_dict(state: Mapping[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """Inverse of ``from_diffusers_state_dict``: a ``VideoDiT(config)`` state dict in diffusers' names."""
    src = dict(state)
    pt, ph, pw = config.patch
    w = src["patch_embed.weight"]
    src["patch_embed.weight"] = w.reshape(w.shape[0], pt, ph, pw, -1).permute(0, 4, 1, 2, 3)  # (D, C, pt..)
    src["time_embed.0.weight"] = _flip_time_features(src["time_embed.0.weight"])
    src["head.weight"], src["head.bias"] = -src["head.weight"], -src["head.bias"]
    out: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_rules(config):
        for name, part in zip(theirs, src[ours].chunk(len(theirs), dim=0), strict=True):
            out[name] = part.contiguous()
    return out


def load_wan_diffusers(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> VideoDiT:
    """Build a VideoDiT from a local diffusers-format Wan transformer folder (safetensors only).

    Args:
        path: the ``transformer/`` folder of e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, holding
            ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or its sharded index). Nothing is
            downloaded: fetch it beforehand (``huggingface-cli download REPO --include 'transformer/*'``).
        device: where to put the weights.
        dtype: parameter dtype (DESIGN.md: parameters fp32, bf16 only through autocast).
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{cfg_file} not found: pass the local 'transformer' folder of a diffusers-format Wan checkpoint "
            "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers/transformer), downloaded beforehand"
        )
    diffusers_cfg = json.loads(cfg_file.read_text())
    if diffusers_cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise ValueError(
            f"{cfg_file} describes a {diffusers_cfg['_class_name']}, not a WanTransformer3DModel"
        )
    config = config_from_diffusers(diffusers_cfg)
    index = path / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [path / "diffusion_pytorch_model.safetensors"]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(
            f"missing weight files {absent}; {path} holds {sorted(os.listdir(path))} "
            "(only .safetensors is read)"
        )
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=str(device)))
    state = {k: v.to(dtype) for k, v in from_diffusers_state_dict(state, config).items()}
    with torch.device("meta"):
        model = VideoDiT(config)
    model.load_state_dict(state, assign=True)
    return model
