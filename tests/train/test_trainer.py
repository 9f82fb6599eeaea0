"""wmgen.train.common: schedules, global batches, EMA, the Trainer's checkpoints (atomic, resumable, safetensors
only), divergence detection and metrics; and the refusal of pickle-only model directories.

The Trainer runs here on a 4-parameter linear regression (plus a frozen parameter), so every test takes
milliseconds; the recipes on real models are in test_train_recipes.py.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from wmgen.models.dit import DiTConfig, VideoDiT
from wmgen.models.vae import CausalVAE, VAEConfig
from wmgen.pipeline import WorldModel
from wmgen.train import common
from wmgen.train.common import (
    EMA,
    Distributed,
    LoopConfig,
    Trainer,
    TrainingDiverged,
    example_generators,
    global_batch_indices,
    latest_checkpoint,
    lr_at,
    rank_slice,
    read_metrics,
)

N = 32  # regression examples


@pytest.fixture(scope="module", autouse=True)
def cpu_only():
    """The Trainer picks CUDA when it is available; these tests compare CPU runs bit for bit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield


# --- schedules and batches ---------------------------------------------------------------------------------


def test_lr_warmup_then_cosine_to_the_floor():
    loop = LoopConfig(steps=110, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, loop) == pytest.approx(1e-4)  # (step + 1) / warmup: the first step already moves
    assert lr_at(4, loop) == pytest.approx(5e-4)
    assert lr_at(9, loop) == pytest.approx(1e-3)  # warmup ends at the peak
    assert lr_at(10, loop) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, loop) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: mean of peak and floor
    assert lr_at(110, loop) == pytest.approx(1e-4)  # floor at `steps`
    assert lr_at(500, loop) == pytest.approx(1e-4)  # and after it
    after = [lr_at(s, loop) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert lr_at(0, LoopConfig(steps=5, lr=2e-3, warmup_steps=0)) == pytest.approx(2e-3)  # no warmup


def test_global_batches_walk_seeded_epoch_permutations():
    batches = [global_batch_indices(10, 4, step, seed=3) for step in range(5)]
    assert all(b.shape == (4,) for b in batches)
    flat = torch.cat(batches).tolist()  # 20 indices = two epochs
    epoch0, epoch1 = flat[:10], flat[10:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))  # every example once per epoch
    assert epoch0 != epoch1 and epoch0 != list(range(10))  # reshuffled each epoch, not in order
    assert batches[2].tolist() == epoch0[8:] + epoch1[:2]  # step 2 crosses the epoch boundary
    assert torch.equal(global_batch_indices(10, 4, 2, seed=3), batches[2])  # a pure function of its inputs
    assert not torch.equal(torch.cat([global_batch_indices(10, 4, s, seed=4) for s in range(3)]),
                           torch.cat(batches[:3]))  # fmt: skip
    big = global_batch_indices(3, 7, 0, seed=0).tolist()  # a batch larger than the dataset spans epochs
    assert sorted(big[:3]) == sorted(big[3:6]) == [0, 1, 2] and len(big) == 7
    with pytest.raises(ValueError, match="num_examples"):
        global_batch_indices(0, 4, 0, seed=0)


def test_rank_slices_split_the_batch_evenly():
    parts = [rank_slice(12, r, 3) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 12)]
    assert rank_slice(5, 0, 1) == slice(0, 5)
    with pytest.raises(ValueError, match=r"batch_size \(6\).*world size \(4\)"):
        rank_slice(6, 0, 4)


def test_example_generators_depend_on_position_not_split():
    def draws(gens):
        return [torch.randn(3, generator=g) for g in gens]

    whole = draws(example_generators(0, 5, 8))
    halves = draws(example_generators(0, 5, 8)[:4]) + draws(example_generators(0, 5, 8)[4:])
    assert all(torch.equal(a, b) for a, b in zip(whole, halves, strict=True))
    assert len({tuple(d.tolist()) for d in whole}) == 8  # independent streams
    assert not torch.equal(draws(example_generators(0, 6, 8))[0], whole[0])  # another step
    assert not torch.equal(draws(example_generators(1, 5, 8))[0], whole[0])  # another seed


def test_ema_math_on_one_parameter():
    p = nn.Parameter(torch.zeros(()))
    frozen = nn.Parameter(torch.zeros(()), requires_grad=False)
    ema = EMA(iter([("p", p), ("frozen", frozen)]), decay=0.9)
    assert set(ema.shadow) == {"p"}  # frozen parameters are not averaged
    with torch.no_grad():
        p.fill_(1.0)
    expected = 0.0
    for n in range(1, 40):
        ema.update(iter([("p", p)]))
        d = min(0.9, (1 + n) / (10 + n))  # warmed-up decay
        expected = d * expected + (1 - d) * 1.0
        assert ema.shadow["p"].item() == pytest.approx(expected, abs=1e-6)
    assert ema.updates == 39
    for _ in range(200):  # long after the warmup the decay is the configured one
        ema.update(iter([("p", p)]))
    with torch.no_grad():
        p.fill_(2.0)
    before = ema.shadow["p"].item()
    ema.update(iter([("p", p)]))
    assert ema.shadow["p"].item() == pytest.approx(0.9 * before + 0.1 * 2.0, abs=1e-6)
    restored = EMA(iter([("p", p)]), decay=0.9)
    restored.load_full_state(ema.state_dict(), ema.updates)
    assert restored.shadow["p"].item() == ema.shadow["p"].item() and restored.updates == ema.updates
    with pytest.raises(ValueError, match="lacks"):
        restored.load_full_state({}, 0)


# --- the Trainer on a toy regression ----------------------------------------------------------------------


@dataclass(frozen=True)
class ToyConfig:
    width: int = 3
    noise: float = 0.1
    loop: LoopConfig = field(default_factory=LoopConfig)


class Toy(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.lin = nn.Linear(width, 1)
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)  # frozen: not optimised, not saved
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.lin.weight.copy_(torch.randn(1, width, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x) * self.scale


X = torch.randn(N, 3, generator=torch.Generator().manual_seed(1))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def toy_loop(**kw) -> LoopConfig:
    base = dict(steps=6, batch_size=4, lr=0.2, warmup_steps=1, log_every=1, val_every=0, ckpt_every=2,
                ema_decay=0.9, progress=False)  # fmt: skip
    return LoopConfig(**{**base, **kw})


def make_trainer(out: Path, *, config: ToyConfig | None = None, **loop) -> Trainer:
    config = config or ToyConfig(loop=toy_loop(**loop))
    return Trainer(Toy(config.width), config.loop, out, dist=Distributed(), config=config)


def toy_loss(trainer: Trainer, *, nan_at: int | None = None, inf_grad_at: int | None = None, stop_at=None):
    """A loss over the step's global batch with per-example noise (every random number the loss needs)."""
    loop = trainer.loop

    def loss_fn(step, micro, gen):
        if step == stop_at:
            raise KeyboardInterrupt  # stands for a kill between checkpoints
        idx = global_batch_indices(N, loop.batch_size, step, loop.seed)
        noise = torch.stack([torch.randn(1, generator=g) for g in example_generators(loop.seed, step, len(idx))])
        pred = trainer.model(X[idx])
        loss = (pred - Y[idx] - trainer.config["noise"] * noise).square().mean()
        if step == nan_at:
            loss = loss * float("nan")
        if step == inf_grad_at:
            loss = loss + torch.sqrt(trainer.module.lin.bias * 0).sum()  # finite value, infinite gradient
        return loss, {"abs_err": (pred - Y[idx]).abs().mean().item()}

    return loss_fn


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_fit_writes_checkpoints_metrics_and_keeps_the_newest(tmp_path):
    trainer = make_trainer(tmp_path, keep_checkpoints=2, val_every=3)
    with torch.no_grad():
        before = (trainer.module(X) - Y).square().mean()
    exported = []
    records = trainer.fit(toy_loss(trainer), validate=lambda step: {"val": float(step)},
                          export=lambda: exported.append(trainer.step))  # fmt: skip
    assert trainer.step == 6 and exported == [6]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    with torch.no_grad():
        assert (trainer.module(X) - Y).square().mean() < 0.8 * before  # it learns
    assert all({"loss", "lr", "grad_norm", "time", "abs_err"} <= set(r) for r in records)
    assert [r["lr"] for r in records] == [lr_at(s, trainer.loop) for s in range(6)]
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics if "val" in m] == [3, 6]  # val_every and the end
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000004", "step-00000006"]
    assert json.loads((root / "latest.json").read_text()) == {"name": "step-00000006", "step": 6}
    ckpt = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json",
    ]  # fmt: skip
    model = load_file(ckpt / "model.safetensors")
    assert set(model) == {"lin.weight", "lin.bias"}  # the frozen parameter is not saved
    assert torch.equal(model["lin.weight"], trainer.module.lin.weight.detach())
    ema = load_file(ckpt / "ema.safetensors")
    assert torch.equal(ema["lin.weight"], trainer.ema.shadow["lin.weight"])
    assert not torch.equal(ema["lin.weight"], model["lin.weight"])
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 6 and state["ema_updates"] == 6 and state["config"]["width"] == 3
    optim = load_file(ckpt / "optimizer.safetensors")
    assert {"exp_avg", "exp_avg_sq", "step"} <= {k.rsplit("::", 1)[1] for k in optim}
    assert torch.equal(trainer.ema_state()["lin.weight"], ema["lin.weight"])
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_the_optimizer_is_fused_adamw_with_the_loop_settings(tmp_path):
    trainer = make_trainer(tmp_path, lr=0.05, weight_decay=0.1, betas=(0.8, 0.95))
    assert trainer.optimizer.defaults["fused"] is True  # one pass per tensor on CPU (foreach: ~3x slower)
    reference_params = [p.detach().clone().requires_grad_(True) for p in trainer.params]
    reference = torch.optim.AdamW(reference_params, lr=0.05, betas=(0.8, 0.95), weight_decay=0.1, foreach=False)
    for step in range(3):
        grads = [torch.randn_like(p, generator=torch.Generator().manual_seed(step)) for p in trainer.params]
        for p, q, g in zip(trainer.params, reference_params, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        trainer.optimizer.step()
        reference.step()
    for p, q in zip(trainer.params, reference_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_interrupted_then_resumed_equals_uninterrupted_and_truncates_metrics(tmp_path):
    ref = make_trainer(tmp_path / "ref", steps=8, ckpt_every=3, val_every=3)
    ref.fit(toy_loss(ref), validate=lambda step: {"val": float(step)})

    run = tmp_path / "run"
    first = make_trainer(run, steps=8, ckpt_every=3, val_every=3)
    with pytest.raises(KeyboardInterrupt):
        first.fit(toy_loss(first, stop_at=5), validate=lambda step: {"val": float(step)})
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 3, 4, 5]  # step 3 has its val line
    assert latest_checkpoint(run).name == "step-00000003"

    second = make_trainer(run, steps=8, ckpt_every=3, val_every=3)
    assert second.resume() and second.step == 3
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 3]  # lines after the checkpoint are dropped
    second.fit(toy_loss(second), validate=lambda step: {"val": float(step)})
    strip = [{k: v for k, v in m.items() if k != "time"} for m in read_metrics(run)]
    assert strip == [{k: v for k, v in m.items() if k != "time"} for m in read_metrics(tmp_path / "ref")]
    for name in ("model", "ema", "optimizer"):
        a = load_file(latest_checkpoint(run) / f"{name}.safetensors")
        b = load_file(latest_checkpoint(tmp_path / "ref") / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert make_trainer(tmp_path / "fresh").resume() is False  # nothing to resume


def test_resume_may_change_loop_settings_but_not_the_recipe(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.fit(toy_loss(trainer))
    longer = make_trainer(tmp_path, steps=4)  # more steps: allowed
    assert longer.resume() and longer.step == 2
    longer.fit(toy_loss(longer))
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4]
    changed = make_trainer(tmp_path, config=ToyConfig(noise=0.2, loop=toy_loop(steps=4)))
    with pytest.raises(ValueError, match=r"differs in \['noise'\]"):
        changed.resume()


def test_a_failed_save_leaves_the_previous_checkpoint_current(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=6, ckpt_every=2, keep_checkpoints=5)
    real = common.save_file

    def failing(tensors, path, *args, **kwargs):
        if "step-00000004" in str(path) and Path(path).name == "ema.safetensors":
            raise OSError("disk full")  # in the middle of writing checkpoint 4
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(common, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(toy_loss(trainer))
    root = tmp_path / "checkpoints"
    assert json.loads((root / "latest.json").read_text())["name"] == "step-00000002"
    assert not (root / "step-00000004").exists()  # only its temporary directory
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    good = digest(root / "step-00000002")
    monkeypatch.setattr(common, "save_file", real)
    again = make_trainer(tmp_path, steps=6, ckpt_every=2, keep_checkpoints=5)
    assert again.resume() and again.step == 2
    again.fit(toy_loss(again))
    assert digest(root / "step-00000002") == good
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000004", "step-00000006"]
    assert not list(root.glob(".tmp-*"))  # the retried save replaced the leftover


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, kind):
    trainer = make_trainer(tmp_path, steps=8, ckpt_every=2)
    bad = {"nan_at": 5} if kind == "loss" else {"inf_grad_at": 5}
    with pytest.raises(TrainingDiverged) as err:
        trainer.fit(toy_loss(trainer, **bad))
    message = str(err.value)
    good = tmp_path / "checkpoints" / "step-00000004"
    assert f"non-finite {kind} at step 6" in message and str(good) in message  # 1-based, as in metrics.jsonl
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000004"]
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]  # nothing logged for the bad step
    assert trainer.step == 5
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())  # not updated by the bad step
    # the checkpoint on disk is the one an uninterrupted run writes at step 4
    ref = make_trainer(tmp_path / "ref", steps=8, ckpt_every=2)
    with pytest.raises(KeyboardInterrupt):
        ref.fit(toy_loss(ref, stop_at=5))
    skip = {"state.json": "", "rng.safetensors": ""}  # wall-clock time; the process's global RNG state
    assert digest(good) | skip == digest(tmp_path / "ref" / "checkpoints" / "step-00000004") | skip
    # before any checkpoint the message says so
    early = make_trainer(tmp_path / "early", steps=8, ckpt_every=4)
    with pytest.raises(TrainingDiverged, match="at step 2 .*no checkpoint was written yet"):
        early.fit(toy_loss(early, nan_at=1))


def test_grad_accum_and_config_errors(tmp_path):
    ref = make_trainer(tmp_path / "a", steps=3)
    ref.fit(toy_loss(ref))
    calls = []
    accum = make_trainer(tmp_path / "b", steps=3, grad_accum=2)
    inner = toy_loss(accum)

    def halves(step, micro, gen):
        calls.append((step, micro))
        loss, extra = inner(step, micro, gen)
        return loss, extra  # both micro-batches see the whole batch: the mean equals the one-micro loss

    accum.fit(halves)
    assert calls == [(s, m) for s in range(3) for m in range(2)]
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["loss"] for m in b] == pytest.approx([m["loss"] for m in a], rel=1e-6)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(nn.Linear(2, 1).requires_grad_(False), toy_loop(), tmp_path, dist=Distributed(), config={})
    with pytest.raises(ValueError, match="steps"):
        LoopConfig(steps=0)
    with pytest.raises(ValueError, match="parallel"):
        LoopConfig(parallel="zero")


# --- nothing is unpickled ----------------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle a file")

    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(target, name, refuse)


def pickled_state(path: Path, module: nn.Module) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)


def test_pickle_only_model_directories_are_refused(tmp_path, no_unpickling):
    vae = CausalVAE(VAEConfig(z_dim=4, base_dim=8, dim_mult=(1, 2), num_res_blocks=1, temporal_downsample=(True,)))
    dit = VideoDiT(DiTConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64, text_dim=16, in_channels=4,
                             out_channels=4))  # fmt: skip
    pickled_state(tmp_path / "wm" / "model.pt", dit)
    pickled_state(tmp_path / "vae" / "pytorch_model.bin", vae)
    pickled_state(tmp_path / "dit" / "pytorch_model.bin", dit)
    (tmp_path / "dit" / "config.json").write_text(json.dumps({"_class_name": "VideoDiT"}))
    with pytest.raises(ValueError, match=r"pickle.*model\.pt.*never unpickles"):
        WorldModel.from_pretrained(tmp_path / "wm")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found: expected a CausalVAE\.save_pretrained"):
        CausalVAE.from_pretrained(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found: expected a VideoDiT\.save_pre"):
        VideoDiT.from_pretrained(tmp_path / "dit")
    with pytest.raises(AssertionError, match="unpickle"):  # the guard is active
        torch.load(tmp_path / "wm" / "model.pt")


def test_a_pickle_in_place_of_a_checkpoint_tensor_file_is_not_unpickled(tmp_path, no_unpickling):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.fit(toy_loss(trainer))
    ckpt = latest_checkpoint(tmp_path)
    with open(ckpt / "model.safetensors", "wb") as f:
        pickle.dump({"lin.weight": [[0.0, 0.0, 0.0]]}, f)  # pickle.dump is allowed: only loading is refused
    with pytest.raises(SafetensorError):
        make_trainer(tmp_path, steps=2).resume()


def test_distributed_defaults_to_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with Distributed(device="cpu") as d:
        assert (d.world_size, d.rank, d.is_main) == (1, 0, True)
        x = torch.tensor([1.0, 2.0])
        assert d.mean(x) is x
        d.barrier()
