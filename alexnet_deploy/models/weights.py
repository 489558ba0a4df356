"""Weights: seeded random, checkpoints of alexnet-train, plain state_dicts (.pt/.pth/.safetensors) and
torchvision's IMAGENET1K_V1 through the torch hub cache. Loads are always strict."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from alexnet_deploy.errors import ModelLoadError, UserInputError
from alexnet_deploy.fileio import atomic_path, sha256_file
from alexnet_deploy.models.alexnet import build_model
from alexnet_deploy.models.specs import VARIANTS, Preprocessing, default_class_names, get_variant

CHECKPOINT_FORMAT = "alexnet-deploy.checkpoint/1"


@dataclass
class LoadedModel:
    model: nn.Module
    variant: str
    class_names: list[str]
    preprocessing: Preprocessing
    source: str
    source_sha256: str
    softmax: bool = False
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def state_dict_sha256(state_dict: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, loaded: LoadedModel, **info) -> Path:
    """Write an alexnet-train checkpoint atomically (.pt: torch.save; .safetensors: tensors + metadata)."""
    path = Path(path)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "variant": loaded.variant,
        "class_names": loaded.class_names,
        "preprocessing": loaded.preprocessing.to_dict(),
        "softmax": loaded.softmax,
        **loaded.info,
        **info,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from alexnet_deploy.deps import require

            st = require("safetensors.torch")
            st.save_file(state, str(tmp), metadata={"alexnet_deploy": json.dumps(meta)})
        else:
            torch.save({**meta, "state_dict": state}, tmp)
    return path


def _read_file(path: Path) -> tuple[dict, dict]:
    """-> (state_dict, checkpoint metadata or {})."""
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from alexnet_deploy.deps import require

        st = require("safetensors")
        try:
            with st.safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("alexnet_deploy", "{}"))
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.startswith("Weights only load failed") or first.isdigit():  # torch's advice / a bare pickle opcode
            first = "not a torch.save file, or it holds objects other than tensors"
        raise ModelLoadError(
            f"cannot read {path} as a PyTorch checkpoint ({first}); expected a state_dict or an "
            "alexnet-train checkpoint (.pt/.pth/.safetensors)"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        return obj["state_dict"], meta
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")
    return obj, {}


def _strip_prefix(state: dict) -> dict:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def mismatches(model: nn.Module, state: dict) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches, one string each (empty: loads strictly)."""
    own = model.state_dict()
    problems = [f"missing key {k}" for k in own if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in own]
    problems += [
        f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return problems


def _classes_in(state: dict) -> int | None:
    """Class count from the last linear layer's weight."""
    linear = [k for k, v in state.items() if k.startswith("classifier.") and k.endswith(".weight") and v.ndim == 2]
    if not linear:
        return None
    last = max(linear, key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1)
    return int(state[last].shape[0])


def infer_variant(state: dict) -> str | None:
    """The variant whose architecture loads ``state`` strictly (built on the meta device: no memory)."""
    n = _classes_in(state)
    for name in VARIANTS:
        with torch.device("meta"):
            model = build_model(name, num_classes=n, seed=None)
        if not mismatches(model, state):
            return name
    return None


def _load_imagenet(variant: str, num_classes: int | None) -> tuple[dict, dict, str]:
    if variant != "torchvision":
        raise UserInputError(f"--weights imagenet exists only for the torchvision variant, not {variant!r}")
    if num_classes not in (None, 1000):
        raise UserInputError(f"ImageNet weights have 1000 classes; drop --num-classes {num_classes}")
    from torchvision.models import AlexNet_Weights

    w = AlexNet_Weights.IMAGENET1K_V1
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / os.path.basename(w.url)
    if not cached.is_file():
        raise ModelLoadError(
            f"ImageNet weights are not in the torch hub cache and cannot be downloaded here: put "
            f"{cached.name} (from {w.url}) into {folder} (or set TORCH_HOME)"
        )
    state = w.get_state_dict(progress=False)  # reads the cached file; no network
    meta = {"class_names": list(w.meta["categories"]), "imagenet_acc@1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"]}
    return state, meta, sha256_file(cached)


def _is_keras(weights: str) -> bool:
    from alexnet_deploy.models.keras_h5 import is_keras_file

    return is_keras_file(weights)


def load_model(variant: str | None = None, weights: str = "random", *, num_classes: int | None = None,
               class_names: list[str] | None = None, seed: int = 0, softmax: bool = False) -> LoadedModel:
    """Build a variant and load ``weights``: ``random`` (seeded), ``imagenet``, or a file path."""
    meta: dict = {}
    if weights == "random":
        if variant is None:
            raise UserInputError("name the variant (--variant) when using random weights")
        spec = get_variant(variant)
        model = build_model(variant, num_classes=num_classes, seed=seed, softmax=softmax)
        names = class_names or default_class_names(num_classes or spec.default_num_classes)
        sha = state_dict_sha256(model.state_dict())
        return LoadedModel(model, variant, names, spec.preprocessing, f"random(seed={seed})", sha, softmax,
                           {"weights": "random", "seed": seed})
    if weights == "imagenet":
        variant = variant or "torchvision"
        state, meta, sha = _load_imagenet(variant, num_classes)
    elif _is_keras(weights):  # .keras / .h5 / .weights.h5: h5py only, matched onto a variant (models/keras_h5.py)
        from alexnet_deploy.models.keras_h5 import load_keras_model

        return load_keras_model(weights, variant, num_classes=num_classes, class_names=class_names, softmax=softmax)
    else:
        path = Path(weights)
        state, meta = _read_file(path)
        state = _strip_prefix(state)
        sha = sha256_file(path)
        ck_variant = meta.get("variant")
        if ck_variant and variant and ck_variant != variant:
            raise ModelLoadError(
                f"{path} holds a {ck_variant!r} model, not {variant!r}; pass --variant {ck_variant} (or omit it)"
            )
        variant = variant or ck_variant or infer_variant(state)
        if variant is None:
            raise ModelLoadError(f"{path} matches no known variant; name it with --variant ({', '.join(VARIANTS)})")
    spec = get_variant(variant)
    ck_names = meta.get("class_names")
    ck_classes = len(ck_names) if ck_names else _classes_in(state)
    if num_classes is not None and ck_classes is not None and num_classes != ck_classes:
        raise ModelLoadError(f"{weights} has {ck_classes} classes, not {num_classes}; drop --num-classes or retrain")
    n = ck_classes or num_classes or spec.default_num_classes
    softmax = bool(meta.get("softmax", softmax))
    with torch.device("meta"):
        skeleton = build_model(variant, num_classes=n, seed=None, softmax=softmax)
    problems = mismatches(skeleton, state)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")
        raise ModelLoadError(f"{weights} does not fit variant {variant!r} with {n} classes: {shown}")
    model = build_model(variant, num_classes=n, seed=None, softmax=softmax)
    model.load_state_dict(state, strict=True)
    model.eval()
    prep = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else spec.preprocessing
    names = class_names or ck_names or default_class_names(n)
    info = {k: v for k, v in meta.items() if k not in ("state_dict", "class_names", "preprocessing", "format")}
    return LoadedModel(model, variant, list(names), prep, str(weights), sha, softmax, info)


def nonfinite_tensors(model: nn.Module) -> list[tuple[str, int]]:
    """(name, count) of every parameter or buffer holding NaN or Inf values, in state_dict order."""
    bad = []
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append((name, n))
    return bad


def check_finite(loaded: LoadedModel) -> None:
    """Refuse weights with NaN/Inf values, naming the tensor (every output would be NaN: exporting, calibrating
    or comparing such a model only produces misleading errors later)."""
    bad = nonfinite_tensors(loaded.model)
    if bad:
        name, n = bad[0]
        total = loaded.model.state_dict()[name].numel()
        more = f" (and {len(bad) - 1} other tensor(s): {', '.join(b for b, _ in bad[1:4])})" if len(bad) > 1 else ""
        raise ModelLoadError(f"{printable_source(loaded.source)}: tensor {name} holds {n} non-finite value(s) "
                             f"(NaN/Inf) of {total}{more}; the weights are broken (a diverged training run?)")


def printable_source(source: str) -> str:
    from alexnet_deploy.fileio import printable_path

    return printable_path(source) if source else "the weights"
