"""VideoDiT vs diffusers' WanTransformer3DModel: forward and training-step throughput at identical configs.

Both models are built from one DiTConfig (diffusers' through ``config_to_diffusers``) and hold the same
weights: ours are seeded, then mapped into diffusers' names with ``to_diffusers_state_dict``. Before timing,
the outputs are checked to agree in wmgen's convention, ours(x, t) == -diffusers(x, 1000 (1 - t)).

Cases (fp32, CPU, batch 16, 16 text tokens):
  tiny       the "tiny" preset at its own latent size 16 x 5 x 8 x 8 (64x64, 17 frames) -> 80 tokens/sample
  recipe     the "tiny" preset as configs/tiny.yaml trains it: 32-channel latents of VAE_PRESETS["tiny-s4-z32"],
             32 x 5 x 16 x 16 (64x64, 17 frames) -> 320 tokens/sample
  reference  the tiny widths with 8 layers (9.16M parameters) at 16 x 5 x 16 x 16 -> 320 tokens/sample

Timed: forward under ``torch.no_grad`` and one training step (forward, MSE loss, backward, AdamW step).
``--compile`` adds a third contender, our model under ``torch.compile`` (inductor; what ``loop.compile`` does in
training), with its own copy of the weights; compilation happens in the untimed warm-up calls.
Calls alternate between the two models so machine noise hits both alike; the median of ``--repeats`` is
reported. FLOP/s count the matmuls (projections, attention scores and values; backward = 2x forward) and are
given as a fraction of this machine's fp32 matmul peak, measured in the same run with a large torch.mm before
and after the timings; the larger of the two is the denominator (a momentary stall of the host shows up as a
low peak, which would inflate every fraction).

Run:  .venv/bin/python benchmarks/dit.py [--threads 2] [--repeats 7] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import time

import diffusers
import torch
from diffusers import WanTransformer3DModel

from wmgen.models.dit import DIT_PRESETS, DiTConfig, VideoDiT, config_to_diffusers, to_diffusers_state_dict

BATCH, CONTEXT_TOKENS = 16, 16
CASES = {
    "tiny": (DIT_PRESETS["tiny"], (16, 5, 8, 8)),
    "recipe": (dataclasses.replace(DIT_PRESETS["tiny"], in_channels=32, out_channels=32), (32, 5, 16, 16)),
    "reference": (dataclasses.replace(DIT_PRESETS["tiny"], num_layers=8), (16, 5, 16, 16)),
}


@dataclasses.dataclass
class Row:
    case: str
    params: int
    tokens: int  # per sample
    impl: str
    mode: str  # "forward" or "train"
    s_per_step: float
    gflops: float  # achieved, matmul FLOPs only
    peak_fraction: float


def matmul_peak(n: int = 3072, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n x n torch.mm."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops(cfg: DiTConfig, grid: tuple[int, int, int], batch: int, context_len: int) -> float:
    """Matmul FLOPs of one forward pass (2 per multiply-add); element-wise work is not counted."""
    L, D, F, Lc = math.prod(grid), cfg.dim, cfg.ffn_dim, context_len
    sample = 2 * L * cfg.patch_volume * cfg.patch_in_channels * D  # patch embedding
    sample += 2 * Lc * (cfg.text_dim * D + D * D)  # text MLP
    sample += 2 * (cfg.freq_dim * D + D * D + D * 6 * D)  # time MLP + shared modulation
    block = 2 * L * D * 3 * D + 2 * 2 * L * L * D + 2 * L * D * D  # self-attention: qkv, q k^T and p v, out
    block += 2 * L * D * D + 2 * Lc * D * 2 * D + 2 * 2 * L * Lc * D + 2 * L * D * D  # cross-attention
    block += 2 * 2 * L * D * F  # feed-forward
    sample += cfg.num_layers * block + 2 * L * D * cfg.patch_volume * cfg.out_channels  # blocks + head
    return batch * sample


def build_pair(cfg: DiTConfig) -> tuple[VideoDiT, WanTransformer3DModel]:
    ours = VideoDiT(cfg, generator=torch.Generator().manual_seed(0))
    # A trained-looking head (the fresh one is zero) so the output check compares real numbers.
    torch.nn.init.normal_(ours.head.weight, std=0.02, generator=torch.Generator().manual_seed(1))
    theirs = WanTransformer3DModel(**config_to_diffusers(cfg))
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict(), cfg))
    return ours, theirs


def make_inputs(cfg: DiTConfig, latent: tuple[int, ...]):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, *latent, generator=g)
    t = torch.rand(BATCH, generator=g)
    context = torch.randn(BATCH, CONTEXT_TOKENS, cfg.text_dim, generator=g)
    target = torch.randn(BATCH, cfg.out_channels, *latent[1:], generator=g)
    return x, t, context, target


def run_case(
    name: str, cfg: DiTConfig, latent: tuple[int, ...], repeats: int, compile_: bool = False
) -> list[Row]:
    ours, theirs = build_pair(cfg)
    x, t, context, target = make_inputs(cfg, latent)
    models = {"wmgen": ours, "diffusers": theirs}
    calls = {
        "wmgen": lambda: ours(x, t, context=context),
        # diffusers: sigma = 1 - t, timestep = 1000 sigma, velocity = noise - data = -ours
        "diffusers": lambda: -theirs(x, 1000 * (1 - t), encoder_hidden_states=context, return_dict=False)[0],
    }
    if compile_:
        models["wmgen+compile"] = compiled = copy.deepcopy(ours)
        compiled_call = torch.compile(compiled)
        calls["wmgen+compile"] = lambda: compiled_call(x, t, context=context)
    with torch.no_grad():
        outputs = {impl: call() for impl, call in calls.items()}
    b = outputs["diffusers"]
    for impl in (i for i in outputs if i != "diffusers"):
        err = ((outputs[impl] - b).abs().max() / b.abs().max()).item()
        print(f"[{name}] {impl} after the key mapping: max |ours - (-diffusers)| / max |diffusers| = {err:.2e}")
        if err > 1e-4:
            raise SystemExit(f"[{name}] {impl} and diffusers disagree ({err:.2e}): the mapping or the model is wrong")

    # The same optimizer for both, fused AdamW as in wmgen's trainer (wmgen.train.common.Trainer).
    optimizers = {impl: torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) for impl, model in models.items()}

    def train_step(impl: str) -> None:
        loss = torch.nn.functional.mse_loss(calls[impl](), target)
        loss.backward()
        optimizers[impl].step()
        optimizers[impl].zero_grad(set_to_none=True)

    def forward(impl: str) -> None:
        with torch.no_grad():
            calls[impl]()

    params = sum(p.numel() for p in ours.parameters())
    grid = ours.token_grid(latent)
    flops = {"forward": forward_flops(cfg, grid, BATCH, CONTEXT_TOKENS)}
    flops["train"] = 3 * flops["forward"]
    rows = []
    for mode, step in (("forward", forward), ("train", train_step)):
        times = {impl: [] for impl in calls}
        for impl in times:  # warm-up (allocator, AdamW state)
            step(impl)
            step(impl)
        for _ in range(repeats):
            for impl in times:
                start = time.perf_counter()
                step(impl)
                times[impl].append(time.perf_counter() - start)
        for impl, ts in times.items():
            s = statistics.median(ts)
            gflops = flops[mode] / s / 1e9
            rows.append(Row(name, params, math.prod(grid), impl, mode, s, gflops, math.nan))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, batch {BATCH}, "
        f"{CONTEXT_TOKENS} text tokens, fp32"
    )
    print("load average at start (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in load_start))
    peak = matmul_peak()
    print(f"fp32 matmul peak (3072^3 torch.mm, best of 5): {peak:.1f} GFLOP/s")

    rows: list[Row] = []
    for name in args.cases:
        cfg, latent = CASES[name]
        rows += run_case(name, cfg, latent, args.repeats, args.compile)
    peak_end = matmul_peak()
    for r in rows:
        r.peak_fraction = r.gflops / max(peak, peak_end)
    load_end = os.getloadavg()

    print()
    print("| case | params | tokens | mode | impl | s/step | ours/diffusers | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        other = next(o for o in rows if (o.case, o.mode) == (r.case, r.mode) and o.impl == "diffusers")
        ratio = f"{r.s_per_step / other.s_per_step:.2f}" if r.impl != "diffusers" else ""
        print(
            f"| {r.case} | {r.params / 1e6:.2f}M | {r.tokens} x {BATCH} | {r.mode} | {r.impl} | "
            f"{r.s_per_step:.4f} | {ratio} | {r.gflops:.1f} | {100 * r.peak_fraction:.0f}% |"
        )
    print()
    print(f"matmul peak again at the end: {peak_end:.1f} GFLOP/s (start {peak:.1f}); fractions use the larger")
    print("load average at end (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in load_end))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"peak_gflops": peak, "peak_gflops_end": peak_end, "load_start": load_start,
                 "load_end": load_end, "threads": args.threads,
                 "rows": [dataclasses.asdict(r) for r in rows]},
                f, indent=2,
            )  # fmt: skip


if __name__ == "__main__":
    main()
