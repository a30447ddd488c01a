"""Shared fixtures: the shipped example models, materialised zoo graphs, and a usable (or placeholder) torchvision."""
from __future__ import annotations

from pathlib import Path

import pytest

from onnxplain.compat import ensure_torchvision

ensure_torchvision()  # zennit and onnx2torch import torchvision; the CPU torch here cannot load the real one

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = MODELS / "samples"
DIGIT_BATCH = 6   # inputs in the `digit_batch` fixture
QUICK_EVALUATION = ["--methods", "occlusion", "--region", "4", "--steps", "20", "--shuffles", "3", "--quiet"]


@pytest.fixture(scope="session")
def digits_cnn() -> Path:
    return MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits_cnn_model(digits_cnn):
    """The shipped digits CNN, loaded once per test module."""
    import onnxplain

    return onnxplain.load(digits_cnn)


@pytest.fixture(scope="module")
def digit_batch(digits_cnn, tmp_path_factory):
    """(folder, x, labels): the first DIGIT_BATCH test digits saved as one .npy batch in `folder`, with a labels.csv
    naming them `batch.npy[i]` (rows in reverse order: any order must do)."""
    import numpy as np

    folder = tmp_path_factory.mktemp("digits")
    x = np.load(SAMPLES / "digits_test100_cnn.npy")[:DIGIT_BATCH]
    labels = np.load(SAMPLES / "digits_test100_labels.npy")[:DIGIT_BATCH]
    np.save(folder / "batch.npy", x)
    rows = [f"batch.npy[{i}],{label}" for i, label in enumerate(labels)]
    (folder / "labels.csv").write_text("input,label\n" + "\n".join(rows[::-1]) + "\n")
    return folder, x, labels


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache folder of the test's own (`ONNXPLAIN_CACHE`: fitted conditional samplers are cached on disk)."""
    monkeypatch.setenv("ONNXPLAIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def digits_logreg() -> Path:
    return MODELS / "digits_logreg.onnx"


@pytest.fixture(scope="session")
def zoo_path():
    """Materialise a zoo model (cached on disk across runs): zoo_path('squeezenet') -> Path."""
    from onnxplain.zoo import materialize

    return materialize


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (`pytest.mark.usefixtures`): on small tensors threads only fight
    each other (and other tests) on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
