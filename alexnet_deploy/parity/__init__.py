"""Parity against the PyTorch FP32 reference: metrics, per-precision gates, reports (table/JSON/JUnit)."""
from alexnet_deploy.parity.compare import ParityReport, SetResult, compare_outputs, output_metrics
from alexnet_deploy.parity.tolerances import TOLERANCES, Tolerances, parse_overrides, tolerances_for

__all__ = ["ParityReport", "SetResult", "compare_outputs", "output_metrics", "TOLERANCES", "Tolerances",
           "parse_overrides", "tolerances_for"]
