"""Recipe: conditional flow matching between two 2-D toy distributions, with pictures and metrics.

The source (t = 0) is any toy set, N(0, I) by default; the target (t = 1) is another. Pairs are drawn with
the independent coupling x0 ~ source, x1 ~ target (Lipman et al. 2023; Tong et al. 2024 call this I-CFM),
on the CondOT path x_t = (1 - t) x0 + t x1 with target velocity x1 - x0. For a non-Gaussian source the
learned field is still the marginal velocity that carries the source onto the target; only the
likelihood (which needs log p0) is restricted to the Gaussian source.

Example::

    cfg = Toy2DConfig(source="8gaussians", target="moons", steps=2000)
    model, history = train_toy2d(cfg)
    metrics = run_toy2d(cfg, "outputs/toy2d")   # trains again, samples, writes pictures + metrics.json
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from wmgen.config import to_dict, validate
from wmgen.data.toy2d import sample
from wmgen.flow import viz
from wmgen.flow.likelihood import log_likelihood
from wmgen.flow.metrics import precision_recall, sliced_wasserstein
from wmgen.flow.objectives import FlowMatching
from wmgen.flow.paths import AffinePath, CondOTScheduler
from wmgen.flow.schedules import LogitNormalTime, UniformTime
from wmgen.flow.solvers import Trajectory, integrate
from wmgen.models.mlp import VelocityMLP

__all__ = [
    "Toy2DConfig", "CLI_FLAGS", "build_model", "train_toy2d", "sample_toy2d", "evaluate_toy2d", "run_toy2d"
]

Toy2DName = Literal["gaussian", "moons", "8gaussians", "checkerboard", "spirals", "dino"]
Solver = Literal["euler", "midpoint", "heun", "rk4", "dopri5", "euler_maruyama"]


@dataclass(frozen=True)
class Toy2DConfig:
    """One 2-D flow-matching run: data, network, optimisation, sampling and evaluation."""

    # data
    source: Toy2DName = "gaussian"  # distribution at t = 0 (see wmgen.data.toy2d)
    target: Toy2DName = "moons"  # distribution at t = 1
    # network (wmgen.models.mlp.VelocityMLP)
    hidden: int = field(default=128, metadata={"range": (8, 4096)})  # width of the hidden layers
    depth: int = field(default=3, metadata={"range": (1, 32)})  # residual blocks
    time_embed: int = field(default=64, metadata={"range": (2, 1024)})  # sinusoidal time features (even)
    x_octaves: int = field(default=4, metadata={"range": (0, 16)})  # Fourier features of x (0 = off); 4
    # raised precision on spirals from 0.70 to 0.90 at equal cost (BENCHMARKS.md)
    # optimisation: AdamW, linear warm-up then cosine decay to min_lr_ratio * lr
    steps: int = field(default=2000, metadata={"range": (1, None)})  # optimiser steps
    batch_size: int = field(default=512, metadata={"range": (1, None)})  # (x0, x1) pairs per step
    lr: float = field(default=2e-3, metadata={"range": (0.0, 1.0)})  # peak learning rate
    weight_decay: float = field(default=0.0, metadata={"range": (0.0, None)})  # AdamW decoupled decay
    warmup_steps: int = field(default=100, metadata={"range": (0, None)})  # linear warm-up from 0
    min_lr_ratio: float = field(default=0.01, metadata={"range": (0.0, 1.0)})  # final lr / peak lr
    grad_clip: float = field(default=1.0, metadata={"range": (0.0, None)})  # max grad norm; 0 = off
    ema_decay: float = field(default=0.0, metadata={"range": (0.0, 0.99999)})  # weight EMA; 0 = off
    time_sampler: Literal["uniform", "logit_normal"] = "uniform"  # training-time distribution of t
    # sampling (wmgen.flow.solvers.integrate)
    solver: Solver = "dopri5"  # ODE method; euler_maruyama (SDE) needs source="gaussian"
    sample_steps: int = field(default=32, metadata={"range": (1, 10_000)})  # fixed-step count; dopri5:
    # number of uniform output times on the recorded trajectory (it picks its own steps)
    atol: float = field(default=1e-5, metadata={"range": (0.0, 1.0)})  # dopri5 absolute tolerance
    rtol: float = field(default=1e-5, metadata={"range": (0.0, 1.0)})  # dopri5 relative tolerance
    # evaluation and pictures
    n_samples: int = field(default=4096, metadata={"range": (16, None)})  # generated and held-out points
    swd_projections: int = field(default=256, metadata={"range": (1, None)})  # sliced-Wasserstein directions
    gif_frames: int = field(default=60, metadata={"range": (2, 1000)})  # frames of particles.gif
    likelihood_grid: int = field(default=64, metadata={"range": (0, 512)})  # lattice per axis for the exact
    # learned density exp(log p_1) (Gaussian source only); 0 = off
    seed: int = field(default=0, metadata={"range": (0, None)})  # all randomness derives from it
    device: str = "cpu"  # torch device for training and sampling
    threads: int = field(default=1, metadata={"range": (0, 256)})  # torch CPU threads during the run,
    # restored afterwards; 0 = leave torch's setting. A 2-D MLP is too small to gain from intra-op threads,
    # and on busy shared cores extra threads spin-wait: 1 thread measured 5-15x faster there.

    def __post_init__(self):
        if self.solver == "euler_maruyama" and self.source != "gaussian":
            raise ValueError(
                f"solver: euler_maruyama assumes a Gaussian source (its score comes from the Gaussian "
                f"path), got source={self.source!r}; use an ODE solver"
            )
        if self.time_embed % 2:
            raise ValueError(f"time_embed must be even, got {self.time_embed}")


# Config fields meant as command-line flags (`wmgen toy2d --source ... --target ...`); the others are for
# YAML overrides.
CLI_FLAGS = ("source", "target", "solver", "steps", "sample_steps", "batch_size", "lr", "hidden", "depth",
             "ema_decay", "n_samples", "seed", "device")


@contextmanager
def _torch_threads(n: int):
    """Run with ``n`` torch CPU threads (0 = unchanged), restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _generator(seed: int, stream: int) -> torch.Generator:
    """Independent CPU streams from one seed: training data, held-out sets, sampling noise, projections."""
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


_TRAIN, _HELD_OUT, _HELD_OUT_2, _SOURCE, _PROJ, _TIMES, _INIT, _NOISE = range(8)
_REFERENCE = 100  # streams 100, 101, ... for the reference draws
REFERENCE_DRAWS = 5  # fresh target draws averaged for swd_reference


def _lr_factor(step: int, cfg: Toy2DConfig) -> float:
    """Linear warm-up over warmup_steps, then cosine from 1 to min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(cfg: Toy2DConfig, generator: torch.Generator | None = None) -> VelocityMLP:
    """The config's ``VelocityMLP`` (weights drawn from ``generator``)."""
    return VelocityMLP(
        dim=2, hidden=cfg.hidden, depth=cfg.depth, time_embed=cfg.time_embed, x_octaves=cfg.x_octaves,
        generator=generator,
    )


def train_toy2d(cfg: Toy2DConfig, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Train a ``VelocityMLP`` by conditional flow matching from ``cfg.source`` to ``cfg.target``.

    Every step draws a fresh batch x0 ~ source, x1 ~ target (independent coupling) and t from the time
    sampler, and regresses v_theta(x_t, t) onto x1 - x0 (Lipman et al. 2023, eq. 23).

    Args:
        cfg: the run's config (checked with ``wmgen.config.validate``).
        progress: show a tqdm bar with the running loss.
    Returns:
        (model, history): the trained network in eval mode on ``cfg.device`` (the EMA weights when
        ``ema_decay > 0``), and a dict with ``loss`` and ``lr`` (lists, one per step), ``final_loss`` (mean
        of the last 10% of steps, at least 1), ``train_time_s`` and ``n_params``.
    """
    validate(cfg)
    device = torch.device(cfg.device)
    g_data = _generator(cfg.seed, _TRAIN)
    model = build_model(cfg, generator=_generator(cfg.seed, _INIT)).to(device)
    g_time = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + _TIMES)
    sampler = UniformTime() if cfg.time_sampler == "uniform" else LogitNormalTime()
    fm = FlowMatching(AffinePath(CondOTScheduler()), sampler)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else None

    losses: list[float] = []
    lrs: list[float] = []
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"toy2d {cfg.source}->{cfg.target}", disable=not progress, leave=False)
    with _torch_threads(cfg.threads):
        for step in bar:
            x0 = sample(cfg.source, cfg.batch_size, g_data).to(device)  # [B, 2]
            x1 = sample(cfg.target, cfg.batch_size, g_data).to(device)  # [B, 2]
            loss = fm.loss(model, x1, x0=x0, generator=g_time)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                        p_ema.lerp_(p, 1.0 - cfg.ema_decay)
            losses.append(loss.item())
            if progress and step % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    train_time = time.perf_counter() - start
    out = ema if ema is not None else model
    out.eval()
    tail = losses[-max(1, cfg.steps // 10) :]
    history = {
        "loss": losses,
        "lr": lrs,
        "final_loss": sum(tail) / len(tail),
        "train_time_s": train_time,
        "n_params": sum(p.numel() for p in out.parameters()),
    }
    return out, history


def _velocity_fn(model: nn.Module):
    def v(x: Tensor, t: Tensor) -> Tensor:
        return model(x, t)

    return v


def sample_toy2d(
    model: nn.Module, cfg: Toy2DConfig, n: int | None = None, *, return_path: bool = False
) -> Tensor | Trajectory:
    """Carry ``n`` (default ``cfg.n_samples``) source points to t = 1 with ``cfg.solver``.

    Returns the samples [N, 2] on the CPU, or with ``return_path`` the ``Trajectory`` (times [S + 1],
    states [S + 1, N, 2] on the CPU, nfe).
    """
    n = cfg.n_samples if n is None else n
    device = next(model.parameters()).device
    x0 = sample(cfg.source, n, _generator(cfg.seed, _SOURCE)).to(device)  # [N, 2]
    kwargs: dict[str, Any] = {"method": cfg.solver, "steps": cfg.sample_steps, "return_path": True}
    if cfg.solver == "dopri5":
        kwargs.update(atol=cfg.atol, rtol=cfg.rtol)
    if cfg.solver == "euler_maruyama":
        kwargs["generator"] = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + _NOISE)
    with _torch_threads(cfg.threads):
        traj = integrate(_velocity_fn(model), x0, **kwargs)
    traj = Trajectory(traj.times, traj.states.cpu(), traj.nfe, traj.n_accepted, traj.n_rejected)
    return traj if return_path else traj.x


def evaluate_toy2d(samples: Tensor, cfg: Toy2DConfig) -> dict[str, float]:
    """Distances of ``samples`` [N, 2] to a held-out target set of the same size, with reference values.

    - ``swd``: sliced W2 (``cfg.swd_projections`` directions) between samples and held-out data.
    - ``swd_reference``, ``swd_reference_std``: mean and std of the same distance from ``REFERENCE_DRAWS``
      fresh target draws of N points to the held-out set: what a perfect model scores. It is far from 0 and
      varies by about +-30% from draw to draw, mostly because the mass of separate modes (two moons, eight
      squares) fluctuates binomially; one draw is too noisy to be a yardstick.
    - ``swd_source``: source samples vs held-out data: what the untrained (v = 0) flow scores.
    - ``precision``, ``recall`` (k = 3 improved precision/recall, ``wmgen.flow.metrics``) against the
      held-out data, and ``precision_reference``, ``recall_reference`` for a second held-out draw. They see
      thin structures (spiral arms, the dinosaur's legs) that sliced W2 averages away, but not how mass is
      split between modes, which sliced W2 does see.

    All sliced distances use the same directions (common random numbers).
    """
    n = samples.shape[0]
    samples = samples.float().cpu()
    held = sample(cfg.target, n, _generator(cfg.seed, _HELD_OUT))

    def swd(a: Tensor, b: Tensor) -> float:
        g = _generator(cfg.seed, _PROJ)
        return float(sliced_wasserstein(a, b, cfg.swd_projections, generator=g))

    # A perfect model's samples are fresh target draws: score them against the same held-out set, whose own
    # fluctuations (e.g. a few more points in one moon) every candidate has to pay for.
    fresh = [sample(cfg.target, n, _generator(cfg.seed, _REFERENCE + i)) for i in range(REFERENCE_DRAWS)]
    refs = [swd(x, held) for x in fresh]
    ref = torch.tensor(refs, dtype=torch.float64)
    src = sample(cfg.source, n, _generator(cfg.seed, _REFERENCE + REFERENCE_DRAWS))
    precision, recall = precision_recall(held, samples)
    p_ref, r_ref = precision_recall(held, sample(cfg.target, n, _generator(cfg.seed, _HELD_OUT_2)))
    return {
        "swd": swd(samples, held),
        "swd_reference": ref.mean().item(),
        "swd_reference_std": ref.std().item(),
        "swd_source": swd(src, held),
        "precision": precision,
        "recall": recall,
        "precision_reference": p_ref,
        "recall_reference": r_ref,
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _learned_density(model: nn.Module, cfg: Toy2DConfig, bounds) -> Tensor:
    """exp(log p_1) on a likelihood_grid^2 lattice over ``bounds`` [G, G] (rows = y), exact divergence."""
    g = cfg.likelihood_grid
    xs = torch.linspace(bounds[0], bounds[1], g)
    ys = torch.linspace(bounds[2], bounds[3], g)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # [G, G], rows = y
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # [G*G, 2]
    device = next(model.parameters()).device
    # rk4 with 16 steps: 64 evaluations, ample for a smooth 2-D field and ~10x cheaper than dopri5 at 1e-5.
    logp = log_likelihood(_velocity_fn(model), pts.to(device), method="rk4", steps=16)
    return logp.exp().reshape(g, g).cpu()  # [G, G]


def run_toy2d(cfg: Toy2DConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Train, sample with ``cfg.solver``, evaluate and write every picture plus ``metrics.json``.

    Files written into ``out_dir`` (each atomically):

    - ``quiver.png``, ``streamlines.png``: the learned field at t = 0, 0.25, 0.5, 0.75, 1;
    - ``particles.png``: particles with trails and density snapshots; ``particles.gif``: the animation;
    - ``samples.png``: generated samples vs held-out data; ``density.png``: 2-D histograms of data and
      samples side by side, plus exp(log-likelihood) on a lattice when the source is Gaussian;
    - ``loss.png``: the training curve;
    - ``model.safetensors`` + ``config.json``: the trained network and this config;
    - ``metrics.json``: the returned dict.

    Returns:
        metrics: ``source``, ``target``, ``solver``; ``swd`` (sliced W2 to held-out data) with
        ``swd_reference`` (+ ``_std``) and ``swd_source``, ``precision`` / ``recall`` with their references
        (see ``evaluate_toy2d``); ``nfe``, ``train_time_s``, ``sample_time_s``, ``final_loss``,
        ``n_params``, ``likelihood_time_s`` (Gaussian source), ``files`` (name -> file) and ``config``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _torch_threads(cfg.threads):
        return _run(cfg, out, progress)


def _run(cfg: Toy2DConfig, out: Path, progress: bool) -> dict[str, Any]:
    model, history = train_toy2d(cfg, progress=progress)

    # 1. sample and evaluate
    start = time.perf_counter()
    traj = sample_toy2d(model, cfg, return_path=True)
    sample_time = time.perf_counter() - start
    samples = traj.x  # [N, 2]
    metrics: dict[str, Any] = {
        "source": cfg.source,
        "target": cfg.target,
        "solver": cfg.solver,
        **evaluate_toy2d(samples, cfg),
        "nfe": traj.nfe,
        "train_time_s": round(history["train_time_s"], 3),
        "sample_time_s": round(sample_time, 3),
        "final_loss": history["final_loss"],
        "n_params": history["n_params"],
    }

    # 2. pictures
    bounds = viz.DEFAULT_BOUNDS
    held = sample(cfg.target, cfg.n_samples, _generator(cfg.seed, _HELD_OUT))
    name = f"{cfg.source} -> {cfg.target}"
    v = _velocity_fn(model)
    device = next(model.parameters()).device
    files = {}
    files["quiver"] = "quiver.png"
    viz.quiver(v, trajectory=traj, bounds=bounds, path=out / "quiver.png", device=device,
               title=f"learned velocity field, {name}")
    files["streamlines"] = "streamlines.png"
    viz.streamlines(v, bounds=bounds, path=out / "streamlines.png", device=device,
                    title=f"streamlines of v(., t), {name}")
    files["particles"] = "particles.png"
    viz.particles(traj, bounds=bounds, path=out / "particles.png",
                  title=f"particles carried by the flow ({cfg.solver}), {name}")
    files["gif"] = "particles.gif"
    viz.particles_gif(traj, out / "particles.gif", frames=cfg.gif_frames, bounds=bounds, reference=held,
                      title=name)
    files["samples"] = "samples.png"
    swd_text = (
        f"SW2 {metrics['swd']:.3f} (perfect: {metrics['swd_reference']:.3f}), "
        f"precision {metrics['precision']:.2f} / recall {metrics['recall']:.2f} "
        f"(perfect: {metrics['precision_reference']:.2f} / {metrics['recall_reference']:.2f})"
    )
    viz.samples_vs_data(samples, held, bounds=bounds, path=out / "samples.png", title=f"{name}: {swd_text}")
    panels: dict[str, Tensor] = {"held-out data": held, "learned samples": samples}
    if cfg.likelihood_grid > 0 and cfg.source == "gaussian":
        start = time.perf_counter()
        panels["learned exp(log p1)"] = _learned_density(model, cfg, bounds)
        metrics["likelihood_time_s"] = round(time.perf_counter() - start, 3)
    files["density"] = "density.png"
    viz.density_grid(panels, bounds=bounds, path=out / "density.png", title=f"density, {name}")
    files["loss"] = "loss.png"
    viz.loss_curve(history["loss"], lrs=history["lr"], path=out / "loss.png")

    # 3. checkpoint and metrics
    tmp = out / f".model.tmp{os.getpid()}.safetensors"
    try:
        save_file({k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}, str(tmp))
        tmp.chmod(0o644)  # safetensors creates the file private (0600), unlike every other output
        os.replace(tmp, out / "model.safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    files["model"] = "model.safetensors"
    _atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    files["config"] = "config.json"
    files["metrics"] = "metrics.json"
    metrics["files"] = files
    metrics["config"] = to_dict(cfg)
    _atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
