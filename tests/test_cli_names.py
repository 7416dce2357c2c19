"""Renamed options and fields: the new names work, the old ones still load (issue 27, names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from brainage.cli import app
from brainage.training import ConfigError, TrainConfig, load_config

runner = CliRunner()


def test_an_old_configuration_with_val_fraction_reads_as_test_fraction(tmp_path: Path) -> None:
    old = TrainConfig(test_fraction=0.3).to_dict()
    old["val_fraction"] = old.pop("test_fraction")  # a run's config.yaml as written before the rename
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": old}))
    assert load_config(path) == TrainConfig(test_fraction=0.3)
    with pytest.raises(ConfigError, match="old name of test_fraction"):
        TrainConfig.from_dict({"val_fraction": 0.3, "test_fraction": 0.2})


def test_the_val_fraction_option_is_a_deprecated_alias_of_test_fraction(tmp_path: Path) -> None:
    # --folds with either name is refused before any training, so these runs are instant.
    new = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--folds", "2", "--test-fraction", "0.2"])
    old = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--folds", "2", "--val-fraction", "0.2"])
    for result in (new, old):
        assert result.exit_code != 0 and "choose either --folds or --test-fraction" in result.output
    assert "--val-fraction is deprecated" in old.output and "deprecated" not in new.output
    both = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--val-fraction", "0.2", "--test-fraction", "0.2"])
    assert both.exit_code != 0 and "old name of --test-fraction" in both.output
    assert "--val-fraction" not in runner.invoke(app, ["train", "--help"]).output  # hidden: only the new name is documented


def test_the_tutorials_network_under_its_old_name_seed_still_trains_and_loads(tmp_path: Path) -> None:
    import torch

    from brainage.models import build_model
    from brainage.preprocess import make_config
    from brainage.training import BrainAgeCheckpoint, load_checkpoint, save_checkpoint

    assert TrainConfig(model="seed").model == "tutorial" == TrainConfig.from_dict({"model": "seed"}).model
    torch.manual_seed(0)
    network = build_model("tutorial").eval()
    old = BrainAgeCheckpoint(model=network, model_name="seed", age_mean=70.0, age_std=10.0, preprocessing=make_config("seed").to_dict())
    loaded = load_checkpoint(save_checkpoint(old, tmp_path / "model.ckpt"))  # as written before the rename
    assert loaded.model_name == "tutorial" and type(loaded.model) is type(network)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), network(x))
