"""The samplers' random streams written out literally: splitmix64 (checked on its published seed-0 outputs), the
(0, 1) uniforms with 53 bits each, and Box-Muller pairs (cos for the first half of a row, sin of the same draws
for the second). Seeded explanations are reproducible only as long as these numbers stay exactly the same."""
from __future__ import annotations

import math

import numpy as np

from onnxplain.methods.samplers import GAMMA, _mix, window_bits, window_normals, window_uniforms

MASK = 2**64 - 1


def splitmix_output(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def literal_bits(seed: int, window: int, count: int) -> list[int]:
    key = splitmix_output((seed & MASK) ^ 0x5851F42D4C957F2D)
    start = splitmix_output(key ^ ((window * GAMMA) & MASK))
    return [splitmix_output((start + step * GAMMA) & MASK) for step in range(1, count + 1)]


def test_mix_is_splitmix64_on_its_published_outputs():
    """splitmix64 from state 0 outputs e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f (Vigna's reference)."""
    states = np.array([GAMMA, 2 * GAMMA & MASK, 3 * GAMMA & MASK], dtype=np.uint64)
    assert [int(v) for v in _mix(states)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_bits_uniforms_and_normals_follow_the_literal_algorithm():
    seed, windows, count = 12345, [0, 1, 77, 2**40], 7
    bits = window_bits(seed, windows, count)
    assert [[int(b) for b in row] for row in bits] == [literal_bits(seed, w, count) for w in windows]
    uniforms = [[((b >> 11) + 0.5) * 2.0 ** -53 for b in literal_bits(seed, w, 2 * count)] for w in windows]
    np.testing.assert_array_equal(window_uniforms(seed, windows, 2 * count), uniforms)
    pairs = -(-count // 2)
    wanted = []
    for row in window_uniforms(seed, windows, 2 * pairs):
        radius = [math.sqrt(-2.0 * math.log(u)) for u in row[:pairs]]
        angle = [2.0 * math.pi * u for u in row[pairs:]]
        wanted.append(([r * math.cos(a) for r, a in zip(radius, angle)]
                       + [r * math.sin(a) for r, a in zip(radius, angle)])[:count])
    np.testing.assert_allclose(window_normals(seed, windows, count), wanted, rtol=1e-12, atol=1e-14)
