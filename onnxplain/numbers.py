"""Numbers users give (counts, sizes, seeds) checked once, and seeded draws that do not depend on the batch.

Every method and metric takes its integers through `whole_number` / `whole_numbers` / `seed_number`, so a float,
bool or string is refused with one line that names the option instead of being truncated; `image_generators`
gives each input its own generator from the seed and the input's values.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .errors import OnnxplainError


def whole_number(option: str, value, least: int, most: int | None = None) -> int:
    """`value` as an int when it is an integer (not a bool, float or string) from `least` to `most` (if given);
    else a user error that names the option."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise OnnxplainError(f"{option} must be an integer, not {value!r}")
    if value < least:
        raise OnnxplainError(f"{option} must be at least {least}, got {value}")
    if most is not None and value > most:
        raise OnnxplainError(f"{option} must be at most {most}, got {value}")
    return int(value)


SEED_MAX = 2**64 - 1  # seeds are unsigned 64-bit integers (numpy and torch generators)


def seed_number(value) -> int:
    """`value` as a seed: an integer from 0 to 2**64 - 1."""
    return whole_number("seed", value, 0, SEED_MAX)


def whole_numbers(option: str, value, least: int) -> int | tuple[int, ...]:
    """`whole_number` for an integer or a sequence of integers (one per axis)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            raise OnnxplainError(f"{option} must be an integer or one integer per axis, not {value!r}")
        return tuple(whole_number(option, v, least) for v in value)
    return whole_number(option, value, least)


def image_generators(x: np.ndarray, seed: int) -> list[np.random.Generator]:
    """One generator per image, seeded by `seed` and a digest of the image's values: its draws do not depend on
    which images share its batch, or their order, yet differ from image to image."""
    return [np.random.default_rng([seed, int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(),
                                                                          digest_size=8).digest(), "little")])
            for image in x]
