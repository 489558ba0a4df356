"""Variant registry (torch-free) and, lazily, the PyTorch builders."""
from alexnet_deploy.models.specs import (
    VARIANTS,
    Preprocessing,
    VariantSpec,
    default_class_names,
    get_variant,
    list_variants,
)

__all__ = [
    "VARIANTS", "Preprocessing", "VariantSpec", "default_class_names", "get_variant", "list_variants",
    "build_model",
]


def build_model(variant: str, **kwargs):
    """See :func:`alexnet_deploy.models.alexnet.build_model` (imports torch on first use)."""
    from alexnet_deploy.models.alexnet import build_model as _build

    return _build(variant, **kwargs)
