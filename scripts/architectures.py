"""Plain ``torch.nn.Module`` definitions for the pretrained weights in ``../shared/weights``.

Every architecture matches the state_dict key names and shapes described in
``../shared/DATA.md`` exactly, so ``load_state_dict(..., strict=True)`` succeeds. All
models take float32 NCHW input in [0, 1] pixel space; where a model expects normalised
input, wrap it in :class:`Normalize` (see :func:`with_normalization`) so the exported
graph does the normalisation itself and attacks/eps stay in pixel space.

The modules avoid Python control flow that depends on tensor values, so they script
(``torch.jit.script``), trace and export to ONNX cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)
CIFAR_CNN_A_MEAN = (125.3 / 255.0, 123.0 / 255.0, 113.9 / 255.0)
CIFAR_CNN_A_STD = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, for NCHW input; mean/std are buffers (saved in exports)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError("mean and std must have the same length")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NormalizedModel(nn.Module):
    """A classifier preceded by :class:`Normalize`: takes [0, 1] pixels, returns logits."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> NormalizedModel:
    return NormalizedModel(model, mean, std)


# --------------------------------------------------------------------------- LeNet-5 (MNIST)
class LeNet5(nn.Module):
    """MNIST LeNet-5 variant: keys ``conv1``, ``conv2``, ``linear1``, ``linear2``. Input 1x28x28."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.linear1 = nn.Linear(64 * 7 * 7, 200)
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.linear1(x))
        return self.linear2(x)


# --------------------------------------------------------------------------- CIFAR ResNet
class LambdaShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels by ``pad`` on each side. No weights."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-6n+2 for CIFAR (He et al. 2016) with option-A shortcuts (keys without ``module.``)."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = torch.flatten(out, 1)
        return self.linear(out)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(9, num_classes)


# --------------------------------------------------------------------------- CNN-A
def cnn_a(in_channels: int, spatial: int, num_classes: int = 10) -> nn.Sequential:
    """CNN-A as a Sequential whose weighted layers sit at indices 0, 2, 5, 7.

    ``spatial`` is the input height/width (28 for MNIST, 32 for CIFAR); two stride-2 convs
    divide it by four, giving 32*7*7=1568 or 32*8*8=2048 features.
    """
    feat = 32 * (spatial // 4) * (spatial // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),  # 0
        nn.ReLU(),  # 1
        nn.Conv2d(16, 32, 4, stride=2, padding=1),  # 2
        nn.ReLU(),  # 3
        nn.Flatten(),  # 4
        nn.Linear(feat, 100),  # 5
        nn.ReLU(),  # 6
        nn.Linear(100, num_classes),  # 7
    )


def cnn_a_mnist() -> nn.Sequential:
    return cnn_a(1, 28)


def cnn_a_cifar() -> nn.Sequential:
    return cnn_a(3, 32)


# --------------------------------------------------------------------------- loading helpers
def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Load a plain state_dict (``weights_only=True``); unwraps ``{'state_dict': ...}`` and ``module.``."""
    obj = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    return strip_prefix(obj)


# --------------------------------------------------------------------------- demo models (robaudit/demo)
class DemoMnistCNN(nn.Module):
    """Small MNIST CNN shipped in ``robaudit/demo``: ~57k params, input 1x28x28 in [0, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)  # 28 -> 26, pool -> 13
        self.conv2 = nn.Conv2d(16, 32, 3)  # 13 -> 11, pool -> 5
        self.fc1 = nn.Linear(32 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DemoCifarCNN(nn.Module):
    """Small CIFAR-10 CNN shipped in ``robaudit/demo`` (~114k params), expects *normalised* input.

    Wrap it with :class:`NormalizedModel` for export so the shipped model takes [0, 1] pixels.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 32), nn.MaxPool2d(2),  # 32 -> 16
            _conv_bn(32, 64), nn.MaxPool2d(2),  # 16 -> 8
            _conv_bn(64, 128), nn.MaxPool2d(2),  # 8 -> 4
        )
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(128 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.classifier(self.dropout(x))
