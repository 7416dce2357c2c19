"""The tutorial's BrainAgeCNN, reproduced layer for layer (the ``tutorial`` model; ``seed`` before).

Initial Conv3d(1→16) + BN + ReLU + Dropout3d(0.3); residual blocks 16→32, 32→64, 64→128 (dropout
0.2, 0.3, 0.4), each followed by a 2× down-sampling; global average pooling; fully connected
128→64→32→1 with dropout 0.7 and 0.5. 894,529 parameters with max pooling. The tutorial replaced
MaxPool3d on Apple MPS by one Conv3d(1→1, k2, s2) shared by the three pools and applied channel by
channel (9 more parameters); ``strided_pool=True`` selects that variant.
"""

from __future__ import annotations

import torch
from torch import nn

from brainage.models.base import AgeRegressor


class ResBlock(nn.Module):
    """conv3-BN-ReLU-[Dropout3d]-conv3-BN plus a (1×1 conv + BN when widths differ) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else None
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=1), nn.BatchNorm3d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ChannelwiseStridedConv(nn.Module):
    """One Conv3d(1→1, k2, s2) applied to every channel separately: the tutorial's MPS pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        out = self.conv(x.reshape(b * c, 1, *x.shape[2:]))
        return out.reshape(b, c, *out.shape[2:])


class BrainAgeCNN(AgeRegressor):
    """The tutorial's network; regression head, mean squared error on z-scored age."""

    name = "tutorial"

    def __init__(self, strided_pool: bool = False) -> None:
        super().__init__()
        self.hparams = {"strided_pool": strided_pool}
        self.initial = nn.Sequential(
            nn.Conv3d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm3d(16),
            nn.ReLU(inplace=True),
            nn.Dropout3d(0.3),
        )
        self.res1 = ResBlock(16, 32, dropout=0.2)
        self.res2 = ResBlock(32, 64, dropout=0.3)
        self.res3 = ResBlock(64, 128, dropout=0.4)
        self.pool = ChannelwiseStridedConv() if strided_pool else nn.MaxPool3d(2)
        self.global_pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Sequential(
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(0.7),
            nn.Linear(64, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        x = self.pool(self.res1(x))
        x = self.pool(self.res2(x))
        x = self.pool(self.res3(x))
        return self.fc(torch.flatten(self.global_pool(x), 1))
