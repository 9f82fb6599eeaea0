"""The ``wmgen`` command: help on every command, config errors that name the key, and each command's
outputs on tiny settings (run in-process through typer's CliRunner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import wmgen
from wmgen.cli import app, parse_overrides

runner = CliRunner()

TINY_TOY = [
    "--set",
    "n_samples=256",
    "--set",
    "hidden=32",
    "--set",
    "depth=1",
    "--set",
    "gif_frames=4",
    "--set",
    "likelihood_grid=0",
    "--set",
    "batch_size=128",
    "--set",
    "swd_projections=32",
]

# A rigid world small enough to simulate in about a second (same scale as tests/physics/test_worlds.py).
TINY_WORLD = """
resolution: 16
frames: 5
num_tracks: 8
rigid_particles_per_object: 24
batch_size: 2
supersample: 1
scene: {max_objects: 1}
rigid: {substeps: 4}
"""


@pytest.mark.parametrize(
    "command", [[], ["version"], ["demo"], ["toy2d"], ["data"], ["data", "generate"], ["world"], ["world", "preview"]]
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == wmgen.__version__


def test_parse_overrides_types_and_errors():
    assert parse_overrides(["a.b=3", "name=x", "flag=true", "xs=[1, 2]"]) == {
        "a.b": 3,
        "name": "x",
        "flag": True,
        "xs": [1, 2],
    }
    with pytest.raises(Exception, match="key=value"):
        parse_overrides(["novalue"])


def test_toy2d_writes_views_and_metrics(tmp_path):
    out = tmp_path / "toy"
    result = runner.invoke(
        app,
        [
            "toy2d",
            "--source",
            "8gaussians",
            "--target",
            "moons",
            "--solver",
            "heun",
            "--steps",
            "20",
            "--out",
            str(out),
            "--quiet",
            *TINY_TOY,
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ["quiver.png", "streamlines.png", "particles.png", "particles.gif", "samples.png", "metrics.json"]:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"] == "8gaussians" and metrics["solver"] == "heun"
    assert '"swd"' in result.output


def test_config_errors_name_the_key_and_exit_2(tmp_path):
    bad = runner.invoke(app, ["toy2d", "--out", str(tmp_path), "--set", "hiden=3"])
    assert bad.exit_code == 2
    assert "unknown key hiden" in bad.output and "hidden" in bad.output
    choice = runner.invoke(app, ["toy2d", "--out", str(tmp_path), "--target", "cats"])
    assert choice.exit_code == 2 and "target: expected one of" in choice.output
    rng = runner.invoke(app, ["toy2d", "--out", str(tmp_path), "--set", "lr=5"])
    assert rng.exit_code == 2 and "lr: expected a value in" in rng.output
    missing = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--config", str(tmp_path / "no.yaml")])
    assert missing.exit_code == 2 and "config file not found" in missing.output
    assert not any(tmp_path.iterdir())  # nothing was written by the failed commands


def test_data_generate_and_world_preview(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_WORLD)
    out = tmp_path / "data"
    args = [
        "data",
        "generate",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--num-clips",
        "3",
        "--shard-size",
        "2",
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from physics.worlds import WorldDataset

    ds = WorldDataset(out)
    assert len(ds) == 3 and ds[0]["tracks"].shape[-1] == 2
    # running again is a resume of a complete dataset: nothing changes
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*.npy"))
    assert runner.invoke(app, args).exit_code == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*.npy")) == before

    prev = runner.invoke(
        app, ["world", "preview", "--config", str(cfg), "--out", str(tmp_path / "prev"), "--seed", "2"]
    )
    assert prev.exit_code == 0, prev.output
    assert (tmp_path / "prev" / "preview.gif").stat().st_size > 0
    assert (tmp_path / "prev" / "depth.png").stat().st_size > 0
