"""Flow pictures: each view writes a real PNG/GIF (tiny grids); frame counts, interpolation, atomic writes."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from wmgen.flow import viz
from wmgen.flow.solvers import Trajectory, integrate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rotation(x, t):
    """A rotation whose speed grows with t: v = (1 + t) (-y, x)."""
    return (1 + t)[:, None] * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def shift(x, t):
    return torch.tensor([2.0, -1.0]).expand_as(x)


@pytest.fixture
def trajectory():
    x0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    return integrate(rotation, x0, method="rk4", steps=6, return_path=True)  # 7 states


def assert_png(path, min_size=(100, 100)):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        # a real picture, not a blank canvas
        assert np.asarray(im.convert("L")).std() > 5


def test_quiver_writes_png_with_one_panel_per_time(tmp_path, trajectory):
    out = tmp_path / "sub" / "quiver.png"
    fig = viz.quiver(rotation, [0.0, 0.5, 1.0], grid=5, trajectory=trajectory, path=out, dpi=40)
    assert_png(out)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("t = ")]
    assert [ax.get_title() for ax in panels] == ["t = 0.00", "t = 0.50", "t = 1.00"]
    assert len(fig.axes) == 4  # 3 panels + colour bar
    assert list(tmp_path.glob("sub/.*")) == []  # no temporary file left behind


def test_quiver_arrows_follow_the_field(tmp_path):
    fig = viz.quiver(shift, [0.3], grid=4, dpi=40)
    q = [c for c in fig.axes[0].collections if hasattr(c, "U")][0]
    assert np.allclose(q.U, 2.0) and np.allclose(q.V, -1.0)


def test_streamlines_writes_png(tmp_path):
    out = tmp_path / "stream.png"
    fig = viz.streamlines(rotation, [0.0, 1.0], grid=8, density=0.4, path=out, dpi=40)
    assert_png(out)
    assert sum(ax.get_title().startswith("t = ") for ax in fig.axes) == 2


def test_particles_writes_png_with_density_row(tmp_path, trajectory):
    out = tmp_path / "particles.png"
    fig = viz.particles(trajectory, snapshots=3, bins=16, n_paths=20, path=out, dpi=40)
    assert_png(out)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["t = 0.00", "t = 0.50", "t = 1.00"]
    assert len(fig.axes) == 6  # particles row + density row
    assert sum(len(ax.images) for ax in fig.axes) == 3  # one histogram image per snapshot
    fig = viz.particles(trajectory, snapshots=[0.25, 0.75], bins=8, n_paths=5)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["t = 0.25", "t = 0.75"]


@pytest.mark.parametrize("frames, expected", [(None, 7), (4, 4)])
def test_particles_gif_frame_count(tmp_path, trajectory, frames, expected):
    out = tmp_path / "flow.gif"
    written = viz.particles_gif(
        trajectory, out, frames=frames, size=1.5, dpi=40, reference=torch.zeros(10, 2), fps=10, hold=0.5
    )
    assert written == out and out.read_bytes()[:6] == b"GIF89a"
    images = iio.imread(out, index=None)
    assert images.shape[0] == expected and images.shape[-1] == 3
    assert not np.array_equal(images[0], images[-1])  # particles moved
    with Image.open(out) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations[0] == pytest.approx(100, abs=10) and durations[-1] == pytest.approx(600, abs=10)


def test_state_at_interpolates_linearly_and_handles_backward_solves():
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    states = torch.tensor([[[0.0, 0.0]], [[1.0, 2.0]], [[3.0, 2.0]]])  # [3, 1, 2]
    traj = Trajectory(times, states, nfe=0, n_accepted=2)
    assert torch.allclose(viz.state_at(traj, 0.25), torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(viz.state_at(traj, 0.75), torch.tensor([[2.0, 2.0]]))
    assert torch.allclose(viz.state_at(traj, 1.0), torch.tensor([[3.0, 2.0]]))
    backward = Trajectory(times.flip(0), states.flip(0), nfe=0, n_accepted=2)
    assert torch.allclose(viz.state_at(backward, 0.25), torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"t must lie in the trajectory's span \[0.0, 1.0\], got 1.5"):
        viz.state_at(traj, 1.5)


def test_comparison_figures(tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 2, generator=g), torch.randn(400, 2, generator=g) + 1
    viz.samples_vs_data(a, b, path=tmp_path / "samples.png", dpi=40)
    assert_png(tmp_path / "samples.png")
    grid = torch.rand(12, 12, generator=g)
    fig = viz.density_grid({"a": a, "b": b, "grid": grid}, bins=10, path=tmp_path / "density.png", dpi=40)
    assert_png(tmp_path / "density.png")
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert [im.shape for im in shown] == [(10, 10), (10, 10), (12, 12)]
    # histograms are densities: they integrate to the fraction of points inside the box
    cell = (9.0 / 10) ** 2
    assert float(shown[0].sum()) * cell == pytest.approx(1.0, abs=1e-3)
    viz.loss_curve(list(np.linspace(2, 1, 120)), lrs=[1e-3] * 120, smooth=10, path=tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png")


def test_failed_write_keeps_the_previous_file(tmp_path, trajectory, monkeypatch):
    out = tmp_path / "flow.gif"
    viz.particles_gif(trajectory, out, frames=2, size=1.0, dpi=30)
    before = out.read_bytes()

    def broken(path, *args, **kwargs):
        path.write_bytes(b"GIF89a half")  # a partial file at the temporary name, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(viz.iio, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        viz.particles_gif(trajectory, out, frames=3, size=1.0, dpi=30)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flow.gif"]


def test_bad_inputs(tmp_path, trajectory):
    with pytest.raises(ValueError, match=r"bounds must be \(x_min, x_max, y_min, y_max\)"):
        viz.quiver(rotation, [0.0], bounds=(1, -1, 0, 1))
    with pytest.raises(ValueError, match=r"times must be .* in \[0, 1\]"):
        viz.streamlines(rotation, [1.5])
    with pytest.raises(ValueError, match=r"velocity_fn must return \[N, 2\]"):
        viz.quiver(lambda x, t: x[:, :1], [0.0], grid=3)
    with pytest.raises(ValueError, match=r"states \[S \+ 1, B, 2\].*\(3, 4, 3\)"):
        viz.particles(Trajectory(torch.linspace(0, 1, 3), torch.zeros(3, 4, 3), 0, 2))
    with pytest.raises(TypeError, match="trajectory must be a Trajectory"):
        viz.particles(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="path must end in .gif"):
        viz.particles_gif(trajectory, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"panels\['p'\] must be points \[N, 2\] or a density grid"):
        viz.density_grid({"p": torch.zeros(5, 3)})
