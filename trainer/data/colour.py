"""Colour changes on uint8 HWC RGB arrays, each one OpenCV pass over the image (the ops of
trainer.data.transforms' ColorJitter and RandomGrayscale)."""
from __future__ import annotations

import functools

import cv2
import numpy as np

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL's "L"

# Linear changes as 3x4 matrices [M | offset] for cv2.transform: out = M @ rgb + offset per pixel,
# rounded and clipped to uint8, in one pass (several times faster than lookup tables or blending).
# Built from these constants with a multiply or two (numpy's hstack/eye cost more than the pass).
_IDENTITY = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32)
_TO_GRAY = np.hstack([np.tile(GRAY_WEIGHTS, (3, 1)), np.zeros((3, 1), np.float32)])


def brightness(array: np.ndarray, factor: float) -> np.ndarray:
    return cv2.transform(array, factor * _IDENTITY)


def contrast(array: np.ndarray, factor: float) -> np.ndarray:
    r, g, b, _ = cv2.mean(array)
    matrix = factor * _IDENTITY
    matrix[:, 3] = (0.299 * r + 0.587 * g + 0.114 * b) * (1 - factor)  # towards the mean grey
    return cv2.transform(array, matrix)


def saturation(array: np.ndarray, factor: float) -> np.ndarray:
    return cv2.transform(array, factor * _IDENTITY + (1 - factor) * _TO_GRAY)


def grayscale(array: np.ndarray) -> np.ndarray:
    return cv2.transform(array, _TO_GRAY)


def adjust_hue(array: np.ndarray, shift: float) -> np.ndarray:
    """Rotate hue by `shift` turns in HSV with 256 hue steps (uint8 addition wraps around)."""
    hsv = cv2.cvtColor(array, cv2.COLOR_RGB2HSV_FULL)
    # Adding (step, 0, 0) to every pixel is one contiguous vectorized pass, 6x faster than adding
    # to the strided hue channel (OpenCV's addition saturates instead of wrapping).
    hsv += _hue_channel(hsv.shape) * np.uint8(int(round(shift * 256)) % 256)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


@functools.lru_cache(maxsize=4)
def _hue_channel(shape) -> np.ndarray:
    """1 in the hue channel, 0 in the others."""
    ones = np.zeros(shape, np.uint8)
    ones[..., 0] = 1
    return ones
