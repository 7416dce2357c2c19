"""The model registry and the networks: architecture, shapes, learning, rebuilding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainage.errors import BrainAgeError
from brainage.models import MODELS, AgeRegressor, available_models, build_model
from brainage.models.sfcn import soft_labels
from brainage.training.config import cpu_supports_bf16

# Small settings so every model is cheap to run in tests; defaults are checked separately.
SMALL = {"tutorial": {}, "sfcn": {"width": 0.25}, "resnet": {"widths": [8, 16, 16, 32], "stem_width": 4}}
# The smallest cheap input side for each (sfcn pools five times, the resnet halves five times: 32).
SIDE = {"tutorial": 16, "sfcn": 32, "resnet": 32}


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_and_rejects_unknown_names() -> None:
    assert available_models() == sorted(MODELS) == ["resnet", "sfcn", "tutorial"]
    assert set(SMALL) == set(MODELS)
    with pytest.raises(BrainAgeError, match=r"unknown model 'vgg'.*resnet, sfcn, tutorial"):
        build_model("vgg")


def test_the_tutorials_network_builds_under_its_old_name_seed() -> None:
    old, new = build_model("seed", strided_pool=True), build_model("tutorial", strided_pool=True)
    assert type(old) is type(new) and old.name == "tutorial" and old.hparams == new.hparams
    assert "seed" not in available_models()


def test_tutorial_model_matches_the_tutorial_architecture() -> None:
    model = build_model("tutorial")
    assert n_parameters(model) == 894_529
    assert n_parameters(build_model("tutorial", strided_pool=True)) == 894_529 + 9
    conv = model.initial[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (1, 16, (3, 3, 3), (1, 1, 1))
    assert model.initial[3].p == pytest.approx(0.3)
    for block, (c_in, c_out, p) in zip((model.res1, model.res2, model.res3), ((16, 32, 0.2), (32, 64, 0.3), (64, 128, 0.4)), strict=False):
        assert (block.conv1.in_channels, block.conv1.out_channels, block.conv2.out_channels) == (c_in, c_out, c_out)
        assert block.dropout.p == pytest.approx(p)
        assert block.downsample[0].kernel_size == (1, 1, 1)
    assert isinstance(model.pool, nn.MaxPool3d)
    linears = [m for m in model.fc if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 64), (64, 32), (32, 1)]
    assert [m.p for m in model.fc if isinstance(m, nn.Dropout)] == [pytest.approx(0.7), pytest.approx(0.5)]


def test_tutorial_feature_map_sizes_halve_after_each_block() -> None:
    model = build_model("tutorial", strided_pool=True).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        x = model.initial(x)
        shapes = []
        for block in (model.res1, model.res2, model.res3):
            x = model.pool(block(x))
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(32, 16, 16, 16), (64, 8, 8, 8), (128, 4, 4, 4)]


def test_sfcn_follows_peng_et_al() -> None:
    model = build_model("sfcn")
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256, 64]
    assert [c.kernel_size for c in convs] == [(3, 3, 3)] * 5 + [(1, 1, 1)]
    assert sum(isinstance(m, nn.MaxPool3d) for m in model.features.modules()) == 5
    assert model.classifier[-1].out_channels == 40
    narrow = build_model("sfcn", width=0.5)
    assert [m.out_channels for m in narrow.features.modules() if isinstance(m, nn.Conv3d)] == [16, 32, 64, 128, 128, 32]


def test_sfcn_soft_labels_are_gaussian_distributions_centred_on_the_age() -> None:
    edges = torch.linspace(-4, 4, 41)
    centres = (edges[1:] + edges[:-1]) / 2
    labels = soft_labels(torch.tensor([0.0, 1.3, 9.0]), edges, sigma=0.2)
    assert torch.allclose(labels.sum(dim=1), torch.ones(3))
    assert (labels @ centres)[:2].tolist() == pytest.approx([0.0, 1.3], abs=0.02)
    assert labels[2].argmax().item() == 39  # beyond the last bin: mass on the last bin


def test_sfcn_predicts_the_expected_bin_centre_and_loss_is_zero_at_the_soft_label() -> None:
    model = build_model("sfcn", width=0.25)
    target = torch.tensor([-1.0, 0.5])
    label = soft_labels(target, model.bin_edges, model.hparams["label_sigma"])
    raw = label.clamp_min(1e-12).log()
    assert model.predict_z(raw).tolist() == pytest.approx(target.tolist(), abs=0.02)
    assert model.loss(raw, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [32, 64])
def test_every_model_maps_a_volume_batch_to_one_age_per_scan(name: str, size: int) -> None:
    model = build_model(name, **SMALL[name]).eval()
    assert isinstance(model, AgeRegressor)
    with torch.no_grad():
        raw = model(torch.randn(2, 1, size, size, size))
        predicted = model.predict_z(raw)
        loss = model.loss(raw, torch.tensor([0.5, -0.5]))
    assert predicted.shape == (2,) and predicted.dtype == torch.float32
    assert torch.isfinite(predicted).all()
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.skipif(
    not cpu_supports_bf16(),
    reason="precision auto trains in fp32 on this CPU (no AMX); its AVX-512 BF16 convolution backward gives a non-finite weight gradient "
    "now and then for identical inputs, even on one thread (torch 2.13), so the check is only meaningful where bf16 is used",
)
def test_every_model_runs_in_bf16_autocast_with_channels_last(name: str) -> None:
    model = build_model(name, **SMALL[name]).to(memory_format=torch.channels_last_3d)
    # Twice the smallest side, so that no convolution sees a 2³ input, where the non-finite weight
    # gradients of the skip reason above came most often.
    side = 2 * SIDE[name]
    x = torch.randn(2, 1, side, side, side).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model(x)
        loss = model.loss(raw, torch.tensor([0.5, -0.5]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_loss_decreases_when_fitting_a_toy_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name])
    model.train()
    for module in model.modules():  # dropout off so the toy fit is a clean signal
        if isinstance(module, (nn.Dropout, nn.Dropout3d)):
            module.eval()
    side = SIDE[name]
    x = torch.randn(4, 1, side, side, side)
    target = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = model.loss(model(x), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("tutorial", {"strided_pool": True}),
        ("sfcn", {"width": 0.25, "n_bins": 20, "label_sigma": 0.3}),
        ("resnet", {"widths": [4, 8], "norm": "group", "pool_size": 2}),
    ],
)
def test_build_model_round_trips_through_hparams_and_state_dict(name: str, hparams: dict) -> None:
    model = build_model(name, **hparams).eval()
    rebuilt = build_model(name, **model.hparams).eval()
    assert rebuilt.hparams == model.hparams
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.predict_z(model(x)), rebuilt.predict_z(rebuilt(x)))


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("sfcn", {"width": 0}), ("sfcn", {"age_range": [2, -2]}), ("resnet", {"norm": "layer"}), ("resnet", {"widths": []})],
)
def test_invalid_hyperparameters_are_rejected(name: str, hparams: dict) -> None:
    with pytest.raises(ValueError):
        build_model(name, **hparams)
