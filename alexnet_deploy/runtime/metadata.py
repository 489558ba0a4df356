"""The alexnet-deploy metadata carried in an ONNX model's ``metadata_props`` (and in engine manifests).

Later stages read preprocessing, class names and provenance from here instead of asking again.
Reading needs neither torch nor onnx (ONNX Runtime's ``custom_metadata_map`` is enough).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from alexnet_deploy.errors import MetadataError
from alexnet_deploy.models.specs import Preprocessing, default_class_names, get_variant

PREFIX = "alexnet_deploy."


@dataclass
class ModelMetadata:
    variant: str
    class_names: list[str]
    preprocessing: Preprocessing
    input_name: str = "input"
    output_name: str = "logits"
    output_kind: str = "logits"  # or "probabilities" (plain --softmax)
    batch: int | None = None  # None: dynamic batch
    precision: str = "fp32"  # fp32 | fp16 | int8
    io_dtype: str = "float32"
    # What the graph's input expects: "float-nchw" (normalized float, the default), or raw pixels with the
    # normalization inside the graph ("uint8-nhwc", "float-0-255"), or normalized float channels last
    # ("float-nhwc": Keras' own ONNX export); see runtime.preprocess.model_batch.
    input_format: str = "float-nchw"
    opset: int | None = None
    source_weights: str = ""
    source_sha256: str = ""
    fp32_onnx_sha256: str = ""  # for derived models (fp16 / int8): the FP32 ONNX they came from
    # "digits" or the resolved root folder of the dataset the weights were trained on ("" when unknown);
    # parity, calibration and export checks default to it
    training_dataset: str = ""
    versions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. calibration provenance

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.preprocessing.crop, self.preprocessing.crop)

    @property
    def input_dims(self) -> tuple[int, int, int]:
        """One item of the graph's input: (3, H, W), or (H, W, 3) for channels-last inputs (uint8-nhwc, float-nhwc)."""
        c, h, w = self.input_shape
        return (h, w, c) if self.input_format in ("uint8-nhwc", "float-nhwc") else (c, h, w)

    @property
    def input_dtype(self) -> str:
        """numpy dtype name of the graph's input."""
        return "uint8" if self.input_format == "uint8-nhwc" else "float32"

    def to_props(self) -> dict[str, str]:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        d["num_classes"] = self.num_classes
        d["input_shape"] = list(self.input_shape)
        return {PREFIX + k: json.dumps(v) for k, v in d.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelMetadata":
        raw = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "variant" not in raw:
            raise MetadataError(
                f"{source} has no alexnet-deploy metadata (was it exported by alexnet-export?); "
                "name the variant with --variant to use its documented defaults"
            )
        try:
            d = {k: json.loads(v) for k, v in raw.items()}
            d.pop("num_classes", None)
            d.pop("input_shape", None)
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
            known = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in d.items() if k in known})
        except (ValueError, KeyError, TypeError) as exc:
            raise MetadataError(f"{source} has malformed alexnet-deploy metadata: {exc}") from None

    @classmethod
    def defaults_for(cls, variant: str, num_classes: int | None = None) -> "ModelMetadata":
        """The documented defaults of a variant, for models exported without our metadata."""
        spec = get_variant(variant)
        n = num_classes or spec.default_num_classes
        return cls(variant=variant, class_names=default_class_names(n), preprocessing=spec.preprocessing,
                   source_weights="unknown (defaults of the named variant)")


def read_onnx_metadata(path, variant: str | None = None) -> ModelMetadata:
    """Metadata of an ONNX file; with ``variant`` given, the variant's defaults when the file has none."""
    props = onnx_props(path)
    try:
        return ModelMetadata.from_props(props, str(path))
    except MetadataError:
        if variant is None or any(k.startswith(PREFIX) for k in props):
            raise
        return ModelMetadata.defaults_for(variant)


def set_metadata(proto, metadata: ModelMetadata) -> None:
    """Replace our keys in an ``onnx.ModelProto``'s ``metadata_props`` (others are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    for k, v in keep + list(metadata.to_props().items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def onnx_props(path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file without loading its weights into a session when onnx is present."""
    from alexnet_deploy.errors import ModelLoadError

    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            model = onnx.load(str(path), load_external_data=False)
            return {p.key: p.value for p in model.metadata_props}
        import onnxruntime as ort

        from alexnet_deploy.fileio import native_path_or_bytes

        sess = ort.InferenceSession(native_path_or_bytes(path), providers=["CPUExecutionProvider"])
        return dict(sess.get_modelmeta().custom_metadata_map)
    except FileNotFoundError:
        raise ModelLoadError(f"model not found: {path}") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from None
