"""Conditional flow-matching loss."""

import pytest
import torch

from wmgen.flow.objectives import FlowMatching, flow_matching_loss
from wmgen.flow.paths import AffinePath, CosineScheduler


def test_loss_is_zero_for_the_exact_conditional_velocity():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(16, 3, generator=g)
    x0 = torch.randn(16, 3, generator=g)
    fm = FlowMatching()
    # CondOT: the conditional target is x1 - x0, which a model that knows (x0, x1) predicts exactly.
    assert fm.loss(lambda x, t: x1 - x0, x1, x0=x0, generator=g).item() == 0.0
    assert fm.loss(lambda x, t: torch.zeros_like(x), x1, x0=x0, generator=g).item() > 0.5


@pytest.mark.parametrize("prediction", ["x1", "x0"])
def test_x1_and_x0_predictions_convert_to_the_same_target(prediction):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    x0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    fm = FlowMatching(AffinePath(CosineScheduler()), prediction=prediction)
    oracle = x1 if prediction == "x1" else x0
    loss = fm.loss(lambda x, t: oracle, x1, x0=x0, generator=torch.Generator().manual_seed(2))
    assert loss.item() < 1e-20


def test_mean_zero_velocity_loss_matches_closed_form():
    # With v = 0 under CondOT the loss is E||x1 - x0||^2 / D = 2 for independent standard normals.
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(100_000, 2, generator=g)
    loss = FlowMatching().loss(lambda x, t: torch.zeros_like(x), x1, generator=g)
    assert abs(loss.item() - 2.0) < 0.03


def test_mask_weights_and_shape_errors():
    x1, x0 = torch.ones(2, 4), torch.zeros(2, 4)
    s = AffinePath().sample(x0, x1, torch.tensor([0.3, 0.6]))
    pred = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(2, 4)
    assert flow_matching_loss(pred, s, mask=mask).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="target's shape"):
        flow_matching_loss(torch.zeros(2, 3), s)
    with pytest.raises(ValueError, match="prediction must be one of"):
        FlowMatching(prediction="eps")
