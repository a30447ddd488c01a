"""Build the two-digit detector of the deep Taylor paper's MNIST experiment, at small scale with scikit-learn digits.

Montavon et al., "Explaining nonlinear classification decisions with deep Taylor decomposition" (2017), Sec. 6.1:
an image of two handwritten digits side by side; a ReLU network with one output detects whether a digit 0-3 is present.
Here the digits are scikit-learn's 8x8 ones, upsampled to 28x28 exactly as ``build.py`` does, so an image is 28x56.
As in the paper:

* pixels are coded from -0.5 (black) to +1.5 (white);
* two detection-pooling layers: 400 ReLU detectors sum-pooled in groups of 4 into 100 units, then 400 ReLU detectors
  sum-pooled into the single output (sum-pooling is a fixed, untrained matrix of ones);
* weights start from N(0, 0.05), biases from 0 and are kept <= 0 throughout training;
* regression: target 100 for a positive image, 0 for a negative one, mean-square error;
* the training digits are randomly translated (here by up to 2 pixels).

Departures, for CPU minutes: Adam instead of plain SGD and 12 000 minibatches of 32 instead of 300 000 of 20.
The digits come from ``build.py``'s split: training pairs use its training digits and evaluation pairs its test digits.

Writes ``two_digits.onnx`` (input ``image`` [N,1,28,56], output ``score`` [N,1]; preprocessing spec and label in
``metadata_props``), checked against torch with onnxruntime first. Deterministic (seeds, deterministic algorithms)::

    python models/two_digits.py [--out DIR]

The experiment that explains it (relevance on the target digit's half, deep Taylor vs sensitivity) is
``two_digits_experiment.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
SIZE = 28                      # one digit's side after upsampling
SHAPE = (1, SIZE, 2 * SIZE)    # one input, no batch axis
LOW, HIGH = -0.5, 1.5          # the paper's pixel coding: black -> -0.5, white -> +1.5
TARGET_DIGITS = (0, 1, 2, 3)
POSITIVE_VALUE = 100.0
MAX_SHIFT = 2
DETECTORS, POOLED = 400, 100
STEPS, BATCH, LEARNING_RATE = 12_000, 32, 1e-3
SPEC = {"layout": "NCHW", "size": [SIZE, 2 * SIZE], "color": "gray", "resize": "stretch",
        "scale": (HIGH - LOW) / 255, "mean": [-LOW], "std": [1.0]}
LABELS = ["digit 0-3 present"]


def _build_module():
    """``build.py`` (the digit split and the upsampling), loaded by path: ``models/`` is not a package."""
    spec = importlib.util.spec_from_file_location("onnxplain_models_build", HERE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------- data

def digit_canvases() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """build.py's train / test split as (28x28 digits with ink in [0, 1], labels)."""
    build = _build_module()
    train, test = build.load_split()
    return ((build.upsample(train[0]) / 16.0, train[1]), (build.upsample(test[0]) / 16.0, test[1]))


def compose(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Canvases (..., 28, 28) in [0, 1], side by side -> model inputs (..., 1, 28, 56) coded from LOW to HIGH."""
    ink = np.concatenate([left, right], axis=-1)
    return (LOW + (HIGH - LOW) * ink)[..., None, :, :].astype(np.float32)


def translated(padded: np.ndarray, index: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Crops of the zero-padded canvases: padded[index] cut at `offset` (..., 2), i.e. translated by offset - pad."""
    rows = offset[..., 0, None] + np.arange(SIZE)
    cols = offset[..., 1, None] + np.arange(SIZE)
    return padded[index[..., None, None], rows[..., :, None], cols[..., None, :]]


def training_batch(padded, labels, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random batch from the canvases zero-padded by MAX_SHIFT: half positives (a digit 0-3 on a random side, any
    digit on the other), half negatives (two digits 4-9); every digit translated by up to MAX_SHIFT pixels.
    Returns (x, regression targets)."""
    targets = np.flatnonzero(np.isin(labels, TARGET_DIGITS))
    others = np.flatnonzero(~np.isin(labels, TARGET_DIGITS))
    n_positive = size // 2
    positive = np.stack([rng.choice(targets, n_positive), rng.integers(len(labels), size=n_positive)], axis=1)
    positive = np.where(rng.random((n_positive, 1)) < 0.5, positive, positive[:, ::-1])
    pairs = np.concatenate([positive, rng.choice(others, (size - n_positive, 2))])
    digits = translated(padded, pairs, rng.integers(0, 2 * MAX_SHIFT + 1, size=pairs.shape + (2,)))
    y = np.where(np.arange(size) < n_positive, POSITIVE_VALUE, 0.0).astype(np.float32)
    return compose(digits[:, 0], digits[:, 1]), y


def evaluation_pairs(canvases, labels, positives: int, negatives: int, seed: int = SEED + 1):
    """Untranslated evaluation images: `positives` with exactly one digit 0-3 (on a random side, the other digit 4-9)
    and `negatives` with two digits 4-9. Returns (x (N,1,28,56), digits (N, 2), target side (N,): 0 = left,
    1 = right, -1 = none)."""
    rng = np.random.default_rng(seed)
    targets = np.flatnonzero(np.isin(labels, TARGET_DIGITS))
    others = np.flatnonzero(~np.isin(labels, TARGET_DIGITS))
    pairs, sides = [], []
    for i in range(positives + negatives):
        if i < positives:
            side = int(rng.integers(2))
            pair = [rng.choice(targets), rng.choice(others)][::1 if side == 0 else -1]
        else:
            side, pair = -1, list(rng.choice(others, size=2))
        pairs.append(pair)
        sides.append(side)
    pairs = np.asarray(pairs)
    return compose(canvases[pairs[:, 0]], canvases[pairs[:, 1]]), labels[pairs], np.asarray(sides)


# ---------------------------------------------------------------------------------------------------- network

def sum_pool(inputs: int, outputs: int):
    """A fixed linear map that sums non-overlapping groups of inputs/outputs units (exported as a MatMul by ones)."""
    import torch

    layer = torch.nn.Linear(inputs, outputs, bias=False)
    group = inputs // outputs
    with torch.no_grad():
        layer.weight.copy_(torch.kron(torch.eye(outputs), torch.ones(1, group)))
    layer.weight.requires_grad_(False)
    return layer


def make_network():
    """Flatten -> 400 ReLU detectors -> sum-pool to 100 -> 400 ReLU detectors -> sum-pool to 1."""
    import torch.nn as nn

    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(np.prod(SHAPE)), DETECTORS), nn.ReLU(), sum_pool(DETECTORS, POOLED),
        nn.Linear(POOLED, DETECTORS), nn.ReLU(), sum_pool(DETECTORS, 1),
    )
    for detector in (net[1], net[4]):
        nn.init.normal_(detector.weight, 0.0, 0.05)
        nn.init.zeros_(detector.bias)
    return net


def train(canvases, labels, steps: int = STEPS, progress: bool = True):
    """Fit the network by mean-square regression to 0 / POSITIVE_VALUE, biases clamped to <= 0 after every step."""
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(SEED)
    padded = np.pad(canvases, ((0, 0), (MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT)))
    net = make_network()
    trained = [p for p in net.parameters() if p.requires_grad]
    biases = [net[1].bias, net[4].bias]
    optimiser = torch.optim.Adam(trained, lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in tqdm(range(steps), desc="training", disable=not progress, mininterval=2):
        x, y = training_batch(padded, labels, rng, BATCH)
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x))[:, 0], torch.from_numpy(y))
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            for bias in biases:
                bias.clamp_(max=0.0)
    return net.eval()


def accuracy(net, x: np.ndarray, sides: np.ndarray) -> float:
    """Share of images on the right side of the decision threshold POSITIVE_VALUE / 2."""
    import torch

    with torch.no_grad():
        score = net(torch.from_numpy(x))[:, 0].numpy()
    return float(((score > POSITIVE_VALUE / 2) == (sides >= 0)).mean())


# ---------------------------------------------------------------------------------------------------- export

def export(net, path: Path, check_inputs: np.ndarray) -> str:
    """Export with torch.onnx.export (dynamo, opset 18), verify against torch with onnxruntime, embed metadata, write.
    Returns the ONNX op types used."""
    import onnx
    import onnxruntime as ort
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (torch.from_numpy(check_inputs[:2]),), dynamo=True, opset_version=18, input_names=["image"],
            output_names=["score"], dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
    model = program.model_proto
    model.doc_string = ("two-digit detector (28x56 grayscale coded -0.5..1.5) -> one score, about 100 when a digit "
                        "0-3 is present; built by models/two_digits.py")
    for key, value in {"onnxplain.preprocess": json.dumps(SPEC), "onnxplain.labels": json.dumps(LABELS)}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model, full_check=True)

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(torch.from_numpy(check_inputs)).numpy()
    got = session.run(["score"], {"image": check_inputs})[0]
    diff = float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))
    if not diff < 1e-5:
        raise RuntimeError(f"two_digits: onnxruntime and torch differ by {diff} (relative)")
    print(f"  onnxruntime vs torch max relative diff {diff:.2e} over {len(check_inputs)} inputs")
    onnx.save(model, path)
    return ", ".join(sorted({n.op_type for n in model.graph.node}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: the models/ folder)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training minibatches (default {STEPS})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    (train_canvases, train_labels), (test_canvases, test_labels) = digit_canvases()
    started = time.perf_counter()
    net = train(train_canvases, train_labels, steps=args.steps)
    print(f"trained {args.steps} minibatches of {BATCH} in {time.perf_counter() - started:.0f} s")
    x, _, sides = evaluation_pairs(test_canvases, test_labels, positives=500, negatives=500)
    print(f"test accuracy (500 positive, 500 negative pairs of test digits) {accuracy(net, x, sides):.4f}")
    ops = export(net, args.out / "two_digits.onnx", x)
    print(f"wrote {args.out / 'two_digits.onnx'}; ops: {ops}")


if __name__ == "__main__":
    main()
