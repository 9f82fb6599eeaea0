"""Checkpoints: a directory with ``config.json`` and ``model.safetensors`` (DESIGN.md §2).

Written atomically (a temporary sibling directory replaces the target, so a failed save never leaves a
half-written checkpoint) and read with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wmgen.config import from_dict, to_dict

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "save_pretrained", "load_pretrained"]

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
M = TypeVar("M", bound=nn.Module)


def save_pretrained(module: nn.Module, config: Any, directory: str | os.PathLike) -> Path:
    """Write ``config`` (a config dataclass) and ``module``'s state dict into ``directory``, atomically.

    An existing ``directory`` is replaced only if it holds nothing but these two files.
    """
    target = Path(directory)
    if target.exists():
        extra = sorted(set(os.listdir(target)) - {CONFIG_NAME, WEIGHTS_NAME}) if target.is_dir() else [""]
        if extra:
            raise FileExistsError(
                f"{target} exists and holds other things than {CONFIG_NAME} / {WEIGHTS_NAME} "
                f"({extra[:5]}); refusing to replace it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        meta = {"_class_name": type(module).__name__, **to_dict(config)}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_pretrained(
    cls: type[M], config_cls: type, directory: str | os.PathLike, *, device: torch.device | str = "cpu"
) -> M:
    """Build ``cls(config)`` on the meta device and assign the weights of a ``save_pretrained`` folder."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: expected a {cls.__name__}.save_pretrained folder")
    meta = json.loads((directory / CONFIG_NAME).read_text())
    class_name = meta.pop("_class_name", None)
    if class_name != cls.__name__:
        raise ValueError(f"{directory / CONFIG_NAME} describes a {class_name!r}, not a {cls.__name__}")
    config = from_dict(config_cls, meta)
    with torch.device("meta"):
        model = cls(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME), device=str(device)), assign=True)
    return model
