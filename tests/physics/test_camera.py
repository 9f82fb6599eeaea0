"""physics.camera: look_at / intrinsics / project / unproject against analytic pinhole answers and kornia."""

import math

import pytest
import torch
from kornia.geometry.camera import PinholeCamera

from physics.camera import (
    camera_center,
    check_visible,
    in_frame,
    intrinsics,
    look_at,
    project,
    resize_intrinsics,
    unproject,
    world_to_camera,
)


def test_look_at_axes_follow_opencv():
    E = look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    R = E[:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    assert torch.det(R) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(camera_center(E), torch.tensor([3.0, 0.0, 1.0]), atol=1e-6)
    # z forward: the target is straight ahead at its distance
    target_cam = world_to_camera(torch.zeros(1, 1, 3), E)[0, 0]
    assert torch.allclose(target_cam, torch.tensor([0.0, 0.0, math.sqrt(10.0)]), atol=1e-6)
    # looking along -x with z up: world +y is to the right (x > 0) and world +z is up (y < 0)
    right = world_to_camera(torch.tensor([[[0.0, 1.0, 0.0]]]), E)[0, 0]
    above = world_to_camera(torch.tensor([[[0.0, 0.0, 1.0]]]), E)[0, 0]
    assert right[0] > 0.5 and abs(right[1]) < 1e-6
    assert above[1] < -0.5


def test_look_at_batched_matches_single():
    eyes = torch.tensor([[2.0, 1.0, 1.5], [-1.0, 3.0, 0.5]])
    targets = torch.tensor([[0.0, 0.0, 0.2], [0.5, -0.5, 0.0]])
    E = look_at(eyes, targets)
    assert E.shape == (2, 4, 4)
    for b in range(2):
        assert torch.allclose(E[b], look_at(eyes[b], targets[b]), atol=1e-6)


def test_look_at_rejects_degenerate_views():
    with pytest.raises(ValueError, match="coincide"):
        look_at([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="parallel"):
        look_at([0.0, 0.0, 5.0], [0.0, 0.0, 0.0])  # straight down with up = +z
    with pytest.raises(ValueError, match=r"eye must be \[3\] or \[B, 3\]"):
        look_at([1.0, 2.0], [0.0, 0.0, 0.0])


def test_intrinsics_fov_and_principal_point():
    K = intrinsics(64, 48, fov_deg=90.0)
    assert K[0, 0] == pytest.approx(32.0) and K[1, 1] == pytest.approx(32.0)
    assert K[0, 2] == pytest.approx(31.5) and K[1, 2] == pytest.approx(23.5)  # integer pixel centres
    assert torch.allclose(intrinsics(64, 48, focal=32.0), K)
    assert intrinsics(64, 64, fov_deg=torch.tensor([40.0, 60.0])).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="exactly one"):
        intrinsics(64, 64)
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics(64, 64, fov_deg=180.0)
    with pytest.raises(ValueError, match="width and height"):
        intrinsics(0, 64, focal=10.0)


def test_project_matches_pinhole_formula_and_kornia():
    K = intrinsics(64, 64, fov_deg=50.0)
    E = look_at([2.0, -1.0, 1.2], [0.1, 0.2, 0.3])
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(1, 50, 3, generator=g) - 0.5  # (1, 50, 3)
    px, depth = project(pts, K, E)
    cam = world_to_camera(pts, E)[0]
    expected = torch.stack(
        [K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], -1
    )
    assert torch.allclose(px[0], expected, atol=1e-4)
    assert torch.allclose(depth[0], cam[:, 2], atol=1e-6)
    K4 = torch.eye(4)
    K4[:3, :3] = K
    kcam = PinholeCamera(K4[None], E[None], torch.tensor([64.0]), torch.tensor([64.0]))
    assert torch.allclose(kcam.project(pts), px, atol=1e-4)
    # the look_at target lands on the principal point, the frame centre under integer pixel centres
    px_t, _ = project(torch.tensor([[[0.1, 0.2, 0.3]]]), K, E)
    assert torch.allclose(px_t, torch.tensor([[[31.5, 31.5]]]), atol=1e-4)


def test_project_unproject_round_trip_batched():
    g = torch.Generator().manual_seed(1)
    eyes = torch.tensor([[2.0, 0.5, 1.0], [-1.5, 2.0, 2.0], [0.3, -3.0, 0.8]])
    E = look_at(eyes, torch.zeros(3, 3))
    K = intrinsics(96, 64, fov_deg=torch.tensor([40.0, 55.0, 70.0]))
    pts = torch.rand(3, 200, 3, generator=g) - 0.5
    px, depth = project(pts, K, E)
    back = unproject(px, depth, K, E)
    assert torch.allclose(back, pts, atol=1e-4)


def test_resize_intrinsics_keeps_pixel_edges():
    K = intrinsics(64, 48, fov_deg=60.0)
    K2 = resize_intrinsics(K, 2.0)
    E = torch.eye(4)
    # the ray through the left/top edge of the frame (x = -0.5) stays on the edge of the larger frame
    edge = unproject(torch.tensor([[[-0.5, -0.5]]]), torch.ones(1, 1), K, E)
    px2, _ = project(edge, K2, E)
    assert torch.allclose(px2, torch.tensor([[[-0.5, -0.5]]]), atol=1e-4)
    assert K2[0, 2] == pytest.approx(63.5) and K2[1, 2] == pytest.approx(47.5)


def test_in_frame_bounds_follow_pixel_edges():
    px = torch.tensor([[[-0.5, 0.0], [-0.51, 0.0], [63.49, 10.0], [63.5, 10.0], [10.0, 10.0]]])
    depth = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1.0]])
    assert in_frame(px, depth, 64, 64).tolist() == [[True, False, True, False, False]]


def test_check_visible_raises_for_camera_looking_away():
    K = intrinsics(64, 64, fov_deg=50.0)
    pts = torch.rand(100, 3, generator=torch.Generator().manual_seed(2)) * 0.4
    good = look_at([3.0, 0.0, 1.0], [0.2, 0.2, 0.2])
    away = look_at([3.0, 0.0, 1.0], [6.0, 0.0, 1.0])  # faces away: every point is behind it
    aside = look_at([3.0, 0.0, 1.0], [3.0, 5.0, 1.0])  # points are in front-ish but outside the frame
    mask = check_visible(pts, K, good, 64, 64)
    assert mask.shape == (100,) and bool(mask.all())
    with pytest.raises(ValueError, match="camera looks away from every object.*100 are behind it"):
        check_visible(pts, K, away, 64, 64)
    with pytest.raises(ValueError, match="camera looks away from every object"):
        check_visible(pts, K, aside, 64, 64)
    with pytest.raises(ValueError, match="camera 1 sees 0"):
        check_visible(pts.expand(2, 100, 3), K, torch.stack([good, away]), 64, 64)
    with pytest.raises(ValueError, match="need >= 101"):
        check_visible(pts, K, good, 64, 64, min_points=101)


def test_bad_shapes_raise_clear_errors():
    K = intrinsics(64, 64, fov_deg=50.0)
    E = look_at([3.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"points must be \[B, N, 3\], got \(5, 3\)"):
        project(torch.zeros(5, 3), K, E)
    with pytest.raises(ValueError, match=r"K must be \[B, 3, 3\] or \[3, 3\], got \(4, 4\)"):
        project(torch.zeros(1, 5, 3), torch.eye(4), E)
    with pytest.raises(ValueError, match=r"E must be \[B, 4, 4\] or \[4, 4\], got \(3, 4\)"):
        project(torch.zeros(1, 5, 3), K, E[:3])
    with pytest.raises(ValueError, match="camera batch"):
        project(torch.zeros(2, 5, 3), K.expand(3, 3, 3), E)
    with pytest.raises(ValueError, match=r"depth must be \[B, N\]"):
        unproject(torch.zeros(1, 5, 2), torch.zeros(1, 4), K, E)
    with pytest.raises(TypeError, match="floating-point"):
        project(torch.zeros(1, 5, 3, dtype=torch.long), K, E)
