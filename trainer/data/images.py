"""Decoding and resampling for the augmentation ops (trainer.data.transforms): an image is decoded
once for both views, at a reduced JPEG scale when the crop is large enough that no detail is lost,
and cropped before it is resized.
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

cv2.setNumThreads(1)  # parallelism comes from loader workers, one image per core

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4, "area": cv2.INTER_AREA,
}


class CorruptImage(Exception):
    """The file could not be decoded; the loader skips and counts it."""


# ---------------------------------------------------------------------------------------------
# Decoding


class Source:
    """An undecoded image file. Geometry ops ask it for a region at an output size, so a JPEG can
    be decoded at 1/2, 1/4, ... scale when the region still has at least the output's pixels.
    Regions announced in advance (reserve) are served by the same decode; decodes are cached, so
    the views of a sample share them."""

    def __init__(self, data: bytes):
        self.data = data
        self._decoded: list[np.ndarray] = []
        self._reserved = (0, 0)
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            self.is_jpeg = True
        except ValueError:
            self.is_jpeg = False
            try:
                w, h = Image.open(io.BytesIO(data)).size
            except Exception as e:  # PIL raises many types for unreadable files
                raise CorruptImage(str(e) or type(e).__name__) from None
        self.size = (w, h)

    def reserve(self, box, out_w: int, out_h: int) -> None:
        """Announce that region(box, out_w, out_h) will be asked for."""
        w, h = self._needed(box, out_w, out_h)
        self._reserved = (max(self._reserved[0], w), max(self._reserved[1], h))

    def _needed(self, box, out_w: int, out_h: int) -> tuple[int, int]:
        """The decoded size at which box=(x, y, w, h), in original pixels, keeps >= the output's
        pixels in both directions."""
        W, H = self.size
        _, _, w, h = box
        return min(W, math.ceil(W * out_w / w)), min(H, math.ceil(H * out_h / h))

    def decoded(self, min_w: int, min_h: int) -> np.ndarray:
        """The image (HWC uint8 RGB) at the smallest cached or decodable scale that is at least
        (min_w, min_h) and every reserved size."""
        fits = [a for a in self._decoded if a.shape[1] >= min_w and a.shape[0] >= min_h]
        if fits:
            return min(fits, key=lambda a: a.shape[0])
        min_w, min_h = max(min_w, self._reserved[0]), max(min_h, self._reserved[1])
        array = None
        if self.is_jpeg:
            # Only power-of-two reductions: libjpeg's n/8 scales in between are slower to decode
            # than the full size.
            W, H = self.size
            k = 1
            while k < 8 and W >= 2 * k * min_w and H >= 2 * k * min_h:
                k *= 2
            try:
                array = simplejpeg.decode_jpeg(self.data, "RGB", min_height=math.ceil(H / k) if k > 1 else 0,
                                               min_width=math.ceil(W / k) if k > 1 else 0)
            except ValueError:
                pass  # CMYK, progressive oddities, truncation: let PIL decide below
        if array is None:
            array = self._decode_with_pil()
        self._decoded.append(array)
        return array

    def _decode_with_pil(self) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(self.data)) as im:
                return np.asarray(im.convert("RGB"))
        except Exception as e:  # truncated, unsupported or garbage data
            raise CorruptImage(str(e) or type(e).__name__) from None

    def region(self, box, out_w: int, out_h: int, interpolation: int) -> np.ndarray:
        """Crop box=(x, y, w, h) in original pixels, resized to (out_w, out_h)."""
        W, H = self.size
        x, y, w, h = box
        array = self.decoded(*self._needed(box, out_w, out_h))
        sx, sy = array.shape[1] / W, array.shape[0] / H
        x0, y0 = int(round(x * sx)), int(round(y * sy))
        x1 = max(x0 + 1, min(array.shape[1], int(round((x + w) * sx))))
        y1 = max(y0 + 1, min(array.shape[0], int(round((y + h) * sy))))
        return resize(array[y0:y1, x0:x1], out_w, out_h, interpolation, reduced=W / array.shape[1])


def as_array(image) -> np.ndarray:
    return image.decoded(*image.size) if isinstance(image, Source) else image  # full size


def resize(array: np.ndarray, out_w: int, out_h: int, interpolation: int, reduced: float = 1.0) -> np.ndarray:
    """`reduced`: the array was decoded at 1/reduced of the original size (JPEG scaling)."""
    h, w = array.shape[:2]
    # Scales from original pixels to output pixels.
    sx, sy = reduced * w / out_w, reduced * h / out_h
    # OpenCV's bilinear/bicubic do not low-pass when shrinking, PIL's filters (the reference's)
    # widen with the reduction and do. A reduction by more than 1.5x along an axis is therefore
    # low-passed first with a Gaussian of sigma 0.45 sqrt(scale^2 - 1), which comes closest to
    # PIL's widened bicubic (mean |difference| about 1.8 of 255 at the recipe's crops) and costs a
    # third less than OpenCV's area averaging at non-integer scales. A reduced JPEG decode is no
    # substitute: it keeps everything below its own Nyquist limit at full strength (views 16-50 %
    # sharper by mean gradient), so the same Gaussian, in original pixels, is applied after it.
    if interpolation in (cv2.INTER_LINEAR, cv2.INTER_CUBIC) and (sx > 1.5 or sy > 1.5):
        array = cv2.sepFilter2D(array, -1, _low_pass(sx, reduced), _low_pass(sy, reduced))
    if (w, h) == (out_w, out_h):
        return array
    return cv2.resize(array, (out_w, out_h), interpolation=interpolation)


def _low_pass(scale: float, reduced: float) -> np.ndarray:
    if scale <= 1:
        return _IDENTITY_KERNEL
    sigma = 0.45 * math.sqrt(scale * scale - 1) / reduced  # in the decoded image's pixels
    return cv2.getGaussianKernel(2 * math.ceil(2.5 * sigma) + 1, sigma)


_IDENTITY_KERNEL = np.ones((1, 1), np.float64)


def region(image, box, out_w, out_h, interpolation) -> np.ndarray:
    if isinstance(image, Source):
        return image.region(box, out_w, out_h, interpolation)
    x, y, w, h = box
    return resize(image[y:y + h, x:x + w], out_w, out_h, interpolation)


def image_size(image) -> tuple[int, int]:
    return image.size if isinstance(image, Source) else (image.shape[1], image.shape[0])
