"""2-D flow-matching recipe: config checks, schedule, determinism, EMA, the written run, and a quality bar.

Quality bar (``test_reaches_quality``), on 2000 generated vs 2000 held-out target points
(``evaluate_toy2d``):

- sliced W2 against ``swd_reference``, the mean score of 5 fresh target draws, i.e. of a perfect model
  (0.072 +- 0.013 for moons at this size; the untrained flow scores 0.58 from N(0, I), 0.78 from 8
  Gaussians);
- k = 3 precision and recall against a second held-out draw's (0.98 / 0.95): sliced W2 averages thin
  structure away, precision does not.

Measured with this config (64 wide, 2 blocks, no x features, batch 256, lr 5e-3, dopri5 at 1e-4):

    steps                       250          500          1000
    gaussian -> moons    SW2   1.60x ref    1.19x        0.83x
                         P/R   0.65/0.97    0.81/0.97    0.91/0.98
    8gaussians -> moons  SW2   2.84x        1.66x        1.41x     (splitting 8 clusters into 2 moons is
                         P/R   0.43/0.90    0.73/0.91    0.89/0.89  harder at the same budget)

Bars: SW2 < 1.5x ref (gaussian) or 2x ref (8 Gaussians) and < 0.25x untrained, and precision and recall
>= 0.85x the reference values. The 1000-step models pass; a quarter of the budget fails on both counts
and half fails on precision. Each case takes 2-3 s of CPU to train and sample (single thread) and about
2 s to evaluate. See BENCHMARKS.md, "2-D toy flows".
"""

import json
import time
from typing import get_args

import pytest

from wmgen.config import ConfigError, from_dict
from wmgen.data.toy2d import TOY2D
from wmgen.train import toy2d as recipe
from wmgen.train.toy2d import Toy2DConfig, evaluate_toy2d, run_toy2d, sample_toy2d, train_toy2d

TINY = dict(hidden=16, depth=1, time_embed=8, batch_size=32, n_samples=64, swd_projections=16)


def test_config_choices_and_checks():
    assert set(get_args(recipe.Toy2DName)) == set(TOY2D)
    cfg = from_dict(Toy2DConfig, {"source": "8gaussians", "target": "dino", "steps": 10})
    assert (cfg.source, cfg.target, cfg.steps) == ("8gaussians", "dino", 10)
    with pytest.raises(ConfigError, match="target: expected one of .*got 'swiss'"):
        from_dict(Toy2DConfig, {"target": "swiss"})
    with pytest.raises(ConfigError, match="unknown key stepz .*valid keys: .*steps"):
        from_dict(Toy2DConfig, {"stepz": 3})
    with pytest.raises(ConfigError, match=r"lr: expected a value in \[0.0, 1.0\], got 2.0"):
        from_dict(Toy2DConfig, {"lr": 2.0})
    with pytest.raises(ValueError, match="euler_maruyama assumes a Gaussian source"):
        Toy2DConfig(source="moons", target="dino", solver="euler_maruyama")
    assert set(recipe.CLI_FLAGS) <= {f for f in Toy2DConfig.__dataclass_fields__}


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = Toy2DConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    f = [recipe._lr_factor(s, cfg) for s in range(cfg.steps + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # monotone cosine decay
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert f[110] == pytest.approx(0.1)


def test_training_is_deterministic_and_learns():
    cfg = Toy2DConfig(steps=60, lr=1e-2, warmup_steps=5, **TINY)
    _, h1 = train_toy2d(cfg, progress=False)
    _, h2 = train_toy2d(cfg, progress=False)
    assert h1["loss"] == h2["loss"]  # same seed, same run
    assert len(h1["loss"]) == len(h1["lr"]) == 60
    assert sum(h1["loss"][-10:]) < sum(h1["loss"][:10])
    _, h3 = train_toy2d(Toy2DConfig(steps=60, lr=1e-2, warmup_steps=5, seed=1, **TINY), progress=False)
    assert h3["loss"] != h1["loss"]


def test_ema_weights_are_returned():
    # The head starts at zero; with a very slow EMA the returned weights barely leave it, without EMA they do.
    plain, _ = train_toy2d(Toy2DConfig(steps=20, lr=1e-2, warmup_steps=0, **TINY), progress=False)
    slow, _ = train_toy2d(
        Toy2DConfig(steps=20, lr=1e-2, warmup_steps=0, ema_decay=0.99999, **TINY), progress=False
    )
    assert plain.out.weight.abs().max() > 1e-2
    assert slow.out.weight.abs().max() < 1e-3
    assert not slow.training and all(not p.requires_grad for p in slow.parameters())


def test_run_writes_every_file(tmp_path):
    cfg = Toy2DConfig(steps=30, solver="rk4", sample_steps=4, gif_frames=3, likelihood_grid=8, **TINY)
    metrics = run_toy2d(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "run"
    expected = {
        "quiver.png", "streamlines.png", "particles.png", "particles.gif", "samples.png", "density.png",
        "loss.png", "model.safetensors", "config.json", "metrics.json",
    }
    assert {p.name for p in out.iterdir()} == expected  # and no temporary files
    for name in expected:
        assert (out / name).stat().st_size > 100, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("swd", "swd_reference", "swd_source", "precision", "recall", "nfe", "train_time_s", "config"):
        assert key in saved
    assert saved["nfe"] == 16  # rk4: 4 steps x 4 evaluations
    assert saved["config"]["steps"] == 30
    assert json.loads((out / "config.json").read_text()) == saved["config"]
    # the checkpoint reloads into the same network
    from safetensors.torch import load_file

    model = recipe.build_model(cfg)
    model.load_state_dict(load_file(out / "model.safetensors"))
    x = sample_toy2d(model, cfg)
    assert evaluate_toy2d(x, cfg)["swd"] == pytest.approx(saved["swd"], rel=1e-5)


def test_non_gaussian_run_skips_the_likelihood(tmp_path):
    cfg = Toy2DConfig(source="checkerboard", target="spirals", steps=5, solver="euler", sample_steps=2,
                      gif_frames=2, **TINY)
    metrics = run_toy2d(cfg, tmp_path, progress=False)
    assert "likelihood_time_s" not in metrics and (tmp_path / "density.png").exists()


QUALITY = {
    # pair: (steps, allowed multiple of swd_reference)
    ("gaussian", "moons"): (1000, 1.5),
    ("8gaussians", "moons"): (1000, 2.0),
}


@pytest.mark.parametrize("source, target", list(QUALITY))
def test_reaches_quality(source, target):
    steps, factor = QUALITY[(source, target)]
    cfg = Toy2DConfig(
        source=source, target=target, hidden=64, depth=2, x_octaves=0, batch_size=256, steps=steps, lr=5e-3,
        n_samples=2000, solver="dopri5", atol=1e-4, rtol=1e-4,
    )
    start = time.process_time()
    model, history = train_toy2d(cfg, progress=False)
    samples = sample_toy2d(model, cfg)
    cpu_s = time.process_time() - start
    m = evaluate_toy2d(samples, cfg)
    assert m["swd"] < factor * m["swd_reference"], m
    assert m["swd"] < 0.25 * m["swd_source"], m
    assert m["precision"] >= 0.85 * m["precision_reference"], m
    assert m["recall"] >= 0.85 * m["recall_reference"], m
    assert cpu_s < 60, f"training + sampling took {cpu_s:.1f} s of CPU"
