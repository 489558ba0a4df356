"""The AlexNet architectures of the zoo (PyTorch). Module names follow torchvision (``features.N``,
``classifier.N``) so ONNX node names map back to PyTorch modules and torchvision weights load unchanged."""
from __future__ import annotations

import torch
from torch import nn

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.models.specs import get_variant


class _LRNFunction(torch.autograd.Function):
    """Exports as one ONNX ``LRN`` node (torch would otherwise decompose it into ~30 pad/pool ops that
    TensorRT fuses poorly). ONNX LRN and torch's LocalResponseNorm share the same formula:
    x / (k + alpha / size * sum_{window} x^2) ^ beta."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):  # noqa: D102 - eager path is never taken through here
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):  # noqa: D102
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.LocalResponseNorm):
    """LocalResponseNorm that exports to ONNX as a single LRN operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
        return super().forward(x)


def _lrn() -> nn.LocalResponseNorm:
    return LRN(size=5, alpha=1e-4, beta=0.75, k=2.0)


def _paper_head(num_classes: int, in_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(in_features, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    """features -> flatten -> classifier (optionally softmax), the shape shared by the non-torchvision variants."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, softmax: bool = False):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = self.classifier(x)
        return torch.softmax(x, dim=1) if self.softmax else x


def _cifar10(num_classes: int, dropout: float) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=5), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
    )
    return AlexNet(features, nn.Sequential(nn.Linear(256, num_classes)))


def _paper(num_classes: int, dropout: float, *, groups: int, lrn_after_conv5: bool, lrn: bool,
           softmax: bool = False) -> nn.Module:
    def block(*layers):
        return [layer for layer in layers if layer is not None]

    norm = _lrn if lrn else (lambda: None)
    features = nn.Sequential(*block(
        nn.Conv2d(3, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True), norm(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups), nn.ReLU(inplace=True), norm(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
        norm() if lrn_after_conv5 else None, nn.MaxPool2d(3, 2),
    ))
    return AlexNet(features, _paper_head(num_classes, 256 * 6 * 6, dropout), softmax=softmax)


def _bn(num_classes: int, dropout: float) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(3, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True), nn.BatchNorm2d(96),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(inplace=True), nn.BatchNorm2d(256),  # "same"
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(384),  # "same"
        nn.Conv2d(384, 384, kernel_size=1), nn.ReLU(inplace=True), nn.BatchNorm2d(384),
        nn.Conv2d(384, 256, kernel_size=1), nn.ReLU(inplace=True), nn.BatchNorm2d(256),
        nn.MaxPool2d(3, 2),
    )
    return AlexNet(features, _paper_head(num_classes, 256 * 2 * 2, dropout))


def _torchvision(num_classes: int, dropout: float) -> nn.Module:
    from torchvision.models import alexnet

    return alexnet(weights=None, num_classes=num_classes, dropout=dropout)


def build_model(variant: str, *, num_classes: int | None = None, dropout: float = 0.5,
                softmax: bool = False, seed: int | None = 0) -> nn.Module:
    """Build ``variant`` with freshly initialised weights (seeded when ``seed`` is not None)."""
    spec = get_variant(variant)
    n = spec.default_num_classes if num_classes is None else int(num_classes)
    if n < 1:
        raise UserInputError(f"num_classes must be at least 1, got {n}")
    if softmax and "softmax" not in spec.builder_options:
        raise UserInputError(f"variant {variant!r} has no softmax option (only: plain)")
    if seed is not None:
        torch.manual_seed(seed)
    if variant == "cifar10":
        model = _cifar10(n, dropout)
    elif variant == "torchvision":
        model = _torchvision(n, dropout)
    elif variant == "paper":
        model = _paper(n, dropout, groups=2, lrn=True, lrn_after_conv5=False)
    elif variant == "paper-ungrouped":
        model = _paper(n, dropout, groups=1, lrn=True, lrn_after_conv5=True)
    elif variant == "plain":
        model = _paper(n, dropout, groups=1, lrn=False, lrn_after_conv5=False, softmax=softmax)
    elif variant == "bn":
        model = _bn(n, dropout)
    else:  # pragma: no cover - get_variant already rejected it
        raise UserInputError(f"unknown variant {variant!r}")
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def execution_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules of features -> (flatten) -> classifier, with their qualified names."""
    order = []
    for part in ("features", "avgpool", "classifier"):
        sub = getattr(model, part, None)
        if sub is None:
            continue
        if isinstance(sub, nn.Sequential):
            order += [(f"{part}.{i}", m) for i, m in enumerate(sub)]
        else:
            order.append((part, sub))
        if part == "features":
            order.append(("flatten", nn.Flatten()))
    return order
