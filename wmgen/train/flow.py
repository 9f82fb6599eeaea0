"""Recipe: train the VideoDiT by conditional flow matching on VAE latents (`wmgen train flow`).

Objective (Lipman et al. 2023, CFM on the CondOT path; Esser et al. 2024 logit-normal times): for normalised
latents x1 [B, C, T', H', W'] of a clip, noise x0 ~ N(0, I) and t ~ p(t),

    x_t = (1 - t) x0 + t x1,        L = E |v_theta(x_t, t | text, first frame) - (x1 - x0)|^2

Conditioning (the world-model setting "from this frame, what happens next"): the first latent frame x1[:, :, 0]
is given to the image-to-video DiT (the causal VAE encodes frame 0 alone, so it is exactly the first frame's
latent), the caption's MiniLM tokens go to cross-attention. ``image_condition`` picks the DiT's layout
(``wmgen.models.dit``): Wan2.1-I2V channels, or Wan2.2-TI2V tokens, where the given frame is clean frame 0 of
x_t and the loss covers only the frames after it. For classifier-free guidance the text is replaced by a
learned null embedding with probability ``text_dropout`` and (channel layout only) the first frame by zeros
with probability ``image_dropout``.

``target`` = "still_residual" (image-to-video only) trains the flow on ``wmgen.models.still`` coordinates: the
frames after the first are the residual against the latents of the first frame held still, divided by their
per-channel std r measured on the first ``residual_clips`` training clips; r is exported with the model.

``object_weight`` > 0 weighs the training loss of latent cells that show an object (the world dataset's
instance masks, ``object_cell_weights``) by 1 + object_weight. Objects cover a few percent of the frames and
carry all the motion; a positive weight per cell moves the gradient towards them without changing the velocity
that minimises each cell's error. Validation stays unweighted.

Latents come either from a pre-encoded directory (``wmgen data encode``: posterior mean and std per clip,
sampled afresh every step) or are encoded on the fly from the world dataset. Validation: the same loss on
held-out clips at a fixed grid of times with fixed noise and no dropout (a deterministic curve), with the EMA
weights. Export: a ``wmgen.pipeline.WorldModel`` (VAE + EMA DiT + null text) in ``<out>/model``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from wmgen.config import from_dict, validate
from wmgen.flow.schedules import LogitNormalTime, ShiftedTime, UniformTime
from wmgen.models.dit import DIT_PRESETS, VideoDiT
from wmgen.models.still import measure_residual_scale, still_video, to_residual
from wmgen.models.text import NullText, make_text_encoder
from wmgen.models.vae import CausalVAE
from wmgen.train.common import (
    Distributed,
    LoopConfig,
    Trainer,
    example_generators,
    export_source,
    global_batch_indices,
)

__all__ = [
    "FlowModule", "FlowTrainConfig", "LatentClips", "encode_latents", "export_checkpoint", "object_cell_weights",
    "train_flow", "velocity_error",
]  # fmt: skip

LATENTS_FILE = "latents.safetensors"
LATENTS_META = "latents.json"


@dataclass(frozen=True)
class FlowTrainConfig:
    """`wmgen train flow`: data, backbone preset, conditioning, objective and the loop."""

    data: str = ""  # training world dataset (physics.worlds); used when `latents` is empty
    val_data: str = ""  # held-out world dataset; used when `val_latents` is empty
    latents: str = ""  # pre-encoded training latents (wmgen data encode), preferred on CPU
    val_latents: str = ""  # pre-encoded held-out latents
    vae: str = ""  # trained VAE directory (wmgen train vae): latent statistics and on-the-fly encoding
    out: str = "outputs/flow"  # run directory: checkpoints/, metrics.jsonl, model/ (the WorldModel)
    preset: str = "tiny"  # key of wmgen.models.dit.DIT_PRESETS
    # an exported WorldModel (this recipe's <out>/model) to start from: its DiT and null text, same DiT config and
    # latent space as this run's; "": fresh weights. Fine-tuning or a longer schedule on a trained model.
    init: str = ""
    image_to_video: bool = True  # condition on the first frame
    # how the DiT sees the first frame (wmgen.models.dit docstring): Wan2.1-I2V channels or Wan2.2-TI2V tokens
    image_condition: Literal["channels", "tokens"] = "channels"
    # what the flow generates after the first frame: plain latents, or their residual against the still video of
    # the first frame (wmgen.models.still: static content is 0), scaled per channel to unit std on training data
    target: Literal["latents", "still_residual"] = "latents"
    residual_clips: int = field(default=512, metadata={"range": (1, None)})  # training clips measuring that scale
    object_weight: float = field(default=0.0, metadata={"range": (0.0, None)})  # extra loss weight, object cells
    text_encoder: str = "minilm"  # key of wmgen.models.text.TEXT_ENCODERS
    text_max_length: int = field(default=32, metadata={"range": (1, None)})  # caption tokens Lc
    text_dropout: float = field(default=0.1, metadata={"range": (0.0, 1.0)})  # P(caption -> null), for CFG
    image_dropout: float = field(default=0.0, metadata={"range": (0.0, 1.0)})  # P(first frame -> zeros)
    time_sampler: Literal["logit_normal", "uniform"] = "logit_normal"  # p(t) before the shift (SD3)
    train_shift: float = field(default=1.0, metadata={"range": (1e-3, 1e3)})  # t -> t / (t + s (1 - t))
    gradient_checkpointing: bool = False  # recompute blocks in backward (big presets)
    val_clips: int = field(default=64, metadata={"range": (1, None)})  # held-out clips per validation
    val_times: int = field(default=8, metadata={"range": (1, None)})  # fixed times t = (k + 0.5) / n
    sample_steps: int = field(default=32, metadata={"range": (1, None)})  # exported sampling default
    sample_shift: float = field(default=1.0, metadata={"range": (1e-3, 1e3)})  # exported sampling default
    cfg_scale: float = field(default=1.0, metadata={"range": (0.0, None)})  # exported sampling default
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=4000, batch_size=16, lr=3e-4, warmup_steps=200, val_every=500)
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.preset not in DIT_PRESETS:
            raise ValueError(f"preset must be one of {sorted(DIT_PRESETS)}, got {self.preset!r}")
        if self.target == "still_residual" and not self.image_to_video:
            raise ValueError(
                "target = 'still_residual' needs image_to_video = true (the still video is of the first frame)"
            )
        if self.image_condition == "tokens" and self.image_dropout > 0:
            raise ValueError(
                f"image_dropout must be 0 with image_condition='tokens' (the given frame is part of the clip, "
                f"there is nothing to drop), got {self.image_dropout}"
            )


# ---------------------------------------------------------------------------------------------------------
# 1. latents


def _check_dir(path: str | os.PathLike, name: str, marker: str) -> Path:
    path = Path(path)
    if not (path / marker).is_file():
        raise FileNotFoundError(f"{name} = {str(path)!r} is not a directory holding {marker}")
    return path


@torch.no_grad()
def encode_latents(
    data: str | os.PathLike,
    vae: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    num_clips: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """Encode the clips of a world dataset (all, or the first ``num_clips``) with a trained VAE; write posterior
    mean and std (fp16), the latents of each clip's still video (``wmgen.models.still``) + captions.

    ``out`` gets ``latents.safetensors`` {"mean", "std", "still": [N, C, T', H', W']} and ``latents.json``
    (captions, source paths); written into a temporary directory and renamed, so an interrupted run leaves nothing.
    """
    from physics.worlds import WorldDataset

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"out = {str(out)!r} exists; remove it or choose another directory")
    dataset = WorldDataset(data)
    total = len(dataset) if num_clips is None else num_clips
    if not 1 <= total <= len(dataset):
        raise ValueError(f"num_clips must be in [1, {len(dataset)}] (the dataset's clips), got {num_clips}")
    model = CausalVAE.from_pretrained(_check_dir(vae, "vae", "config.json"), device=device).eval()
    means, stds, stills = [], [], []
    for start in tqdm(range(0, total, batch_size), disable=not progress, desc="encode"):
        video = torch.stack([dataset[i]["video"] for i in range(start, min(start + batch_size, total))])
        posterior = model.encode(video.to(device))
        means.append(posterior.mean.half().cpu())
        stds.append(posterior.std.half().cpu())
        still = still_video(video[:, :, 0], video.shape[2]).to(device)  # (b, 3, T, H, W)
        stills.append(model.encode(still).mean.half().cpu())
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({"mean": torch.cat(means), "std": torch.cat(stds), "still": torch.cat(stills)}, tmp / LATENTS_FILE)
    meta = {
        "captions": [dataset.records[i]["caption"] for i in range(total)],
        "data": str(Path(data).resolve()),
        "vae": str(Path(vae).resolve()),
    }
    (tmp / LATENTS_META).write_text(json.dumps(meta))
    os.replace(tmp, out)
    return out


class LatentClips:
    """Training latents and captions of a dataset, pre-encoded or encoded on the fly, in flow coordinates.

    ``sample(indices, generator)`` draws z ~ q(z | clip) for each index and normalises it with the VAE's
    per-channel statistics: [b, C, T', H', W']. ``generator`` is one generator for the batch or one per index
    (``example_generators``: then a clip's noise does not depend on the other clips of its micro-batch).
    After ``use_residual(scale)`` the frames after the first are returned as residuals against the clip's still
    video (``wmgen.models.still``); ``measure_residual_scale`` gives that scale for a dataset.
    """

    def __init__(self, vae: CausalVAE, *, latents: str = "", data: str = "", device: torch.device):
        self.vae, self.device = vae, device
        self.residual_scale: Tensor | None = None
        self.weights: Tensor | None = None  # (N, 1, T', H', W') loss weights, after use_object_weight
        if latents:
            path = _check_dir(latents, "latents", LATENTS_FILE)
            tensors = load_file(path / LATENTS_FILE)
            self.mean, self.std, self.still = tensors["mean"], tensors["std"], tensors.get("still")
            self.captions = json.loads((path / LATENTS_META).read_text())["captions"]
            self.dataset = None
            self.source = str(path)
            if self.mean.shape[1] != vae.config.z_dim:
                raise ValueError(
                    f"latents in {path} have {self.mean.shape[1]} channels, the VAE z_dim is {vae.config.z_dim}"
                )
        elif data:
            from physics.worlds import WorldDataset

            self.dataset = WorldDataset(data)
            self.captions = [r["caption"] for r in self.dataset.records]
            self.still = None  # encoded on the fly
            self.source = str(data)
        else:
            raise ValueError("give either a pre-encoded latents directory or a world dataset directory, got neither")

    def __len__(self) -> int:
        return len(self.captions)

    def check_first_clips_of(self, dataset: Any, name: str) -> None:
        """ValueError naming ``name`` unless these clips are the first ``len(self)`` clips of the world dataset
        (same captions in the same order)."""
        if len(self) > len(dataset) or self.captions != [r["caption"] for r in dataset.records[: len(self)]]:
            raise ValueError(
                f"{name} ({len(self)} clips, {self.source!r}) are not the latents of the first clips of the world "
                f"dataset {str(dataset.path)!r} ({len(dataset)} clips): encode them from the same dataset "
                "(wmgen data encode)"
            )

    def use_object_weight(self, object_weight: float, *, batch: int = 64) -> None:
        """Measure every clip's ``object_cell_weights`` [N, 1, T', H', W'] from its world dataset's instance masks
        (pre-encoded latents: the dataset they were encoded from), for ``object_weights``."""
        from physics.worlds import WorldDataset

        dataset = self.dataset
        if dataset is None:
            source = json.loads((Path(self.source) / LATENTS_META).read_text())["data"]
            if not (Path(source) / "index.json").is_file():
                raise FileNotFoundError(
                    f"object_weight needs the instance masks of the world dataset the latents {self.source!r} were "
                    f"encoded from, {source!r}, which is not there"
                )
            dataset = WorldDataset(source)
            self.check_first_clips_of(dataset, "latents")
        vae = self.vae.config
        weights = []
        for start in range(0, len(self), batch):
            mask = torch.stack([dataset[i]["mask"] for i in range(start, min(start + batch, len(self)))])
            weights.append(object_cell_weights(mask, object_weight, temporal_factor=vae.temporal_factor,
                                               spatial_factor=vae.spatial_factor))  # fmt: skip
        self.weights = torch.cat(weights)  # (N, 1, T', H', W')

    def object_weights(self, indices: Tensor) -> Tensor:
        """[b, 1, T', H', W'] loss weights of the clips (after ``use_object_weight``)."""
        return self.weights[indices].to(self.device)

    def _require_still(self) -> None:
        if self.dataset is None and self.still is None:
            raise ValueError(
                f"latents {self.source!r} hold no still-video latents, which target='still_residual' needs: encode "
                f"them again with wmgen data encode (it writes them since that target exists)"
            )

    def use_residual(self, scale: Tensor) -> None:
        """Return still-video residuals with per-channel scale [C] from now on (flows on ``to_residual``)."""
        self._require_still()
        self.residual_scale = scale.float().cpu()

    @torch.no_grad()
    def _posterior(self, indices: Tensor, still: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Posterior mean and std [b, C, T', H', W'] of the clips, and (if ``still``) their still video's mean."""
        if self.dataset is None:
            still_mean = self.still[indices].float() if still else None
            return self.mean[indices].float(), self.std[indices].float(), still_mean
        video = torch.stack([self.dataset[int(i)]["video"] for i in indices]).to(self.device)  # (b, 3, T, H, W)
        posterior = self.vae.encode(video)
        still_mean = None
        if still:
            still_mean = self.vae.encode(still_video(video[:, :, 0], video.shape[2])).mean.cpu()
        return posterior.mean.cpu(), posterior.std.cpu(), still_mean

    @torch.no_grad()
    def sample(self, indices: Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        mean, std, still = self._posterior(indices, still=self.residual_scale is not None)
        if isinstance(generator, torch.Generator):
            eps = torch.randn(mean.shape, generator=generator)
        else:
            eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generator])  # (b, C, T', H', W')
        z = self.vae.normalize((mean + std * eps).to(self.device))  # (b, C, T', H', W')
        if still is None:
            return z
        return to_residual(z, self.vae.normalize(still.to(self.device)), self.residual_scale)

    @torch.no_grad()
    def measure_residual_scale(self, num_clips: int = 512, batch: int = 64) -> Tensor:
        """r [C] of the first ``num_clips`` clips (posterior means; ``wmgen.models.still.measure_residual_scale``)."""
        self._require_still()
        n = min(num_clips, len(self))
        means, stills = [], []
        for start in range(0, n, batch):
            mean, _, still = self._posterior(torch.arange(start, min(start + batch, n)), still=True)
            means.append(self.vae.normalize(mean.to(self.device)))
            stills.append(self.vae.normalize(still.to(self.device)))
        return measure_residual_scale(torch.cat(means), torch.cat(stills)).cpu()


# ---------------------------------------------------------------------------------------------------------
# 2. the trained module


class FlowModule(nn.Module):
    """The DiT and its learned null text embedding: everything `wmgen train flow` optimises."""

    def __init__(self, dit: VideoDiT, null_text: NullText):
        super().__init__()
        self.dit = dit
        self.null_text = null_text

    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, drop: Tensor, image_latent: Tensor | None) -> Tensor:
        """v [b, C, T', H', W'] for x_t at t [b], text tokens context [b, Lc, Dc] (rows with drop [b] -> null)."""
        return self.dit(x_t, t, context=self.null_text(context, drop), image_latent=image_latent)


def object_cell_weights(mask: Tensor, object_weight: float, *, temporal_factor: int, spatial_factor: int) -> Tensor:
    """Loss weights of latent cells: 1, plus ``object_weight`` where an object shows in the cell's pixels.

    A latent cell covers ``spatial_factor``^2 pixels of the frames the causal VAE folds into its latent frame
    (frame 0 alone, then groups of ``temporal_factor`` frames); it shows an object when any of them does.

    Args:
        mask: [b, T, H, W] integer instance masks (-1: background), T = 1 + temporal_factor k.
        object_weight: the extra weight (>= 0).

    Returns:
        [b, 1, T', H', W'] fp32 weights.
    """
    f, s = temporal_factor, spatial_factor
    occupied = (mask >= 0).float()[:, None]  # (b, 1, T, H, W)
    occupied = torch.cat([occupied[:, :, :1].expand(-1, -1, f - 1, -1, -1), occupied], dim=2)  # (b, 1, f T', H, W)
    occupied = F.max_pool3d(occupied, kernel_size=(f, s, s))  # (b, 1, T', H', W')
    return 1.0 + object_weight * occupied


def velocity_error(v: Tensor, x1: Tensor, x0: Tensor, pinned: int = 0, weight: Tensor | None = None) -> Tensor:
    """Per-clip squared error [b] of the velocity v against the CondOT target x1 - x0, averaged over the latent
    frames after the first ``pinned`` ones (``VideoDiT.pinned_frames``: given frames the model holds fixed);
    with ``weight`` [b, 1, T', H', W'] (> 0) the weighted mean over those cells."""
    error = v.float()[:, :, pinned:] - (x1[:, :, pinned:] - x0[:, :, pinned:])  # (b, C, T' - pinned, H', W')
    if weight is None:
        return error.square().flatten(1).mean(1)
    w = weight[:, :, pinned:].to(error.dtype).expand_as(error)  # (b, C, T' - pinned, H', W')
    return (w * error.square()).flatten(1).sum(1) / w.flatten(1).sum(1)


def _time_sampler(config: FlowTrainConfig):
    base = LogitNormalTime() if config.time_sampler == "logit_normal" else UniformTime()
    return base if config.train_shift == 1.0 else ShiftedTime(config.train_shift, base)


class CaptionTable:
    """Text tokens of every distinct caption, encoded once: ``lookup(captions) -> [b, Lc, Dc]``."""

    def __init__(self, captions: list[str], encoder, *, batch: int = 64, progress: bool = False):
        unique = sorted(set(captions))
        self.row = {c: i for i, c in enumerate(unique)}
        rows = [encoder(unique[i : i + batch]) for i in tqdm(range(0, len(unique), batch), disable=not progress,
                                                             desc="captions")]
        self.table = torch.cat(rows) if rows else torch.zeros(0, encoder.max_length, encoder.dim)  # (U, Lc, Dc)

    def lookup(self, captions: list[str]) -> Tensor:
        return self.table[[self.row[c] for c in captions]]


# ---------------------------------------------------------------------------------------------------------
# 3. the recipe


def train_flow(config: FlowTrainConfig, *, resume: bool = False) -> Path:
    """Train (or ``resume``) the DiT; returns the exported WorldModel directory ``<out>/model``."""
    loop = config.loop
    out = Path(config.out)
    with Distributed() as d:
        vae = CausalVAE.from_pretrained(_check_dir(config.vae, "vae", "config.json"), device=d.device).eval()
        train = LatentClips(vae, latents=config.latents, data=config.data, device=d.device)
        val = LatentClips(vae, latents=config.val_latents, data=config.val_data, device=d.device)
        scale = _use_target(config, train, val)
        if config.object_weight > 0:
            train.use_object_weight(config.object_weight)  # validation stays unweighted
        encoder = make_text_encoder(config.text_encoder, max_length=config.text_max_length)
        captions = CaptionTable(train.captions + val.captions, encoder, progress=loop.progress and d.is_main)

        dit_config = _dit_config(config, vae, encoder)
        dit = VideoDiT(dit_config, generator=torch.Generator().manual_seed(loop.seed))
        dit.gradient_checkpointing = config.gradient_checkpointing
        module = FlowModule(dit, NullText(config.text_max_length, encoder.dim))
        if config.init and not resume:  # a resumed run's checkpoint holds the weights
            _load_init(module, config, vae, scale)
        module = module.to(d.device)
        if not resume and (out / "checkpoints").exists():
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another out")
        trainer = Trainer(module, loop, out, dist=d, config=config, shard=list(dit.blocks))
        if resume:
            trainer.resume()
        sampler = _time_sampler(config)

        def batch(clips: LatentClips, idx: Tensor, gens: list[torch.Generator], dropout: bool) -> tuple[Tensor, ...]:
            # every random number of clip j comes from gens[j]: the same however the global batch is split
            x1 = clips.sample(idx, gens)  # (b, C, T', H', W')
            b = x1.shape[0]
            context = captions.lookup([clips.captions[int(i)] for i in idx]).to(d.device)  # (b, Lc, Dc)
            u = torch.stack([torch.rand(2, generator=g) for g in gens])  # (b, 2): text and image dropout draws
            drop_text = u[:, 0] < (config.text_dropout if dropout else 0.0)
            image = None
            if config.image_to_video:
                keep = u[:, 1] >= (config.image_dropout if dropout else 0.0)
                image = x1[:, :, 0] * keep.to(d.device, x1.dtype).view(b, 1, 1, 1)  # (b, C, H', W')
            x0 = torch.stack([torch.randn(x1.shape[1:], generator=g) for g in gens]).to(d.device)
            return x1, x0, context, drop_text.to(d.device), image

        def loss_fn(step: int, micro: int, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            # This micro-batch's part of the global batch, examples and per-example generators alike, so any
            # world size and grad_accum see the same numbers.
            part = trainer.part(micro)
            idx = global_batch_indices(len(train), loop.batch_size, step, loop.seed)[part]
            gens = example_generators(loop.seed, step, loop.batch_size)[part]
            x1, x0, context, drop, image = batch(train, idx, gens, dropout=True)
            t = torch.cat([sampler.sample(1, generator=g) for g in gens]).to(d.device)  # (b,)
            tt = t.view(-1, 1, 1, 1, 1)
            x_t = (1 - tt) * x0 + tt * x1
            v = trainer.model(x_t, t, context, drop, image)
            weight = train.object_weights(idx) if config.object_weight > 0 else None  # (b, 1, T', H', W')
            return velocity_error(v, x1, x0, dit.pinned_frames(image), weight).mean(), {}

        def ema_module() -> FlowModule | None:
            """A fresh, unwrapped FlowModule holding the EMA weights on rank 0 (None elsewhere). Every rank must
            call it: gathering FSDP shards is a collective (and FSDP modules cannot be deep-copied)."""
            state = trainer.ema_state()
            if not d.is_main:
                return None
            model = FlowModule(VideoDiT(dit_config), NullText(config.text_max_length, encoder.dim)).to(d.device)
            model.load_state_dict(state)
            return model.eval()

        @torch.no_grad()
        def validate_fn(step: int) -> dict[str, Any]:
            model = ema_module()
            if model is None:
                return {}
            n = min(config.val_clips, len(val))
            per_t = []
            for k in range(config.val_times):
                t_k = (k + 0.5) / config.val_times
                gens = example_generators(12345, k, n)  # the same noise at every validation
                losses = []
                for start in range(0, n, 16):
                    idx = torch.arange(start, min(start + 16, n))
                    x1, x0, context, drop, image = batch(val, idx, gens[start : start + 16], dropout=False)
                    x_t = (1 - t_k) * x0 + t_k * x1
                    t = torch.full((len(idx),), t_k, device=d.device)
                    v = model(x_t, t, context, drop, image)
                    losses.append(velocity_error(v, x1, x0, dit.pinned_frames(image)))
                per_t.append(torch.cat(losses).mean().item())
            return {"val_loss": sum(per_t) / len(per_t), "val_loss_t": [round(x, 5) for x in per_t]}

        def export() -> None:
            model = ema_module()
            if model is None:
                return
            _world_model(config, vae, model, encoder, scale).save_pretrained(out / "model")

        trainer.fit(loss_fn, validate=validate_fn, export=export)
    return out / "model"


def _dit_config(config: FlowTrainConfig, vae: CausalVAE, encoder) -> Any:
    """The run's DiTConfig: the preset with the VAE's channels, the encoder's width and the I2V layout."""
    return dataclasses.replace(
        DIT_PRESETS[config.preset], in_channels=vae.config.z_dim, out_channels=vae.config.z_dim,
        text_dim=encoder.dim, image_to_video=config.image_to_video, image_condition=config.image_condition,
    )  # fmt: skip


def _load_init(module: FlowModule, config: FlowTrainConfig, vae: CausalVAE, scale: Tensor | None) -> None:
    """Load ``config.init`` (an exported WorldModel) into ``module``: refused, naming what differs, unless its
    DiT config, latent space (``_same_latent_space``), text width and target are this run's."""
    from wmgen.pipeline import WorldModel

    init = WorldModel.from_pretrained(_check_dir(config.init, "init", "world_model.json"))
    where = f"init = {config.init!r}"
    if init.dit.config != module.dit.config:
        raise ValueError(f"{where} has another DiT config than this run's: {init.dit.config} vs {module.dit.config}")
    _same_latent_space(vae, init.vae, config.init)
    if init.null_text.embedding.shape != module.null_text.embedding.shape:
        raise ValueError(
            f"{where} has null text of shape {tuple(init.null_text.embedding.shape)}, this run "
            f"{tuple(module.null_text.embedding.shape)} (text_max_length, the text encoder's width)"
        )
    theirs = init.config.residual_scale
    if (theirs is None) != (scale is None) or (scale is not None and tuple(scale.tolist()) != tuple(theirs)):
        raise ValueError(
            f"{where} generates {'plain latents' if theirs is None else 'still residuals'} (residual_scale "
            f"{theirs}), this run target = {config.target!r} (scale {None if scale is None else scale.tolist()})"
        )
    module.dit.load_state_dict(init.dit.state_dict())
    module.null_text.load_state_dict(init.null_text.state_dict())


def _use_target(config: FlowTrainConfig, *clips: LatentClips) -> Tensor | None:
    """The still-residual scale [C] measured on the first ``residual_clips`` of clips[0], set on all of ``clips``
    (target 'still_residual'); None for plain latents. Deterministic: a resumed or exported run measures the
    same scale."""
    if config.target != "still_residual":
        return None
    scale = clips[0].measure_residual_scale(config.residual_clips)
    for c in clips:
        c.use_residual(scale)
    return scale


def _world_model(
    config: FlowTrainConfig, vae: CausalVAE, module: FlowModule, encoder, scale: Tensor | None
) -> Any:
    """The exported WorldModel of a run: its VAE, the trained DiT and null text, the sampling defaults, and the
    still-residual scale of its target (None: plain latents)."""
    from wmgen.pipeline import WorldModel, WorldModelConfig

    wm_config = WorldModelConfig(
        text_encoder=config.text_encoder, text_max_length=config.text_max_length, steps=config.sample_steps,
        shift=config.sample_shift, cfg_scale=config.cfg_scale, **_video_shape(config),
        residual_scale=None if scale is None else tuple(float(r) for r in scale),  # exact float32 values
    )  # fmt: skip
    return WorldModel(vae, module.dit, null_text=module.null_text, config=wm_config, text_encoder=encoder)


def export_checkpoint(
    run: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None, vae: str | os.PathLike | None = None
) -> Path:
    """Export one checkpoint of a `wmgen train flow` run as a WorldModel in ``out`` (``wmgen train export``).

    The checkpoint's EMA weights are exported (its current weights when the run kept no EMA), as the run's own
    export does after its last step; use it to evaluate a run part-way. ``step``: which checkpoint (default: the
    newest). The run's config (from the checkpoint) names the VAE and text encoder, which must still be there.
    ``vae``: export this VAE instead of the run's, a decoder fine-tune of it (`wmgen train vae` with
    ``train_encoder = False``): its encoder and latent statistics must equal the run's VAE's bit for bit, so the
    flow's latent space is unchanged and only the decoding improves.
    """
    saved, weights = export_source(run, step)
    config = from_dict(FlowTrainConfig, saved)
    model_vae = CausalVAE.from_pretrained(_check_dir(config.vae, "the run's vae", "config.json")).eval()
    if vae is not None:
        model_vae = _same_latent_space(model_vae, CausalVAE.from_pretrained(_check_dir(vae, "vae", "config.json")), vae)
    encoder = make_text_encoder(config.text_encoder, max_length=config.text_max_length)
    dit = VideoDiT(_dit_config(config, model_vae, encoder))
    module = FlowModule(dit, NullText(config.text_max_length, encoder.dim))
    module.load_state_dict(load_file(weights))
    scale = None
    if config.target == "still_residual":  # the run's scale, measured again (deterministically) on its clips
        clips = LatentClips(model_vae, latents=config.latents, data=config.data, device=torch.device("cpu"))
        scale = _use_target(config, clips)
    return _world_model(config, model_vae, module.eval(), encoder, scale).save_pretrained(out)


def _same_latent_space(run_vae: CausalVAE, other: CausalVAE, path: str | os.PathLike) -> CausalVAE:
    """``other`` (eval mode) if its encoder side and latent statistics are ``run_vae``'s bit for bit, else a
    ValueError naming what differs."""
    if other.config != run_vae.config:
        raise ValueError(
            f"vae = {str(path)!r} has another config than the run's VAE: {other.config} vs {run_vae.config}"
        )
    encoder_side = ("encoder.", "quant.", "latents_mean", "latents_std")
    theirs, ours = other.state_dict(), run_vae.state_dict()
    differ = sorted(k for k in ours if k.startswith(encoder_side) and not torch.equal(theirs[k], ours[k]))
    if differ:
        raise ValueError(
            f"vae = {str(path)!r} encodes differently from the run's VAE ({len(differ)} tensors differ, e.g. "
            f"{differ[0]}): only a decoder fine-tune of it (wmgen train vae, train_encoder = false) keeps the "
            "flow's latent space"
        )
    return other.eval()


def _video_shape(config: FlowTrainConfig) -> dict[str, Any]:
    """resolution, num_frames and fps of the training clips, for the exported WorldModel."""
    from physics.worlds import WorldDataset

    source = config.data or json.loads((Path(config.latents) / LATENTS_META).read_text())["data"]
    world = WorldDataset(source, verify=False).config
    return {"resolution": world["resolution"], "num_frames": world["frames"], "fps": world["fps"]}
