"""Living with a broken or absent torchvision (CPU torch builds here cannot load its compiled ops).

onnx2torch and zennit import torchvision at import time but need it only for NMS/RoiAlign and for
torchvision-specific canonizers. `ensure_torchvision()` leaves a working torchvision alone and otherwise
installs a placeholder module, so those packages import; the placeholder raises if actually used.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types


class _Unavailable:
    """Stands in for a torchvision class or function; using it says why it is missing."""

    def __init__(self, *args, **kwargs):
        raise ImportError("torchvision is not usable with this torch build")


def ensure_torchvision() -> bool:
    """True if the real torchvision works; otherwise a placeholder is installed and False returned."""
    try:
        import torchvision  # noqa: F401

        return True
    except Exception:  # RuntimeError for missing compiled ops, ImportError when absent
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    root = types.ModuleType("torchvision")
    root.__path__ = []
    root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)  # find_spec() must not raise (torch.onnx)
    models, resnet, ops = (types.ModuleType(n) for n in ("torchvision.models", "torchvision.models.resnet",
                                                         "torchvision.ops"))
    resnet.Bottleneck = type("Bottleneck", (_Unavailable,), {})
    resnet.BasicBlock = type("BasicBlock", (_Unavailable,), {})
    ops.nms = ops.roi_align = ops.box_convert = _Unavailable
    models.resnet, root.models, root.ops = resnet, models, ops
    sys.modules.update({"torchvision": root, "torchvision.models": models,
                        "torchvision.models.resnet": resnet, "torchvision.ops": ops})
    return False
