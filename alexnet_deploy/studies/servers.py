"""The two servers of the alexnet-serve vs Triton comparisons, as subprocesses: ``alexnet-serve`` (this venv) and
PyTriton's ``tritonserver`` (its own venv, studies/pytriton_server.py) with an onnxruntime session on the same ONNX.

Shared by studies/serve_vs_triton.py (throughput, issue 21 §5) and tests/server/test_one_client_two_servers.py
(one client against both, issue 21 §2). PyTriton's interpreter: ``ALEXNET_DEPLOY_PYTRITON_PYTHON`` (or the older
``ALEXNET_PYTRITON_PYTHON``), default /work/.venv-pytriton/bin/python; the venv must be made with Debian's
``/usr/bin/python3`` (a pyenv interpreter breaks Triton's Python-backend stub)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PYTRITON_PYTHON = Path(os.environ.get("ALEXNET_DEPLOY_PYTRITON_PYTHON")
                       or os.environ.get("ALEXNET_PYTRITON_PYTHON") or "/work/.venv-pytriton/bin/python")
PYTRITON_SCRIPT = Path(__file__).with_name("pytriton_server.py")
PYTRITON_VENV_HINT = ("/usr/bin/python3 -m venv /work/.venv-pytriton && "
                      "/work/.venv-pytriton/bin/pip install nvidia-pytriton onnxruntime numpy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int, model: str | None = None) -> bool:
    path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"  # Triton is ready before a model is bound
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """A server subprocess with its HTTP and gRPC ports; stopped with SIGTERM (then killed). A context manager."""

    def __init__(self, label: str, argv: list[str], http_port: int, grpc_port: int, log: Path, timeout_s: float = 180,
                 model: str | None = None, env: dict | None = None):
        self.label, self.http_port, self.grpc_port, self.log = label, http_port, grpc_port, log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + timeout_s
        while not _ready(http_port, model):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{label} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class TritonModel:
    """The interface Triton serves a model with: what PyTriton's ``bind`` is given."""

    name: str
    input_name: str | None = None
    input_dtype: str | None = None  # TYPE_FP32 | TYPE_UINT8
    input_dims: tuple[int, ...] | None = None
    output_name: str | None = None
    output_dims: tuple[int, ...] | None = None
    max_batch: int = 32
    queue_delay_us: int = 2000

    @classmethod
    def from_config_pbtxt(cls, path: str | Path) -> "TritonModel":
        """Parse a Triton config.pbtxt with Triton's own message (tritonclient's model_config_pb2)."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        cfg = text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
        if len(cfg.input) != 1 or len(cfg.output) != 1:
            raise ValueError(f"{path}: one input and one output expected, got {len(cfg.input)} and {len(cfg.output)}")
        i, o = cfg.input[0], cfg.output[0]
        delay = cfg.dynamic_batching.max_queue_delay_microseconds if cfg.HasField("dynamic_batching") else 0
        return cls(cfg.name, i.name, model_config_pb2.DataType.Name(i.data_type), tuple(i.dims), o.name,
                   tuple(o.dims), cfg.max_batch_size, delay)

    def argv(self) -> list[str]:
        out = ["--name", self.name, "--max-batch", str(self.max_batch), "--queue-delay-us", str(self.queue_delay_us)]
        for flag, value in (("--input-name", self.input_name), ("--input-dtype", self.input_dtype),
                            ("--output-name", self.output_name)):
            if value:
                out += [flag, value]
        for flag, dims in (("--input-dims", self.input_dims), ("--output-dims", self.output_dims)):
            if dims:
                out += [flag, ",".join(str(d) for d in dims)]
        return out


def start_alexnet_serve(model: Path, workdir: Path, threads: int = 2, extra: tuple[str, ...] = (),
                        name: str | None = "auto", max_batch: int = 32, queue_delay_ms: float = 2.0) -> Server:
    """``alexnet-serve MODEL`` on free HTTP and gRPC ports; ``name=None``: its default ``--name``."""
    hp, gp = free_port(), free_port()
    argv = [sys.executable, "-c", "from alexnet_deploy.cli import serve_main; serve_main()", str(model),
            "--port", str(hp), "--grpc-port", str(gp), "--threads", str(threads), "--max-batch", str(max_batch),
            "--max-queue-delay-ms", f"{queue_delay_ms:g}", *(["--name", name] if name is not None else []), *extra]
    return Server("alexnet-serve", argv, hp, gp, workdir / "alexnet-serve.log")


def start_pytriton(model: Path, name: str | TritonModel, workdir: Path, threads: int = 2,
                   python: Path = PYTRITON_PYTHON, timeout_s: float = 180, spinning: bool = False) -> Server:
    """PyTriton's tritonserver serving ``model`` (ONNX, through onnxruntime) as ``name`` (a name, or the whole
    interface from a config.pbtxt); ready once the model is. ``spinning``: ORT's intra-op spin-wait (off, as in
    alexnet-serve, so both sides run the same session)."""
    spec = name if isinstance(name, TritonModel) else TritonModel(name)
    hp, gp, mp = free_port(), free_port(), free_port()
    argv = [str(python), str(PYTRITON_SCRIPT), str(model), *spec.argv(), "--threads", str(threads),
            "--http-port", str(hp), "--grpc-port", str(gp), "--metrics-port", str(mp),
            "--allow-spinning", "1" if spinning else "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return Server("triton", argv, hp, gp, workdir / "pytriton.log", timeout_s=timeout_s, model=spec.name, env=env)


def pytriton_available(python: Path = PYTRITON_PYTHON) -> str | None:
    """None when PyTriton can run here, else the reason it cannot."""
    if not python.exists():
        return f"{python} is missing ({PYTRITON_VENV_HINT})"
    r = subprocess.run([str(python), "-c", "import pytriton, onnxruntime"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"{python} lacks pytriton or onnxruntime: {r.stderr.strip()[-200:]}"
