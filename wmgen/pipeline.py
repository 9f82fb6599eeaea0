"""WorldModel: the generation pipeline -- VAE + VideoDiT + text encoder + control adapters + solver + guidance.

    prompt --TextEncoder--> context [B, Lc, Dc]     (CFG's other branch: the negative prompt, or NullText)
    first frame --VAE encode (mode), normalise--> image_latent [B, C, H', W']     (image-to-video models)
    noise x0 [B, C, T', H', W'] ~ N(0, I) from a torch.Generator   ("tokens" I2V layout: frame 0 = image_latent,
                                                                     held there by v = 0)
      --integrate(v, x0) on time_grid(steps, shift), t = 0 noise -> t = 1 data--> latents [B, C, T', H', W']
          v = guide(cfg(v_cond, v_uncond, cfg_scale), *guidance)
          v_branch(x, t) = dit(x, t, context, image_latent, hints=compose_hints(controls, dit.embed(x, t, ...)))
    latents --denormalise, VAE decode, clamp to [-1, 1]--> pixels [B, 3, T, H, W]  -> Video

Still-residual models (``config.residual_scale``, ``wmgen.models.still``) encode the first frame held still,
still [B, C, T', H', W'] (image_latent = its frame 0); their DiT sees and predicts y = to_residual(x, still, r),
and ``velocity_fn`` maps it back, so the noise, the solver, guidance costs and the returned latents all stay in
latent space.

Everything between the noise and the latents is a velocity function (DESIGN.md §3): CFG and gradient guidance
wrap it, the solver only integrates it. ``WorldModel.velocity_fn`` is that function for one branch, so a user
can build a custom sampler from the same pieces.

Checkpoint layout (``save_pretrained`` / ``from_pretrained``; safetensors only, nothing is ever unpickled)::

    world_model.json         {"format": 1, "config": WorldModelConfig as a dict}
    vae/                     CausalVAE.save_pretrained (config.json, model.safetensors)
    dit/                     VideoDiT.save_pretrained
    null_text.safetensors    NullText weights ("embedding" [Lc, Dc])

The text encoder is not saved: it is a frozen feature extractor named by ``config.text_encoder`` and rebuilt
on load (or passed in, e.g. a ``PrecomputedText``).

Example::

    wm = WorldModel.from_pretrained("checkpoints/tiny/world_model")   # the trained tiny model in the repository
    video = wm.generate("a red ball falls", first_frame=Image.open("start.png"), steps=16, seed=0)
    video.save("ball.mp4")                                    # and .gif / .png (a grid of frames)
    dark = GradientGuidance(wm.pixel_cost(lambda px: px.mean(dim=(1, 2, 3, 4))), 2.0)
    video = wm.generate("a red ball falls", first_frame=frame, guidance=[dark], seed=0)   # darker
    long = wm.rollout("a red ball falls", frame, num_clips=4, seed=0)   # 1 + 4 (T - 1) frames
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from controls.base import Control, compose_hints
from wmgen.config import ConfigError, from_dict, to_dict, validate
from wmgen.flow.guidance import VelocityFn, cfg, guide
from wmgen.flow.schedules import time_grid
from wmgen.flow.solvers import METHODS, integrate
from wmgen.models.dit import VideoDiT
from wmgen.models.still import from_residual, still_video, to_residual, velocity_to_latent
from wmgen.models.text import TEXT_ENCODERS, NullText, TextEncoder, check_prompts, make_text_encoder
from wmgen.models.vae import CausalVAE

__all__ = [
    "CHECKPOINT_FILES",
    "VIDEO_SUFFIXES",
    "Video",
    "WorldModel",
    "WorldModelConfig",
    "frame_grid",
]

CONFIG_NAME = "world_model.json"
NULL_TEXT_NAME = "null_text.safetensors"
CHECKPOINT_FILES = (
    CONFIG_NAME,
    "vae/config.json",
    "vae/model.safetensors",
    "dit/config.json",
    "dit/model.safetensors",
    NULL_TEXT_NAME,
)
CHECKPOINT_FORMAT = 1  # version of the layout above, recorded in world_model.json
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")  # formats we refuse to unpickle
VIDEO_SUFFIXES = (".mp4", ".gif", ".png")


# ---------------------------------------------------------------------------------------------------------
# 1. config


@dataclass(frozen=True)
class WorldModelConfig:
    """Generation settings of a ``WorldModel``, saved in ``world_model.json``.

    The sampling fields are defaults: every one can be overridden per call of ``generate``.
    """

    resolution: int = field(default=64, metadata={"range": (1, None)})  # H = W of generated frames (pixels)
    num_frames: int = field(default=17, metadata={"range": (1, None)})  # frames T per clip, 1 + 4k (causal VAE)
    fps: float = field(default=12.0, metadata={"range": (1e-3, None)})  # playback rate of saved videos (frames/s)
    # name in wmgen.models.text.TEXT_ENCODERS, or "none": no built-in encoder (pass text_encoder=, e.g. a
    # PrecomputedText of the embeddings the model was trained with)
    text_encoder: str = "minilm"
    text_max_length: int = field(default=32, metadata={"range": (1, None)})  # Lc, text tokens per prompt
    steps: int = field(default=32, metadata={"range": (1, None)})  # default solver steps S
    method: str = "heun"  # default ODE solver, a key of wmgen.flow.solvers.METHODS
    # default time-grid shift (Esser et al. 2024 eq. 23; Wan uses 3-5): > 1 spends more steps near the noise
    shift: float = field(default=1.0, metadata={"range": (1e-6, None)})
    # default classifier-free guidance weight w (Ho & Salimans 2022); 1 = conditional model only, no 2nd branch
    cfg_scale: float = field(default=1.0, metadata={"range": (0.0, None)})
    # what the DiT generates after the first frame: None = normalised latents; r [C] = their residual against the
    # still video of the first frame divided by r (wmgen.models.still; `wmgen train flow` target still_residual)
    residual_scale: tuple[float, ...] | None = field(default=None, metadata={"range": (1e-12, None)})

    def __post_init__(self) -> None:
        validate(self)
        if self.method not in METHODS:
            raise ConfigError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.text_encoder != "none" and self.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(f"text_encoder: expected one of {[*TEXT_ENCODERS, 'none']}, got {self.text_encoder!r}")


# ---------------------------------------------------------------------------------------------------------
# 2. the result: a batch of videos


def frame_grid(frames: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tile frames [T, H, W, 3] into one picture [rows H, columns W, 3], row by row; empty cells are black.

    ``columns`` defaults to ceil(sqrt(T)), a near-square sheet.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    T = frames.shape[0]
    columns = math.ceil(math.sqrt(T)) if columns is None else columns
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an int >= 1 or None, got {columns!r}")
    rows = math.ceil(T / columns)
    pad = np.zeros((rows * columns - T, *frames.shape[1:]), dtype=frames.dtype)
    cells = np.concatenate([frames, pad])  # (rows columns, H, W, 3)
    return rearrange(cells, "(r c) h w ch -> (r h) (c w) ch", r=rows, c=columns)


@dataclass
class Video:
    """Generated videos: pixels, the latents they were decoded from, and the playback rate.

    Example::

        video = wm.generate("a red ball falls", first_frame=frame, seed=0)
        video.frames.shape                      # uint8 [B, T, H, W, 3]
        video.save("ball.gif", index=0)         # sample 0 of the batch
    """

    pixels: Tensor  # [B, 3, T, H, W] float in [-1, 1]
    latents: Tensor  # [B, C, T', H', W'] normalised latents the pixels were decoded from
    fps: float  # playback rate (frames/s)

    def __post_init__(self) -> None:
        p, z = self.pixels, self.latents
        if not isinstance(p, Tensor) or p.ndim != 5 or p.shape[1] != 3 or not p.is_floating_point():
            got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"pixels must be a float tensor [B, 3, T, H, W] in [-1, 1], got {got}")
        if not isinstance(z, Tensor) or z.ndim != 5 or z.shape[0] != p.shape[0]:
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"latents must be [B, C, T', H', W'] with B = {p.shape[0]} (from pixels), got {got}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0:
            raise ValueError(f"fps must be a number > 0, got {self.fps!r}")

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def frames(self) -> Tensor:
        """uint8 [B, T, H, W, 3] on the CPU: round((p + 1) 127.5) of the pixels clamped to [-1, 1]."""
        x = ((self.pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rearrange(x, "b c t h w -> b t h w c").cpu()  # (B, T, H, W, 3)

    def save(self, path: str | os.PathLike, *, index: int = 0) -> Path:
        """Write sample ``index`` of the batch to ``path``, atomically (a temporary file, then a rename).

        The format follows the suffix:

        - ``.mp4``: H.264 (yuv420p) at ``fps`` through imageio's FFMPEG plugin (needs the ``imageio-ffmpeg``
          package; lossy; H and W must be even).
        - ``.gif``: looping, through Pillow. Pillow merges consecutive *identical* frames into one frame of
          the summed duration, so a still video plays the same but holds fewer frames.
        - ``.png``: every frame on one sheet (``frame_grid``, row by row), lossless.

        Args:
            path: output file; its parent directories are created.
            index: which sample of the batch, 0 <= index < B.

        Returns:
            ``path`` as a Path.

        Raises:
            ValueError: unknown suffix (lists the valid ones), bad index, odd size for mp4.
            ImportError: ``.mp4`` without the ``imageio-ffmpeg`` package.
        """
        import imageio.v3 as iio

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"path must end in one of {list(VIDEO_SUFFIXES)}, got {str(path)!r}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise ValueError(f"index must be an int in [0, {len(self)}) (the batch size), got {index!r}")
        frames = self.frames[index].numpy()  # (T, H, W, 3)
        if suffix == ".mp4":
            if importlib.util.find_spec("imageio_ffmpeg") is None:
                raise ImportError(
                    "saving .mp4 needs the imageio-ffmpeg package (it ships the ffmpeg binary): "
                    "pip install imageio-ffmpeg, or save as .gif / .png"
                )
            if frames.shape[1] % 2 or frames.shape[2] % 2:
                raise ValueError(
                    f".mp4 (H.264, yuv420p) needs an even height and width, got {frames.shape[1]}x"
                    f"{frames.shape[2]}; save as .gif or .png"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary file keeps the suffix: imageio picks the format from it.
        tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")
        try:
            if suffix == ".mp4":
                # macro_block_size=1: keep the size exactly (the default pads up to multiples of 16).
                iio.imwrite(
                    tmp, frames, plugin="FFMPEG", fps=float(self.fps), codec="libx264", quality=8,
                    macro_block_size=1, ffmpeg_log_level="error",
                )  # fmt: skip
            elif suffix == ".gif":
                iio.imwrite(tmp, frames, plugin="pillow", extension=".gif", duration=1000.0 / self.fps, loop=0)
            else:
                iio.imwrite(tmp, frame_grid(frames), plugin="pillow", extension=".png")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


# ---------------------------------------------------------------------------------------------------------
# 3. the pipeline


class WorldModel(nn.Module):
    """A latent video world model: generate videos from a prompt (and a first frame), with controls and guidance.

    An ``nn.Module`` holding ``vae``, ``dit`` and ``null_text``, so ``.to(device)`` / ``.eval()`` act on all
    three. The text encoder is not a submodule (a frozen feature extractor, never saved): it returns its
    embeddings on its own device and they are moved to the model's.

    Example::

        wm = WorldModel(vae, dit, null_text=NullText(32, 384), config=WorldModelConfig(), text_encoder=text)
        video = wm.generate("a red ball falls", first_frame=frame, steps=16, cfg_scale=3.0, seed=0)
        wm.save_pretrained("outputs/world_model")
        wm = WorldModel.from_pretrained("outputs/world_model")   # MiniLM rebuilt from config.text_encoder

    Args:
        vae: the causal VAE; its latent statistics normalise the DiT's latents.
        dit: the velocity network on normalised latents (``in_channels == out_channels == vae z_dim``).
        null_text: the learned null context of classifier-free guidance, [Lc, Dc] =
            [config.text_max_length, dit text_dim].
        config: resolution, clip length, text encoder name, sampling defaults.
        text_encoder: prompt encoder with ``dim == dit text_dim`` and ``max_length == config.text_max_length``;
            None: prompts cannot be encoded (``encode_prompt`` raises).

    Raises:
        TypeError / ValueError: a component of the wrong type, or components that do not fit together (each
            message names both sides).
    """

    def __init__(
        self,
        vae: CausalVAE,
        dit: VideoDiT,
        *,
        null_text: NullText,
        config: WorldModelConfig,
        text_encoder: TextEncoder | None = None,
    ):
        super().__init__()
        for name, value, cls in (
            ("vae", vae, CausalVAE),
            ("dit", dit, VideoDiT),
            ("null_text", null_text, NullText),
            ("config", config, WorldModelConfig),
        ):
            if not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
        if text_encoder is not None and not isinstance(text_encoder, TextEncoder):
            raise TypeError(f"text_encoder must be a TextEncoder or None, got {type(text_encoder).__name__}")
        self.vae, self.dit, self.null_text, self.config = vae, dit, null_text, config
        self.text_encoder = text_encoder
        self._check_components()

    def _check_components(self) -> None:
        c, v, d = self.config, self.vae.config, self.dit.config
        if not d.in_channels == d.out_channels == v.z_dim:
            raise ValueError(
                f"dit must map VAE latents to velocities: need dit in_channels == out_channels == vae z_dim, "
                f"got in_channels={d.in_channels}, out_channels={d.out_channels}, z_dim={v.z_dim}"
            )
        null_shape = tuple(self.null_text.embedding.shape)
        if null_shape != (c.text_max_length, d.text_dim):
            raise ValueError(
                f"null_text must be [Lc, Dc] = [config.text_max_length, dit text_dim] = "
                f"[{c.text_max_length}, {d.text_dim}], got {list(null_shape)}"
            )
        te = self.text_encoder
        if te is not None and (te.dim != d.text_dim or te.max_length != c.text_max_length):
            raise ValueError(
                f"text_encoder {te!r} must give [Lc, Dc] = [config.text_max_length, dit text_dim] = "
                f"[{c.text_max_length}, {d.text_dim}] tokens, got [{te.max_length}, {te.dim}]"
            )
        s, (_, ph, pw) = v.spatial_factor, d.patch
        if c.resolution % (s * ph) or c.resolution % (s * pw):
            raise ValueError(
                f"config.resolution must be a multiple of the VAE spatial factor {s} times the DiT patch "
                f"{(ph, pw)}, got {c.resolution}"
            )
        self._check_num_frames(c.num_frames, "config.num_frames")
        if c.residual_scale is not None:
            if len(c.residual_scale) != v.z_dim:
                raise ValueError(
                    f"config.residual_scale must have one value per latent channel (vae z_dim = {v.z_dim}), got "
                    f"{len(c.residual_scale)}"
                )
            if not d.image_to_video:
                raise ValueError(
                    "config.residual_scale needs an image-to-video dit (the still video is of the first frame)"
                )

    def _check_num_frames(self, num_frames: Any, name: str = "num_frames") -> int:
        f, pt = self.vae.config.temporal_factor, self.dit.config.patch[0]
        ok = isinstance(num_frames, int) and not isinstance(num_frames, bool) and num_frames >= 1
        if not ok or (num_frames - 1) % f or self.vae.config.latent_frames(num_frames) % pt:
            raise ValueError(
                f"{name} must be 1 + {f} k frames (the VAE's temporal factor {f}) giving a latent frame count "
                f"divisible by the DiT patch {pt}, got {num_frames!r}"
            )
        return num_frames

    # --- properties ----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def image_to_video(self) -> bool:
        """Whether the DiT is conditioned on a first frame (``generate`` then needs ``first_frame``)."""
        return self.dit.config.image_to_video

    def latent_shape(self, num_frames: int | None = None) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latents of one clip of ``num_frames`` frames (default config.num_frames)."""
        T = self._check_num_frames(self.config.num_frames if num_frames is None else num_frames)
        side = self.config.resolution // self.vae.config.spatial_factor
        return self.vae.config.z_dim, self.vae.config.latent_frames(T), side, side

    # --- checkpoints ---------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the model into ``directory`` (layout in the module docstring), atomically.

        Everything is written into a temporary directory beside ``directory`` and renamed into place only when
        complete, so a failed save never leaves a half-written model where a good one was. An existing
        ``directory`` is replaced only if it holds nothing but a world model's entries.

        Returns:
            ``directory`` as a Path.
        """
        target = Path(directory)
        entries = {CONFIG_NAME, NULL_TEXT_NAME, "vae", "dit"}
        if target.exists():
            extra = sorted(set(os.listdir(target)) - entries) if target.is_dir() else [target.name]
            if extra:
                raise FileExistsError(
                    f"{target} exists and holds other things than a world model ({extra[:5]}); refusing to replace it"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self.vae.save_pretrained(tmp / "vae")
            self.dit.save_pretrained(tmp / "dit")
            state = {k: v.detach().cpu().contiguous() for k, v in self.null_text.state_dict().items()}
            save_file(state, str(tmp / NULL_TEXT_NAME), metadata={"format": "pt"})
            meta = {"format": CHECKPOINT_FORMAT, "config": to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: torch.device | str = "cpu",
        text_encoder: TextEncoder | None = None,
    ) -> WorldModel:
        """Load a model written by ``save_pretrained`` (safetensors only; nothing is unpickled), in eval mode.

        Args:
            directory: the ``save_pretrained`` folder.
            device: where to put the weights (and build the text encoder).
            text_encoder: the prompt encoder; None builds ``config.text_encoder`` from ``TEXT_ENCODERS``
                (no encoder when it is "none").

        Raises:
            FileNotFoundError: ``directory`` is missing or lacks files (all missing ones are named).
            ValueError: the folder holds only pickle checkpoints (refused: unpickling runs arbitrary code),
                or a config that does not parse.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a directory: expected a WorldModel.save_pretrained folder")
        missing = [f for f in CHECKPOINT_FILES if not (directory / f).is_file()]
        if missing:
            pickles = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise ValueError(
                    f"{directory} holds pickle checkpoints {pickles[:5]} but not a safetensors world model "
                    f"(missing {missing}); wmgen never unpickles files (loading a pickle can run arbitrary "
                    "code). Load the weights yourself with torch.load(..., weights_only=True) into CausalVAE / "
                    "VideoDiT / NullText, build a WorldModel and call save_pretrained"
                )
            raise FileNotFoundError(
                f"{directory} is not a complete WorldModel.save_pretrained folder: missing {missing}"
            )
        meta = json.loads((directory / CONFIG_NAME).read_text())
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or "config" not in meta:
            raise ValueError(
                f"{directory / CONFIG_NAME} is not a format-{CHECKPOINT_FORMAT} world model config "
                f"(expected {{'format': {CHECKPOINT_FORMAT}, 'config': {{...}}}})"
            )
        config = from_dict(WorldModelConfig, meta["config"])
        vae = CausalVAE.from_pretrained(directory / "vae", device=device)
        dit = VideoDiT.from_pretrained(directory / "dit", device=device)
        state = load_file(str(directory / NULL_TEXT_NAME), device=str(device))
        if set(state) != {"embedding"} or state["embedding"].ndim != 2:
            raise ValueError(
                f"{directory / NULL_TEXT_NAME} must hold one [Lc, Dc] tensor 'embedding', got "
                f"{ {k: tuple(v.shape) for k, v in state.items()} }"
            )
        null_text = NullText(*state["embedding"].shape).to(device)
        null_text.load_state_dict(state)
        if text_encoder is None and config.text_encoder != "none":
            text_encoder = make_text_encoder(config.text_encoder, max_length=config.text_max_length, device=device)
        return cls(vae, dit, null_text=null_text, config=config, text_encoder=text_encoder).eval()

    # --- encoders ------------------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | Sequence[str], batch: int) -> Tensor:
        """Text tokens for ``batch`` samples: [B, Lc, Dc] float32 on the model's device.

        Args:
            prompt: one string (used for every sample) or B strings.
            batch: B.

        Raises:
            TypeError: ``prompt`` is not a string or a sequence of strings.
            ValueError: the number of prompts is neither 1 nor B, or the model has no text encoder.
        """
        return self._encode_text(prompt, batch, "prompt")

    def _encode_text(self, prompt: Any, batch: int, name: str) -> Tensor:
        prompts = check_prompts(prompt, name)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if len(prompts) not in (1, batch):
            raise ValueError(f"{name}: expected 1 or B = {batch} prompts, got {len(prompts)}")
        if self.text_encoder is None:
            raise ValueError(
                f"this WorldModel has no text encoder (config.text_encoder = {self.config.text_encoder!r}): pass "
                "text_encoder= to WorldModel / WorldModel.from_pretrained (e.g. a PrecomputedText)"
            )
        context = self.text_encoder(prompts).to(self.device, torch.float32)  # (1|B, Lc, Dc)
        expected = (len(prompts), self.config.text_max_length, self.dit.config.text_dim)
        if tuple(context.shape) != expected:
            raise ValueError(f"text_encoder returned {tuple(context.shape)} for {name}, expected {expected}")
        return context.expand(batch, -1, -1)  # (B, Lc, Dc)

    def _image_tensor(self, image: Any, name: str = "first_frame") -> Tensor:
        """Any accepted image form -> float [B, 3, H, W] in [-1, 1] on the model's device (checked, not resized)."""
        R = self.config.resolution
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                raise ValueError(
                    f"{name}: PIL images must be mode 'RGB', got mode {image.mode!r} (convert it first: "
                    "image.convert('RGB'))"
                )
            image = np.asarray(image)  # (H, W, 3) uint8
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(
                    f"{name}: numpy images must be uint8 [H, W, 3] or [B, H, W, 3], got dtype {image.dtype}; "
                    "pass float pixels as a torch tensor [B, 3, H, W] in [-1, 1]"
                )
            image = torch.from_numpy(np.array(image))  # a writable copy (PIL arrays are read-only)
        if not isinstance(image, Tensor):
            raise TypeError(
                f"{name} must be a PIL.Image (RGB), a uint8 array/tensor [H, W, 3] or [B, H, W, 3], or a float "
                f"tensor [3, H, W] or [B, 3, H, W] in [-1, 1]; got {type(image).__name__}"
            )
        if image.dtype == torch.uint8:
            x = image[None] if image.ndim == 3 else image
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"{name}: uint8 images must be [H, W, 3] or [B, H, W, 3], got {tuple(image.shape)}")
            x = rearrange(x, "b h w c -> b c h w").float() / 127.5 - 1  # (B, 3, H, W) in [-1, 1]
        elif image.is_floating_point():
            x = image[None] if image.ndim == 3 else image
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(
                    f"{name}: float tensors must be [3, H, W] or [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}"
                )
            if not bool(torch.isfinite(x).all()) or x.min() < -1 or x.max() > 1:
                raise ValueError(
                    f"{name}: float pixels must be finite and in [-1, 1], got range "
                    f"[{x.min().item():.4g}, {x.max().item():.4g}]"
                )
        else:
            raise TypeError(f"{name}: tensors must be uint8 [.., H, W, 3] or float [.., 3, H, W], got {image.dtype}")
        if tuple(x.shape[2:]) != (R, R):
            raise ValueError(
                f"{name} must be {R}x{R} pixels (config.resolution; images are never resized), got "
                f"{x.shape[2]}x{x.shape[3]} (height x width)"
            )
        return x.to(self.device, torch.float32)

    def encode_first_frame(self, first_frame: Any) -> Tensor:
        """The normalised latent of a conditioning frame: [B, C, H', W'].

        The frame is encoded as a one-frame video (the causal VAE encodes frame 0 alone), by the posterior mode.

        Args:
            first_frame: a ``PIL.Image`` (mode RGB), a uint8 numpy array or tensor [H, W, 3] / [B, H, W, 3], or
                a float tensor [3, H, W] / [B, 3, H, W] in [-1, 1]; H = W = config.resolution (never resized).

        Raises:
            TypeError / ValueError: another type, mode, layout, value range or size (named in the message).
        """
        x = self._image_tensor(first_frame)  # (B, 3, H, W)
        z = self.vae.encode(x[:, :, None]).mode()  # (B, C, 1, H', W')
        return self.vae.normalize(z)[:, :, 0]  # (B, C, H', W')

    def encode_still(self, first_frame: Any, num_frames: int | None = None) -> Tensor:
        """Normalised latents (posterior mode) of the first frame held still for ``num_frames`` frames (default
        config.num_frames): [B, C, T', H', W'] (``wmgen.models.still``); frame 0 is ``encode_first_frame``'s.

        Args:
            first_frame: as in ``encode_first_frame``.
        """
        T = self._check_num_frames(self.config.num_frames if num_frames is None else num_frames)
        x = self._image_tensor(first_frame)  # (B, 3, H, W)
        return self.vae.normalize(self.vae.encode(still_video(x, T)).mode())

    @property
    def residual_scale(self) -> Tensor | None:
        """r [C] of a still-residual model (``WorldModelConfig.residual_scale``), None for a plain-latent one."""
        r = self.config.residual_scale
        return None if r is None else torch.tensor(r, dtype=torch.float32, device=self.device)

    def encode_video(self, video: Tensor) -> Tensor:
        """Normalised latents (posterior mode) of pixels [B, 3, T, H, W] in [-1, 1]: [B, C, T', H', W']."""
        R = self.config.resolution
        if not isinstance(video, Tensor) or video.ndim != 5 or tuple(video.shape[3:]) != (R, R):
            got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"video must be [B, 3, T, H, W] with H = W = config.resolution = {R}, got {got}")
        return self.vae.normalize(self.vae.encode(video.to(self.device)).mode())

    def decode(self, latents: Tensor) -> Tensor:
        """Pixels [B, 3, T, H, W] of normalised latents [B, C, T', H', W'], clamped to [-1, 1]."""
        return self._decode_unclamped(latents).clamp(-1, 1)

    def _decode_unclamped(self, latents: Tensor) -> Tensor:
        return self.vae.decode(self.vae.denormalize(latents))  # (B, 3, T, H, W)

    def pixel_cost(self, cost: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        """Turn a pixel-space cost into a latent-space one for ``GradientGuidance``.

        The returned function decodes the predicted clean latents x1_hat [B, C, T', H', W'] through the VAE,
        differentiably, and evaluates ``cost`` on the pixels. The pixels are *not* clamped here (unlike
        ``decode``), so the gradient does not vanish where the decoder overshoots [-1, 1].

        Args:
            cost: pixels [B, 3, T, H, W] -> [B], lower is better.

        Returns:
            x1_hat [B, C, T', H', W'] -> [B].
        """
        if not callable(cost):
            raise TypeError(f"cost must be callable pixels [B, 3, T, H, W] -> [B], got {type(cost).__name__}")

        def latent_cost(x1_hat: Tensor) -> Tensor:
            return cost(self._decode_unclamped(x1_hat))

        latent_cost.__name__ = f"pixel_cost({getattr(cost, '__name__', type(cost).__name__)})"
        return latent_cost

    # --- sampling ------------------------------------------------------------------------------------------

    def velocity_fn(
        self,
        *,
        context: Tensor | None,
        image_latent: Tensor | None,
        controls: Sequence[Control] = (),
        branch: str = "cond",
        still: Tensor | None = None,
    ) -> VelocityFn:
        """The DiT's velocity for one CFG branch, with the controls' hints: ``(x [B, C, T', H', W'], t [B]) -> v``,
        in normalised latent space.

        Args:
            context: [B, Lc, Dc] text tokens of this branch (prompt, negative prompt or null), or None.
            image_latent: [B, C, H', W'] normalised first-frame latent (image-to-video models), or None.
            controls: ``controls.base.Control`` s; their hints are summed (``compose_hints``).
            branch: "cond" or "uncond": on "uncond", controls with ``uncond=False`` are skipped.
            still: [B, C, T', H', W'] latents of the still first frame (``encode_still``); required by, and only
                by, still-residual models: the DiT then sees and predicts still-residual coordinates, mapped
                back to latent space here (``wmgen.models.still``).
        """
        controls = _check_controls(controls)
        if branch not in ("cond", "uncond"):
            raise ValueError(f"branch must be 'cond' or 'uncond', got {branch!r}")
        scale = self.residual_scale
        if (scale is None) != (still is None):
            raise ValueError(
                "still must be given for a still-residual model (config.residual_scale set) and only for one: "
                f"residual_scale is {'set' if scale is not None else 'None'}, still is "
                f"{'given' if still is not None else 'None'}"
            )
        dit = self.dit

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            y = x if still is None else to_residual(x, still, scale)  # (B, C, T', H', W'): the DiT's coordinates
            hints = None
            if controls:
                # The adapters see the backbone's embeddings under the precision the backbone runs them in.
                bf16 = dit.autocast_cuda and y.device.type == "cuda"
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
                    emb = dit.embed(y, t, context=context, image_latent=image_latent)
                    hints = compose_hints(controls, emb, t, branch=branch) or None
            v = dit(y, t, context=context, image_latent=image_latent, hints=hints)
            return v if still is None else velocity_to_latent(v, scale)

        return velocity

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str] = "",
        first_frame: Any = None,
        *,
        controls: Sequence[Control] = (),
        guidance: Sequence[Callable[[VelocityFn], VelocityFn]] = (),
        num_frames: int | None = None,
        steps: int | None = None,
        method: str | None = None,
        cfg_scale: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        shift: float | None = None,
        batch_size: int | None = None,
        callback: Callable[[int, float, Tensor], None] | None = None,
        progress: bool = False,
    ) -> Video:
        """Sample videos: noise -> latents by integrating the (guided) velocity, then decode.

        Arguments left as None take their defaults from ``config``.

        Args:
            prompt: one prompt for all samples, or one per sample.
            first_frame: the conditioning frame of an image-to-video model (required there, rejected by
                text-only models); forms as in ``encode_first_frame``; one image for all samples or one per
                sample. With the Wan2.1 channel layout the generated frame 0 is the model's own; with the
                "tokens" layout (``DiTConfig.image_condition``) the latent frame 0 is the given frame's.
            controls: ``controls.base.Control`` s, applied to both CFG branches unless ``Control.uncond`` is
                False.
            guidance: velocity wrappers (``wmgen.flow.guidance.GradientGuidance`` ...) stacked outside CFG with
                ``guide`` (the first innermost). Their costs see normalised latents x1_hat: wrap pixel costs
                with ``pixel_cost``. Gradients are enabled inside the wrappers; the rest runs without autograd.
            num_frames: frames T per clip (1 + 4k for the causal VAE).
            steps: solver steps S (for dopri5: the number of reporting intervals; it picks its own steps).
            method: solver, a key of ``wmgen.flow.solvers.METHODS``.
            cfg_scale: classifier-free guidance weight w; 1 evaluates the conditional branch only.
            negative_prompt: the unconditional branch's prompt (one or B); None uses the learned null text.
                Only meaningful with cfg_scale != 1 (an error otherwise).
            seed: seeds a new ``torch.Generator`` on the model's device (same seed, inputs and device: same
                video). Not together with ``generator``. Neither: a fresh random seed.
            generator: draw the noise (and euler_maruyama's noise) from this generator instead.
            shift: time-grid shift (``wmgen.flow.schedules.time_grid``).
            batch_size: B; default: the number of prompts / first frames (1 if all are single).
            callback: called as ``callback(step, t, latents)`` after every solver step.
            progress: show a tqdm progress bar.

        Returns:
            ``Video`` with pixels [B, 3, T, H, W] in [-1, 1] and the normalised latents [B, C, T', H', W'].
        """
        c = self.config
        num_frames = self._check_num_frames(c.num_frames if num_frames is None else num_frames)
        steps = c.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        method = c.method if method is None else method
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
        cfg_scale = _check_number(c.cfg_scale if cfg_scale is None else cfg_scale, "cfg_scale", minimum=0.0)
        shift = _check_number(c.shift if shift is None else shift, "shift", minimum=0.0, strict=True)
        controls = _check_controls(controls)
        if isinstance(guidance, Callable) or not isinstance(guidance, Sequence):
            raise TypeError(f"guidance must be a sequence of velocity wrappers, got {type(guidance).__name__}")
        counts = {"prompt": len(check_prompts(prompt, "prompt"))}
        if negative_prompt is not None:
            counts["negative_prompt"] = len(check_prompts(negative_prompt, "negative_prompt"))

        # 1. first frame -> image latent (image-to-video models only)
        if self.image_to_video and first_frame is None:
            raise ValueError(
                "this is an image-to-video model (dit.config.image_to_video): pass first_frame (a PIL image, "
                f"uint8 [H, W, 3] or float [3, H, W] in [-1, 1], {c.resolution}x{c.resolution} pixels)"
            )
        if not self.image_to_video and first_frame is not None:
            raise ValueError("first_frame was given, but this is a text-to-video model (no first-frame conditioning)")
        image_latent = still = None
        if first_frame is not None and self.config.residual_scale is not None:
            still = self.encode_still(first_frame, num_frames)  # (1|B, C, T', H', W')
            image_latent = still[:, :, 0]  # (1|B, C, H', W'): the causal VAE encodes frame 0 alone
        elif first_frame is not None:
            image_latent = self.encode_first_frame(first_frame)  # (1|B, C, H', W')

        # 2. batch size, then text for both branches
        if image_latent is not None:
            counts["first_frame"] = image_latent.shape[0]
        B = _resolve_batch(batch_size, counts)
        if image_latent is not None:
            image_latent = image_latent.expand(B, -1, -1, -1)  # (B, C, H', W')
        if still is not None:
            still = still.expand(B, -1, -1, -1, -1)  # (B, C, T', H', W')
        context = self._encode_text(prompt, B, "prompt")  # (B, Lc, Dc)
        guided = cfg_scale != 1.0
        if negative_prompt is not None and not guided:
            raise ValueError(
                "negative_prompt only acts through classifier-free guidance, but cfg_scale is 1; pass cfg_scale > 1"
            )
        if guided:
            null = self._encode_text(negative_prompt, B, "negative_prompt") if negative_prompt is not None else None
            null = self.null_text.expand(B) if null is None else null  # (B, Lc, Dc)

        # 3. noise
        generator = _make_generator(seed, generator, self.device)
        x0 = torch.randn((B, *self.latent_shape(num_frames)), generator=generator, device=generator.device)
        x0 = x0.to(self.device)  # (B, C, T', H', W')
        pinned = self.dit.pinned_frames(image_latent)  # "tokens" I2V layout: frame 0 is the given latent
        if pinned:
            x0 = torch.cat([image_latent[:, :, None].to(x0.dtype), x0[:, :, pinned:]], dim=2)
        if still is not None:  # the noise lives in the DiT's still-residual coordinates
            x0 = from_residual(x0, still, self.residual_scale)

        # 4. the velocity (in latent space): conditional branch, CFG, then the guidance wrappers
        shared = {"image_latent": image_latent, "controls": controls, "still": still}  # both CFG branches
        v = self.velocity_fn(context=context, branch="cond", **shared)
        if guided:  # at w = 1 CFG is the conditional model: skip the second forward altogether
            v_uncond = self.velocity_fn(context=null, branch="uncond", **shared)
            v = cfg(v, v_uncond, cfg_scale)
        v = guide(v, *guidance)
        if pinned and guidance:  # the DiT holds the given frame (v = 0 there); a guidance cost could move it
            v = _hold_frames(v, pinned)

        # 5. solve from t = 0 (noise) to t = 1 (data)
        grid = time_grid(steps, shift=shift, dtype=torch.float64)
        bar = tqdm(total=None if METHODS[method].adaptive else steps, desc="generate", disable=not progress)

        def on_step(i: int, t: float, x: Tensor) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, t, x)

        try:
            latents = integrate(
                v, x0, method=method, time_grid=grid, generator=_on_device(generator, self.device), callback=on_step
            )
        finally:
            bar.close()

        # 6. decode
        return Video(self.decode(latents), latents, c.fps)

    @torch.no_grad()
    def rollout(
        self, prompt: str | Sequence[str], first_frame: Any, *, num_clips: int, **generate_kwargs: Any
    ) -> Video:
        """Autoregressive long video: each clip starts from the last generated frame of the one before.

        Clip 0 is ``generate(prompt, first_frame, ...)``; clip k + 1 is generated with ``first_frame`` = clip k's
        last frame (its pixels, re-encoded by the VAE like any first frame). What is exact:

        - ``pixels``: clip 0's T frames, then frames 1: of every later clip (each continuation's frame 0, the
          model's re-generation of the conditioning frame, is dropped): T_total = 1 + num_clips (T - 1). The
          frame at each boundary, index k (T - 1), is clip k's last frame, bit-exactly the first frame clip
          k + 1 was conditioned on.
        - ``latents``: the same along latent time: clip 0's T' frames, then latent frames 1: of every later
          clip: T'_total = 1 + num_clips (T' - 1), consistent with T_total under the VAE's temporal factor.
          Each clip's pixels were decoded from that clip's own latents; decoding the concatenated latents in
          one go differs near the boundaries (the causal decoder would see the previous clip's last latent
          frame there instead of the clip's own frame 0).
        - Seeds: with ``seed=s``, clip 0 uses seed s (so it equals ``generate(..., seed=s)``) and clip k >= 1 a
          seed, the k-th of ``num_clips - 1`` integers drawn with ``torch.randint(0, 2**62, ...)`` from
          ``torch.Generator().manual_seed(s)``; with ``generator=g`` the clips draw from g in turn. Either way
          the rollout is reproducible. Without either, one fresh seed is drawn for the whole rollout.

        Args:
            prompt: as in ``generate`` (the same prompt for every clip).
            first_frame: the first frame of clip 0 (an image-to-video model is required).
            num_clips: number of clips, >= 1.
            **generate_kwargs: any other ``generate`` argument (steps, cfg_scale, seed, controls ...), passed to
                every clip.

        Returns:
            ``Video`` with pixels [B, 3, 1 + num_clips (T - 1), H, W] and latents [B, C, 1 + num_clips (T' - 1),
            H', W'].
        """
        if not self.image_to_video:
            raise ValueError("rollout continues from the last frame, so it needs an image-to-video model")
        if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
            raise ValueError(f"num_clips must be an int >= 1, got {num_clips!r}")
        seed = generate_kwargs.pop("seed", None)
        generator = generate_kwargs.pop("generator", None)
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if generator is None:
            seed = torch.Generator().seed() if seed is None else _check_seed(seed)
            generators = [torch.Generator(self.device).manual_seed(s) for s in _clip_seeds(seed, num_clips)]
        else:
            generators = [generator] * num_clips
        clips: list[Video] = []
        frame = first_frame
        for gen in generators:
            clip = self.generate(prompt, frame, generator=gen, **generate_kwargs)
            clips.append(clip)
            frame = clip.pixels[:, :, -1]  # (B, 3, H, W): the next clip's first frame
        pixels = torch.cat([clips[0].pixels] + [v.pixels[:, :, 1:] for v in clips[1:]], dim=2)
        latents = torch.cat([clips[0].latents] + [v.latents[:, :, 1:] for v in clips[1:]], dim=2)
        return Video(pixels, latents, self.config.fps)


# ---------------------------------------------------------------------------------------------------------
# 4. helpers


def _hold_frames(v: VelocityFn, frames: int) -> VelocityFn:
    """The velocity with its first ``frames`` latent frames set to 0 (they stay as they start)."""

    def held(x: Tensor, t: Tensor) -> Tensor:
        out = v(x, t)  # (B, C, T', H', W')
        return torch.cat([torch.zeros_like(out[:, :, :frames]), out[:, :, frames:]], dim=2)

    return held


def _replace_dir(src: Path, target: Path) -> None:
    """Rename the finished ``src`` to ``target``; an existing ``target`` is moved aside first and restored if
    the rename fails, then deleted."""
    if not target.exists():
        os.rename(src, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(src, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def _check_controls(controls: Any) -> list[Control]:
    if isinstance(controls, Control) or not isinstance(controls, Sequence):
        raise TypeError(f"controls must be a sequence of controls.base.Control, got {type(controls).__name__}")
    for i, c in enumerate(controls):
        if not isinstance(c, Control):
            raise TypeError(f"controls[{i}] must be a controls.base.Control, got {type(c).__name__}")
    return list(controls)


def _check_number(value: Any, name: str, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    bad = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or bad:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, got {value}")
    return float(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return seed


def _make_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    g = torch.Generator(device)
    if seed is None:
        g.seed()  # a fresh non-deterministic seed for this generator only; nothing global is touched
    else:
        g.manual_seed(_check_seed(seed))
    return g


def _on_device(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` if it lives on ``device``, else a generator there seeded from it (still reproducible)."""
    if generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


def _clip_seeds(seed: int, num_clips: int) -> list[int]:
    """Seeds of a rollout's clips: ``seed`` itself, then draws from a generator seeded with it."""
    rest = torch.randint(0, 2**62, (num_clips - 1,), generator=torch.Generator().manual_seed(seed))
    return [seed, *rest.tolist()]


def _resolve_batch(batch_size: int | None, counts: dict[str, int]) -> int:
    """B from ``batch_size`` or the inputs' counts; every count must be 1 (broadcast) or B."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    B = batch_size if batch_size is not None else max(counts.values())
    for name, n in counts.items():
        if n not in (1, B):
            source = "batch_size" if batch_size is not None else "the largest input"
            raise ValueError(f"{name} gives {n} samples, but the batch has B = {B} (from {source}); give 1 or {B}")
    return B
