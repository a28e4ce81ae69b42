"""Augmentation ops named as in PASSL's configs, run on uint8 HWC RGB arrays with OpenCV.

Why not PIL/torchvision: the two-view SimSiam recipe is the CPU bottleneck of a GPU node. Here an
image is decoded once for both views (at a reduced JPEG scale when the crop is large enough that
no detail is lost), cropped before it is resized, and every later op works on the small uint8
crop (colour changes as one OpenCV colour-matrix pass each). ToTensor and Normalize are not run
here: they are recorded and applied on the device by ``Loader.to_tensor``.

Randomness: every op draws from the generator it is handed (uniform, random, integers and
permutation, as numpy's Generator); the loader seeds one per (seed, epoch, sample index), see
trainer.data.randomness, so augmentations do not depend on worker count or timing.
"""
from __future__ import annotations

import difflib
import math

import cv2
import numpy as np

from trainer.data import colour
from trainer.data.colour import adjust_hue
from trainer.data.errors import DataError
from trainer.data.images import INTERPOLATIONS, Source, as_array, image_size, region

# ---------------------------------------------------------------------------------------------
# Ops. Each takes (image, rng) -> image and exposes the output size it fixes (or None).


def _pair(size, name):
    """PASSL sizes are an int (square, or the short side for Resize) or [h, w]."""
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise DataError(f"{name}.size must be a positive int or [height, width], got {size!r}")


def _range(value, name, low=None):
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) for v in value) and value[0] <= value[1]):
        raise DataError(f"{name} must be [min, max] with min <= max, got {value!r}")
    if low is not None and value[0] < low:
        raise DataError(f"{name} must be >= {low}, got {value!r}")
    return float(value[0]), float(value[1])


def _prob(value, name):
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _interp(name, op):
    if name not in INTERPOLATIONS:
        raise DataError(f"{op}.interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}")
    return INTERPOLATIONS[name]


class _RegionOp:
    """A geometry op that takes one region of its input, resized. As a pipeline's first op it
    works on the undecoded Source, which Views tells the regions of all views before decoding."""

    def region_of(self, width: int, height: int, rng):
        """(box, out_w, out_h) for a width x height input, drawing this op's randomness."""
        raise NotImplementedError

    def take(self, image, chosen):
        box, out_w, out_h = chosen
        return region(image, box, out_w, out_h, self.interpolation)

    def __call__(self, image, rng):
        return self.take(image, self.region_of(*image_size(image), rng))


class RandomResizedCrop(_RegionOp):
    """A crop covering a uniform fraction `scale` of the area with a log-uniform aspect `ratio`,
    resized to `size` (Szegedy et al.'s crop, as in the SimSiam recipe)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
        self.out_h, self.out_w = _pair(size, "RandomResizedCrop")
        self.scale = _range(scale, "RandomResizedCrop.scale", low=0)
        self.log_ratio = tuple(math.log(r) for r in _range(ratio, "RandomResizedCrop.ratio", low=1e-6))
        self.interpolation = _interp(interpolation, "RandomResizedCrop")
        self.output_size = (self.out_h, self.out_w)

    def box(self, width: int, height: int, rng: np.random.Generator):
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
        # Rarely reached (very elongated images): the largest centred crop with a ratio in range.
        lo, hi = (math.exp(r) for r in self.log_ratio)
        aspect = min(max(width / height, lo), hi)
        w, h = ((width, int(round(width / aspect))) if width / height <= aspect
                else (int(round(height * aspect)), height))
        w, h = min(w, width), min(h, height)
        return (width - w) // 2, (height - h) // 2, w, h

    def region_of(self, width, height, rng):
        return self.box(width, height, rng), self.out_w, self.out_h


class Resize(_RegionOp):
    """An int size resizes the short side (keeping the aspect ratio); [h, w] resizes exactly."""

    def __init__(self, size, interpolation="bilinear"):
        self.short_side = size if isinstance(size, int) else None
        self.out_h, self.out_w = _pair(size, "Resize")
        self.interpolation = _interp(interpolation, "Resize")
        self.output_size = None if self.short_side else (self.out_h, self.out_w)

    def region_of(self, w, h, rng):
        out_w, out_h = self.out_w, self.out_h
        if self.short_side:
            s = self.short_side
            out_w, out_h = (s, max(1, int(s * h / w))) if w <= h else (max(1, int(s * w / h)), s)
        return (0, 0, w, h), out_w, out_h


class CenterCrop:
    def __init__(self, size):
        self.out_h, self.out_w = _pair(size, "CenterCrop")
        self.output_size = (self.out_h, self.out_w)

    def __call__(self, image, rng):
        array = as_array(image)
        h, w = array.shape[:2]
        if h < self.out_h or w < self.out_w:  # pad like the reference: centred, black
            ph, pw = max(0, self.out_h - h), max(0, self.out_w - w)
            array = cv2.copyMakeBorder(array, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2,
                                       cv2.BORDER_CONSTANT, value=0)
            h, w = array.shape[:2]
        y, x = int(round((h - self.out_h) / 2)), int(round((w - self.out_w) / 2))
        return array[y:y + self.out_h, x:x + self.out_w]


class ColorJitter:
    """With probability p: brightness, contrast, saturation and hue changes in a random order,
    factors uniform in [1 - s, 1 + s] (hue: shift uniform in [-s, s] of a turn)."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0):
        self.p = _prob(p, "ColorJitter.p")
        for name, value, top in (("brightness", brightness, None), ("contrast", contrast, None),
                                 ("saturation", saturation, None), ("hue", hue, 0.5)):
            if not isinstance(value, (int, float)) or value < 0 or (top and value > top):
                raise DataError(f"ColorJitter.{name} must be a number in [0, {top or 'inf'}], got {value!r}")
        self.strengths = {"brightness": brightness, "contrast": contrast,
                          "saturation": saturation, "hue": hue}
        # (name, low, high): the range each active change's factor (hue: shift) is drawn from
        self.active = [(name, -s, s) if name == "hue" else (name, max(0.0, 1 - s), 1 + s)
                       for name, s in self.strengths.items() if s > 0]
        self.output_size = None

    def __call__(self, image, rng):
        if rng.random() >= self.p:
            return image
        array = as_array(image)
        for i in rng.permutation(len(self.active)):
            name, low, high = self.active[int(i)]
            factor = rng.uniform(low, high)
            array = adjust_hue(array, factor) if name == "hue" else getattr(self, name)(array, factor)
        return array

    # The changes themselves (static, so that tests can call them on their own)
    brightness = staticmethod(colour.brightness)
    contrast = staticmethod(colour.contrast)
    saturation = staticmethod(colour.saturation)


class RandomGrayscale:
    def __init__(self, p=0.1):
        self.p = _prob(p, "RandomGrayscale.p")
        self.output_size = None

    def __call__(self, image, rng):
        if rng.random() >= self.p:
            return image
        return colour.grayscale(as_array(image))


class SimCLRGaussianBlur:
    """With probability p, a Gaussian blur with sigma uniform in `sigma` (SimCLR's blur)."""

    def __init__(self, sigma=(0.1, 2.0), p=0.5):
        self.sigma = _range(sigma, "SimCLRGaussianBlur.sigma", low=1e-6)
        self.p = _prob(p, "SimCLRGaussianBlur.p")
        self.output_size = None

    def __call__(self, image, rng):
        if rng.random() >= self.p:
            return image
        sigma = rng.uniform(*self.sigma)
        # A separable float kernel of radius 3 sigma: twice as fast as cv2.GaussianBlur's
        # bit-exact uint8 path, same result to within rounding.
        kernel = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma)
        return cv2.sepFilter2D(as_array(image), -1, kernel, kernel)


class RandomHorizontalFlip:
    def __init__(self, p=0.5, prob=None):
        self.p = _prob(p if prob is None else prob, "RandomHorizontalFlip.p")
        self.output_size = None

    def __call__(self, image, rng):
        if rng.random() >= self.p:
            return image
        return cv2.flip(as_array(image), 1)    # a contiguous copy: later copies of a reversed view are slow


class DeviceOp:
    """Recorded, not run on the CPU: ToTensor/Normalize become one per-channel affine map
    (x * gain + bias) that Loader.to_tensor applies on the device, cheaper than on the workers."""

    output_size = None

    def affine(self, gain: np.ndarray, bias: np.ndarray):
        raise NotImplementedError


def _channels(value, name) -> np.ndarray:
    if not (isinstance(value, (list, tuple)) and len(value) in (1, 3)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise DataError(f"{name} must be a list of 1 or 3 numbers, got {value!r}")
    return np.broadcast_to(np.asarray(value, np.float32), (3,)).copy()


class ToTensor(DeviceOp):
    """uint8 -> float in [0, 1]. data_format is accepted; batches are always NCHW."""

    def __init__(self, data_format="CHW"):
        pass

    def affine(self, gain, bias):
        return gain / 255.0, bias / 255.0


class Normalize(DeviceOp):
    """(x - mean) / std per channel."""

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), data_format="CHW", scale=1.0):
        self.mean, self.std = _channels(mean, "Normalize.mean"), _channels(std, "Normalize.std")
        if (self.std == 0).any():
            raise DataError("Normalize.std must not contain 0")
        self.scale = scale

    def affine(self, gain, bias):
        return gain * self.scale / self.std, (bias * self.scale - self.mean) / self.std


# PASSL's classification-style op names (its ViT/linear-probe configs use them), mapped onto the
# ops above. Sizes there are an int or [width, height].


def _number(value, name) -> float:
    """PASSL writes NormalizeImage.scale as a fraction string such as '1.0/255.0'."""
    if isinstance(value, str) and value.count("/") == 1:
        try:
            top, bottom = (float(v) for v in value.split("/"))
            return top / bottom
        except (ValueError, ZeroDivisionError):
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise DataError(f"{name} must be a number or a fraction like '1.0/255.0', got {value!r}")


def _height_width(size):
    """PASSL's [width, height] -> our [height, width]; an int stays square."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return [size[1], size[0]]
    return size


def _interp_name(interpolation):
    return "bilinear" if interpolation is None else interpolation


def DecodeImage(to_rgb=True, channel_first=False, to_np=None):
    return None  # images are always decoded to RGB


def ToCHWImage():
    return None  # batches are always NCHW


def ResizeImage(size=None, resize_short=None, interpolation=None, backend=None):
    if resize_short is not None:
        return Resize(resize_short, _interp_name(interpolation))
    if size is None:
        raise DataError("ResizeImage needs size or resize_short")
    h, w = _pair(_height_width(size), "ResizeImage")
    return Resize([h, w], _interp_name(interpolation))


def CenterCropImage(size):
    return CenterCrop(_height_width(size))


def RandCropImage(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=None, backend=None):
    return RandomResizedCrop(_height_width(size), scale, ratio, _interp_name(interpolation))


class RandFlipImage:
    """With probability 0.5, flip: flip_code 1 horizontally, 0 vertically, -1 both (cv2's codes)."""

    output_size = None

    def __init__(self, flip_code=1):
        if flip_code not in (-1, 0, 1):
            raise DataError(f"RandFlipImage.flip_code must be -1, 0 or 1, got {flip_code!r}")
        self.flip_code = flip_code

    def __call__(self, image, rng):
        if rng.random() >= 0.5:
            return image
        return cv2.flip(np.ascontiguousarray(as_array(image)), self.flip_code)


def NormalizeImage(scale=None, mean=None, std=None, order="chw", output_fp16=False, channel_num=3):
    if channel_num != 3:
        raise DataError("NormalizeImage.channel_num: only 3 channels are supported")
    return Normalize(mean if mean is not None else [0.485, 0.456, 0.406],
                     std if std is not None else [0.229, 0.224, 0.225],
                     scale=_number(scale, "NormalizeImage.scale") if scale is not None else 1 / 255.0)


OPS = {op.__name__: op for op in (RandomResizedCrop, Resize, CenterCrop, ColorJitter,
                                   RandomGrayscale, SimCLRGaussianBlur, RandomHorizontalFlip,
                                   ToTensor, Normalize, DecodeImage, ToCHWImage, ResizeImage,
                                   CenterCropImage, RandCropImage, RandFlipImage, NormalizeImage)}


# ---------------------------------------------------------------------------------------------
# Pipelines


class Pipeline:
    """One view: the ops before ToTensor, plus the device-side scale/normalization."""

    def __init__(self, ops: list):
        self.ops, self.device_ops = [], []
        for op in ops:
            if op is None:  # a PASSL op that is implicit here (decode, HWC -> CHW)
                continue
            if isinstance(op, DeviceOp):
                self.device_ops.append(op)
            elif self.device_ops:
                raise DataError(f"{type(op).__name__} after ToTensor/Normalize is not supported; "
                                "put ToTensor and Normalize last")
            else:
                self.ops.append(op)
        last_geometry = [op for op in self.ops if isinstance(op, (RandomResizedCrop, Resize, CenterCrop))]
        self.output_size = last_geometry[-1].output_size if last_geometry else None

    def first_region(self, source: Source, rng):
        """The first op's region of `source` (drawing its randomness now), or None when the first
        op takes no region."""
        if self.ops and isinstance(self.ops[0], _RegionOp):
            return self.ops[0].region_of(*source.size, rng)
        return None

    def __call__(self, image, rng, first_region=None) -> np.ndarray:
        ops = self.ops
        if first_region is not None:  # drawn in advance by Views
            image, ops = ops[0].take(image, first_region), ops[1:]
        for op in ops:
            image = op(image, rng)
        return as_array(image)

    def device_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (gain, bias) so that the device computes uint8 * gain + bias."""
        gain, bias = np.ones(3, np.float32), np.zeros(3, np.float32)
        for op in self.device_ops:
            gain, bias = op.affine(gain, bias)
        return gain.astype(np.float32), bias.astype(np.float32)


class Views:
    """What a dataset's `transform` list builds: one pipeline, or two for TwoViewsTransform."""

    def __init__(self, pipelines: list[Pipeline]):
        self.pipelines = pipelines
        sizes = {p.output_size for p in pipelines}
        affines = {tuple(np.concatenate(p.device_affine()).tolist()) for p in pipelines}
        if len(affines) > 1:
            raise DataError("the views of TwoViewsTransform must use the same ToTensor/Normalize")
        self.output_size = sizes.pop() if len(sizes) == 1 else None

    def __call__(self, source: Source, rng) -> list[np.ndarray]:
        # Draw every view's region before decoding: then one decode serves all views, at the
        # smallest JPEG scale that still leaves each region at least its output's pixels.
        regions = [pipeline.first_region(source, rng) for pipeline in self.pipelines]
        for r in regions:
            if r is not None:
                source.reserve(*r)
        return [pipeline(source, rng, r) for pipeline, r in zip(self.pipelines, regions, strict=True)]

    def device_affine(self):
        return self.pipelines[0].device_affine()


def _make_op(entry, where):
    if isinstance(entry, str):
        entry = {entry: None}
    if not (isinstance(entry, dict) and len(entry) == 1):
        raise DataError(f"{where}: each transform is a mapping {{OpName: {{args}}}}, got {entry!r}")
    (name, args), = entry.items()
    args = args or {}
    if name not in OPS:
        close = difflib.get_close_matches(str(name), list(OPS) + ["TwoViewsTransform"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(OPS)}"
        raise DataError(f"{where}: unknown transform '{name}'{hint}")
    if not isinstance(args, dict):
        raise DataError(f"{where}.{name}: arguments must be a mapping, got {args!r}")
    try:
        return OPS[name](**args)
    except TypeError as e:
        raise DataError(f"{where}.{name}: {e}".replace("__init__() ", "")) from None


def _pipeline(entries, where) -> Pipeline:
    if not isinstance(entries, list):
        raise DataError(f"{where} must be a list of transforms, got {entries!r}")
    return Pipeline([_make_op(e, f"{where}[{i}]") for i, e in enumerate(entries)])


def build_views(transform, where="dataset.transform") -> Views:
    """Build from a PASSL transform list: either ops, or a single TwoViewsTransform entry."""
    if transform is None:
        transform = []
    if (isinstance(transform, list) and len(transform) == 1 and isinstance(transform[0], dict)
            and "TwoViewsTransform" in transform[0]):
        args = transform[0]["TwoViewsTransform"] or {}
        unknown = set(args) - {"base_transform1", "base_transform2"}
        if unknown or not {"base_transform1", "base_transform2"} <= set(args):
            raise DataError(f"{where}.TwoViewsTransform needs exactly base_transform1 and base_transform2"
                            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
        return Views([_pipeline(args[k], f"{where}.TwoViewsTransform.{k}")
                      for k in ("base_transform1", "base_transform2")])
    return Views([_pipeline(transform, where)])
