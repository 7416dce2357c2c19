"""A compact 3D ResNet sized for 64³ volumes and a few hundred to a few thousand scans (``resnet``).

A stem convolution (at full resolution, or strided by ``stem_stride``), then one stage per entry of ``widths``, each halving the
resolution with a stride-2 residual block (followed by ``blocks_per_stage - 1`` more blocks),
adaptive average pooling to ``pool_size``³ (1 = global; 2 keeps coarse location), dropout and a
linear layer to one z-scored age. Down-sampling early makes it much cheaper than the tutorial's
network per 64³ volume at a similar parameter count. ``norm`` chooses batch, group or instance
normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainage.models.base import AgeRegressor

NORMS = ("batch", "group", "instance")


def make_norm(kind: str, channels: int) -> nn.BatchNorm3d | nn.GroupNorm | nn.InstanceNorm3d:
    """A 3D normalisation layer of the given kind over ``channels`` channels."""
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


class BasicBlock(nn.Module):
    """conv3(stride)-norm-ReLU-conv3-norm plus shortcut (avg-pool + 1×1 conv + norm when shape changes), ReLU.

    The last normalisation starts at zero scale so each block starts as an identity map.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        nn.init.zeros_(self.norm2.weight)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.AvgPool3d(stride) if stride != 1 else nn.Identity(),
                nn.Conv3d(in_channels, out_channels, 1, bias=False),
                make_norm(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CompactResNet(AgeRegressor):
    """Compact residual network with a regression head (mean squared error on z-scored age)."""

    name = "resnet"

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        stem_width: int = 8,
        stem_stride: int = 2,
        blocks_per_stage: int = 1,
        norm: str = "batch",
        pool_size: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or min(stem_width, stem_stride, blocks_per_stage, pool_size) < 1:
            raise ValueError("resnet needs positive widths, stem_width, stem_stride, blocks_per_stage and pool_size")
        make_norm(norm, 1)
        self.hparams = {
            "widths": widths,
            "stem_width": stem_width,
            "stem_stride": stem_stride,
            "blocks_per_stage": blocks_per_stage,
            "norm": norm,
            "pool_size": pool_size,
            "dropout": dropout,
        }
        self.stem = nn.Sequential(nn.Conv3d(1, stem_width, 3, stride=stem_stride, padding=1, bias=False), make_norm(norm, stem_width), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        in_channels = stem_width
        for width in widths:
            blocks = [BasicBlock(in_channels, width, stride=2, norm=norm)]
            blocks += [BasicBlock(width, width, stride=1, norm=norm) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(pool_size),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels * pool_size**3, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
