"""Torch device names: the one key per device that executors are cached under, and the check that one is usable."""
from __future__ import annotations

import torch

from .errors import OnnxplainError


def device_key(device: str | torch.device) -> str:
    """One name per device ("cuda" is the current GPU's "cuda:N"), for caching executors; an unknown name as
    given (building its executor then says what is wrong with it)."""
    try:
        chosen = torch.device(device)
    except RuntimeError:
        return str(device)
    if chosen.type == "cuda" and chosen.index is None and torch.cuda.is_available():
        chosen = torch.device("cuda", torch.cuda.current_device())
    return str(chosen)


def usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch device this torch build can use; else an OnnxplainError that says why."""
    try:
        chosen = torch.device(device)
    except RuntimeError:  # torch's message lists every device type it knows
        raise OnnxplainError(f"device {str(device)!r} is not a torch device name (cpu, cuda, cuda:N, mps, ...)") \
            from None
    try:
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise OnnxplainError(f"device {str(device)!r}: this torch build sees no CUDA GPU")
        torch.empty(0, device=chosen)
    except (RuntimeError, ValueError, AssertionError) as error:
        raise OnnxplainError(f"device {str(device)!r} is not usable: {str(error).splitlines()[0]}") from None
    return chosen
