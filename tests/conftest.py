"""Shared fixtures: the shipped example models, materialised zoo graphs, and a usable (or placeholder) torchvision."""
from __future__ import annotations

from pathlib import Path

import pytest

from onnxplain.compat import ensure_torchvision

ensure_torchvision()  # zennit and onnx2torch import torchvision; the CPU torch here cannot load the real one

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SAMPLES = MODELS / "samples"


@pytest.fixture(scope="session")
def digits_cnn() -> Path:
    return MODELS / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits_cnn_model(digits_cnn):
    """The shipped digits CNN, loaded once per test module."""
    import onnxplain

    return onnxplain.load(digits_cnn)


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
