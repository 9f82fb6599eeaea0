"""Recipe: train a control adapter on a frozen world model (`wmgen train adapter --kind tracks|depth|edges|mask`).

The backbone (VideoDiT and its null text embedding, from a ``WorldModel`` directory written by
``wmgen train flow``) is frozen; only the adapter learns, by the same conditional flow-matching loss as the
backbone (``wmgen.train.flow``) with the adapter's hints added:

    L = E |v_theta(x_t, t | text, first frame, hints_phi(control)) - (x1 - x0)|^2,    only phi trained

Controls come from the simulator's ground truth of the same clip: for ``tracks``, a random number of tracks
per clip (log-uniform from ``min_tracks`` to ``max_tracks``, ``controls.tracks.sample_tracks``) so that a
handful of user drags and dense tracks both work; for dense maps, the clip's depth, Canny edges of its frames
or its instance masks (``controls.controlnet.MapControl.from_world``). With probability ``control_dropout``
a sample gets no control (hints zeroed) so the adapted model keeps its unconditional behaviour.

With ``object_weight`` > 0 the training loss weighs latent cells that show an object (instance masks) by
1 + object_weight: the controls act on objects, which cover a few percent of the frame, and a positive weight
per cell changes where the gradient looks, not the velocity that minimises each cell's error.
Latents come pre-encoded (``wmgen data encode`` of the same world dataset, checked by clip count) or are
encoded on the fly, in the backbone's coordinates (still residuals for a still-residual backbone). Validation
reports the loss (unweighted) with the control and, on the same noise, without it: the gap is how much the
adapter tells the model. Export: ``<out>/adapter`` (``ControlAdapter.save_pretrained``, EMA weights).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wmgen.config import validate
from wmgen.train.common import (
    Distributed,
    LoopConfig,
    Trainer,
    example_generators,
    global_batch_indices,
)
from wmgen.train.flow import CaptionTable, LatentClips, _time_sampler, velocity_error

__all__ = ["ADAPTER_KINDS", "AdapterModule", "AdapterTrainConfig", "build_adapter", "train_adapter"]

ADAPTER_KINDS = ("tracks", "depth", "edges", "mask")


@dataclass(frozen=True)
class AdapterTrainConfig:
    """`wmgen train adapter`: which adapter, the frozen model, data and the loop."""

    kind: Literal["tracks", "depth", "edges", "mask"] = "tracks"  # control family
    model: str = ""  # WorldModel directory of the frozen backbone (wmgen train flow)
    data: str = ""  # training world dataset (ground-truth tracks, depth, masks)
    val_data: str = ""  # held-out world dataset
    latents: str = ""  # pre-encoded latents of `data` (wmgen data encode); empty: encode on the fly
    val_latents: str = ""  # pre-encoded latents of `val_data`
    out: str = "outputs/adapter"  # run directory: checkpoints/, metrics.jsonl, adapter/
    num_blocks: int = field(default=2, metadata={"range": (1, None)})  # backbone blocks copied (ControlNet)
    target_blocks: tuple[int, ...] = ()  # backbone block per copy; empty: copy i -> block i
    id_dim: int = field(default=64, metadata={"range": (2, None)})  # tracks: sinusoidal ID channels
    min_tracks: int = field(default=1, metadata={"range": (1, None)})  # tracks: fewest sampled per clip
    max_tracks: int = field(default=0, metadata={"range": (0, None)})  # tracks: most per clip; 0: all stored
    carry: bool = False  # tracks: also carry each track's first-frame token along it (TrackAdapter carry)
    control_dropout: float = field(default=0.1, metadata={"range": (0.0, 1.0)})  # P(no control for a sample)
    object_weight: float = field(default=0.0, metadata={"range": (0.0, None)})  # extra loss weight, object cells
    text_dropout: float = field(default=0.1, metadata={"range": (0.0, 1.0)})  # as in the backbone's training
    time_sampler: Literal["logit_normal", "uniform"] = "logit_normal"
    train_shift: float = field(default=1.0, metadata={"range": (1e-3, 1e3)})
    val_clips: int = field(default=64, metadata={"range": (1, None)})
    val_times: int = field(default=8, metadata={"range": (1, None)})
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=2000, batch_size=16, lr=2e-4, warmup_steps=100, val_every=500)
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_blocks, list):
            object.__setattr__(self, "target_blocks", tuple(self.target_blocks))
        validate(self)
        if self.carry and self.kind != "tracks":
            raise ValueError(f"carry is an option of the tracks adapter, got kind = {self.kind!r} with carry = True")


def build_adapter(config: AdapterTrainConfig, world: Any, generator: torch.Generator | None = None) -> nn.Module:
    """A fresh adapter of ``config.kind`` for the world model's backbone and VAE factors."""
    from controls.controlnet import DepthAdapter, EdgesAdapter, MaskAdapter
    from controls.tracks import TrackAdapter

    vae = world.vae.config
    common = {
        "num_blocks": config.num_blocks,
        "target_blocks": list(config.target_blocks) or None,
        "spatial_factor": vae.spatial_factor,
        "temporal_factor": vae.temporal_factor,
        "generator": generator,
    }
    if config.kind == "tracks":
        size = world.config.resolution
        return TrackAdapter(world.dit, frame_size=(size, size), id_dim=config.id_dim, carry=config.carry, **common)
    adapters = {"depth": DepthAdapter, "edges": EdgesAdapter, "mask": MaskAdapter}
    return adapters[config.kind](world.dit, **common)


class AdapterModule(nn.Module):
    """Frozen backbone (DiT + null text) and the trainable adapter: v with the adapter's hints."""

    def __init__(self, dit: nn.Module, null_text: nn.Module, adapter: nn.Module):
        super().__init__()
        self.dit, self.null_text, self.adapter = dit, null_text, adapter
        self.dit.requires_grad_(False)
        self.null_text.requires_grad_(False)

    def forward(
        self, x_t: Tensor, t: Tensor, context: Tensor, drop: Tensor, image: Tensor | None, control: Any,
        keep: Tensor | None = None,
    ) -> Tensor:
        """v [b, C, T', H', W']; ``keep`` [b] bool zeroes the hints of samples without control (None: all)."""
        context = self.null_text(context, drop)
        if control is None:
            return self.dit(x_t, t, context=context, image_latent=image)
        emb = self.dit.embed(x_t, t, context=context, image_latent=image)
        hints = self.adapter.hints(emb, control)
        if keep is not None:
            w = keep.to(x_t.dtype).view(-1, 1, 1)
            hints = {k: h * w for k, h in hints.items()}
        return self.dit(x_t, t, context=context, image_latent=image, hints=hints)


def _control(config: AdapterTrainConfig, items: list[dict[str, Any]], gens: list[torch.Generator], device) -> Any:
    """The control input of a batch of world-dataset items (ground truth of the same clips); clip j's random
    choices (which tracks) come from gens[j]."""
    from controls.controlnet import MapControl
    from controls.tracks import TrackControl, sample_tracks

    if config.kind == "tracks":
        per_clip = [
            sample_tracks(it["tracks"][None], it["visible"][None], generator=g, min_tracks=config.min_tracks,
                          max_tracks=config.max_tracks or None)
            for it, g in zip(items, gens, strict=True)
        ]  # fmt: skip
        control = TrackControl(
            torch.cat([c.tracks for c in per_clip]),  # (b, T, N, 2)
            torch.cat([c.visible for c in per_clip]),  # (b, T, N)
            torch.cat([c.ids for c in per_clip]),  # (b, N)
        )
        return control.to(device)
    batch = {
        "video": torch.stack([it["video"] for it in items]).to(device),
        "depth": torch.stack([it["depth"] for it in items]).to(device),
        "mask": torch.stack([it["mask"] for it in items]).to(device),
    }
    return MapControl.from_world(config.kind, batch)


def train_adapter(config: AdapterTrainConfig, *, resume: bool = False) -> Path:
    """Train (or ``resume``) an adapter on the frozen world model; returns ``<out>/adapter``."""
    from physics.worlds import WorldDataset
    from wmgen.pipeline import WorldModel

    for name in ("model", "data", "val_data"):
        if not getattr(config, name):
            raise ValueError(f"{name} must be given (a directory), got ''")
    loop = config.loop
    out = Path(config.out)
    with Distributed() as d:
        world = WorldModel.from_pretrained(config.model, device=d.device)
        train_set, val_set = WorldDataset(config.data, in_memory=True), WorldDataset(config.val_data, in_memory=True)
        train = LatentClips(world.vae, latents=config.latents, data=config.data, device=d.device)
        val = LatentClips(world.vae, latents=config.val_latents, data=config.val_data, device=d.device)
        for clips, dataset, name in ((train, train_set, "latents"), (val, val_set, "val_latents")):
            clips.check_first_clips_of(dataset, name)
        if world.residual_scale is not None:  # the backbone generates still residuals: train in its coordinates
            for clips in (train, val):
                clips.use_residual(world.residual_scale.cpu())
        if config.object_weight > 0:
            train.use_object_weight(config.object_weight)  # validation stays unweighted
        encoder = world.text_encoder
        captions = CaptionTable(train.captions + val.captions, encoder, progress=loop.progress and d.is_main)
        adapter = build_adapter(config, world, generator=torch.Generator().manual_seed(loop.seed))
        module = AdapterModule(world.dit, world.null_text, adapter).to(d.device)
        if not resume and (out / "checkpoints").exists():
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another out")
        if loop.parallel == "fsdp":
            raise ValueError(
                "loop.parallel = 'fsdp' is for backbone training; adapters train with 'ddp' (the frozen backbone "
                "is replicated, only the adapter's gradients are reduced)"
            )
        trainer = Trainer(module, loop, out, dist=d, config=config)
        if resume:
            trainer.resume()
        sampler = _time_sampler(config)

        def batch(clips, dataset, idx: Tensor, gens: list[torch.Generator], dropout: bool) -> tuple[Any, ...]:
            # every random number of clip j comes from gens[j]: the same however the global batch is split
            x1 = clips.sample(idx, gens)  # (b, C, T', H', W')
            items = [dataset[int(i)] for i in idx]
            context = captions.lookup([clips.captions[int(i)] for i in idx]).to(d.device)  # (b, Lc, Dc)
            u = torch.stack([torch.rand(2, generator=g) for g in gens])  # (b, 2): text and control dropout
            drop = (u[:, 0] < (config.text_dropout if dropout else 0.0)).to(d.device)
            keep = (u[:, 1] >= (config.control_dropout if dropout else 0.0)).to(d.device)
            control = _control(config, items, gens, d.device)
            image = x1[:, :, 0] if world.dit.config.image_to_video else None  # (b, C, H', W')
            x0 = torch.stack([torch.randn(x1.shape[1:], generator=g) for g in gens]).to(d.device)
            return x1, x0, context, drop, image, control, keep

        def loss_fn(step: int, micro: int, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            part = trainer.part(micro)
            idx = global_batch_indices(len(train), loop.batch_size, step, loop.seed)[part]
            gens = example_generators(loop.seed, step, loop.batch_size)[part]
            x1, x0, context, drop, image, control, keep = batch(train, train_set, idx, gens, dropout=True)
            t = torch.cat([sampler.sample(1, generator=g) for g in gens]).to(d.device)  # (b,)
            tt = t.view(-1, 1, 1, 1, 1)
            v = trainer.model((1 - tt) * x0 + tt * x1, t, context, drop, image, control, keep)
            weight = train.object_weights(idx) if config.object_weight > 0 else None  # (b, 1, T', H', W')
            return velocity_error(v, x1, x0, world.dit.pinned_frames(image), weight).mean(), {}

        def ema_module() -> AdapterModule:
            model = copy.deepcopy(module)
            model.load_state_dict(trainer.ema_state(), strict=False)
            return model.eval()

        @torch.no_grad()
        def validate_fn(step: int) -> dict[str, Any]:
            if not d.is_main:
                return {}
            model = ema_module()
            n = min(config.val_clips, len(val))
            with_c, without = [], []
            for k in range(config.val_times):
                t_k = (k + 0.5) / config.val_times
                gens = example_generators(12345, k, n)  # the same noise and tracks at every validation
                for start in range(0, n, 16):
                    idx = torch.arange(start, min(start + 16, n))
                    x1, x0, context, drop, image, control, _ = batch(
                        val, val_set, idx, gens[start : start + 16], dropout=False
                    )
                    x_t = (1 - t_k) * x0 + t_k * x1
                    t = torch.full((len(idx),), t_k, device=d.device)
                    k = world.dit.pinned_frames(image)
                    with_c.append(velocity_error(model(x_t, t, context, drop, image, control), x1, x0, k))
                    without.append(velocity_error(model(x_t, t, context, drop, image, None), x1, x0, k))
            return {"val_loss": torch.cat(with_c).mean().item(), "val_loss_nocontrol": torch.cat(without).mean().item()}

        def export() -> None:
            if d.is_main:
                ema_module().adapter.save_pretrained(out / "adapter")

        trainer.fit(loss_fn, validate=validate_fn, export=export)
    return out / "adapter"
