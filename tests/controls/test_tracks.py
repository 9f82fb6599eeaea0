"""Point-track motion prompting: rasterisation, hand-made tracks, training samples and TrackAdapter."""

from __future__ import annotations

import math

import pytest
import torch

from controls.tracks import (
    TrackControl,
    carry_first_frame,
    expand_drag,
    pin_tracks,
    rasterize_tracks,
    sample_tracks,
    track_id_embedding,
)

S = 8  # spatial factor of the tiny VAE
GRID = (3, 4, 4)  # latent (T', H', W') of 9 frames of 32 x 32 pixels
FRAME = (32, 32)


def centre(j: float) -> float:
    """Pixel coordinate of latent cell j's centre."""
    return j * S + (S - 1) / 2


def one_track(x: float, y: float, frames=(0, 4, 8), T: int = 9) -> TrackControl:
    """A single track at pixel (x, y), visible at ``frames`` only."""
    tracks = torch.full((1, T, 1, 2), float("nan"))
    visible = torch.zeros(1, T, 1, dtype=torch.bool)
    for t in frames:
        tracks[0, t, 0] = torch.tensor([x, y])
        visible[0, t, 0] = True
    return TrackControl(tracks, visible)


def raster(control: TrackControl, dim: int = 8) -> torch.Tensor:
    return rasterize_tracks(control, frame_size=FRAME, latent_grid=GRID, spatial_factor=S, dim=dim)


# ---------------------------------------------------------------------------------------------------------
# ID embedding and rasterisation


def test_id_embedding_is_sinusoidal_and_distinct():
    emb = track_id_embedding(torch.arange(64), 16)  # (64, 16)
    assert emb.shape == (64, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))  # cos 0 = 1, sin 0 = 0
    torch.testing.assert_close(emb[3, 0], torch.cos(torch.tensor(3.0)))  # highest frequency is 1 rad / id
    torch.testing.assert_close(emb.norm(dim=-1), torch.full((64,), math.sqrt(8)))  # no id outweighs another
    dist = torch.cdist(emb, emb) + torch.eye(64) * 1e3
    assert dist.min() > 0.1  # every pair of ids is told apart
    with pytest.raises(TypeError, match="dtype torch.float32"):
        track_id_embedding(torch.zeros(3), 16)
    with pytest.raises(ValueError, match="even"):
        track_id_embedding(torch.arange(3), 7)


def test_track_at_cell_centre_writes_exactly_its_embedding():
    vol = raster(one_track(centre(2), centre(1), frames=(4,)))  # (1, D, T', H', W')
    assert vol.shape == (1, 8, *GRID)
    expected = torch.zeros_like(vol)
    expected[0, :, 1, 1, 2] = track_id_embedding(torch.tensor(0), 8)
    assert torch.equal(vol, expected)


def test_halfway_between_cells_splits_evenly():
    x = (centre(1) + centre(2)) / 2  # halfway in x, on a cell centre in y
    vol = raster(one_track(x, centre(3), frames=(0,)))
    emb = track_id_embedding(torch.tensor(0), 8)
    torch.testing.assert_close(vol[0, :, 0, 3, 1], 0.5 * emb)
    torch.testing.assert_close(vol[0, :, 0, 3, 2], 0.5 * emb)
    assert vol[0, :, 0].abs().sum(0).count_nonzero() == 2 and vol[0, :, 1:].abs().sum() == 0


def test_bilinear_weights_are_the_hand_computed_ones_and_sum_to_one():
    x, y = centre(1) + 0.25 * S, centre(2) + 0.75 * S  # a quarter of the way in x, three quarters in y
    vol = raster(one_track(x, y, frames=(8,)))[0, :, 2]  # (D, H', W') latent frame 2
    emb = track_id_embedding(torch.tensor(0), 8)
    weights = {(2, 1): 0.75 * 0.25, (2, 2): 0.25 * 0.25, (3, 1): 0.75 * 0.75, (3, 2): 0.25 * 0.75}
    for (i, j), w in weights.items():
        torch.testing.assert_close(vol[:, i, j], w * emb)
    torch.testing.assert_close(vol.sum((1, 2)), emb)  # weights sum to 1
    # points between a border cell's centre and the frame edge go wholly to the border cell
    corner = raster(one_track(-0.5, FRAME[0] - 0.51, frames=(0,)))
    torch.testing.assert_close(corner[0, :, 0, 3, 0], emb)


def test_invisible_points_write_nothing():
    control = one_track(centre(1), centre(1), frames=())  # never visible, NaN coordinates everywhere
    control.validate(FRAME)  # NaN at invisible points is allowed
    assert torch.equal(raster(control), torch.zeros(1, 8, *GRID))
    # an invisible point among visible ones: only the visible ones are written
    both = one_track(centre(1), centre(1), frames=(0, 4, 8))
    both.visible[0, 4, 0] = False
    both.tracks[0, 4, 0] = float("nan")
    vol = raster(both)
    assert vol[0, :, 1].abs().sum() == 0 and vol[0, :, 0, 1, 1].abs().sum() > 0 and vol[0, :, 2].abs().sum() > 0


def test_two_tracks_get_different_ids_and_explicit_ids_are_used():
    tracks = torch.tensor([[centre(0), centre(0)], [centre(3), centre(3)]]).expand(1, 9, 2, 2).clone()
    control = TrackControl(tracks, torch.ones(1, 9, 2, dtype=torch.bool))
    vol = raster(control)
    a, b = vol[0, :, 0, 0, 0], vol[0, :, 0, 3, 3]
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, track_id_embedding(torch.tensor(1), 8))
    control.ids = torch.tensor([[17, 5]])
    vol = raster(control)
    torch.testing.assert_close(vol[0, :, 0, 0, 0], track_id_embedding(torch.tensor(17), 8))
    torch.testing.assert_close(vol[0, :, 0, 3, 3], track_id_embedding(torch.tensor(5), 8))


def test_latent_frames_read_pixel_frames_0_4_8():
    T = 9
    tracks = torch.zeros(1, T, 1, 2)
    for t in range(T):  # the track sits in cell column t // 2 (rows stay 0), so each frame is recognisable
        tracks[0, t, 0] = torch.tensor([centre(t // 2 if t < 8 else 3), centre(0)])
    vol = raster(TrackControl(tracks, torch.ones(1, T, 1, dtype=torch.bool)))
    occupied = [tuple(vol[0, 0, j].nonzero()[0].tolist()) for j in range(3)]
    assert occupied == [(0, 0), (0, 2), (0, 3)]  # frames 0, 4 (column 2), 8 (column 3)
    # visible only at frames 1-3 and 5-7: nothing is read
    mid = one_track(centre(1), centre(1), frames=(1, 2, 3, 5, 6, 7))
    assert raster(mid).abs().sum() == 0


def test_rasterize_is_differentiable_in_track_coordinates():
    tracks = torch.tensor([[[[centre(1) + 2.0, centre(2) - 1.0]]]]).expand(1, 9, 1, 2).clone().requires_grad_()
    vol = raster(TrackControl(tracks, torch.ones(1, 9, 1, dtype=torch.bool)))
    (vol[0, :, :, 2, 2].sum()).backward()  # moving right (+x) puts more weight into column 2
    assert tracks.grad[0, [0, 4, 8], 0, 0].gt(0).all() and tracks.grad[0, [1, 2, 3], 0].eq(0).all()


def test_rasterize_batches_and_checks_sizes():
    a, b = one_track(centre(1), centre(2)), one_track(centre(3), centre(0))
    batch = TrackControl(torch.cat([a.tracks, b.tracks]), torch.cat([a.visible, b.visible]))
    vol = raster(batch)
    assert torch.equal(vol[0], raster(a)[0]) and torch.equal(vol[1], raster(b)[0])
    with pytest.raises(ValueError, match=r"T = 9 frames.*T' = 2 needs .* = 5"):
        rasterize_tracks(a, frame_size=FRAME, latent_grid=(2, 4, 4), spatial_factor=S)
    with pytest.raises(ValueError, match=r"frame_size \(H, W\) = \(32, 32\).*\(H', W'\) = \(4, 5\)"):
        rasterize_tracks(a, frame_size=FRAME, latent_grid=(3, 4, 5), spatial_factor=S)
    with pytest.raises(ValueError, match="spatial_factor"):
        rasterize_tracks(a, frame_size=FRAME, latent_grid=GRID, spatial_factor=0)


# ---------------------------------------------------------------------------------------------------------
# validation


def test_validate_rejects_bad_tracks_with_clear_messages():
    good = one_track(centre(1), centre(1))
    good.validate(FRAME)
    with pytest.raises(ValueError, match=r"tracks must be a tensor \[B, T, N, 2\], got \(9, 1, 2\)"):
        TrackControl(good.tracks[0], good.visible[0]).validate()
    with pytest.raises(TypeError, match="tracks must be a float.*torch.int64"):
        TrackControl(good.tracks.nan_to_num().long(), good.visible).validate()
    with pytest.raises(TypeError, match="visible must be a bool.*dtype torch.float32"):
        TrackControl(good.tracks, good.visible.float()).validate()
    with pytest.raises(ValueError, match=r"visible must be \[B, T, N\] = \[1, 9, 1\]"):
        TrackControl(good.tracks, good.visible[:, :5]).validate()
    with pytest.raises(TypeError, match="ids must be an integer"):
        TrackControl(good.tracks, good.visible, ids=torch.zeros(1, 1)).validate()
    with pytest.raises(ValueError, match=r"ids must be \[B, N\] = \[1, 1\]"):
        TrackControl(good.tracks, good.visible, ids=torch.zeros(1, 2, dtype=torch.long)).validate()
    nan = one_track(centre(1), centre(1))
    nan.tracks[0, 4, 0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"finite at visible points.*\(b, t, n\) = \(0, 4, 0\)"):
        nan.validate()
    out = one_track(centre(1), centre(1))
    out.tracks[0, 8, 0] = torch.tensor([31.5, 3.0])  # x = W - 0.5 is already outside
    with pytest.raises(ValueError, match=r"\(b, t, n, x, y\) = \(0, 8, 0, 31.5, 3.0\)"):
        out.validate(FRAME)
    out.validate()  # without a frame size only finiteness is checked
    with pytest.raises(ValueError, match="frame_size must be"):
        good.validate((32,))


# ---------------------------------------------------------------------------------------------------------
# pins and drags


def test_pin_tracks_are_static_and_visible():
    points = torch.tensor([[[3.0, 4.0], [10.5, 0.0]]])
    control = pin_tracks(points, 5)
    assert control.tracks.shape == (1, 5, 2, 2) and control.visible.all()
    assert torch.equal(control.tracks, points[:, None].expand(1, 5, 2, 2))
    control.tracks[0, 0, 0, 0] = -1.0  # its own storage: editing one frame changes nothing else
    assert control.tracks[0, 1, 0, 0] == 3.0 and points[0, 0, 0] == 3.0
    with pytest.raises(ValueError, match=r"points must be a tensor \[B, N, 2\]"):
        pin_tracks(points[0], 5)
    with pytest.raises(ValueError, match="num_frames"):
        pin_tracks(points, 0)


def two_objects(H: int = 16, W: int = 16) -> torch.Tensor:
    """Frame-0 instance mask: object 0 in rows 2..9 x cols 2..9, object 1 in rows 11..14 x cols 10..14."""
    mask = torch.full((H, W), -1, dtype=torch.long)
    mask[2:10, 2:10] = 0
    mask[11:15, 10:15] = 1
    return mask


def test_expand_drag_puts_a_grid_on_the_dragged_object_only():
    mask = two_objects()
    control = expand_drag((4.0, 5.0), (7.0, 1.0), mask=mask, num_frames=5, spacing=2.0)
    first = control.tracks[0, 0]  # (N, 2)
    cols, rows = first[:, 0].long(), first[:, 1].long()
    assert (mask[rows, cols] == 0).all()  # all on object 0, none on object 1 or the background
    # the grid through (4, 5) with step 2 covers object 0's columns 2..9 x rows 3..9 at even x, odd y
    expected = {(x, y) for x in range(2, 10, 2) for y in range(3, 10, 2)}
    assert {(int(x), int(y)) for x, y in first.tolist()} == expected
    assert [4.0, 5.0] in first.tolist()  # the start point itself is a track


def test_expand_drag_moves_with_the_displacement():
    control = expand_drag((4.0, 5.0), (7.0, 1.0), mask=two_objects(), num_frames=5, spacing=2.0)
    d = control.tracks[0] - control.tracks[0, :1]  # (T, N, 2) displacement from frame 0
    for t, frac in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        torch.testing.assert_close(d[t], torch.tensor([3.0, -4.0]).expand_as(d[t]) * frac)
    # tracks pushed out of the top edge become invisible there; the others stay visible throughout
    top = control.tracks[0, :, :, 1] < -0.5
    assert top.any() and torch.equal(control.visible[0], ~top)
    control.validate(frame_size=(16, 16))


def test_expand_drag_frames_path_bool_mask_and_errors():
    mask = two_objects()
    late = expand_drag((12, 12), (13, 12), mask=mask, num_frames=9, start_frame=2, end_frame=4)
    assert not late.visible[0, :2].any() and late.visible[0, 2:].all()  # partial length
    dx = late.tracks[0, :, 0, 0] - 12
    torch.testing.assert_close(dx, torch.tensor([0, 0, 0, 0.5, 1, 1, 1, 1, 1]))  # moves 2..4, holds after
    path = torch.tensor([[12.0, 12.0], [12.0, 13.0], [11.0, 13.0]])
    along = expand_drag((12, 12), path, mask=mask, num_frames=3, spacing=100.0)
    torch.testing.assert_close(along.tracks[0, :, 0], path)  # one track (huge spacing) following the path
    user = expand_drag((12, 12), (12, 13), mask=mask == 1, num_frames=3, spacing=2.0)
    assert user.num_tracks == 6  # bool mask: its True region (cols 10..14 x rows 11..14, even x, even y)
    with pytest.raises(ValueError, match=r"no object under the start point.*background"):
        expand_drag((0, 0), (3, 3), mask=mask, num_frames=5)
    with pytest.raises(ValueError, match="no object under the start point"):
        expand_drag((0, 0), (3, 3), mask=mask == 1, num_frames=5)
    with pytest.raises(ValueError, match="outside the frame"):
        expand_drag((16.0, 3), (3, 3), mask=mask, num_frames=5)
    with pytest.raises(ValueError, match=r"path must be a float tensor \[T, 2\] = \[5, 2\]"):
        expand_drag((4, 4), path, mask=mask, num_frames=5)
    with pytest.raises(ValueError, match="end_frame cannot be combined"):
        expand_drag((4, 4), path, mask=mask, num_frames=3, end_frame=2)
    with pytest.raises(TypeError, match="mask must hold int instance ids"):
        expand_drag((4, 4), (5, 5), mask=mask.float(), num_frames=5)


# ---------------------------------------------------------------------------------------------------------
# training-time sampling


def ground_truth(B: int = 64, T: int = 5, N: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tracks = torch.rand(B, T, N, 2, generator=g) * 16 - 0.5
    visible = torch.rand(B, T, N, generator=g) > 0.3
    return tracks, visible


def test_sample_tracks_counts_candidates_and_padding():
    tracks, visible = ground_truth()
    s = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(1), min_tracks=2, max_tracks=10)
    assert s.tracks.shape == tracks.shape and s.visible.shape == visible.shape
    kept = s.visible.any(dim=1)  # (B, N)
    counts = kept.sum(dim=1)
    first = visible[:, 0].sum(dim=1)
    assert ((counts >= first.clamp(max=2)) & (counts <= 10)).all() and counts.unique().numel() > 3
    assert not (kept & ~visible[:, 0]).any()  # only tracks visible at frame 0 are kept
    assert torch.equal(s.visible, visible & kept[:, None])  # kept tracks keep their own visibility
    assert all(len(set(row.tolist())) == 32 for row in s.ids) and s.ids.min() >= 0 and s.ids.max() < 4096
    anywhere = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(1), require_first_visible=False)
    assert (anywhere.visible.any(1) & ~visible[:, 0]).any()


def test_sample_tracks_is_deterministic_and_log_uniform():
    tracks, visible = ground_truth()
    a = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(7))
    b = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(7))
    c = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.visible, b.visible) and torch.equal(a.ids, b.ids)
    assert not torch.equal(a.visible, c.visible) and not torch.equal(a.ids, c.ids)
    # log-uniform on [1, 64]: about half the draws keep at most 8 tracks (uniform would give 1/8)
    everyone = torch.ones(2000, 1, 64, dtype=torch.bool)
    many = sample_tracks(torch.zeros(2000, 1, 64, 2), everyone, generator=torch.Generator().manual_seed(0), max_id=64)
    counts = many.visible[:, 0].sum(dim=1)
    assert counts.min() >= 1 and counts.max() <= 64
    assert 0.4 < (counts <= 8).float().mean() < 0.6


def test_sample_tracks_edge_cases_and_errors():
    tracks, visible = ground_truth(B=2, N=4)
    visible[0, 0] = False  # clip 0 has no candidates: an empty prompt
    s = sample_tracks(tracks, visible, generator=torch.Generator().manual_seed(0), min_tracks=3)
    assert not s.visible[0].any() and s.visible[1].any(1).sum() >= min(3, int(visible[1, 0].sum()))
    with pytest.raises(ValueError, match="max_id must be an int >= N = 4"):
        sample_tracks(tracks, visible, max_id=3)
    with pytest.raises(ValueError, match="max_tracks must be"):
        sample_tracks(tracks, visible, min_tracks=3, max_tracks=2)
    with pytest.raises(TypeError, match="visible must be a bool"):
        sample_tracks(tracks, visible.long())


def test_world_batch_round_trip(tmp_path):
    """Simulator tracks -> sample_tracks -> rasterize, and a drag on the simulator's mask."""
    physics_worlds = pytest.importorskip("physics.worlds")
    config = physics_worlds.WorldConfig(
        resolution=16, frames=5, num_tracks=8, rigid_particles_per_object=24, batch_size=2, supersample=1
    )
    out = physics_worlds.generate_dataset(config, tmp_path / "w", 2, shard_size=2, seed=3, progress=False)
    ds = physics_worlds.WorldDataset(out)
    batch = physics_worlds.WorldDataset.collate([ds[0], ds[1]])
    control = sample_tracks(batch["tracks"], batch["visible"], generator=torch.Generator().manual_seed(0))
    vol = rasterize_tracks(control, frame_size=(16, 16), latent_grid=(2, 4, 4), spatial_factor=4, dim=8)
    assert vol.shape == (2, 8, 2, 4, 4) and vol.abs().sum() > 0
    mask = batch["mask"][0, 0]
    on = (mask >= 0).nonzero()[0]
    drag = expand_drag((float(on[1]), float(on[0])), (8.0, 8.0), mask=mask, num_frames=5, spacing=2.0)
    assert drag.num_tracks >= 1
    drag.validate(frame_size=(16, 16))


def carry(control: TrackControl, frame0: torch.Tensor) -> torch.Tensor:
    """carry_first_frame on GRID's 4 x 4 cells of S pixels, as [T', H', W', D]."""
    out = carry_first_frame(control, frame0, grid=GRID, cell_size=S)
    return out.view(GRID[0], GRID[1], GRID[2], -1)


def test_carry_moves_the_start_cells_feature_along_the_track():
    frame0 = torch.eye(16)[None]  # (1, 16 cells, D = 16): cell h' * 4 + w' holds one-hot(h' * 4 + w')
    tracks = torch.tensor([[centre(2), centre(1)], [centre(0), centre(3)], [centre(1) + S / 2, centre(3)]])
    control = TrackControl(tracks[None, [0, 0, 0, 0, 1, 1, 1, 1, 2], None], torch.ones(1, 9, 1, dtype=torch.bool))
    out = carry(control, frame0)
    assert out[0].abs().sum() == 0  # frame 0 already shows its content
    assert torch.equal(out[1, 3, 0], frame0[0, 1 * 4 + 2])  # start cell (h', w') = (1, 2) now at (3, 0)
    assert out[1].abs().sum() == 1
    half = 0.5 * frame0[0, 6]  # half a track lands on each of (3, 1) and (3, 2): faded, not renormalised
    assert torch.equal(out[2, 3, 1], half) and torch.equal(out[2, 3, 2], half) and out[2].abs().sum() == 1


def test_carry_reads_bilinearly_averages_overlaps_and_skips_late_tracks():
    frame0 = torch.arange(16.0).view(1, 16, 1)  # (1, 16, D = 1): cell index as the feature
    start = torch.tensor([[centre(0) + S / 4, centre(0)], [centre(3), centre(3)], [centre(2), centre(2)]])
    end = torch.tensor([[centre(1), centre(1)], [centre(1), centre(1)], [centre(0), centre(0)]])
    tracks = torch.stack([start] * 4 + [end] * 5)[None]  # (1, 9, 3, 2)
    visible = torch.ones(1, 9, 3, dtype=torch.bool)
    visible[0, 0, 2] = False  # track 2 starts at frame 1: no first-frame content to carry
    out = carry(TrackControl(tracks, visible), frame0)
    read0 = 0.75 * 0 + 0.25 * 1  # track 0 starts a quarter of the way from cell (0, 0) to (0, 1)
    assert out[1, 1, 1, 0].item() == pytest.approx((read0 + 15) / 2)  # two tracks in one cell: their mean
    assert out[1, 0, 0, 0] == 0 and out[2, 0, 0, 0] == 0  # the late track wrote nothing
    assert torch.equal(carry(TrackControl(tracks, visible & False), frame0), torch.zeros(3, 4, 4, 1))
    with pytest.raises(ValueError, match=r"frame0 must be \[B, H' W', D\] = \[1, 16, D\]"):
        carry_first_frame(TrackControl(tracks, visible), frame0[:, :8], grid=GRID, cell_size=S)


# ---------------------------------------------------------------------------------------------------------
# TrackAdapter


def tiny_backbone(num_layers: int = 3):
    from wmgen.models.dit import DiTConfig, VideoDiT

    config = DiTConfig(
        dim=32, num_layers=num_layers, num_heads=2, ffn_dim=64, text_dim=16, in_channels=4, out_channels=4
    )
    backbone = VideoDiT(config, generator=torch.Generator().manual_seed(0)).requires_grad_(False)
    with torch.no_grad():  # a trained-looking head, so that hints reach the output
        backbone.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    return backbone


def adapter_inputs(seed: int = 0):
    """Latents of 2 clips of 5 frames of 32 x 32 pixels (T' = 2, 4 x 4 latents) and their tracks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 2, 4, 4, generator=g)
    t = torch.rand(2, generator=g)
    context = torch.randn(2, 3, 16, generator=g)
    tracks = torch.rand(2, 5, 6, 2, generator=g) * 31 - 0.5
    control = TrackControl(tracks, torch.rand(2, 5, 6, generator=g) > 0.2)
    return x, t, context, control


def test_track_adapter_zero_init_leaves_backbone_unchanged_and_hints_declared_blocks():
    from controls.tracks import TrackAdapter

    backbone = tiny_backbone()
    adapter = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8, num_blocks=2, target_blocks=[0, 2])
    assert adapter.kind == "tracks" and adapter.blocks == (0, 2)
    x, t, context, control = adapter_inputs()
    emb = backbone.embed(x, t, context=context)
    hints = adapter.hints(emb, control)
    assert set(hints) == {0, 2} and all(h.shape == emb.tokens.shape for h in hints.values())
    assert torch.equal(backbone(x, t, context=context, hints=hints), backbone(x, t, context=context))
    features = adapter.features(control)
    assert features.shape == (2, 8, 2, 4, 4) and features.abs().sum() > 0


def test_track_adapter_gradients_and_control_effect():
    from controls.tracks import TrackAdapter

    backbone = tiny_backbone()
    adapter = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8, generator=torch.Generator().manual_seed(2))
    x, t, context, control = adapter_inputs()

    def loss(c: TrackControl) -> torch.Tensor:
        emb = backbone.embed(x, t, context=context)
        return backbone(x, t, context=context, hints=adapter.hints(emb, c)).square().mean()

    loss(control).backward()  # at init only the output projections see gradient (ControlNet's argument)
    assert all(p.grad.abs().sum() > 0 for p in adapter.zero_proj.parameters())
    assert all(p.grad is None for p in backbone.parameters())
    with torch.no_grad():  # as after some training: every parameter of the branch is on the gradient path
        for p in (*adapter.zero_proj.parameters(), *adapter.control_embed.parameters()):
            p.normal_(std=0.1, generator=torch.Generator().manual_seed(3))
    adapter.zero_grad()
    loss(control).backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    moved = TrackControl(control.tracks.flip(2), control.visible)  # same points, other tracks' ids
    with torch.no_grad():
        assert not torch.allclose(loss(control), loss(moved))


def test_track_adapter_carry_adds_the_carried_first_frame_tokens():
    from controls.tracks import TrackAdapter

    backbone = tiny_backbone()
    adapter = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8, carry=True)
    x, t, context, control = adapter_inputs()
    emb = backbone.embed(x, t, context=context)
    assert torch.equal(backbone(x, t, context=context, hints=adapter.hints(emb, control)),
                       backbone(x, t, context=context))  # fmt: skip  # zero-initialised like the rest
    plain = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8)
    plain.load_state_dict(adapter.state_dict(), strict=False)
    with torch.no_grad():
        for m in (adapter.carry_embed, *adapter.zero_proj, adapter.control_embed):
            for p in m.parameters():
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(5))
        plain.load_state_dict({k: v for k, v in adapter.state_dict().items() if not k.startswith("carry")})
        frame0 = emb.tokens[:, :4]  # (B, 2 x 2 tokens, D): token cells of 16 pixels
        carried = carry_first_frame(control, frame0, grid=emb.grid, cell_size=16)
        expected = plain.embed_control(emb, control) + adapter.carry_embed(carried)
        assert torch.allclose(adapter.embed_control(emb, control), expected, atol=1e-6)
        assert carried.abs().sum() > 0
    emb = backbone.embed(x, t, context=context)
    backbone(x, t, context=context, hints=adapter.hints(emb, control)).square().mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in adapter.carry_embed.parameters())

    from wmgen.models.dit import DiTConfig, VideoDiT

    tall = VideoDiT(DiTConfig(dim=32, num_layers=1, num_heads=2, ffn_dim=64, text_dim=16, in_channels=4,
                              out_channels=4, patch=(2, 2, 2)))  # fmt: skip
    with pytest.raises(ValueError, match=r"carry=True .* patch must be \(1, p, p\), got \(2, 2, 2\)"):
        TrackAdapter(tall, frame_size=(32, 32), carry=True)
    with pytest.raises(TypeError, match="carry must be a bool, got 1"):
        TrackAdapter(backbone, frame_size=(32, 32), carry=1)


def test_track_adapter_checks_controls_and_round_trips(tmp_path):
    from controls.base import ControlAdapter
    from controls.tracks import TrackAdapter

    backbone = tiny_backbone(num_layers=2)
    with pytest.raises(ValueError, match=r"frame_size \(H, W\) = \(30, 32\) must be multiples of spatial_factor = 8"):
        TrackAdapter(backbone, frame_size=(30, 32))
    with pytest.raises(ValueError, match="id_dim must be an even int"):
        TrackAdapter(backbone, frame_size=(32, 32), id_dim=7)
    adapter = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8, num_blocks=1, encoder=False)
    x, t, context, control = adapter_inputs()
    emb = backbone.embed(x, t, context=context)
    with pytest.raises(TypeError, match="must be a TrackControl, got Tensor"):
        adapter.hints(emb, control.tracks)
    far = TrackControl(control.tracks * 2, control.visible)
    with pytest.raises(ValueError, match=r"frame \[-0.5, 31.5\).*\(b, t, n, x, y\)"):
        adapter.hints(emb, far)
    with pytest.raises(ValueError, match="T = 1 \\+ 4 k frames"):
        adapter.hints(emb, TrackControl(control.tracks[:, :4], control.visible[:, :4]))
    nine = pin_tracks(control.tracks[:, 0], 9)  # valid tracks, but 9 frames for latents of T' = 2
    with pytest.raises(ValueError, match=r"\(T, H, W\) = \(9, 32, 32\).*needs videos of \(T, H, W\) = \(5, 32, 32\)"):
        adapter.hints(emb, nine)
    assert adapter.encoder is None and torch.equal(adapter.features(control), rasterize_tracks(
        control, frame_size=(32, 32), latent_grid=(2, 4, 4), spatial_factor=8, dim=8))  # fmt: skip

    trained = TrackAdapter(backbone, frame_size=(32, 32), id_dim=8, target_blocks=[1, 0], num_blocks=2, carry=True)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.1)
    trained.save_pretrained(tmp_path / "tracks")
    loaded = ControlAdapter.from_pretrained(tmp_path / "tracks")
    assert type(loaded) is TrackAdapter and loaded.constructor_args() == trained.constructor_args()
    a, b = trained.hints(emb, control), loaded.hints(emb, control)
    assert a.keys() == b.keys() == {0, 1} and all(torch.equal(a[k], b[k]) for k in a)
