"""OpenVINO beside ONNX Runtime in alexnet-bench: the CPU anchor a user deploying to x86 would otherwise pick.

Two engine names, one thing each:

- ``openvino``: OpenVINO's CPU plugin runs the ONNX file as it is (``Core().read_model`` on the .onnx): an FP32
  export gives an FP32 row, our QDQ INT8 file gives OpenVINO's kernels on our quantization.
- ``openvino-nncf``: NNCF post-training quantization (``nncf.quantize`` with its defaults) of the FP32 ONNX at
  start-up, on the same calibration images ``alexnet-calibrate`` used (same dataset, count, ``train`` split and
  seed), then OpenVINO CPU on that INT8 model; its rows say ``int8`` next to the FP32 file's name.

A separate name (rather than ``openvino`` producing two rows) keeps "engine" meaning one runtime doing one
thing, so ``--baseline``, ``--compare`` keys and the table read the same as for ``ort``; and it tells the NNCF
row apart from OpenVINO running our own INT8 file. Both compile for CPU with ``INFERENCE_NUM_THREADS`` =
``--threads`` (as ORT's intra-op threads), the LATENCY hint (one stream) and ``INFERENCE_PRECISION_HINT f32``
(on AVX-512 BF16 / AMX CPUs OpenVINO would otherwise run an "FP32" model in bf16). openvino and nncf are
optional (``pip install 'alexnet-deploy[openvino]'``) and imported lazily.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from alexnet_deploy.errors import InferenceError, MissingDependencyError, ModelLoadError
from alexnet_deploy.runtime.metadata import ModelMetadata
from alexnet_deploy.runtime.runners.base import Runner, TensorSpec

PIP = "'alexnet-deploy[openvino]'"
ENGINES = {
    "openvino": ("onnx", "OpenVINO CPU plugin on the ONNX file as it is"),
    "openvino-nncf": ("onnx", "OpenVINO CPU on an INT8 model NNCF quantizes from the FP32 ONNX at start-up"),
}
DEFAULT_CALIBRATION_IMAGES = 500  # alexnet-calibrate's default (calibration.run.DEFAULT_NUM_IMAGES)
DEFAULT_EVAL_IMAGES = 1000  # alexnet-calibrate's --eval-images default


def require(engine: str) -> None:
    """Raise one line naming the extra when ``engine`` needs a package that is not installed."""
    import importlib

    for module in ("openvino", *(("nncf",) if engine == "openvino-nncf" else ())):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(module, PIP, f"the {engine} engine of alexnet-bench") from None


class OpenVinoRunner(Runner):
    """OpenVINO CPU on an ONNX file; with ``calibration`` (model input arrays), NNCF INT8 of it first."""

    engine = "openvino"

    def __init__(self, path, metadata: ModelMetadata, threads: int | None = None,
                 calibration: np.ndarray | None = None):
        super().__init__(metadata if calibration is None else dataclasses.replace(metadata, precision="int8"))
        self.path, self.threads, self.calibration = os.fspath(path), threads, calibration
        if calibration is not None:
            self.engine = "openvino-nncf"
        self.info: dict = {}

    def activate_impl(self) -> None:
        require(self.engine)
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(self.path)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with a long text
            raise ModelLoadError(f"OpenVINO cannot read {self.path}: {str(exc).strip().splitlines()[0][:300]}") from None
        if self.calibration is not None:
            import nncf

            x = self.calibration
            t0 = time.perf_counter()
            # one image per item and subset_size = every image: NNCF's default subset is 300 items
            model = nncf.quantize(model, nncf.Dataset([x[i: i + 1] for i in range(len(x))]), subset_size=len(x))
            self.info["nncf"] = {"version": nncf.__version__, "subset_size": int(len(x)),
                                 "quantize_s": round(time.perf_counter() - t0, 1),
                                 "parameters": "nncf.quantize defaults (preset performance, target ANY, "
                                               "fast bias correction, overflow fix first layer)"}
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        compiled = core.compile_model(model, "CPU", config)
        self.compiled, self.request = compiled, compiled.create_infer_request()
        self.info.update({"openvino_version": ov.get_version(),
                          **{k.lower(): str(compiled.get_property(k)) for k in
                             ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT")}})
        self.provider = f"OpenVINO CPU {ov.__version__}"
        inp = compiled.input(0)
        shape = tuple(None if d.is_dynamic else d.get_length() for d in inp.get_partial_shape())
        self.input_spec = TensorSpec(inp.get_any_name(), shape, np.dtype(inp.get_element_type().to_dtype()))
        if shape and shape[0] is not None:
            self.min_batch = self.max_batch = shape[0]
        out = compiled.output(0).get_partial_shape()
        self.check_output_shape([None if d.is_dynamic else d.get_length() for d in out], self.path)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        try:
            self.request.infer([x], share_inputs=True)
            return self.request.get_output_tensor(0).data.copy()
        except Exception as exc:  # noqa: BLE001
            raise InferenceError(f"OpenVINO failed: {str(exc).strip().splitlines()[0][:300]}") from None

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None


def calibration_source(meta: ModelMetadata, siblings: list[ModelMetadata]) -> dict:
    """Where alexnet-calibrate took this FP32 model's calibration images: from an INT8 model of the same run
    made from it (its provenance), else the model's recorded dataset as alexnet-calibrate would choose it."""
    for s in siblings:
        prov = (s.extra or {}).get("calibration") or {}
        name = prov.get("dataset", "")
        if name and not name.startswith("npy:"):
            ev = (s.extra or {}).get("int8_evaluation") or {}
            return {"dataset": "synthetic" if name == "synthetic" else name.rsplit(":", 1)[0],
                    "num_images": int(prov.get("requested_images") or prov.get("num_images")),
                    "eval_images": int(ev.get("images") or DEFAULT_EVAL_IMAGES),
                    "data_sha256": prov.get("data_sha256"), "from": "the INT8 model's calibration provenance"}
    from alexnet_deploy.data.datasets import dataset_for_model

    return {"dataset": dataset_for_model(None, meta.class_names, meta.training_dataset),
            "num_images": DEFAULT_CALIBRATION_IMAGES, "eval_images": DEFAULT_EVAL_IMAGES, "data_sha256": None,
            "from": "the model's training dataset (alexnet-calibrate's default)"}


def load_sets(meta: ModelMetadata, src: dict):
    """(calibration set, held-out set) exactly as alexnet-calibrate loads them (train split, seed 0)."""
    from alexnet_deploy.calibration.data import load_calibration_set

    synthetic = src["dataset"] == "synthetic"
    cal = load_calibration_set(src["dataset"], meta, src["num_images"], "train", allow_synthetic=synthetic)
    held = cal if synthetic else load_calibration_set(src["dataset"], meta, src["eval_images"], "heldout")
    return cal, held


def agreement(out: np.ndarray, ref: np.ndarray, held) -> dict:
    """Top-1 agreement with the FP32 outputs and held-out accuracy (when the set has labels)."""
    d = {"dataset": held.name, "images": int(len(out)), "top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
         "logit_max_abs_error": float(np.abs(out - ref).max())}
    if held.labels is not None:
        d["fp32_accuracy_pct"] = 100 * float(np.mean(ref.argmax(1) == held.labels))
        d["int8_accuracy_pct"] = 100 * float(np.mean(out.argmax(1) == held.labels))
    return d
