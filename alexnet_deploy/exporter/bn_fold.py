"""Fold BatchNorm into the following convolution / linear layer where the math is exact.

In the ``bn`` variant BatchNorm comes *after* ReLU, so it cannot go into the preceding convolution. It
can go into the next weighted layer when everything in between commutes with a per-channel affine map:
MaxPool (only for a positive scale), Flatten, Dropout (eval) and Identity; and the next convolution must
have no padding (zero padding is not transformed by the affine map, so folding into a padded conv would
change the border). Layers that cannot be folded stay as BatchNormalization in the ONNX graph.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from alexnet_deploy.models.alexnet import execution_order as _execution_order


@torch.no_grad()
def _fold_into(bn: nn.BatchNorm2d, layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    if isinstance(layer, nn.Conv2d):
        # conv(s*x + t) = (W*s) x + (b + sum_{c,kh,kw} W*t)
        layer.bias = layer.bias if layer.bias is not None else nn.Parameter(torch.zeros(layer.out_channels))
        w = layer.weight
        layer.bias.add_((w * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
        w.mul_(scale.view(1, -1, 1, 1))
    else:  # Linear after flatten: each channel spans H*W consecutive features
        per = layer.in_features // scale.numel()
        s, t = scale.repeat_interleave(per), shift.repeat_interleave(per)
        layer.bias.add_(layer.weight @ t)
        layer.weight.mul_(s.view(1, -1))


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Return a folded copy of ``model`` (eval mode) and the names of the BatchNorms folded away."""
    model = copy.deepcopy(model).eval()
    order = _execution_order(model)
    folded: list[str] = []
    for i, (name, bn) in enumerate(order):
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
        for _, nxt in order[i + 1:]:
            if isinstance(nxt, nn.MaxPool2d) and bool((scale > 0).all()):
                continue
            if isinstance(nxt, (nn.Flatten, nn.Dropout, nn.Identity)):
                continue
            ok = (isinstance(nxt, nn.Conv2d) and all(p == 0 for p in nxt.padding) and nxt.groups == 1
                  and nxt.padding_mode == "zeros") or (isinstance(nxt, nn.Linear) and nxt.in_features % scale.numel() == 0)
            if ok:
                _fold_into(bn, nxt, scale.detach(), shift.detach())
                parent_name, idx = name.rsplit(".", 1)
                getattr(model, parent_name)[int(idx)] = nn.Identity()
                folded.append(name)
            break
    return model, folded
