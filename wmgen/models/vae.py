"""CausalVAE: a causal 3D convolutional video autoencoder in the structure of Wan2.1's VAE.

Architecture (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video Generative Models", §3.1):

    video [B, 3, T, H, W], T = 1 + 4k
      encoder: CausalConv3d -> per stage: residual blocks (RMS norm over channels, SiLU, causal 3x3x3 convs)
               + spatial 2x downsample (asymmetric zero pad, stride-2 conv per frame) and, where
               ``temporal_downsample`` says so, a causal stride-2 time conv that keeps the first frame alone
               -> middle: residual block, per-frame spatial attention, residual block
               -> RMS norm, SiLU, CausalConv3d to 2 z_dim -> 1x1x1 conv -> (mean, logvar)
    latents [B, z_dim, T', H / s, W / s], T' = 1 + (T - 1) / 4, s = 2 ** (len(dim_mult) - 1)  (4 or 8)
      decoder: the mirror image; a temporal upsample maps latent frame 0 to one frame and every later latent
               frame to two (a causal conv with 2C outputs, split into two frames), so two of them map
               1 + (T' - 1) * 4 frames back.

Causality: every temporal operation looks only at the past. Causal convs pad ``kernel_t - 1`` frames before
the first one (zeros), never after; norms act per voxel and attention per frame. The first frame is therefore
encoded alone (an image is a 1-frame video), and pixel frames [1-4], [5-8], ... map to latent frames 1, 2, ...

Chunking: ``encode(video, chunk_frames=n)`` runs frame 0 and then groups of n frames through the encoder with
a cache (a dict module -> the last input frames that module still needs: ``kernel_t - 1`` frames per causal
conv, the not-yet-consumed frame of each temporal downsample). The cache makes the chunked result equal to the
unchunked one (up to float summation order) while memory grows with n, not T. ``decode`` chunks the same way
along latent frames. The unchunked path is the same code with no cache: one loop, not two.

Latents are normalised for the diffusion model by per-channel ``latents_mean`` / ``latents_std`` buffers that
are saved with the weights (``normalize`` / ``denormalize``; DESIGN.md §2).

Differences from Wan's released VAE (so its weights do not load here): the spatial upsample keeps the
channel count (Wan halves it), and the temporal upsample's causal conv also sees latent frame 0 (Wan starts
it from zeros at latent frame 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wmgen.config import validate
from wmgen.models.io import load_pretrained, save_pretrained
from wmgen.models.layers import upcast

__all__ = [
    "VAE_PRESETS",
    "CausalConv3d",
    "CausalVAE",
    "DiagonalGaussian",
    "VAEConfig",
]

LOGVAR_RANGE = (-30.0, 20.0)  # posterior log-variance clamp (Rombach et al. 2022, LDM), avoids exp overflow

Cache = dict[nn.Module, Tensor]  # streaming state: module -> the past input frames it still needs


# ---------------------------------------------------------------------------------------------------------
# 1. config


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a ``CausalVAE``. Defaults are Wan2.1's VAE (see ``VAE_PRESETS``)."""

    in_channels: int = field(default=3, metadata={"range": (1, None)})  # pixel channels (RGB)
    z_dim: int = field(default=16, metadata={"range": (1, None)})  # latent channels C
    base_dim: int = field(default=96, metadata={"range": (1, None)})  # width of the first stage
    # width of stage i = base_dim * dim_mult[i]; len(dim_mult) - 1 spatial 2x downsamples (4 -> 8x)
    dim_mult: tuple[int, ...] = field(default=(1, 2, 4, 4), metadata={"range": (1, None)})
    num_res_blocks: int = field(default=2, metadata={"range": (1, None)})  # residual blocks per encoder stage
    # per downsample stage: also halve time (causally); 2 ** sum(...) is the temporal factor (Wan: 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = field(default=0.0, metadata={"range": (0.0, 1.0)})  # dropout inside residual blocks
    eps: float = field(default=1e-6, metadata={"range": (1e-12, 1.0)})  # epsilon of the RMS norms

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample"):  # JSON / YAML give lists; keep the config hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        validate(self)
        if not self.dim_mult:
            raise ValueError("dim_mult must hold at least one stage multiplier, got ()")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample must have len(dim_mult) - 1 = {len(self.dim_mult) - 1} flags (one per "
                f"downsample stage), got {self.temporal_downsample}"
            )

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along H and W."""
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first."""
        return 2 ** sum(self.temporal_downsample)

    def latent_frames(self, num_frames: int) -> int:
        """T' = 1 + (T - 1) / temporal_factor for a valid frame count T."""
        return 1 + (num_frames - 1) // self.temporal_factor


# ---------------------------------------------------------------------------------------------------------
# 2. layers and blocks


def _frames_2d(fn, x: Tensor) -> Tensor:
    """Apply a 2D op to every frame of [B, C, T, H, W]."""
    B = x.shape[0]
    y = fn(rearrange(x, "b c t h w -> (b t) c h w"))  # (B T, C', H', W')
    return rearrange(y, "(b t) c h w -> b c t h w", b=B)


class CausalConv3d(nn.Conv3d):
    """3D convolution that pads ``kernel_t - 1`` frames before the input and none after (stride 1 in time).

    Output frame t sees input frames t - kernel_t + 1 .. t only. H and W are zero-padded symmetrically
    ("same" size for odd kernels). With a ``cache`` the padding frames are the last ``kernel_t - 1`` input
    frames of the previous call (zeros on the first), so consecutive calls on consecutive chunks give the
    same frames as one call on the whole video.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3):
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2))
        self.time_pad = kt - 1

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        """x [B, Cin, T, H, W] -> [B, Cout, T, H, W]."""
        if self.time_pad:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x.new_zeros(*x.shape[:2], self.time_pad, *x.shape[3:])
            x = torch.cat([past, x], dim=2)  # (B, Cin, kt - 1 + T, H, W)
            if cache is not None:
                cache[self] = x[:, :, x.shape[2] - self.time_pad :].clone()  # clone: free the rest of x
        return super().forward(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channels of each voxel, in fp32 (Wan's ``RMS_norm``): causal, batch-independent."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = upcast(x)
        h = h * torch.rsqrt(h.square().mean(1, keepdim=True) + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return (h * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


class ResBlock(nn.Module):
    """norm, SiLU, causal 3x3x3 conv, twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, eps: float, dropout: float):
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim, eps)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3)
        self.norm2 = ChannelRMSNorm(out_dim, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3)
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)  # (B, Cout, T, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))), cache)
        return self.shortcut(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the H x W positions of each frame (Wan's middle ``AttentionBlock``)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, eps)
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, h: Tensor) -> Tensor:
        H, W = h.shape[-2:]
        q, k, v = rearrange(self.qkv(h), "n (three c) h w -> three n 1 (h w) c", three=3)  # 3 x (N, 1, HW, C)
        o = F.scaled_dot_product_attention(q, k, v)  # (N, 1, HW, C)
        return self.proj(rearrange(o, "n 1 (h w) c -> n c h w", h=H, w=W))

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        return x + _frames_2d(self._attend, self.norm(x))


class Downsample(nn.Module):
    """2x spatial downsample per frame, then optionally a causal 2x temporal downsample.

    Time (Wan's ``downsample3d``): frame 0 passes unchanged; frames 1, 2 are merged with frame 0, frames 3, 4
    with frame 2, ...: out_j = conv(x_{2j-2}, x_{2j-1}, x_{2j}) for j >= 1, a stride-2 kernel-3 conv with no
    padding. 1 + 2m frames -> 1 + m. The cache holds the frame(s) not yet consumed by a window.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2)
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        # zero pad right/bottom only, so a stride-2 3x3 conv halves even sizes exactly (Wan, LDM)
        x = _frames_2d(lambda f: self.conv(F.pad(f, (0, 1, 0, 1))), x)  # (B, C, T, H/2, W/2)
        if self.time_conv is None:
            return x
        past = cache.get(self) if cache is not None else None
        head, buf = (x[:, :, :1], x) if past is None else (x[:, :, :0], torch.cat([past, x], dim=2))
        n = (buf.shape[2] - 1) // 2  # complete windows in the buffer
        out = self.time_conv(buf[:, :, : 2 * n + 1]) if n > 0 else buf[:, :, :0]  # (B, C, n, H/2, W/2)
        if cache is not None:
            cache[self] = buf[:, :, 2 * n :].clone()
        return torch.cat([head, out], dim=2)  # (B, C, [1] + n, H/2, W/2)


class Upsample(nn.Module):
    """Optionally a causal 2x temporal upsample, then 2x nearest spatial upsample + 3x3 conv per frame.

    Time (Wan's ``upsample3d``): a causal conv with 2C outputs makes two frames out of every latent frame
    j >= 1; frame 0 passes unchanged. 1 + m frames -> 1 + 2m.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        if self.time_conv is not None:
            first = cache is None or self.time_conv not in cache  # does this call hold frame 0?
            h = self.time_conv(x, cache)  # (B, 2C, T, H, W)
            h = rearrange(h, "b (two c) t h w -> b c (t two) h w", two=2)  # (B, C, 2T, H, W)
            x = torch.cat([x[:, :, :1], h[:, :, 2:]], dim=2) if first else h  # (B, C, 2T - 1 or 2T, H, W)
        return _frames_2d(lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")), x)


class Encoder(nn.Module):
    """[B, 3, T, H, W] -> [B, 2 z_dim, T', H / s, W / s] (mean and log-variance, before the 1x1 conv)."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        self.conv_in = CausalConv3d(c.in_channels, dims[0], 3)
        self.down = nn.ModuleList()
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(c.num_res_blocks):
                self.down.append(ResBlock(in_dim, out_dim, c.eps, c.dropout))
                in_dim = out_dim
            if i < len(c.dim_mult) - 1:
                self.down.append(Downsample(out_dim, c.temporal_downsample[i]))
        d = dims[-1]
        self.mid = nn.ModuleList(
            [ResBlock(d, d, c.eps, c.dropout), FrameAttention(d, c.eps), ResBlock(d, d, c.eps, c.dropout)]
        )
        self.norm_out = ChannelRMSNorm(d, c.eps)
        self.conv_out = CausalConv3d(d, 2 * c.z_dim, 3)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        x = self.conv_in(x, cache)  # (B, D0, T, H, W)
        for block in (*self.down, *self.mid):
            x = block(x, cache)  # ... (B, D, T', H/s, W/s)
        return self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 2 z_dim, T', H/s, W/s)


class Decoder(nn.Module):
    """[B, z_dim, T', H', W'] -> [B, 3, 1 + (T' - 1) * 4, s H', s W']: the encoder's mirror image."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        dims = [c.base_dim * m for m in (c.dim_mult[-1], *reversed(c.dim_mult))]
        temporal_up = tuple(reversed(c.temporal_downsample))
        d = dims[0]
        self.conv_in = CausalConv3d(c.z_dim, d, 3)
        self.mid = nn.ModuleList(
            [ResBlock(d, d, c.eps, c.dropout), FrameAttention(d, c.eps), ResBlock(d, d, c.eps, c.dropout)]
        )
        self.up = nn.ModuleList()
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(c.num_res_blocks + 1):  # one more than the encoder, as in LDM and Wan
                self.up.append(ResBlock(in_dim, out_dim, c.eps, c.dropout))
                in_dim = out_dim
            if i < len(c.dim_mult) - 1:
                self.up.append(Upsample(out_dim, temporal_up[i]))
        self.norm_out = ChannelRMSNorm(dims[-1], c.eps)
        self.conv_out = CausalConv3d(dims[-1], c.in_channels, 3)

    def forward(self, z: Tensor, cache: Cache | None = None) -> Tensor:
        x = self.conv_in(z, cache)  # (B, D, T', H', W')
        for block in (*self.mid, *self.up):
            x = block(x, cache)  # ... (B, D0, T, H, W)
        return self.conv_out(F.silu(self.norm_out(x)), cache)  # (B, 3, T, H, W)


@dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z | video) = N(mean, exp(logvar)), element-wise; both [B, C, T', H', W']."""

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.logvar.shape:
            raise ValueError(
                f"mean and logvar must have the same shape, got {tuple(self.mean.shape)} and "
                f"{tuple(self.logvar.shape)}"
            )

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) drawn from ``generator`` (reparameterised: differentiable)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The most likely latent: ``mean``."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) summed over all but the batch dimension: [B] (Kingma & Welling 2014, app. B)."""
        m, lv = upcast(self.mean), upcast(self.logvar)
        return 0.5 * (m.square() + lv.exp() - 1.0 - lv).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------------------
# 3. model


class CausalVAE(nn.Module):
    """Causal video VAE: pixels [B, 3, 1 + 4k, H, W] in [-1, 1] <-> latents [B, C, 1 + k, H / s, W / s].

    Example::

        vae = CausalVAE(VAE_PRESETS["tiny"], generator=torch.Generator().manual_seed(0))
        video = torch.rand(1, 3, 17, 64, 64) * 2 - 1                 # [B, 3, T, H, W]
        posterior = vae.encode(video, chunk_frames=4)                 # mean, logvar [1, 16, 5, 8, 8]
        z = vae.normalize(posterior.sample(torch.Generator().manual_seed(1)))   # what the DiT sees
        recon = vae.decode(vae.denormalize(z), chunk_frames=1)        # [1, 3, 17, 64, 64]

    Buffers ``latents_mean`` and ``latents_std`` [C] (defaults 0 and 1) are saved with the weights; set them
    from data with ``set_latent_stats``.
    """

    latents_mean: Tensor
    latents_std: Tensor

    def __init__(self, config: VAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        c = self.config = config
        self.encoder = Encoder(c)
        self.quant = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)  # Wan's conv1
        self.post_quant = CausalConv3d(c.z_dim, c.z_dim, 1)  # Wan's conv2
        self.decoder = Decoder(c)
        self.register_buffer("latents_mean", torch.zeros(c.z_dim))
        self.register_buffer("latents_std", torch.ones(c.z_dim))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default conv init drawn from ``generator``, zero biases, identity norms.

        The attention output projections start at zero, so the attention blocks start as identities.
        """
        if any(p.is_meta for p in self.parameters()):
            return  # shapes only: nothing to draw
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, ChannelRMSNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # after the loop above, which would redraw them
            if isinstance(m, FrameAttention):
                nn.init.zeros_(m.proj.weight)

    # --- input checks --------------------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        c = self.config
        s, f = c.spatial_factor, c.temporal_factor
        if not isinstance(video, Tensor) or video.ndim != 5 or not video.is_floating_point():
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be a float tensor [B, {c.in_channels}, T, H, W], got {shape}")
        _, C, T, H, W = video.shape
        if C != c.in_channels:
            raise ValueError(
                f"video must have {c.in_channels} channels [B, {c.in_channels}, T, H, W], got {tuple(video.shape)}"
            )
        if (T - 1) % f:
            raise ValueError(f"video must have T = 1 + {f} k frames, got T = {T} in {tuple(video.shape)}")
        if H % s or W % s or H == 0 or W == 0:
            raise ValueError(
                f"video height and width must be positive multiples of the spatial factor {s}, "
                f"got {tuple(video.shape)}"
            )

    def _check_latents(self, z: Tensor, name: str = "z") -> None:
        C = self.config.z_dim
        if not isinstance(z, Tensor) or z.ndim != 5 or not z.is_floating_point():
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"{name} must be a float tensor [B, {C}, T', H', W'], got {shape}")
        if z.shape[1] != C or min(z.shape[2:]) < 1:
            raise ValueError(f"{name} must be [B, {C}, T', H', W'] with C = z_dim = {C}, got {tuple(z.shape)}")

    @staticmethod
    def _check_chunk(chunk_frames: int | None, multiple: int, unit: str) -> None:
        if chunk_frames is None:
            return
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int):
            raise TypeError(f"chunk_frames must be an int or None, got {chunk_frames!r}")
        if chunk_frames < 1 or chunk_frames % multiple:
            raise ValueError(f"chunk_frames must be a positive multiple of {multiple} {unit}, got {chunk_frames}")

    @staticmethod
    def _chunked(fn, x: Tensor, chunk_frames: int | None) -> Tensor:
        """fn over frame 0, then over groups of ``chunk_frames`` frames, sharing one cache; or one call."""
        if chunk_frames is None:
            return fn(x, None)
        cache: Cache = {}
        starts = range(1, x.shape[2], chunk_frames)
        pieces = [fn(x[:, :, :1], cache)] + [fn(x[:, :, s : s + chunk_frames], cache) for s in starts]
        return torch.cat(pieces, dim=2)

    # --- encode / decode -----------------------------------------------------------------------------------

    def encode(self, video: Tensor, *, chunk_frames: int | None = None) -> DiagonalGaussian:
        """Posterior over latents for a video.

        Args:
            video: [B, 3, T, H, W] pixels in [-1, 1], T = 1 + 4k (1 + temporal_factor k), H and W multiples
                of the spatial factor (8 for Wan2.1, ``config.spatial_factor``).
            chunk_frames: encode frame 0, then groups of this many frames (a multiple of the temporal
                factor) with a causal cache: the same result, with activation memory bounded by the chunk.
                None: the whole video at once.

        Returns:
            DiagonalGaussian with mean and logvar [B, C, T', H / s, W / s], T' = 1 + (T - 1) / 4; logvar is
            clamped to [-30, 20] (LDM) so that exp never overflows. Latents are *not* normalised: use
            ``normalize(posterior.sample(generator))`` for the diffusion model.
        """
        self._check_video(video)
        self._check_chunk(chunk_frames, self.config.temporal_factor, "pixel frames")
        h = self._chunked(self.encoder, video, chunk_frames)  # (B, 2C, T', H', W')
        mean, logvar = self.quant(h).chunk(2, dim=1)  # 2 x (B, C, T', H', W')
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: Tensor, *, chunk_frames: int | None = None) -> Tensor:
        """Pixels for (denormalised) latents.

        Args:
            z: [B, C, T', H', W'] latents as ``encode`` makes them (call ``denormalize`` first on latents
                from the diffusion model).
            chunk_frames: decode latent frame 0, then groups of this many latent frames with a causal cache
                (same result, bounded memory). None: all at once.

        Returns:
            [B, 3, 1 + 4 (T' - 1), s H', s W'] pixels, nominally in [-1, 1] (not clamped).
        """
        self._check_latents(z)
        self._check_chunk(chunk_frames, 1, "latent frames")
        decoder = self.decoder
        return self._chunked(lambda x, cache: decoder(self.post_quant(x), cache), z, chunk_frames)

    def forward(
        self, video: Tensor, *, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruction [B, 3, T, H, W] and posterior: decode(posterior.sample(generator) or .mode())."""
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    # --- latent normalisation ------------------------------------------------------------------------------

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.latents_mean.to(z.dtype).view(shape), self.latents_std.to(z.dtype).view(shape)

    def normalize(self, z: Tensor) -> Tensor:
        """(z - latents_mean) / latents_std per channel: [B, C, T', H', W'] -> same shape."""
        self._check_latents(z)
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of ``normalize``: z * latents_std + latents_mean."""
        self._check_latents(z)
        mean, std = self._stats(z)
        return z * std + mean

    @torch.no_grad()
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-channel latent statistics (each [C], std > 0, finite); saved with the weights."""
        C = self.config.z_dim
        for name, value in (("mean", mean), ("std", std)):
            if not isinstance(value, Tensor) or value.shape != (C,) or not value.is_floating_point():
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name} must be a float tensor [C] = [{C}], got {shape}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} must be finite, got {value.tolist()}")
        if (std <= 0).any():
            raise ValueError(f"std must be > 0 in every channel, got {std.tolist()}")
        self.latents_mean.copy_(mean)
        self.latents_std.copy_(std)

    # --- checkpoints ---------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``, atomically
        (:func:`wmgen.models.io.save_pretrained`)."""
        return save_pretrained(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> CausalVAE:
        """Load a checkpoint written by ``save_pretrained`` (safetensors only; nothing is unpickled)."""
        return load_pretrained(cls, VAEConfig, directory, device=device)


# ---------------------------------------------------------------------------------------------------------
# 4. presets

VAE_PRESETS: dict[str, VAEConfig] = {
    # 2 CPU cores: 64x64 x 17 frames -> latents 16 x 5 x 8 x 8 (matches DIT_PRESETS["tiny"])
    "tiny": VAEConfig(z_dim=16, base_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1,
                      temporal_downsample=(False, True, True)),
    # 2 CPU cores, 4x spatial: 64x64 x 17 frames -> latents 16 x 5 x 16 x 16 (DIT_PRESETS["tiny-s4"]); the
    # tiny recipe's choice: 12x compression keeps the rendered worlds' checkerboard floors (8x: 48x loses them)
    "tiny-s4": VAEConfig(z_dim=16, base_dim=16, dim_mult=(1, 2, 4), num_res_blocks=1,
                         temporal_downsample=(True, True)),
    # the same shapes at twice the width (~4x the compute): more reconstruction headroom over the
    # copy-first-frame baseline than tiny-s4's 21.9 dB (BENCHMARKS.md "Tiny world model")
    "small-s4": VAEConfig(z_dim=16, base_dim=32, dim_mult=(1, 2, 4), num_res_blocks=1,
                          temporal_downsample=(True, True)),
    # tiny-s4 with 32 latent channels (6x compression): the world-model check's twins show the 16-channel
    # ceiling is too low for any model to beat copy-first-frame (BENCHMARKS.md "Tiny world model")
    "tiny-s4-z32": VAEConfig(z_dim=32, base_dim=16, dim_mult=(1, 2, 4), num_res_blocks=1,
                             temporal_downsample=(True, True)),
    # Wan2.1's VAE shapes: 4x temporal, 8x spatial, 16 latent channels
    "wan2.1": VAEConfig(z_dim=16, base_dim=96, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                        temporal_downsample=(False, True, True)),
}  # fmt: skip
