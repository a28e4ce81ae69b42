"""Our OpenCV ops against torchvision's PIL-based ones (the recipe's reference implementation),
at fixed parameters: the images must agree to within rounding-level differences."""
import numpy as np
import pytest
from helpers.images import natural_like
from PIL import Image, ImageFilter

from trainer.data import transforms as T

pytestmark = pytest.mark.torch


def mean_abs_diff(ours, reference):
    ours, reference = np.asarray(ours, float), np.asarray(reference, float)
    assert ours.shape == reference.shape
    return np.abs(ours - reference).mean()


class Fixed:
    """A generator stand-in that always applies an op, with the given parameter."""

    def __init__(self, value):
        self.value = value

    def random(self):
        return 0.0

    def uniform(self, low, high):
        return self.value


IMAGE = natural_like()


@pytest.mark.parametrize("factor", [0.6, 1.4])
def test_brightness_contrast_saturation(torchvision_functional, factor):
    F, pil = torchvision_functional, Image.fromarray(IMAGE)
    assert mean_abs_diff(T.ColorJitter.brightness(IMAGE, factor), F.adjust_brightness(pil, factor)) < 1
    assert mean_abs_diff(T.ColorJitter.contrast(IMAGE, factor), F.adjust_contrast(pil, factor)) < 1
    assert mean_abs_diff(T.ColorJitter.saturation(IMAGE, factor), F.adjust_saturation(pil, factor)) < 1


@pytest.mark.parametrize("shift", [-0.1, 0.05, 0.1])
def test_hue(torchvision_functional, shift):
    diff = mean_abs_diff(T.adjust_hue(IMAGE, shift),
                         torchvision_functional.adjust_hue(Image.fromarray(IMAGE), shift))
    assert diff < 2.5  # HSV conversions round differently; a wrong direction gives > 10


def test_grayscale(torchvision_functional):
    ours = T.RandomGrayscale(p=1.0)(IMAGE, Fixed(0))
    assert mean_abs_diff(ours, torchvision_functional.rgb_to_grayscale(Image.fromarray(IMAGE), 3)) < 0.1


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_blur_matches_pil_gaussian_blur(torchvision_functional, sigma):
    ours = T.SimCLRGaussianBlur(sigma=[sigma, sigma], p=1.0)(IMAGE, Fixed(sigma))
    assert mean_abs_diff(ours, Image.fromarray(IMAGE).filter(ImageFilter.GaussianBlur(sigma))) < 1


@pytest.mark.parametrize("box,out", [((10, 20, 60, 50), (224, 224)), ((30, 10, 100, 90), (112, 112)),
                                     ((0, 0, 160, 120), (64, 64))])
def test_resized_crop_bicubic(torchvision_functional, box, out):
    from torchvision.transforms import InterpolationMode

    x, y, w, h = box
    ours = T.region(T.Source(_jpeg_free_png(IMAGE)), box, out[1], out[0], T.INTERPOLATIONS["bicubic"])
    reference = torchvision_functional.resized_crop(Image.fromarray(IMAGE), y, x, h, w, list(out),
                                                    InterpolationMode.BICUBIC)
    assert mean_abs_diff(ours, reference) < 3  # OpenCV's cubic kernel is a little sharper than PIL's


def _jpeg_free_png(array):
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()
