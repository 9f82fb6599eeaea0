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
app.add_typer(data_app, name="data")
app.add_typer(world_app, name="world")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of config overrides.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override one field: key=value (YAML value, dotted keys).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
