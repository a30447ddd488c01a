"""A digits CNN trained in PaddlePaddle and exported by paddle2onnx: the Paddle export format as a fixture.

paddle2onnx writes its graphs its own way: weights as `Constant` nodes instead of initializers, IR version 7,
a Shape/Slice/Concat subgraph feeding the Reshape before the classifier, MatMul + Add instead of Gemm, a Softmax
output named `fetch_name_0`. The test `tests/test_framework_exports.py` checks that onnxplain loads, runs and
explains it as it comes, against the Paddle network's own outputs stored beside it.

Needs paddlepaddle and paddle2onnx (not onnxplain dependencies; the files are committed):

    pip install paddlepaddle paddle2onnx scikit-learn scikit-image onnx
    python models/build_paddle.py          # ~30 s on 2 CPU cores; writes models/digits_paddle.onnx and
                                           # models/samples/digits_paddle_check.npz
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build import CNN_SPEC, cnn_input, load_split, write_export_fixture  # noqa: E402

EPOCHS, BATCH, SEED = 8, 64, 0


def make_network():
    import paddle.nn as nn

    class DigitsNet(nn.Layer):
        """Conv(8)/BatchNorm/ReLU/MaxPool, Conv(16, stride 2)/ReLU/MaxPool, Linear(10), softmax."""

        def __init__(self):
            super().__init__()
            self.conv1, self.norm1 = nn.Conv2D(1, 8, 3, padding=1), nn.BatchNorm2D(8)
            self.conv2 = nn.Conv2D(8, 16, 3, padding=1, stride=2)
            self.pool = nn.MaxPool2D(2)
            self.classifier = nn.Linear(16 * 7 * 7, 10)

        def forward(self, x):
            x = self.pool(nn.functional.relu(self.norm1(self.conv1(x))))
            x = nn.functional.relu(self.conv2(x))
            x = x.flatten(1)
            return nn.functional.softmax(self.classifier(x), axis=-1)

    return DigitsNet()


def train(network, images: np.ndarray, labels: np.ndarray) -> None:
    import paddle

    optimizer = paddle.optimizer.Adam(learning_rate=3e-3, parameters=network.parameters())
    order_rng = np.random.default_rng(SEED)
    network.train()
    for _ in range(EPOCHS):
        order = order_rng.permutation(len(images))
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            probabilities = network(paddle.to_tensor(images[batch]))
            loss = paddle.nn.functional.nll_loss(paddle.log(probabilities + 1e-9), paddle.to_tensor(labels[batch]))
            optimizer.clear_grad()
            loss.backward()
            optimizer.step()
    network.eval()


def main() -> None:
    import onnx
    import paddle

    paddle.seed(SEED)
    (train_images, train_labels), (test_images, test_labels) = load_split()
    network = make_network()
    train(network, cnn_input(train_images), train_labels)
    test_x = cnn_input(test_images)
    accuracy = float((network(paddle.to_tensor(test_x)).numpy().argmax(1) == test_labels).mean())
    with tempfile.TemporaryDirectory() as folder:
        spec = [paddle.static.InputSpec(shape=[None, 1, 28, 28], dtype="float32", name="image")]
        paddle.onnx.export(network, str(Path(folder) / "digits_paddle"), input_spec=spec, opset_version=13)
        model = onnx.load(Path(folder) / "digits_paddle.onnx")
    write_export_fixture(model, "digits_paddle", CNN_SPEC, test_x, test_labels,
                         lambda inputs: network(paddle.to_tensor(inputs)).numpy())
    print(f"digits_paddle.onnx: test accuracy {accuracy:.4f} (paddle {paddle.__version__})")


if __name__ == "__main__":
    main()
