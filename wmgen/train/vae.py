"""Recipe: train the causal video VAE on a world dataset (`wmgen train vae`).

Loss (Rombach et al. 2022, LDM; Esser et al. 2021, VQGAN), on random space-time crops of the clips (the VAE is
convolutional and causal, so crops train the same weights far cheaper than whole clips on a CPU):

    L = l1_weight |x_hat - x|_w + ssim_weight (1 - SSIM(x_hat, x)) + kl_weight KL(q(z|x) || N(0, I)) / pixels
        [+ disc_weight * hinge generator loss of a PatchGAN discriminator after disc_start]

where the KL is summed over latents and divided by the pixel count (LDM's per-sample-sum convention with a
per-pixel reconstruction mean) and SSIM is kornia's (11x11 Gaussian window) per frame on [0, 1] images.
|.|_w is the weighted mean sum(w |x_hat - x|) / sum(w) with w = 1 on the background and 1 + object_weight on
object pixels (the datasets' instance masks): objects cover a few percent of a frame, so with the plain mean
(object_weight 0) a VAE can turn every object the same dull colour at almost no cost.

**Decoder fine-tuning** (``init`` + ``train_encoder = False``, as Stable Diffusion's ft-MSE VAE decoders were
made): start from an exported VAE and train only what maps latents to pixels (``post_quant`` and the decoder).
The encoder, and with it the latent space and its statistics, stay bit-identical, so a flow model trained on
the old VAE's latents decodes through the new one unchanged.

The optional discriminator (Isola et al. 2017 PatchGAN, per frame) is trained in the same optimizer step with
the hinge loss on *detached* reconstructions, while the generator's adversarial term is computed through a
functional call with *detached* discriminator weights: each loss reaches only its own player's parameters, so
one AdamW serves both.

Validation: PSNR (data range 2 for [-1, 1] pixels) and SSIM of whole held-out clips reconstructed from the
posterior mode, with the EMA weights, and ``val_object_psnr``: the PSNR over object pixels only (mean over
clips). Export: the EMA weights with per-channel latent statistics measured on training clips (init's, when
the encoder was frozen), written by ``CausalVAE.save_pretrained`` to ``<out>/vae``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kornia
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.func import functional_call

from wmgen.config import from_dict, validate
from wmgen.models.vae import VAE_PRESETS, CausalVAE
from wmgen.train.common import (
    Distributed,
    LoopConfig,
    Trainer,
    example_generators,
    export_source,
    global_batch_indices,
)

__all__ = [
    "PatchDiscriminator", "VAETrainConfig", "export_vae_checkpoint", "measure_latent_stats", "object_psnr",
    "object_weights", "reconstruction_metrics", "train_vae",
]


@dataclass(frozen=True)
class VAETrainConfig:
    """`wmgen train vae`: data, model preset, loss weights and the loop."""

    data: str = ""  # training world dataset directory (physics.worlds)
    val_data: str = ""  # held-out world dataset directory
    out: str = "outputs/vae"  # run directory: checkpoints/, metrics.jsonl, vae/ (the exported model)
    preset: str = "tiny"  # key of wmgen.models.vae.VAE_PRESETS
    init: str = ""  # an exported VAE directory to start from (its config must be the preset's); "": fresh weights
    train_encoder: bool = True  # False: fine-tune the decoder only (needs init; keeps init's latent space)
    crop_frames: int = field(default=5, metadata={"range": (0, None)})  # 1 + 4k frames per crop; 0: whole clip
    crop_size: int = field(default=32, metadata={"range": (0, None)})  # square crop (pixels); 0: whole frame
    l1_weight: float = field(default=1.0, metadata={"range": (0.0, None)})
    object_weight: float = field(default=0.0, metadata={"range": (0.0, None)})  # extra L1 weight on object pixels
    ssim_weight: float = field(default=0.2, metadata={"range": (0.0, None)})  # weight of (1 - SSIM)
    kl_weight: float = field(default=1e-6, metadata={"range": (0.0, None)})  # LDM's KL weight
    disc_weight: float = field(default=0.0, metadata={"range": (0.0, None)})  # adversarial weight; 0: no disc
    disc_start: int = field(default=0, metadata={"range": (0, None)})  # step the adversarial terms switch on
    disc_channels: int = field(default=32, metadata={"range": (1, None)})  # discriminator width
    val_clips: int = field(default=64, metadata={"range": (1, None)})  # held-out clips per validation
    stats_clips: int = field(default=256, metadata={"range": (1, None)})  # training clips for latent stats
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(steps=2000, batch_size=8, lr=3e-4, warmup_steps=100, val_every=500)
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.preset not in VAE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(VAE_PRESETS)}, got {self.preset!r}")
        if self.crop_frames and (self.crop_frames - 1) % 4:
            raise ValueError(f"crop_frames must be 0 or 1 + 4k (5, 9, 17, ...), got {self.crop_frames}")
        if not self.train_encoder and not self.init:
            raise ValueError("train_encoder = False fine-tunes the decoder of an existing VAE: init must name one")


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017) on single frames: [N, 3, H, W] -> logits [N, 1, H / 8, W / 8].

    ``generator`` draws PyTorch's default conv initialisation (nn.Conv2d's own init uses the global RNG, which
    would make a run depend on more than its seed).
    """

    def __init__(self, channels: int = 32, *, generator: torch.Generator | None = None):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.GroupNorm(8, 4 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 1, 3, 1, 1),
        )  # fmt: skip
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
                bound = 1 / (m.weight[0].numel() ** 0.5)  # 1 / sqrt(fan_in), as nn.Conv2d
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(frames)


class VAEWithDiscriminator(nn.Module):
    """The trained module: the VAE and (optionally) its discriminator, so one optimizer and DDP cover both."""

    def __init__(self, vae: CausalVAE, disc: PatchDiscriminator | None):
        super().__init__()
        self.vae = vae
        self.disc = disc

    def forward(self, video: Tensor, generators: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Reconstruction [b, 3, T, H, W] from z ~ q(z | clip) (clip j's noise from generators[j]) and KL [b]."""
        posterior = self.vae.encode(video)
        eps = torch.stack([torch.randn(posterior.mean.shape[1:], generator=g) for g in generators])
        z = posterior.mean + posterior.std * eps.to(posterior.mean)  # (b, C, T', H', W')
        return self.vae.decode(z), posterior.kl()


def _frames(video: Tensor) -> Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B*T, 3, H, W] in [0, 1]."""
    return ((video.transpose(1, 2).flatten(0, 1) + 1) / 2).clamp(0, 1)


def reconstruction_metrics(recon: Tensor, video: Tensor) -> dict[str, float]:
    """PSNR (dB, data range 2 for [-1, 1]) averaged per clip, and mean SSIM over frames."""
    mse = (recon.float().clamp(-1, 1) - video.float()).square().flatten(1).mean(1)  # (B,)
    psnr = (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()
    ssim = kornia.metrics.ssim(_frames(recon), _frames(video), window_size=11).mean()
    return {"psnr": psnr.item(), "ssim": ssim.item()}


def object_psnr(recon: Tensor, video: Tensor, mask: Tensor) -> Tensor:
    """PSNR (dB, data range 2) over each clip's object pixels: [B], NaN for a clip without any.

    recon, video: [B, 3, T, H, W] in [-1, 1]; mask: [B, T, H, W] instance mask, -1 = background.
    """
    on = (mask >= 0)[:, None].float()  # (B, 1, T, H, W)
    se = ((recon.float().clamp(-1, 1) - video.float()).square() * on).flatten(1).sum(1)  # (B,)
    count = 3 * on.flatten(1).sum(1)  # (B,) object values
    mse = se / count  # NaN where count = 0
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def _crop(video: Tensor, mask: Tensor, frames: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random window of one clip [3, T, H, W] and its instance mask [T, H, W] (0 = keep that axis
    whole): [3, frames, size, size] and [frames, size, size]."""
    _, T, H, W = video.shape
    f = frames or T
    s_h, s_w = (size or H), (size or W)
    if f > T or s_h > H or s_w > W:
        raise ValueError(f"crop ({f} frames, {s_h}x{s_w}) is larger than the clips ({T} frames, {H}x{W})")
    t0 = int(torch.randint(0, T - f + 1, (), generator=generator))
    y0 = int(torch.randint(0, H - s_h + 1, (), generator=generator))
    x0 = int(torch.randint(0, W - s_w + 1, (), generator=generator))
    window = (slice(t0, t0 + f), slice(y0, y0 + s_h), slice(x0, x0 + s_w))
    return video[(slice(None), *window)], mask[window]


def object_weights(mask: Tensor, object_weight: float) -> Tensor:
    """Per-pixel L1 weights [B, 1, T, H, W] from instance masks [B, T, H, W] (-1 = background): 1 on the
    background, 1 + object_weight on objects."""
    return (1.0 + object_weight * (mask >= 0).float())[:, None]


@torch.no_grad()
def measure_latent_stats(
    vae: CausalVAE, dataset: Any, clips: int, *, batch_size: int = 8, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std [C] of latents z ~ q(z | clip) over the first ``clips`` clips of a world dataset.

    The flow model trains on posterior *samples*, so the variance is that of the samples,
    Var(z) = Var(mean) + E[std^2] (law of total variance), not the variance of the posterior means alone,
    which would leave normalised latents with variance far above 1 for a VAE with wide posteriors.
    """
    total, sq, var, count = 0.0, 0.0, 0.0, 0
    for start in range(0, min(clips, len(dataset)), batch_size):
        stop = min(start + batch_size, clips, len(dataset))
        video = torch.stack([dataset[i]["video"] for i in range(start, stop)]).to(device)
        posterior = vae.encode(video)
        m = posterior.mean.double()  # (b, C, T', H', W')
        total = total + m.sum((0, 2, 3, 4))
        sq = sq + m.square().sum((0, 2, 3, 4))
        var = var + posterior.std.double().square().sum((0, 2, 3, 4))
        count += m[:, 0].numel()
    mu = total / count
    std = (sq / count - mu.square() + var / count).clamp_min(1e-12).sqrt()
    return mu.float().cpu(), std.float().cpu()


def _load_init(config: VAETrainConfig, vae: CausalVAE) -> dict[str, Tensor] | None:
    """Load ``config.init`` into ``vae`` (and freeze its encoder side when ``train_encoder`` is False); returns
    init's state dict, or None without init."""
    if not config.init:
        return None
    source = CausalVAE.from_pretrained(config.init)
    if source.config != vae.config:
        raise ValueError(
            f"init = {config.init!r} holds a VAE whose config differs from preset {config.preset!r}: "
            f"{source.config} vs {vae.config}"
        )
    state = source.state_dict()
    vae.load_state_dict(state)
    if not config.train_encoder:
        for part in (vae.encoder, vae.quant):
            part.requires_grad_(False)
    return state


def _vae_from_state(
    config: VAETrainConfig, state: dict[str, Tensor], init_state: dict[str, Tensor] | None
) -> CausalVAE:
    """A CausalVAE (eval mode, CPU) with a run's weights: ``state`` holds the run module's (``vae.*``; the
    discriminator's are ignored); the parts it lacks (frozen, not trained) come from ``init_state``."""
    model = CausalVAE(VAE_PRESETS[config.preset])
    if init_state is not None:  # frozen parts are not in the run's state: they stay init's
        model.load_state_dict(init_state)
    model.load_state_dict({k.removeprefix("vae."): v for k, v in state.items() if k.startswith("vae.")},
                          strict=False)  # fmt: skip  (latent stats buffers are set at export)
    return model.eval()


@torch.no_grad()
def _export(config: VAETrainConfig, model: CausalVAE, train_set: Any, out: Path) -> Path:
    """Measure the latent statistics (unless the encoder is init's, whose statistics ``model`` already holds)
    and write ``model`` to ``out``."""
    if config.train_encoder:
        device = next(model.parameters()).device
        model.set_latent_stats(*measure_latent_stats(model, train_set, config.stats_clips, device=device))
    return model.save_pretrained(out)


def export_vae_checkpoint(run: str | os.PathLike, out: str | os.PathLike, *, step: int | None = None) -> Path:
    """Export one checkpoint of a `wmgen train vae` run (its EMA weights; the current ones when the run kept no
    EMA) to ``out`` as the run's own export does after its last step (``wmgen train export``), e.g. to keep
    the best validation step rather than the last. ``step``: which checkpoint (default: the newest). The latent
    statistics are measured on the run's training data, which must still be there."""
    from physics.worlds import WorldDataset

    saved, weights = export_source(run, step)
    config = from_dict(VAETrainConfig, saved)
    init_state = CausalVAE.from_pretrained(config.init).state_dict() if config.init else None
    model = _vae_from_state(config, load_file(weights), init_state)
    return _export(config, model, WorldDataset(config.data, in_memory=True), Path(out))


def train_vae(config: VAETrainConfig, *, resume: bool = False) -> Path:
    """Train (or ``resume``) a VAE; returns the exported model directory ``<out>/vae``."""
    from physics.worlds import WorldDataset

    for name in ("data", "val_data"):
        if not getattr(config, name):
            raise ValueError(f"{name} must name a world dataset directory (wmgen data generate), got ''")
    train_set, val_set = WorldDataset(config.data, in_memory=True), WorldDataset(config.val_data, in_memory=True)
    loop = config.loop
    out = Path(config.out)
    with Distributed() as d:
        draws = torch.Generator().manual_seed(loop.seed)  # the VAE's draws, then the discriminator's
        vae = CausalVAE(VAE_PRESETS[config.preset], generator=draws)
        init_state = _load_init(config, vae)  # init's weights, or None
        disc = PatchDiscriminator(config.disc_channels, generator=draws) if config.disc_weight > 0 else None
        module = VAEWithDiscriminator(vae, disc).to(d.device)
        trainer = Trainer(module, loop, out, dist=d, config=config)
        if not resume and (out / "checkpoints").exists():
            raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another out")
        if resume:
            trainer.resume()

        def loss_fn(step: int, micro: int, gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
            # this micro-batch's part of the global batch and one generator per clip (crop, then posterior
            # noise): the same numbers for any world size and grad_accum
            part = trainer.part(micro)
            idx = global_batch_indices(len(train_set), loop.batch_size, step, loop.seed)[part]
            gens = example_generators(loop.seed, step, loop.batch_size)[part]
            items = [train_set[int(i)] for i in idx]
            crops = [_crop(item["video"], item["mask"], config.crop_frames, config.crop_size, g)
                     for item, g in zip(items, gens, strict=True)]  # fmt: skip
            video = torch.stack([v for v, _ in crops]).to(d.device)  # (b, 3, T, H, W)
            weight = object_weights(torch.stack([m for _, m in crops]).to(d.device), config.object_weight)
            recon, kl = trainer.model(video, gens)
            l1 = (weight * (recon - video).abs()).sum() / (3 * weight.sum())  # weighted mean over pixels
            ssim = kornia.metrics.ssim(_frames(recon), _frames(video), window_size=11).mean()
            kl_term = kl.mean() / video[0].numel()
            loss = config.l1_weight * l1 + config.ssim_weight * (1 - ssim) + config.kl_weight * kl_term
            metrics = {"l1": l1.item(), "ssim": ssim.item(), "kl": kl_term.item()}
            if disc is not None and step >= config.disc_start:
                real, fake = _frames(video) * 2 - 1, _frames(recon) * 2 - 1
                frozen = {k: v.detach() for k, v in disc.named_parameters()}
                g_adv = -functional_call(disc, frozen, (fake,)).mean()  # generator: reach only the VAE
                d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()  # hinge
                loss = loss + config.disc_weight * g_adv + d_loss
                metrics.update(g_adv=g_adv.item(), d_loss=d_loss.item())
            elif disc is not None:  # keep the discriminator in the graph so DDP sees every parameter used
                loss = loss + 0.0 * sum(p.sum() for p in disc.parameters())
            return loss, metrics

        def ema_vae() -> CausalVAE | None:
            """A fresh, unwrapped VAE with the EMA weights on rank 0 (None elsewhere); every rank must call it
            (gathering FSDP shards is a collective, and FSDP modules cannot be deep-copied)."""
            state = trainer.ema_state()
            if not d.is_main:
                return None
            return _vae_from_state(config, state, init_state).to(d.device)

        @torch.no_grad()
        def validate_fn(step: int) -> dict[str, Any]:
            model = ema_vae()
            if model is None:
                return {}
            scores, objects = [], []
            for start in range(0, min(config.val_clips, len(val_set)), 8):
                stop = min(start + 8, config.val_clips, len(val_set))
                items = [val_set[i] for i in range(start, stop)]
                video = torch.stack([item["video"] for item in items]).to(d.device)  # (b, 3, T, H, W)
                recon = model.decode(model.encode(video).mode())
                scores.append((stop - start, reconstruction_metrics(recon, video)))
                objects.append(object_psnr(recon, video, torch.stack([item["mask"] for item in items]).to(d.device)))
            n = sum(k for k, _ in scores)
            metrics = {f"val_{key}": sum(k * s[key] for k, s in scores) / n for key in ("psnr", "ssim")}
            return {**metrics, "val_object_psnr": torch.cat(objects).nanmean().item()}

        def export() -> None:
            model = ema_vae()
            if model is not None:
                _export(config, model, train_set, out / "vae")

        trainer.fit(loss_fn, validate=validate_fn, export=export)
    return out / "vae"
