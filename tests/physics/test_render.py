"""physics.render: analytic silhouettes and depths of spheres, occluded tracks, shading, batching, errors."""

import math
import time

import pytest
import torch

from physics.camera import intrinsics, look_at, project, world_to_camera
from physics.render import Frames, RenderConfig, checker_colors, render, render_batch

F_DEG = 50.0


def fib_sphere(n: int, radius: float, center) -> torch.Tensor:
    """n nearly uniform points on a sphere (Fibonacci lattice): [n, 3]."""
    i = torch.arange(n, dtype=torch.float32) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    unit = torch.stack(
        [torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1
    )
    return unit * radius + torch.tensor(center, dtype=torch.float32)


# coverage renders: white unshaded particles on black, so rgb = fraction of a pixel's samples covered
COVERAGE = RenderConfig(ground=False, background=(0.0, 0.0, 0.0), ambient=1.0)


def coverage_stats(frames: Frames) -> tuple[torch.Tensor, float]:
    cov = frames.rgb[0, ..., 0]  # (H, W)
    ys, xs = torch.meshgrid(torch.arange(cov.shape[0]), torch.arange(cov.shape[1]), indexing="ij")
    total = cov.sum()
    centroid = torch.stack([(cov * xs).sum() / total, (cov * ys).sum() / total])
    return centroid, math.sqrt(float(total) / math.pi)


def test_on_axis_sphere_silhouette_matches_pinhole():
    R, r, D = 0.3, 0.02, 3.0
    center = [0.2, -0.1, 0.5]
    eye = torch.tensor(center) + torch.tensor([D / math.sqrt(2), D / math.sqrt(2), 0.0])
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at(eye, center)
    pts = fib_sphere(4000, R, center)[None]  # (1, N, 3)
    frames = render(
        pts, torch.ones(4000, 3), torch.zeros(4000, dtype=torch.long), K, E, radius=r, config=COVERAGE
    )
    centroid, radius_px = coverage_stats(frames)
    # the union of radius-r balls centred on the sphere is the sphere of radius R + r; its outline seen
    # from distance D is a circle of radius f (R + r) / sqrt(D^2 - (R + r)^2) around the principal point
    Rp = R + r
    expected = float(K[0, 0]) * Rp / math.sqrt(D**2 - Rp**2)
    assert torch.allclose(centroid, torch.tensor([31.5, 31.5]), atol=0.1)
    assert radius_px == pytest.approx(expected, abs=0.3)
    # the mask (judged at pixel centres) is the same disc
    area = float((frames.mask[0] == 0).sum())
    assert math.sqrt(area / math.pi) == pytest.approx(expected, abs=0.5)


def test_off_axis_sphere_lands_on_its_projection():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.3])
    center = [0.2, 0.5, 0.6]
    pts = fib_sphere(2000, 0.15, center)[None]
    frames = render(
        pts, torch.ones(2000, 3), torch.zeros(2000, dtype=torch.long), K, E, radius=0.015, config=COVERAGE
    )
    centroid, _ = coverage_stats(frames)
    px, _ = project(torch.tensor([[center]]), K, E)
    assert torch.allclose(centroid, px[0, 0], atol=0.5)


def test_depth_matches_ray_sphere_intersection():
    R, r, D = 0.3, 0.02, 2.5
    center = torch.tensor([0.0, 0.0, 0.6])
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at(center + torch.tensor([D, 0.0, 0.0]), center)
    pts = fib_sphere(6000, R, center.tolist())[None]
    frames = render(
        pts,
        torch.full((6000, 3), 0.5),
        torch.full((6000,), 3),
        K,
        E,
        radius=r,
        config=RenderConfig(ground=False),
    )
    # analytic front surface of the radius R + r envelope along each pixel-centre ray (camera z = 1 rays)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    rays = torch.stack(
        [(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1
    )  # (H, W, 3)
    c = world_to_camera(center[None, None], E)[0, 0]
    a, b = (rays**2).sum(-1), (rays * c).sum(-1)
    disc = b**2 - a * ((c**2).sum() - (R + r) ** 2)
    inner = b**2 - a * ((c**2).sum() - (R - r) ** 2) > 0  # rays well inside the outline
    z_true = (b - disc.clamp_min(0).sqrt()) / a
    assert bool((frames.mask[0][inner] == 3).all())
    err = frames.depth[0][inner] - z_true[inner]
    # the envelope of r = 2 cm balls dips by a few mm between particles, never rises above the sphere
    assert float(err.abs().max()) < 0.008 and -1e-4 < float(err.mean()) < 0.004
    # centre pixel: camera z of the front pole, D - (R + r)
    assert float(frames.depth[0, 31:33, 31:33].mean()) == pytest.approx(D - R - r, abs=0.01)
    # no surface (sky) has depth 0 and mask -1
    assert bool((frames.depth[0][disc < -0.01] == 0).all()) and bool(
        (frames.mask[0][disc < -0.01] == -1).all()
    )


def test_occluded_tracks_are_invisible():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 0.5], [0.0, 0.0, 0.5])
    front = fib_sphere(3000, 0.3, [0.8, 0.0, 0.5])  # between the camera and `back`
    back = fib_sphere(1000, 0.15, [-0.5, 0.0, 0.5])  # fully hidden behind `front`
    aside = fib_sphere(1000, 0.15, [-0.5, 1.0, 0.5])  # same depth as `back`, in plain view
    pts = torch.cat([front, back, aside])[None]
    ids = torch.tensor([0] * 3000 + [1] * 1000 + [2] * 1000)
    frames = render(pts, torch.full((5000, 3), 0.7), ids, K, E, radius=0.02)
    vis = frames.visible[0]
    eye = torch.tensor([3.0, 0.0, 0.5])

    def facing(p, c):  # cosine between the outward normal and the direction to the camera
        n = (p - torch.tensor(c)) / (p - torch.tensor(c)).norm(dim=-1, keepdim=True)
        to_eye = (eye - p) / (eye - p).norm(dim=-1, keepdim=True)
        return (n * to_eye).sum(-1)

    f_front = facing(front, [0.8, 0.0, 0.5])
    assert not bool(vis[3000:4000].any())  # hidden sphere: no visible track
    # front faces of the front sphere (splat envelopes hide surfaces seen at grazing incidence, see render)
    assert float(vis[:3000][f_front > 0.35].float().mean()) > 0.98
    assert not bool(vis[:3000][f_front < -0.2].any())  # its far side is self-occluded
    f_aside = facing(aside, [-0.5, 1.0, 0.5])
    assert float(vis[4000:][f_aside > 0.35].float().mean()) > 0.98
    assert not bool(vis[4000:][f_aside < -0.2].any())
    assert set(frames.mask[0].unique().tolist()) == {-1, 0, 2}


def test_tracks_follow_projection_and_frame_bounds():
    K = intrinsics(64, 48, fov_deg=F_DEG)
    T = 5
    eyes = torch.stack([torch.tensor([3.0, 0.2 * t, 1.0]) for t in range(T)])
    E = look_at(eyes, torch.tensor([0.0, 0.0, 0.3]).expand(T, 3))  # a moving camera: E [T, 4, 4]
    pts = fib_sphere(500, 0.2, [0.0, 0.0, 0.3])
    pts = torch.cat([pts, torch.tensor([[0.0, 5.0, 0.3], [10.0, 0.0, 0.3]])])  # out of frame; behind camera
    clip = torch.stack([pts + torch.tensor([0.0, 0.0, 0.05 * t]) for t in range(T)])  # (T, N, 3)
    frames = render(
        clip,
        torch.full((502, 3), 0.5),
        torch.zeros(502, dtype=torch.long),
        K,
        E,
        radius=0.02,
        config=RenderConfig(height=48, width=64),
    )
    px, _ = project(clip, K, E)
    assert frames.tracks.shape == (T, 502, 2) and frames.visible.shape == (T, 502)
    assert torch.allclose(frames.tracks, px, atol=1e-3)
    assert not bool(frames.visible[:, 500:].any())
    assert frames.rgb.shape == (T, 48, 64, 3) and frames.E.shape == (T, 4, 4)
    assert torch.equal(frames.points, clip)


def test_ground_plane_is_drawn_and_occludes():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 1.2], [0.0, 0.0, 0.0])
    below = fib_sphere(500, 0.2, [0.0, 0.0, -0.5])  # under the floor
    frames = render(
        below[None], torch.full((500, 3), 0.9), torch.zeros(500, dtype=torch.long), K, E, radius=0.02
    )
    assert not bool(frames.visible.any())
    assert bool((frames.mask == -1).all())
    ground = frames.depth[0] > 0
    assert ground[-1].all() and not ground[0].any()  # the floor fills the bottom row, the sky the top one
    # the checker shows: the floor has two distinct brightness levels near the camera
    near_rows = frames.rgb[0, -12:, :, 0]
    assert float(near_rows.max() - near_rows.min()) > 0.1


def test_lambert_shading_and_antialiasing():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 0.5], [0.0, 0.0, 0.5])
    # one big particle (a sphere impostor) lit from the image right (world +y for this camera) and above
    cfg = RenderConfig(ground=False, background=(0.0, 0.0, 0.0), light_dir=(0.0, 1.0, 0.3), ambient=0.2)
    frames = render(
        torch.tensor([[[0.0, 0.0, 0.5]]]),
        torch.ones(1, 3),
        torch.zeros(1, dtype=torch.long),
        K,
        E,
        radius=0.5,
        config=cfg,
    )
    img = frames.rgb[0, ..., 0]
    cov = render(
        torch.tensor([[[0.0, 0.0, 0.5]]]),
        torch.ones(1, 3),
        torch.zeros(1, dtype=torch.long),
        K,
        E,
        radius=0.5,
        config=COVERAGE,
    ).rgb[0, ..., 0]
    inside = cov > 0.999  # fully covered pixels
    left = img[:, :28][inside[:, :28]].mean()
    right = img[:, 36:][inside[:, 36:]].mean()
    assert float(right) > float(left) + 0.2
    assert float(img[inside].min()) >= 0.2 - 1e-6  # ambient floor
    # shading varies smoothly over the sphere: neighbouring interior pixels differ little
    both = inside[:, 1:] & inside[:, :-1]
    assert float((img[:, 1:] - img[:, :-1]).abs()[both].max()) < 0.1
    # 2x2 supersampling: silhouette pixels take intermediate coverage; without it the edge is binary
    partial = ((cov > 0.05) & (cov < 0.95)).sum()
    assert int(partial) > 20
    hard = render(
        torch.tensor([[[0.0, 0.0, 0.5]]]),
        torch.ones(1, 3),
        torch.zeros(1, dtype=torch.long),
        K,
        E,
        radius=0.5,
        config=RenderConfig(ground=False, background=(0.0, 0.0, 0.0), ambient=1.0, supersample=1),
    ).rgb[0, ..., 0]
    assert int(((hard > 0.05) & (hard < 0.95)).sum()) == 0


def test_dense_objects_render_without_holes():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([2.5, 0.0, 0.8], [0.0, 0.0, 0.3])
    pts = fib_sphere(2000, 0.3, [0.0, 0.0, 0.3])[None]
    frames = render(
        pts, torch.ones(2000, 3), torch.zeros(2000, dtype=torch.long), K, E, radius=0.02, config=COVERAGE
    )
    cov = frames.rgb[0, ..., 0]
    m = frames.mask[0] == 0
    interior = m.clone()
    interior[1:-1, 1:-1] = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:] & m[1:-1, 1:-1]
    interior[[0, -1]] = False
    interior[:, [0, -1]] = False
    assert int(interior.sum()) > 100
    assert float(cov[interior].min()) == 1.0  # no speckle holes inside the object


def test_splats_near_the_camera_are_capped():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 0.5], [0.0, 0.0, 0.5])
    # one particle 5 cm in front of the lens (projected radius ~27 px) among small far ones
    near = torch.tensor([[2.95, 0.01, 0.5]])  # lands at x ~ 45, its capped disc spans x ~ 29..61
    pts = torch.cat([near, fib_sphere(500, 0.3, [0.0, -0.6, 0.5])])[None]  # the sphere spans x ~ 11..25
    ids = torch.tensor([7] + [0] * 500)
    frames = render(pts, torch.full((501, 3), 0.5), ids, K, E, radius=0.02, config=RenderConfig(ground=False))
    area = float((frames.mask[0] == 7).sum())
    assert area == pytest.approx(math.pi * 16**2, rel=0.1)  # max_splat_px = 16 output pixels
    assert bool(frames.visible[0, 0]) and int((frames.mask[0] == 0).sum()) > 0


def test_render_batch_matches_single_renders_and_is_deterministic():
    K = intrinsics(64, 64, fov_deg=F_DEG)
    E0, E1 = look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.3]), look_at([0.0, 3.0, 1.5], [0.0, 0.0, 0.3])
    g = torch.Generator().manual_seed(0)
    pts = fib_sphere(300, 0.25, [0.0, 0.0, 0.4])
    clips = torch.stack(
        [pts + 0.02 * torch.randn(4, 300, 3, generator=g).cumsum(0) for _ in range(2)]
    )  # (2, 4, N, 3)
    colors = torch.rand(2, 300, 3, generator=g)
    ids = torch.tensor([[1] * 150 + [2] * 150, [0] * 300])
    batch = render_batch(clips, colors, ids, torch.stack([K, K]), torch.stack([E0, E1]), radius=0.03)
    for b, E in enumerate([E0, E1]):
        single = render(clips[b], colors[b], ids[b], K, E, radius=0.03)
        for name in ("rgb", "depth", "mask", "tracks", "visible"):
            assert torch.equal(getattr(batch[b], name), getattr(single, name)), name
    again = render(clips[0], colors[0], ids[0], K, E0, radius=0.03)
    assert torch.equal(again.rgb, batch[0].rgb)


def test_frames_conversions():
    K, E = intrinsics(32, 32, fov_deg=F_DEG), look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.3])
    f = render(
        fib_sphere(200, 0.3, [0.0, 0.0, 0.3])[None].expand(3, 200, 3),
        torch.full((200, 3), 0.5),
        torch.zeros(200, dtype=torch.long),
        K,
        E,
        radius=0.03,
        config=RenderConfig(height=32, width=32),
    )
    assert f.rgb.dtype == torch.float32 and float(f.rgb.min()) >= 0 and float(f.rgb.max()) <= 1
    u8 = f.rgb_uint8()
    assert u8.dtype == torch.uint8 and u8.shape == (3, 32, 32, 3)
    pix = f.pixels()
    assert pix.shape == (3, 3, 32, 32) and torch.allclose(pix, f.rgb.permute(3, 0, 1, 2) * 2 - 1)


def test_checker_colors_alternate_between_cells():
    body = torch.tensor([[0.05, 0.05, 0.05], [0.15, 0.05, 0.05], [0.15, 0.15, 0.05], [0.05, 0.05, -0.05]])
    c = checker_colors(body, (1.0, 0.5, 0.0), cell=0.1, contrast=0.4)
    assert torch.allclose(c[0], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(c[1], torch.tensor([0.6, 0.3, 0.0]))  # neighbour cell: darkened
    assert torch.allclose(c[2], c[0]) and torch.allclose(c[3], c[1])
    with pytest.raises(ValueError, match="cell must be > 0"):
        checker_colors(body, (1.0, 0.5, 0.0), cell=0.0)


def test_render_speed_64x64x17_3k_particles():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([2.5, 0.3, 1.2], [0.0, 0.0, 0.25])
    pts = torch.cat(
        [
            fib_sphere(1000, 0.3, [0, 0, 0.3]),
            fib_sphere(1000, 0.25, [0.3, 0.6, 0.25]),
            fib_sphere(1000, 0.2, [-0.4, -0.5, 0.2]),
        ]
    )
    clip = torch.stack([pts + torch.tensor([0.02 * t, 0.0, 0.0]) for t in range(17)])
    colors, ids = torch.full((3000, 3), 0.6), torch.arange(3).repeat_interleave(1000)
    # one thread, as in data-loader workers: on a shared, oversubscribed CPU torch's multi-threaded small
    # ops stall at every barrier and the wall time stops measuring the renderer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        render(clip, colors, ids, K, E, radius=0.025)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            render(clip, colors, ids, K, E, radius=0.025)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    # measured 20-50 ms on one shared core (see the report); a Python loop over the 51k particle-frames
    # would take seconds
    assert sorted(times)[1] < 1.0


def test_bad_inputs_raise_clear_errors():
    K, E = intrinsics(64, 64, fov_deg=F_DEG), look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.3])
    pts = torch.zeros(2, 10, 3)
    col, ids = torch.full((10, 3), 0.5), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"points must be \[T, N, 3\], got \(10, 3\)"):
        render(pts[0], col, ids, K, E, radius=0.1)
    with pytest.raises(
        ValueError, match=r"colors must be \[N, 3\] or \[T, N, 3\] with T=2, N=10, got \(9, 3\)"
    ):
        render(pts, col[:9], ids, K, E, radius=0.1)
    with pytest.raises(ValueError, match=r"colors must be floats in \[0, 1\]"):
        render(pts, col * 3, ids, K, E, radius=0.1)
    with pytest.raises(ValueError, match=r"object_ids must be an integer tensor \[N\]"):
        render(pts, col, ids.float(), K, E, radius=0.1)
    with pytest.raises(ValueError, match="object_ids must be >= 0"):
        render(pts, col, ids - 1, K, E, radius=0.1)
    with pytest.raises(ValueError, match=r"E must be \[4, 4\] or \[T, 4, 4\] with T=2, got \(3, 4, 4\)"):
        render(pts, col, ids, K, E.expand(3, 4, 4), radius=0.1)
    with pytest.raises(ValueError, match=r"K must be \[3, 3\]"):
        render(pts, col, ids, K[None], E, radius=0.1)
    with pytest.raises(ValueError, match="radius must be positive"):
        render(pts, col, ids, K, E, radius=-0.1)
    with pytest.raises(ValueError, match=r"radius must be a float or an \[N\] tensor with N=10, got \(9,\)"):
        render(pts, col, ids, K, E, radius=torch.full((9,), 0.1))
    with pytest.raises(ValueError, match="finite"):
        render(pts.clone().fill_(math.nan), col, ids, K, E, radius=0.1)
    with pytest.raises(TypeError, match="points must be a torch.Tensor"):
        render(pts.tolist(), col, ids, K, E, radius=0.1)
    with pytest.raises(ValueError, match=r"points must be \[B, T, N, 3\]"):
        render_batch(pts, col[None], ids[None], K[None], E[None], radius=0.1)


def test_depth_and_mask_do_not_depend_on_supersampling():
    K, E = intrinsics(48, 64, fov_deg=F_DEG), look_at([2.5, 0.5, 1.2], [0.0, 0.0, 0.3])
    pts = torch.cat([fib_sphere(1500, 0.3, [0.0, 0.0, 0.3]), fib_sphere(800, 0.2, [0.3, 0.5, 0.2])])[None]
    ids = torch.tensor([0] * 1500 + [1] * 800)
    out = [
        render(
            pts,
            torch.full((2300, 3), 0.5),
            ids,
            K,
            E,
            radius=0.025,
            config=RenderConfig(height=64, width=48, supersample=s),
        )
        for s in (1, 2, 3)
    ]
    for f in out[1:]:
        assert torch.equal(f.mask, out[0].mask)
        assert torch.allclose(f.depth, out[0].depth, atol=1e-4)
        assert torch.allclose(f.tracks, out[0].tracks, atol=1e-4)
