"""Training objectives. Conditional flow matching (Lipman et al. 2023, eq. 9 / Theorem 2):

    L_CFM = E_{t, x0, x1} || v_theta(x_t, t) - (d_alpha_t x1 + d_sigma_t x0) ||^2

whose minimiser is the marginal velocity field that transports the source to the data distribution.
Models that predict x1 or x0 instead of v are trained on the same sample by converting their output to a
velocity with the path (``prediction=``), so one sampler serves every parameterisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from wmgen.flow.paths import AffinePath, PathSample
from wmgen.flow.schedules import TimeSampler, UniformTime

__all__ = ["FlowMatching", "flow_matching_loss"]

Prediction = Literal["velocity", "x1", "x0"]


def flow_matching_loss(pred_velocity: Tensor, sample: PathSample, *, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between a predicted velocity [B, ...] and the path's target velocity.

    Args:
        pred_velocity: model output as a velocity, [B, ...].
        sample: the ``PathSample`` the prediction was made on.
        mask: optional weights broadcastable to [B, ...] (e.g. 0 on conditioning frames); the loss is the
            weighted mean over the masked elements.
    Returns:
        scalar loss.
    """
    if pred_velocity.shape != sample.dx_t.shape:
        raise ValueError(
            f"pred_velocity must have the target's shape {tuple(sample.dx_t.shape)}, "
            f"got {tuple(pred_velocity.shape)}"
        )
    err = (pred_velocity.float() - sample.dx_t.float()) ** 2
    if mask is None:
        return err.mean()
    w = torch.broadcast_to(mask.to(err.dtype), err.shape)
    return (err * w).sum() / w.sum().clamp_min(1.0)


class FlowMatching:
    """Conditional flow matching on an affine path with a training-time sampler.

    Example::

        fm = FlowMatching(AffinePath(CondOTScheduler()), LogitNormalTime())
        loss = fm.loss(lambda x, t: model(x, t), x1, generator=g)
    """

    def __init__(
        self,
        path: AffinePath | None = None,
        time_sampler: TimeSampler | None = None,
        prediction: Prediction = "velocity",
    ):
        if prediction not in ("velocity", "x1", "x0"):
            raise ValueError(f"prediction must be one of ['velocity', 'x1', 'x0'], got {prediction!r}")
        self.path = path if path is not None else AffinePath()
        self.time_sampler = time_sampler if time_sampler is not None else UniformTime()
        self.prediction = prediction

    def sample(
        self, x1: Tensor, *, x0: Tensor | None = None, generator: torch.Generator | None = None
    ) -> PathSample:
        """Draw t and (unless given) a Gaussian source x0 for data x1 [B, ...], and return the path sample."""
        t = self.time_sampler.sample(x1.shape[0], generator=generator, device=x1.device).to(x1.dtype)
        if x0 is None:
            x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        return self.path.sample(x0=x0, x1=x1, t=t)

    def to_velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert the model's raw output to a velocity according to ``prediction``."""
        if self.prediction == "x1":
            return self.path.x1_to_velocity(pred, x_t, t)
        if self.prediction == "x0":
            return self.path.x0_to_velocity(pred, x_t, t)
        return pred

    def loss(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        x1: Tensor,
        *,
        x0: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One Monte-Carlo estimate of L_CFM for a batch x1 [B, ...]; ``model(x_t, t)`` returns [B, ...]."""
        s = self.sample(x1, x0=x0, generator=generator)
        return flow_matching_loss(self.to_velocity(model(s.x_t, s.t), s.x_t, s.t), s, mask=mask)
