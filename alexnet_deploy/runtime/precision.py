"""The numeric precisions a model is built in, as one enum low enough for every layer (the runtime reads it
from metadata, the exporter builds engines in it, alexnet-deploy plans artifacts by it). A ``str``: JSON,
metadata and f-strings read ``"fp32"``, ``"fp16"``, ``"int8"``."""
from __future__ import annotations

import enum


class StrChoice(str, enum.Enum):
    """A choice that reads as its plain string in JSON, metadata, f-strings and messages (``enum.StrEnum`` is
    Python 3.11+; JetPack 6 runs 3.10). The base of :class:`Precision` and calibration's ``Placement``."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Precision(StrChoice):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)  # build order: INT8 is calibrated from FP32
