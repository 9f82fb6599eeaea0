"""What every training recipe shares: the loop, distributed setup, checkpoints, EMA, schedules, logging.

A recipe (``wmgen.train.vae``, ``wmgen.train.flow``, ``wmgen.train.adapter``) builds its model and a
``loss_fn(step, micro, generator) -> (loss, metrics)`` and hands them to :class:`Trainer`, which owns:

- **Determinism.** Nothing draws from a global RNG: the examples of a step and every random number the loss
  needs come from generators seeded by ``(seed, step)`` (``step_generator``), the *global* batch is drawn
  whole and sliced per rank (``global_batch_indices`` / ``rank_slice``), and each example's random numbers
  come from its own generator (``example_generators``, sliced the same way). So a run under torchrun with P
  processes follows the same loss trajectory as one process on the same global batch, and ``--resume``
  continues bit-exactly on deterministic CPU kernels.
- **Distributed.** ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; :class:`Distributed` initialises gloo on
  CPU and NCCL on CUDA. ``parallel="ddp"`` wraps the model in DistributedDataParallel; ``"fsdp"`` shards
  every block and the root with FSDP2's ``fully_shard`` (large presets). Checkpoints hold full, unsharded
  tensors gathered with ``torch.distributed.checkpoint.state_dict`` so any world size can resume them.
- **Checkpoints.** ``<out>/checkpoints/step-XXXXXXXX/`` with ``model``, ``ema``, ``optimizer`` and ``rng``
  safetensors plus ``state.json`` (step, optimizer hyper-parameters, config). Written into a temporary
  directory and renamed, then ``latest.json`` is replaced atomically: a kill at any moment leaves the previous
  checkpoint intact. Nothing is ever unpickled.
- **Safety.** A non-finite loss or gradient norm stops the run with :class:`TrainingDiverged` naming the step
  and the last good checkpoint; nothing is written after it.
- **Logging.** ``<out>/metrics.jsonl`` (one JSON object per logged step or validation; on resume, lines
  after the resumed step are dropped so the log matches the weights) and a tqdm bar.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from wmgen.config import to_dict, validate

__all__ = [
    "LoopConfig",
    "Distributed",
    "EMA",
    "Trainer",
    "TrainingDiverged",
    "example_generators",
    "export_source",
    "global_batch_indices",
    "latest_checkpoint",
    "lr_at",
    "rank_slice",
    "read_metrics",
    "step_checkpoint",
    "step_generator",
]

CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------------------
# 1. config


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation and bookkeeping of one training run (shared by every recipe)."""

    steps: int = field(default=1000, metadata={"range": (1, None)})  # optimizer steps
    batch_size: int = field(default=8, metadata={"range": (1, None)})  # GLOBAL examples per optimizer step
    grad_accum: int = field(default=1, metadata={"range": (1, None)})  # micro-batches per step (per rank)
    lr: float = field(default=3e-4, metadata={"range": (0.0, 1.0)})  # peak AdamW learning rate
    min_lr_ratio: float = field(default=0.1, metadata={"range": (0.0, 1.0)})  # cosine floor, as a fraction of lr
    warmup_steps: int = field(default=100, metadata={"range": (0, None)})  # linear warmup from 0
    weight_decay: float = field(default=0.0, metadata={"range": (0.0, None)})  # AdamW decoupled decay
    betas: tuple[float, float] = field(default=(0.9, 0.99), metadata={"range": (0.0, 1.0)})  # AdamW betas
    grad_clip: float = field(default=1.0, metadata={"range": (0.0, None)})  # max global grad norm; 0: off
    ema_decay: float = field(default=0.999, metadata={"range": (0.0, 1.0)})  # EMA of weights; 0: no EMA
    seed: int = field(default=0, metadata={"range": (0, None)})  # batches, noise and init depend only on it
    log_every: int = field(default=10, metadata={"range": (1, None)})  # steps between metrics lines
    val_every: int = field(default=250, metadata={"range": (0, None)})  # steps between validations; 0: end only
    ckpt_every: int = field(default=250, metadata={"range": (1, None)})  # steps between checkpoints
    keep_checkpoints: int = field(default=2, metadata={"range": (1, None)})  # newest kept on disk
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when WORLD_SIZE > 1
    compile: bool = False  # torch.compile the model (GPU runs; slow to start on CPU)
    bf16: bool = True  # bf16 autocast on CUDA (parameters stay fp32); ignored on CPU
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        validate(self)


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the run stopped and kept its last good checkpoint."""


# ---------------------------------------------------------------------------------------------------------
# 2. determinism: per-step generators and global batches


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, stream): resumable without saved RNG state.

    The triple is hashed, so distinct triples never share a seed by arithmetic coincidence."""
    digest = hashlib.sha256(f"wmgen/{seed}/{step}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def example_generators(seed: int, step: int, batch_size: int) -> list[torch.Generator]:
    """One CPU generator per example of the global batch of ``step`` (list position = position in the batch).

    A loss that draws every example's random numbers (noise, times, crops, dropout) from that example's own
    generator gets the same numbers however the global batch is split over ranks and micro-batches: slice this
    list like the batch (``example_generators(...)[part]``). This is what makes a P-process or ``grad_accum``
    run follow the one-process trajectory; a generator shared by a micro-batch would not.
    """
    seeds = torch.randint(0, 2**62, (batch_size,), generator=step_generator(seed, step, stream=100))
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def global_batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> Tensor:
    """Example indices [batch_size] of the global batch of ``step``: epochs of a seeded permutation, in order."""
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_examples)
        perm = torch.randperm(num_examples, generator=step_generator(seed, epoch, stream=7))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out)


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous part of a global batch (the batch must split evenly)."""
    if batch_size % world_size:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the world size ({world_size})")
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)


def lr_at(step: int, config: LoopConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------------------
# 3. distributed


class Distributed:
    """The process group of this run: torchrun's environment, or a single process.

    Example::

        with Distributed() as d:   # gloo on CPU, NCCL on CUDA when WORLD_SIZE > 1
            loss = d.mean(loss)
    """

    def __init__(self, device: str | torch.device | None = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._owns_group = False

    def __enter__(self) -> Distributed:
        if self.world_size > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._owns_group = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: Tensor) -> Tensor:
        """Average of a tensor over ranks (identity for one process)."""
        if self.world_size == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# ---------------------------------------------------------------------------------------------------------
# 4. EMA


def _full(t: Tensor) -> Tensor:
    """A full (unsharded) tensor from an FSDP2 DTensor or a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    """Exponential moving average of a module's trainable parameters (shadow kept in fp32).

    ``decay`` is warmed up as min(decay, (1 + n) / (10 + n)) after n updates (the common TensorFlow/timm
    schedule), so early weights are not stuck near the random initialisation.
    """

    def __init__(self, named_params: Iterator[tuple[str, nn.Parameter]], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in named_params if p.requires_grad}

    @torch.no_grad()
    def update(self, named_params: Iterator[tuple[str, nn.Parameter]]) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in named_params:
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1 - d)

    def state_dict(self) -> dict[str, Tensor]:
        return {name: _full(t).contiguous() for name, t in self.shadow.items()}

    def load_full_state(self, tensors: dict[str, Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise ValueError(f"EMA checkpoint lacks {sorted(missing)[:5]}")
        for name, t in self.shadow.items():
            full = tensors[name].to(_full(t).device, torch.float32)
            if hasattr(t, "full_tensor"):  # DTensor: keep only this rank's shard
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, t.device_mesh, t.placements)
            t.copy_(full)
        self.updates = updates


# ---------------------------------------------------------------------------------------------------------
# 5. checkpoints (safetensors only)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch.distributed.checkpoint's full optimizer state dict -> (tensors, JSON) for safetensors."""
    tensors, scalars = {}, {}
    for fqn, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{fqn}::{name}"] = _full(value).detach().cpu().contiguous()
            else:
                scalars[f"{fqn}::{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        fqn, name = key.rsplit("::", 1)
        state.setdefault(fqn, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def step_checkpoint(out_dir: str | os.PathLike, step: int) -> Path:
    """The directory of a run's complete checkpoint of ``step``; ValueError listing the steps it has otherwise
    (``loop.keep_checkpoints`` prunes old ones)."""
    root = Path(out_dir) / CHECKPOINTS
    path = root / _checkpoint_name(step)
    if not (path / "state.json").is_file():
        have = sorted(int(c.name[5:]) for c in root.glob("step-*") if (c / "state.json").is_file())
        raise ValueError(f"step = {step}: {out_dir} has no complete checkpoint of that step (it has {have})")
    return path


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The directory of the newest complete checkpoint of a run, or None."""
    pointer = Path(out_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    path = Path(out_dir) / CHECKPOINTS / json.loads(pointer.read_text())["name"]
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def export_source(out_dir: str | os.PathLike, step: int | None = None) -> tuple[dict[str, Any], Path]:
    """What exporting a run's checkpoint reads: the run's config as the checkpoint saved it (a dict) and the
    weights file to export, its EMA weights (its current ones when the run kept no EMA). ``step``: which
    checkpoint (default: the newest); FileNotFoundError when the run holds none, ValueError for a missing step."""
    ckpt = latest_checkpoint(out_dir) if step is None else step_checkpoint(out_dir, step)
    if ckpt is None:
        raise FileNotFoundError(
            f"run = {str(out_dir)!r} holds no checkpoint ({Path(out_dir) / CHECKPOINTS} / {LATEST})"
        )
    config = json.loads((ckpt / "state.json").read_text())["config"]
    weights = ckpt / ("ema.safetensors" if (ckpt / "ema.safetensors").is_file() else "model.safetensors")
    return config, weights


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl as dicts."""
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------------------
# 6. the loop

LossFn = Callable[[int, int, torch.Generator], tuple[Tensor, dict[str, float]]]
# (step, micro-batch index, generator of (seed, step, micro)) -> (scalar loss, extra metrics). The generator is
# the same on every rank: per-example randomness that must not depend on the split comes from
# ``example_generators`` instead.


class Trainer:
    """Runs ``loop.steps`` optimizer steps of ``loss_fn`` on ``model``, resumably (module docstring).

    Example::

        trainer = Trainer(model, loop, out_dir, dist=d, config=recipe_config)
        trainer.fit(loss_fn, validate=lambda step: {"val_loss": ...}, export=lambda model, ema: ...)

    Args:
        model: the module whose trainable parameters are optimised (already on ``dist.device``); it is wrapped
            for DDP/FSDP here. Frozen parameters (``requires_grad=False``) are neither optimised nor saved.
        loop: optimisation settings.
        out_dir: run directory (checkpoints/, metrics.jsonl).
        dist: the process group.
        config: the recipe's full config (a dataclass), stored in every checkpoint and checked on resume.
        shard: for FSDP, the submodules to shard one by one before the root (e.g. the DiT blocks).
    """

    def __init__(
        self,
        model: nn.Module,
        loop: LoopConfig,
        out_dir: str | os.PathLike,
        *,
        dist: Distributed,
        config: Any,
        shard: list[nn.Module] | None = None,
    ):
        self.loop = loop
        self.out = Path(out_dir)
        self.dist = dist
        self.config = to_dict(config) if not isinstance(config, dict) else config
        self.module = model  # unwrapped, for state dicts and export
        parallel = loop.parallel
        if parallel == "auto":
            parallel = "ddp" if dist.world_size > 1 else "none"
        if parallel != "none" and dist.world_size == 1:
            parallel = "none"  # a single process needs no wrapper; same numbers
        self.parallel = parallel
        if parallel == "ddp":
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        elif parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for sub in shard or []:
                fully_shard(sub)
            fully_shard(model)
        self.model = torch.compile(model) if loop.compile else model
        per_rank = rank_slice(loop.batch_size, dist.rank, dist.world_size)
        local = per_rank.stop - per_rank.start
        if local % loop.grad_accum:
            raise ValueError(
                f"batch_size / world size = {local} examples per rank must be divisible by grad_accum "
                f"({loop.grad_accum})"
            )
        self._first, self._micro_size = per_rank.start, local // loop.grad_accum
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters (all requires_grad=False)")
        # The fused kernel updates each tensor in one pass (foreach makes about a dozen): 3x faster on CPU.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.params)  # trainable: floating point
        self.optimizer = torch.optim.AdamW(
            self.params, lr=loop.lr, betas=loop.betas, weight_decay=loop.weight_decay, fused=fused
        )
        self.ema = EMA(self._named_trainable(), loop.ema_decay) if loop.ema_decay > 0 else None
        self.step = 0

    def part(self, micro: int) -> slice:
        """The positions in the step's global batch held by micro-batch ``micro`` of this rank: slice the
        batch's example indices and ``example_generators`` with it."""
        start = self._first + micro * self._micro_size
        return slice(start, start + self._micro_size)

    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)

    def autocast(self) -> Any:
        """bf16 autocast on CUDA when ``loop.bf16``; a no-op on CPU."""
        if self.dist.device.type == "cuda" and self.loop.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # --- state ---------------------------------------------------------------------------------------------

    def _model_state(self) -> dict[str, Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.module, options=opts)
        trainable = {n for n, _ in self._named_trainable()}
        return {k: v.contiguous() for k, v in state.items() if k in trainable}

    def _optimizer_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.module, self.optimizer, options=opts)

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of ``self.step`` (all ranks take part in gathering; rank 0 writes)."""
        model = self._model_state()
        optim = self._optimizer_state()  # every rank takes part; with cpu_offload only rank 0 receives it ({})
        ema = self.ema.state_dict() if self.ema is not None else {}
        root = self.out / CHECKPOINTS
        final = root / _checkpoint_name(self.step)
        if self.dist.is_main:
            tmp = root / f".tmp-{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            optim_tensors, optim_meta = _flatten_optimizer(optim)
            save_file(model, tmp / "model.safetensors")
            save_file(optim_tensors, tmp / "optimizer.safetensors")
            if ema:
                save_file({k: v.cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_file(rng, tmp / "rng.safetensors")
            state = {
                "step": self.step,
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "optimizer": optim_meta,
                "config": self.config,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_json_atomic(root / LATEST, {"name": final.name, "step": self.step})
            kept = sorted(p for p in root.glob("step-*") if p.is_dir())
            for old in kept[: -self.loop.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, EMA and RNG from a checkpoint directory (full tensors, any world size)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = json.loads((path / "state.json").read_text())
        ours = {k: v for k, v in self.config.items() if k != "out"}  # a run directory may be moved
        theirs = {k: v for k, v in state["config"].items() if k != "out"}
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        allowed = {"loop"}  # loop settings (e.g. more steps) may change on resume
        if set(changed) - allowed:
            raise ValueError(
                f"cannot resume from {path}: its config differs in {sorted(set(changed) - allowed)}; "
                "resume with the same config (only `loop` settings may change)"
            )
        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self.module, load_file(path / "model.safetensors"), options=opts)
        optim = _unflatten_optimizer(load_file(path / "optimizer.safetensors"), state["optimizer"])
        set_optimizer_state_dict(self.module, self.optimizer, optim, options=opts)
        if self.ema is not None:
            self.ema.load_full_state(load_file(path / "ema.safetensors"), state["ema_updates"])
        rng = load_file(path / "rng.safetensors")
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        self.step = int(state["step"])

    def resume(self) -> bool:
        """Load the newest checkpoint of ``out_dir`` if there is one; drop metric lines after it."""
        path = latest_checkpoint(self.out)
        if path is None:
            return False
        self.load_checkpoint(path)
        if self.dist.is_main:
            metrics = self.out / METRICS
            if metrics.exists():
                kept = [m for m in read_metrics(self.out) if m["step"] <= self.step]
                tmp = metrics.with_name(METRICS + ".tmp")
                tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
                os.replace(tmp, metrics)
        return True

    def log(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    @contextmanager
    def _no_sync(self, last: bool) -> Iterator[None]:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if self.parallel == "ddp" and not last:
            with self.model.no_sync():
                yield
        else:
            yield

    # --- fit -----------------------------------------------------------------------------------------------

    def fit(
        self,
        loss_fn: LossFn,
        *,
        validate: Callable[[int], dict[str, float]] | None = None,
        export: Callable[[], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train from ``self.step`` to ``loop.steps``; returns the logged training records of this call.

        ``loss_fn`` is called ``grad_accum`` times per step with the generator of this rank's micro-batch;
        ``validate(step)`` runs every ``val_every`` steps and at the end (rank 0 logs its dict);
        ``export()`` runs on every rank after the final checkpoint (rank 0 writes).
        """
        loop = self.loop
        records = []
        bar = tqdm(
            total=loop.steps, initial=self.step, disable=not (loop.progress and self.dist.is_main),
            desc="train", dynamic_ncols=True,
        )
        last_good = latest_checkpoint(self.out)
        tic = time.perf_counter()
        while self.step < loop.steps:
            step = self.step
            lr = lr_at(step, loop)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.dist.device)
            extras: dict[str, float] = {}
            for micro in range(loop.grad_accum):
                gen = step_generator(loop.seed, step, stream=1 + micro)
                with self._no_sync(micro == loop.grad_accum - 1):
                    with self.autocast():
                        loss, extra = loss_fn(step, micro, gen)
                    (loss / loop.grad_accum).backward()
                total += loss.detach().float() / loop.grad_accum
                for k, v in extra.items():
                    extras[k] = extras.get(k, 0.0) + float(v) / loop.grad_accum
            if loop.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(self.params, loop.grad_clip)
            else:
                grad_norm = torch.linalg.vector_norm(torch.stack([_full(p.grad).norm() for p in self.params]))
            grad_norm = _full(grad_norm) if isinstance(grad_norm, Tensor) else torch.tensor(grad_norm)
            total = self.dist.mean(total)
            if not (torch.isfinite(total) and torch.isfinite(grad_norm)):
                bar.close()
                where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                raise TrainingDiverged(
                    f"non-finite {'loss' if not torch.isfinite(total) else 'gradient norm'} at step {step + 1} "
                    f"(loss {total.item()}, grad norm {grad_norm.item()}); stopped before updating the weights; "
                    f"{where}. Lower loop.lr or raise loop.warmup_steps, then --resume."
                )
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self._named_trainable())
            self.step += 1
            bar.update(1)
            if self.step % loop.log_every == 0 or self.step == loop.steps:
                record = {
                    "step": self.step, "loss": total.item(), "lr": lr, "grad_norm": grad_norm.item(),
                    "time": round(time.perf_counter() - tic, 3),
                    **{k: self.dist.mean(torch.tensor(v)).item() for k, v in extras.items()},
                }
                self.log(record)
                records.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if validate is not None and (
                (loop.val_every and self.step % loop.val_every == 0) or self.step == loop.steps
            ):
                result = validate(self.step)
                self.log({"step": self.step, **result})
            if self.step % loop.ckpt_every == 0 or self.step == loop.steps:
                last_good = self.save_checkpoint()
        bar.close()
        if export is not None:
            export()
        return records

    def ema_state(self) -> dict[str, Tensor]:
        """Full trainable weights to export: the EMA when kept, else the current weights."""
        return self.ema.state_dict() if self.ema is not None else self._model_state()
