"""World-model check on held-out simulated clips (``wmgen.eval.world``).

From each clip's ground-truth first frame (and caption) the model generates the clip; reported: PSNR over frames
1..T-1 of the generation vs copy-first-frame vs the VAE reconstruction (the latent ceiling), the fraction of clips
where the generation beats the copy, and whether objects that fall in the simulation fall in the generation
(tracked with a point tracker; the same tracker on the ground truth is the floor). Twins calibrate the PSNR:
another true future of each clip (the same first frame, redrawn velocities, spins, restitution and friction;
``wmgen.eval.world.evaluate_twins``), as pixels and through the model's VAE -- what a perfect sampler scores.

Run (after `wmgen train flow`):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/world_model.py --model outputs/tiny/flow/model \\
        --data outputs/tiny/data/val --clips 64 --steps 16 --out outputs/tiny/eval/world_model

Prints a markdown table; writes results.json, world_model.gif (rows: ground truth | generated | copy) and
world_model.png (the same at five frames) into --out. For several processes use apps/evaluate.py under torchrun.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physics.worlds import WorldDataset
from wmgen.eval.tracks import TRACKERS, make_tracker
from wmgen.eval.world import (
    FALL_PX,
    add_generation_arguments,
    evaluate_twins,
    evaluate_world_model,
    load_world_model,
    world_figures,
    world_table,
    write_json,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="WorldModel directory (wmgen train flow's model/)")
    p.add_argument("--data", required=True, help="held-out world dataset (physics.worlds)")
    p.add_argument("--clips", type=int, default=64, help="clips evaluated, the first ones (default 64)")
    p.add_argument("--tracker", choices=sorted(TRACKERS), default="lk", help="point tracker of the motion check")
    p.add_argument("--fall-px", type=float, default=FALL_PX, help="mean downward motion (px) of a falling object")
    p.add_argument("--out", default="outputs/eval/world_model", help="output folder")
    p.add_argument("--no-twins", action="store_true", help="skip the twins (another true future per clip, raw and "
                   "through the VAE: what a perfect sampler scores)")
    add_generation_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    world = load_world_model(args.model, text=args.text, device=args.device)
    tracker = make_tracker(args.tracker) if args.tracker == "lk" else make_tracker(args.tracker, device=args.device)
    start = time.perf_counter()
    results = evaluate_world_model(
        world, WorldDataset(args.data), clips=args.clips, batch_size=args.batch_size, steps=args.steps,
        method=args.method, cfg_scale=args.cfg_scale, shift=args.shift, seed=args.seed, tracker=tracker,
        use_caption=not args.no_caption, fall_px=args.fall_px, progress=not args.quiet,
        keep_examples=args.examples,
    )  # fmt: skip
    examples = results.pop("examples", [])
    if not args.no_twins:
        results.update(evaluate_twins(WorldDataset(args.data), clips=args.clips, vae=world.vae, seed=args.seed))
    results["settings"].update(model=str(args.model), data=str(args.data), seconds=time.perf_counter() - start)
    out = Path(args.out)
    write_json(out / "results.json", results)
    figures = world_figures(examples, out, fps=world.config.fps)
    print(world_table(results))
    goal = results["goal"]
    print(f"\ngoal met: {goal['met']} (beats copy on PSNR: {goal['beats_copy_psnr']}, falling objects fall: "
          f"{goal['falling_objects_fall']}); wrote {out / 'results.json'} and {len(figures)} figures")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
