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


def _old_digest(values: dict, *names: str) -> str:
    """The digest as the code before the renames computed it from a configuration dict with the old names."""
    import hashlib
    import json

    from brainage.preprocess.pipelines import PIPELINE_VERSION

    chosen = {key: values[key] for key in (names or values) if key in values}
    text = json.dumps({"version": PIPELINE_VERSION, "pipeline": values["pipeline"], **chosen}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def test_the_tutorial_pipeline_and_bias_field_keep_the_cache_keys_of_their_old_names() -> None:
    from brainage.preprocess import config_from_dict, make_config

    tutorial = make_config("tutorial")
    old_tutorial = {"pipeline": "seed", "shape": [64, 64, 64], "voxel_size": 4.0, "dtype": "float32", "qc_threshold": None}  # as cache.json held it
    assert make_config("seed") == tutorial == config_from_dict(old_tutorial) and tutorial.to_dict()["pipeline"] == "tutorial"
    assert (tutorial.volume_digest(), tutorial.digest()) == ("12c3006f83a5b9c9", "be9a2a2d9e816013")  # computed before the rename (commit b88de51)
    assert tutorial.digest() == _old_digest(old_tutorial)

    n4 = make_config("standard", bias_field=True)
    old = {("bias_correction" if key == "bias_field" else key): value for key, value in n4.to_dict().items()}  # a cache.json written before
    assert make_config("standard", bias_correction=True) == n4 == config_from_dict(old)
    assert "bias_field" in n4.to_dict() and "bias_correction" not in n4.to_dict()
    spatial = [("bias_correction" if name == "bias_field" else name) for name in n4.SPATIAL_FIELDS]
    assert n4.digest(*n4.SPATIAL_FIELDS) == _old_digest(old, *spatial) and n4.digest() == _old_digest(old)
    assert n4.volume_digest() != make_config("standard").volume_digest()  # still a setting that changes the volume
