"""Input sets for parity: seeded normal noise plus a labelled held-out dataset, preprocessed as the model's
metadata says."""
from __future__ import annotations

import numpy as np

from alexnet_deploy.runtime.metadata import ModelMetadata


def parity_sets(meta: ModelMetadata, dataset: str | None, num_images: int, random_samples: int, seed: int = 0):
    sets = []
    if random_samples:
        x = np.random.default_rng(seed).standard_normal((random_samples, *meta.input_shape)).astype(np.float32)
        sets.append(("random", x, None))
    if dataset:
        from alexnet_deploy.data.datasets import balanced_subset, load_dataset

        held = balanced_subset(load_dataset(dataset, "heldout"), num_images, seed)
        # accuracy only means something when the model was trained on these classes
        labels = held.labels if list(meta.class_names) == list(held.class_names) else None
        sets.append((f"{held.name}", held.arrays(meta.preprocessing), labels))
    return sets
