"""ODE solver accuracy against NFE on an exact 2-D flow: wmgen vs torchdiffeq vs diffusers.

Problem: the CondOT flow from N(0, I) to eight Gaussians (torchcfm's "8gaussians": radius 5, variance 0.1)
whose velocity field is known in closed form (``wmgen.flow.analytic.GaussianMixtureFlow``). Every solver
starts from the same source samples; the error is the mean per-sample L2 distance of its end point to the
exact flow map, computed by our dopri5 at atol = rtol = 1e-10 in float64 (cross-checked against torchdiffeq's
dopri5 at the same tolerance). NFE counts velocity evaluations.

Compared: ours (euler, midpoint, heun, rk4, rk38 on uniform and shift-3 grids; dopri5 over tolerances),
torchdiffeq (euler, midpoint, rk4 [its 3/8-rule variant], heun3; dopri5 over tolerances) and diffusers'
FlowMatchEulerDiscreteScheduler (shift 1 and 3; sigma = 1 - t and v_diffusers = -v_ours).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solvers.py [--n 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from dataclasses import asdict, dataclass

import diffusers
import torch
import torchdiffeq
from diffusers import FlowMatchEulerDiscreteScheduler

from wmgen.flow.analytic import GaussianMixtureFlow
from wmgen.flow.schedules import time_grid
from wmgen.flow.solvers import METHODS, integrate

F64 = torch.float64
NFE_BUDGETS = (8, 12, 16, 24, 32, 48, 50, 64, 100, 200)  # fixed-step table columns; 50: diffusers default
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)  # dopri5 atol = rtol
STAGES_TORCHDIFFEQ = {"euler": 1, "midpoint": 2, "rk4": 4, "heun3": 3}


@dataclass
class Result:
    impl: str  # "wmgen", "torchdiffeq" or "diffusers"
    method: str
    setting: str  # grid ("uniform", "shift 3") or tolerance
    nfe: int
    error: float  # mean per-sample L2 distance to the reference end point


class Counted:
    """Wraps our velocity v(x, t [B]) and counts evaluations."""

    def __init__(self, velocity):
        self.velocity, self.nfe = velocity, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.velocity(x, t)

    def torchdiffeq_fn(self, t, y):  # torchdiffeq calls f(t scalar, y)
        return self(y, t.expand(y.shape[0]))


def mean_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.double() - ref).norm(dim=1).mean().item()


# ---------------------------------------------------------------------------------------------------------
# 1. runners


def run_ours(flow, x0, ref) -> list[Result]:
    rows = []
    for method in ("euler", "midpoint", "heun", "rk4", "rk38"):
        per_step = METHODS[method].nfe_per_step
        for shift in (1.0, 3.0):
            for nfe in NFE_BUDGETS:
                if nfe % per_step:
                    continue
                grid = time_grid(nfe // per_step, shift=shift, dtype=F64)
                path = integrate(flow.velocity, x0, method=method, time_grid=grid, return_path=True)
                setting = "uniform" if shift == 1.0 else f"shift {shift:g}"
                rows.append(Result("wmgen", method, setting, path.nfe, mean_l2(path.x, ref)))
    for tol in TOLERANCES:
        path = integrate(flow.velocity, x0, method="dopri5", atol=tol, rtol=tol, return_path=True)
        rows.append(Result("wmgen", "dopri5", f"tol {tol:.0e}", path.nfe, mean_l2(path.x, ref)))
    return rows


def run_torchdiffeq(flow, x0, ref) -> list[Result]:
    rows = []
    for method, per_step in STAGES_TORCHDIFFEQ.items():
        for nfe in NFE_BUDGETS:
            if nfe % per_step:
                continue
            f = Counted(flow.velocity)
            grid = torch.linspace(0, 1, nfe // per_step + 1, dtype=F64)  # fixed-grid solvers step on t itself
            x1 = torchdiffeq.odeint(f.torchdiffeq_fn, x0, grid, method=method)[-1]
            rows.append(Result("torchdiffeq", method, "uniform", f.nfe, mean_l2(x1, ref)))
    for tol in TOLERANCES:
        f = Counted(flow.velocity)
        x1 = torchdiffeq.odeint(
            f.torchdiffeq_fn, x0, torch.tensor([0.0, 1.0], dtype=F64), method="dopri5", atol=tol, rtol=tol
        )[-1]
        rows.append(Result("torchdiffeq", "dopri5", f"tol {tol:.0e}", f.nfe, mean_l2(x1, ref)))
    return rows


def run_diffusers(flow, x0, ref) -> list[Result]:
    rows = []
    for shift in (1.0, 3.0):
        for steps in NFE_BUDGETS:
            sched = FlowMatchEulerDiscreteScheduler(shift=shift)
            sched.set_timesteps(steps)
            f, x = Counted(flow.velocity), x0.clone()
            for i, timestep in enumerate(sched.timesteps):
                sigma = sched.sigmas[i].item()
                t = torch.full((x.shape[0],), 1.0 - sigma, dtype=F64)  # diffusers sigma = 1 - t
                v_diffusers = -f(x, t)  # diffusers' velocity is noise - data = -v_ours
                x = sched.step(v_diffusers, timestep, x).prev_sample  # x += (sigma_next - sigma) * v
            rows.append(Result("diffusers", "FlowMatchEuler", f"shift {shift:g}", f.nfe, mean_l2(x, ref)))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 2. comparisons


def nfe_for_error(rows: list[Result], error: float) -> float | None:
    """NFE at which a sweep reaches ``error``, by log-log interpolation; None outside the sweep's range."""
    pts = sorted((r.nfe, r.error) for r in rows)
    for (n0, e0), (n1, e1) in zip(pts, pts[1:], strict=False):
        if e1 <= error <= e0 and e1 < e0:
            w = (math.log(e0) - math.log(error)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    if pts and pts[0][1] <= error:
        return float(pts[0][0])  # already reached at our cheapest setting
    return None


def fixed_step_table(rows: list[Result]) -> str:
    keys = []
    for r in rows:
        if not r.setting.startswith("tol") and (r.impl, r.method, r.setting) not in keys:
            keys.append((r.impl, r.method, r.setting))
    head = "| implementation | solver | time grid | " + " | ".join(f"NFE {n}" for n in NFE_BUDGETS) + " |"
    lines = [head, "|" + "---|" * (3 + len(NFE_BUDGETS))]
    for key in keys:
        by_nfe = {r.nfe: r.error for r in rows if (r.impl, r.method, r.setting) == key}
        cells = [f"{by_nfe[n]:.2e}" if n in by_nfe else "–" for n in NFE_BUDGETS]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def adaptive_table(rows: list[Result]) -> str:
    ours = [r for r in rows if r.impl == "wmgen" and r.method == "dopri5"]
    theirs = [r for r in rows if r.impl == "torchdiffeq" and r.method == "dopri5"]
    lines = [
        "| atol = rtol | wmgen NFE | wmgen error | torchdiffeq NFE | torchdiffeq error "
        "| wmgen NFE at torchdiffeq's error |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(ours, theirs, strict=True):
        need = nfe_for_error(ours, b.error)
        lines.append(
            f"| {a.setting[4:]} | {a.nfe} | {a.error:.2e} | {b.nfe} | {b.error:.2e} | "
            + (f"{need:.0f} ({need / b.nfe:.2f}x)" if need else "out of range")
            + " |"
        )
    return "\n".join(lines)


def summary(rows: list[Result]) -> str:
    out = []
    # Goal 1: same error, no more NFE than torchdiffeq (same scheme; heun3 against our best fixed-step)
    out.append("Goal 1 - for torchdiffeq's error, NFE wmgen needs / NFE torchdiffeq used (<= 1 is the goal):")
    pairs = [("euler", "euler"), ("midpoint", "midpoint"), ("rk4", "rk38"), ("rk4", "rk4"), ("dopri5", "dopri5")]
    for their_method, our_method in pairs + [("heun3", None)]:
        theirs = [r for r in rows if r.impl == "torchdiffeq" and r.method == their_method]
        if our_method is None:
            ours = [r for r in rows if r.impl == "wmgen" and r.setting == "uniform"]
            best = {}
            for r in ours:  # lower envelope of all our uniform-grid fixed-step solvers
                best[r.nfe] = min(best.get(r.nfe, math.inf), r.error)
            ours = [Result("wmgen", "best", "uniform", n, e) for n, e in best.items()]
            label = "heun3 vs our best fixed-step"
        else:
            ours = [
                r
                for r in rows
                if r.impl == "wmgen"
                and r.method == our_method
                and r.setting in ("uniform",) + tuple(f"tol {t:.0e}" for t in TOLERANCES)
            ]
            label = f"{their_method} vs our {our_method}"
        ratios = []
        for r in theirs:
            need = nfe_for_error(ours, r.error)
            if need is not None:
                ratios.append(need / r.nfe)
        if ratios:
            out.append(
                f"  {label:<30} worst {max(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f} "
                f"over {len(ratios)} settings"
            )
    # Goal 2: our best fixed-step solver at <= 1/4 of the NFE reaches diffusers' 50-step error
    out.append("Goal 2 - diffusers FlowMatchEuler at 50 steps vs our best fixed-step solver at <= 12 NFE:")
    cands = [r for r in rows if r.impl == "wmgen" and r.method != "dopri5" and r.nfe <= 12]
    best = min(cands, key=lambda r: r.error)
    for r in rows:
        if r.impl == "diffusers" and r.nfe == 50:
            verdict = "met" if best.error <= r.error else "missed"
            out.append(
                f"  diffusers {r.setting}, 50 steps: error {r.error:.2e}; ours {best.method} ({best.setting})"
                f" at {best.nfe} NFE: {best.error:.2e} -> {verdict} ({r.error / best.error:.1f}x lower error)"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of source samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = parser.parse_args()

    # 0. problem and reference
    flow = GaussianMixtureFlow.ring(8, radius=5.0, std=math.sqrt(0.1))
    x0 = flow.sample_source(args.n, torch.Generator().manual_seed(args.seed))  # [n, 2] float64
    ref = integrate(flow.velocity, x0, method="dopri5", atol=1e-10, rtol=1e-10)
    f = Counted(flow.velocity)
    ref_td = torchdiffeq.odeint(
        f.torchdiffeq_fn, x0, torch.tensor([0.0, 1.0], dtype=F64), method="dopri5", atol=1e-10, rtol=1e-10
    )[-1]

    rows = run_ours(flow, x0, ref) + run_torchdiffeq(flow, x0, ref) + run_diffusers(flow, x0, ref)
    print(
        f"# 8 Gaussians (radius 5, var 0.1), {args.n} samples, seed {args.seed}, float64; "
        f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, "
        f"diffusers {diffusers.__version__}, {platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(f"# reference: wmgen dopri5 1e-10; distance to torchdiffeq dopri5 1e-10 = {mean_l2(ref_td, ref):.1e}")
    print("\nMean per-sample L2 error of the end point, fixed-step solvers (columns: NFE):\n")
    print(fixed_step_table(rows))
    print("\nAdaptive dopri5:\n")
    print(adaptive_table(rows))
    print("\n" + summary(rows))
    if args.json:
        with open(args.json + ".tmp", "w") as fh:  # write, then rename: never a half-written file
            json.dump([asdict(r) for r in rows], fh, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
