"""Server hardening (issue 20): work bounded by the model, drain with keep-alive clients, header integers,
Triton protocol extensions, alexnet-serve's model check, and the one model contract every command checks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


# --- item 1: Resize(shorter) -> CenterCrop bounded by what the model needs -------------------------------------

def _record_resizes(monkeypatch, budget: int) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= budget, f"resize to {size} from {self.size}"  # before allocating gigabytes
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return sizes


@pytest.mark.parametrize("variant", ["cifar10", "torchvision"])
@pytest.mark.parametrize("shape", [(1, 200_000), (200_000, 1), (7, 9000)])
def test_extreme_aspect_ratio_costs_what_the_model_needs(monkeypatch, variant, shape):
    """A 1 x 200,000 image was resized to 32 x 6.4 M (614 MB) on cifar10 and 256 x 51 M (~40 GB) on the 224
    variants before the center crop: every resize must now stay within a few times the model's input."""
    from alexnet_deploy.models.specs import get_variant
    from alexnet_deploy.runtime.preprocess import model_pixels

    prep = get_variant(variant).preprocessing
    img = Image.new("RGB", shape, (200, 10, 60))
    sizes = _record_resizes(monkeypatch, budget=8 * prep.resize * prep.resize)
    px = model_pixels(img, prep)
    assert sizes and px.shape == (prep.crop, prep.crop, 3)
    assert (px == (200, 10, 60)).all()  # a flat image stays flat: the window is the right part of the image


def test_bounded_path_matches_the_exact_one_closely_and_normal_images_exactly():
    from alexnet_deploy.runtime.preprocess import EXACT_MAX_ASPECT, center_crop, resize_center_crop, resize_shorter

    rng = np.random.default_rng(0)
    # a smooth strip (photo-like): the bounded path samples the same window with the same filter
    yy, xx = np.mgrid[0:40, 0:900]
    strip = np.stack([(xx * 0.3) % 256, (yy * 5 + xx * 0.1) % 256, np.full_like(xx, 90)], -1).astype(np.uint8)
    for arr in (strip, strip.transpose(1, 0, 2)):
        img = Image.fromarray(np.ascontiguousarray(arr))
        for size, crop in ((256, 224), (32, 32)):
            exact = np.asarray(center_crop(resize_shorter(img, size), crop)).astype(int)
            fast = np.asarray(resize_center_crop(img, size, crop)).astype(int)
            assert fast.shape == exact.shape and np.abs(fast - exact).max() <= 2
    for _ in range(20):  # up to EXACT_MAX_ASPECT the pixels are torchvision's, bit for bit
        w = int(rng.integers(20, 300))
        h = int(rng.integers(20, w * EXACT_MAX_ASPECT))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for interp in ("bilinear", "bicubic"):
            np.testing.assert_array_equal(np.asarray(resize_center_crop(img, 256, 224, interp)),
                                          np.asarray(center_crop(resize_shorter(img, 256, interp), 224)))
