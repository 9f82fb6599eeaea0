"""Still-video residual coordinates (wmgen.models.still): the map, its inverse, its velocity and its scale."""

from __future__ import annotations

import pytest
import torch

from wmgen.models.still import from_residual, measure_residual_scale, still_video, to_residual, velocity_to_latent


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def latents(seed: int, shape=(2, 4, 3, 2, 2)) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed))


def test_still_video_repeats_the_frame():
    image = torch.rand(2, 3, 8, 8, generator=gen(0))
    video = still_video(image, 5)
    assert video.shape == (2, 3, 5, 8, 8)
    for k in range(5):
        assert torch.equal(video[:, :, k], image)
    with pytest.raises(ValueError, match=r"image must be \[B, 3, H, W\]"):
        still_video(image[0], 5)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        still_video(image, 0)


def test_residual_coordinates_and_their_inverse():
    x, s, r = latents(0), latents(1), torch.tensor([0.5, 1.0, 2.0, 4.0])
    y = to_residual(x, s, r)
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # the first frame is left as it is
    torch.testing.assert_close(y[:, 2, 1:], (x[:, 2, 1:] - s[:, 2, 1:]) / 2.0)
    torch.testing.assert_close(from_residual(y, s, r), x)
    # static content (x = s after frame 0) is y = 0 there
    static = torch.cat([x[:, :, :1], s[:, :, 1:]], dim=2)
    assert to_residual(static, s, r)[:, :, 1:].abs().max() == 0


def test_velocity_maps_like_the_coordinates():
    # x(t) = from_residual(y(t)) is affine in y: dx/dt = velocity_to_latent(dy/dt), checked by a JVP
    y, s, r, dy = latents(0), latents(1), torch.tensor([0.5, 1.0, 2.0, 4.0]), latents(2)
    _, dx = torch.func.jvp(lambda y_: from_residual(y_, s, r), (y,), (dy,))
    torch.testing.assert_close(velocity_to_latent(dy, r), dx)


def test_measured_scale_is_the_residual_std_per_channel():
    s = latents(1, (8, 2, 3, 4, 4))
    x = s.clone()
    x[:, 0, 1:] += 3.0 * torch.randn(8, 2, 4, 4, generator=gen(5))
    x[:, :, 0] += 10.0  # frame 0 never enters the scale
    r = measure_residual_scale(x, s)
    assert r.shape == (2,)
    assert r[0] == pytest.approx((x[:, 0, 1:] - s[:, 0, 1:]).std().item(), rel=1e-5)
    assert r[1] == 1e-3  # a channel that never changes is floored, not zero
    with pytest.raises(ValueError, match="at least 2 latent frames"):
        measure_residual_scale(x[:, :, :1], s[:, :, :1])


def test_bad_shapes_are_named():
    x, s = latents(0), latents(1)
    with pytest.raises(ValueError, match=r"scale must be \[C\] = \[4\]"):
        to_residual(x, s, torch.ones(3))
    with pytest.raises(ValueError, match="latents and still must both be"):
        to_residual(x, s[:, :, :2], torch.ones(4))
    with pytest.raises(ValueError, match="y and still must both be"):
        from_residual(x[0], s, torch.ones(4))
