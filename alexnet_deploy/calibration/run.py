"""alexnet-calibrate: FP32 ONNX -> QDQ INT8 ONNX with accuracy first (methods, sensitivity, --max-drop).

:func:`calibrate` runs named stages on the options of :class:`CalibrationOptions`:

1. **measure** (:class:`RangeMeasure`): activation histograms on the calibration set, once, then each
   method's ranges (or a user's range cache, checked against provenance);
2. **quantize** (:class:`Quantizer`): the FP32 model, cross-layer equalized and with dead input channels
   zeroed, to a QDQ INT8 candidate for one :class:`~.qdq.QuantConfig` (made only by
   :meth:`CalibrationOptions.config`);
3. **evaluate** (:mod:`.evaluate`): each candidate against FP32 on the held-out set, the chosen one again on
   the exact QDQ emulation (:data:`KERNEL_GATE`);
4. **search**: the best method, the per-layer sensitivity, then (``max_drop``) layers kept in float with
   :func:`.search.keep_until_within`, the same search INT4 uses.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from alexnet_deploy.calibration.cache import check_cache, write_sidecar
from alexnet_deploy.calibration.data import CalibrationSet, load_calibration_set
from alexnet_deploy.calibration.dead_channels import zero_dead_inputs
from alexnet_deploy.calibration.equalize import equalize
from alexnet_deploy.calibration.evaluate import KERNEL_GATE, Evaluation, Evaluator, KernelGate  # noqa: F401
from alexnet_deploy.calibration.placement import Placement, QdqPlan, count_qdq
from alexnet_deploy.calibration.qdq import (Method, QuantConfig, is_quantized, load_ranges, measure, provenance,
                                            quantize, ranges_for, save_ranges, temp_dir, weighted_layers)
from alexnet_deploy.calibration.search import keep_until_within, needs_search
from alexnet_deploy.errors import KernelMismatchError, UserInputError
from alexnet_deploy.fileio import atomic_path, check_writable, sha256_file
from alexnet_deploy.runtime.cpu_features import kernel_family
from alexnet_deploy.runtime.metadata import read_onnx_metadata, set_metadata

log = logging.getLogger(__name__)

DEFAULT_NUM_IMAGES = 500  # MLPerf's calibration-set size, class-balanced


@dataclass(frozen=True)
class CalibrationOptions:
    """What :func:`calibrate` does (the options of ``alexnet-calibrate``).

    ``placement``: ort (every tensor but the network output: fast on ONNX Runtime CPU) | tensorrt (Q/DQ on the
    inputs of Conv/Gemm/MatMul only, for TensorRT engines) | all (every tensor, logits too: ONNX Runtime's
    default); logits stay float with ort and tensorrt. See :mod:`.placement`. ``overflow_fix``: requantize the
    weight channels that could saturate int16 on x86 without VNNI (ort, all; :mod:`.overflow`).
    ``allow_kernel_mismatch``: write the model even when this host's kernels differ from the exact QDQ
    emulation beyond :data:`KERNEL_GATE`."""

    dataset: str = "digits"
    num_images: int = DEFAULT_NUM_IMAGES
    eval_images: int = 1000
    method: str = "minmax"  # minmax | entropy | percentile | auto (the best of the three)
    percentile: float = 99.999
    max_drop: float | None = None  # points; None: no budget
    sensitivity: bool = False
    allow_synthetic: bool = False
    variant: str | None = None
    cache: str | Path | None = None
    force_cache: bool = False
    placement: Placement | str = Placement.ORT
    overflow_fix: bool = True
    allow_kernel_mismatch: bool = False

    @property
    def methods(self) -> list[Method]:
        return list(Method) if self.method == "auto" else [Method.parse(self.method)]

    @property
    def place(self) -> Placement:
        return Placement.parse(self.placement)

    def validate(self) -> None:
        if self.percentile <= 0 or self.percentile > 100:
            raise UserInputError(f"--percentile must be in (0, 100], got {self.percentile}")
        self.methods, self.place  # noqa: B018 - one line for an unknown --method / --placement

    def config(self, method: Method, keep_float: list[str] | tuple[str, ...] = ()) -> QuantConfig:
        """The one place a calibration's :class:`~.qdq.QuantConfig` is made."""
        return QuantConfig(method, self.percentile, keep_float=list(keep_float), placement=self.place,
                           overflow_fix=self.overflow_fix)


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

    def to_dict(self) -> dict:
        """The result as JSON (``alexnet-calibrate --json``, the deploy step's provenance): the written model,
        the chosen and tried evaluations (:meth:`Evaluation.row`), the sensitivity rows, the provenance and
        the Q/DQ node counts."""
        return {"output": str(self.output), "chosen": self.chosen.row(), "tried": [e.row() for e in self.tried],
                "sensitivity": list(self.sensitivity), "provenance": dict(self.provenance),
                "qdq_nodes": dict(self.qdq_nodes)}


@dataclass
class Candidate:
    """A QDQ INT8 model built in the temporary folder, with its configuration and held-out evaluation."""

    path: Path
    config: QuantConfig
    evaluation: Evaluation


# ------------------------------------------------------------------------------------------- measure
class RangeMeasure:
    """Activation histograms of ``fp32`` on the calibration set, measured once and lazily (a reused range cache
    needs none), then each method's symmetric ranges; ``channel_amax`` (per-channel max |x|) feeds the
    dead-channel zeroing of the quantize stage."""

    def __init__(self, fp32: Path, cal: CalibrationSet, meta, place: Placement):
        self.fp32, self.cal, self.meta, self.place = fp32, cal, meta, place
        self.amax: dict[str, dict[str, float]] = {}  # method -> tensor -> symmetric range
        self.channel_amax: dict = {}
        self._hist = None

    def reuse_cache(self, cache: Path, method: Method, want: dict, force: bool, echo=print) -> None:
        """The user's range cache for ``method``, when its provenance matches ``want`` (or ``force``)."""
        if check_cache(cache, want, force):
            self.amax[method.value], cached_channels = load_ranges(cache)
            self.channel_amax.update(cached_channels)
            echo(f"reusing calibration ranges from {cache}")

    def __call__(self, cfg: QuantConfig) -> dict[str, float]:
        if cfg.method.value not in self.amax:
            if self._hist is None:
                self._hist = measure(self.fp32, self.cal, self.meta, self.place)
                self.channel_amax.update(self._hist.channel_amax)
            self.amax[cfg.method.value] = ranges_for(self._hist, cfg)
        return self.amax[cfg.method.value]


# ------------------------------------------------------------------------------------------- quantize
class Quantizer:
    """FP32 -> QDQ INT8 candidates in ``tmp``. Quantization starts from the FP32 model cross-layer equalized
    (same function, balanced per-channel weight ranges; :mod:`.equalize`), and, once ranges are known, with the
    weights on always-zero input channels zeroed (:mod:`.dead_channels`)."""

    def __init__(self, model: Path, tmp: Path, echo=print):
        self.tmp, self.echo = tmp, echo
        self.base = model  # the (equalized) FP32 model that is measured
        fp32 = onnx.load(str(model))
        self.equalized = equalize(fp32)
        if self.equalized:
            self.base = tmp / "fp32-equalized.onnx"
            onnx.save(fp32, str(self.base))
            echo("cross-layer equalization: " + ", ".join(self.equalized))
        self.dead: dict | None = None  # None until the first build: module -> channels zeroed
        self._source = self.base
        self.plans: dict[Path, QdqPlan] = {}  # built model -> its QdqPlan (what the overflow fix changed)

    def source(self, channel_amax: dict) -> Path:
        """The FP32 model quantization starts from (dead input channels zeroed, decided on the first call)."""
        if self.dead is None:
            live = onnx.load(str(self.base))
            self.dead = zero_dead_inputs(live, channel_amax)
            if self.dead:
                self._source = self.tmp / "fp32-live-inputs.onnx"
                onnx.save(live, str(self._source))
                self.echo("zeroed weights on input channels that were 0 on every calibration image: "
                          + ", ".join(f"{k} ({v})" for k, v in self.dead.items()))
        return self._source

    def __call__(self, cfg: QuantConfig, ranges: RangeMeasure, tag: str) -> Path:
        path = self.tmp / f"{tag}.onnx"
        amax = ranges(cfg)
        self.plans[path] = quantize(self.source(ranges.channel_amax), path, amax, cfg)
        return path


# ------------------------------------------------------------------------------------------- search
def choose_method(opts: CalibrationOptions, build, echo=print) -> tuple[Candidate, list[Evaluation]]:
    """Each method of ``opts`` (one, or three with auto) -> the best candidate (lowest drop, then highest
    agreement, then lowest output error) and every evaluation."""
    tried: list[Evaluation] = []
    best: Candidate | None = None
    for m in opts.methods:
        c = build(opts.config(m), m.value)
        ev = c.evaluation
        tried.append(ev)
        echo(f"  {m.value:<10} drop {ev.drop:+.2f} pts, top-1 agreement {ev.agreement:.2%}, "
             f"output error {ev.error:.4f}")
        if best is None or (ev.drop, -ev.agreement, ev.error) < \
                (best.evaluation.drop, -best.evaluation.agreement, best.evaluation.error):
            best = c
    return best, tried


def layer_sensitivity(opts: CalibrationOptions, best: Candidate, layers: list[str], build, echo=print) -> list[dict]:
    """One layer in float at a time -> rows, most sensitive first (what keeping it in float gains)."""
    ev, method = best.evaluation, best.config.method
    echo(f"per-layer sensitivity ({method.value}): keeping one layer in float at a time")
    rows = []
    for layer in layers:
        e = build(opts.config(method, [layer]), f"sens-{layer}").evaluation
        rows.append({"layer": layer, "drop_with_layer_float": e.drop, "gain_points": ev.drop - e.drop,
                     "top1_agreement": e.agreement, "error_reduction": ev.error - e.error, "output_error": e.error})
    rows.sort(key=lambda r: (-r["gain_points"], -r["top1_agreement"], -r["error_reduction"]))
    return rows


def keep_float_within(opts: CalibrationOptions, best: Candidate, sens_rows: list[dict], build,
                      echo=print) -> Candidate:
    """``max_drop``: the most sensitive layers in float, one more at a time, until the drop fits."""
    method = best.config.method

    def build_kept(kept: list[str]):
        c = build(opts.config(method, kept), f"keep{len(kept)}")
        return c.path, c.evaluation

    kept, path, ev = keep_until_within([r["layer"] for r in sens_rows], build_kept, opts.max_drop,
                                       (best.path, best.evaluation), "float", echo)
    if ev.drop > opts.max_drop:
        echo(f"warning: even with {len(kept)} layers in float the drop is {ev.drop:.2f} > {opts.max_drop} points")
    return Candidate(path, opts.config(method, kept), ev)


# ------------------------------------------------------------------------------------------- evaluate (kernels)
def check_kernels(evaluate: Evaluator, chosen: Candidate, allow_mismatch: bool,
                  echo=print) -> tuple[Evaluation, str | None, str]:
    """The chosen model again on the exact QDQ emulation; -> (that evaluation, the mismatch beyond
    :data:`KERNEL_GATE` or None, this host's kernel family). A mismatch raises :class:`KernelMismatchError`
    unless ``allow_mismatch``."""
    ev = chosen.evaluation
    exact = evaluate(chosen.path, ev.method, list(ev.kept_float), exact=True)
    mismatch = KERNEL_GATE.problem(evaluate.outputs[chosen.path], evaluate.outputs["exact"], evaluate.ref)
    kernels = kernel_family()
    if mismatch:
        line = (f"INT8 on this CPU's ONNX Runtime kernels ({kernels}) differs from the exact QDQ math: "
                f"{mismatch}; likely int16 saturation on this CPU")
        if not allow_mismatch:
            raise KernelMismatchError(f"{line}; nothing written (--allow-kernel-mismatch writes it anyway, "
                                      "for a target whose kernels do not saturate)")
        echo(f"warning: {line}")
    return exact, mismatch, kernels


# ------------------------------------------------------------------------------------------- calibrate
def _calibration_sets(model: Path, meta, opts: CalibrationOptions, echo) -> tuple[CalibrationSet, CalibrationSet]:
    cal = load_calibration_set(opts.dataset, meta, opts.num_images, "train", opts.allow_synthetic)
    if len(cal.x) < opts.num_images:
        echo(f"note: {cal.name} has {len(cal.x)} calibration images, fewer than the {opts.num_images} asked for; "
             "the count is recorded in the provenance")
    held = cal if cal.name == "synthetic" else load_calibration_set(opts.dataset, meta, opts.eval_images, "heldout",
                                                                    opts.allow_synthetic)
    echo(f"calibrating {model.name} on {cal.name}: {len(cal.x)} images (sha256 {cal.fingerprint[:12]}); "
         f"evaluating on {len(held.x)} held-out images")
    return cal, held


def calibrate(model: str | Path, output: str | Path, options: CalibrationOptions | None = None, *, echo=print,
              **changes) -> CalibrationResult:
    """FP32 ONNX -> QDQ INT8 ONNX (atomically at ``output``). ``options`` (:class:`CalibrationOptions`), or its
    fields as keywords (``calibrate(m, o, dataset="digits", placement="tensorrt")``), which override
    ``options``. The chosen model is evaluated twice, on this host's kernels and on the exact QDQ emulation;
    when they differ beyond :data:`KERNEL_GATE` nothing is written (:class:`KernelMismatchError`) unless
    ``allow_kernel_mismatch``."""
    opts = dataclasses.replace(options or CalibrationOptions(), **changes)
    model, output = Path(model), check_writable(output)
    if output.resolve() == model.resolve():
        raise UserInputError("the INT8 output would overwrite the FP32 model; choose another --output")
    meta = read_onnx_metadata(model, opts.variant)
    proto = onnx.load(str(model), load_external_data=False)
    if is_quantized(proto):
        raise UserInputError(f"{model} is already quantized (it has QuantizeLinear/DequantizeLinear nodes); "
                             "calibrate the FP32 export instead")
    if meta.precision != "fp32":
        raise UserInputError(f"{model} is a {meta.precision} model; calibrate the FP32 export instead")
    opts.validate()
    cal, held = _calibration_sets(model, meta, opts, echo)
    evaluate = Evaluator(model, meta, held)
    layers = list(weighted_layers(proto))

    with temp_dir(output.parent) as tmp:
        tmp = Path(tmp)
        quantizer = Quantizer(model, tmp, echo)
        ranges = RangeMeasure(quantizer.base, cal, meta, opts.place)

        def build(cfg: QuantConfig, tag: str) -> Candidate:
            path = quantizer(cfg, ranges, tag)
            return Candidate(path, cfg, evaluate(path, cfg.method.value, list(cfg.keep_float)))

        if opts.cache is not None:  # user-kept range cache, checked against provenance
            cfg0 = opts.config(opts.methods[0])
            ranges.reuse_cache(Path(opts.cache), cfg0.method, provenance(model, meta, cal, cfg0), opts.force_cache,
                               echo)
        chosen, tried = choose_method(opts, build, echo)
        sens_rows: list[dict] = []
        if opts.sensitivity or needs_search(chosen.evaluation, opts.max_drop):
            sens_rows = layer_sensitivity(opts, chosen, layers, build, echo)
        if needs_search(chosen.evaluation, opts.max_drop):
            chosen = keep_float_within(opts, chosen, sens_rows, build, echo)
        exact, mismatch, kernels = check_kernels(evaluate, chosen, opts.allow_kernel_mismatch, echo)
        prov = _provenance(model, meta, cal, opts, chosen, quantizer)
        ev = chosen.evaluation
        out_meta = dataclasses.replace(
            meta, precision="int8", fp32_onnx_sha256=prov["source_onnx_sha256"],
            extra={**meta.extra, "calibration": prov,
                   "int8_evaluation": ev.row() | {"dataset": held.name, "images": int(len(held.x)),
                                                  "kernels": kernels},
                   "int8_evaluation_exact_qdq": exact.row() | {"kernel_mismatch": mismatch}})
        q = onnx.load(str(chosen.path))
        set_metadata(q, out_meta)
        qdq_nodes = count_qdq(q)
        with atomic_path(output) as final:
            onnx.save(q, str(final))
        if opts.cache is not None:
            method = chosen.config.method
            save_ranges(Path(opts.cache), ranges.amax[method.value], chosen.config, ranges.channel_amax)
            write_sidecar(Path(opts.cache), provenance(model, meta, cal, opts.config(method)))
    return CalibrationResult(output, ev, tried, sens_rows, prov, ranges.amax, qdq_nodes, exact, mismatch)


def _provenance(model: Path, meta, cal: CalibrationSet, opts: CalibrationOptions, chosen: Candidate,
                quantizer: Quantizer) -> dict:
    prov = provenance(model, meta, cal, chosen.config)
    prov["requested_images"] = int(opts.num_images)
    prov["dead_input_channels_zeroed"] = dict(quantizer.dead or {})
    prov["equalized_pairs"] = quantizer.equalized  # first->second: input-channel weight range spread before
    plan = quantizer.plans[chosen.path]
    prov["int16_overflow_fix"] = (plan.overflow_fix if plan.overflow_fix
                                  else {"applied": False, "reason": "--no-overflow-fix" if not opts.overflow_fix
                                        else "tensorrt placement: ONNX Runtime runs its layers in float"})
    return prov


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
