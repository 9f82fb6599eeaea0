"""Control adapters: the extension point, one control's settings, and how several controls combine.

A control adapter steers a frozen ``VideoDiT`` through its one seam, ``hints = {block_index: [B, L, D]}``,
tensors added to the output of those blocks (DESIGN.md §3). An adapter reads the backbone's embeddings of
the current noisy latents (``VideoDiT.embed``) and a control input (tracks, depth maps, ...) and returns
the hints. Its output projections start at zero, so an untrained adapter leaves the backbone unchanged
(ControlNet's zero convolutions, Zhang et al. 2023).

Several controls compose (``compose_hints``): each has a scale -- a scalar or a spatiotemporal weight map --
and a time range in which it is active, and their weighted hints are summed. Weight maps follow
Cosmos-Transfer (NVIDIA 2025): where the maps of several controls add up to more than 1, they are divided
by their sum at that location, so overlapping controls share the location instead of overdriving it.

Checkpoints are ``save_pretrained`` folders (``config.json`` + ``model.safetensors``, DESIGN.md §2) holding
only the adapter: the backbone is frozen and saved on its own.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from einops import reduce
from safetensors.torch import load_file
from torch import Tensor, nn

from wmgen.config import ConfigError, from_dict
from wmgen.models.dit import DiTConfig, DiTEmbeddings
from wmgen.models.io import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = ["AdapterConfig", "Control", "ControlAdapter", "compose_hints", "weights_to_tokens"]

A = TypeVar("A", bound="ControlAdapter")


# ---------------------------------------------------------------------------------------------------------
# 1. the adapter ABC and its checkpoints


@dataclass(frozen=True)
class AdapterConfig:
    """What ``ControlAdapter.save_pretrained`` writes to ``config.json`` (besides ``_class_name``)."""

    kind: str  # control kind: "tracks", "depth", "edges", "mask", "map"
    backbone: DiTConfig  # the config of the backbone the adapter was built for
    args: dict[str, Any]  # the adapter's constructor keyword arguments (``constructor_args``), JSON values
    module: str  # Python module defining the adapter class (imported on load when it is inside ``controls``)


class ControlAdapter(nn.Module, ABC):
    """Base class of control adapters: ``hints(emb, control) -> {block_index: [B, L, D]}``.

    Subclasses implement ``hints`` and, to be saved, ``constructor_args``; they zero-initialise their output
    projections so that an untrained adapter leaves the backbone's output unchanged.

    DESIGN.md §3 sketches ``hints(tokens, t_emb, control)``. ``hints`` takes the whole ``DiTEmbeddings``
    instead, because a ControlNet copy of the backbone blocks also needs the block modulation, the projected
    text context and the RoPE table, not only the tokens and the time embedding.

    Example::

        backbone = VideoDiT(DIT_PRESETS["tiny"]).requires_grad_(False)
        adapter = DepthAdapter(backbone, num_blocks=2)            # a ControlAdapter
        emb = backbone.embed(x_t, t, context=text)                 # DiTEmbeddings of the noisy latents
        hints = adapter.hints(emb, MapControl("depth", maps))     # {0: [B, L, D], 1: [B, L, D]}
        v = backbone(x_t, t, context=text, hints=hints)
        # several controls, each with a scale and an active time range:
        hints = compose_hints([Control(adapter, MapControl("depth", maps), scale=0.8)], emb, t)

    Attributes:
        kind: the control kind this adapter consumes ("tracks", "depth", "edges", "mask", "map").
        blocks: sorted tuple of the backbone block indices that receive hints.
        backbone_config: config of the backbone this adapter was built for.
    """

    kind: str

    def __init__(self, backbone_config: DiTConfig, blocks: Sequence[int]):
        super().__init__()
        if not isinstance(backbone_config, DiTConfig):
            raise TypeError(f"backbone_config must be a DiTConfig, got {type(backbone_config).__name__}")
        n = backbone_config.num_layers
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) == 0:
            raise ValueError(f"blocks must be a non-empty sequence of block indices in range(0, {n}), got {blocks!r}")
        for b in blocks:
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < n:
                raise ValueError(
                    f"blocks: index {b!r} is not a block of the backbone; valid indices are the ints in "
                    f"range(0, {n}) (num_layers = {n}), got blocks={list(blocks)}"
                )
        duplicates = sorted({b for b in blocks if list(blocks).count(b) > 1})
        if duplicates:
            raise ValueError(f"blocks must be unique, got {list(blocks)} (repeated: {duplicates})")
        self.backbone_config = backbone_config
        self.blocks: tuple[int, ...] = tuple(sorted(blocks))

    @abstractmethod
    def hints(self, emb: DiTEmbeddings, control: Any) -> dict[int, Tensor]:
        """Hints for the backbone blocks ``self.blocks``.

        Args:
            emb: the backbone's ``VideoDiT.embed(x_t, t, ...)`` of the current noisy latents (tokens [B, L, D],
                t_emb, modulation, context, rope, grid).
            control: the control input (``TrackControl``, ``MapControl``, ...), see ``check_control``.

        Returns:
            {block_index: [B, L, D]}, keys among ``self.blocks``, to add to the output of those blocks.
        """

    def check_control(self, control: Any) -> Any:
        """Validate a control input for this adapter and return it (possibly normalised); raise ValueError /
        TypeError naming what is wrong. The default accepts anything."""
        return control

    # --- checkpoints ---------------------------------------------------------------------------------------

    def constructor_args(self) -> dict[str, Any]:
        """Keyword arguments (JSON values) that, with the backbone, rebuild this adapter's architecture."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define constructor_args(), so it cannot be saved with save_pretrained"
        )

    @classmethod
    def _build(cls: type[A], backbone_config: DiTConfig, args: dict[str, Any]) -> A:
        """An adapter of the saved architecture (called on the meta device by ``from_pretrained``)."""
        return cls(backbone_config, **args)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (class name, kind, backbone config, constructor arguments) and
        ``model.safetensors`` (the adapter's own weights, not the backbone's) into ``directory``, atomically."""
        config = AdapterConfig(self.kind, self.backbone_config, self.constructor_args(), type(self).__module__)
        return save_pretrained(self, config, directory)

    @classmethod
    def from_pretrained(cls: type[A], directory: str | os.PathLike, *, device: torch.device | str = "cpu") -> A:
        """Load an adapter written by ``save_pretrained`` (safetensors only; nothing is unpickled).

        Call it on the adapter's class, or on a base class (``ControlAdapter.from_pretrained(dir)``): the
        saved class is then looked up among the subclasses, importing its module first when that module is
        part of the ``controls`` package.
        """
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} not found: expected a ControlAdapter.save_pretrained folder"
                )
        meta = json.loads((directory / CONFIG_NAME).read_text())
        class_name = meta.pop("_class_name", None)
        try:
            config = from_dict(AdapterConfig, meta)
        except ConfigError as err:
            raise ValueError(f"{directory / CONFIG_NAME} is not a control adapter config: {err}") from None
        target = _find_adapter_class(cls, class_name, config.module, directory)
        with torch.device("meta"):
            adapter = target._build(config.backbone, dict(config.args))
        if adapter.kind != config.kind:
            raise ValueError(
                f"{directory / CONFIG_NAME} says kind={config.kind!r}, but {class_name} builds {adapter.kind!r}"
            )
        adapter.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)), assign=True)
        unset = [n for n, x in (*adapter.named_parameters(), *adapter.named_buffers()) if x.is_meta]
        if unset:  # e.g. a non-persistent buffer: the architecture holds state the checkpoint cannot restore
            raise ValueError(f"{class_name} has tensors that {directory / WEIGHTS_NAME} does not restore: {unset[:6]}")
        return adapter


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _find_adapter_class(cls: type[A], class_name: Any, module: str, directory: Path) -> type[A]:
    def lookup() -> type[A] | None:
        candidates = [c for c in (cls, *_subclasses(cls)) if c.__name__ == class_name and c.__module__ == module]
        return candidates[0] if candidates else None

    found = lookup()
    if found is None and (module == "controls" or module.startswith("controls.")):
        importlib.import_module(module)  # only our own package: a checkpoint never names code to import
        found = lookup()
    if found is None:
        raise ValueError(
            f"{directory / CONFIG_NAME} describes a {class_name!r} from module {module!r}, which is not "
            f"{cls.__name__} or one of its subclasses; import that module first or call from_pretrained on "
            "the right class"
        )
    return found


# ---------------------------------------------------------------------------------------------------------
# 2. one control: adapter + input + scale + active time range


@dataclass
class Control:
    """One control of a generation: an adapter, its input, how strongly and when it acts.

    Args:
        adapter: the ControlAdapter that turns ``input`` into hints.
        input: the control input (``TrackControl``, ``MapControl``, ...), checked by ``adapter.check_control``.
        scale: a finite scalar multiplying the hints (0 switches the control off), or a non-negative weight map
            giving the weight per location: [B|1, T, H, W] at pixel resolution (T = 1 + 4k frames),
            [B|1, T', H', W'] at latent resolution, or [B|1, L] per token (``weights_to_tokens``). Maps of
            several controls are normalised where they sum to more than 1 (``compose_hints``).
        t_range: (t0, t1) with 0 <= t0 <= t1 <= 1: the control acts while t0 <= t <= t1 (t = 0 noise, t = 1
            data), e.g. (0.0, 0.5) to shape only the coarse layout early in sampling.
        uncond: also apply the control to the unconditional branch of classifier-free guidance (so that CFG
            amplifies the text, not the control); False applies it to the conditional branch only.
    """

    adapter: ControlAdapter
    input: Any
    scale: float | Tensor = 1.0
    t_range: tuple[float, float] = (0.0, 1.0)
    uncond: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, ControlAdapter):
            raise TypeError(f"Control.adapter must be a ControlAdapter, got {type(self.adapter).__name__}")
        self.t_range = _check_t_range(self.t_range)
        self.scale = _check_scale(self.scale)
        if not isinstance(self.uncond, bool):
            raise TypeError(f"Control.uncond must be a bool, got {self.uncond!r}")

    @property
    def is_map(self) -> bool:
        """Whether ``scale`` is a weight map (normalised against other maps) rather than a scalar."""
        return isinstance(self.scale, Tensor) and self.scale.ndim > 0


def _check_t_range(t_range: Any) -> tuple[float, float]:
    ok = isinstance(t_range, (tuple, list)) and len(t_range) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in t_range)
    if not ok or not 0.0 <= t_range[0] <= t_range[1] <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"Control.t_range must be (t0, t1) with 0 <= t0 <= t1 <= 1, got {t_range!r}")
    return float(t_range[0]), float(t_range[1])


def _check_scale(scale: Any) -> float | Tensor:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, Tensor)):
        raise TypeError(
            f"Control.scale must be a float or a weight-map tensor [B|1, T, H, W] / [B|1, L], got {scale!r:.80}"
        )
    if not isinstance(scale, Tensor) or scale.ndim == 0:
        value = float(scale)
        if not math.isfinite(value):
            raise ValueError(f"Control.scale must be finite, got {value}")
        return value
    if not scale.is_floating_point():
        raise TypeError(f"Control.scale weight map must be a float tensor, got dtype {scale.dtype}")
    if scale.ndim not in (2, 4):
        raise ValueError(
            "Control.scale weight map must be [B|1, T, H, W] (pixel or latent frames) or [B|1, L] (tokens), "
            f"got {tuple(scale.shape)}"
        )
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ValueError(f"Control.scale weight map must be finite and >= 0, got min {scale.min().item()}")
    return scale


# ---------------------------------------------------------------------------------------------------------
# 3. composing several controls


def weights_to_tokens(
    weights: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], batch: int
) -> Tensor:
    """A weight map at pixel, latent or token resolution -> one weight per token [B, L].

    Pixel frames go to latent frames as the causal VAE groups them (frame 0 alone, then groups of f frames,
    averaged); latents go to tokens by averaging over each patch. The factors are derived from the map's
    shape and the token grid, and must be integers.

    Args:
        weights: [B|1, T, H, W] pixel (T = 1 + f (T' - 1)) or latent (T = T') resolution, or [B|1, L].
        grid: token grid (T'/pt, H'/ph, W'/pw) of the backbone (``DiTEmbeddings.grid``).
        patch: the backbone's patch (pt, ph, pw).
        batch: B.

    Returns:
        [B, L] weights, tokens in (t h w) order.
    """
    (Tg, Hg, Wg), pt = grid, patch[0]
    L = Tg * Hg * Wg
    if weights.shape[0] not in (1, batch):
        raise ValueError(f"weight map must have batch size 1 or B = {batch}, got {tuple(weights.shape)}")
    if weights.ndim == 2:
        if weights.shape[1] != L:
            raise ValueError(f"per-token weight map must be [B|1, L] = [{batch}, {L}], got {tuple(weights.shape)}")
        return weights.expand(batch, L)
    if weights.ndim != 4:
        raise ValueError(f"weight map must be [B|1, T, H, W] or [B|1, L], got {tuple(weights.shape)}")
    _, T, H, W = weights.shape
    T_lat = Tg * pt  # latent frames T'
    if T != T_lat:  # pixel frames: causal grouping, frame 0 alone then groups of f (f = VAE temporal factor)
        if T_lat == 1 or T < T_lat or (T - 1) % (T_lat - 1):
            raise ValueError(
                f"weight map has {T} frames; expected the {T_lat} latent frames or 1 + f * {T_lat - 1} pixel frames "
                f"(integer f) for the token grid {grid} with patch {patch}; got shape {tuple(weights.shape)}"
            )
        f = (T - 1) // (T_lat - 1)
        rest = reduce(weights[:, 1:], "b (t f) h w -> b t h w", "mean", f=f)  # (B|1, T' - 1, H, W)
        weights = torch.cat([weights[:, :1], rest], dim=1)  # (B|1, T', H, W)
    if H % Hg or W % Wg:
        raise ValueError(
            f"weight map spatial size {(H, W)} must be an integer multiple of the token grid {(Hg, Wg)} "
            f"(grid {grid}, patch {patch}); got shape {tuple(weights.shape)}"
        )
    tokens = reduce(
        weights, "b (t pt) (h fh) (w fw) -> b (t h w)", "mean", pt=pt, fh=H // Hg, fw=W // Wg
    )  # (B|1, L)
    return tokens.expand(batch, L)


def compose_hints(
    controls: Sequence[Control], emb: DiTEmbeddings, t: Tensor, *, branch: str = "cond"
) -> dict[int, Tensor]:
    """Sum of every active control's hints times its weight: ``{block_index: [B, L, D]}``.

    Per sample (or per token for per-token times), a control whose ``t_range`` does not contain t adds
    nothing; on the ``"uncond"`` branch controls with ``uncond=False`` are skipped. Scalar scales multiply
    the hints as they are. Weight maps are brought to one weight per token (``weights_to_tokens``) and,
    following Cosmos-Transfer, where the maps of the controls active at that token sum to more than 1, each
    is divided by that sum. A control whose weight is zero everywhere is not run at all, so scale 0 is
    exactly no control (an empty dict when nothing is active; ``VideoDiT(hints={})`` equals ``hints=None``).

    Args:
        controls: the controls; all built for the backbone that produced ``emb``.
        emb: ``VideoDiT.embed`` of the current noisy latents.
        t: [B] times in [0, 1] (a 0-dim tensor broadcasts), or per-token [B, L].
        branch: "cond" or "uncond" (the unconditional branch of classifier-free guidance).

    Returns:
        {block_index: [B, L, D]} in the tokens' dtype; blocks no control targets are absent.
    """
    if branch not in ("cond", "uncond"):
        raise ValueError(f"branch must be 'cond' or 'uncond', got {branch!r}")
    if isinstance(controls, Control) or not isinstance(controls, Sequence):
        raise TypeError(f"controls must be a sequence of Control, got {type(controls).__name__}")
    B, L, D = emb.tokens.shape
    dtype, device = emb.tokens.dtype, emb.tokens.device
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"t must be a float tensor [B] or [B, L], got {t!r:.80}")
    if t.ndim == 0:
        t = t.expand(B)
    if t.shape == (B,):
        t = t[:, None]  # (B, 1)
    elif t.shape != (B, L):
        raise ValueError(f"t must be [B] = [{B}] or per-token [B, L] = [{B}, {L}], got {tuple(t.shape)}")

    # 1. check every control (even those skipped below: a bad input is an error whatever the time)
    inputs = []
    for i, c in enumerate(controls):
        if not isinstance(c, Control):
            raise TypeError(f"controls[{i}] must be a Control, got {type(c).__name__}")
        if c.adapter.backbone_config.dim != D:
            raise ValueError(
                f"controls[{i}]: adapter built for a backbone of width {c.adapter.backbone_config.dim}, "
                f"but the embeddings have D = {D}"
            )
        inputs.append(c.adapter.check_control(c.input))

    # 2. weights [B, 1|L] per control: t-range gate, scalar scale or per-token map
    weights: list[Tensor | None] = []
    maps_total = torch.zeros(B, L, dtype=dtype, device=device)
    for c in controls:
        if branch == "uncond" and not c.uncond:
            weights.append(None)
            continue
        t0, t1 = c.t_range
        active = ((t >= t0) & (t <= t1)).to(dtype)  # (B, 1|L)
        if c.is_map:
            w = active * weights_to_tokens(c.scale, emb.grid, c.adapter.backbone_config.patch, B).to(device, dtype)
            maps_total = maps_total + w  # (B, L)
        else:
            w = active * c.scale  # (B, 1|L)
        weights.append(w)
    # Cosmos-Transfer: where the maps sum to more than 1, divide them all by the sum (scalars stay)
    divisor = torch.where(maps_total > 1, maps_total, torch.ones_like(maps_total))  # (B, L)
    weights = [w / divisor if w is not None and c.is_map else w for c, w in zip(controls, weights, strict=True)]

    # 3. run the adapters whose weight is non-zero somewhere and sum their weighted hints
    out: dict[int, Tensor] = {}
    for i, (c, x, w) in enumerate(zip(controls, inputs, weights, strict=True)):
        if w is None or not bool((w != 0).any()):
            continue
        hints = c.adapter.hints(emb, x)
        for k, h in hints.items():
            if k not in c.adapter.blocks or not isinstance(h, Tensor) or h.shape != (B, L, D):
                shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(
                    f"controls[{i}]: {type(c.adapter).__name__}.hints returned key {k!r} with {shape}; expected "
                    f"keys among its blocks {c.adapter.blocks} and [B, L, D] = [{B}, {L}, {D}] tensors"
                )
            h = w[..., None] * h  # (B, L, D)
            out[k] = out[k] + h if k in out else h
    return out
