"""ControlNet on a video DiT, and the dense-map controls built on it (depth, edges, instance masks, user maps).

``ControlNetAdapter`` (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models",
carried to DiTs as in PixArt-delta and Cosmos-Transfer)::

    control features [B, Cc, T', H', W'] --patchify, zero Linear--> + backbone tokens [B, L, D]
        --> copy of block 0 --> zero Linear --> hint for target block 0
        --> copy of block 1 --> zero Linear --> hint for target block 1 ...

The copies start as the backbone's own blocks (weights copied, not shared) and run with the backbone's
modulation, text context and RoPE table, so the branch starts from features the backbone already
understands; the zero-initialised input and output projections make an untrained adapter change nothing,
while the output projections still receive gradient at init (their input, the copied blocks' output, is
non-zero), which is what lets ControlNet training start.

Map controls (``MapControl``) are pixel-resolution maps [B, C, T, H, W]. Each map adapter owns a small
trainable encoder from pixels to the latent grid (``MapEncoder``): causal time grouping as the VAE does
(frame 0 alone, then groups of 4 frames; frame 0 is repeated to fill the first group), space-to-depth by the
VAE's spatial factor, then a 1x1x1 conv, SiLU and a causal 3x3x3 conv to ``control_channels``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from controls.base import ControlAdapter
from wmgen.models.dit import DiTConfig, DiTEmbeddings, VideoDiT, patchify
from wmgen.models.layers import get_attention_backend, maybe_checkpoint, upcast

__all__ = [
    "MAP_ADAPTERS",
    "MAP_KINDS",
    "ControlNetAdapter",
    "DepthAdapter",
    "EdgesAdapter",
    "MapAdapter",
    "MapControl",
    "MapEncoder",
    "MaskAdapter",
    "depth_to_map",
    "edges_from_video",
    "mask_to_map",
]


# ---------------------------------------------------------------------------------------------------------
# 1. ControlNet on the DiT


class ControlNetAdapter(ControlAdapter):
    """ControlNet (Zhang et al. 2023) on a DiT: a trainable copy of the first K backbone blocks.

    The copies are initialised from the backbone's weights; control features enter through a
    zero-initialised patch embedding added to the backbone tokens; each copied block's output goes through a
    zero-initialised Linear(D, D) and becomes the hint of its target block. The backbone is not a submodule
    (it stays frozen and is saved on its own); only the copies are.

    This base class takes ready control features at latent resolution; subclasses (``DepthAdapter`` ...)
    override ``features`` to encode their own inputs.

    Example::

        backbone = VideoDiT(DIT_PRESETS["tiny"]).requires_grad_(False)
        adapter = ControlNetAdapter(backbone, control_channels=16, num_blocks=2, target_blocks=[0, 2])
        emb = backbone.embed(x_t, t, context=text)
        v = backbone(x_t, t, context=text, hints=adapter.hints(emb, features))  # features [B, 16, T', H', W']

    Args:
        backbone: the VideoDiT whose first ``num_blocks`` blocks are copied.
        control_channels: channels Cc of the control features.
        num_blocks: K, number of copied blocks (1 <= K <= num_layers).
        target_blocks: backbone block receiving the hint of copy i, one per copy (e.g. [0, 2] spreads two
            copies over four blocks); default ``range(K)``, copy i -> block i.
        kind: the control kind consumed ("map" for raw feature tensors).

    Attributes:
        gradient_checkpointing: recompute the copied blocks in the backward pass instead of storing
            activations.
    """

    def __init__(
        self,
        backbone: VideoDiT,
        *,
        control_channels: int,
        num_blocks: int = 2,
        target_blocks: Sequence[int] | None = None,
        kind: str = "map",
    ):
        if not isinstance(backbone, VideoDiT):
            raise TypeError(f"backbone must be a VideoDiT, got {type(backbone).__name__}")
        n = backbone.config.num_layers
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 1 <= num_blocks <= n:
            raise ValueError(f"num_blocks must be an int in [1, {n}] (the backbone's num_layers), got {num_blocks!r}")
        if isinstance(control_channels, bool) or not isinstance(control_channels, int) or control_channels < 1:
            raise ValueError(f"control_channels must be a positive int, got {control_channels!r}")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty str, got {kind!r}")
        targets = list(range(num_blocks)) if target_blocks is None else list(target_blocks)
        if len(targets) != num_blocks:
            raise ValueError(
                f"target_blocks must give one backbone block per copied block (num_blocks = {num_blocks}), "
                f"got {targets}"
            )
        super().__init__(backbone.config, targets)  # checks indices: ints in range(num_layers), unique
        c = backbone.config
        self.kind = kind
        self.control_channels = control_channels
        self.target_blocks: tuple[int, ...] = tuple(targets)  # copy i -> backbone block target_blocks[i]
        self.gradient_checkpointing = False
        self.control_embed = nn.Linear(control_channels * c.patch_volume, c.dim)
        self.copies = nn.ModuleList(copy.deepcopy(backbone.blocks[i]) for i in range(num_blocks))
        self.zero_proj = nn.ModuleList(nn.Linear(c.dim, c.dim) for _ in range(num_blocks))
        if not any(p.is_meta for p in self.parameters()):
            for m in (self.control_embed, *self.zero_proj):  # ControlNet's zero convolutions
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        # A frozen backbone's blocks are copied frozen; the adapter is what gets trained.
        self.copies.requires_grad_(True)

    def constructor_args(self) -> dict[str, Any]:
        return {
            "control_channels": self.control_channels,
            "num_blocks": len(self.copies),
            "target_blocks": list(self.target_blocks),
            "kind": self.kind,
        }

    @classmethod
    def _build(cls, backbone_config: DiTConfig, args: dict[str, Any]) -> ControlNetAdapter:
        # The block copies only need the architecture; their weights come from the checkpoint.
        return cls(VideoDiT(backbone_config), **args)

    def features(self, control: Any) -> Tensor:
        """Control features [B, Cc, T', H', W'] at latent resolution. The base class takes them ready-made."""
        return control

    def check_control(self, control: Any) -> Any:
        """The base class accepts a finite float tensor [B, Cc, T', H', W'] with Cc = control_channels."""
        if not isinstance(control, Tensor) or control.ndim != 5 or not control.is_floating_point():
            got = f"{tuple(control.shape)} {control.dtype}" if isinstance(control, Tensor) else type(control).__name__
            raise TypeError(f"{type(self).__name__} control must be a float tensor [B, Cc, T', H', W'], got {got}")
        if control.shape[1] != self.control_channels:
            raise ValueError(
                f"control features must have Cc = control_channels = {self.control_channels} channels, "
                f"got {tuple(control.shape)}"
            )
        if not bool(torch.isfinite(control).all()):
            raise ValueError("control features contain NaN or inf")
        return control

    def embed_control(self, emb: DiTEmbeddings, control: Any) -> Tensor:
        """The control's contribution to the tokens the copied blocks start from: [B, L, D] fp32.

        ``control_embed(patchify(features(control)))``; subclasses may add terms that read ``emb``.

        Args:
            emb: ``VideoDiT.embed`` output of the backbone.
            control: the control input, already checked by ``check_control``.
        """
        feats = self.features(control)  # (B, Cc, T', H', W')
        B = emb.tokens.shape[0]
        pt, ph, pw = self.backbone_config.patch
        latent = tuple(g * p for g, p in zip(emb.grid, (pt, ph, pw), strict=True))
        if feats.shape != (B, self.control_channels, *latent):
            raise ValueError(
                f"control features must match the latents [B, Cc, T', H', W'] = [{B}, {self.control_channels}, "
                f"{', '.join(map(str, latent))}] (token grid {emb.grid}, patch {(pt, ph, pw)}), "
                f"got {tuple(feats.shape)}"
            )
        return upcast(self.control_embed(patchify(feats, (pt, ph, pw))))  # (B, L, D)

    def hints(self, emb: DiTEmbeddings, control: Any) -> dict[int, Tensor]:
        """Run the copied blocks on the backbone tokens plus the embedded control (``embed_control``).

        Args:
            emb: ``VideoDiT.embed`` output of the backbone (tokens [B, L, D], modulation, context, rope, grid).
            control: the control input, checked by ``check_control`` and encoded by ``features``.

        Returns:
            {target_blocks[i]: [B, L, D]} in fp32, one hint per copied block.
        """
        h = emb.tokens + self.embed_control(emb, self.check_control(control))  # (B, L, D)
        backend = get_attention_backend()
        out: dict[int, Tensor] = {}
        for target, block, proj in zip(self.target_blocks, self.copies, self.zero_proj, strict=True):
            h = maybe_checkpoint(block, h, emb.modulation, emb.context, emb.rope, backend,
                                 enabled=self.gradient_checkpointing)  # (B, L, D)
            out[target] = upcast(proj(h))  # (B, L, D)
        return out


# ---------------------------------------------------------------------------------------------------------
# 2. map controls: inputs and their preprocessing

MAP_KINDS = ("depth", "edges", "mask", "map")
MAX_OBJECTS = 4  # default object channels of mask_to_map (the worlds hold 1-3 objects by default)


def depth_to_map(depth: Tensor) -> Tensor:
    """Metric depth -> a disparity-like map in [0, 1]: 1 / depth divided by its maximum over the clip.

    Disparity, normalised per clip, is what monocular depth estimators (MiDaS, Depth Anything) produce and
    what depth ControlNets are trained on: scale-free, near objects bright, and it keeps the sky (depth 0,
    nothing hit) at 0, the far end.

    Args:
        depth: [B, T, H, W] camera-frame depth in metres, 0 where nothing is hit (sky).

    Returns:
        [B, 1, T, H, W] fp32 in [0, 1]; a clip that is all sky maps to zeros.
    """
    if not isinstance(depth, Tensor) or depth.ndim != 4 or not depth.is_floating_point():
        got = f"{tuple(depth.shape)} {depth.dtype}" if isinstance(depth, Tensor) else type(depth).__name__
        raise ValueError(f"depth must be a float tensor [B, T, H, W] in metres, got {got}")
    depth = depth.float()
    if not bool(torch.isfinite(depth).all()) or bool((depth < 0).any()):
        raise ValueError("depth must be finite and >= 0 (metres, 0 = sky)")
    disparity = torch.where(depth > 0, 1.0 / depth.clamp_min(torch.finfo(depth.dtype).tiny), 0.0)  # (B, T, H, W)
    peak = disparity.amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1) nearest point of each clip
    return (disparity / peak.clamp_min(torch.finfo(depth.dtype).tiny))[:, None]  # (B, 1, T, H, W)


def edges_from_video(video: Tensor, *, low_threshold: float = 0.1, high_threshold: float = 0.2) -> Tensor:
    """Canny edges of every frame (``kornia.filters.canny``: Gaussian blur, Sobel, non-maximum suppression,
    hysteresis) on the grey-scale frame in [0, 1].

    Args:
        video: [B, 3, T, H, W] RGB in [-1, 1].
        low_threshold: hysteresis lower threshold on the gradient magnitude (grey levels in [0, 1]).
        high_threshold: hysteresis upper threshold.

    Returns:
        [B, 1, T, H, W] fp32, 1 on edges and 0 elsewhere.
    """
    if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
        got = f"{tuple(video.shape)} {video.dtype}" if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"video must be a float tensor [B, 3, T, H, W] in [-1, 1], got {got}")
    if not 0 <= low_threshold < high_threshold:
        raise ValueError(f"need 0 <= low_threshold < high_threshold, got {low_threshold}, {high_threshold}")
    B = video.shape[0]
    frames = rearrange((video.float() + 1) / 2, "b c t h w -> (b t) c h w")  # (B T, 3, H, W) in [0, 1]
    _, edges = kornia.filters.canny(frames, low_threshold=low_threshold, high_threshold=high_threshold)
    return rearrange(edges, "(b t) 1 h w -> b 1 t h w", b=B).float()  # (B, 1, T, H, W)


def mask_to_map(mask: Tensor, *, num_objects: int = MAX_OBJECTS) -> Tensor:
    """Instance mask -> one-hot channels [background, object 0, ..., object num_objects - 1].

    One-hot (rather than, say, a sinusoidal code of the id) because the worlds' object ids are small
    indices whose identity matters (object k is the same object in every frame), and a one-hot map keeps
    objects separable by a 1x1 conv.

    Args:
        mask: [B, T, H, W] integer object index, -1 for background.
        num_objects: object channels; ids must be in [-1, num_objects - 1].

    Returns:
        [B, num_objects + 1, T, H, W] fp32 in {0, 1}, exactly one 1 per pixel.
    """
    if not isinstance(mask, Tensor) or mask.ndim != 4:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be an integer tensor [B, T, H, W] (-1 = background), got {got}")
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(f"mask must have an integer dtype (object index, -1 = background), got {mask.dtype}")
    if mask.numel() and (int(mask.min()) < -1 or int(mask.max()) >= num_objects):
        raise ValueError(
            f"mask ids must be in [-1, {num_objects - 1}] (num_objects = {num_objects}), got "
            f"[{int(mask.min())}, {int(mask.max())}]; pass a larger num_objects"
        )
    onehot = F.one_hot(mask.long() + 1, num_objects + 1)  # (B, T, H, W, 1 + num_objects)
    return rearrange(onehot, "b t h w c -> b c t h w").float()


@dataclass
class MapControl:
    """A dense-map control: per-pixel maps of a video.

    Args:
        kind: "depth", "edges", "mask" or "map" (user maps); must match the adapter's kind.
        maps: [B, C, T, H, W] float maps at pixel resolution, finite; T = 1 + 4k frames for the default causal
            VAE (the adapter checks T, H, W against its VAE factors and the latent grid).

    Example::

        batch = WorldDataset.collate([ds[0], ds[1]])
        control = MapControl.from_world("depth", batch)       # maps [2, 1, T, H, W]
    """

    kind: str
    maps: Tensor

    def __post_init__(self) -> None:
        if self.kind not in MAP_KINDS:
            raise ValueError(f"MapControl.kind must be one of {list(MAP_KINDS)}, got {self.kind!r}")
        m = self.maps
        if not isinstance(m, Tensor) or not m.is_floating_point():
            got = m.dtype if isinstance(m, Tensor) else type(m).__name__
            raise TypeError(f"MapControl.maps must be a float tensor [B, C, T, H, W], got {got}")
        if m.ndim != 5 or 0 in m.shape:
            raise ValueError(f"MapControl.maps must be a non-empty [B, C, T, H, W] tensor, got {tuple(m.shape)}")
        if not bool(torch.isfinite(m).all()):
            raise ValueError(f"MapControl.maps ({self.kind}) contains NaN or inf")

    @classmethod
    def from_world(cls, kind: str, batch: Mapping[str, Any], *, num_objects: int = MAX_OBJECTS) -> MapControl:
        """Build the map of ``kind`` from a ``physics.worlds.WorldDataset.collate`` batch.

        depth: ``depth_to_map(batch["depth"])``; edges: ``edges_from_video(batch["video"])``; mask:
        ``mask_to_map(batch["mask"], num_objects=num_objects)``. "map" has no world source.
        """
        sources = {"depth": ("depth", depth_to_map), "edges": ("video", edges_from_video),
                   "mask": ("mask", lambda m: mask_to_map(m, num_objects=num_objects))}  # fmt: skip
        if kind not in sources:
            raise ValueError(f"from_world kind must be one of {sorted(sources)}, got {kind!r}")
        key, fn = sources[kind]
        if not isinstance(batch, Mapping) or key not in batch:
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"from_world({kind!r}) needs batch[{key!r}] (a WorldDataset.collate batch), got {got}")
        return cls(kind, fn(batch[key]))


# ---------------------------------------------------------------------------------------------------------
# 3. map adapters


class MapEncoder(nn.Module):
    """Pixel maps [B, C, T, H, W] -> control features [B, Cc, T', H / s, W / s] on the latent grid.

    1. causal time grouping as the causal VAE: frame 0 alone, then groups of f frames; frame 0 is repeated
       f - 1 times in front so that every group holds f frames;
    2. space-to-depth by the VAE's spatial factor s: each latent voxel sees its C f s^2 pixel values;
    3. 1x1x1 conv -> SiLU -> 3x3x3 conv, causal in time (zero-padded in front only, so latent frame j sees
       pixel frames up to its own, like the VAE).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_factor: int,
        temporal_factor: int,
        hidden_channels: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.spatial_factor, self.temporal_factor = spatial_factor, temporal_factor
        self.pointwise = nn.Conv3d(in_channels * temporal_factor * spatial_factor**2, hidden_channels, 1)
        self.conv = nn.Conv3d(hidden_channels, out_channels, 3)
        if not any(p.is_meta for p in self.parameters()):
            for m in (self.pointwise, self.conv):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, maps: Tensor) -> Tensor:
        """maps [B, C, T, H, W], T = 1 + f k, H and W multiples of s -> [B, Cc, 1 + k, H / s, W / s]."""
        f, s = self.temporal_factor, self.spatial_factor
        x = torch.cat([maps[:, :, :1].expand(-1, -1, f - 1, -1, -1), maps], dim=2)  # (B, C, f (1 + k), H, W)
        x = rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=f, fh=s, fw=s)  # (B, C f s s, T', ..)
        x = F.silu(self.pointwise(x))  # (B, hidden, T', H', W')
        return self.conv(F.pad(x, (1, 1, 1, 1, 2, 0)))  # (B, Cc, T', H', W')


class MapAdapter(ControlNetAdapter):
    """ControlNet for dense per-pixel maps (``MapControl``) with a trainable pixel -> latent ``MapEncoder``.

    ``MapAdapter`` takes user maps of ``in_channels`` channels (kind "map"); ``DepthAdapter``,
    ``EdgesAdapter`` and ``MaskAdapter`` fix the kind and the channel count.

    Example::

        adapter = MapAdapter(backbone, in_channels=3, num_blocks=2)
        hints = adapter.hints(backbone.embed(x_t, t), MapControl("map", normals))   # normals [B, 3, T, H, W]

    Args:
        backbone: the VideoDiT whose first ``num_blocks`` blocks are copied.
        in_channels: channels C of the maps.
        control_channels: channels Cc of the encoded features; default the backbone's latent channels.
        num_blocks, target_blocks: as in ``ControlNetAdapter``.
        spatial_factor: the VAE's spatial downsampling s (pixels per latent along H and W).
        temporal_factor: the VAE's temporal downsampling f (T = 1 + f (T' - 1) pixel frames).
        hidden_channels: width of the encoder between its two convolutions.
        generator: draws the encoder's initial weights.
    """

    kind = "map"

    def __init__(
        self,
        backbone: VideoDiT,
        *,
        in_channels: int,
        control_channels: int | None = None,
        num_blocks: int = 2,
        target_blocks: Sequence[int] | None = None,
        spatial_factor: int = 8,
        temporal_factor: int = 4,
        hidden_channels: int = 64,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(backbone, VideoDiT):
            raise TypeError(f"backbone must be a VideoDiT, got {type(backbone).__name__}")
        for name, value in (("in_channels", in_channels), ("spatial_factor", spatial_factor),
                            ("temporal_factor", temporal_factor), ("hidden_channels", hidden_channels)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        control_channels = backbone.config.in_channels if control_channels is None else control_channels
        super().__init__(
            backbone, control_channels=control_channels, num_blocks=num_blocks, target_blocks=target_blocks,
            kind=type(self).kind,
        )  # fmt: skip
        self.in_channels = in_channels
        self.spatial_factor, self.temporal_factor = spatial_factor, temporal_factor
        self.hidden_channels = hidden_channels
        self.encoder = MapEncoder(
            in_channels, control_channels, spatial_factor=spatial_factor, temporal_factor=temporal_factor,
            hidden_channels=hidden_channels, generator=generator,
        )  # fmt: skip

    def constructor_args(self) -> dict[str, Any]:
        args = super().constructor_args()
        del args["kind"]  # fixed by the class
        return {**args, "in_channels": self.in_channels, "spatial_factor": self.spatial_factor,
                "temporal_factor": self.temporal_factor, "hidden_channels": self.hidden_channels}  # fmt: skip

    def check_control(self, control: Any) -> MapControl:
        """A ``MapControl`` of this adapter's kind with ``in_channels`` channels, T = 1 + f k frames and H, W
        multiples of the spatial factor s."""
        if not isinstance(control, MapControl):
            raise TypeError(f"{type(self).__name__} needs a MapControl, got {type(control).__name__}")
        if control.kind != self.kind:
            raise ValueError(f"{type(self).__name__} takes MapControl kind {self.kind!r}, got {control.kind!r}")
        B, C, T, H, W = control.maps.shape
        f, s = self.temporal_factor, self.spatial_factor
        if C != self.in_channels:
            raise ValueError(
                f"{self.kind!r} maps must have C = {self.in_channels} channels, got {tuple(control.maps.shape)}"
            )
        if (T - 1) % f or H % s or W % s:
            raise ValueError(
                f"{self.kind!r} maps [B, C, T, H, W] need T = 1 + {f} k frames and H, W multiples of the VAE's "
                f"spatial factor {s}, got {tuple(control.maps.shape)}"
            )
        return control

    def features(self, control: MapControl) -> Tensor:
        """Encoded maps [B, Cc, T', H', W'] (``MapEncoder``)."""
        return self.encoder(control.maps.to(self.encoder.conv.weight.dtype))

    def hints(self, emb: DiTEmbeddings, control: Any) -> dict[int, Tensor]:
        """``ControlNetAdapter.hints`` after checking that the maps cover the latent grid of ``emb``."""
        control = self.check_control(control)
        B = emb.tokens.shape[0]
        T_lat, H_lat, W_lat = (g * p for g, p in zip(emb.grid, self.backbone_config.patch, strict=True))
        f, s = self.temporal_factor, self.spatial_factor
        expected = (B, self.in_channels, 1 + f * (T_lat - 1), s * H_lat, s * W_lat)
        if control.maps.shape != expected:
            raise ValueError(
                f"{self.kind!r} maps must be [B, C, T, H, W] = {list(expected)} to match the latents "
                f"[T', H', W'] = {[T_lat, H_lat, W_lat]} (token grid {emb.grid}, VAE factors f={f}, s={s}), "
                f"got {list(control.maps.shape)}"
            )
        return super().hints(emb, control)


class _OneChannelMapAdapter(MapAdapter):
    """A ``MapAdapter`` whose maps have one channel (``MapAdapter``'s arguments without ``in_channels``)."""

    def __init__(self, backbone: VideoDiT, **kwargs: Any):
        super().__init__(backbone, in_channels=1, **kwargs)

    def constructor_args(self) -> dict[str, Any]:
        args = super().constructor_args()
        del args["in_channels"]
        return args


class DepthAdapter(_OneChannelMapAdapter):
    """``MapAdapter`` for ``depth_to_map`` disparity maps (kind "depth", 1 channel)."""

    kind = "depth"


class EdgesAdapter(_OneChannelMapAdapter):
    """``MapAdapter`` for ``edges_from_video`` Canny edge maps (kind "edges", 1 channel)."""

    kind = "edges"


class MaskAdapter(MapAdapter):
    """``MapAdapter`` for ``mask_to_map`` one-hot instance masks (kind "mask", 1 + num_objects channels)."""

    kind = "mask"

    def __init__(self, backbone: VideoDiT, *, num_objects: int = MAX_OBJECTS, **kwargs: Any):
        if isinstance(num_objects, bool) or not isinstance(num_objects, int) or num_objects < 1:
            raise ValueError(f"num_objects must be a positive int, got {num_objects!r}")
        super().__init__(backbone, in_channels=num_objects + 1, **kwargs)
        self.num_objects = num_objects

    def constructor_args(self) -> dict[str, Any]:
        args = super().constructor_args()
        del args["in_channels"]
        return {**args, "num_objects": self.num_objects}


MAP_ADAPTERS: dict[str, type[MapAdapter]] = {
    "depth": DepthAdapter,
    "edges": EdgesAdapter,
    "mask": MaskAdapter,
    "map": MapAdapter,
}
