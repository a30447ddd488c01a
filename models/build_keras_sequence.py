"""A Keras Conv1D sequence classifier on TensorFlow, exported through tf2onnx: the TensorFlow export of 1-D data as a
fixture, on a task whose evidence is known.

Sequences of 48 positions and 3 channels of Gaussian noise carry one planted bump (a triangle 5 positions wide) in
channel 0, 1 or 2 (classes "ch0", "ch1", "ch2"), or bumps in channels 0 and 2 at the same position ("ch0+ch2"). The
exported graph takes Keras's (N, L, C) order; tf2onnx writes each Conv1D as an Unsqueeze to (N, 1, L, C), a
Transpose to (N, C, 1, L) and a 2-D convolution with a 1 x k kernel. `tests/test_sequences.py` checks that onnxplain
reads the samples as sequences, that its outputs match Keras's stored beside it, and that explanations land on the
bumps.

Needs TensorFlow and tf2onnx (not onnxplain dependencies; the files are committed):

    pip install tensorflow-cpu tf2onnx onnx
    python models/build_keras_sequence.py   # ~6 s on 2 CPU cores; writes models/sequence_keras_tf.onnx and
                                            # models/samples/sequence_keras_tf_check.npz
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LENGTH, CHANNELS, WIDTH = 48, 3, 5
LABELS = ["ch0", "ch1", "ch2", "ch0+ch2"]
EPOCHS, BATCH, SEED, TRAIN, CHECK = 12, 64, 0, 3000, 40


def planted(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequences (count, L, C) float32, classes, each bump's first position)."""
    x = rng.normal(scale=0.5, size=(count, LENGTH, CHANNELS)).astype(np.float32)
    classes = rng.integers(0, len(LABELS), count)
    starts = rng.integers(0, LENGTH - WIDTH + 1, count)
    bump = (1 - np.abs(np.linspace(-1, 1, WIDTH + 2)[1:-1])) * 3.0   # a triangle, peak 3 (6 noise sigmas)
    for x_i, c, s in zip(x, classes, starts):
        for channel in ((0, 2) if c == 3 else (c,)):
            x_i[s:s + WIDTH, channel] += bump
    return x, classes, starts


def make_network():
    import keras

    return keras.Sequential([
        keras.Input((LENGTH, CHANNELS), name="sequence"),
        keras.layers.Conv1D(8, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(16, 3, padding="same", activation="relu"),
        keras.layers.GlobalMaxPooling1D(),
        keras.layers.Dense(len(LABELS), activation="softmax"),
    ])


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import onnx

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    train_x, train_y, _ = planted(TRAIN, rng)
    check_x, check_y, check_starts = planted(CHECK, rng)
    network = make_network()
    network.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    network.fit(train_x, train_y, epochs=EPOCHS, batch_size=BATCH, verbose=0)
    probabilities = network.predict(check_x, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        network.export(str(Path(folder) / "model.onnx"), format="onnx", verbose=False, opset_version=17)
        model = onnx.load(Path(folder) / "model.onnx")
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxplain.labels", json.dumps(LABELS)
    onnx.save(model, HERE / "sequence_keras_tf.onnx")
    np.savez(HERE / "samples" / "sequence_keras_tf_check.npz", inputs=check_x, probabilities=probabilities,
             labels=check_y, starts=check_starts)
    accuracy = float((probabilities.argmax(1) == check_y).mean())
    print(f"sequence_keras_tf.onnx: accuracy {accuracy:.3f} on {CHECK} held-out sequences "
          f"(keras {keras.__version__}, backend {keras.backend.backend()})")


if __name__ == "__main__":
    main()
