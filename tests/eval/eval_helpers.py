"""Shared pieces of the evaluation tests: tiny random world models, a hand-made "falling checker square" dataset
(whose motion the Lucas-Kanade tracker follows exactly), stand-ins for WorldModel.generate and a script loader."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from wmgen.models.dit import DiTConfig, VideoDiT
from wmgen.models.text import NullText, PrecomputedText
from wmgen.models.vae import CausalVAE, VAEConfig
from wmgen.pipeline import Video, WorldModel, WorldModelConfig

FRAMES, LC, DC = 5, 8, 16  # frames per clip, text tokens, text width
VAE_CFG = VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_downsample=(True, True))
SPATIAL = 4  # VAE_CFG's spatial factor


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_text(prompts) -> PrecomputedText:
    table = {p: torch.randn(2 + i % 3, DC, generator=gen(100 + i)) for i, p in enumerate(sorted(set(prompts) | {""}))}
    return PrecomputedText(table, max_length=LC)


def make_wm(resolution: int, prompts, seed: int = 0) -> WorldModel:
    """A tiny random image-to-video world model (random DiT head, so generations are not the zero flow)."""
    vae = CausalVAE(VAE_CFG, generator=gen(seed))
    dit = VideoDiT(
        DiTConfig(dim=32, num_layers=2, num_heads=2, ffn_dim=64, text_dim=DC, in_channels=4, out_channels=4,
                  image_to_video=True),
        generator=gen(seed + 1),
    )  # fmt: skip
    nn.init.normal_(dit.head.weight, std=0.3, generator=gen(seed + 2))
    null = NullText(LC, DC)
    config = WorldModelConfig(
        resolution=resolution, num_frames=FRAMES, text_encoder="none", text_max_length=LC, steps=2, method="euler"
    )
    return WorldModel(vae, dit, null_text=null, config=config, text_encoder=make_text(prompts)).eval()


def checker(h: int, w: int, cell: int = 2) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.8, -0.8)  # (h, w)


def square_clip(
    speed: float, *, res: int = 32, caption: str = "a checker square falls", hidden: bool = False,
    background: float = -0.2,
) -> dict:  # fmt: skip
    """One WorldDataset-like item: object 0, a 10 px checker square, moves down ``speed`` px per frame (whole
    pixels per frame only when speed is an integer); object 1, an 8 px checker square, stays still. Tracks: a
    4 x 4 grid on object 0 and 2 x 2 on object 1, all visible (none when ``hidden``), on a flat ``background``."""
    T = FRAMES
    video = torch.full((3, T, res, res), background)
    depth = torch.full((T, res, res), 2.0)
    mask = torch.full((T, res, res), -1, dtype=torch.long)
    tracks = []
    for t in range(T):
        dy = round(speed * t)
        video[:, t, 4 + dy : 14 + dy, 4:14] = checker(10, 10)
        depth[t, 4 + dy : 14 + dy, 4:14] = 1.0
        mask[t, 4 + dy : 14 + dy, 4:14] = 0
        video[:, t, 6:14, 20:28] = checker(8, 8)
        depth[t, 6:14, 20:28] = 1.2
        mask[t, 6:14, 20:28] = 1
        pts = [(x, y + dy) for y in (6.0, 8.0, 10.0, 12.0) for x in (6.0, 8.0, 10.0, 12.0)]
        pts += [(x, y) for y in (8.0, 11.0) for x in (22.0, 25.0)]
        tracks.append(pts)
    tracks = torch.tensor(tracks)  # (T, 20, 2)
    visible = torch.full(tracks.shape[:2], not hidden)
    return {
        "video": video, "depth": depth, "mask": mask, "tracks": tracks, "visible": visible,
        "object_ids": torch.tensor([0] * 16 + [1] * 4), "caption": caption,
    }  # fmt: skip


def squares(speeds=(2, 1)) -> list[dict]:
    """Clips of ``square_clip`` falling at ``speeds``; their backgrounds differ, so their first frames do too."""
    return [
        square_clip(s, caption=f"a checker square falls {i}", background=-0.2 - 0.1 * i) for i, s in enumerate(speeds)
    ]


class StandIn:
    """Replaces ``WorldModel.generate``: returns, for each first frame, the ground truth of the clip starting with
    it (``truth``) or the first frame held still (``frozen``); ``mode`` may depend on whether controls were given.
    Records every call's arguments."""

    def __init__(self, dataset, mode):
        self.dataset, self.mode, self.calls = dataset, mode, []

    def __call__(self, prompt, first_frame, *, controls=(), num_frames=None, seed=None, **kwargs):
        self.calls.append({"prompt": prompt, "first_frame": first_frame, "controls": list(controls), "seed": seed,
                           **kwargs})  # fmt: skip
        mode = self.mode(bool(controls)) if callable(self.mode) else self.mode
        out = []
        for frame in first_frame:
            if mode == "truth":
                match = [it["video"] for it in self.dataset if torch.equal(it["video"][:, 0], frame.cpu())]
                assert len(match) == 1
                out.append(match[0])
            else:
                out.append(frame.cpu()[:, None].expand(-1, num_frames, -1, -1))
        pixels = torch.stack(out)  # (B, 3, T, H, W)
        return Video(pixels, torch.zeros(len(out), 1, 1, 1, 1), 12.0)


def load_script(path: Path):
    """Import a script (benchmarks/, apps/) as a module, to call its main(argv)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
