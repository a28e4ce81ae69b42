"""Synthetic images for the data tests."""

from __future__ import annotations

import numpy as np


def natural_like(h=120, w=160, seed=0):
    """Colour 1/f noise: the spectrum of natural photos, with edges and smooth areas."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft2(rng.standard_normal((3, h, w)))
    spectrum /= np.maximum(np.hypot(np.fft.rfftfreq(w)[None, :], np.fft.fftfreq(h)[:, None]), 1 / w)
    x = np.fft.irfft2(spectrum, s=(h, w))
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 50 * x, 0, 255).astype(np.uint8).transpose(1, 2, 0)
