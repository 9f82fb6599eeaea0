"""Still-video residual coordinates: an image-to-video flow that generates what *changes* after the first frame.

A world model is given the first frame and must produce the rest. Most of a clip does not move (the floor,
the walls, the objects at rest), yet in the latent space of a causal video VAE the later frames of even a
perfectly static scene differ from the first frame's latent: frame 0 is encoded alone, every later latent frame
encodes a chunk of 4 frames. A DiT trained on plain latents must therefore learn that map for every static
token, and a small one does not (its backgrounds dissolve after a few frames).

The *still video* of a first frame is that frame repeated T times; its latents s = E(still) are the latents the
clip would have if nothing moved. Flow-space coordinates y of normalised latents x [B, C, T', H', W'] are

    y[:, :, 0]  = x[:, :, 0]                          (the first latent frame: the given image, pinned or made)
    y[:, :, 1:] = (x[:, :, 1:] - s[:, :, 1:]) / r     (r [C]: the residual's per-channel std on training data)

so static content is y = 0 and the flow only has to generate the change. The map is affine and does not depend
on t, so integrating dy/dt = v_y(y, t) and mapping back is the same as integrating dx/dt = r * v_y(y(x), t) in
latent space (frame 0: r = 1): ``wmgen.pipeline.WorldModel`` does the latter, so guidance costs and the
returned latents stay in plain latent space. With the causal VAE, s[:, :, 0] is exactly the first frame's latent.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["from_residual", "measure_residual_scale", "still_video", "to_residual", "velocity_to_latent"]


def still_video(image: Tensor, num_frames: int) -> Tensor:
    """The first frame held still: pixels [B, 3, H, W] -> [B, 3, T, H, W] (a contiguous copy, ready to encode)."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return image[:, :, None].expand(-1, -1, num_frames, -1, -1).contiguous()


def _scale(scale: Tensor, x: Tensor) -> Tensor:
    if scale.shape != (x.shape[1],):
        raise ValueError(f"scale must be [C] = [{x.shape[1]}] (one per latent channel), got {list(scale.shape)}")
    return scale.to(x.device, x.dtype).view(1, -1, 1, 1, 1)


def _check_pair(x: Tensor, still: Tensor, names: tuple[str, str]) -> None:
    if x.ndim != 5 or still.shape != x.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must both be [B, C, T', H', W'] of one shape, got {tuple(x.shape)} and "
            f"{tuple(still.shape)}"
        )


def to_residual(latents: Tensor, still: Tensor, scale: Tensor) -> Tensor:
    """Flow coordinates y of normalised latents x, given the still video's latents s (module docstring).

    Args:
        latents: x [B, C, T', H', W'].
        still: s [B, C, T', H', W'] (its frame 0 is not used).
        scale: r [C] > 0.
    """
    _check_pair(latents, still, ("latents", "still"))
    residual = (latents[:, :, 1:] - still[:, :, 1:]) / _scale(scale, latents)  # (B, C, T' - 1, H', W')
    return torch.cat([latents[:, :, :1], residual], dim=2)


def from_residual(y: Tensor, still: Tensor, scale: Tensor) -> Tensor:
    """Normalised latents x of flow coordinates y: the inverse of ``to_residual``."""
    _check_pair(y, still, ("y", "still"))
    change = y[:, :, 1:] * _scale(scale, y)  # (B, C, T' - 1, H', W')
    return torch.cat([y[:, :, :1], still[:, :, 1:] + change], dim=2)


def velocity_to_latent(v_y: Tensor, scale: Tensor) -> Tensor:
    """dx/dt of dy/dt [B, C, T', H', W']: frames after the first scaled by r (the map is affine in y)."""
    return torch.cat([v_y[:, :, :1], v_y[:, :, 1:] * _scale(scale, v_y)], dim=2)


@torch.no_grad()
def measure_residual_scale(latents: Tensor, still: Tensor, *, floor: float = 1e-3) -> Tensor:
    """r [C]: the per-channel standard deviation of x - s over the frames after the first (and all clips and
    positions), clamped below at ``floor`` so that a channel that never changes does not divide by zero."""
    _check_pair(latents, still, ("latents", "still"))
    if latents.shape[2] < 2:
        raise ValueError(f"latents need at least 2 latent frames to have a residual, got {latents.shape[2]}")
    residual = (latents[:, :, 1:] - still[:, :, 1:]).float().transpose(0, 1).flatten(1)  # (C, B (T' - 1) H' W')
    return residual.std(dim=1).clamp_min(floor)
