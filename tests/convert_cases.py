"""The converter tests' shared cases: small torch networks as source text (for the CLI's factory files) and as
modules, one whose branch its export cannot keep, and a plain onnxruntime run."""
from __future__ import annotations

import onnxruntime as ort
import torch

SPEC = {"layout": "NCHW", "size": [6, 6], "color": "gray"}
MEAN_SOURCE = """
import torch


class Mean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def make():
    return Mean()
"""

NET_SOURCE = """
import torch

def make():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 4 * 4, 3))
"""


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def small_net():
    torch.manual_seed(0)
    namespace = {}
    exec(NET_SOURCE, namespace)
    return namespace["make"]().eval()


class SignBranch(torch.nn.Module):
    """Python control flow on the data: an exporter that traces one branch gives a model that is wrong elsewhere."""

    def forward(self, x):
        flat = x.flatten(1)
        if bool(flat.sum() > 0):
            return torch.stack([flat.sum(1), -flat.sum(1)], 1)
        return torch.stack([-flat.sum(1), flat.sum(1)], 1)
