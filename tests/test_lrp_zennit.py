"""Done-when 2: LRP on the exported ONNX graph equals zennit's LRP on the torch model, composite by composite."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import onnxplain
from onnxplain.lrp import LRP, unsupported_ops
from onnxplain.targets import Target

from zennit.attribution import Gradient  # test-only dependency (conftest makes its torchvision import work)
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.layer import Sum

TOLERANCE = 1e-4
SHAPE = (3, 3, 16, 16)


class VGGStyle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 32), torch.nn.ReLU(),
                                              torch.nn.Linear(32, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(torch.nn.Module):
    """conv-BN-ReLU-conv-BN + identity, ReLU; the residual sum is zennit's Sum module when `zennit_sum`."""

    def __init__(self, channels):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.BatchNorm2d(channels)
        self.relu1 = torch.nn.ReLU()
        self.conv2, self.bn2 = torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.BatchNorm2d(channels)
        self.sum, self.relu2 = Sum(), torch.nn.ReLU()
        self.zennit_sum = False

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        y = self.sum(torch.stack([x, y], dim=-1)) if self.zennit_sum else x + y
        return self.relu2(y)


class ResNetStyle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.block1 = Block(8)
        self.pool = torch.nn.AvgPool2d(2)
        self.block2 = Block(8)
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))

    def use_zennit_sum(self, flag: bool):
        self.block1.zennit_sum = self.block2.zennit_sum = flag


def _randomise_batchnorm(net: torch.nn.Module, generator: torch.Generator) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)


def export(net: torch.nn.Module, path, dynamo: bool) -> onnxplain.Model:
    x = torch.rand(SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["y"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        else:  # the legacy exporter without constant folding keeps BatchNormalization nodes
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=13, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                              do_constant_folding=False)
    return onnxplain.load(path)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("zennit")
    vgg = VGGStyle().eval()
    resnet = ResNetStyle().eval()
    _randomise_batchnorm(resnet, torch.Generator().manual_seed(1))
    return {"vgg": (vgg, export(vgg, folder / "vgg.onnx", dynamo=True)),
            "resnet": (resnet, export(resnet, folder / "resnet.onnx", dynamo=False))}


def zennit_composite(name: str, batch: int):
    low, high = torch.zeros(batch, 3, 16, 16), torch.ones(batch, 3, 16, 16)
    canonizers = [SequentialMergeBatchNorm()]
    return {"epsilon-plus": EpsilonPlus(canonizers=canonizers),
            "epsilon-alpha2-beta1": EpsilonAlpha2Beta1(canonizers=canonizers),
            "epsilon-plus-flat": EpsilonPlusFlat(canonizers=canonizers),
            "epsilon-alpha2-beta1-flat": EpsilonAlpha2Beta1Flat(canonizers=canonizers),
            "epsilon-gamma-box": EpsilonGammaBox(low=low, high=high, canonizers=canonizers)}[name]


def zennit_relevance(net, x: torch.Tensor, composite_name: str, classes: torch.Tensor) -> np.ndarray:
    if isinstance(net, ResNetStyle):
        net.use_zennit_sum(True)
    try:
        with torch.no_grad():
            logits = net(x)
        with Gradient(net, zennit_composite(composite_name, len(x))) as attributor:
            _, relevance = attributor(x, torch.eye(logits.shape[1])[classes] * logits)
    finally:
        if isinstance(net, ResNetStyle):
            net.use_zennit_sum(False)
    return relevance.numpy()


COMPOSITES = ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-plus-flat", "epsilon-alpha2-beta1-flat",
              "epsilon-gamma-box"]


@pytest.mark.parametrize("which", ["vgg", "resnet"])
@pytest.mark.parametrize("composite", COMPOSITES)
def test_lrp_equals_zennit(nets, which, composite):
    net, model = nets[which]
    assert unsupported_ops(model) == []
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2))
    explanation = LRP(composite=composite, progress=False).explain(model, x.numpy())
    expected = zennit_relevance(net, x, composite, torch.as_tensor(explanation.target))
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(explanation.relevance - expected).max() <= TOLERANCE * scale
    np.testing.assert_allclose(explanation.score, net(x).detach().numpy()[np.arange(len(x)), explanation.target],
                               rtol=1e-5)


def test_lrp_equals_zennit_on_the_exported_weights_where_residual_sums_nearly_cancel(tmp_path):
    """torch.onnx.export (dynamo) folds each BatchNorm into its convolution, in float32. zennit run on a copy of the
    net that carries those folded weights gives onnxplain's relevance to float32 rounding, over a batch large
    enough to hold residual sums that nearly cancel, where the z-rule's shares x_i / (x_1 + x_2) magnify any
    difference in the weights (against zennit's own folding, such positions reach 1e-3 of max |R|)."""
    torch.manual_seed(0)
    net = ResNetStyle().eval()
    _randomise_batchnorm(net, torch.Generator().manual_seed(1))
    model = export(net, tmp_path / "folded.onnx", dynamo=True)
    proto = onnx.load(tmp_path / "folded.onnx")
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    weights = {tensor.name: numpy_helper.to_array(tensor).copy() for tensor in proto.graph.initializer}
    twin = copy.deepcopy(net)
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    for conv, node in zip([m for m in twin.modules() if isinstance(m, torch.nn.Conv2d)], convs, strict=True):
        assert tuple(conv.weight.shape) == weights[node.input[1]].shape
        conv.weight.data = torch.from_numpy(weights[node.input[1]])
        conv.bias = torch.nn.Parameter(torch.from_numpy(weights[node.input[2]]))
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, name, torch.nn.Identity())
    x = torch.rand((256, 3, 16, 16), generator=torch.Generator().manual_seed(4))
    explanation = LRP(progress=False).explain(model, x.numpy())
    expected = zennit_relevance(twin, x, "epsilon-plus", torch.as_tensor(explanation.target))
    assert np.abs(explanation.relevance - expected).max() <= 1e-5 * np.abs(expected).max()
    # the batch does hold such sums: zennit folding the BatchNorms itself lands far outside that tolerance
    own_folding = zennit_relevance(net, x, "epsilon-plus", torch.as_tensor(explanation.target))
    assert np.abs(explanation.relevance - own_folding).max() > 1e-4 * np.abs(own_folding).max()


def test_resnet_graph_has_batchnorm_merged_and_residual_adds(nets):
    """The comparison above is meaningful: the ONNX graph really holds BatchNormalization and residual Adds."""
    _, model = nets["resnet"]
    ops = [node.op_type for node in model.proto.graph.node]
    assert ops.count("BatchNormalization") == 5 and ops.count("Add") == 2 and "AveragePool" in ops


def test_class_target_and_hidden_target(nets):
    net, model = nets["vgg"]
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)).numpy()
    chosen = LRP(progress=False).explain(model, x, Target(index=4))
    assert (chosen.target == 4).all()
    np.testing.assert_allclose(chosen.score, net(torch.from_numpy(x)).detach().numpy()[:, 4], rtol=1e-5)
    layer = next(n.output[0] for n in model.proto.graph.node if n.op_type == "Relu")
    channel = LRP(progress=False).explain(model, x, Target(layer=layer, index=2))
    activations = model.run(x, [layer])[layer][:, 2]
    np.testing.assert_allclose(channel.score, activations.reshape(len(x), -1).mean(1), rtol=1e-5)
    errors = np.abs(channel.diagnostics["conservation_error"])
    assert errors.max() < 1e-5 and channel.diagnostics["score_kind"] == "hidden"
    assert chosen.diagnostics["score_kind"] == "logits"
    unit = LRP(progress=False).explain(model, x, Target(layer=layer, index=2, unit=(2, 3, 4)))
    np.testing.assert_allclose(unit.score, model.run(x, [layer])[layer][:, 2, 3, 4], rtol=1e-5)
    # relevance of one unit stays inside its receptive field (3x3 conv: rows 2..4, cols 3..5)
    outside = np.abs(unit.relevance).sum(1).copy()
    outside[:, 2:5, 3:6] = 0
    assert outside.max() == 0 and np.abs(unit.relevance).max() > 0
