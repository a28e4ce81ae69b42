"""The SimSiam recipe's augmentation distributions, checked statistically on the shipped config.

Frequencies are compared with binomial tolerances (4.5 standard deviations: a correct
implementation fails about once in 150,000 runs; a wrong probability such as 0.5 vs 0.2 fails
always). All draws are seeded, so the test is also reproducible.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.images import natural_like

from trainer.data import DataError
from trainer.data import transforms as T

RECIPE = (Path(__file__).resolve().parents[2] / "trainer" / "configs"
          / "simsiam_resnet50_pt_in1k_1n8c_dp_fp32.yaml")
N = 3000


def within_binomial(count, n, p):
    return abs(count / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def recipe_views():
    transform = yaml.safe_load(RECIPE.read_text())["DataLoader"]["Train"]["dataset"]["transform"]
    return T.build_views(transform)


@pytest.fixture(scope="module")
def ops(recipe_views):
    return {type(op).__name__: op for op in recipe_views.pipelines[0].ops}


def colourful(h=24, w=32, seed=0):
    """Asymmetric, saturated, textured: every op visibly changes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], axis=-1)
    return np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)


def test_recipe_parses_into_two_identical_views(recipe_views):
    assert len(recipe_views.pipelines) == 2
    assert recipe_views.output_size == (224, 224)
    names = [type(op).__name__ for op in recipe_views.pipelines[1].ops]
    assert names == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "SimCLRGaussianBlur",
                     "RandomHorizontalFlip"]
    gain, bias = recipe_views.device_affine()
    np.testing.assert_allclose(gain, 1 / (255 * np.array([0.229, 0.224, 0.225])), rtol=1e-6)
    np.testing.assert_allclose(bias, -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)


def test_crop_area_and_aspect_fall_in_range_and_cover_it(ops):
    crop = ops["RandomResizedCrop"]
    rng = np.random.default_rng(0)
    W, H = 500, 375
    boxes = np.array([crop.box(W, H, rng) for _ in range(N)])
    x, y, w, h = boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= W).all() and (y + h <= H).all()
    area = w * h / (W * H)
    aspect = w / h
    rounding = 2 / min(w.min(), h.min())  # w, h are whole pixels
    assert area.min() >= 0.2 * (1 - rounding) and area.max() <= 1.0
    assert area.min() < 0.22 and area.max() > 0.95  # the whole range is reached
    assert aspect.min() >= 3 / 4 * (1 - rounding) and aspect.max() <= 4 / 3 * (1 + rounding)
    log_aspect = np.log(aspect) / math.log(4 / 3)  # uniform in [-1, 1] when log-uniform
    assert log_aspect.min() < -0.9 and log_aspect.max() > 0.9
    # Small crops are never rejected, so there the log-aspect is exactly log-uniform.
    small = log_aspect[area < 0.5]
    assert within_binomial(int((small < 0).sum()), len(small), 0.5)
    assert within_binomial(int((np.abs(small) < 0.5).sum()), len(small), 0.5)
    # Area fractions are drawn uniformly from [0.2, 1]; large ones with extreme aspect ratios do
    # not fit and are redrawn, but below 0.5625 = 0.75^2 every draw fits, so there it is uniform.
    low = area[area < 0.5]
    assert within_binomial(int((low < 0.35).sum()), len(low), 0.5)


def applied_fraction(op, image, changed, n=N):
    rng = np.random.default_rng(1)
    return sum(bool(changed(op(image, rng))) for _ in range(n))


def test_flip_probability(ops):
    image = colourful()
    flips = applied_fraction(ops["RandomHorizontalFlip"], image,
                             lambda out: np.array_equal(out, image[:, ::-1]))
    assert within_binomial(flips, N, 0.5)


def test_grayscale_probability(ops):
    image = colourful()
    grays = applied_fraction(ops["RandomGrayscale"], image,
                             lambda out: (np.array_equal(out[..., 0], out[..., 1])
                                          and np.array_equal(out[..., 1], out[..., 2])))
    assert ops["RandomGrayscale"].p == 0.2 and within_binomial(grays, N, 0.2)


def test_blur_probability_and_sigma_range(ops):
    blur = ops["SimCLRGaussianBlur"]
    edge = np.zeros((9, 41, 3), np.uint8)
    edge[:, 21:] = 255  # a step between columns 20 and 21
    rng = np.random.default_rng(2)
    sigmas, applied = [], 0
    for _ in range(N):
        out = blur(edge, rng)
        if out is edge:
            continue
        applied += 1
        # A blurred step's slope is the Gaussian itself: its spread is sigma.
        slope = np.diff(out[4, :, 0].astype(float))
        d = np.arange(40) - 20
        sigmas.append(math.sqrt((slope * d * d).sum() / slope.sum()))
    sigmas = np.array(sigmas)
    assert within_binomial(applied, N, 0.5)
    assert sigmas.max() <= 2.0 * 1.05 and sigmas.max() > 1.85  # sigma up to 2, reached
    assert sigmas.min() < 0.4  # and small sigmas too
    assert within_binomial(int((sigmas > 1.05).sum()), applied, 0.5)  # uniform: median ~ 1.05


def test_jitter_probability_strengths_and_random_order(ops):
    jitter = ops["ColorJitter"]
    assert jitter.strengths == {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    image = colourful()
    applied = applied_fraction(jitter, image, lambda out: out is not image)
    assert within_binomial(applied, N, 0.8)

    grey = np.full((8, 8, 3), 100, np.uint8)
    bright = T.ColorJitter(brightness=0.4)
    rng = np.random.default_rng(3)
    factors = np.array([bright(grey, rng)[0, 0, 0] / 100 for _ in range(N)])
    assert factors.min() >= 0.6 - 0.01 and factors.max() <= 1.4 + 0.01
    assert factors.min() < 0.62 and factors.max() > 1.38
    assert within_binomial(int((factors < 1.0).sum()), N, 0.5)

    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    hue = T.ColorJitter(hue=0.1)
    import cv2
    shifts = []
    for _ in range(N):
        h = int(cv2.cvtColor(hue(red, rng), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0])
        shifts.append((h if h < 128 else h - 256) / 256)
    shifts = np.array(shifts)
    assert shifts.min() >= -0.1 - 0.01 and shifts.max() <= 0.1 + 0.01
    assert shifts.min() < -0.09 and shifts.max() > 0.09

    # Random order: brightness first vs contrast first are about equally common.
    class Recording(T.ColorJitter):
        def __init__(self):
            super().__init__(brightness=0.4, contrast=0.4)
            self.calls = []

        def brightness(self, array, factor):
            self.calls.append("b")
            return array

        def contrast(self, array, factor):
            self.calls.append("c")
            return array

    recording = Recording()
    for _ in range(1000):
        recording(image, rng)
    firsts = recording.calls[::2]
    assert sorted(set(zip(firsts, recording.calls[1::2], strict=True))) == [("b", "c"), ("c", "b")]
    assert within_binomial(firsts.count("b"), len(firsts), 0.5)


def test_whole_recipe_grayscale_rate_end_to_end(recipe_views):
    """A full view: only RandomGrayscale makes R == G == B (saturation factors are >= 0.6)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.repeat(np.repeat(colourful(48, 64), 8, 0), 8, 1)).save(buffer, "PNG")
    data = buffer.getvalue()
    rng = np.random.default_rng(4)
    n, gray = 600, 0
    for _ in range(n):
        view = recipe_views.pipelines[0](T.Source(data), rng)
        assert view.shape == (224, 224, 3) and view.dtype == np.uint8
        gray += bool((view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all())
    assert within_binomial(gray, n, 0.2)


@pytest.mark.parametrize("transform,words", [
    ([{"RandomResizeCrop": {"size": 224}}], "did you mean 'RandomResizedCrop'"),
    ([{"RandomResizedCrop": {"size": 224, "scael": [0.2, 1]}}], "scael"),
    ([{"RandomResizedCrop": {"size": 224, "interpolation": "cubic"}}], "interpolation"),
    ([{"ColorJitter": {"p": 1.5}}], "probability"),
    ([{"SimCLRGaussianBlur": {"sigma": [2.0, 0.1]}}], "min <= max"),
    ([{"TwoViewsTransform": {"base_transform1": []}}], "base_transform2"),
    ([{"ToTensor": None}, {"RandomHorizontalFlip": None}], "put ToTensor and Normalize last"),
])
def test_transform_config_errors_are_one_line(transform, words):
    with pytest.raises(DataError) as e:
        T.build_views(transform)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_passl_classification_op_names_mean_the_same_ops():
    """PASSL's ViT/linear-probe configs spell the ops differently; they must behave the same."""
    passl = T.build_views([{"DecodeImage": {"to_rgb": True, "channel_first": False}},
                           {"ResizeImage": {"resize_short": 36}},
                           {"CenterCropImage": {"size": [32, 30]}},  # [width, height]
                           {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406],
                                               "std": [0.229, 0.224, 0.225], "order": ""}},
                           {"ToCHWImage": None}])
    ours = T.build_views([{"Resize": {"size": 36}}, {"CenterCrop": {"size": [30, 32]}},
                          {"ToTensor": None},
                          {"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}])
    assert passl.output_size == ours.output_size == (30, 32)
    for a, b in zip(passl.device_affine(), ours.device_affine(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(colourful(40, 50)).save(buffer, "PNG")
    rng = np.random.default_rng(0)
    out_a = passl(T.Source(buffer.getvalue()), rng)[0]
    out_b = ours(T.Source(buffer.getvalue()), rng)[0]
    assert out_a.shape == (30, 32, 3) and np.array_equal(out_a, out_b)
    flips = T.build_views([{"RandFlipImage": {"flip_code": 1}}]).pipelines[0].ops[0]
    image = colourful()
    flipped = applied_fraction(flips, image, lambda out: np.array_equal(out, image[:, ::-1]))
    assert within_binomial(flipped, N, 0.5)


def _jpeg(array, quality=90):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_ops_without_a_region_get_the_full_size_image():
    """Only a crop or resize may decode a JPEG at reduced scale; a flip or CenterCrop first sees
    every pixel (a reduced decode there once gave 1/4-size views)."""
    data = _jpeg(np.repeat(np.repeat(colourful(12, 16), 4, 0), 4, 1))  # 64x48
    rng = np.random.default_rng(0)
    assert T.build_views([{"RandomHorizontalFlip": None}])(T.Source(data), rng)[0].shape == (48, 64, 3)
    center = T.build_views([{"CenterCrop": {"size": 32}}])(T.Source(data), rng)[0]
    assert center.shape == (32, 32, 3) and center.min(axis=(0, 1)).max() > 0  # not black padding


def test_reduced_scale_decoding_keeps_the_views_statistics():
    """Crops that keep >= 224 px per side at 1/2 scale are cut from a 1/2-scale JPEG decode; their
    views must match those from the full-size decode in brightness, contrast and sharpness (mean
    gradient). For scale: our full-size views are 15 % less sharp than PIL's (the reference's)."""
    data = _jpeg(natural_like(900, 1200))
    crop = T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation="bicubic")  # all fit at 1/2
    full_size = T.Source(data)
    full_size.decoded(1200, 900)
    half = T.Source(data)
    half.decoded(600, 450)
    rng = np.random.default_rng(5)
    boxes = [crop.box(1200, 900, rng) for _ in range(40)]
    reduced = np.stack([half.region(box, 224, 224, crop.interpolation) for box in boxes]).astype(float)
    full = np.stack([full_size.region(box, 224, 224, crop.interpolation) for box in boxes]).astype(float)
    assert [a.shape for a in half._decoded] == [(450, 600, 3)]  # every crop was cut from the 1/2 decode

    def sharpness(views):
        return np.abs(np.diff(views, axis=2)).mean()

    assert abs(reduced.mean() - full.mean()) < 0.5
    assert abs(reduced.std() / full.std() - 1) < 0.02
    assert abs(sharpness(reduced) / sharpness(full) - 1) < 0.1, (sharpness(reduced), sharpness(full))


def test_views_share_one_decode_at_the_smallest_scale_their_crops_allow():
    """The views' crop boxes are drawn before decoding: one decode serves both, at 1/2 scale when
    both crops keep >= 224 px per side there, at full size when either needs it."""
    data = _jpeg(natural_like(900, 1200))
    crop = [{"RandomResizedCrop": {"size": 224, "scale": [0.5, 1.0], "interpolation": "bicubic"}}]
    halves = T.build_views([{"TwoViewsTransform": {"base_transform1": crop, "base_transform2": crop}}])
    source = T.Source(data)
    assert [v.shape for v in halves(source, np.random.default_rng(0))] == [(224, 224, 3)] * 2
    assert [a.shape for a in source._decoded] == [(450, 600, 3)]
    small = [{"RandomResizedCrop": {"size": 224, "scale": [0.05, 0.1]}}]  # < 448 px per side
    mixed = T.build_views([{"TwoViewsTransform": {"base_transform1": crop, "base_transform2": small}}])
    source = T.Source(data)
    mixed(source, np.random.default_rng(0))
    assert [a.shape for a in source._decoded] == [(900, 1200, 3)]
