"""The evaluate stage of calibration: a candidate INT8 model against the FP32 model on the held-out set
(:class:`Evaluator`, used by INT8 and INT4 alike and by the studies), and :data:`KERNEL_GATE`, how far this
host's ONNX Runtime kernels may be from the exact QDQ math."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet_deploy.calibration.data import CalibrationSet


@dataclass
class Evaluation:
    method: str
    kept_float: list[str]
    fp32_accuracy: float | None  # percent
    int8_accuracy: float | None
    agreement: float  # top-1 agreement with FP32, fraction
    error: float = 0.0  # mean |int8 - fp32| / mean |fp32| over the outputs (continuous, breaks ties)
    logit_max_abs_error: float = 0.0  # max |int8 - fp32| over every held-out logit
    logit_cosine: float = 1.0  # mean over images of the cosine between INT8 and FP32 logits

    @property
    def drop(self) -> float:
        """Accuracy drop in points (top-1 disagreement in points when the set has no usable labels)."""
        if self.fp32_accuracy is None:
            return 100.0 * (1.0 - self.agreement)
        return self.fp32_accuracy - self.int8_accuracy

    def row(self) -> dict:
        # units in the names: *_pct in percent (points for the drop), agreement and error as fractions
        return {"method": self.method, "kept_float": self.kept_float, "fp32_accuracy_pct": self.fp32_accuracy,
                "int8_accuracy_pct": self.int8_accuracy, "drop_pct": self.drop,
                "drop_measure": "accuracy" if self.fp32_accuracy is not None else "top1_disagreement",
                "top1_agreement": self.agreement,
                "relative_output_error": self.error, "logit_max_abs_error": self.logit_max_abs_error,
                "logit_cosine": self.logit_cosine}


@dataclass(frozen=True)
class KernelGate:
    """How far INT8 on this host's ONNX Runtime kernels may be from the exact QDQ math (the same model with
    no graph optimizations: QuantizeLinear/DequantizeLinear as float ops) before calibration calls it a kernel
    fault (int16 saturation on x86 without VNNI, see overflow.py) rather than quantization error. Fused kernels
    requantize once per layer where the emulation rounds twice, so small differences are normal."""

    min_top1_agreement: float = 0.99  # host vs exact
    max_error_ratio: float = 2.0  # host max |logit - FP32| <= ratio x exact's ...
    error_floor: float = 1e-3  # ... + floor x the largest |FP32 logit| (exact errors near 0)

    def problem(self, host: np.ndarray, exact: np.ndarray, ref: np.ndarray) -> str | None:
        agree = float(np.mean(host.argmax(1) == exact.argmax(1))) if len(ref) else 1.0
        host_err = float(np.abs(host - ref).max()) if ref.size else 0.0
        exact_err = float(np.abs(exact - ref).max()) if ref.size else 0.0
        limit = self.max_error_ratio * exact_err + self.error_floor * (float(np.abs(ref).max()) if ref.size else 0)
        # the error decides: near-tied logits (random weights) flip top-1 on rounding alone; agreement is reported
        if host_err > limit:
            return (f"max logit error {host_err:.3g} vs {exact_err:.3g} exact (limit {limit:.3g}), "
                    f"top-1 agreement {agree:.2%} (needs >= {self.min_top1_agreement:.0%})")
        return None


KERNEL_GATE = KernelGate()


class Evaluator:
    """The FP32 model's outputs on the held-out set, once; then each candidate INT8 file against them: top-1
    agreement, accuracy when labelled, logit error and cosine, on this host's kernels or the exact emulation."""

    def __init__(self, fp32_path: Path, meta, held: CalibrationSet):
        from alexnet_deploy.runtime.runners.ort import OrtRunner

        self.meta, self.held = meta, held
        with OrtRunner(fp32_path, meta) as r:
            self.ref = self._run(r)
        self.labels = held.labels if held.labels is not None and held.class_names == meta.class_names else None
        self.outputs: dict = {}  # model path (or "exact": the last exact evaluation) -> its outputs

    def _run(self, runner) -> np.ndarray:
        return runner.infer_batches(self.held.x, 64)

    def __call__(self, int8_path: Path, method: str, kept: list[str], exact: bool = False) -> Evaluation:
        """Evaluate on this host's ONNX Runtime kernels, or (``exact``) on the exact QDQ emulation."""
        from alexnet_deploy.runtime.runners.ort import OrtRunner

        with OrtRunner(int8_path, self.meta, exact_qdq=exact) as r:
            out = self.outputs["exact" if exact else int8_path] = self._run(r)
        agree = float(np.mean(out.argmax(1) == self.ref.argmax(1)))
        diff = np.abs(out - self.ref)
        err = float(diff.mean() / max(np.abs(self.ref).mean(), 1e-12))
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(self.ref, axis=1)
        cosine = float(np.mean(np.sum(out * self.ref, axis=1) / np.maximum(norms, 1e-12)))
        logits = {"logit_max_abs_error": float(diff.max()) if diff.size else 0.0, "logit_cosine": cosine}
        if self.labels is None:
            return Evaluation(method, kept, None, None, agree, err, **logits)
        y = self.labels
        return Evaluation(method, kept, 100 * float(np.mean(self.ref.argmax(1) == y)),
                          100 * float(np.mean(out.argmax(1) == y)), agree, err, **logits)
