"""KServe and Kubernetes manifests for what alexnet-deploy built (issue 21 §4): an InferenceService running the
Triton repository (``predictor.triton``), alexnet-serve itself as a KServe custom predictor, and a plain Deployment +
Service for clusters without KServe.

The builders are plain functions returning dicts (one Kubernetes object each); :func:`export_kserve` reads the input
(a deployment folder, a Triton repository, an artifact folder or a model file; exporter/kserve_source.py), builds
every document first and only then writes the YAML files, each atomically, so a refused input leaves nothing behind.

Storage: ``storage_uri`` is where the input *folder* is uploaded (the deployment folder, the Triton repository, or
the folder holding the model file), so one URI places both the Triton repository and the artifact alexnet-serve
runs: for a deployment folder ``U/triton/model_repository`` and ``U/onnx-fp32``. KServe's storage initializer
downloads a predictor's URI into /mnt/models; the plain Deployment mounts a PersistentVolumeClaim holding the same
tree at /models (``pvc://CLAIM/PATH`` names it)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_deploy.errors import MissingDependencyError, UserInputError
from alexnet_deploy.exporter.kserve_source import KServeSource, ServeModel, inspect_source

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
