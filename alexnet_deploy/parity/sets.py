"""Input sets for parity: seeded normal noise plus a labelled held-out dataset, preprocessed as the model's
metadata says."""
from __future__ import annotations

import numpy as np

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.runtime.metadata import ModelMetadata

AUTO = "auto"  # the model's recorded training dataset, or digits for digit / unnamed classes


def parity_sets(meta: ModelMetadata, dataset: str | None, num_images: int, random_samples: int, seed: int = 0,
                option: str = "--dataset", resize: str = "default"):
    """``dataset``: a dataset spec, ``auto`` (see :func:`~alexnet_deploy.data.datasets.dataset_for_model`),
    or None / ``none`` for random inputs only. A raw-pixel model (``meta.input_format``) gets a fourth item per
    set: the same images as it takes them. ``resize="stretch"`` adds the dataset once more, resized without
    the center crop (as DeepStream and jetson-inference do), for reference and candidate alike."""
    from alexnet_deploy.runtime.preprocess import RESIZE_MODES, normalize_pixels, pixels_as_input

    if resize not in RESIZE_MODES:
        raise UserInputError(f"unknown preprocessing {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    sets = []
    fmt, prep = meta.input_format, meta.preprocessing
    if random_samples and fmt != "float-nchw":  # random pixels, normalized for the reference
        c = prep.crop
        px = np.random.default_rng(seed).integers(0, 256, (random_samples, c, c, 3), dtype=np.uint8)
        sets.append(("random", normalize_pixels(px, prep), None, pixels_as_input(px, fmt, prep)))
    elif random_samples:
        x = np.random.default_rng(seed).standard_normal((random_samples, *meta.input_shape)).astype(np.float32)
        sets.append(("random", x, None))
    if dataset is not None:
        from alexnet_deploy.data.datasets import balanced_subset, dataset_for_model, labels_for_model, load_dataset

        spec = dataset_for_model(dataset, meta.class_names, meta.training_dataset, option)
        if spec is None:
            return sets
        held = balanced_subset(load_dataset(spec, "heldout"), num_images, seed)
        # accuracy only means something for the model's own classes (labels mapped by name)
        labels = labels_for_model(held, meta.class_names)
        if fmt == "float-nchw" and resize == "default":
            sets.append((f"{held.name}", held.arrays(meta.preprocessing), labels))
        else:
            sets += [_image_set(held, labels, meta, mode) for mode in dict.fromkeys(("default", resize))]
    return sets


def _image_set(held, labels, meta: ModelMetadata, resize: str):
    from alexnet_deploy.runtime.preprocess import model_pixels, normalize_pixels, pixels_as_input

    prep = meta.preprocessing
    px = np.stack([model_pixels(held.image(i), prep, resize) for i in range(len(held))])
    name = held.name if resize == "default" else f"{held.name} {resize}"
    return (name, normalize_pixels(px, prep), labels, pixels_as_input(px, meta.input_format, prep))


def resize_effect(report, resize: str) -> str:
    """One line: the candidate's accuracy with ``resize`` against the default resize + center crop."""
    by_name = {s.name: s for s in report.sets}
    lines = []
    for name, s in by_name.items():
        alt = by_name.get(f"{name} {resize}")
        a, b = (None if alt is None else m.metrics.get("cand_accuracy_pct", m.metrics.get("cand_accuracy"))
                for m in (s, alt))
        if a is None or b is None:
            continue
        lines.append(f"{resize} resize on {name}: accuracy {a:.2f} % -> {b:.2f} % ({b - a:+.2f} points) "
                     "against the default resize + center crop")
    return "\n".join(lines) or f"{resize} resize: no labelled dataset, so no accuracy to compare"
