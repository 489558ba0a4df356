"""Labelled image datasets (numpy + Pillow): embedded digits, CIFAR-10 python batches, ImageFolder, .npy."""
from alexnet_deploy.data.datasets import (
    ImageDataset,
    balanced_subset,
    load_dataset,
)

__all__ = ["ImageDataset", "balanced_subset", "load_dataset"]
