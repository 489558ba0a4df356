"""What `alexnet-deploy` runs: options, the ordered steps, and content-hash cache keys.

A step's cache key is the sha256 of its name, the sha256 of every file it reads (the checkpoint, an upstream
artifact's model), the options that change its output and the versions of the libraries that make it. Keys
never use timestamps: a changed option changes only the keys of the steps it feeds, so only those rerun.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.runtime.engines import ENGINES, ONNX_ENGINES, TENSORRT_ENGINES, TORCH_ENGINES
from alexnet_deploy.runtime.precision import PRECISIONS

TARGETS = ("onnx", "trt", "triton")
GOLDEN = "golden"  # DIR/golden: held-out inputs, labels, PyTorch outputs and gates for alexnet-verify
REFERENCE = "pytorch"  # the checkpoint itself: the reference row (engine torch)
KEY_SCHEMA = "alexnet-deploy.deploy-step/1"  # bump to invalidate every cached step
MAX_BATCH = 1024  # benchmark buffers and engine profiles grow with it; AlexNet at 224x224 is ~600 KB per image


@dataclass
class DeployOptions:
    weights: Path
    out: Path
    dataset: str
    variant: str | None = None
    precisions: tuple[str, ...] = PRECISIONS
    targets: tuple[str, ...] = TARGETS
    engines: tuple[str, ...] | None = None  # None: torch + ort + what this machine has (ort-cuda, ort-trt, trt)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    bench_duration_s: float | None = 2.0
    bench_iterations: int | None = None
    bench_warmup_ms: float = 200.0
    roofline: bool = True  # measure the CPU ceilings (~1.5 s per ONNX artifact) for the roofline column
    parity_images: int = 1000
    golden_images: int = 256  # DIR/golden: what alexnet-verify checks on the target (parity/golden.py)
    random_samples: int = 16
    tolerances: dict = field(default_factory=dict)
    calib_images: int = 512
    calib_method: str = "minmax"
    sensitivity: bool = True
    max_drop: float | None = None
    trt_library: str = "auto"
    compute_capability: str | None = None
    workspace_mb: int = 1024
    triton_kind: str | None = None  # None: what this host has (KIND_GPU needs a GPU to load)
    force: bool = False

    def validate(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise UserInputError(f"unknown --precisions {','.join(bad) or '(none)'}; choose from {','.join(PRECISIONS)}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise UserInputError(f"unknown --targets {','.join(bad) or '(none)'}; choose from {','.join(TARGETS)}")
        if self.engines is not None:
            bad = [e for e in self.engines if e not in ENGINES]
            if bad or not self.engines:
                raise UserInputError(f"unknown --engines {','.join(bad) or '(none)'}; choose from auto or "
                                     f"{','.join(ENGINES)}")
        if not self.batch_sizes or any(b < 1 or b > MAX_BATCH for b in self.batch_sizes):
            raise UserInputError(f"--batch-sizes must be integers in 1..{MAX_BATCH}, e.g. 1,8,32")
        if self.bench_iterations is None and (self.bench_duration_s is None or self.bench_duration_s <= 0):
            raise UserInputError("--bench-duration-s must be positive (or give --bench-iterations N)")
        if self.bench_iterations is not None and self.bench_iterations < 1:
            raise UserInputError("--bench-iterations must be at least 1")
        from alexnet_deploy.parity.tolerances import tolerances_for

        for p in PRECISIONS:  # unknown names or values: one line now, not a failed step later
            tolerances_for(p, self.tolerances)
        for name in ("parity_images", "calib_images", "golden_images"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be at least 1")

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    @property
    def built_precisions(self) -> tuple[str, ...]:
        """INT8 is calibrated from the FP32 export, so FP32 is built whenever INT8 is asked for."""
        wanted = set(self.precisions) | ({"fp32"} if "int8" in self.precisions else set())
        return tuple(p for p in PRECISIONS if p in wanted)


@dataclass(frozen=True)
class Step:
    name: str  # unique, e.g. "export fp32", "parity onnx-int8 ort"
    kind: str  # a registered StepKind name: export | calibrate | trt | triton | golden | parity | bench
    artifact: str  # the folder the step writes (export/calibrate/trt/triton) or reads (parity/bench)
    precision: str | None = None
    engine: str | None = None
    needs: tuple[str, ...] = ()  # artifact folders it reads


def onnx_artifact(precision: str) -> str:
    return f"onnx-{precision}"


def trt_artifact(precision: str) -> str:
    return f"trt-{precision}"


def engines_for(artifact: str, engines: tuple[str, ...]) -> tuple[str, ...]:
    if artifact == REFERENCE:
        return tuple(e for e in engines if e in TORCH_ENGINES)
    if artifact.startswith("onnx-"):
        return tuple(e for e in engines if e in ONNX_ENGINES)
    if artifact.startswith("trt-"):
        return tuple(e for e in engines if e in TENSORRT_ENGINES)
    return ()


# ------------------------------------------------------------------------------------------- step kinds
class StepKind:
    """One kind of step: the steps it adds to a plan, its cache key, its reproduce command and its run. Each
    kind is one class in deploy/steps.py, registered with :func:`register_step` (torchvision's
    ``@register_model`` pattern); a new kind is one new class there and nothing else."""

    name: str = ""  # Step.kind, filled in by register_step
    writes_artifact: bool = True  # an artifact folder with provenance.json; False: a record in checks/
    reads_weights: bool = False  # the checkpoint is one of its provenance inputs

    def plan(self, opts: "DeployOptions", engines: tuple[str, ...], models: list[str]) -> list["Step"]:
        """The steps of this kind, in run order. ``models``: the model artifacts planned so far (kinds that make
        models append theirs; later kinds check them)."""
        return []

    def key(self, ctx, step: "Step", input_sha: dict[str, str]) -> dict:
        """What decides the step's output besides its name, input sha256s and the toolkit's version."""
        raise NotImplementedError

    def command(self, ctx, step: "Step") -> str:
        """The command line that makes this step's output alone, run from the deployment folder."""
        raise NotImplementedError

    def run(self, ctx, step: "Step", stage: Path) -> dict:
        """Artifact kinds: write into ``stage`` (renamed into place afterwards) -> the provenance "result"."""
        raise NotImplementedError

    def check(self, ctx, step: "Step") -> dict:
        """Check kinds: -> the check record's body (``status`` and the :attr:`payload` field)."""
        raise NotImplementedError

    # check kinds: what their record in checks/ is called and holds
    statuses: tuple[str, ...] = ()
    payload: str = "result"

    def record_name(self, step: "Step") -> str:
        return f"{step.artifact}.{self.name}.json"


STEP_KINDS: dict[str, StepKind] = {}  # name -> the kind's one instance, in plan order (registration order)


def register_step(name: str):
    """Class decorator: ``@register_step("export")`` makes the class the ``export`` kind."""
    def wrap(cls: type[StepKind]) -> type[StepKind]:
        if name in STEP_KINDS:
            raise ValueError(f"step kind {name!r} is registered twice")
        cls.name = name
        STEP_KINDS[name] = cls()
        return cls
    return wrap


def step_kinds() -> dict[str, StepKind]:
    """The registry, filled (deploy/steps.py registers every kind when imported)."""
    from alexnet_deploy.deploy import steps  # noqa: F401 - registers the kinds (it imports this module)

    return STEP_KINDS


def kind_of(step: "Step") -> StepKind:
    return step_kinds()[step.kind]


def plan_steps(opts: DeployOptions, engines: tuple[str, ...]) -> list[Step]:
    """The steps in the order they run (every step after the ones it needs): each kind's, in registration
    order."""
    steps: list[Step] = []
    models: list[str] = []
    for kind in step_kinds().values():
        steps += kind.plan(opts, engines, models)
    return steps


def cache_key(step: Step, parts: dict) -> str:
    """sha256 of the step's identity and ``parts`` (input sha256s, options, versions) as canonical JSON."""
    blob = json.dumps({"schema": KEY_SCHEMA, "step": step.name, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
