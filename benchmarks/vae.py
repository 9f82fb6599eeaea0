"""Latent ceilings of VAEs side by side (``wmgen.eval.vae``): what any model built on each can score.

Passes the ground truth of held-out clips through each VAE and scores it as the world-model and track checks
score generations: reconstruction PSNR (whole, frames 1.., objects), object colour errors, a twin (another
true future) through the VAE against copy-first-frame, falling objects that still fall, and the track EPE
through the VAE against the tracker's floor. Compare a candidate VAE with the recipe's in the same run, before
any DiT is trained on it.

Run:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vae.py --vae recipe=checkpoints/tiny/world_model/vae \\
        --vae candidate=outputs/tiny/vae_new/vae --data outputs/tiny/data/val --clips 64

Prints one markdown table (a row per VAE, then copy-first-frame, the tracked ground truth and the twins in
pixels) and each VAE's reachable goals; writes results.json into --out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from physics.worlds import WorldDataset
from wmgen.eval.tracks import TRACKERS, make_tracker
from wmgen.eval.vae import evaluate_vae, vae_table
from wmgen.eval.world import write_json
from wmgen.models.vae import CausalVAE


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--vae must be NAME=PATH (a VAE directory), got {spec!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--vae",
        required=True,
        action="append",
        type=_named,
        help="NAME=PATH of a VAE directory (CausalVAE.save_pretrained; a WorldModel's vae/); repeatable",
    )
    p.add_argument("--data", required=True, help="held-out world dataset (physics.worlds)")
    p.add_argument("--clips", type=int, default=64, help="clips evaluated, the first ones (default 64)")
    p.add_argument("--num-tracks", type=int, default=16, help="requested tracks per clip of the track check")
    p.add_argument("--motion-tracker", choices=sorted(TRACKERS), default="lk", help="the world check's tracker")
    p.add_argument("--track-tracker", choices=sorted(TRACKERS), default="color", help="the track check's tracker")
    p.add_argument("--no-twins", action="store_true", help="skip the twins (re-simulates every clip)")
    p.add_argument("--seed", type=int, default=0, help="track choice and twins' seed")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", default="outputs/eval/vae", help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    names = [name for name, _ in args.vae]
    if len(set(names)) != len(names):
        raise SystemExit(f"--vae names must differ, got {names}")
    dataset = WorldDataset(args.data)
    motion = make_tracker(args.motion_tracker)
    track = make_tracker(args.track_tracker)
    results: dict[str, Any] = {}
    for name, path in args.vae:
        vae = CausalVAE.from_pretrained(path, device=args.device)
        start = time.perf_counter()
        r = evaluate_vae(vae, dataset, clips=args.clips, num_tracks=args.num_tracks, seed=args.seed,
                         motion_tracker=motion, track_tracker=track, twins=not args.no_twins)  # fmt: skip
        r["settings"].update(vae=str(path), data=str(args.data), seconds=time.perf_counter() - start)
        results[name] = r
        print(f"{name}: {r['settings']['seconds']:.0f} s, reachable: {r['reachable']}", flush=True)
    print(f"\n{vae_table(results)}")
    write_json(Path(args.out) / "results.json", results)
    print(f"\nwrote {Path(args.out) / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
