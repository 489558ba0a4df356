"""The Jetson install keeps the system's numpy 1.x and OpenCV (issue 19 item 6).

JetPack's cv2 (built with GStreamer, for csi:// and GStreamer pipelines) and Debian's / Ubuntu's python3-opencv
are built against numpy 1.x and fail to import under numpy 2. In a ``--system-site-packages`` venv, pip must
therefore be able to install ``[runtime,build,serve,stream]`` without replacing the system numpy: nothing in
those extras may require numpy >= 2 (ml_dtypes >= 0.6 did, through onnx and onnx-ir).

The resolver test asks pip itself (``pip install --dry-run --report``) for a venv over a Python whose numpy is
1.x (Debian: ``apt-get install python3-numpy``), and is skipped with the reason when there is none or when no
package index answers.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

REPO = Path(__file__).resolve().parents[2]
JETSON = REPO / "deploy" / "jetson"
EXTRAS = ("runtime", "build", "serve", "stream")
JETPACK6_NUMPY = Version("1.21.5")  # Ubuntu 22.04's python3-numpy, what JetPack 6's OpenCV is built against


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = _pyproject()["project"]
    items = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(r) for r in items]


def test_numpy_floor_admits_jetpack6_and_nothing_caps_ml_dtypes_above_numpy1():
    (numpy,) = [r for r in _requirements() if r.name == "numpy"]
    assert numpy.specifier.contains(JETPACK6_NUMPY), numpy
    for extra in EXTRAS:
        for req in _requirements(extra):
            assert req.name not in ("opencv-python", "opencv-python-headless", "opencv-contrib-python"), \
                f"[{extra}] would install pip's OpenCV over the system's GStreamer build: {req}"
            if req.name == "numpy":
                assert req.specifier.contains("1.26.4"), f"[{extra}] {req}"
    (ml_dtypes,) = [r for r in _requirements("build") if r.name.replace("_", "-") == "ml-dtypes"]
    assert not ml_dtypes.specifier.contains("0.6.0") and ml_dtypes.specifier.contains("0.5.4"), ml_dtypes


def test_jetson_dockerfile_installs_stream_with_the_images_opencv():
    text = (JETSON / "Dockerfile").read_text()
    run = " ".join(line.strip() for line in text.replace("\\\n", " ").splitlines() if not line.startswith("#"))
    assert "python3 -m venv --system-site-packages /opt/venv" in run
    installs = re.findall(r"pip install ([^&]+)", run)
    assert installs, "no pip install in the Dockerfile"
    (project,) = [i for i in installs if '".[' in i]
    extras = set(re.search(r'"\.\[([^\]]+)\]"', project).group(1).split(","))
    assert set(EXTRAS) <= extras, extras
    assert "-c constraints.txt" in project and "COPY deploy/jetson/constraints.txt" in run
    assert not any("opencv" in i for i in installs), "pip's OpenCV has no GStreamer: the image's cv2 is used"
    assert "import cv2" in run and "GStreamer" in run  # the build fails on an image whose cv2 lacks GStreamer
    constraints = [Requirement(line) for line in (JETSON / "constraints.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    (numpy,) = [c for c in constraints if c.name == "numpy"]
    assert not numpy.specifier.contains("2.0.0") and numpy.specifier.contains("1.26.4")
    opencv = [c for c in constraints if c.name.startswith("opencv")]
    assert opencv and all(not c.specifier.contains("4.10.0") for c in opencv)


def _numpy1_python() -> tuple[str, str] | None:
    """(python, numpy version) of a system Python whose numpy is 1.x."""
    for python in ("/usr/bin/python3",):
        if not Path(python).exists():
            continue
        r = subprocess.run([python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True)
        if r.returncode == 0 and Version(r.stdout.strip()).major == 1:
            return python, r.stdout.strip()
    return None


@pytest.mark.slow
def test_pip_keeps_the_system_numpy_1x_in_a_system_site_packages_venv(tmp_path):
    found = _numpy1_python()
    if found is None:
        pytest.skip("needs a system Python with numpy 1.x (Debian: apt-get install python3-numpy)")
    python, system_numpy = found
    venv = tmp_path / "venv"
    r = subprocess.run([python, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a venv with {python}: {r.stderr.strip().splitlines()[-1:]}")
    report = tmp_path / "report.json"
    # This environment's pip, resolving for the venv's interpreter (pip >= 22.3: --python).
    # The extras' requirements as pyproject.toml lists them (no metadata build of the project: faster, same
    # resolution); binary wheels only, as a Jetson install takes them.
    wanted = [str(r) for r in _requirements()] + [str(r) for extra in EXTRAS for r in _requirements(extra)]
    cmd = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--dry-run",
           "--quiet", "--only-binary=:all:", "--report", str(report), *wanted]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        tail = " ".join(r.stderr.strip().splitlines()[-3:])
        if re.search(r"ResolutionImpossible|conflict", tail, re.I):
            pytest.fail(f"pip cannot resolve [{','.join(EXTRAS)}] next to numpy {system_numpy}: {tail}")
        pytest.skip(f"pip could not reach a package index: {tail[-300:]}")
    installs = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    assert "numpy" not in installs, f"pip would replace the system numpy {system_numpy} by {installs['numpy']}"
    assert not any(name.startswith("opencv") for name in installs), installs
    assert "onnxruntime" in installs and "av" in installs  # the extras were resolved, not skipped
    if "ml-dtypes" in installs:
        assert Version(installs["ml-dtypes"]) < Version("0.6"), installs["ml-dtypes"]
