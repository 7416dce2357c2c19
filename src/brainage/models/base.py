"""The interface every brain-age network implements, in z-scored age units."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F


class AgeRegressor(nn.Module):
    """A network that maps a T1 volume ``(B, 1, X, Y, Z)`` to z-scored age.

    ``forward`` returns the network's raw output, ``loss`` compares it with z-scored ages
    ``(B,)`` and ``predict_z`` turns it into z-scored ages ``(B,)``. The base class implements a
    plain regression head (raw output ``(B, 1)``, mean squared error); a model with another head
    (soft-label bins, for example) overrides ``loss`` and ``predict_z``. ``hparams`` holds every
    constructor argument, so ``build_model(name, **model.hparams)`` rebuilds the same network.
    """

    name: ClassVar[str]
    hparams: dict[str, Any]

    def loss(self, raw: torch.Tensor, target_z: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the prediction and the z-scored age, computed in fp32."""
        return F.mse_loss(self.predict_z(raw), target_z.float())

    def predict_z(self, raw: torch.Tensor) -> torch.Tensor:
        """Z-scored age ``(B,)`` from the raw output, in fp32."""
        return raw.float().reshape(raw.shape[0])
