"""The variant zoo as data: input size, classes, preprocessing and per-layer shapes.

This module needs neither torch nor torchvision, so the runtime (which only reads preprocessing) can use
it on a Jetson image. The architectures themselves are in :mod:`alexnet_deploy.models.alexnet`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from alexnet_deploy.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """What torchvision users write as Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        try:
            return cls(
                resize=int(d["resize"]),
                crop=int(d["crop"]),
                mean=tuple(float(x) for x in d["mean"]),
                std=tuple(float(x) for x in d["std"]),
                interpolation=str(d.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserInputError(f"malformed preprocessing description {d!r}: {exc}") from None


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    input_size: int
    default_num_classes: int
    preprocessing: Preprocessing
    # Parameter count with the default number of classes (BatchNorm's affine parameters included).
    param_count: int
    # Output shape (C, H, W) or (N,) after the named module, for one image, default classes.
    layer_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    builder_options: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)


def _imagenet_227() -> Preprocessing:
    return Preprocessing(resize=256, crop=227, mean=IMAGENET_MEAN, std=IMAGENET_STD)


_PAPER_HEAD = {"classifier.1": (4096,), "classifier.4": (4096,), "classifier.6": (1000,)}

VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in [
        VariantSpec(
            name="cifar10",
            description="small AlexNet for 32x32 inputs (CIFAR-10 layout), 64-192-384-256-256, one linear head",
            input_size=32,
            default_num_classes=10,
            preprocessing=Preprocessing(resize=32, crop=32, mean=CIFAR10_MEAN, std=CIFAR10_STD),
            param_count=2_472_266,
            layer_shapes={
                "features.0": (64, 8, 8), "features.2": (64, 4, 4),
                "features.3": (192, 4, 4), "features.5": (192, 2, 2),
                "features.6": (384, 2, 2), "features.8": (256, 2, 2),
                "features.10": (256, 2, 2), "features.12": (256, 1, 1),
                "classifier.0": (10,),
            },
        ),
        VariantSpec(
            name="torchvision",
            description="torchvision.models.alexnet (224x224, adaptive avg-pool 6x6), same state_dict keys",
            input_size=224,
            default_num_classes=1000,
            preprocessing=Preprocessing(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            param_count=61_100_840,
            layer_shapes={
                "features.0": (64, 55, 55), "features.2": (64, 27, 27),
                "features.3": (192, 27, 27), "features.5": (192, 13, 13),
                "features.6": (384, 13, 13), "features.8": (256, 13, 13),
                "features.10": (256, 13, 13), "features.12": (256, 6, 6),
                "avgpool": (256, 6, 6), **_PAPER_HEAD,
            },
        ),
        VariantSpec(
            name="paper",
            description="the 2012 paper: 227x227, LRN after conv1/conv2, grouped conv2/conv4/conv5",
            input_size=227,
            default_num_classes=1000,
            preprocessing=_imagenet_227(),
            param_count=60_965_224,
            layer_shapes={
                "features.0": (96, 55, 55), "features.2": (96, 55, 55), "features.3": (96, 27, 27),
                "features.4": (256, 27, 27), "features.7": (256, 13, 13),
                "features.8": (384, 13, 13), "features.10": (384, 13, 13),
                "features.12": (256, 13, 13), "features.14": (256, 6, 6), **_PAPER_HEAD,
            },
        ),
        VariantSpec(
            name="paper-ungrouped",
            description="the paper layout without groups, LRN after conv1, conv2 and conv5 (227x227)",
            input_size=227,
            default_num_classes=1000,
            preprocessing=_imagenet_227(),
            param_count=62_378_344,
            layer_shapes={
                "features.0": (96, 55, 55), "features.3": (96, 27, 27),
                "features.4": (256, 27, 27), "features.7": (256, 13, 13),
                "features.8": (384, 13, 13), "features.10": (384, 13, 13),
                "features.12": (256, 13, 13), "features.14": (256, 13, 13),
                "features.15": (256, 6, 6), **_PAPER_HEAD,
            },
        ),
        VariantSpec(
            name="plain",
            description="the paper layout without LRN or groups (227x227); softmax=True ends in softmax",
            input_size=227,
            default_num_classes=1000,
            preprocessing=_imagenet_227(),
            param_count=62_378_344,
            layer_shapes={
                "features.0": (96, 55, 55), "features.2": (96, 27, 27),
                "features.3": (256, 27, 27), "features.5": (256, 13, 13),
                "features.6": (384, 13, 13), "features.8": (384, 13, 13),
                "features.10": (256, 13, 13), "features.12": (256, 6, 6), **_PAPER_HEAD,
            },
            builder_options=("softmax",),
        ),
        VariantSpec(
            name="bn",
            description="AlexNet with BatchNorm after each ReLU, 128x128, 1024-4096-4096-10 head",
            input_size=128,
            default_num_classes=10,
            preprocessing=Preprocessing(resize=128, crop=128, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            param_count=22_804_554,
            layer_shapes={
                "features.0": (96, 30, 30), "features.3": (96, 14, 14),
                "features.4": (256, 14, 14), "features.7": (256, 6, 6),
                "features.8": (384, 6, 6), "features.11": (384, 6, 6),
                "features.14": (256, 6, 6), "features.17": (256, 2, 2),
                "classifier.1": (4096,), "classifier.4": (4096,), "classifier.6": (10,),
            },
        ),
    ]
}


def list_variants() -> list[str]:
    return list(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserInputError(
            f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}"
        ) from None


def default_class_names(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]
