"""Image loading and preprocessing with numpy + Pillow only (no torch: this runs on Jetson images).

Matches torchvision's ``Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std)`` on PIL
images to within 1e-6 (a test checks it against torchvision itself).
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.models.specs import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_INTERPOLATION = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, RGBA, palette, CMYK and 16-bit images to 8-bit RGB, honouring the EXIF orientation.

    Alpha is dropped as ``img.convert("RGB")`` drops it (what torchvision users write), so the result is
    the same pixels the PyTorch reference pipeline sees.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        scale = 257 if img.mode != "I" or arr.max() > 255 else 1
        img = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


# Pixel limit checked from the image header before any pixel is decoded (server uploads, predict, datasets).
# 50 MP is ~15x a 12 MP phone photo and far beyond what a 224-pixel model needs; a 12000x12000 PNG of 140 KB
# would otherwise inflate to 432 MB of RGB (more during decoding). Override with --max-pixels.
DEFAULT_MAX_PIXELS = 50_000_000


class ImageTooLargeError(UserInputError):
    """An image's header declares more pixels than the configured limit (a decompression bomb or a huge scan)."""


def load_image(source: str | os.PathLike | bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None, name: str | None = None) -> Image.Image:
    """Open an image file (or encoded bytes) fully, so truncation is found here, as RGB.

    The pixel count is read from the header and checked against ``max_pixels`` *before* decoding, so a small
    file that declares a huge canvas costs nothing. ``draft_size`` lets JPEG decode at a reduced scale (DCT
    scaling: no larger than needed for that size), which saves memory and time for camera-sized uploads; it
    changes pixels slightly, so callers that need parity with the PyTorch reference leave it None.
    """
    label = name or ("image" if isinstance(source, (bytes, bytearray, memoryview)) else os.fsdecode(source))
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_cm = Image.open(fp)  # Pillow itself refuses > 2 x Image.MAX_IMAGE_PIXELS (~179 MP)
        with img_cm as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{label} is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:g} MP "
                    "(raise it with --max-pixels if the image is genuine)")
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise UserInputError(f"image not found: {label}") from None
    except IsADirectoryError:
        raise UserInputError(f"{label} is a folder, not an image") from None
    except UnidentifiedImageError:
        raise UserInputError(f"{label} is not an image Pillow can read (expected JPEG, PNG, BMP, ...)") from None
    except (Image.DecompressionBombError, MemoryError):
        raise ImageTooLargeError(f"{label} is too large to decode (a decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserInputError(f"{label} is truncated or corrupt: {exc}") from None


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), _INTERPOLATION[interpolation])


# Work bound for extreme aspect ratios. Resize(shorter side) -> CenterCrop upscales the short side first: a
# 1 x 200,000 PNG (862 bytes, 0.2 MP) became 32 x 6.4 M pixels (614 MB) on a 32-pixel model and ~40 GB on the
# 224 ones before the crop threw almost all of it away. Up to this aspect ratio of the resized image the exact
# torchvision path runs (at most 4 x resize^2 pixels); beyond it only the crop window is resampled (PIL's
# ``resize(box=...)``), so the work is bounded by the model's input size, not by what the client sent.
EXACT_MAX_ASPECT = 4
_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}  # PIL's filter half-widths


def resize_center_crop(img: Image.Image, size: int, crop: int, interpolation: str = "bilinear") -> Image.Image:
    """``center_crop(resize_shorter(img, size), crop)`` with work bounded by ``crop`` and ``size``.

    The two-step form (so torchvision's pixels) while the resized image's long side is at most
    ``EXACT_MAX_ASPECT x size``. Beyond that only the crop window of the long side (plus the filter's reach) is
    resampled, with the same filter and scale; values may then differ from the two-step form by the rounding
    of PIL's intermediate pass (at most 2 levels on photo strips, up to ~20 on random noise with bicubic).
    """
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if new_long <= EXACT_MAX_ASPECT * size or new_w < crop or new_h < crop:
        return center_crop(resize_shorter(img, size, interpolation), crop)
    start = int(round((new_long - crop) / 2.0))  # the crop window on the long axis, in resized pixels
    scale = long / new_long  # source pixels per resized pixel
    reach = _SUPPORT[interpolation] * max(scale, 1.0) + 1.0  # source pixels the filter touches either side
    margin = int(reach / scale) + 2  # ... in resized pixels: PIL treats a box's edges as the image's edges
    lo, hi = max(0, start - margin), min(new_long, start + crop + margin)
    # the source rows (columns) the window needs, cut first: PIL takes the box as 32-bit floats, and a far
    # offset shifts the filter visibly
    a, b = max(0, int(lo * scale - reach) - 2), min(long, int(hi * scale + reach) + 3)
    resample = _INTERPOLATION[interpolation]
    if h > w:
        window = img.crop((0, a, w, b)).resize((new_w, hi - lo), resample, box=(0, lo * scale - a, w, hi * scale - a))
        left = int(round((new_w - crop) / 2.0))
        return window.crop((left, start - lo, left + crop, start - lo + crop))
    window = img.crop((a, 0, b, h)).resize((hi - lo, new_h), resample, box=(lo * scale - a, 0, hi * scale - a, h))
    top = int(round((new_h - crop) / 2.0))
    return window.crop((start - lo, top, start - lo + crop, top + crop))


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # torchvision pads with zeros first
        padded = Image.new(img.mode, (max(w, size), max(h, size)))
        padded.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = padded, padded.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


# How a frame becomes the model's input size: "default" is the model's own Resize(shorter side) -> CenterCrop;
# "stretch" resizes the whole frame to crop x crop, ignoring the aspect ratio, as DeepStream's nvinfer
# (maintain-aspect-ratio=0) and jetson-inference's imageNet do.
RESIZE_MODES = ("default", "stretch")
# The graph input a model takes (ModelMetadata.input_format): normalized float NCHW (the default), or raw RGB
# pixels at the input size with scale/normalize (and layout) as explicit nodes in the graph.
# "float-nhwc": the same normalized floats, channels last (Keras' own ONNX export, model.export(format="onnx")).
INPUT_FORMATS = ("float-nchw", "uint8-nhwc", "float-0-255", "float-nhwc")


def stretch(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """The whole image resized to size x size (aspect ratio not kept, nothing cropped)."""
    return img if img.size == (size, size) else img.resize((size, size), _INTERPOLATION[interpolation])


def model_pixels(img: Image.Image, prep: Preprocessing, resize: str = "default") -> np.ndarray:
    """One PIL image -> uint8 RGB pixels (crop, crop, 3) at the model's input size."""
    img = to_rgb(img)
    if resize == "default":
        img = resize_center_crop(img, prep.resize, prep.crop, prep.interpolation)
    elif resize == "stretch":
        img = stretch(img, prep.crop, prep.interpolation)
    else:
        raise UserInputError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    return np.asarray(img, dtype=np.uint8)


def normalize_pixels(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB pixels (..., H, W, 3) -> normalized float32 (..., 3, H, W): ToTensor() then Normalize()."""
    x = np.asarray(pixels, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return np.moveaxis((x - mean) / std, -1, -3).copy()


def pixels_as_input(pixels: np.ndarray, input_format: str, prep: Preprocessing) -> np.ndarray:
    """uint8 RGB pixels (N, H, W, 3) -> what a graph with ``input_format`` takes."""
    if input_format == "float-nchw":
        return normalize_pixels(pixels, prep)
    if input_format == "uint8-nhwc":
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    if input_format == "float-0-255":
        return np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8).transpose(0, 3, 1, 2), dtype=np.float32)
    if input_format == "float-nhwc":  # normalize_pixels' values (same ops, same order), left channels last
        return np.ascontiguousarray(np.moveaxis(normalize_pixels(pixels, prep), -3, -1))
    raise UserInputError(f"model input format {input_format!r} is not supported by this version of alexnet-deploy "
                         f"(known: {', '.join(INPUT_FORMATS)})")


def preprocess_image(img: Image.Image, prep: Preprocessing, resize: str = "default") -> np.ndarray:
    """One PIL image -> float32 array (3, crop, crop)."""
    return normalize_pixels(model_pixels(img, prep, resize), prep)


def preprocess_batch(images: Sequence[Image.Image], prep: Preprocessing, resize: str = "default") -> np.ndarray:
    """PIL images -> float32 array (N, 3, crop, crop)."""
    if not images:
        return np.zeros((0, 3, prep.crop, prep.crop), dtype=np.float32)
    return np.stack([preprocess_image(img, prep, resize) for img in images])


def model_batch(images: Sequence[Image.Image], meta, resize: str = "default") -> np.ndarray:
    """PIL images -> the array a model's input takes, as its metadata (``ModelMetadata``) says.

    The one entry point every consumer of a model uses (predict, stream, serve, parity, bench, calibration),
    so a model whose input format differs (raw pixels with normalization in the graph) is fed correctly
    everywhere: normalized float32 (N, 3, H, W) for "float-nchw", uint8 (N, H, W, 3) for "uint8-nhwc",
    float32 0..255 (N, 3, H, W) for "float-0-255". ``resize="stretch"`` resizes without the center crop.
    """
    fmt = getattr(meta, "input_format", "float-nchw")
    prep = meta.preprocessing
    if fmt == "float-nchw":
        return preprocess_batch(images, prep, resize)
    c = prep.crop
    pixels = (np.stack([model_pixels(img, prep, resize) for img in images]) if len(images)
              else np.zeros((0, c, c, 3), dtype=np.uint8))
    return pixels_as_input(pixels, fmt, prep)


def random_model_input(meta, n: int, seed: int = 0) -> np.ndarray:
    """Seeded random input for a model's graph: standard normal for normalized float inputs (what the model sees
    after Normalize), uniform random pixels for raw-pixel inputs."""
    rng = np.random.default_rng(seed)
    fmt = getattr(meta, "input_format", "float-nchw")
    if fmt == "float-nchw":
        return rng.standard_normal((n, *meta.input_shape)).astype(np.float32)
    c = meta.preprocessing.crop
    return pixels_as_input(rng.integers(0, 256, (n, c, c, 3), dtype=np.uint8), fmt, meta.preprocessing)


def find_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Expand folders (recursively, sorted) into image files; files are kept as given."""
    out: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(p)
                for f in files
                if f.lower().endswith(IMAGE_SUFFIXES)
            )
            if not found:
                raise UserInputError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise UserInputError(f"image not found: {p}")
    return out
