"""A digits CNN trained in Keras 3 on TensorFlow and exported through tf2onnx: the TensorFlow export format as a
fixture.

TensorFlow models are channels-last: the exported graph takes NHWC images and tf2onnx inserts Transpose nodes
around its NCHW convolutions; the head is MatMul + Add; the softmax output comes out of an Identity. The test
`tests/test_framework_exports.py` checks that onnxplain loads, runs and explains it as it comes, against the Keras
network's own outputs stored beside it.

Needs TensorFlow and tf2onnx (not onnxplain dependencies; the files are committed):

    pip install tensorflow-cpu tf2onnx scikit-learn scikit-image onnx
    python models/build_keras_tf.py        # ~20 s on 2 CPU cores; writes models/digits_keras_tf.onnx and
                                           # models/samples/digits_keras_tf_check.npz
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build import CNN_SPEC, cnn_input, load_split, write_export_fixture  # noqa: E402

EPOCHS, BATCH, SEED = 8, 64, 0
NHWC_SPEC = dict(CNN_SPEC, layout="NHWC")


def make_network():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import onnx

    keras.utils.set_random_seed(SEED)
    (train_images, train_labels), (test_images, test_labels) = load_split()
    to_nhwc = lambda images: cnn_input(images).transpose(0, 2, 3, 1)  # noqa: E731  (N,1,28,28) -> (N,28,28,1)
    network = make_network()
    network.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    network.fit(to_nhwc(train_images), train_labels, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    test_x = to_nhwc(test_images)
    accuracy = float((network.predict(test_x, verbose=0).argmax(1) == test_labels).mean())
    with tempfile.TemporaryDirectory() as folder:
        network.export(str(Path(folder) / "model.onnx"), format="onnx", verbose=False, opset_version=17)
        model = onnx.load(Path(folder) / "model.onnx")
    write_export_fixture(model, "digits_keras_tf", NHWC_SPEC, test_x, test_labels,
                         lambda inputs: network.predict(inputs, verbose=0))
    print(f"digits_keras_tf.onnx: test accuracy {accuracy:.4f} (keras {keras.__version__}, "
          f"backend {keras.backend.backend()})")


if __name__ == "__main__":
    main()
