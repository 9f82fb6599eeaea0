"""VelocityMLP: shapes, time dependence, zero-initialised head, a gradient step, seeded initialisation."""

import pytest
import torch

from wmgen.models.mlp import SinusoidalTimeEmbedding, VelocityMLP


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_shapes_and_untrained_field_is_zero(dim):
    model = VelocityMLP(dim=dim, hidden=16, depth=2, time_embed=8)
    x, t = torch.randn(7, dim), torch.rand(7)
    v = model(x, t)
    assert v.shape == (7, dim) and v.dtype == torch.float32
    assert torch.equal(v, torch.zeros_like(v))  # zero head: identity flow before training
    assert model(x, torch.tensor(0.3)).shape == (7, dim)  # scalar t broadcasts


def test_gradient_step_reduces_loss_and_reaches_every_parameter():
    model = VelocityMLP(dim=2, hidden=32, depth=2, time_embed=16, generator=gen())
    x, t = torch.randn(64, 2, generator=gen(1)), torch.rand(64, generator=gen(2))
    target = torch.stack([-x[:, 1], x[:, 0]], 1) * (1 + t[:, None])  # a time-dependent rotation field
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = ((model(x, t) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if not losses:  # after the first step the head is non-zero and gradients reach every layer
            assert model.out.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    loss = ((model(x, t) - target) ** 2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert losses[-1] < 0.5 * losses[0]


def test_output_depends_on_time():
    model = VelocityMLP(dim=2, hidden=16, depth=1, time_embed=8, generator=gen())
    torch.nn.init.normal_(model.out.weight, generator=gen(1))
    x = torch.randn(5, 2, generator=gen(2))
    assert not torch.allclose(model(x, torch.zeros(5)), model(x, torch.ones(5)))


def test_seeded_initialisation_is_reproducible():
    a = VelocityMLP(hidden=16, depth=2, generator=gen(3))
    b = VelocityMLP(hidden=16, depth=2, generator=gen(3))
    c = VelocityMLP(hidden=16, depth=2, generator=gen(4))
    states = a.state_dict().items(), b.state_dict().values(), c.state_dict().values()
    for (name, pa), pb, pc in zip(*states, strict=True):
        assert torch.equal(pa, pb), name
        if pa.abs().sum() > 0 and "norm" not in name:
            assert not torch.equal(pa, pc), name


def test_time_embedding_features():
    emb = SinusoidalTimeEmbedding(8, max_freq=50.0)
    e = emb(torch.tensor([0.0, 0.5]))
    assert e.shape == (2, 8)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin 0, cos 0
    assert torch.allclose(e.pow(2)[:, :4] + e.pow(2)[:, 4:], torch.ones(2, 4))


def test_bad_inputs():
    model = VelocityMLP(dim=2, hidden=8, depth=1, time_embed=4)
    with pytest.raises(ValueError, match=r"x must be \[B, 2\], got \(3, 3\)"):
        model(torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"t must be \[B\] with B=3 or a scalar, got \(4,\)"):
        model(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        VelocityMLP(hidden=0)
    with pytest.raises(ValueError, match="dim must be an even int >= 2"):
        VelocityMLP(time_embed=5)
