"""Throughput of the simulated worlds (configs/data/{rigid,mpm}.yaml: 64x64 pixels x 17 frames), and where
the time goes.

Three measurements per world:

1. end to end: ``generate_dataset(config, tmp, n, workers=W)`` wall time (process start-up, scene sampling,
   simulation, rendering, captions, hashing and writing shards), as clips/s, and the time a 10,000-clip set
   would take at that rate;
2. stages: the same pipeline in this process on one thread, timed per stage (sample scenes / simulate /
   render / caption / write + hash) to show where the time goes;
3. MPM only: substeps per frame, seconds per clip at several batch sizes, and the torch profiler's top
   operators of one batched substep.

Run:  .venv/bin/python benchmarks/physics_worlds.py [--rigid-clips 512] [--mpm-clips 32] [--workers 2]
      [--json out.json]
The machine may be shared with other jobs: the table says how many cores there are and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from physics import mpm as mpm_sim
from physics import worlds as W
from wmgen.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def end_to_end(cfg: W.WorldConfig, clips: int, workers: int, shard_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        W.generate_dataset(cfg, tmp, clips, workers=workers, shard_size=shard_size, seed=0, progress=False)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {
        "clips": clips,
        "workers": workers,
        "wall_s": wall,
        "clips_per_s": clips / wall,
        "bytes_per_clip": size / clips,
        "10k_min": 10_000 / (clips / wall) / 60,
    }


class Stopwatch:
    """Wraps module functions so that each call's time is added to a named stage."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._originals: list[tuple] = []

    def wrap(self, module, name: str, stage: str) -> None:
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[stage] += time.perf_counter() - t0
                self.calls[stage] += 1

        setattr(module, name, timed)
        self._originals.append((module, name, fn))

    def restore(self) -> None:
        for module, name, fn in reversed(self._originals):
            setattr(module, name, fn)


def stages(cfg: W.WorldConfig, clips: int, shard_size: int) -> dict:
    """Time each stage of building ``clips`` clips in this process on one thread."""
    watch = Stopwatch()
    for name, stage in (
        ("sample_world_scene", "sample scenes"),
        ("_simulate_rigid", "simulate"),
        ("_simulate_mpm", "simulate"),
        ("render", "render"),
        ("describe", "caption"),
        ("_hash_shard", "hash"),
    ):
        watch.wrap(W, name, stage)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            for k, start in enumerate(range(0, clips, shard_size)):
                W._build_shard(cfg, 0, tmp, k, start, min(shard_size, clips - start))
            wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
        watch.restore()
    timed = sum(watch.total.values())
    out = {stage: t / clips for stage, t in watch.total.items()}
    out["other (particles, tracks, npy writes)"] = (wall - timed) / clips
    out["total"] = wall / clips
    return out


def mpm_detail(cfg: W.WorldConfig, batch_sizes: tuple[int, ...]) -> dict:
    """Substeps per frame and per-clip seconds at several batch sizes; profiler top operators."""
    torch.set_num_threads(1)
    scenes = [W.sample_world_scene(cfg, 0, i) for i in range(max(batch_sizes))]
    scenes.sort(key=W._wave_speed)
    counts = []
    original = mpm_sim.MPMSolver._substep

    def counted(self, *args, **kwargs):
        counts[-1] += 1
        return original(self, *args, **kwargs)

    mpm_sim.MPMSolver._substep = counted
    per_batch = {}
    try:
        for b in batch_sizes:
            counts.append(0)
            t0 = time.perf_counter()
            W._simulate_mpm(scenes[:b], cfg)
            per_batch[b] = {
                "s_per_clip": (time.perf_counter() - t0) / b,
                "substeps_per_frame": counts[-1] / (cfg.frames - 1),
            }
    finally:
        mpm_sim.MPMSolver._substep = original
    # one batched substep under the profiler, on the largest batch's initial state
    from torch.profiler import ProfilerActivity, profile

    B = max(batch_sizes)
    parts = [W._particles(s, cfg, "volume") for s in scenes[:B]]
    inputs = [W._mpm_inputs(s, p) for s, p in zip(scenes[:B], parts, strict=True)]
    stack = lambda name, dtype=torch.float32: torch.stack([i[name] for i in inputs]).to(dtype)  # noqa: E731
    materials = mpm_sim.Materials.create(
        B,
        cfg.mpm_particles,
        kind=stack("kind", torch.long),
        body=stack("body", torch.long),
        **{n: stack(n) for n in W._MPM_FIELDS},
    )
    solver = mpm_sim.MPMSolver(cfg.mpm)
    state = solver.init_state(stack("x"), materials, stack("v"), volume=stack("volume"))
    h = solver.max_substep(state)
    for _ in range(3):
        state = solver._substep(state, h, None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(10):
            state = solver._substep(state, h, None)
        substep = (time.perf_counter() - t0) / 10
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = [
        {"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_substep": e.count / 10} for e in ops
    ]
    return {
        "batch": per_batch,
        "substep_ms": substep * 1e3,
        "particles": B * cfg.mpm_particles,
        "us_per_particle_substep": substep * 1e6 / (B * cfg.mpm_particles),
        "top_ops": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigid-clips", type=int, default=512)
    parser.add_argument("--mpm-clips", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    configs = {
        name: load_config(W.WorldConfig, ROOT / "configs" / "data" / f"{name}.yaml")
        for name in ("rigid", "mpm")
    }
    counts = {"rigid": args.rigid_clips, "mpm": args.mpm_clips}
    # enough shards for every worker: a shard is the unit of parallel work
    shard = {name: max(1, min(64, counts[name] // (2 * args.workers))) for name in configs}
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    }
    for name, cfg in configs.items():
        print(f"[{name}] end to end, {counts[name]} clips, {args.workers} workers ...", flush=True)
        results[f"{name}_end_to_end"] = end_to_end(cfg, counts[name], args.workers, shard[name])
        n = max(cfg.batch_size if name == "rigid" else 4, counts[name] // 4)
        print(f"[{name}] stages, {n} clips, 1 process ...", flush=True)
        results[f"{name}_stages"] = stages(cfg, n, min(shard[name], n))
    print("[mpm] batch sizes and profile ...", flush=True)
    results["mpm_detail"] = mpm_detail(configs["mpm"], (1, 4, 8))
    results["machine"]["load_avg_end"] = os.getloadavg()

    m = results["machine"]
    print(
        f"\n{m['cpus']} CPU cores, load average {m['load_avg_start'][0]:.1f} at start, "
        f"{m['load_avg_end'][0]:.1f} at end (shared machine), torch {m['torch']}\n"
    )
    print("| world | clips | workers | wall (s) | clips/s | 10k clips (min) | MB/clip |")
    print("|---|---|---|---|---|---|---|")
    for name in configs:
        r = results[f"{name}_end_to_end"]
        print(
            f"| {name} | {r['clips']} | {r['workers']} | {r['wall_s']:.1f} | {r['clips_per_s']:.2f} | "
            f"{r['10k_min']:.1f} | {r['bytes_per_clip'] / 1e6:.2f} |"
        )
    print("\nms per clip by stage (one process, one thread):\n")
    stage_names = sorted({s for name in configs for s in results[f"{name}_stages"]} - {"total"}) + ["total"]
    print("| stage | " + " | ".join(configs) + " |")
    print("|---|" + "---|" * len(configs))
    for s in stage_names:
        cells = [f"{1e3 * results[f'{n}_stages'].get(s, 0.0):.1f}" for n in configs]
        print(f"| {s} | " + " | ".join(cells) + " |")
    d = results["mpm_detail"]
    print("\nMPM batch size (scenes sorted by stiffness, 1 thread):\n")
    print("| scenes per batch | s per clip | batched substeps per frame (the batch's most) |")
    print("|---|---|---|")
    for b, r in d["batch"].items():
        print(f"| {b} | {r['s_per_clip']:.2f} | {r['substeps_per_frame']:.0f} |")
    print(
        f"\nMPM substep: {d['substep_ms']:.1f} ms for {d['particles']} particles "
        f"({d['us_per_particle_substep']:.2f} us per particle); top operators by self time:\n"
    )
    print("| op | share | calls per substep |")
    print("|---|---|---|")
    for op in d["top_ops"]:
        print(f"| {op['op']} | {100 * op['share']:.0f}% | {op['calls_per_substep']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
