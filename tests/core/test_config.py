"""Config system: frozen dataclasses + YAML overrides, with errors that name the key."""

from dataclasses import FrozenInstanceError, dataclass, field
from typing import Literal

import pytest

from wmgen.config import ConfigError, from_dict, load_config, to_dict, validate


@dataclass(frozen=True)
class Inner:
    steps: int = field(default=8, metadata={"range": (1, None)})  # solver steps
    method: Literal["euler", "heun"] = "heun"  # integration scheme


@dataclass(frozen=True)
class Outer:
    lr: float = field(default=1e-3, metadata={"range": (0.0, 1.0)})  # learning rate
    name: str = "run"
    sizes: tuple[int, ...] = (1, 2)
    ema: float | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_overrides_and_nesting(tmp_path):
    p = tmp_path / "o.yaml"
    p.write_text("lr: 0.01\ninner:\n  steps: 4\nsizes: [3, 4, 5]\n")
    cfg = load_config(Outer, p, overrides={"inner.method": "euler", "ema": 0.99})
    assert cfg == Outer(lr=0.01, sizes=(3, 4, 5), ema=0.99, inner=Inner(steps=4, method="euler"))
    assert to_dict(cfg)["sizes"] == [3, 4, 5]
    assert from_dict(Outer, to_dict(cfg)) == cfg
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_int_is_accepted_as_float_but_not_the_reverse():
    assert from_dict(Outer, {"lr": 0}).lr == 0.0
    with pytest.raises(ConfigError, match="inner.steps: expected int, got 2.5"):
        from_dict(Outer, {"inner": {"steps": 2.5}})


def test_yaml_exponent_strings_are_floats(tmp_path):
    """PyYAML reads 2e-4 (no dot) as a string; a float field takes it, anything else stays an error."""
    p = tmp_path / "o.yaml"
    p.write_text("lr: 2e-4\n")
    assert load_config(Outer, p).lr == 2e-4
    assert load_config(Outer, p, overrides={"ema": "5E-1"}).ema == 0.5
    with pytest.raises(ConfigError, match="lr: expected float, got 'fast'"):
        from_dict(Outer, {"lr": "fast"})
    with pytest.raises(ConfigError, match="name: expected str, got 3"):
        from_dict(Outer, {"name": 3})


def test_unknown_key_names_the_key_and_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key inner\.stpes .*valid keys: method, steps"):
        from_dict(Outer, {"inner": {"stpes": 3}})


def test_wrong_type_and_choices_and_range():
    with pytest.raises(ConfigError, match="name: expected str, got 3"):
        from_dict(Outer, {"name": 3})
    with pytest.raises(ConfigError, match=r"inner.method: expected one of \['euler', 'heun'\], got 'rk4'"):
        from_dict(Outer, {"inner": {"method": "rk4"}})
    with pytest.raises(ConfigError, match=r"lr: expected a value in \[0.0, 1.0\], got 2.0"):
        from_dict(Outer, {"lr": 2.0})
    with pytest.raises(ConfigError, match=r"inner.steps: expected a value in \[1, inf\], got 0"):
        from_dict(Outer, {"inner": {"steps": 0}})
    with pytest.raises(ConfigError, match="lr: expected a number"):
        from_dict(Outer, {"lr": float("nan")})


def test_validate_catches_bad_direct_construction():
    validate(Outer())
    with pytest.raises(ConfigError, match="inner.steps"):
        validate(Outer(inner=Inner(steps=-1)))


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of overrides"):
        load_config(Outer, bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Outer, empty) == Outer()
