"""The ``wmgen`` command. Thin: every command parses flags, builds a config and calls one library function.

    wmgen version
    wmgen demo --out outputs/demo
    wmgen toy2d --source gaussian --target moons --solver dopri5 --out outputs/toy2d
    wmgen data generate --config configs/data/rigid.yaml --out data/rigid --num-clips 1000 --workers 2
    wmgen world preview --config configs/data/mpm.yaml --out outputs/preview --seed 3

Every config-backed command takes ``--config FILE.yaml`` (overrides of the dataclass defaults) and any number
of ``--set key=value`` overrides (YAML values, dotted keys for nested fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

import wmgen

app = typer.Typer(
    name="wmgen",
    help="wmgen: controllable video world models (flow matching, control adapters, physics worlds).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="World datasets: generate and inspect.", no_args_is_help=True)
world_app = typer.Typer(help="Simulated worlds: preview one scene.", no_args_is_help=True)
train_app = typer.Typer(help="Training recipes (run under torchrun for DDP/FSDP).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(world_app, name="world")
app.add_typer(train_app, name="train")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of config overrides.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override one field: key=value (YAML value, dotted keys).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in `out` from its newest checkpoint.")]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "name=x"]`` -> ``{"a.b": 3, "name": "x"}`` with YAML-typed values."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {pair!r}", param_hint="--set")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _print_summary(metrics: dict[str, Any]) -> None:
    keys = ("swd", "swd_reference", "precision", "recall", "nfe")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


@app.command()
def version() -> None:
    """Print the wmgen version."""
    typer.echo(wmgen.__version__)


@app.command()
def toy2d(
    out: Annotated[Path, typer.Option(help="Output directory for pictures and metrics.json.")] = Path("outputs/toy2d"),
    source: Annotated[str | None, typer.Option(help="Source distribution (gaussian or a toy set).")] = None,
    target: Annotated[str | None, typer.Option(help="Target toy set.")] = None,
    solver: Annotated[str | None, typer.Option(help="ODE solver for sampling.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training iterations.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a 2-D flow (source -> target) for a short while and write its three views and metrics."""
    from wmgen.config import ConfigError, load_config
    from wmgen.train.toy2d import Toy2DConfig, run_toy2d

    flags = {"source": source, "target": target, "solver": solver, "steps": steps, "seed": seed}
    overrides = {k: v for k, v in flags.items() if v is not None} | parse_overrides(set_)
    try:
        cfg = load_config(Toy2DConfig, config, overrides=overrides)
    except (ConfigError, FileNotFoundError) as err:
        _fail(err)
    metrics = run_toy2d(cfg, out, progress=not quiet)
    _print_summary(metrics)
    typer.echo(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("outputs/demo"),
    quiet: QuietOpt = False,
) -> None:
    """The main job: train a 2-D flow from a Gaussian to moons and write the field, streamlines and particles."""
    from wmgen.train.toy2d import Toy2DConfig, run_toy2d

    metrics = run_toy2d(Toy2DConfig(), out, progress=not quiet)
    _print_summary(metrics)
    typer.echo(f"wrote {out}")


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option(help="Dataset directory (created, or resumed if it exists).")],
    config: ConfigOpt = None,
    num_clips: Annotated[int, typer.Option(min=1, help="Total clips the dataset should hold.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (1 thread each).")] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Dataset seed: clip i depends only on (seed, i).")] = 0,
    shard_size: Annotated[int, typer.Option(min=1, help="Clips per shard.")] = 64,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Simulate and render a world dataset into checksummed shards; a killed run resumes where it stopped."""
    from physics.worlds import WorldConfig, generate_dataset
    from wmgen.config import ConfigError, load_config

    try:
        cfg = load_config(WorldConfig, config, overrides=parse_overrides(set_))
        path = generate_dataset(
            cfg, out, num_clips, workers=workers, seed=seed, shard_size=shard_size, progress=not quiet
        )
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@world_app.command("preview")
def world_preview(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("outputs/preview"),
    config: ConfigOpt = None,
    seed: Annotated[int, typer.Option(min=0, help="Scene seed (as a dataset with this seed would use).")] = 0,
    index: Annotated[int, typer.Option(min=0, help="Clip index within that dataset.")] = 0,
    set_: SetOpt = None,
) -> None:
    """Simulate one scene; write a GIF with its tracks drawn, a depth PNG and a point-cloud snapshot."""
    from physics.worlds import WorldConfig, preview
    from wmgen.config import ConfigError, load_config

    try:
        cfg = load_config(WorldConfig, config, overrides=parse_overrides(set_))
        written = preview(cfg, out, seed, index=index)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(err)
    for kind, path in written.items():
        typer.echo(f"{kind}: {path}")


TRAIN_RECIPES = {  # `wmgen train <name>`: (module, config dataclass, function(config, resume=) -> output path)
    "vae": ("wmgen.train.vae", "VAETrainConfig", "train_vae"),
    "flow": ("wmgen.train.flow", "FlowTrainConfig", "train_flow"),
    "adapter": ("wmgen.train.adapter", "AdapterTrainConfig", "train_adapter"),
}


def _run_recipe(run: Path) -> str:
    """The `wmgen train` recipe (a key of TRAIN_RECIPES) whose config the newest checkpoint of ``run`` holds:
    the one recipe whose config dataclass has all its keys (a run older than a new field lacks that field)."""
    import dataclasses
    import importlib

    from wmgen.train.common import export_source

    keys = set(export_source(run)[0])
    matches = []
    for recipe, (module, config_name, _) in TRAIN_RECIPES.items():
        config_cls = getattr(importlib.import_module(module), config_name)
        if keys <= {f.name for f in dataclasses.fields(config_cls)}:
            matches.append(recipe)
    if len(matches) != 1:
        raise ValueError(
            f"run = {str(run)!r}: its checkpoint's config fits {len(matches)} `wmgen train` recipes "
            f"({matches}), expected one (keys {sorted(keys)})"
        )
    return matches[0]


def _train(
    recipe: str, config: Path | None, set_: list[str] | None, resume: bool, quiet: bool, section: str | None = None
) -> None:
    """Shared body of the `wmgen train ...` commands: config section ``section`` (default ``recipe``)."""
    import importlib

    from wmgen.config import ConfigError, load_config
    from wmgen.train.common import TrainingDiverged

    module, config_name, run_name = TRAIN_RECIPES[recipe]
    config_cls, run = (getattr(importlib.import_module(module), n) for n in (config_name, run_name))
    overrides = parse_overrides(set_)
    if quiet:
        overrides["loop.progress"] = False
    try:
        cfg = load_config(config_cls, config, overrides=overrides, section=section or recipe)
        path = run(cfg, resume=resume)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, TypeError, TrainingDiverged) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@train_app.command("vae")
def train_vae(config: ConfigOpt = None, set_: SetOpt = None, resume: ResumeOpt = False, quiet: QuietOpt = False):
    """Train the causal video VAE on a world dataset (section `vae` of the config file)."""
    _train("vae", config, set_, resume, quiet)


@train_app.command("flow")
def train_flow(config: ConfigOpt = None, set_: SetOpt = None, resume: ResumeOpt = False, quiet: QuietOpt = False):
    """Train the VideoDiT by flow matching on VAE latents (section `flow` of the config file)."""
    _train("flow", config, set_, resume, quiet)


@train_app.command("adapter")
def train_adapter(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    quiet: QuietOpt = False,
    kind: Annotated[str | None, typer.Option(help="tracks | depth | edges | mask (overrides the config).")] = None,
    section: Annotated[str, typer.Option(help="Config file section to read.")] = "adapter",
):
    """Train a control adapter on a frozen world model (config section `adapter`, or --section)."""
    if kind is not None:
        set_ = [*(set_ or []), f"kind={kind}"]
    _train("adapter", config, set_, resume, quiet, section=section)


@train_app.command("export")
def train_export(
    run: Annotated[Path, typer.Argument(help="Run directory of `wmgen train flow` or `wmgen train vae` (its `out`).")],
    out: Annotated[Path, typer.Option(help="Directory to write: a WorldModel (flow run) or a VAE (vae run).")],
    step: Annotated[int | None, typer.Option(min=1, help="Checkpoint step (default: the newest).")] = None,
    vae: Annotated[
        Path | None, typer.Option(help="Flow runs: a decoder fine-tune of the run's VAE to export instead.")
    ] = None,
) -> None:
    """Export a checkpoint (EMA weights) of a flow run as a WorldModel, or of a VAE run as a VAE: to evaluate a
    run part-way, or keep its best validation step."""
    from wmgen.train.flow import export_checkpoint
    from wmgen.train.vae import export_vae_checkpoint

    try:
        recipe = _run_recipe(run)
        if recipe == "vae" and vae is not None:
            raise ValueError(f"--vae swaps the VAE of a flow run's export; {run} holds a `wmgen train vae` run")
        if recipe == "vae":
            path = export_vae_checkpoint(run, out, step=step)
        elif recipe == "flow":
            path = export_checkpoint(run, out, step=step, vae=vae)
        else:
            raise ValueError(
                f"run = {str(run)!r} holds a `wmgen train {recipe}` run: only flow and vae runs are "
                "exported this way (the others write their export when they end)"
            )
    except (FileNotFoundError, ValueError) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@data_app.command("encode")
def data_encode(
    data: Annotated[Path, typer.Option(help="World dataset directory.")],
    vae: Annotated[Path, typer.Option(help="Trained VAE directory (wmgen train vae).")],
    out: Annotated[Path, typer.Option(help="Latents directory to write.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per encoder call.")] = 8,
    num_clips: Annotated[int | None, typer.Option(min=1, help="Encode only the first N clips.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Pre-encode a world dataset's clips to VAE posterior latents (mean, std) for `wmgen train flow`."""
    from wmgen.train.flow import encode_latents

    try:
        path = encode_latents(data, vae, out, batch_size=batch_size, num_clips=num_clips, progress=not quiet)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@app.command("generate")
def generate(
    model: Annotated[Path, typer.Argument(help="World model directory (WorldModel.save_pretrained).")],
    out: Annotated[Path, typer.Option(help="Output video: .mp4, .gif or .png (a sheet of frames); JSON beside it.")],
    prompt: Annotated[str, typer.Option(help="Text prompt.")] = "",
    first_frame: Annotated[
        Path | None, typer.Option(help="RGB image to start from (image-to-video models), resolution x resolution.")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Solver steps (default: the model's).")] = None,
    method: Annotated[str | None, typer.Option(help="ODE solver, e.g. heun, euler (default: the model's).")] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance weight (1 = off).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Prompt to steer away from (cfg-scale > 1).")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed (default: a random one, recorded).")] = None,
    num_clips: Annotated[int, typer.Option(min=1, help="More than 1: autoregressive rollout of this many clips.")] = 1,
    device: Annotated[str, typer.Option(help="Torch device to run on.")] = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """Generate a video with a saved world model (a rollout of several clips with --num-clips)."""
    import os
    import random

    from PIL import Image, UnidentifiedImageError

    from wmgen.pipeline import VIDEO_SUFFIXES, WorldModel

    if out.suffix.lower() not in VIDEO_SUFFIXES:
        _fail(ValueError(f"--out must end in one of {list(VIDEO_SUFFIXES)}, got {str(out)!r}"))
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    try:
        image = None
        if first_frame is not None:
            try:
                with Image.open(first_frame) as im:
                    image = im.copy()  # load the pixels before the file closes
            except UnidentifiedImageError as err:
                raise ValueError(f"--first-frame {first_frame} is not an image Pillow can read") from err
        wm = WorldModel.from_pretrained(model, device=device)
        kwargs = {"steps": steps, "method": method, "cfg_scale": cfg_scale, "negative_prompt": negative_prompt}
        kwargs |= {"seed": seed, "progress": not quiet}
        if num_clips == 1:
            video = wm.generate(prompt, image, **kwargs)
        else:
            video = wm.rollout(prompt, image, num_clips=num_clips, **kwargs)
        path = video.save(out)
    except (FileNotFoundError, ValueError, TypeError, KeyError, ImportError) as err:
        _fail(err)
    c = wm.config
    record = {
        "model": str(model), "video": str(path), "prompt": prompt, "negative_prompt": negative_prompt,
        "first_frame": None if first_frame is None else str(first_frame), "seed": seed, "num_clips": num_clips,
        "steps": steps or c.steps, "method": method or c.method,
        "cfg_scale": c.cfg_scale if cfg_scale is None else cfg_scale, "frames": video.pixels.shape[2], "fps": c.fps,
    }  # fmt: skip
    meta = path.with_suffix(".json")
    tmp = meta.with_name(f".{meta.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, meta)  # atomic, like the video
    typer.echo(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
