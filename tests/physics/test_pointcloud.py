"""physics.pointcloud: lifting rendered depth back onto known surfaces, cleaning, FPS, .ply round trips."""

import math
import os

import pytest
import torch

from physics.camera import camera_center, intrinsics, look_at, project, unproject
from physics.pointcloud import (
    CleanConfig,
    PointCloud,
    clean,
    depth_to_world,
    farthest_point_sampling,
    lift_depth,
    lift_frame,
    load_ply,
    save_ply,
)
from physics.render import RenderConfig, render


def fib_sphere(n: int, radius: float, center) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    unit = torch.stack(
        [torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1
    )
    return unit * radius + torch.tensor(center, dtype=torch.float32)


K = intrinsics(64, 64, fov_deg=50.0)
E = look_at([2.5, 0.5, 1.3], [0.0, 0.0, 0.3])


def test_lifted_ground_depth_lies_on_the_plane():
    # one particle behind the camera: nothing but the ground plane and the sky is drawn
    frames = render(
        torch.tensor([[[5.0, 1.0, 2.0]]]),
        torch.ones(1, 3),
        torch.zeros(1, dtype=torch.long),
        K,
        E,
        radius=0.01,
        config=RenderConfig(ground=True, ground_height=0.0),
    )
    cloud = lift_depth(frames.depth[0], K, E, mask=frames.mask[0] == -1)
    n_ground = int((frames.depth[0] > 0).sum())
    assert len(cloud) == n_ground > 1000
    assert float(cloud.points[:, 2].abs().max()) < 1e-4  # on z = 0
    # and the lifted points project back to their own pixel centres
    px, _ = project(cloud.points[None], K, E)
    ys, xs = torch.nonzero(frames.depth[0] > 0, as_tuple=True)
    assert torch.allclose(px[0], torch.stack([xs, ys], -1).float(), atol=1e-2)


def test_lifted_sphere_depth_lies_on_the_sphere():
    R, r, c = 0.3, 0.02, [0.0, 0.0, 0.4]
    pts = fib_sphere(6000, R, c)
    frames = render(pts[None], torch.full((6000, 3), 0.6), torch.full((6000,), 2), K, E, radius=r)
    cloud = lift_frame(frames, t=0, object_id=2)
    assert len(cloud) == int((frames.mask[0] == 2).sum()) > 150
    dist = (cloud.points - torch.tensor(c)).norm(dim=-1)
    # every lifted pixel lies on the rendered envelope: between the sphere of particle centres + r and
    # that sphere minus the few-mm dips of the envelope between particles
    assert float(dist.max()) < R + r + 1e-3 and float(dist.min()) > R + r - 0.01
    assert cloud.colors is not None and cloud.colors.shape == (len(cloud), 3)


def test_depth_to_world_matches_unproject():
    depth = 1.0 + torch.rand(2, 8, 10, generator=torch.Generator().manual_seed(0))
    Ks = intrinsics(10, 8, fov_deg=torch.tensor([40.0, 60.0]))
    Es = look_at(torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]]), torch.zeros(2, 3))
    world = depth_to_world(depth, Ks, Es)  # (2, 8, 10, 3)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, -1, 2).expand(2, -1, -1)
    expected = unproject(pix, depth.reshape(2, -1), Ks, Es)
    assert torch.allclose(world.reshape(2, -1, 3), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"depth must be a float \[B, H, W\]"):
        depth_to_world(depth[0], Ks, Es)
    with pytest.raises(ValueError, match=r"K must be \[3, 3\] or \[B, 3, 3\] with B=2"):
        depth_to_world(depth, Ks[:1], Es)


def test_lift_depth_drops_empty_pixels_and_checks_inputs():
    depth = torch.tensor([[1.0, 0.0], [math.inf, 2.0]])
    cloud = lift_depth(depth, intrinsics(2, 2, focal=2.0), torch.eye(4))
    assert len(cloud) == 2  # depth 0 (sky) and inf are not surfaces
    assert torch.allclose(cloud.points[:, 2], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"mask must be a bool \[H, W\]"):
        lift_depth(depth, intrinsics(2, 2, focal=2.0), torch.eye(4), mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"depth must be \[H, W\]"):
        lift_depth(depth[None], intrinsics(2, 2, focal=2.0), torch.eye(4))
    with pytest.raises(ValueError, match=r"points must be \[M, 3\]"):
        PointCloud(torch.zeros(5, 2))


def test_clean_removes_outliers_downsamples_and_orients_normals():
    g = torch.Generator().manual_seed(0)
    plane = torch.cat([torch.rand(3000, 2, generator=g), torch.zeros(3000, 1)], -1)  # unit square at z = 0
    outliers = torch.tensor([[0.5, 0.5, 2.0], [3.0, 3.0, 0.0], [-2.0, 0.5, -1.0]])
    cloud = PointCloud(torch.cat([plane, outliers]), colors=torch.rand(3003, 3, generator=g))
    out = clean(cloud, CleanConfig(voxel_size=None), camera_center=torch.tensor([0.5, 0.5, 3.0]))
    assert float(out.points.norm(dim=-1).max()) < 1.5  # the three far points are gone
    assert len(out) >= 2900
    assert out.normals is not None and torch.allclose(
        out.normals.norm(dim=-1), torch.ones(len(out)), atol=1e-4
    )
    assert float(out.normals[:, 2].min()) > 0.99  # plane normals, turned towards the camera above
    down = clean(cloud.select(torch.arange(3000)), CleanConfig(voxel_size=0.1, estimate_normals=False))
    assert (
        100 <= len(down) <= 121 and down.normals is None
    )  # one point per occupied 0.1 m voxel of the square
    assert down.colors is not None and down.points.dtype == torch.float32
    with pytest.raises(ValueError, match="needs more than nb_neighbors=20"):
        clean(PointCloud(torch.rand(10, 3)))


def test_fps_is_spread_out_distinct_and_deterministic():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2000, 3, generator=g)
    idx = farthest_point_sampling(pts, 128, generator=torch.Generator().manual_seed(1))
    assert idx.shape == (128,) and idx.unique().numel() == 128
    again = farthest_point_sampling(pts, 128, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)

    def min_gap(sel):
        d = torch.cdist(pts[sel], pts[sel])
        return float(d[~torch.eye(len(sel), dtype=torch.bool)].min())

    random_gaps = [min_gap(torch.randperm(2000, generator=g)[:128]) for _ in range(5)]
    assert min_gap(idx) > 3 * max(random_gaps)
    # the FPS rule itself: each pick is the farthest point from those before it
    d = torch.cdist(pts[idx[:10]], pts).min(0).values.max()
    assert float(torch.cdist(pts[idx[10:11]], pts[idx[:10]]).min()) == pytest.approx(float(d), abs=1e-6)


def test_fps_batched_duplicates_and_errors():
    pts = torch.tensor([[0.0, 0.0, 0.0]] * 3 + [[1.0, 0.0, 0.0]] * 2)  # duplicated positions
    idx = farthest_point_sampling(pts, 5, generator=torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    batch = torch.rand(3, 100, 3, generator=torch.Generator().manual_seed(2))
    b_idx = farthest_point_sampling(batch, 10, generator=torch.Generator().manual_seed(3))
    assert b_idx.shape == (3, 10)
    assert all(b_idx[b].unique().numel() == 10 for b in range(3))
    with pytest.raises(ValueError, match=r"n must be an int in \[1, N=5\]"):
        farthest_point_sampling(pts, 6)
    with pytest.raises(ValueError, match=r"points must be a float \[N, 3\] or \[B, N, 3\]"):
        farthest_point_sampling(torch.zeros(5, 3, dtype=torch.long), 2)


def test_ply_round_trip_is_atomic(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(500, 3, generator=g)
    normals = torch.nn.functional.normalize(torch.randn(500, 3, generator=g), dim=-1)
    cloud = PointCloud(pts, colors=torch.rand(500, 3, generator=g), normals=normals)
    path = save_ply(tmp_path / "cloud.ply", cloud)
    back = load_ply(path)
    assert torch.equal(back.points, pts)  # float32 -> double -> float32 is exact
    assert float((back.colors - cloud.colors).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit colours
    assert torch.allclose(back.normals, normals, atol=1e-6)
    assert os.listdir(tmp_path) == ["cloud.ply"]  # no temporary left behind
    # a failed write leaves the good file in place and no temporary
    import open3d

    monkeypatch.setattr(open3d.io, "write_point_cloud", lambda *a, **k: False)
    with pytest.raises(OSError, match="could not write"):
        save_ply(path, PointCloud(torch.zeros(3, 3)))
    assert os.listdir(tmp_path) == ["cloud.ply"]
    monkeypatch.undo()
    assert torch.equal(load_ply(path).points, pts)
    # points-only clouds round-trip without colours or normals
    save_ply(path, PointCloud(pts[:10]))
    only = load_ply(path)
    assert torch.equal(only.points, pts[:10]) and only.colors is None and only.normals is None


def test_ply_errors(tmp_path):
    with pytest.raises(ValueError, match="must end in .ply"):
        save_ply(tmp_path / "x.xyz", PointCloud(torch.zeros(3, 3)))
    with pytest.raises(ValueError, match="empty"):
        save_ply(tmp_path / "x.ply", PointCloud(torch.zeros(0, 3)))
    with pytest.raises(FileNotFoundError, match="no .ply file"):
        load_ply(tmp_path / "missing.ply")


def test_lift_frame_with_moving_camera_and_errors():
    T = 3
    Es = look_at(
        torch.tensor([[2.5, 0.2 * t, 1.3] for t in range(T)]), torch.tensor([0.0, 0.0, 0.4]).expand(T, 3)
    )
    pts = fib_sphere(3000, 0.3, [0.0, 0.0, 0.4])
    frames = render(
        pts[None].expand(T, -1, -1),
        torch.full((3000, 3), 0.6),
        torch.zeros(3000, dtype=torch.long),
        K,
        Es,
        radius=0.02,
    )
    for t in range(T):
        cloud = lift_frame(frames, t=t, object_id=0)
        dist = (cloud.points - torch.tensor([0.0, 0.0, 0.4])).norm(dim=-1)
        assert float((dist - 0.32).abs().max()) < 0.012
    with pytest.raises(ValueError, match="t must index one of the 3 frames"):
        lift_frame(frames, t=3)
    normals = clean(lift_frame(frames, 0), camera_center=camera_center(Es[0])).normals
    assert normals is not None
