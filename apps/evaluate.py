"""Batch evaluation of a world model and its control adapters over a held-out world dataset, one process or many.

Runs the world-model check (``wmgen.eval.world``: PSNR vs copy-first-frame and the VAE ceiling, falling objects
fall) and/or the adapter checks (``wmgen.eval.controls``: track EPE with / without the adapter / floor; depth-edge
agreement), writes ``results.json`` and, with ``--examples``, the figures into ``--out``.

Under ``torchrun`` every rank takes a strided share of the batches (batch k goes to rank k % world_size; its seed
depends on k only, so any number of ranks gives the numbers of one process); rank 0 gathers the per-clip records
with ``torch.distributed.all_gather_object``, summarises them, prints the tables and writes the files.

    # one process
    .venv/bin/python apps/evaluate.py --model outputs/tiny/flow/model --data outputs/tiny/data/val \\
        --adapter outputs/tiny/adapter_tracks/adapter --adapter outputs/tiny/adapter_depth/adapter \\
        --eval world adapters --clips 64 --steps 16 --out outputs/tiny/eval
    # 8 GPUs (or CPU processes with gloo)
    torchrun --nproc-per-node 8 apps/evaluate.py --model ... --data ... --eval world --clips 256 --out ...
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from controls.base import ControlAdapter
from physics.worlds import WorldDataset
from wmgen.eval.controls import (
    adapter_figures,
    adapter_table,
    evaluate_adapter,
    summarize_map_adapter,
    summarize_track_adapter,
)
from wmgen.eval.tracks import TRACKERS, make_tracker
from wmgen.eval.world import (
    FALL_PX,
    evaluate_world_model,
    load_world_model,
    summarize_world_model,
    world_figures,
    world_table,
    write_json,
)
from wmgen.train.common import Distributed

EVALUATIONS = ("world", "adapters")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="WorldModel directory")
    p.add_argument("--data", required=True, help="held-out world dataset (physics.worlds)")
    p.add_argument("--adapter", action="append", default=[], help="ControlAdapter directory (repeatable)")
    p.add_argument("--eval", nargs="+", choices=EVALUATIONS, default=None,
                   help="what to evaluate (default: world, and adapters when --adapter is given)")  # fmt: skip
    p.add_argument("--clips", type=int, default=64, help="clips evaluated, the first ones; 0: all (default 64)")
    p.add_argument("--batch-size", type=int, default=8, help="clips generated together on one rank")
    p.add_argument("--num-tracks", type=int, default=16, help="requested tracks per clip (track adapter)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default: the model's)")
    p.add_argument("--method", default=None, help="ODE solver (default: the model's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--shift", type=float, default=None, help="time-grid shift (default: the model's)")
    p.add_argument("--control-scale", type=float, default=1.0, help="scale of the adapters' hints")
    p.add_argument("--control-guidance", type=float, default=1.0,
                   help="CFG weight on the controls (with vs without, same prompt; 1: off; needs cfg-scale 1)")
    p.add_argument("--fall-px", type=float, default=FALL_PX, help="mean downward motion (px) of a falling object")
    p.add_argument("--tracker", choices=sorted(TRACKERS), default="lk", help="point tracker")
    p.add_argument("--no-caption", action="store_true", help="generate from the empty prompt, not the captions")
    p.add_argument("--text", default=None, help="PrecomputedText table (.safetensors) instead of the model's encoder")
    p.add_argument("--examples", type=int, default=0, help="clips of rank 0 drawn in figures (default 0: none)")
    p.add_argument("--out", default="outputs/eval", help="output folder (results.json, figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def gather(d: Distributed, records: list[Any]) -> list[Any]:
    """Every rank's ``records`` concatenated in rank order (on every rank; one process: ``records``)."""
    if d.world_size == 1:
        return records
    parts: list[Any] = [None] * d.world_size
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the evaluations; returns the results on rank 0 (None on the other ranks)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval is None:
        args.eval = ["world", "adapters"] if args.adapter else ["world"]
    if "adapters" in args.eval and not args.adapter:
        parser.error("--eval adapters needs at least one --adapter")
    out = Path(args.out)
    with Distributed(args.device) as d:
        shard = (d.rank, d.world_size)
        world = load_world_model(args.model, text=args.text, device=d.device)
        dataset = WorldDataset(args.data)
        clips = None if args.clips == 0 else args.clips
        keep = args.examples if d.is_main else 0  # figures come from rank 0's clips
        tracker = make_tracker(args.tracker) if args.tracker == "lk" else make_tracker(args.tracker, device=d.device)
        sample = dict(
            clips=clips, batch_size=args.batch_size, steps=args.steps, method=args.method, cfg_scale=args.cfg_scale,
            shift=args.shift, seed=args.seed, use_caption=not args.no_caption,
            progress=not args.quiet and d.is_main, shard=shard, keep_examples=keep,
        )  # fmt: skip
        results: dict[str, Any] = {"world_size": d.world_size}
        tables: list[str] = []

        if "world" in args.eval:
            start = time.perf_counter()
            r = evaluate_world_model(world, dataset, tracker=tracker, fall_px=args.fall_px, **sample)
            examples = r.pop("examples", [])
            per_clip = sorted(gather(d, r["per_clip"]), key=lambda c: c["clip"])
            if d.is_main:
                summary = summarize_world_model(per_clip, fall_px=args.fall_px)
                summary["settings"] = {**r["settings"], "shard": None, "seconds": time.perf_counter() - start}
                results["world_model"] = {**summary, "per_clip": per_clip}
                tables.append(f"### world model\n\n{world_table(summary)}\n\ngoal: {summary['goal']}")
                world_figures(examples, out, fps=world.config.fps)

        for path in args.adapter if "adapters" in args.eval else []:
            start = time.perf_counter()
            adapter = ControlAdapter.from_pretrained(path, device=d.device)
            r = evaluate_adapter(world, adapter, dataset, num_tracks=args.num_tracks, tracker=tracker,
                                 control_scale=args.control_scale,
                                 control_guidance=args.control_guidance, **sample)  # fmt: skip
            examples = r.pop("examples", [])
            per_clip = sorted(gather(d, r["per_clip"]), key=lambda c: c["clip"])
            skipped = gather(d, r.get("skipped_clips", []))
            if d.is_main:
                if adapter.kind == "tracks":
                    summary = summarize_track_adapter(per_clip, skipped=skipped)
                else:
                    summary = summarize_map_adapter(per_clip, kind=adapter.kind)
                summary["settings"] = {**r["settings"], "shard": None, "adapter": str(path),
                                       "seconds": time.perf_counter() - start}  # fmt: skip
                key = adapter.kind if adapter.kind not in results.get("adapters", {}) else f"{adapter.kind}_{path}"
                results.setdefault("adapters", {})[key] = {**summary, "per_clip": per_clip}
                tables.append(
                    f"### {adapter.kind} adapter ({path})\n\n{adapter_table(summary)}\n\ngoal: {summary['goal']}"
                )
                adapter_figures(examples, out, adapter.kind, fps=world.config.fps)

        if not d.is_main:
            return None
        results["settings"] = {"model": str(args.model), "data": str(args.data), "eval": list(args.eval)}
        write_json(out / "results.json", results)
        print("\n\n".join(tables) + f"\n\nwrote {out / 'results.json'}")
        return results


if __name__ == "__main__":
    main()
