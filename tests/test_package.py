"""What a user expects of the package: `python -m alexnet_deploy` lists every console script, `--version` on every
command, a light torch-free `import alexnet_deploy` whose public names resolve lazily, and the example of
docs/python-api.md runs as written."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
VERSION = importlib.metadata.version("alexnet-deploy")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError("torch blocked for this test")
sys.meta_path.insert(0, Block())
"""


def _python(code: str, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _command(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def test_python_m_lists_every_console_script():
    out = subprocess.run([sys.executable, "-m", "alexnet_deploy"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert VERSION in out.stdout.splitlines()[0]
    listed = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s+(alexnet-[a-z0-9-]+)\s{2,}(\S.*)$", line)
        if m:
            listed[m.group(1)] = m.group(2)
    assert set(listed) == set(SCRIPTS), out.stdout
    for name, target in SCRIPTS.items():  # each with the start of its own help text (click shortens it)
        shown = listed[name].removesuffix("...")
        text = " ".join((_command(target).help or "").split())
        assert len(shown) > 20 and text.startswith(shown), (name, listed[name], text[:120])


def test_python_m_version_dispatch_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "alexnet_deploy", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"alexnet-deploy, version {VERSION}", out
    from alexnet_deploy.__main__ import main

    with pytest.raises(SystemExit) as exc:  # a command runs as its console script would
        main(["verify", "--version"])
    assert exc.value.code == 0
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_version_on_every_command(name):
    res = CliRunner().invoke(_command(SCRIPTS[name]), ["--version"], prog_name=name)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{name}, version {VERSION}"


def test_installed_script_prints_version():
    script = Path(sys.executable).with_name("alexnet-predict")
    if not script.exists():
        pytest.skip(f"console scripts are not installed next to {sys.executable}")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"alexnet-predict, version {VERSION}", out


def test_import_is_light_and_torch_free_names_resolve_without_torch():
    code = BLOCK_TORCH + textwrap.dedent(f"""
        import alexnet_deploy as ad
        heavy = [m for m in ("torch", "numpy", "onnx", "onnxruntime", "PIL", "click") if m in sys.modules]
        assert not heavy, heavy
        assert ad.__version__ == {VERSION!r}
        assert {{"open_runner", "load_image", "export_onnx", "calibrate", "run_deploy", "verify"}} <= set(dir(ad))
        from alexnet_deploy.runtime.runners.factory import open_runner
        from alexnet_deploy.runtime.preprocess import load_image
        from alexnet_deploy.parity.verify import verify
        assert ad.open_runner is open_runner and ad.load_image is load_image and ad.verify is verify
        assert callable(ad.model_batch) and callable(ad.topk)
        assert callable(ad.calibrate) and callable(ad.run_deploy)  # engine-build and folder paths: torch-free
        try:
            ad.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise SystemExit("no AttributeError")
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = _python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_torch_name_without_torch_is_one_line_error():
    code = textwrap.dedent("""
        import sys
        class Missing:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Missing())
        import alexnet_deploy as ad
        from alexnet_deploy.errors import MissingDependencyError
        try:
            ad.load_model
        except MissingDependencyError as exc:
            print(exc)
        else:
            raise SystemExit("load_model resolved without torch")
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert "torch" in out.stdout and "alexnet-deploy[export]" in out.stdout and len(out.stdout.splitlines()) == 1


def test_every_lazy_name_resolves_and_subpackages_still_import():
    """With torch present: each public name is the defining module's object, and resolving them all (run_deploy
    imports the `deploy` sub-package) leaves `import alexnet_deploy.deploy.plan` working."""
    code = textwrap.dedent("""
        import importlib
        import alexnet_deploy as ad
        for name, (module, attr) in ad._LAZY.items():
            assert getattr(ad, name) is getattr(importlib.import_module(module), attr), name
        import alexnet_deploy.deploy.plan as plan
        assert ad.DeployOptions is plan.DeployOptions
        assert ad.deploy is importlib.import_module("alexnet_deploy.deploy")  # the sub-package, not a function
        print(sorted(ad._LAZY))
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr
    for name in ("open_runner", "load_image", "export_onnx", "calibrate", "run_deploy", "verify"):
        assert repr(name) in out.stdout


def _doc_example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    section = text.split("## Example", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "docs/python-api.md: no python block under '## Example'"
    return m.group(1)


@pytest.mark.slow
def test_doc_example_runs(tmp_path):
    """The block in docs/python-api.md as written: cifar10 with random weights, export, classify, calibrate,
    deploy (FP32 ONNX on ORT) and verify, in an empty folder."""
    out = _python(_doc_example(), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "deploy passed: True" in out.stdout, out.stdout
    assert re.search(r"onnx-fp32\s+ort\s+fp32.*PASS", out.stdout), out.stdout
    for f in ("cifar10.pt", "cifar10.onnx", "cifar10-int8.onnx", "image.png", "deploy/report.json"):
        assert (tmp_path / f).is_file(), f
