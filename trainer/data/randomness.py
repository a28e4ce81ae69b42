"""Per-sample randomness for the augmentation ops.

An op draws a handful of numbers per image; numpy's Generator costs 2-6 us per scalar draw and
about 25 us to seed, which came to ~5 % of a two-view sample's CPU time. Python's Mersenne
Twister draws a scalar in well under 1 us and seeds from a string in ~10 us, with the same
uniform quality for this use. The ops only call the four methods below, so a numpy Generator
works in their place too (the tests hand them one).
"""
from __future__ import annotations

import random


class SampleRandom(random.Random):
    """random.Random with the subset of numpy.random.Generator's interface the ops use."""

    def integers(self, low: int, high: int) -> int:
        """Uniform in [low, high), as Generator.integers."""
        return low + int(self.random() * (high - low))

    def permutation(self, n: int) -> list[int]:
        order = list(range(n))
        self.shuffle(order)
        return order


def sample_random(stream: int, seed: int, epoch: int, index: int) -> SampleRandom:
    """A generator that depends only on its arguments. A string seed is hashed (SHA-512) into
    the generator's state, so neighbouring indices give unrelated streams."""
    return SampleRandom(f"{stream}:{seed}:{epoch}:{index}")
