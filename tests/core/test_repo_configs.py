"""The configuration files shipped in configs/ parse into their dataclasses (a typo or a renamed field in a
recipe would otherwise surface only when someone runs it)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from physics.worlds import WorldConfig
from wmgen.config import load_config
from wmgen.models.dit import DIT_PRESETS
from wmgen.models.vae import VAE_PRESETS
from wmgen.train.adapter import AdapterTrainConfig
from wmgen.train.flow import FlowTrainConfig
from wmgen.train.vae import VAETrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SECTIONS = {"vae": VAETrainConfig, "flow": FlowTrainConfig, "adapter": AdapterTrainConfig}


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_configs_parse(path):
    assert isinstance(load_config(WorldConfig, path), WorldConfig)


def test_tiny_recipe_sections_parse():
    path = CONFIGS / "tiny.yaml"
    sections = yaml.safe_load(path.read_text())
    assert {"vae", "flow", "adapter_tracks", "adapter_depth"} <= set(sections)
    for section in sections:
        cls = SECTIONS[section.split("_")[0]]
        assert isinstance(load_config(cls, path, section=section), cls), section
    flow = load_config(FlowTrainConfig, path, section="flow")
    assert (flow.image_condition, flow.target) == ("tokens", "latents")
    # lessons measured in BENCHMARKS.md "Tiny world model": a DiT token must have room for its patch's latent
    # values (1x4x4 patches of 32 channels in 256 dimensions starved the flow)
    vae = load_config(VAETrainConfig, path, section="vae")
    dit, z_dim = DIT_PRESETS[flow.preset], VAE_PRESETS[vae.preset].z_dim
    assert math.prod(dit.patch) * z_dim <= dit.dim, (dit.patch, z_dim, dit.dim)
