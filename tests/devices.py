"""The torch device the device-aware tests run on: `ONNXPLAIN_TEST_DEVICE` (e.g. cuda), else the CPU.

CI has no GPU, so there these tests run on the CPU (and `test_device_parity.py` is skipped); on a machine with
one, `ONNXPLAIN_TEST_DEVICE=cuda python -m pytest tests/test_executor_ops.py tests/test_ops_extra.py
tests/test_device_parity.py` runs every op case and every method there.
"""
from __future__ import annotations

import os

import numpy as np
import torch

REQUESTED = os.environ.get("ONNXPLAIN_TEST_DEVICE")
DEVICE = torch.device(REQUESTED or "cpu")


def on_device(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).to(DEVICE)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
