"""alexnet-export kserve (issue 21 §4): the InferenceServices validate against KServe's own CRD schema (tests/data)
and the Deployment/Service against Kubernetes' JSON schemas (kubernetes-validate, strict: unknown fields refused);
the container commands parse with alexnet-serve's own CLI; bad input is one line and exit 2 with nothing written.
The deploy/k8s example manifests are held to the same validators."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from alexnet_deploy.cli.export import export_group
from helpers import kserve_schema, one_line, serve_params, serve_routes, unknown_fields

ROOT = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml", reason="alexnet-export kserve writes YAML with PyYAML ([export] extra)")
jsonschema = pytest.importorskip("jsonschema", reason="validates against KServe's CRD schema ([dev] extra)")
K8S_VERSIONS = ("1.28", "1.31")  # oldest and a current Kubernetes the manifests must pass (strict schemas)


# ------------------------------------------------------------------------------------------- validators
@pytest.fixture(scope="module")
def kserve_validator():
    schema = kserve_schema()
    return jsonschema.Draft7Validator(schema), schema


def _check_kserve(doc, kserve_validator):
    validator, schema = kserve_validator
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    validator.validate(doc)
    assert unknown_fields(doc, schema) == [], doc["metadata"]["name"]


def _check_k8s(doc):
    kv = pytest.importorskip("kubernetes_validate", reason="Kubernetes' JSON schemas ([dev] extra)")
    for version in K8S_VERSIONS:
        kv.validate(doc, version, strict=True)  # raises kubernetes_validate.ValidationError


def _serve_params(command: list[str]) -> dict:
    assert command[0] == "alexnet-serve"
    return serve_params(command[1:])


def _load(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


# ------------------------------------------------------------------------------------------- inputs
def _artifact(folder: Path, kind: str, model: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"schema": "alexnet-deploy.artifact/1", "kind": kind,
                                                      "model": model}))


@pytest.fixture
def deploy_dir(small_onnx, tmp_path) -> Path:
    """A deployment folder as alexnet-deploy lays it out: onnx-fp32/ (model + manifest) and triton/ holding a
    repository made by the real alexnet-export triton."""
    from alexnet_deploy.exporter.triton import export_triton, onnx_model_name
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    dep = tmp_path / "dep"
    _artifact(dep / "onnx-fp32", "onnx", "model.onnx")
    shutil.copy(small_onnx, dep / "onnx-fp32" / "model.onnx")
    name = onnx_model_name(read_onnx_metadata(small_onnx).precision)
    export_triton(small_onnx, dep / "triton" / "model_repository", name=name, kind="cpu")
    _artifact(dep / "triton", "triton", "model_repository")
    (dep / "report.json").write_text("{}")
    return dep


def _add_plan_model(repo: Path) -> None:
    """A tensorrt_plan model in the repository (its config only: the export reads config.pbtxt)."""
    d = repo / "alexnet-trt-fp32"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.plan").write_bytes(b"\0" * 16)
    (d / "config.pbtxt").write_text('name: "alexnet-trt-fp32"\nplatform: "tensorrt_plan"\nmax_batch_size: 4\n'
                                    'instance_group [ { count: 1 kind: KIND_GPU } ]\nparameters {\n'
                                    '  key: "alexnet_deploy.trt_library"\n  value: { string_value: "tensorrt_rtx 1.2" }\n}\n')


# ------------------------------------------------------------------------------------------- tests
def test_deploy_folder_gives_three_valid_files(deploy_dir, tmp_path, cli, kserve_validator, small_onnx):
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    out = tmp_path / "k8s"
    code, stdout, stderr = cli(export_group, "kserve", deploy_dir, "--out", out, "--storage-uri", "s3://b/alexnet/dep/",
                               "--namespace", "ml", "--replicas", "2")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "inferenceservice-alexnet-serve.yaml",
                                                     "inferenceservice-triton.yaml"]
    assert "placeholder" not in stdout and stdout.count("wrote ") == 3
    name = f"alexnet-{read_onnx_metadata(small_onnx).precision}"  # what alexnet-serve --name auto announces
    routes = serve_routes()

    (triton,) = _load(out / "inferenceservice-triton.yaml")
    _check_kserve(triton, kserve_validator)
    t = triton["spec"]["predictor"]["triton"]
    assert t["storageUri"] == "s3://b/alexnet/dep/triton/model_repository" and t["protocolVersion"] == "v2"
    assert "nvidia.com/gpu" not in t["resources"]["limits"]  # KIND_CPU models only
    assert triton["metadata"]["namespace"] == "ml" and triton["spec"]["predictor"]["minReplicas"] == 2

    rest, grpc = _load(out / "inferenceservice-alexnet-serve.yaml")
    for doc in (rest, grpc):
        _check_kserve(doc, kserve_validator)
        (c,) = doc["spec"]["predictor"]["containers"]
        assert c["name"] == "kserve-container" and c["image"].endswith("-cpu")
        assert c["env"] == [{"name": "STORAGE_URI", "value": "s3://b/alexnet/dep/onnx-fp32"}]
        p = _serve_params(c["command"])
        assert (p["model"], p["host"], p["port"], p["grpc_port"], p["name"], p["engine"]) == \
               ("/mnt/models", "0.0.0.0", 8080, 8081, name, "ort")
        assert p["threads"] == int(c["resources"]["limits"]["cpu"])
    assert [c["ports"] for c in (rest["spec"]["predictor"]["containers"][0], grpc["spec"]["predictor"]["containers"][0])] \
        == [[{"name": "h1", "containerPort": 8080, "protocol": "TCP"}], [{"name": "h2c", "containerPort": 8081, "protocol": "TCP"}]]
    rc = rest["spec"]["predictor"]["containers"][0]
    assert rc["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert rc["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert {"/v2/health/ready", "/v2/health/live"} <= routes
    assert grpc["metadata"]["name"] == rest["metadata"]["name"] + "-grpc"

    deployment, service = _load(out / "deployment.yaml")
    for doc in (deployment, service):
        _check_k8s(doc)
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    p = _serve_params(c["command"])
    assert (p["model"], p["port"], p["grpc_port"], p["name"]) == ("/models/onnx-fp32", 8080, 8081, name)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes and c[probe]["httpGet"]["port"] == p["port"]
    assert deployment["spec"]["replicas"] == 2
    assert service["spec"]["selector"].items() <= pod.get("labels", deployment["spec"]["template"]["metadata"]["labels"]).items()
    named = {q["name"]: q["containerPort"] for q in c["ports"]}
    assert {named[sp["targetPort"]] for sp in service["spec"]["ports"]} == {8080, 8081}


def test_placeholder_storage_and_gpu_from_engines(deploy_dir, tmp_path, cli, kserve_validator):
    _add_plan_model(deploy_dir / "triton" / "model_repository")
    _artifact(deploy_dir / "trt-fp32", "trt", "model.plan")
    out = tmp_path / "k8s"
    code, stdout, stderr = cli(export_group, "kserve", deploy_dir, "--out", out)
    assert code == 0, stderr
    assert sum(ln.startswith("storageUri is a placeholder") for ln in stdout.splitlines()) == 1  # says: set it
    assert "tensorrt_rtx" in stdout  # Triton's TensorRT backend does not load TensorRT-RTX engines: said
    (triton,) = _load(out / "inferenceservice-triton.yaml")
    _check_kserve(triton, kserve_validator)
    t = triton["spec"]["predictor"]["triton"]
    assert t["storageUri"].startswith("unset://") and t["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "PLACEHOLDER" in (out / "inferenceservice-triton.yaml").read_text()
    for doc in _load(out / "inferenceservice-alexnet-serve.yaml"):
        _check_kserve(doc, kserve_validator)
        (c,) = doc["spec"]["predictor"]["containers"]
        assert c["image"].endswith("-gpu") and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert _serve_params(c["command"])["engine"] == "ort-cuda"  # the GPU image runs ONNX on CUDA
    deployment, service = _load(out / "deployment.yaml")
    _check_k8s(deployment)
    _check_k8s(service)

    # --cpu with a tensorrt_plan model in the repository: one line, nothing written
    out2 = tmp_path / "k8s2"
    code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out2, "--cpu")
    assert code == 2 and one_line(stderr) and "GPU" in stderr and not out2.exists()
    # --only serve --cpu is fine: alexnet-serve runs the ONNX artifact on the CPU image
    code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out2, "--cpu", "--only", "serve")
    assert code == 0, stderr
    assert sorted(p.name for p in out2.iterdir()) == ["deployment.yaml", "inferenceservice-alexnet-serve.yaml"]


def test_triton_repository_and_model_file_inputs(deploy_dir, small_onnx, tmp_path, cli, kserve_validator):
    repo = deploy_dir / "triton" / "model_repository"
    out = tmp_path / "from-repo"
    code, _, stderr = cli(export_group, "kserve", repo, "--out", out, "--storage-uri", "pvc://models/repo",
                          "--image", "registry.example/alexnet-serve:1")
    assert code == 0, stderr
    (triton,) = _load(out / "inferenceservice-triton.yaml")
    assert triton["spec"]["predictor"]["triton"]["storageUri"] == "pvc://models/repo"
    rest, _ = _load(out / "inferenceservice-alexnet-serve.yaml")
    (c,) = rest["spec"]["predictor"]["containers"]
    assert c["env"][0]["value"] == "pvc://models/repo/alexnet-fp32/1" and c["image"] == "registry.example/alexnet-serve:1"
    assert _serve_params(c["command"])["model"] == "/mnt/models/model.onnx"
    deployment, _ = _load(out / "deployment.yaml")
    _check_k8s(deployment)
    vol = deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    (mount,) = [m for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert vol["claimName"] == "models" and mount["subPath"] == "repo"
    assert _serve_params(deployment["spec"]["template"]["spec"]["containers"][0]["command"])["model"] == \
        "/models/alexnet-fp32/1/model.onnx"

    # a plain .onnx: no Triton repository, so only alexnet-serve's files; --name carries through
    out = tmp_path / "from-model"
    code, _, stderr = cli(export_group, "kserve", small_onnx, "--out", out, "--name", "Digits_v2")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "inferenceservice-alexnet-serve.yaml"]
    rest, grpc = _load(out / "inferenceservice-alexnet-serve.yaml")
    for doc in (rest, grpc):
        _check_kserve(doc, kserve_validator)
    assert rest["metadata"]["name"] == "digits-v2"  # a Kubernetes name derived from the model name
    params = _serve_params(rest["spec"]["predictor"]["containers"][0]["command"])
    assert params["name"] == "Digits_v2" and params["model"] == f"/mnt/models/{small_onnx.name}"
    code, _, stderr = cli(export_group, "kserve", small_onnx, "--out", tmp_path / "t", "--only", "triton")
    assert code == 2 and one_line(stderr) and not (tmp_path / "t").exists()


def test_bad_input_is_one_line_and_writes_nothing(deploy_dir, tmp_path, cli):
    shutil.rmtree(deploy_dir / "triton")
    out = tmp_path / "k8s"
    code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out)
    assert code == 2 and one_line(stderr) and "Triton repository" in stderr and "--only serve" in stderr
    assert not out.exists()
    code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out, "--only", "serve")  # allowed alone
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "inferenceservice-alexnet-serve.yaml"]

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        [tmp_path / "missing", "--out", tmp_path / "o1"],
        [plain, "--out", tmp_path / "o2"],  # neither a deployment folder nor a Triton repository
        [deploy_dir, "--out", a_file, "--only", "serve"],  # --out is an existing file
        [deploy_dir, "--out", tmp_path / "o3", "--only", "serve", "--artifact", "onnx-int8"],  # no such artifact
        [deploy_dir, "--out", tmp_path / "o4", "--only", "serve", "--namespace", "Not_A_Namespace"],
        [deploy_dir, "--out", tmp_path / "o5", "--only", "serve", "--storage-uri", "not a uri"],
    ]
    for args in cases:
        code, _, stderr = cli(export_group, "kserve", *args)
        assert code == 2 and one_line(stderr), (args, stderr)
    assert a_file.read_text() == "x" and not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_out_inside_the_repository_is_refused(deploy_dir, cli):
    repo = deploy_dir / "triton" / "model_repository"
    code, _, stderr = cli(export_group, "kserve", repo, "--out", repo / "k8s")
    assert code == 2 and one_line(stderr) and not (repo / "k8s").exists()


def test_example_manifests_pass_the_same_validators(kserve_validator):
    """deploy/k8s: the InferenceServices against KServe's schema, the Deployment/Service against Kubernetes'."""
    kinds = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in _load(path):
            kinds.append(doc["kind"])
            if doc["kind"] == "InferenceService":
                _check_kserve(doc, kserve_validator)
            else:
                _check_k8s(doc)
    assert sorted(kinds) == ["Deployment", "InferenceService", "InferenceService", "InferenceService", "Service"]


def test_the_kubernetes_validator_catches_mistakes(deploy_dir, tmp_path, cli):
    kv = pytest.importorskip("kubernetes_validate", reason="Kubernetes' JSON schemas ([dev] extra)")
    out = tmp_path / "k8s"
    assert cli(export_group, "kserve", deploy_dir, "--out", out, "--only", "serve")[0] == 0
    deployment, _ = _load(out / "deployment.yaml")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt: strict refuses it
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.31", strict=True)
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.31", strict=True)


def test_a_users_file_is_never_replaced_ours_is_redone(deploy_dir, tmp_path, cli):
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "deployment.yaml").write_text("# my own\nkind: Deployment\n")
    code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out, "--only", "serve")
    assert code == 2 and one_line(stderr) and "deployment.yaml" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml"]
    assert (out / "deployment.yaml").read_text() == "# my own\nkind: Deployment\n"
    (out / "deployment.yaml").unlink()
    for replicas in ("1", "3"):  # a second run rewrites its own files
        code, _, stderr = cli(export_group, "kserve", deploy_dir, "--out", out, "--only", "serve", "--replicas", replicas)
        assert code == 0, stderr
    assert _load(out / "deployment.yaml")[0]["spec"]["replicas"] == 3


@pytest.mark.slow
def test_the_generated_command_serves(deploy_dir, tmp_path, cli):
    """The Deployment's command, run as written (only the model mount, the bind address and the ports moved to this
    host): the real alexnet-serve answers ready and serves the model under the name the manifest gives it."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    out = tmp_path / "k8s"
    assert cli(export_group, "kserve", deploy_dir, "--out", out, "--only", "serve")[0] == 0
    (c,) = _load(out / "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"]
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    swap = {"0.0.0.0": "127.0.0.1", "8080": str(ports[0]), "8081": str(ports[1])}
    argv = [swap.get(a, a.replace("/models", str(deploy_dir), 1) if a.startswith("/models") else a)
            for a in c["command"][1:]]
    proc = subprocess.Popen([sys.executable, "-c", "from alexnet_deploy.cli import serve_main; serve_main()", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{ports[0]}"
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.25)
        name = _serve_params(c["command"])["name"]
        meta = json.loads(urllib.request.urlopen(f"{base}/v2/models/{name}", timeout=5).read())
        assert meta["name"] == name
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_the_triton_artifact_folder_and_an_artifact_folder(deploy_dir, tmp_path, cli):
    out = tmp_path / "a"
    code, _, stderr = cli(export_group, "kserve", deploy_dir / "triton", "--out", out, "--storage-uri", "gs://b/repo")
    assert code == 0, stderr  # alexnet-deploy's triton/ folder: its manifest names the repository
    assert _load(out / "inferenceservice-triton.yaml")[0]["spec"]["predictor"]["triton"]["storageUri"] == "gs://b/repo"
    out = tmp_path / "b"
    code, _, stderr = cli(export_group, "kserve", deploy_dir / "onnx-fp32", "--out", out)
    assert code == 0, stderr  # one artifact folder: alexnet-serve's files only, the folder itself at /mnt/models
    assert sorted(p.name for p in out.iterdir()) == ["deployment.yaml", "inferenceservice-alexnet-serve.yaml"]
    rest, _ = _load(out / "inferenceservice-alexnet-serve.yaml")
    assert _serve_params(rest["spec"]["predictor"]["containers"][0]["command"])["model"] == "/mnt/models"
    shutil.rmtree(deploy_dir / "triton" / "model_repository")
    code, _, stderr = cli(export_group, "kserve", deploy_dir / "triton", "--out", tmp_path / "c")
    assert code == 2 and one_line(stderr) and not (tmp_path / "c").exists()
