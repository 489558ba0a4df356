"""alexnet-calibrate: FP32 ONNX -> QDQ INT8 ONNX with accuracy first (methods, sensitivity, --max-drop)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from alexnet_deploy.calibration.cache import check_cache, write_sidecar
from alexnet_deploy.calibration.data import CalibrationSet, load_calibration_set
from alexnet_deploy.calibration.dead_channels import zero_dead_inputs
from alexnet_deploy.calibration.equalize import equalize
from alexnet_deploy.calibration.placement import Placement, count_qdq
from alexnet_deploy.calibration.qdq import (Method, QuantConfig, is_quantized, load_ranges, measure, provenance,
                                            quantize, ranges_for, save_ranges, temp_dir, weighted_layers)
from alexnet_deploy.errors import KernelMismatchError, UserInputError
from alexnet_deploy.fileio import atomic_path, check_writable, sha256_file
from alexnet_deploy.runtime.cpu_features import kernel_family
from alexnet_deploy.runtime.metadata import read_onnx_metadata, set_metadata

log = logging.getLogger(__name__)


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


@dataclass
class CalibrationResult:
    output: Path
    chosen: Evaluation
    tried: list[Evaluation] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    ranges: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> tensor -> amax
    qdq_nodes: dict[str, int] = field(default_factory=dict)  # Q/DQ node counts of the written model
    exact: Evaluation | None = None  # the chosen model on the exact QDQ emulation (no ORT kernel fusion)
    kernel_mismatch: str | None = None  # how this host's kernels differed from it beyond KERNEL_GATE


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


DEFAULT_NUM_IMAGES = 500  # MLPerf's calibration-set size, class-balanced


def calibrate(model: str | Path, output: str | Path, *, dataset: str = "digits", num_images: int = DEFAULT_NUM_IMAGES,
              eval_images: int = 1000, method: str = "minmax", percentile: float = 99.999,
              max_drop: float | None = None, sensitivity: bool = False, allow_synthetic: bool = False,
              variant: str | None = None, cache: str | Path | None = None, force_cache: bool = False,
              placement: str = "ort", overflow_fix: bool = True, allow_kernel_mismatch: bool = False,
              echo=print) -> CalibrationResult:
    """FP32 ONNX -> QDQ INT8 ONNX. ``placement``: ort (every tensor but the network output: fast on ONNX
    Runtime CPU) | tensorrt (Q/DQ on the inputs of Conv/Gemm/MatMul only, for TensorRT engines) | all (every
    tensor, logits too: ONNX Runtime's default); logits stay float with ort and tensorrt. See :mod:`.placement`.
    ``overflow_fix``: requantize the weight channels that could saturate int16 on x86 without VNNI (ort, all;
    :mod:`.overflow`). The chosen model is evaluated twice, on this host's kernels and on the exact QDQ
    emulation; when they differ beyond :data:`KERNEL_GATE` nothing is written (:class:`KernelMismatchError`)
    unless ``allow_kernel_mismatch``."""
    model, output = Path(model), check_writable(output)
    if output.resolve() == model.resolve():
        raise UserInputError("the INT8 output would overwrite the FP32 model; choose another --output")
    meta = read_onnx_metadata(model, variant)
    proto = onnx.load(str(model), load_external_data=False)
    if is_quantized(proto):
        raise UserInputError(f"{model} is already quantized (it has QuantizeLinear/DequantizeLinear nodes); "
                             "calibrate the FP32 export instead")
    if meta.precision != "fp32":
        raise UserInputError(f"{model} is a {meta.precision} model; calibrate the FP32 export instead")
    if percentile <= 0 or percentile > 100:
        raise UserInputError(f"--percentile must be in (0, 100], got {percentile}")
    methods = list(Method) if method == "auto" else [Method.parse(method)]
    place = Placement.parse(placement)
    cal = load_calibration_set(dataset, meta, num_images, "train", allow_synthetic)
    if len(cal.x) < num_images:
        echo(f"note: {cal.name} has {len(cal.x)} calibration images, fewer than the {num_images} asked for; "
             "the count is recorded in the provenance")
    held = cal if cal.name == "synthetic" else load_calibration_set(dataset, meta, eval_images, "heldout",
                                                                    allow_synthetic)
    echo(f"calibrating {model.name} on {cal.name}: {len(cal.x)} images (sha256 {cal.fingerprint[:12]}); "
         f"evaluating on {len(held.x)} held-out images")
    evaluate = Evaluator(model, meta, held)
    layers = list(weighted_layers(proto))
    result_tried: list[Evaluation] = []
    amax: dict[str, dict[str, float]] = {}  # method -> tensor -> symmetric range
    hist = []  # histograms, measured once for every method (lazily: a reused cache needs none)
    channel_amax: dict = {}  # per-channel max |x| of the quantized activations
    source = {"path": model, "dead": None}  # the FP32 model quantization starts from
    plans: dict[Path, object] = {}  # built model -> its QdqPlan (what the overflow fix changed)

    with temp_dir(output.parent) as tmp:
        tmp = Path(tmp)
        fp32 = onnx.load(str(model))
        equalized = equalize(fp32)  # same FP32 function, balanced per-channel weight ranges
        if equalized:
            source["path"] = tmp / "fp32-equalized.onnx"
            onnx.save(fp32, str(source["path"]))
            echo("cross-layer equalization: " + ", ".join(equalized))
        base = source["path"]

        def quant_source() -> Path:
            """The FP32 model with weights on always-zero input channels zeroed (see dead_channels.py)."""
            if source["dead"] is None:
                live = onnx.load(str(base))
                source["dead"] = zero_dead_inputs(live, channel_amax)
                if source["dead"]:
                    source["path"] = tmp / "fp32-live-inputs.onnx"
                    onnx.save(live, str(source["path"]))
                    echo("zeroed weights on input channels that were 0 on every calibration image: "
                         + ", ".join(f"{k} ({v})" for k, v in source["dead"].items()))
            return source["path"]

        def ranges(cfg: QuantConfig) -> dict[str, float]:
            if cfg.method.value not in amax:
                if not hist:
                    hist.append(measure(base, cal, meta, place))
                    channel_amax.update(hist[0].channel_amax)
                amax[cfg.method.value] = ranges_for(hist[0], cfg)
            return amax[cfg.method.value]

        def build(cfg: QuantConfig, tag: str) -> tuple[Path, Evaluation]:
            path = tmp / f"{tag}.onnx"
            r = ranges(cfg)
            plans[path] = quantize(quant_source(), path, r, cfg)
            return path, evaluate(path, cfg.method.value, list(cfg.keep_float))

        if cache is not None:  # user-kept range cache, checked against provenance
            cfg0 = QuantConfig(methods[0], percentile, placement=place)
            want = provenance(model, meta, cal, cfg0)
            if check_cache(Path(cache), want, force_cache):
                amax[cfg0.method.value], cached_channels = load_ranges(Path(cache))
                channel_amax.update(cached_channels)
                echo(f"reusing calibration ranges from {cache}")
        best: tuple[Path, Evaluation, QuantConfig] | None = None
        for m in methods:
            cfg = QuantConfig(m, percentile, placement=place, overflow_fix=overflow_fix)
            path, ev = build(cfg, m.value)
            result_tried.append(ev)
            echo(f"  {m.value:<10} drop {ev.drop:+.2f} pts, top-1 agreement {ev.agreement:.2%}, "
                 f"output error {ev.error:.4f}")
            if best is None or (ev.drop, -ev.agreement, ev.error) < (best[1].drop, -best[1].agreement, best[1].error):
                best = (path, ev, cfg)
        path, ev, cfg = best
        sens_rows: list[dict] = []
        if sensitivity or (max_drop is not None and ev.drop > max_drop):
            echo(f"per-layer sensitivity ({cfg.method.value}): keeping one layer in float at a time")
            for layer in layers:
                _, e = build(QuantConfig(cfg.method, percentile, keep_float=[layer], placement=place,
                                             overflow_fix=overflow_fix),
                             f"sens-{layer}")
                sens_rows.append({"layer": layer, "drop_with_layer_float": e.drop,
                                  "gain_points": ev.drop - e.drop, "top1_agreement": e.agreement,
                                  "error_reduction": ev.error - e.error, "output_error": e.error})
            sens_rows.sort(key=lambda r: (-r["gain_points"], -r["top1_agreement"], -r["error_reduction"]))
        if max_drop is not None and ev.drop > max_drop:
            kept: list[str] = []
            for row in sens_rows:
                kept.append(row["layer"])
                path, ev = build(QuantConfig(cfg.method, percentile, keep_float=list(kept), placement=place,
                                             overflow_fix=overflow_fix),
                                 f"keep{len(kept)}")
                echo(f"  keeping {', '.join(kept)} in float: drop {ev.drop:+.2f} pts")
                if ev.drop <= max_drop:
                    break
            cfg = QuantConfig(cfg.method, percentile, keep_float=kept, placement=place, overflow_fix=overflow_fix)
            if ev.drop > max_drop:
                echo(f"warning: even with {len(kept)} layers in float the drop is {ev.drop:.2f} > {max_drop} points")
        exact = evaluate(path, ev.method, list(ev.kept_float), exact=True)
        mismatch = KERNEL_GATE.problem(evaluate.outputs[path], evaluate.outputs["exact"], evaluate.ref)
        kernels = kernel_family()
        if mismatch:
            line = (f"INT8 on this CPU's ONNX Runtime kernels ({kernels}) differs from the exact QDQ math: "
                    f"{mismatch}; likely int16 saturation on this CPU")
            if not allow_kernel_mismatch:
                raise KernelMismatchError(f"{line}; nothing written (--allow-kernel-mismatch writes it anyway, "
                                          "for a target whose kernels do not saturate)")
            echo(f"warning: {line}")
        prov = provenance(model, meta, cal, cfg)
        prov["requested_images"] = int(num_images)
        prov["dead_input_channels_zeroed"] = dict(source["dead"] or {})
        prov["equalized_pairs"] = equalized  # first->second: input-channel weight range spread before
        prov["int16_overflow_fix"] = (plans[path].overflow_fix if plans[path].overflow_fix
                                      else {"applied": False, "reason": "--no-overflow-fix" if not overflow_fix
                                            else "tensorrt placement: ONNX Runtime runs its layers in float"})
        out_meta = dataclasses.replace(
            meta, precision="int8", fp32_onnx_sha256=prov["source_onnx_sha256"],
            extra={**meta.extra, "calibration": prov,
                   "int8_evaluation": ev.row() | {"dataset": held.name, "images": int(len(held.x)),
                                                  "kernels": kernels},
                   "int8_evaluation_exact_qdq": exact.row() | {"kernel_mismatch": mismatch}})
        q = onnx.load(str(path))
        set_metadata(q, out_meta)
        qdq_nodes = count_qdq(q)
        with atomic_path(output) as final:
            onnx.save(q, str(final))
        if cache is not None:
            save_ranges(Path(cache), amax[cfg.method.value], cfg, channel_amax)
            write_sidecar(Path(cache), provenance(model, meta, cal, QuantConfig(cfg.method, percentile,
                                                                                placement=place)))
    return CalibrationResult(output, ev, result_tried, sens_rows, prov, amax, qdq_nodes, exact, mismatch)


def summary_table(result: CalibrationResult) -> str:
    ev = result.chosen
    lines = [f"{'method':<11}{'FP32 acc':>10}{'INT8 acc':>10}{'drop':>8}{'top-1 agree':>13}  kept float"]
    for e in [*result.tried, *([ev] if ev.kept_float else [])]:
        acc = (f"{e.fp32_accuracy:9.2f}%" if e.fp32_accuracy is not None else f"{'-':>10}",
               f"{e.int8_accuracy:9.2f}%" if e.int8_accuracy is not None else f"{'-':>10}")
        lines.append(f"{e.method:<11}{acc[0]}{acc[1]}{e.drop:8.2f}{e.agreement:12.2%}  {', '.join(e.kept_float) or '-'}")
    if ev.fp32_accuracy is None:
        lines.append("drop = top-1 disagreement with FP32 in points: the held-out set has no labels for this "
                     "model's classes (pass --dataset with its training data for accuracy)")
    if result.sensitivity:
        lines.append("sensitivity (gain in points when the layer stays float):")
        lines += [f"  {r['layer']:<14} {r['gain_points']:+.2f}  (agreement {r['top1_agreement']:.2%}, "
                  f"output error {r['output_error']:.4f})" for r in result.sensitivity]
    if result.exact is not None:
        ex = result.exact
        acc = f"{ex.int8_accuracy:.2f}%" if ex.int8_accuracy is not None else f"agreement {ex.agreement:.2%}"
        lines.append(f"exact QDQ math: {acc}, max logit error {ex.logit_max_abs_error:.3g} (this host: "
                     f"{ev.logit_max_abs_error:.3g}, {kernel_family()}); "
                     + (f"MISMATCH: {result.kernel_mismatch}" if result.kernel_mismatch else "kernels agree"))
    lines.append(f"chosen: {ev.method}, drop {ev.drop:.2f} points, kept float: {', '.join(ev.kept_float) or 'none'} "
                 f"-> {result.output} (sha256 {sha256_file(result.output)[:12]})")
    return "\n".join(lines)
