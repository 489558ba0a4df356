"""The [build] extra: alexnet-calibrate and alexnet-export trt (and --rebuild-if-stale) on a device that has
onnx, onnxruntime and a TensorRT builder but no torch (a Jetson beside JetPack's TensorRT). Each command runs in
a subprocess with torch and the other [export]-only packages blocked, as tests/runtime/test_runtime.py does."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import blocked_imports

pytestmark = pytest.mark.slow  # each command runs in a subprocess with torch blocked

# What `pip install 'alexnet-deploy[build]'` does not bring (torch and the rest of [export]).
NOT_IN_BUILD = ("torch", "torchvision", "onnxsim", "safetensors", "sklearn", "scipy")


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    prelude = blocked_imports(NOT_IN_BUILD) + textwrap.dedent("""
        from click.testing import CliRunner
        def run(cmd, *args):
            r = CliRunner().invoke(cmd, [str(a) for a in args])
            print(json.dumps([r.exit_code, r.stdout, r.stderr]))
        import json
    """)
    epilogue = '\nprint(json.dumps(["loaded", sorted(m for m in sys.modules if m.split(".")[0] in %r)]))\n' % (
        NOT_IN_BUILD,)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue],
                          capture_output=True, text=True, timeout=300)


def _results(out: subprocess.CompletedProcess) -> list:
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert rows[-1] == ["loaded", []], f"torch-only modules were imported: {rows[-1]}"
    return rows[:-1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A small ImageFolder tree (digits as PNG files), the kind of data a device user calibrates on."""
    from alexnet_deploy.data.datasets import load_digits

    root = tmp_path_factory.mktemp("imagefolder")
    ds = load_digits("train")
    for i in range(100):
        folder = root / ds.class_names[ds.labels[i]]
        folder.mkdir(exist_ok=True)
        ds.image(i).save(folder / f"{i}.png")
    return root


def test_build_extras_are_declared_without_torch():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {k: {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in v}
             for k, v in extras.items()}
    assert {"onnx", "onnxruntime"} <= names["build"] and not names["build"] & {"torch", "torchvision"}
    # onnxruntime and onnxruntime-gpu both install the `onnxruntime` module: never both from one extra
    assert "onnxruntime-gpu" in names["gpu"] and "cuda-python" in names["gpu"]
    assert not names["gpu"] & {"onnxruntime", "alexnet-deploy"}
    assert "tensorrt" in names["trt"]
    assert any("build" in r for r in extras["dev"] if r.startswith("alexnet-deploy["))


def test_calibrate_without_torch(digits_onnx, image_folder, tmp_path):
    out = _run_without_torch(f"""
        from alexnet_deploy.cli import calibrate_main
        run(calibrate_main, {str(digits_onnx)!r}, "-o", {str(tmp_path / "int8.onnx")!r}, "--dataset",
            {str(image_folder)!r}, "--num-images", 64, "--eval-images", 20)
        run(calibrate_main, {str(digits_onnx)!r}, "-o", {str(tmp_path / "d.onnx")!r}, "--dataset", "digits")
    """)
    (code, stdout, stderr), (code2, _, stderr2) = _results(out)
    assert code == 0, stderr
    assert "chosen: " in stdout and (tmp_path / "int8.onnx").stat().st_size > 100_000
    # the embedded digits need scikit-learn, which [build] leaves out: one line naming the package
    assert code2 != 0 and len(stderr2.strip().splitlines()) == 1
    assert "scikit-learn" in stderr2 and not (tmp_path / "d.onnx").exists()

    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    meta = read_onnx_metadata(tmp_path / "int8.onnx")
    assert meta.precision == "int8" and meta.extra["calibration"]["num_images"] == 64


@pytest.mark.trt
def test_export_trt_and_rebuild_without_torch(digits_onnx, image_folder, tmp_path):
    from alexnet_deploy.runtime.trt_library import manifest_path

    plans = {p: tmp_path / f"c10-{p}.plan" for p in ("fp32", "fp16", "int8")}
    stale, stale_int8 = tmp_path / "stale.plan", tmp_path / "stale-int8.plan"
    moved = tmp_path / "copied deploy"
    moved_plan = moved / "trt" / "e.plan"
    img = next(image_folder.rglob("*.png"))
    out = _run_without_torch(f"""
        import json, shutil
        from alexnet_deploy.cli import export_main, predict_main
        plans = {({k: str(v) for k, v in plans.items()})!r}
        for p, path in plans.items():
            run(export_main, "trt", {str(digits_onnx)!r}, "-o", path, "--precision", p, "--max-batch", 4,
                "--calib-dataset", {str(image_folder)!r}, "--calib-images", 32)
        # a stale engine (manifest names another library version) is rebuilt from its recorded ONNX; the INT8
        # one on its recorded calibration folder (the digits default would need scikit-learn, blocked here)
        for p, dst in (("fp32", {str(stale)!r}), ("int8", {str(stale_int8)!r})):
            shutil.copy(plans[p], dst)
            m = json.load(open(plans[p] + ".manifest.json"))
            m["library"]["version"] = "0.9.0"
            json.dump(m, open(dst + ".manifest.json", "w"))
            run(predict_main, dst, {str(img)!r}, "--rebuild-if-stale")
        # a stale engine in a folder copied from the build host: the ONNX is found relative to the engine
        import os
        os.makedirs({str(moved)!r} + "/onnx"); os.makedirs({str(moved)!r} + "/trt")
        shutil.copy({str(digits_onnx)!r}, {str(moved)!r} + "/onnx/m.onnx")
        shutil.copy(plans["fp32"], {str(moved_plan)!r})
        m = json.load(open(plans["fp32"] + ".manifest.json"))
        m["library"]["version"] = "0.9.0"
        m["source_onnx"] = "/gone/build-host/m.onnx"
        m["source_onnx_relative"] = "../onnx/m.onnx"
        json.dump(m, open({str(moved_plan)!r} + ".manifest.json", "w"))
        run(predict_main, {str(moved_plan)!r}, {str(img)!r}, "--rebuild-if-stale")
    """)
    *builds, (code, _, stderr), (code8, _, stderr8), (code_moved, _, stderr_moved) = _results(out)
    for (p, path), (c, stdout, err) in zip(plans.items(), builds):
        assert c == 0, (p, err)
        assert "built" in stdout and path.stat().st_size > 100_000
        manifest = json.loads(manifest_path(path).read_text())
        assert manifest["precision"] == p and manifest["source_onnx"] == str(digits_onnx.resolve())
    assert json.loads(manifest_path(plans["int8"]).read_text())["build"]["calibration"]["num_images"] == 32
    # rebuilt (the manifest has the current version again), then stopped by this machine's missing GPU
    assert code != 0 and "no CUDA GPU" in stderr, stderr
    assert json.loads(manifest_path(stale).read_text())["library"]["version"] != "0.9.0"
    assert code8 != 0 and "no CUDA GPU" in stderr8, stderr8
    rebuilt = json.loads(manifest_path(stale_int8).read_text())
    assert rebuilt["library"]["version"] != "0.9.0"
    assert rebuilt["build"]["calibration"]["dataset"].startswith(str(image_folder))
    assert rebuilt["build"]["calibration"]["num_images"] == 32
    assert code_moved != 0 and "no CUDA GPU" in stderr_moved, stderr_moved
    rebuilt = json.loads(manifest_path(moved_plan).read_text())
    assert rebuilt["library"]["version"] != "0.9.0"
    assert rebuilt["source_onnx"] == str(moved / "onnx" / "m.onnx") and rebuilt["source_onnx_relative"] == str(
        Path("..", "onnx", "m.onnx"))


def test_source_onnx_is_found_where_the_folder_went(digits_onnx, tmp_path):
    import shutil

    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.runtime.trt_library import rebuild_command, source_onnx_path

    (tmp_path / "a" / "onnx").mkdir(parents=True)
    (tmp_path / "a" / "trt").mkdir()
    onnx = tmp_path / "a" / "onnx" / "model.onnx"
    shutil.copy(digits_onnx, onnx)
    sha = sha256_file(onnx)
    engine = tmp_path / "a" / "trt" / "model.plan"
    manifest = {"source_onnx": "/build-host/x/onnx/model.onnx", "source_onnx_relative": "../onnx/model.onnx",
                "source_onnx_sha256": sha, "precision": "fp32", "build": {}}
    assert source_onnx_path(manifest, engine) == str(onnx)
    assert rebuild_command(manifest, engine).startswith(f"alexnet-export trt {onnx} -o ")
    old = {k: v for k, v in manifest.items() if k != "source_onnx_relative"}  # an older manifest: by name beside
    shutil.copy(onnx, engine.parent / "model.onnx")
    assert source_onnx_path(old, engine) == str(engine.parent / "model.onnx")
    onnx.write_bytes(b"changed")  # another file under that name is not the engine's source
    assert source_onnx_path(manifest, engine) == str(engine.parent / "model.onnx")
    (engine.parent / "model.onnx").unlink()
    assert source_onnx_path(manifest, engine) is None
    assert rebuild_command(manifest, engine).startswith("alexnet-export trt /build-host/x/onnx/model.onnx -o ")


def test_rebuild_command_repeats_the_recorded_build():
    from alexnet_deploy.runtime.trt_library import rebuild_command, rebuild_options

    manifest = {"source_onnx": "/m/c10.onnx", "precision": "int8",
                "build": {"profile": {"min": 1, "opt": 4, "max": 8}, "static": False, "workspace_mb": 1024,
                          "dla_core": 0, "version_compatible": False, "hardware_compatibility": "none",
                          "calibration": {"dataset": "digits:train", "num_images": 300, "method": "entropy2",
                                          "cache": "/m/c10.calib"}}}
    assert rebuild_options(manifest) == {
        "precision": "int8", "workspace_mb": 1024, "min_batch": 1, "opt_batch": 4, "max_batch": 8, "dla_core": 0,
        "calib_dataset": "digits", "calib_images": 300, "calib_algorithm": "entropy2", "calib_cache": "/m/c10.calib"}
    assert rebuild_command(manifest, "e.plan") == (
        "alexnet-export trt /m/c10.onnx -o e.plan --precision int8 --min-batch 1 --opt-batch 4 --max-batch 8 "
        "--dla-core 0 --calib-dataset digits --calib-images 300 --calib-algorithm entropy2 --calib-cache /m/c10.calib")
    manifest["build"]["calibration"]["dataset"] = "npy:gone.npy"  # recorded by name only: the user must say
    assert rebuild_options(manifest)["calib_dataset"] is None
    assert "--calib-dataset DATA" in rebuild_command(manifest, "e.plan")
