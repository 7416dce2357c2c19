"""Brain-age networks by name: ``build_model("sfcn", width=0.5)``.

Every model is an :class:`AgeRegressor`: ``forward`` gives a raw output, ``loss`` compares it with
z-scored ages, ``predict_z`` turns it into z-scored ages, and ``hparams`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

from brainage.errors import BrainAgeError
from brainage.models.base import AgeRegressor
from brainage.models.resnet import CompactResNet
from brainage.models.seed import BrainAgeCNN
from brainage.models.sfcn import SFCN

MODELS: dict[str, type[AgeRegressor]] = {model.name: model for model in (BrainAgeCNN, SFCN, CompactResNet)}


class UnknownModelError(BrainAgeError, ValueError):
    """A model name that is not in the registry."""


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(MODELS)


def build_model(name: str, **hparams: Any) -> AgeRegressor:
    """A freshly initialised model ``name`` with the given hyper-parameters (defaults otherwise)."""
    try:
        model_class = MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None
    return model_class(**hparams)


__all__ = ["MODELS", "AgeRegressor", "UnknownModelError", "available_models", "build_model"]
