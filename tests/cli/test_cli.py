import subprocess
import sys
import textwrap

import pytest

from helpers import blocked_imports

from alexnet_deploy.cli import export_main, train_main
from alexnet_deploy.models.weights import load_model, save_checkpoint

HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "tensorrt", "tensorrt_rtx", "sklearn",
         "matplotlib", "fastapi", "uvicorn", "safetensors", "cuda", "prometheus_client")


def _run_blocked(code: str) -> subprocess.CompletedProcess:
    prelude = blocked_imports(HEAVY)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True)


def test_import_and_every_help_work_without_optional_dependencies():
    out = _run_blocked("""
        import alexnet_deploy, alexnet_deploy.models, alexnet_deploy.runtime.metadata
        from click.testing import CliRunner
        from alexnet_deploy import cli
        for name in [n for n in dir(cli) if n.endswith("_main")]:
            cmd = getattr(cli, name)
            r = CliRunner().invoke(cmd, ["--help"])
            assert r.exit_code == 0 and "Usage" in r.output, (name, r.output)
            for sub in getattr(cmd, "commands", {}):
                r = CliRunner().invoke(cmd, [sub, "--help"])
                assert r.exit_code == 0, (name, sub, r.output)
        print("ok", len(sys.modules))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_missing_dependency_is_one_line():
    out = _run_blocked("""
        from alexnet_deploy.deps import require
        from alexnet_deploy.errors import MissingDependencyError
        try:
            require("onnxsim")
        except MissingDependencyError as e:
            print(e)
    """)
    assert out.stdout.strip() == ("onnxsim is not installed (needed for ONNX simplification); "
                                  "install it with: pip install 'alexnet-deploy[export]'")


@pytest.mark.parametrize("args, message", [
    (["--variant", "resnet"], "unknown variant 'resnet'"),
    (["--weights", "{tmp}/missing.pt"], "not found"),
    (["--weights", "{tmp}/corrupt.pt"], "cannot read"),
    (["--weights", "{tmp}/c10.pt", "--variant", "bn"], "holds a 'cifar10' model, not 'bn'"),
    (["--weights", "{tmp}/c10.pt", "--num-classes", "3"], "has 10 classes, not 3"),
    (["--variant", "cifar10", "--opset", "5"], "opset 5 is too low"),
    (["--variant", "cifar10", "-o", "{tmp}/blocker/m.onnx"], "cannot create output folder"),
    (["--weights", "imagenet", "--variant", "torchvision"], "hub cache"),
])
def test_export_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    (tmp_path / "blocker").write_text("a file where a folder should be")
    save_checkpoint(tmp_path / "c10.pt", load_model("cifar10"))
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [a.format(tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.onnx")]
    code, out, err = cli(export_main, "onnx", *args)
    assert code != 0
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_cli_bad_input(cli, tmp_path):
    code, _, err = cli(train_main, "--dataset", tmp_path / "nope", "-o", tmp_path / "c.pt")
    assert code == 2 and "not found" in err
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.slow
def test_train_cli_writes_checkpoint(cli, tmp_path):
    code, out, err = cli(train_main, "--epochs", "1", "--no-progress", "-o", tmp_path / "c.safetensors")
    assert code == 0, err
    assert "held-out accuracy" in out
    assert load_model(None, str(tmp_path / "c.safetensors")).variant == "cifar10"


def test_unwritable_folder_is_one_line(cli, tmp_path):
    code, _, err = cli(export_main, "onnx", "--variant", "cifar10", "-o", "/proc/x.onnx")
    assert code == 2 and "cannot write into /proc" in err and "Traceback" not in err


def test_missing_torch_in_a_command_is_one_line(tmp_path):
    out = _run_blocked(f"""
        from click.testing import CliRunner
        from alexnet_deploy.cli import export_main
        r = CliRunner().invoke(export_main, ["onnx", "--variant", "cifar10", "-o", {str(tmp_path / "m.onnx")!r}])
        print(r.exit_code, r.stderr.strip())
    """)
    assert out.returncode == 0, out.stderr
    code, _, message = out.stdout.strip().partition(" ")
    assert code == "2" and "is not installed" in message and "alexnet-deploy[export]" in message
    assert "Traceback" not in out.stdout


def test_an_unwritable_folder_names_the_option(cli, tmp_path, monkeypatch):
    """check_writable used to say "choose another --output" for --json, --summary and every other option."""
    import os

    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.fileio import check_writable

    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root ignores chmod: pretend the folder is read-only
    with pytest.raises(UserInputError, match="choose another --json$"):
        check_writable(tmp_path / "r.json", "--json")
    with pytest.raises(UserInputError, match="choose another path$"):
        check_writable(tmp_path / "r.json")
