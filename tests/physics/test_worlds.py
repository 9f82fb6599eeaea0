"""physics.worlds: simulated clips, the sharded on-disk format (determinism, resume, checksums), the reader,
the YAML configs and the preview."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from physics import worlds as W
from physics.mpm import MPMConfig
from physics.rigid import RigidConfig
from physics.scenes import SceneConfig

ROOT = Path(__file__).resolve().parents[2]


def tiny(kind: str = "rigid", **kw) -> W.WorldConfig:
    """A world small enough to simulate a handful of clips in a second or two."""
    # soft MPM materials on a coarse grid keep the CFL substep near the 4 ms cap (~20 substeps per frame)
    base = dict(
        kind=kind,
        resolution=16,
        frames=5,
        num_tracks=8,
        rigid_particles_per_object=24,
        mpm_particles=96,
        batch_size=4,
        mpm_batch_size=2,
        supersample=1,
        scene=SceneConfig(max_objects=2, youngs_modulus=(1e3, 3e3)),
        mpm=MPMConfig(grid_res=16, domain_origin=(-0.5, -0.5, -0.2), max_dt=4e-3),
        rigid=RigidConfig(substeps=4),
    )
    return W.WorldConfig(**{**base, **kw})


def files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (except the lock) by relative name."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted rigid dataset: 7 clips in shards of 2 (the last shard holds 1)."""
    out = tmp_path_factory.mktemp("ref")
    return W.generate_dataset(tiny(), out, 7, shard_size=2, seed=3, progress=False)


# ------------------------------------------------------------------------------------------- simulation


@pytest.mark.parametrize("kind", ["rigid", "mpm"])
def test_simulated_clip_shapes_and_ground_truth(kind):
    cfg = tiny(
        kind, scene=SceneConfig(min_objects=2, max_objects=2, drag_probability=1.0, youngs_modulus=(1e3, 3e3))
    )
    scenes = [W.sample_world_scene(cfg, 0, i) for i in range(2)]
    clips = W.simulate_batch(scenes, cfg)
    T, H, N = cfg.frames, cfg.resolution, cfg.num_tracks
    for scene, clip in zip(scenes, clips, strict=True):
        assert clip.scene is scene and clip.caption.startswith(("a ", "an "))
        assert clip.rgb.shape == (T, H, H, 3) and clip.rgb.dtype == torch.uint8
        assert clip.depth.shape == (T, H, H) and bool((clip.depth >= 0).all())
        assert clip.mask.dtype == torch.int8 and set(clip.mask.unique().tolist()) <= {-1, 0, 1}
        assert bool((clip.mask >= 0).any())  # the objects are in view
        assert (
            clip.tracks.shape == (T, N, 2) and clip.visible.shape == (T, N) and clip.points.shape == (T, N, 3)
        )
        assert clip.visible.dtype == torch.bool and bool(clip.visible.any())
        # tracks are the projections of the stored 3D points
        from physics.camera import project

        pix, depth = project(clip.points, clip.K, clip.E)
        assert torch.allclose(pix, clip.tracks, atol=1e-3) and bool((depth > 0).all())
        # visible tracks land on their own object's pixels (1-pixel tolerance for silhouettes)
        t, n = torch.nonzero(clip.visible, as_tuple=True)
        x = clip.tracks[t, n, 0].round().long().clamp(0, H - 1)
        y = clip.tracks[t, n, 1].round().long().clamp(0, H - 1)
        hits = (clip.mask[t, y, x] == clip.object_ids[n].to(torch.int8)).float().mean()
        assert hits > 0.8
        assert clip.params["objects"][0]["material"] in ("rigid", "elastic", "plasticine", "sand")
    again = W.simulate_batch(scenes, cfg)
    for a, b in zip(clips, again, strict=True):  # deterministic
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.points, b.points)
    # the drag pushes its object along the force, compared with the same scene left alone
    free = W.simulate_batch([dataclasses.replace(s, drags=()) for s in scenes], cfg)
    for scene, pulled, alone in zip(scenes, clips, free, strict=True):
        (drag,) = scene.drags
        own = pulled.object_ids == drag.object_index
        shift = pulled.points[-1, own].mean(0) - alone.points[-1, own].mean(0)  # (3,) metres
        assert float(shift @ torch.tensor(drag.force)) > 0


def test_config_validation():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        W.WorldConfig(frames=16)
    with pytest.raises(ValueError, match="num_tracks"):
        W.WorldConfig(num_tracks=1000, rigid_particles_per_object=100)
    with pytest.raises(ValueError, match="num_tracks"):
        W.WorldConfig(kind="mpm", num_tracks=300, mpm_particles=200)


@pytest.mark.parametrize("name", ["rigid", "mpm", "mixed"])
def test_yaml_configs_load(name):
    from wmgen.config import load_config

    cfg = load_config(W.WorldConfig, ROOT / "configs" / "data" / f"{name}.yaml")
    assert cfg.kind == name and cfg.resolution == 64 and cfg.frames == 17
    if name != "rigid":
        assert set(cfg.scene.materials) == {"rigid", "elastic", "plasticine", "sand"}


# ------------------------------------------------------------------------------------------ on-disk format


def test_same_seed_same_bytes_and_reader(reference, tmp_path):
    again = W.generate_dataset(tiny(), tmp_path / "again", 7, shard_size=2, seed=3, progress=False)
    assert files(again) == files(reference)
    index = json.loads((reference / "index.json").read_text())
    assert index["complete"] and [s["count"] for s in index["shards"]] == [2, 2, 2, 1]
    other = W.generate_dataset(tiny(), tmp_path / "other", 2, shard_size=2, seed=4, progress=False)
    assert files(other)["shard-00000/rgb.npy"] != files(reference)["shard-00000/rgb.npy"]

    ds = W.WorldDataset(reference)
    assert len(ds) == 7 and ds.complete
    T, H, N = 5, 16, 8
    for i in (0, 3, 6, -1):
        item = ds[i]
        assert item["video"].shape == (3, T, H, H) and item["video"].dtype == torch.float32
        assert float(item["video"].min()) >= -1.0 and float(item["video"].max()) <= 1.0
        assert item["depth"].shape == (T, H, H) and item["depth"].dtype == torch.float32
        assert item["mask"].shape == (T, H, H) and item["mask"].dtype == torch.int64
        assert item["tracks"].shape == (T, N, 2) and item["visible"].dtype == torch.bool
        assert item["points"].shape == (T, N, 3) and item["object_ids"].shape == (N,)
        assert item["K"].shape == (3, 3) and item["E"].shape == (4, 4)
        assert isinstance(item["caption"], str) and item["caption"] and "objects" in item["params"]
    # random access returns exactly what simulating that clip's shard (clips 4 and 5) gives
    scene = ds.scene(5)
    assert scene == W.sample_world_scene(tiny(), 3, 5)
    clip = W.simulate_batch([ds.scene(4), scene], tiny())[1]
    assert torch.equal(ds[5]["video"], clip.rgb.permute(3, 0, 1, 2).float() / 127.5 - 1)
    assert torch.equal(ds[5]["tracks"], clip.tracks) and ds[5]["caption"] == clip.caption
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=W.WorldDataset.collate, num_workers=1)
    batch = next(iter(loader))  # the dataset pickles into a worker process and reopens its memory maps
    assert batch["video"].shape == (3, 3, T, H, H) and len(batch["caption"]) == len(batch["params"]) == 3
    assert torch.equal(batch["tracks"][2], ds[2]["tracks"]) and batch["index"].tolist() == [0, 1, 2]
    with pytest.raises(IndexError):
        ds[7]


def test_parallel_workers_give_the_same_bytes(reference, tmp_path):
    out = W.generate_dataset(tiny(), tmp_path / "par", 7, shard_size=2, seed=3, workers=2, progress=False)
    assert files(out) == files(reference)


def test_resume_after_failure_matches_uninterrupted_run(reference, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = W._build_shard
    calls = {"n": 0}

    def dies_on_third_shard(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(W, "_build_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        W.generate_dataset(tiny(), out, 7, shard_size=2, seed=3, progress=False)
    monkeypatch.setattr(W, "_build_shard", real)
    partial = W.WorldDataset(out)
    assert len(partial) == 4 and not partial.complete
    # debris of a kill at the worst moments: a half-built temp shard, a renamed but uncommitted shard,
    # and clip lines appended to clips.jsonl before index.json was replaced
    (out / ".tmp-shard-00002-999").mkdir()
    (out / ".tmp-shard-00002-999" / "rgb.npy").write_bytes(b"half")
    (out / "shard-00003").mkdir()
    with open(out / "clips.jsonl", "ab") as f:
        f.write(b'{"index": 4, "caption": "trunc')
    W.generate_dataset(tiny(), out, 7, shard_size=2, seed=3, progress=False)
    assert files(out) == files(reference)


def test_resume_after_sigkill(reference, tmp_path):
    out = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_worlds import tiny\n"
        "from physics.worlds import generate_dataset\n"
        f"generate_dataset(tiny(), {str(out)!r}, 7, shard_size=2, seed=3, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            index = out / "index.json"
            if index.exists() and json.loads(index.read_text())["shards"]:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the generator was not killed mid-way (exit code {proc.returncode})")
    killed = json.loads((out / "index.json").read_text())
    assert not killed["complete"] and 1 <= len(killed["shards"]) < 4
    W.generate_dataset(tiny(), out, 7, shard_size=2, seed=3, progress=False)
    assert files(out) == files(reference)


def test_extend_and_refuse_incompatible(reference, tmp_path):
    out = tmp_path / "grown"
    W.generate_dataset(tiny(), out, 3, shard_size=2, seed=3, progress=False)  # last shard partial
    W.generate_dataset(tiny(), out, 7, shard_size=2, seed=3, progress=False)
    assert files(out) == files(reference)
    with pytest.raises(ValueError, match="seed"):
        W.generate_dataset(tiny(), out, 7, shard_size=2, seed=4, progress=False)
    with pytest.raises(ValueError, match="fps"):
        W.generate_dataset(tiny(fps=24.0), out, 7, shard_size=2, seed=3, progress=False)
    with pytest.raises(ValueError, match="never shrunk"):
        W.generate_dataset(tiny(), out, 4, shard_size=2, seed=3, progress=False)


def test_corruption_is_detected_naming_the_shard(reference, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    rgb = out / "shard-00001" / "rgb.npy"
    data = bytearray(rgb.read_bytes())
    data[-7] ^= 0x01
    rgb.write_bytes(bytes(data))
    ds = W.WorldDataset(out)
    ds[0]  # shard 0 is fine
    with pytest.raises(W.CorruptShardError, match="shard-00001"):
        ds[2]
    with pytest.raises(W.CorruptShardError, match="shard-00001.*checksum"):
        W.WorldDataset(out).verify()
    # a caption edited in clips.jsonl is caught too
    shutil.rmtree(out)
    shutil.copytree(reference, out)
    text = (out / "clips.jsonl").read_text()
    first = json.loads(text.splitlines()[-1])["caption"]
    (out / "clips.jsonl").write_text(text.replace(first, first.upper()))
    with pytest.raises(W.CorruptShardError, match="shard-00003"):
        W.WorldDataset(out).verify()
    # unverified reading skips the check
    assert W.WorldDataset(out, verify=False)[6]["caption"] == first.upper()


def test_mpm_and_mixed_datasets(tmp_path):
    ds = W.WorldDataset(
        W.generate_dataset(tiny("mixed"), tmp_path / "mixed", 4, shard_size=4, seed=1, progress=False)
    )
    assert len(ds) == 4
    kinds = {r["kind"] for r in ds.records}
    assert kinds <= {"rigid", "mpm"}
    assert all(np.isfinite(ds[i]["points"].numpy()).all() for i in range(4))


def test_preview_writes_pictures(tmp_path):
    import imageio.v3 as iio

    paths = W.preview(tiny(), tmp_path / "preview", seed=2)
    gif = iio.imread(paths["gif"])
    assert gif.shape[0] == 5 and gif.shape[1] == 16 * 16
    assert iio.imread(paths["depth"]).ndim == 3 and paths["points"].stat().st_size > 1000
    summary = json.loads(paths["json"].read_text())
    assert summary["caption"] == W.simulate_clip(W.sample_world_scene(tiny(), 2, 0), tiny()).caption
    assert not [p for p in os.listdir(tmp_path / "preview") if p.startswith(".")]


def test_in_memory_reader_gives_the_same_items_and_keeps_every_shard(reference):
    mapped = W.WorldDataset(reference, max_open_shards=1)
    loaded = W.WorldDataset(reference, max_open_shards=1, in_memory=True)
    for i in range(len(mapped)):
        a, b = mapped[i], loaded[i]
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), (i, key)
            else:
                assert value == b[key], (i, key)
    assert len(loaded._open) == len(loaded.shards)  # nothing evicted: the arrays live in RAM
    assert not any(isinstance(arr, np.memmap) for shard in loaded._open.values() for arr in shard.values())
