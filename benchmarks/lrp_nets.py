"""The two torch nets `benchmarks/lrp.py` and `benchmarks/lrp_gpu.py` time (seeded random weights, exported to ONNX),
and zennit's twin of each (residual sums through ``zennit.layer.Sum``)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn as nn

INPUT_SHAPE = (3, 64, 64)
CLASSES = 10


def vgg_style() -> nn.Module:
    """Conv(32)x2 / pool / Conv(64)x2 / pool / Conv(128) / pool / Linear(256) / Linear(10), ReLU throughout."""
    def block(cin, cout, convs):
        layers = []
        for i in range(convs):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
        return layers + [nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32, 2), *block(32, 64, 2), *block(64, 128, 1), nn.Flatten(),
                         nn.Linear(128 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, CLASSES))


class Residual(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN plus a shortcut (identity, or 1x1 conv-BN when the shape
    changes), then ReLU. With ``zennit_sum`` the two branches are added by ``zennit.layer.Sum`` (for zennit's rules);
    otherwise by ``+`` (an ONNX ``Add``)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.sum = None
        self.relu2 = nn.ReLU()

    def use_zennit_sum(self) -> None:
        from zennit.layer import Sum

        self.sum = Sum()

    def forward(self, x):
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = self.shortcut(x)
        total = branch + shortcut if self.sum is None else self.sum(torch.stack([branch, shortcut], dim=-1))
        return self.relu2(total)


def resnet_style() -> nn.Module:
    """Stem conv-BN-ReLU(32), residual stages 32 / 64 (stride 2) / 128 (stride 2), global average pool, Linear(10)."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         Residual(32, 32, 1), Residual(32, 64, 2), Residual(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, CLASSES))


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """Seeded random weights; BatchNorm running statistics and affine terms made non-trivial; eval mode."""
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.uniform_(module.bias, -0.1, 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


NETS = {"vgg": vgg_style, "resnet": resnet_style}


def export(net: nn.Module, path: Path) -> Path:
    """torch.onnx.export (dynamo, opset 18) with a dynamic batch axis."""
    example = torch.zeros((2,) + INPUT_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (example,), dynamo=True, opset_version=18, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},),
                                    verbose=False)
    program.save(str(path))
    return path


def zennit_twin(net: nn.Module) -> nn.Module:
    """A copy of the net whose residual sums go through ``zennit.layer.Sum`` (same weights, same function)."""
    twin = copy.deepcopy(net)
    for module in twin.modules():
        if isinstance(module, Residual):
            module.use_zennit_sum()
    return twin.eval()
