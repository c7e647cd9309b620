"""Architectures and the pixel-space wrapper."""

import pytest
import torch
from torch import nn

from robustbench_jr.errors import ConfigError
from robustbench_jr.models import (
    ARCHITECTURES, NORMALIZATIONS, PixelSpaceModel, build_model, make_model, normalization_stats,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_outputs_logits(arch):
    torch.manual_seed(0)
    info = ARCHITECTURES[arch]
    net = build_model(arch, num_classes=7).eval()
    x = torch.randn(1, *info.input_shape)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["lenet", "ddnet", "jg-mnist", "jg-cifar", "resnet18-cifar"])
def test_small_architectures_batch(arch):
    info = ARCHITECTURES[arch]
    net = build_model(arch).eval()
    with torch.no_grad():
        assert net(torch.randn(3, *info.input_shape)).shape == (3, 10)


def test_resnet18_other_channel_count():
    net = build_model("resnet18", num_classes=5, in_channels=1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_unknown_architecture_lists_valid():
    with pytest.raises(ConfigError) as exc:
        build_model("vgg99")
    for name in ARCHITECTURES:
        assert name in str(exc.value)


def test_lenet_prime_structure():
    net = build_model("lenet")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 6, (5, 5)), (6, 16, (5, 5))]
    assert [(l.in_features, l.out_features) for l in linears] == [(400, 120), (120, 84), (84, 10)]
    assert any(isinstance(m, nn.Tanh) for m in net.modules())
    assert all(float(l.bias.detach().abs().sum()) == 0 for l in linears)


class _Identity(nn.Module):
    def forward(self, x):
        return x.flatten(1)


@pytest.mark.parametrize("norm,channels", [("mnist", 1), ("cifar", 3), ("imagenet", 3), ("none", 3)])
def test_pixel_space_normalisation(norm, channels):
    model = PixelSpaceModel(_Identity(), norm, (channels, 4, 4), num_classes=channels * 16)
    x = torch.rand(2, channels, 4, 4)
    mean, std = NORMALIZATIONS[norm]
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    expected = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(model(x), expected.flatten(1))
    assert model.input_scale.shape == (1, channels, 1, 1)


def test_pixel_space_cifar_is_hoffman_scaling():
    model = PixelSpaceModel(_Identity(), "cifar", (3, 1, 1), 3)
    out = model(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 1.0]]))


def test_pixel_space_gradient_scale():
    model = PixelSpaceModel(_Identity(), "mnist", (1, 2, 2), 4)
    x = torch.rand(1, 1, 2, 2, requires_grad=True)
    model(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 0.3081))


def test_normalization_stats_errors():
    with pytest.raises(ConfigError):
        normalization_stats("bogus", 3)
    with pytest.raises(ConfigError):
        normalization_stats("imagenet", 1)


def test_normalisation_buffers_follow_dtype_and_not_in_state_dict():
    model = make_model("lenet", 10, "mnist")
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    model = model.double().eval()
    assert model(torch.rand(1, 1, 28, 28, dtype=torch.float64)).dtype == torch.float64
