"""Numbers users give (counts, sizes, seeds) checked once, and seeded draws that do not depend on the batch.

Every method and metric takes its integers through `whole_number` / `whole_numbers` / `seed_number` and its
real-valued settings through `real_number`, so a float where an integer belongs, a bool, a string or a NaN is
refused with one line that names the option instead of being truncated or failing later; `image_generators` gives
each input its own generator from the seed and the input's values.
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


def optional_whole_number(option: str, value, least: int) -> int | None:
    """`whole_number`, or None when `value` is None (the option's default applies)."""
    return None if value is None else whole_number(option, value, least)


def real_number(option: str, value, least: float | None = None, exclusive: bool = False) -> float:
    """`value` as a finite float (an int or float, not a bool or string), at least `least` (above it when
    `exclusive`); else a user error that names the option."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OnnxplainError(f"{option} must be a number, not {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise OnnxplainError(f"{option} must be a finite number, got {value}")
    if least is not None and (number < least or (exclusive and number == least)):
        raise OnnxplainError(f"{option} must be {'above' if exclusive else 'at least'} {least:g}, got {value}")
    return number


def number_array(option: str, value) -> np.ndarray:
    """`value` as a float64 array (of any shape), or a user error naming the option (strings, ragged lists)."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise OnnxplainError(f"{option} must be an array of numbers, not {_short(value)}") from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
