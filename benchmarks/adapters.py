"""Control-adapter obedience on held-out simulated clips (``wmgen.eval.controls``).

Track adapter: track EPE of generations WITH the adapter vs the same model WITHOUT it (same noise) vs the
ground-truth render measured by the same tracker (the floor); goal: EPE with control at most 30% of the EPE
without and within 2x of the floor. Depth (edges, mask) adapter: the control's silhouette edges against the Canny
edges of the generated frames (recall / precision / F1 within 1 px), with vs without the adapter, and for the
ground-truth frames (the ceiling).

Run (after `wmgen train adapter`):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/adapters.py --model outputs/tiny/flow/model \\
        --adapter outputs/tiny/adapter_tracks/adapter --adapter outputs/tiny/adapter_depth/adapter \\
        --data outputs/tiny/data/val --clips 64 --steps 16 --out outputs/tiny/eval/adapters

Prints one markdown table per adapter; writes results.json (one entry per adapter, keyed by its kind) and the
figures into --out: tracks.gif / tracks.png (requested tracks drawn on the generation with | without control |
ground truth) and depth.gif / depth.png (control depth | with | without | ground truth).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controls.base import ControlAdapter
from physics.worlds import WorldDataset
from wmgen.eval.controls import adapter_figures, adapter_table, evaluate_adapter
from wmgen.eval.tracks import TRACKERS, make_tracker
from wmgen.eval.world import add_generation_arguments, load_world_model, write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="WorldModel directory of the frozen backbone")
    p.add_argument("--adapter", required=True, action="append", help="ControlAdapter directory (repeatable)")
    p.add_argument("--data", required=True, help="held-out world dataset (physics.worlds)")
    p.add_argument("--clips", type=int, default=64, help="clips evaluated, the first ones (default 64)")
    p.add_argument("--num-tracks", type=int, default=16, help="requested tracks per clip (track adapter)")
    p.add_argument("--control-scale", type=float, default=1.0, help="scale of the adapter's hints")
    p.add_argument("--control-guidance", type=float, default=1.0,
                   help="CFG weight on the control (with vs without it, same prompt; 1: off; needs cfg-scale 1)")
    p.add_argument("--tracker", choices=sorted(TRACKERS), default="lk", help="point tracker of the track EPE")
    p.add_argument("--out", default="outputs/eval/adapters", help="output folder")
    add_generation_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    world = load_world_model(args.model, text=args.text, device=args.device)
    dataset = WorldDataset(args.data)
    adapters = [ControlAdapter.from_pretrained(a, device=args.device) for a in args.adapter]
    tracker = make_tracker(args.tracker) if args.tracker == "lk" else make_tracker(args.tracker, device=args.device)
    out = Path(args.out)
    results: dict[str, Any] = {}
    for path, adapter in zip(args.adapter, adapters, strict=True):
        start = time.perf_counter()
        r = evaluate_adapter(
            world, adapter, dataset, clips=args.clips, batch_size=args.batch_size, seed=args.seed, steps=args.steps,
            method=args.method, cfg_scale=args.cfg_scale, shift=args.shift, control_scale=args.control_scale,
            control_guidance=args.control_guidance,
            use_caption=not args.no_caption, progress=not args.quiet, num_tracks=args.num_tracks, tracker=tracker,
            keep_examples=args.examples,
        )  # fmt: skip
        examples = r.pop("examples", [])
        r["settings"].update(model=str(args.model), adapter=str(path), data=str(args.data),
                             seconds=time.perf_counter() - start)  # fmt: skip
        key = adapter.kind if adapter.kind not in results else f"{adapter.kind}_{len(results)}"
        results[key] = r
        figures = adapter_figures(examples, out, adapter.kind, fps=world.config.fps)
        print(f"\n### {adapter.kind} adapter ({path})\n\n{adapter_table(r)}\n\ngoal: {r['goal']}")
        print(f"figures: {', '.join(str(f) for f in figures) or 'none'}")
    write_json(out / "results.json", results)
    print(f"\nwrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
