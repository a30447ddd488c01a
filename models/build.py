"""Build the example models shipped in ``models/`` and their sample inputs.

Two classifiers of scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``, values 0..16):

* ``digits_cnn.onnx``    a small torch CNN on the digits upsampled to 28x28 and scaled to [0, 1]; outputs logits.
* ``digits_logreg.onnx`` a scikit-learn ``LogisticRegression`` on the raw 64 features, exported by skl2onnx as it
  emits it by default (LinearClassifier + Normalizer + ZipMap).

Both hold out the same test split (the last 20% of a fixed permutation, seed 0), are checked against
onnxruntime before they are written, and carry their preprocessing spec (``onnxplain.preprocess``) and class labels
(``onnxplain.labels``) in the ONNX ``metadata_props``. Sample inputs (PNGs and preprocessed ``.npy`` tensors) and
reference sets for prediction-difference sampling go to ``samples/``.

Deterministic (fixed seeds, deterministic torch algorithms, 2 threads); runs in well under a minute on 2 cores::

    python models/build.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_FRACTION = 0.2
CNN_SIZE = 28
SAMPLE_DIGITS = (0, 3, 7, 8)
REFERENCE_COUNT = 100
LABELS = [str(d) for d in range(10)]

CNN_SPEC = {"layout": "NCHW", "size": [28, 28], "color": "gray", "resize": "stretch",
            "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
LOGREG_SPEC = {"layout": "flat", "size": [8, 8], "color": "gray", "resize": "stretch",
               "scale": 16 / 255, "mean": [0.0], "std": [1.0]}


# ---------------------------------------------------------------------------------------------------- data

def load_split():
    """Digits as (images 8x8 in 0..16 float64, labels), split into train / test by a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SEED).permutation(len(digits.target))
    n_test = int(round(TEST_FRACTION * len(order)))
    train, test = order[:-n_test], order[-n_test:]
    images, labels = digits.images.astype(np.float64), digits.target.astype(np.int64)
    return (images[train], labels[train]), (images[test], labels[test])


def upsample(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 28, 28) values 0..16, bilinear, no anti-aliasing."""
    from skimage.transform import resize

    return np.stack([resize(image, (CNN_SIZE, CNN_SIZE), order=1, anti_aliasing=False, preserve_range=True)
                     for image in images])


def cnn_input(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> the CNN's input (N, 1, 28, 28) float32 in [0, 1]."""
    return (upsample(images) / 16.0)[:, None].astype(np.float32)


def logreg_input(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> the logistic regression's input (N, 64) float32 in 0..16."""
    return images.reshape(len(images), -1).astype(np.float32)


def add_metadata(model, spec: dict) -> None:
    """Embed the preprocessing spec and the class labels in ``metadata_props`` (replacing earlier entries)."""
    entries = {"onnxplain.preprocess": json.dumps(spec), "onnxplain.labels": json.dumps(LABELS)}
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def write_export_fixture(model, name: str, spec: dict, test_x: np.ndarray, test_labels: np.ndarray, predict) -> None:
    """Save another framework's export with the spec and labels embedded (`name.onnx`), and the first test digit of
    each sample class with the source network's probabilities for them (`samples/name_check.npz`)."""
    import onnx

    add_metadata(model, spec)
    onnx.save(model, HERE / f"{name}.onnx")
    picks = [int(np.flatnonzero(test_labels == d)[0]) for d in SAMPLE_DIGITS]
    check = test_x[picks]
    np.savez(HERE / "samples" / f"{name}_check.npz", inputs=check, probabilities=predict(check),
             labels=test_labels[picks])


def op_types(model) -> list[str]:
    return sorted({f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                   for n in model.graph.node})


# ---------------------------------------------------------------------------------------------------- CNN

def make_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8 x 14 x 14
        nn.Conv2d(8, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 7 x 7
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_classifier(x: np.ndarray, y: np.ndarray, epochs: int = 20, batch_size: int = 64, make=None):
    """A classifier (the CNN, or `make()`) trained on (x, y): seeded Adam (lr 2e-3) on shuffled mini-batches; returns
    the model in eval mode. Every digits classifier here (this one, the biased-8 one of build_contrastive.py, the
    vision transformer of build_transformer.py) uses this recipe."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    model = (make or make_cnn)()
    x_train, y_train = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(batch_size):
            optimiser.zero_grad()
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    model.eval()
    return model


def train_cnn(train, test, epochs: int = 20, batch_size: int = 64):
    """Train the CNN (seeded, deterministic); returns (model in eval mode, test accuracy)."""
    import torch

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model = train_classifier(cnn_input(train[0]), train[1], epochs, batch_size)
    with torch.no_grad():
        predicted = model(torch.from_numpy(cnn_input(test[0]))).argmax(1)
    accuracy = (predicted == torch.from_numpy(test[1])).double().mean().item()
    return model, accuracy


def export_cnn(model, path: Path, check_inputs: np.ndarray) -> tuple:
    """Export to ONNX (input "image" [N,1,28,28], output "logits"), verify against torch, embed metadata, write.

    Uses the dynamo exporter (opset 18); falls back to the TorchScript exporter (opset 17) if that fails.
    Returns (onnx model, exporter description).
    """
    import onnx
    import onnxruntime as ort
    import torch

    example = torch.from_numpy(check_inputs[:2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=18, input_names=["image"],
                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        onnx_model = program.model_proto
        exporter = "torch.onnx.export dynamo=True, opset 18"
    except Exception as error:  # noqa: BLE001 - any exporter failure: use the older one
        print(f"dynamo export failed ({type(error).__name__}: {error}); falling back to dynamo=False, opset 17")
        import io

        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
        onnx_model = onnx.load_from_string(buffer.getvalue())
        exporter = "torch.onnx.export dynamo=False, opset 17"

    onnx_model.doc_string = "digits CNN (28x28 grayscale in [0,1]) -> 10 logits; built by models/build.py"
    add_metadata(onnx_model, CNN_SPEC)
    onnx.checker.check_model(onnx_model, full_check=True)

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"], session.get_inputs()
    assert [o.name for o in session.get_outputs()] == ["logits"], session.get_outputs()
    with torch.no_grad():
        expected = model(torch.from_numpy(check_inputs)).numpy()
    got = session.run(["logits"], {"image": check_inputs})[0]
    diff = float(np.abs(got - expected).max())
    if not diff < 1e-4:
        raise RuntimeError(f"CNN: onnxruntime and torch differ by {diff}")
    print(f"  CNN onnxruntime vs torch max abs diff {diff:.2e} over {len(check_inputs)} inputs")
    onnx.save(onnx_model, path)
    return onnx_model, exporter


# ---------------------------------------------------------------------------------------------------- logreg

def train_logreg(train, test):
    """Fit the logistic regression on the raw 64 features; returns (classifier, test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=5000)
    classifier.fit(logreg_input(train[0]), train[1])
    accuracy = float(classifier.score(logreg_input(test[0]), test[1]))
    return classifier, accuracy


def export_logreg(classifier, path: Path, check_inputs: np.ndarray):
    """Export with skl2onnx's defaults (ZipMap kept), input "input" float [None, 64]; verify; embed metadata; write."""
    import onnx
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(classifier, initial_types=[("input", FloatTensorType([None, 64]))])
    opsets = sorted(onnx_model.opset_import, key=lambda o: o.domain)  # skl2onnx's order varies run to run
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(opsets)
    onnx_model.doc_string = "digits logistic regression (64 features in 0..16) -> label, probabilities; " \
                            "built by models/build.py"
    add_metadata(onnx_model, LOGREG_SPEC)
    onnx.checker.check_model(onnx_model, full_check=True)

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": check_inputs})
    probabilities = np.array([[row[c] for c in classifier.classes_] for row in probabilities])  # ZipMap -> array
    diff = float(np.abs(probabilities - classifier.predict_proba(check_inputs)).max())
    if not diff < 1e-4:
        raise RuntimeError(f"logreg: onnxruntime and scikit-learn probabilities differ by {diff}")
    if not np.array_equal(label, classifier.predict(check_inputs)):
        raise RuntimeError("logreg: onnxruntime and scikit-learn labels differ")
    print(f"  logreg onnxruntime vs scikit-learn max abs probability diff {diff:.2e} over {len(check_inputs)} inputs")
    onnx.save(onnx_model, path)
    return onnx_model


# ---------------------------------------------------------------------------------------------------- samples

def write_samples(out: Path, train, test, cnn_model, classifier) -> list[str]:
    """Sample digits from the test split (one each of SAMPLE_DIGITS, classified right by both models) as PNGs and
    preprocessed tensors, plus the first REFERENCE_COUNT training images preprocessed for each model."""
    import torch
    from PIL import Image

    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name, write):
        write(samples / name)
        written.append(f"samples/{name}")

    images, labels = test
    cnn_x, logreg_x = cnn_input(images), logreg_input(images)
    with torch.no_grad():
        cnn_pred = cnn_model(torch.from_numpy(cnn_x)).argmax(1).numpy()
    logreg_pred = classifier.predict(logreg_x)
    for digit in SAMPLE_DIGITS:
        index = int(np.flatnonzero((labels == digit) & (cnn_pred == digit) & (logreg_pred == digit))[0])
        png28 = np.round(cnn_x[index, 0] * 255).astype(np.uint8)
        png8 = np.round(images[index] / 16 * 255).astype(np.uint8)
        save(f"digit{digit}.png", lambda p: Image.fromarray(png28).save(p))
        save(f"digit{digit}_8x8.png", lambda p: Image.fromarray(png8).save(p))
        save(f"digit{digit}_cnn.npy", lambda p: np.save(p, cnn_x[index]))
        save(f"digit{digit}_logreg.npy", lambda p: np.save(p, logreg_x[index]))

    reference = train[0][:REFERENCE_COUNT]
    save("digits_reference_cnn.npy", lambda p: np.save(p, cnn_input(reference)))
    save("digits_reference_logreg.npy", lambda p: np.save(p, logreg_input(reference)))
    return written


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: the models/ folder)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_split()
    print(f"digits: {len(train[1])} train, {len(test[1])} test")

    cnn_model, cnn_accuracy = train_cnn(train, test)
    print(f"digits_cnn    test accuracy {cnn_accuracy:.4f}")
    cnn_onnx, exporter = export_cnn(cnn_model, out / "digits_cnn.onnx", cnn_input(test[0]))
    print(f"  exported with {exporter}; ops: {', '.join(op_types(cnn_onnx))}")

    classifier, logreg_accuracy = train_logreg(train, test)
    print(f"digits_logreg test accuracy {logreg_accuracy:.4f}")
    logreg_onnx = export_logreg(classifier, out / "digits_logreg.onnx", logreg_input(test[0]))
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in logreg_onnx.opset_import)
    print(f"  exported with skl2onnx to_onnx ({opsets}); ops: {', '.join(op_types(logreg_onnx))}")

    written = write_samples(out, train, test, cnn_model, classifier)
    print(f"wrote digits_cnn.onnx, digits_logreg.onnx and {len(written)} sample files to {out}")


if __name__ == "__main__":
    main()
