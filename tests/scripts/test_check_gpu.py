"""scripts/check_gpu.sh (make check-gpu) on a machine without a GPU: the dry run lists every step with commands
the real CLIs accept, a run without a GPU skips every step with its reason and exits 2 in one line, and bad input
(a missing wheel, a driver too old for onnxruntime-gpu, a bad option) is one line and exit 2, never a traceback."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_gpu.sh"
STEPS = ["preflight", "pytest-gpu", "train", "export-models", "inputs", "predict-ort-cuda", "probe-ort-trt",
         "probe-trt", "deploy-gpu", "verify-gpu-ort-cuda", "verify-cpu-ort-cuda", "verify-gpu-ort-trt",
         "verify-cpu-ort-trt", "verify-gpu-trt", "verify-cpu-trt", "bench-cuda", "export-trt-bench", "bench-trt",
         "bench-trt-graph", "stream-ort-cuda", "serve-ort-cuda"]


def _module():
    spec = importlib.util.spec_from_file_location("check_gpu", REPO / "scripts" / "check_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cg = _module()


def _run(tmp_path, *args, env_extra=None, timeout=240):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "-1"}  # no GPU, even on a GPU host
    env.pop("OUT", None)
    env.update(env_extra or {})
    r = subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=tmp_path)
    return r.returncode, r.stdout, r.stderr


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("check-gpu: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ----------------------------------------------------------------------- the commands match the real CLIs
def _commands() -> dict[str, click.Command]:
    import alexnet_deploy.cli as cli

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: getattr(cli, target.split(":")[1]) for name, target in scripts.items()}


def _engines_for(name: str) -> set[str]:
    from alexnet_deploy.benchmarks.run import ENGINES as BENCH
    from alexnet_deploy.deploy.plan import ENGINES as DEPLOY
    from alexnet_deploy.runtime.runners.factory import ENGINES as RUNNERS

    return set({"alexnet-deploy": DEPLOY, "alexnet-bench": BENCH}.get(name, RUNNERS))


def check_argv(argv: list[str], commands: dict) -> str:
    """Parse one planned command with the real click command: unknown options, missing values, wrong choices,
    out-of-range numbers and unknown engine names fail. Returns the command's name."""
    i = next(k for k, a in enumerate(argv) if Path(a).name.startswith("alexnet-"))
    name, args = Path(argv[i]).name, argv[i + 1:]
    assert name in commands, f"{name} is not a console script in pyproject.toml"
    cmd = commands[name]
    if isinstance(cmd, click.Group):
        sub, args = args[0], args[1:]
        assert sub in cmd.commands, f"{name} has no subcommand {sub}"
        cmd, name = cmd.commands[sub], f"{name} {sub}"
    ctx = click.Context(cmd, info_name=name)
    opts, extra, order = cmd.make_parser(ctx).parse_args(args=list(args))  # NoSuchOption / BadOptionUsage
    assert not extra, f"{name}: unexpected arguments {extra}"
    for param in order:
        value = opts.get(param.name)
        if value is None or isinstance(param.type, (click.Path, click.File)):
            continue
        param.type_cast_value(ctx, value)  # Choice, IntRange, FloatRange, INT, FLOAT raise BadParameter
        if param.name in ("engine", "engines") and param.type is click.STRING:
            unknown = set(str(value).split(",")) - _engines_for(name.split()[0]) - {"auto"}
            assert not unknown, f"{name} {param.opts[0]}: unknown engine(s) {unknown}"
    missing = [p.name for p in cmd.params if isinstance(p, click.Argument) and p.required and p.name not in opts]
    assert not missing, f"{name}: missing argument(s) {missing}"
    return name


def test_dry_run_lists_every_step_with_commands_the_clis_accept(tmp_path):
    code, out, err = _run(tmp_path, "--dry-run", "--out", tmp_path / "out", "--work", tmp_path / "work",
                          "--cpu-folder", REPO / "tests")  # not a deployment folder: refused before anything
    assert code == 2 and "not a deployment folder" in _one_line(err)
    code, out, err = _run(tmp_path, "--dry-run", "--out", tmp_path / "out", "--work", tmp_path / "work")
    assert code == 0, err
    assert not (tmp_path / "work").exists()  # a dry run writes nothing but the report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check.json", "gpu-check.md"]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["dry_run"] and report["exit_code"] == 0
    rows = {r["id"]: r for r in report["rows"]}
    assert list(rows) == STEPS
    # here (no GPU) every step says it would skip, and why
    assert all("would skip" in r["reason"] and "CUDA_VISIBLE_DEVICES" in r["reason"]
               for r in report["rows"] if r["status"] == "planned" and r["id"] != "preflight")
    commands = _commands()
    used = set()
    for r in report["rows"]:
        for argv in r["argv"]:
            if any(Path(a).name.startswith("alexnet-") for a in argv):
                used.add(check_argv(argv, commands))
    assert {"alexnet-train", "alexnet-export onnx", "alexnet-export trt", "alexnet-deploy", "alexnet-verify",
            "alexnet-predict", "alexnet-bench", "alexnet-stream", "alexnet-serve"} <= used
    # what the issue asks for is in the plan
    deploy = " ".join(rows["deploy-gpu"]["commands"])
    assert "--engines torch-cuda,ort-cuda,ort-trt,trt" in deploy
    bench = rows["bench-cuda"]["commands"][0]
    assert "--engine torch-cuda,ort-cuda" in bench and "--batch-sizes 1,32,256" in bench
    assert "torchvision" in bench and "cifar10" in bench
    assert "--cuda-graph" in rows["bench-trt-graph"]["commands"][0]
    assert "--engine ort-cuda" in rows["stream-ort-cuda"]["commands"][1]
    assert "alexnet-serve" in rows["serve-ort-cuda"]["commands"][0] and "--engine ort-cuda" in rows["serve-ort-cuda"]["commands"][0]
    assert "-m gpu" in rows["pytest-gpu"]["commands"][0]
    assert (tmp_path / "out" / "gpu-check.md").read_text().count("| planned |") == len(STEPS) - 1


def test_option_check_catches_a_vanished_option():
    commands = _commands()
    with pytest.raises(click.NoSuchOption):
        check_argv(["alexnet-bench", "m.onnx", "--engine", "ort", "--cuda-graphs"], commands)
    with pytest.raises(click.BadParameter):
        check_argv(["alexnet-verify", "dir", "--engine", "cuda"], commands)
    with pytest.raises(AssertionError, match="unknown engine"):
        check_argv(["alexnet-deploy", "--weights", "w.pt", "--out", "o", "--engines", "torch-gpu"], commands)


def test_no_gpu_every_step_skips_with_its_reason_and_exit_2(tmp_path):
    code, out, err = _run(tmp_path, "--out", tmp_path / "out", "--work", tmp_path / "work")
    line = _one_line(err)
    assert code == 2 and "CUDA_VISIBLE_DEVICES" in line
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["exit_code"] == 2 and report["result"] == "bad input" and not report["dry_run"]
    rows = report["rows"]
    assert [r["id"] for r in rows] == STEPS
    assert rows[0]["status"] == "failed" and rows[0]["reason"] in line
    assert all(r["status"] == "skipped" and r["reason"] for r in rows[1:])
    m = report["machine"]
    assert m["cpu"] and m["python"] and "torch" in m and "onnxruntime" in m
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| pytest-gpu | skipped |" in md and "bad input" in md and "compute capability" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check-logs.tar.gz", "gpu-check.json",
                                                                    "gpu-check.md"]


def test_time_budget_stops_the_steps_exit_1(tmp_path):
    """--rehearse-on-cpu (CPU engines stand in) with a budget spent by the probe: every step that would run is
    refused (failed, exit 1, one line) instead of running past the limit; nothing heavy starts."""
    code, out, err = _run(tmp_path, "--rehearse-on-cpu", "--budget-s", "0.01", "--out", tmp_path / "out",
                          "--work", tmp_path / "work")
    line = _one_line(err)
    assert code == 1 and "FAILED" in line and "time budget" in line
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["rehearsal_on_cpu"] and report["result"] == "failed"
    rows = {r["id"]: r for r in report["rows"]}
    assert rows["preflight"]["status"] == "passed"
    assert rows["train"]["status"] == "failed" and "time budget" in rows["train"]["reason"]
    assert not (tmp_path / "work" / "digits.pt").exists() and "CPU REHEARSAL" in (tmp_path / "out" / "gpu-check.md").read_text()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find the child processes")
def test_sigterm_stops_the_running_step_and_keeps_the_rows_done(tmp_path):
    """A run stopped from outside (the device tool's time limit, Ctrl-C) stops the step it is in, with its whole
    process group (each step runs in its own session, so nothing would stop it otherwise), and leaves the
    report of the steps done so far."""
    import signal
    import time

    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "-1"}
    env.pop("OUT", None)
    proc = subprocess.Popen(["bash", str(SCRIPT), "--rehearse-on-cpu", "--out", str(tmp_path / "out"),
                             "--work", str(tmp_path / "work")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        kids: list[int] = []
        while time.monotonic() < deadline and not kids:  # the first step (pytest -m gpu) has started
            time.sleep(0.2)
            kids = _children(proc.pid) if (tmp_path / "out" / "gpu-check.json").exists() else []
        assert kids, "no step started"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM and "stopped by signal" in _one_line(proc.stderr.read())
    for pid in kids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["result"].startswith("incomplete") and report["rows"][0]["id"] == "preflight"


def _gpu_probe(**changes) -> dict:
    """A probe of a GPU machine (H200-like) with every wheel staged; ``changes`` break one thing."""
    p = {"python": "3.12.3", "cpu": "x", "cores": 16, "cuda_visible_devices": None,
         "nvidia_smi": {"name": "NVIDIA H200", "driver": "580.159.04", "compute_capability": "9.0"},
         "libcuda": {"driver_cuda": "13.0", "devices": 1},
         "torch": {"version": "2.11.0+cu130", "cuda": "13.0", "available": True, "device": "NVIDIA H200",
                   "capability": "9.0"},
         "onnxruntime": {"version": "1.31.1", "gpu_distribution": "1.31.1", "cuda_version": "13.0",
                         "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]},
         "wheels": {d: v for d, v, _, _ in cg.REQUIRED_WHEELS}, "optional_wheels": {},
         "preinstalled": {d: "1.0" for d, _ in cg.PREINSTALLED}, "trt_libraries": {}, "libnvinfer": None}
    for key, value in changes.items():
        p[key] = value
    return p


def test_preflight_rules():
    assert cg.gpu_problem(_gpu_probe()) is None
    assert "hides every GPU" in cg.gpu_problem(_gpu_probe(cuda_visible_devices=""))
    no_gpu = cg.gpu_problem(_gpu_probe(torch={"version": "2.11.0", "cuda": None, "available": False},
                                       nvidia_smi={"error": "nvidia-smi not found"}, libcuda={"error": "no libcuda"}))
    assert "nvidia-smi not found" in no_gpu and "is_available() is False" in no_gpu
    assert cg.missing_wheels(_gpu_probe()) == []
    cpu_ort = _gpu_probe(onnxruntime={"version": "1.30.0", "providers": ["CPUExecutionProvider"]},
                         wheels={**_gpu_probe()["wheels"], "av": None})
    missing = cg.missing_wheels(cpu_ort)
    assert missing[0].startswith("onnxruntime-gpu==1.31.1 (onnxruntime 1.30.0 has only CPUExecutionProvider")
    assert any(m.startswith("av==") for m in missing) and len(missing) == 2
    assert cg.missing_wheels(cpu_ort, cuda=False) == [m for m in missing if m.startswith("av==")]
    assert cg.driver_problem(_gpu_probe()) is None
    old = cg.driver_problem(_gpu_probe(libcuda={"driver_cuda": "12.2", "devices": 1},
                                       nvidia_smi={"name": "A100", "driver": "535.104.05", "compute_capability": "8.0"}))
    assert "535.104.05" in old and "CUDA 12.2" in old and "CUDA 13.0" in old


@pytest.mark.parametrize("case, expect", [
    ("missing", ["missing wheels", "onnxruntime-gpu==1.31.1", "av==18.1.0", "gpu-wheels"]),
    ("driver", ["driver 535.104.05 supports CUDA 12.2", "onnxruntime-gpu 1.31.1"]),
    ("no-gpu", ["no NVIDIA GPU here", "nvidia-smi not found"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, expect):
    probe = {"missing": _gpu_probe(onnxruntime={"version": "1.30.0", "providers": ["CPUExecutionProvider"]},
                                   wheels={**_gpu_probe()["wheels"], "av": None}),
             "driver": _gpu_probe(libcuda={"driver_cuda": "12.2", "devices": 1},
                                  nvidia_smi={"name": "A100", "driver": "535.104.05", "compute_capability": "8.0"}),
             "no-gpu": _gpu_probe(torch={"version": "2.11.0", "cuda": None, "available": False},
                                  nvidia_smi={"error": "nvidia-smi not found"}, libcuda={"error": "no libcuda"})}[case]
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    code, out, err = _run(tmp_path, "--probe-json", tmp_path / "probe.json", "--out", tmp_path / "out",
                          "--work", tmp_path / "work", env_extra={"CUDA_VISIBLE_DEVICES": "0"})
    line = _one_line(err)
    assert code == 2 and all(e in line for e in expect), line
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert all(r["status"] == "skipped" for r in report["rows"][1:])


def test_bad_options_are_one_line_and_exit_2(tmp_path):
    for args, expect in ((["--wheels", tmp_path / "nowhere"], "is not a folder"),
                         (["--budget-s", "0"], "--budget-s must be positive"),
                         (["--work", REPO], "is the checkout"),
                         (["--out", tmp_path / "w" / "o", "--work", tmp_path / "w"], "must not contain each other")):
        code, out, err = _run(tmp_path, *args)
        assert code == 2 and expect in _one_line(err), (args, err)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("a user's file")
    code, out, err = _run(tmp_path, "--work", tmp_path / "mine", "--out", tmp_path / "out")
    assert code == 2 and "not a folder of this script" in _one_line(err)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "a user's file"  # never emptied


def _tiny_wheel(folder: Path) -> Path:
    """A minimal valid pure-Python wheel (module gpucheck_probe_pkg)."""
    name = "gpucheck_probe_pkg-1.0-py3-none-any.whl"
    files = {"gpucheck_probe_pkg.py": b"VALUE = 42\n",
             "gpucheck_probe_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gpucheck-probe-pkg\nVersion: 1.0\n",
             "gpucheck_probe_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={__import__('base64').urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
                     for p, d in files.items()) + "gpucheck_probe_pkg-1.0.dist-info/RECORD,,\n"
    files["gpucheck_probe_pkg-1.0.dist-info/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
    return folder / name


def test_gpu_wheels_parts_are_joined_checked_and_installed(tmp_path):
    """The layout ../shared/tools/gpu-wheels makes: wheels/ in a tar, split into partNN, sha256 in install.sh."""
    _tiny_wheel(tmp_path / "build" / "wheels")
    tar = tmp_path / "build" / "w.tar"
    with tarfile.open(tar, "w") as t:
        t.add(tmp_path / "build" / "wheels", arcname="wheels")
    data = tar.read_bytes()
    stage = tmp_path / "stage"
    stage.mkdir()
    half = len(data) // 2
    (stage / "part00").write_bytes(data[:half])
    (stage / "part01").write_bytes(data[half:])
    sha = hashlib.sha256(data).hexdigest()
    (stage / "install.sh").write_text(f"cd /tmp/stage && cat part* > w.tar && echo '{sha}  w.tar' | sha256sum -c -\n")
    msg = cg.install_wheels(stage, tmp_path / "work" / "site", sys.executable)
    assert "1 wheels" in msg and (tmp_path / "work" / "site" / "gpucheck_probe_pkg.py").is_file()
    (stage / "part01").write_bytes(data[half:-10])  # a stale or cut part
    with pytest.raises(SystemExit) as e:
        cg.install_wheels(stage, tmp_path / "work2" / "site", sys.executable)
    assert e.value.code == 2


def test_wheels_lists_every_expected_wheel(tmp_path):
    code, out, err = _run(tmp_path, "wheels")
    assert code == 0, err
    for dist, version, _, _ in cg.REQUIRED_WHEELS + cg.OPTIONAL_WHEELS:
        assert f"{dist}=={version}" in out
    assert "../shared/tools/gpu-wheels onnxruntime-gpu==" in out
