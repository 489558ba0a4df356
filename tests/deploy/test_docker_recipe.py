"""deploy/docker/Dockerfile.cpu's own commands, run without Docker (no daemon here), as the image runs them.

The build stage's COPY lines make the build context and its `pip wheel` builds the wheels from it (so a file the
package needs but the Dockerfile does not copy fails here); the final stage's RUN makes the venv, installs only
from those wheels (`--no-index`) and runs the image's own import check; then the ENTRYPOINT and CMD start
alexnet-serve the way `docker run -v ...:/models:ro` does: as the unprivileged USER 10001 (when this test runs as
root), HOME=/nonexistent, the working directory and model folder read-only and owned by someone else. The
HEALTHCHECK's own command must pass, an unmodified tritonclient must get the model's logits over HTTP and gRPC under
the name the Triton repository uses, and SIGTERM (`docker stop`) must end it promptly.

What differs from a real build: this machine's Python 3 instead of the image's 3.12, and its packages come
from this machine's package index. `useradd` and `install -d` (system changes) are not run; the user is emulated.
Skipped with the reason when no package index answers.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile.cpu"
dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="parses the Dockerfile ([dev] extra)")
UID = 10001
SYSTEM_STEPS = ("useradd ", "install -d ")  # change the system (a user, /models): emulated, not run


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))
    stages: list[list[tuple[str, str]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append((item["instruction"], item["value"]))
    return stages


def _steps(run: str) -> list[str]:
    """A RUN value's commands: its --mount flags dropped, split at `&&`."""
    run = re.sub(r"^(--\S+\s+)+", "", run.strip())
    return [s.strip() for s in re.split(r"\s&&\s", run) if s.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sh(cmd: str, env: dict, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def box():
    """A folder that an unprivileged user can traverse (pytest's tmp_path is 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="alexnet-docker-recipe-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _artifact(folder: Path, onnx: Path) -> None:
    """An artifact folder as alexnet-deploy writes it (deploy/steps.py's own manifest and labels writer)."""
    from alexnet_deploy.deploy.steps import _sidecars
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    folder.mkdir()
    shutil.copy(onnx, folder / "model.onnx")
    _sidecars(folder, "onnx", "model.onnx", read_onnx_metadata(folder / "model.onnx"))
    for p in folder.iterdir():
        p.chmod(0o444)
    folder.chmod(0o555)


def _runs_as_user(python: str) -> bool:
    """Whether USER 10001 can start this interpreter (a pyenv under root's 0700 home cannot be)."""
    try:
        return subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True, timeout=60, cwd="/",
                              user=UID, group=UID, extra_groups=[]).returncode == 0
    except OSError:
        return False


def _base_python() -> tuple[str, dict]:
    """The interpreter that plays the base image's `python`, and how to run as the image's USER.

    As root: this interpreter if the unprivileged user can run it, else the system's python3 of the same minor
    version; when neither can, the server runs as root and the test says nothing about the user (rare: a root CI
    whose only Python lives in root's home)."""
    here = os.path.realpath(sys.executable)
    if os.geteuid() != 0:
        return here, {}
    as_user = {"user": UID, "group": UID, "extra_groups": []}
    for cand in (here, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if not cand:
            continue
        minor = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True).stdout.strip()
        if minor == str(tuple(sys.version_info[:2])) and _runs_as_user(cand):
            return os.path.realpath(cand), as_user
    return here, {}


@pytest.mark.slow
def test_the_cpu_image_recipe_builds_and_serves_as_its_user(box, small_onnx):
    build, final = _stages(DOCKERFILE)[0], _stages(DOCKERFILE)[-1]
    env = {"PATH": f"{box / 'venv' / 'bin'}:{box / 'shim'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for k in os.environ:  # this machine's package index and its settings, as a build host would have its own
        if k.startswith("PIP_") or k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            env[k] = os.environ[k]
    for k, v in (kv for ins, val in build + final if ins == "ENV" for kv in re.findall(r"(\w+)=(\S+)", val)):
        if k != "PATH":
            env[k] = v
    python, as_user = _base_python()
    (box / "shim").mkdir()  # the base image's `python` and `pip`, one interpreter for both stages
    (box / "shim" / "python").symlink_to(python)
    (box / "shim" / "pip").write_text(f'#!/bin/sh\nexec "{python}" -m pip "$@"\n')
    (box / "shim" / "pip").chmod(0o755)

    def local(cmd: str) -> str:  # the image's paths, here
        return cmd.replace("/opt/venv", str(box / "venv")).replace("/wheels", str(box / "wheels"))

    # ---- the build stage: its COPY lines are the context, its RUN builds the wheels ----
    src = box / "src"
    src.mkdir()
    for ins, val in build:
        if ins == "COPY":
            *sources, dest = val.split()
            for s in sources:
                target = src / dest / Path(s).name if dest.endswith("/") else src / dest
                (shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__")) if (ROOT / s).is_dir()
                 else shutil.copy(ROOT / s, target))
    runs = [v for ins, v in build if ins == "RUN"]
    assert runs, "the build stage builds nothing"
    for cmd in (step for run in runs for step in _steps(run)):
        r = _sh(local(cmd), env, src)
        if r.returncode != 0:
            tail = " ".join(r.stderr.strip().splitlines()[-3:])
            if re.search(r"No matching distribution|Could not find a version|connection|Network is unreachable",
                         tail, re.I):
                pytest.skip(f"no package index answers for the image's wheels: {tail[-300:]}")
            pytest.fail(f"build stage: {cmd!r} failed: {tail[-1500:]}")
    wheels = sorted(p.name for p in (box / "wheels").glob("*.whl"))
    assert any(w.startswith("alexnet_deploy-") for w in wheels), wheels
    assert not any(re.match(r"(torch|torchvision|onnxsim|scikit_learn)-", w) for w in wheels), wheels

    # ---- the final stage's RUN: venv, install from the wheels only, the image's import check ----
    for cmd in (step for ins, v in final if ins == "RUN" for step in _steps(v)):
        if cmd.startswith(SYSTEM_STEPS):
            continue
        r = _sh(local(cmd), env, box)
        assert r.returncode == 0, f"final stage: {cmd!r} failed: {r.stderr[-1500:]}"
    installed = subprocess.run([str(box / "venv" / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"alexnet-deploy", "onnxruntime", "grpcio", "uvicorn", "fastapi"} <= names, names
    assert not names & {"torch", "torchvision", "onnx", "onnxsim", "pytest"}, names & {"torch", "onnx", "pytest"}

    # ---- docker run -v artifact:/models:ro: ENTRYPOINT + CMD as USER, in WORKDIR, HOME=/nonexistent ----
    models = box / "models"
    _artifact(models, small_onnx)
    entry = json.loads(next(v for ins, v in final if ins == "ENTRYPOINT"))
    cmd_args = json.loads(next(v for ins, v in final if ins == "CMD"))
    user = next(v for ins, v in final if ins == "USER")
    assert user == f"{UID}:{UID}" and next(v for ins, v in final if ins == "WORKDIR") == "/models"
    port, grpc_port = _free_port(), _free_port()
    argv = [a.replace("/models", str(models)) for a in entry + cmd_args]
    argv = [str(box / "venv" / "bin" / argv[0]), *argv[1:], "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(grpc_port)]  # later options win (click): loopback and free ports for the test
    run_env = {"PATH": env["PATH"], "HOME": "/nonexistent", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    log = box / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=models, env=run_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **as_user)
    try:
        health = next(v for ins, v in final if ins == "HEALTHCHECK")
        probe = json.loads(health.split("CMD", 1)[1])
        probe = [str(box / "venv" / "bin" / probe[0]), *(a.replace(":8080/", f":{port}/") for a in probe[1:])]
        deadline = time.monotonic() + 90
        while True:
            r = subprocess.run(probe, env=run_env, cwd=models, capture_output=True, text=True, timeout=10, **as_user)
            if r.returncode == 0:
                break
            assert proc.poll() is None, f"alexnet-serve exited {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"HEALTHCHECK never passed: {r.stderr[-500:]} {log.read_text()[-1500:]}"
            time.sleep(0.5)

        if as_user:  # the server really runs as the image's USER
            uids = next(l for l in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if l.startswith("Uid:"))
            assert uids.split()[1:] == [str(UID)] * 4, uids

        import onnxruntime as ort
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
        sess = ort.InferenceSession(str(small_onnx), providers=["CPUExecutionProvider"])
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        name = "alexnet-fp32"  # the Triton repository's name for an FP32 ONNX artifact (--name auto)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        meta = http.get_model_metadata(name)
        inp = httpclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        got_http = http.infer(name, [inp]).as_numpy(meta["outputs"][0]["name"])
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert g.is_server_ready() and g.is_model_ready(name)
        ginp = grpcclient.InferInput(meta["inputs"][0]["name"], list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        got_grpc = g.infer(name, [ginp]).as_numpy(meta["outputs"][0]["name"])
        g.close()
        np.testing.assert_allclose(got_http, want, rtol=0, atol=1e-4)
        assert np.array_equal(got_grpc, got_http)

        proc.send_signal(signal.SIGTERM)  # docker stop
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert rc in (0, 143, -signal.SIGTERM), f"exit {rc} after SIGTERM: {text[-1500:]}"
    assert "Traceback" not in text and "Permission denied" not in text, text[-2000:]
    assert f"as {name!r}" in text, text[:500]
    assert sorted(p.name for p in models.iterdir()) == ["labels.txt", "manifest.json", "model.onnx"]
