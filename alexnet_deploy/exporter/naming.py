"""Map ONNX node names written by torch.onnx (``/features/features.3/Conv``) back to PyTorch modules."""
from __future__ import annotations

import re

_NODE = re.compile(r"^/(?:.*/)?(?P<module>[A-Za-z_][\w.]*\.\d+|avgpool|Flatten)/[A-Za-z]+(?:_\d+)?$")
_QDQ_SUFFIX = re.compile(r"(_quant|_QuantizeLinear|_DequantizeLinear|_dequant)$")


def module_of_node(node_name: str) -> str | None:
    """``/classifier/classifier.4/Gemm`` -> ``classifier.4``; None when the name carries no module."""
    name = _QDQ_SUFFIX.sub("", node_name or "")
    m = _NODE.match(name)
    if not m:
        return None
    module = m.group("module")
    return None if module == "Flatten" else module
