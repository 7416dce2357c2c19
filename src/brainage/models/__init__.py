"""Brain-age networks by name: ``build_model("sfcn", width=0.5)``.

Old names still build their model (:data:`RENAMED`), so checkpoints and configurations written
under them still load.

Every model is an :class:`AgeRegressor`: ``forward`` gives a raw output, ``loss`` compares it with
z-scored ages, ``predict_z`` turns it into z-scored ages, and ``hparams`` rebuilds it.
"""

from __future__ import annotations

from typing import Any

from brainage.errors import BrainAgeError
from brainage.models.base import AgeRegressor
from brainage.models.resnet import CompactResNet
from brainage.models.sfcn import SFCN
from brainage.models.tutorial import BrainAgeCNN

MODELS: dict[str, type[AgeRegressor]] = {model.name: model for model in (BrainAgeCNN, SFCN, CompactResNet)}
#: Old model names and their names now (the tutorial's network was ``seed``).
RENAMED: dict[str, str] = {"seed": "tutorial"}


class UnknownModelError(BrainAgeError, ValueError):
    """A model name that is not in the registry."""


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(MODELS)


def current_model_name(name: str) -> str:
    """The current name of model ``name`` (itself unless it is an old name in :data:`RENAMED`)."""
    return RENAMED.get(name, name)


def build_model(name: str, **hparams: Any) -> AgeRegressor:
    """A freshly initialised model ``name`` (or its old name) with the given hyper-parameters (defaults otherwise)."""
    try:
        model_class = MODELS[current_model_name(name)]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None
    return model_class(**hparams)


__all__ = ["MODELS", "RENAMED", "AgeRegressor", "UnknownModelError", "available_models", "build_model", "current_model_name"]
