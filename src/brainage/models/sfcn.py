"""Simple Fully Convolutional Network of Peng et al. 2021 (Med Image Anal 68:101871), ``sfcn``.

Six blocks: Conv3d k3 + BN + MaxPool(2) + ReLU for the first five, a 1×1×1 Conv3d + BN + ReLU for
the last; global average pooling, dropout, a 1×1×1 convolution to one logit per age bin and a
log-softmax. Training targets are soft labels: a Gaussian (sd ``label_sigma``) integrated over each
bin; the loss is the Kullback–Leibler divergence; the prediction is the expected bin centre. Ages
are z-scored, so the bins span ``age_range`` in z units (−4..4 by default). Channel widths are the
paper's [32, 64, 128, 256, 256, 64] times ``width``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from brainage.models.base import AgeRegressor

PAPER_CHANNELS = (32, 64, 128, 256, 256, 64)


def soft_labels(target_z: torch.Tensor, edges: torch.Tensor, sigma: float) -> torch.Tensor:
    """Probability mass of N(target, sigma²) in each bin, renormalised to sum to one: ``(B, n_bins)``.

    Targets outside the bins are moved onto the nearest edge, so every row is a distribution.
    """
    target = target_z.float().clamp(edges[0], edges[-1]).unsqueeze(1)
    cdf = 0.5 * (1.0 + torch.erf((edges.unsqueeze(0) - target) / (sigma * math.sqrt(2.0))))
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / mass.sum(dim=1, keepdim=True)


class SFCN(AgeRegressor):
    """Lightweight fully convolutional brain-age network with a soft-label (age-bin) head."""

    name = "sfcn"
    bin_edges: torch.Tensor  # buffers, registered in __init__
    bin_centres: torch.Tensor

    def __init__(
        self,
        width: float = 1.0,
        n_bins: int = 40,
        age_range: Sequence[float] = (-4.0, 4.0),
        label_sigma: float = 0.2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        low, high = (float(v) for v in age_range)
        if width <= 0 or n_bins < 2 or high <= low or label_sigma <= 0:
            raise ValueError("sfcn needs width > 0, n_bins >= 2, age_range low < high and label_sigma > 0")
        self.hparams = {
            "width": width,
            "n_bins": n_bins,
            "age_range": [low, high],
            "label_sigma": label_sigma,
            "dropout": dropout,
        }
        channels = [max(1, round(c * width)) for c in PAPER_CHANNELS]
        blocks: list[nn.Module] = []
        in_channels = 1
        for i, out_channels in enumerate(channels):
            last = i == len(channels) - 1
            layers: list[nn.Module] = [
                nn.Conv3d(in_channels, out_channels, kernel_size=1 if last else 3, padding=0 if last else 1),
                nn.BatchNorm3d(out_channels),
            ]
            if not last:
                layers.append(nn.MaxPool3d(2))
            layers.append(nn.ReLU(inplace=True))
            blocks.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Dropout(dropout),
            nn.Conv3d(in_channels, n_bins, kernel_size=1),
        )
        edges = torch.linspace(low, high, n_bins + 1)
        self.register_buffer("bin_edges", edges, persistent=False)
        self.register_buffer("bin_centres", (edges[1:] + edges[:-1]) / 2, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the age bins, ``(B, n_bins)``, in fp32."""
        logits = self.classifier(self.features(x)).flatten(1)
        return F.log_softmax(logits.float(), dim=1)

    def loss(self, raw: torch.Tensor, target_z: torch.Tensor) -> torch.Tensor:
        """KL divergence from the Gaussian soft label to the predicted bin distribution."""
        target = soft_labels(target_z, self.bin_edges, self.hparams["label_sigma"])
        return F.kl_div(raw.float(), target, reduction="batchmean")

    def predict_z(self, raw: torch.Tensor) -> torch.Tensor:
        """Expected bin centre under the predicted distribution."""
        return (raw.float().exp() * self.bin_centres).sum(dim=1)
