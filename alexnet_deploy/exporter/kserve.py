"""KServe and Kubernetes manifests for what alexnet-deploy built (issue 21 §4): an InferenceService running the
Triton repository (``predictor.triton``), alexnet-serve itself as a KServe custom predictor, and a plain Deployment +
Service for clusters without KServe.

The builders are plain functions returning dicts (one Kubernetes object each); :func:`export_kserve` reads the input
(a deployment folder, a Triton repository, an artifact folder or a model file), builds every document first and only
then writes the YAML files, each atomically, so a refused input leaves nothing behind.

Storage: ``storage_uri`` is where the input *folder* is uploaded (the deployment folder, the Triton repository, or
the folder holding the model file), so one URI places both the Triton repository and the artifact alexnet-serve
runs: for a deployment folder ``U/triton/model_repository`` and ``U/onnx-fp32``. KServe's storage initializer
downloads a predictor's URI into /mnt/models; the plain Deployment mounts a PersistentVolumeClaim holding the same
tree at /models (``pvc://CLAIM/PATH`` names it)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_deploy.errors import MissingDependencyError, UserInputError

SERVE_HTTP_PORT = 8080  # KServe's serving port (h1); deploy/docker/Dockerfile.* EXPOSE the same
SERVE_GRPC_PORT = 8081  # KServe's gRPC port (h2c)
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts a predictor's storageUri
MODEL_DIR = "/models"  # where the container images and the plain Deployment expect the model
RUN_AS = 10001  # the images' unprivileged user (deploy/docker/Dockerfile.cpu / .gpu)
TRITON_RUNTIME_VERSION = "24.08-py3"  # nvcr.io/nvidia/tritonserver tag KServe's Triton runtime pulls
CPU_THREADS = 2  # CPU request = limit = alexnet-serve --threads: ONNX Runtime sized to the pod, not to the node
DEFAULT_PVC = "alexnet-models"
PLACEHOLDER = "unset://set-storage-uri"  # not a scheme KServe knows: an unedited file fails at admission, loudly
FILES = {"triton": "inferenceservice-triton.yaml", "serve": "inferenceservice-alexnet-serve.yaml",
         "deployment": "deployment.yaml"}
ONLY = ("triton", "serve")  # --only: the Triton InferenceService, or alexnet-serve's two manifests
_GI = 1 << 30
_KIND = {"deploy": "a deployment folder", "repository": "a Triton repository", "artifact": "an artifact folder",
         "model": "a model file"}
_DNS = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class TritonModel:
    """One model of a Triton repository, as its config.pbtxt describes it."""

    name: str
    platform: str
    gpu: bool  # tensorrt_plan, or an instance group of KIND_GPU
    trt_library: str | None = None  # alexnet_deploy.trt_library parameter of a plan ("tensorrt_rtx 1.2")


@dataclass(frozen=True)
class ServeModel:
    """What alexnet-serve runs: ``rel`` (a folder, relative to the uploaded tree) and ``file`` (what the command
    names inside it: "" for an artifact folder, whose manifest.json names the model)."""

    rel: str
    file: str
    name: str  # the model name it announces
    engine: str  # alexnet-serve --engine for the CPU image
    plan: bool  # a TensorRT engine: needs an image with TensorRT, a GPU
    bytes: int


@dataclass(frozen=True)
class KServeSource:
    kind: str  # "deploy" | "repository" | "artifact" | "model"
    path: Path
    repository: Path | None = None
    repository_rel: str | None = None  # the repository inside the uploaded tree ("triton/model_repository", "")
    triton_models: tuple[TritonModel, ...] = ()
    repository_bytes: int = 0
    serve: ServeModel | None = None
    has_engines: bool = False  # TensorRT engines in the input (a .plan, trt-* artifacts, tensorrt_plan models)
    serve_problem: str | None = None  # why alexnet-serve's manifests cannot be written (asked for in one line)


@dataclass(frozen=True)
class KServeOptions:
    name: str | None = None  # the model name alexnet-serve announces (default: the Triton repository's name)
    image: str | None = None
    storage_uri: str | None = None
    namespace: str | None = None
    gpu: bool | None = None  # None: from the artifact
    replicas: int = 1
    only: str | None = None  # None: everything the input has; "serve" / "triton"
    artifact: str | None = None  # which artifact (deploy folder) / Triton model (repository) alexnet-serve runs
    runtime_version: str = TRITON_RUNTIME_VERSION


@dataclass
class KServeExport:
    files: dict[str, Path] = field(default_factory=dict)  # FILES key -> written file
    notes: list[str] = field(default_factory=list)
    placeholder: bool = False  # storageUri / the PVC is a placeholder the user must set
    gpu: dict[str, bool] = field(default_factory=dict)  # "triton" / "serve" -> GPU limits given


# ------------------------------------------------------------------------------------------- reading the input
def _artifact_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and str(data.get("schema", "")).startswith("alexnet-deploy.artifact")
    return data if ok else None


def is_triton_repository(folder: Path) -> bool:
    return folder.is_dir() and any((d / "config.pbtxt").is_file() for d in folder.iterdir() if d.is_dir())


def _pbtxt_field(text: str, key: str) -> str | None:
    m = re.search(rf'^\s*{key}\s*:\s*"([^"]*)"', text, re.M)
    return m[1] if m else None


def read_triton_models(repo: Path) -> tuple[TritonModel, ...]:
    """Every model folder with a config.pbtxt. GPU: a ``tensorrt_plan`` (platform or backend "tensorrt") or an
    instance group of KIND_GPU (alexnet-export triton --kind gpu)."""
    models = []
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()):
        try:
            text = (d / "config.pbtxt").read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"cannot read {d / 'config.pbtxt'}: {getattr(exc, 'strerror', None) or exc}") from None
        platform = _pbtxt_field(text, "platform") or _pbtxt_field(text, "backend") or "?"
        plan = platform in ("tensorrt_plan", "tensorrt")
        m = re.search(r'key:\s*"alexnet_deploy\.trt_library"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
        models.append(TritonModel(_pbtxt_field(text, "name") or d.name, platform,
                                  plan or bool(re.search(r"\bKIND_GPU\b", text)), m[1] if m else None))
    return tuple(models)


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _onnx_name(model: Path) -> str:
    from alexnet_deploy.errors import MetadataError
    from alexnet_deploy.exporter.triton import onnx_model_name
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    try:
        return onnx_model_name(read_onnx_metadata(model).precision)
    except MetadataError:
        raise UserInputError(f"{model.name} has no alexnet-deploy metadata (its precision names the model); "
                             "export it with alexnet-export onnx, or give --name") from None


def _model_file(path: Path, rel: str, name: str | None) -> ServeModel:
    """A .onnx model or .plan engine; ``name`` None: the name alexnet-deploy's Triton repository gives it."""
    from alexnet_deploy.runtime.engines import ENGINE_SUFFIXES, ONNX_SUFFIXES

    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return ServeModel(rel, path.name, name or _onnx_name(path), "ort", False, path.stat().st_size)
    if suffix in ENGINE_SUFFIXES:
        from alexnet_deploy.exporter.triton import plan_model_name, read_plan

        engine = read_plan(path)  # the manifest beside it (one line when missing or broken)
        precision = str(engine.manifest.get("precision") or engine.meta.precision)
        return ServeModel(rel, path.name, name or plan_model_name(precision), "trt", True, path.stat().st_size)
    raise UserInputError(f"{path.name}: give an .onnx model, a .plan engine, a deployment folder or a Triton "
                         "repository")


def _artifact(folder: Path, rel: str, manifest: dict, name: str | None) -> ServeModel:
    model = manifest.get("model")
    if not isinstance(model, str) or not model or Path(model).is_absolute() or ".." in Path(model).parts \
            or not (folder / model).is_file():
        raise UserInputError(f"{folder / 'manifest.json'} names no model file inside the folder")
    m = _model_file(folder / model, rel, name)
    return ServeModel(rel, "", m.name, m.engine, m.plan, m.bytes)  # alexnet-serve DIR reads manifest.json


def _pick(kind: str, available: list[str], preferred: str, given: str | None, where: Path) -> str:
    if given is not None:
        if given not in available:
            raise UserInputError(f"--artifact {given!r}: {where} has no such {kind}; choose from "
                                 f"{', '.join(available) or '(none)'}")
        return given
    if preferred in available:
        return preferred
    if len(available) == 1:
        return available[0]
    raise UserInputError(f"{where} holds {len(available)} {kind}s for alexnet-serve ({', '.join(available)}); "
                         "choose one with --artifact")


def inspect_source(path: str | Path, *, artifact: str | None = None, name: str | None = None) -> KServeSource:
    """What ``path`` is and what each manifest runs from it. Refused in one line: a missing path, a folder that is
    neither a deployment folder, an artifact folder nor a Triton repository."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"not found: {path}")
    if path.is_file():
        if artifact is not None:
            raise UserInputError("--artifact chooses inside a deployment folder or a Triton repository, not a model file")
        serve = _model_file(path, "", name)
        return KServeSource("model", path, serve=serve, has_engines=serve.plan)
    manifest = _artifact_manifest(path)
    if manifest is not None and manifest.get("kind") == "triton":  # alexnet-deploy's triton/ artifact folder
        path = path / str(manifest.get("model") or "model_repository")
        manifest = None
        if not is_triton_repository(path):
            raise UserInputError(f"{path} (named by {path.parent / 'manifest.json'}) is not a Triton repository")
    if manifest is not None:  # one artifact folder (onnx-fp32/, trt-fp16/): alexnet-serve only
        if artifact is not None:
            raise UserInputError(f"{path} is one artifact folder; --artifact chooses inside a deployment folder")
        serve = _artifact(path, "", manifest, name)
        return KServeSource("artifact", path, serve=serve, has_engines=serve.plan)
    arts = {d.name: m for d in sorted(path.iterdir()) if d.is_dir() and (m := _artifact_manifest(d)) is not None}
    if arts:  # a deployment folder of alexnet-deploy
        repo = path / "triton" / "model_repository"
        has_repo = is_triton_repository(repo)
        models = read_triton_models(repo) if has_repo else ()
        runnable = [a for a, m in arts.items() if m.get("kind") != "triton"]
        pick = _pick("artifact", runnable, "onnx-fp32", artifact, path)
        serve = _artifact(path / pick, pick, arts[pick], name)
        engines = any(m.get("kind") == "trt" or a.startswith("trt-") for a, m in arts.items()) \
            or any(t.gpu for t in models)
        return KServeSource("deploy", path, repo if has_repo else None, "triton/model_repository" if has_repo else None,
                            models, _tree_bytes(repo) if has_repo else 0, serve, engines)
    if is_triton_repository(path):
        models = read_triton_models(path)
        onnx = [t.name for t in models if t.platform == "onnxruntime_onnx"]
        serve, problem = None, None
        if artifact is not None or onnx:
            pick = _pick("ONNX model", onnx, "alexnet-fp32", artifact, path)
            vdir = _latest_version(path / pick)
            if vdir is None or not (vdir / "model.onnx").is_file():
                raise UserInputError(f"{path / pick} has no version folder with model.onnx")
            serve = _model_file(vdir / "model.onnx", vdir.relative_to(path).as_posix(), name or pick)
        else:
            problem = (f"{path} holds no ONNX model for alexnet-serve (only {', '.join(t.name for t in models)}); "
                       "give --only triton")
        return KServeSource("repository", path, path, "", models, _tree_bytes(path), serve,
                            any(t.gpu for t in models), problem)
    raise UserInputError(f"{path} is neither a deployment folder of alexnet-deploy, an artifact folder "
                         "(manifest.json) nor a Triton repository (model folders with config.pbtxt)")


def _latest_version(model_dir: Path) -> Path | None:
    versions = [d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, key=lambda d: int(d.name)) if versions else None


# ------------------------------------------------------------------------------------------- names and values
def k8s_name(name: str) -> str:
    """A Kubernetes / KServe resource name (DNS-1035 label, at most 63) from a model name: lower case, every other
    character a '-'. One line when nothing usable is left."""
    out = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")
    if not out or not out[0].isalpha():
        out = f"alexnet-{out}".rstrip("-")
    out = out[:52].rstrip("-")  # room for "-triton" / "-grpc" and KServe's "-predictor" suffixes
    if not _DNS.fullmatch(out):
        raise UserInputError(f"--name {name!r} gives no valid Kubernetes name")
    return out


def check_namespace(namespace: str | None) -> str | None:
    if namespace is not None and (len(namespace) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace)):
        raise UserInputError(f"--namespace {namespace!r} is not a Kubernetes namespace (lower-case letters, digits "
                             "and '-', at most 63)")
    return namespace


def _check_uri(uri: str | None) -> str | None:
    if uri is None:
        return None
    uri = uri.strip().rstrip("/")
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", uri):
        raise UserInputError(f"--storage-uri {uri!r} is not a URI (e.g. s3://bucket/alexnet/deploy, gs://..., "
                             "pvc://CLAIM/PATH)")
    return uri


def _join(base: str, rel: str) -> str:
    return f"{base}/{rel}" if rel else base


def _memory(model_bytes: int, floor_gi: int) -> tuple[str, str]:
    """(request, limit) of memory: at least ``floor_gi`` GiB, else 1 GiB + 4x the model files (the runtime's copy,
    its arena and the batcher's buffers), rounded up to whole GiB; the request is half the limit."""
    limit = max(floor_gi, math.ceil((_GI + 4 * model_bytes) / _GI))
    return f"{max(1, limit // 2)}Gi", f"{limit}Gi"


def _resources(model_bytes: int, floor_gi: int, gpu: bool) -> dict:
    req, lim = _memory(model_bytes, floor_gi)
    res = {"requests": {"cpu": str(CPU_THREADS), "memory": req}, "limits": {"cpu": str(CPU_THREADS), "memory": lim}}
    if gpu:
        res["limits"]["nvidia.com/gpu"] = "1"
    return res


def default_image(gpu: bool) -> str:
    from alexnet_deploy import __version__

    return f"alexnet-deploy/serve:{__version__}-{'gpu' if gpu else 'cpu'}"


def _metadata(name: str, namespace: str | None, component: str) -> dict:
    md: dict = {"name": name}
    if namespace:
        md["namespace"] = namespace
    md["labels"] = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
                    "app.kubernetes.io/managed-by": "alexnet-export-kserve"}
    return md


# ------------------------------------------------------------------------------------------- builders
def serve_command(model_path: str, name: str, engine: str) -> list[str]:
    """The container's command: alexnet-serve's real options (alexnet_deploy/cli/serve.py)."""
    cmd = ["alexnet-serve", model_path, "--host", "0.0.0.0", "--port", str(SERVE_HTTP_PORT),
           "--grpc-port", str(SERVE_GRPC_PORT), "--name", name, "--engine", engine]
    if engine == "ort":
        cmd += ["--threads", str(CPU_THREADS)]
    return cmd


def _http_probe(path: str, **timing) -> dict:
    return {"httpGet": {"path": path, "port": SERVE_HTTP_PORT}, **timing}


def _serve_engine(serve: ServeModel, gpu: bool) -> str:
    return "trt" if serve.plan else ("ort-cuda" if gpu else "ort")


def triton_inferenceservice(name: str, storage_uri: str, *, gpu: bool, model_bytes: int, replicas: int = 1,
                            namespace: str | None = None, runtime_version: str = TRITON_RUNTIME_VERSION) -> dict:
    """InferenceService running a Triton repository (KServe's Triton runtime: tritonserver on /mnt/models)."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": _metadata(name, namespace, "triton"),
        "spec": {"predictor": {
            "minReplicas": replicas,
            "triton": {
                "storageUri": storage_uri, "protocolVersion": "v2", "runtimeVersion": runtime_version,
                # config.pbtxt is complete (alexnet-export triton): no auto-completion of what it declares
                "args": ["--strict-model-config=true"],
                "resources": _resources(model_bytes, 4, gpu),
            },
        }},
    }


def serve_inferenceservices(name: str, model_name: str, storage_uri: str, model_file: str, *, image: str,
                            engine: str, gpu: bool, model_bytes: int, replicas: int = 1,
                            namespace: str | None = None) -> list[dict]:
    """alexnet-serve as a KServe custom predictor, twice: ``name`` routes REST (h1, 8080) and ``name-grpc`` routes
    KServe v2 gRPC (h2c, 8081). Knative (KServe's serverless mode) routes one declared port per container, so one
    InferenceService cannot route both; the server in each listens on both. ``model_file``: relative to the folder
    STORAGE_URI points to ("" for an artifact folder)."""
    model_path = f"{KSERVE_MODEL_DIR}/{model_file}" if model_file else KSERVE_MODEL_DIR
    docs = []
    for suffix, port in (("", {"name": "h1", "containerPort": SERVE_HTTP_PORT, "protocol": "TCP"}),
                         ("-grpc", {"name": "h2c", "containerPort": SERVE_GRPC_PORT, "protocol": "TCP"})):
        container = {
            "name": "kserve-container", "image": image, "command": serve_command(model_path, model_name, engine),
            "env": [{"name": "STORAGE_URI", "value": storage_uri}],
            "ports": [port],
            "resources": _resources(model_bytes, 2, gpu),
            "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "allowPrivilegeEscalation": False},
        }
        if not suffix:  # Knative probes the declared port: HTTP health on 8080 (503 until the model is warm)
            container["readinessProbe"] = _http_probe("/v2/health/ready", periodSeconds=5, failureThreshold=3)
            container["livenessProbe"] = _http_probe("/v2/health/live", initialDelaySeconds=30, periodSeconds=10)
        # -grpc: Knative's default TCP check on 8081 means ready (alexnet-serve opens it once the model is warm)
        docs.append({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(name + suffix, namespace, "alexnet-serve"),
            "spec": {"predictor": {"minReplicas": replicas, "containers": [container]}},
        })
    return docs


def serve_deployment(name: str, model_name: str, model_path: str, *, image: str, engine: str, gpu: bool,
                     model_bytes: int, claim: str, sub_path: str | None, replicas: int = 1,
                     namespace: str | None = None) -> list[dict]:
    """A Deployment + ClusterIP Service running alexnet-serve (no KServe): non-root, read-only root filesystem,
    the model from a PersistentVolumeClaim at /models, startup/readiness/liveness probes on /v2/health/*."""
    labels = {"app.kubernetes.io/name": name}
    mount = {"name": "models", "mountPath": MODEL_DIR, "readOnly": True}
    if sub_path:
        mount["subPath"] = sub_path
    container = {
        "name": "alexnet-serve", "image": image, "command": serve_command(model_path, model_name, engine),
        "ports": [{"name": "http", "containerPort": SERVE_HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": SERVE_GRPC_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe("/v2/health/ready", periodSeconds=2, failureThreshold=60),
        "readinessProbe": _http_probe("/v2/health/ready", periodSeconds=5),
        "livenessProbe": _http_probe("/v2/health/live", periodSeconds=10),
        "resources": _resources(model_bytes, 2, gpu),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(name, namespace, "alexnet-serve"),
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 45,  # alexnet-serve drains queued requests on SIGTERM (30 s)
                    "containers": [container],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, namespace, "alexnet-serve"),
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "http", "port": SERVE_HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": SERVE_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                            "appProtocol": "grpc"}]},
    }
    return [deployment, service]


# ------------------------------------------------------------------------------------------- the export
def _yaml_text(docs: list[dict], header: list[str]) -> str:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError("yaml", "'alexnet-deploy[export]'  (or pip install pyyaml)",
                                     "alexnet-export kserve") from None
    class _Dumper(yaml.SafeDumper):  # no &id001 anchors for dicts two objects share (the selector labels)
        def ignore_aliases(self, data):
            return True

    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return "".join(f"# {line}\n".replace("# \n", "#\n") for line in header) + body


def _pvc(uri: str | None) -> tuple[str, str | None, bool]:
    """(claim, subPath, placeholder) for the plain Deployment from ``pvc://CLAIM/PATH``; other URIs: a claim the
    user creates (placeholder)."""
    if uri and uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://"):].partition("/")
        if re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", claim):
            return claim, sub.strip("/") or None, False
    return DEFAULT_PVC, None, True


def _check_out(out: Path, src: KServeSource) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder")
    if src.repository is not None:
        repo, o = src.repository.resolve(), out.resolve()
        if o == repo or repo in o.parents:
            raise UserInputError(f"--out {out} lies inside the Triton repository {src.repository} (tritonserver would "
                                 "take it for a model); choose another folder")


def export_kserve(model: str | Path, out: str | Path, opts: KServeOptions = KServeOptions()) -> KServeExport:
    """Write the manifests for ``model`` into ``out`` (see the module docstring). Everything is checked and built
    before the first file is written."""
    from alexnet_deploy import __version__

    if opts.only not in (None, *ONLY):
        raise UserInputError(f"--only must be one of {', '.join(ONLY)}")
    if opts.replicas < 1:
        raise UserInputError("--replicas must be at least 1")
    namespace = check_namespace(opts.namespace)
    uri = _check_uri(opts.storage_uri)
    if opts.name is not None:
        from alexnet_deploy.exporter.triton import check_model_name

        check_model_name(opts.name)
    try:
        src = inspect_source(model, artifact=opts.artifact, name=opts.name)
    except OSError as exc:  # an unreadable folder or file: one line naming it
        raise UserInputError(f"cannot read {exc.filename or model}: {exc.strerror or exc}") from None
    out = Path(out)
    _check_out(out, src)
    want_triton = opts.only in (None, "triton")
    want_serve = opts.only in (None, "serve")
    if want_triton and src.repository is None:
        if src.kind == "deploy":
            raise UserInputError(f"{src.path} is a deployment folder without a Triton repository "
                                 "(triton/model_repository: alexnet-deploy --targets ...,triton makes it); give "
                                 "--only serve for alexnet-serve's manifests alone")
        if opts.only == "triton":
            raise UserInputError(f"{src.path} is a model, not a Triton repository; export one with alexnet-export "
                                 "triton, or leave out --only")
        want_triton = False  # a model file or artifact folder: there is no repository, only alexnet-serve's files
    if want_serve and src.serve is None:
        raise UserInputError(src.serve_problem or f"{src.path} has nothing alexnet-serve runs")

    result = KServeExport()
    placeholder = uri is None
    base = uri or PLACEHOLDER
    if uri and src.kind == "deploy" and uri.endswith("/triton/model_repository"):
        base = uri[: -len("/triton/model_repository")]  # the repository's URI given: the deployment folder above it
    where = {"deploy": "the deployment folder", "repository": "the Triton repository", "artifact": "the artifact folder",
             "model": "the folder holding the model"}[src.kind]
    header_src = f"Written by alexnet-export kserve (alexnet-deploy {__version__}) from {src.path.name}, {_KIND[src.kind]}."
    uri_note = ([f"storageUri / STORAGE_URI are PLACEHOLDERS ({PLACEHOLDER}/...): set them to where {where} is",
                 "uploaded (alexnet-export kserve ... --storage-uri s3://BUCKET/PATH | gs://... | pvc://CLAIM/PATH)."]
                if placeholder else [f"{where[0].upper()}{where[1:]} is uploaded to {base}."])
    texts: dict[str, str] = {}
    if want_triton:
        gpu = _triton_gpu(src, opts.gpu, result.notes)
        tname = k8s_name(opts.name or "alexnet") + "-triton"  # the repository serves all its models
        doc = triton_inferenceservice(tname, _join(base, src.repository_rel or ""), gpu=gpu,
                                      model_bytes=src.repository_bytes, replicas=opts.replicas, namespace=namespace,
                                      runtime_version=opts.runtime_version)
        result.gpu["triton"] = gpu
        models = ", ".join(t.name for t in src.triton_models)
        texts["triton"] = _yaml_text([doc], [
            header_src, f"Triton Inference Server {opts.runtime_version} serving the repository's models: {models}.",
            *uri_note, "kubectl apply -f inferenceservice-triton.yaml"])
        for lib in sorted({t.trt_library for t in src.triton_models if t.trt_library}):
            if lib.startswith("tensorrt_rtx"):
                result.notes.append(f"the repository's engines were built with {lib}; Triton's TensorRT backend loads "
                                    "engines of its own TensorRT (libnvinfer) version: rebuild them with that tensorrt")
            else:
                result.notes.append(f"the repository's engines were built with {lib}: runtimeVersion "
                                    f"{opts.runtime_version} must ship that TensorRT (NVIDIA's Triton support matrix; "
                                    "--runtime-version)")
    if want_serve:
        serve = src.serve
        gpu = _serve_gpu(src, opts.gpu)
        if serve.plan and opts.image is None:
            raise UserInputError(f"{serve.name} is a TensorRT engine: alexnet-serve runs it with --engine trt in an "
                                 "image with that TensorRT and a GPU (deploy/docker/Dockerfile.gpu runs ONNX models "
                                 "only); give --image, or serve the ONNX artifact")
        image = opts.image or default_image(gpu)
        engine = _serve_engine(serve, gpu)
        name = k8s_name(serve.name)
        isvcs = serve_inferenceservices(name, serve.name, _join(base, serve.rel), serve.file, image=image,
                                        engine=engine, gpu=gpu, model_bytes=serve.bytes, replicas=opts.replicas,
                                        namespace=namespace)
        claim, sub, pvc_placeholder = _pvc(uri)
        model_path = "/".join(p for p in (MODEL_DIR, serve.rel, serve.file) if p)
        dep = serve_deployment(name, serve.name, model_path, image=image, engine=engine, gpu=gpu,
                               model_bytes=serve.bytes, claim=claim, sub_path=sub, replicas=opts.replicas,
                               namespace=namespace)
        result.gpu["serve"] = gpu
        what = f"alexnet-serve ({image}, --engine {engine}) serving {serve.name}"
        texts["serve"] = _yaml_text(isvcs, [
            header_src, f"{what} as a KServe custom predictor: {name} routes v2 REST (h1 :{SERVE_HTTP_PORT}),",
            f"{name}-grpc KServe v2 gRPC (h2c :{SERVE_GRPC_PORT}); Knative routes one port per container.",
            *uri_note, "kubectl apply -f inferenceservice-alexnet-serve.yaml"])
        pvc_line = (f"The model comes from PersistentVolumeClaim {claim!r} (create it holding {where}; or give "
                    "--storage-uri pvc://CLAIM/PATH)." if pvc_placeholder
                    else f"The model comes from PersistentVolumeClaim {claim!r}" + (f", path {sub}." if sub else "."))
        texts["deployment"] = _yaml_text(dep, [
            header_src, f"{what} on plain Kubernetes (no KServe): Deployment + ClusterIP Service,",
            f"http :{SERVE_HTTP_PORT} and grpc :{SERVE_GRPC_PORT}. {pvc_line}", "kubectl apply -f deployment.yaml"])
    result.placeholder = placeholder
    for key in texts:  # a file of the user's with one of our names is never replaced; ours (the header) is redone
        path = out / FILES[key]
        if path.exists() and not _ours(path):
            raise UserInputError(f"{path} exists and was not written by alexnet-export kserve; move it or choose "
                                 "another --out")
    _write_all(out, texts, result)
    return result


def _triton_gpu(src: KServeSource, gpu: bool | None, notes: list[str]) -> bool:
    needs = [t.name for t in src.triton_models if t.gpu]
    if gpu is False and needs:
        raise UserInputError(f"--cpu: the repository's {', '.join(needs)} run on a GPU only (tensorrt_plan or "
                             "KIND_GPU); re-export ONNX models with alexnet-export triton --kind cpu, or leave out --cpu")
    if gpu and not needs:
        notes.append("--gpu: the repository's models are KIND_CPU, so Triton runs them on the CPU even with a GPU "
                     "(re-export with alexnet-export triton --kind gpu)")
    return bool(needs) if gpu is None else gpu


def _serve_gpu(src: KServeSource, gpu: bool | None) -> bool:
    if src.serve is not None and src.serve.plan:
        if gpu is False:
            raise UserInputError(f"--cpu: {src.serve.name} is a TensorRT engine, which runs on a GPU only")
        return True
    return src.has_engines if gpu is None else gpu


def _ours(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).startswith(b"# Written by alexnet-export kserve")
    except OSError:
        return False


def _write_all(out: Path, texts: dict[str, str], result: KServeExport) -> None:
    """Each file atomically; if one fails, the files this call created are removed again (none is left from a
    half-done export), and the ones it replaced keep their new, complete content."""
    from alexnet_deploy.fileio import atomic_write_bytes

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create --out {out}: {exc.strerror}") from None
    created: list[Path] = []
    try:
        for key, text in texts.items():
            path = out / FILES[key]
            existed = path.exists()
            atomic_write_bytes(path, text.encode())
            if not existed:
                created.append(path)
            result.files[key] = path
    except BaseException:
        for p in created:
            p.unlink(missing_ok=True)
        if made:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
