"""Layers that point one way: every import in the package (module level and inside functions, read with ast, not
run) goes to the same folder or to a lower layer. A new upward import fails here, naming the file and line.

The order, lowest first. A folder may import its own modules and any folder of a lower layer, never one of its
own layer or above (the small modules of layer 0 may import each other):

  0  the package root (``__version__`` and the lazy top-level API), errors, fileio, deps, onnxgraph
  1  models       architectures, weights, the variant registry
  2  runtime      metadata, preprocessing, runners (what runs on the target, without torch)
  3  data         datasets (reads the variant's classes and the runtime's preprocessing)
  4  calibration  INT8/INT4 ranges, QDQ placement (ONNX graph work through onnxgraph)
  5  training
  6  parity       comparison, tolerances, golden sets
  7  exporter     ONNX / TensorRT / DeepStream export (gates an export with parity before writing)
  8  benchmarks
  9  server, stream   the services that run a model
  10 deploy       the pipeline that composes every step
  11 demo, studies  make demo; the research scripts behind docs/benchmarks/
  12 cli, __main__

``EXCEPTIONS`` lists the upward imports that remain, each with its reason; each names the file and the module it
imports, so nothing else may follow it, and an entry whose import is gone fails too (delete it then). runtime/,
calibration/ and models/ have none."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "alexnet_deploy"

LAYERS = {
    "": 0, "errors": 0, "fileio": 0, "deps": 0, "onnxgraph": 0,
    "models": 1, "schemas": 1,
    "runtime": 2,
    "data": 3,
    "calibration": 4,
    "training": 5,
    "parity": 6,
    "exporter": 7,
    "benchmarks": 8,
    "server": 9, "stream": 9,
    "deploy": 10,
    "demo": 11, "studies": 11,
    "cli": 12, "__main__": 12,
}

# (importing file, imported module or package) -> why it is still allowed
EXCEPTIONS = {
}


def _folder(module: str) -> str:
    """``alexnet_deploy.runtime.runners.base`` -> ``runtime``; the root and its plain modules by their name."""
    parts = module.split(".")
    return "" if len(parts) == 1 else parts[1]


def _module_name(path: Path, pkg: Path = PKG) -> tuple[str, str]:
    """(the module's dotted name, the package its relative imports start from)."""
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports_of(path: Path, pkg: Path = PKG) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in ``path``, at any depth (function bodies,
    ``if TYPE_CHECKING`` blocks, try/except). ``from alexnet_deploy.x import y`` counts as ``alexnet_deploy.x.y``
    (y may be a module), which reaches the same folder."""
    _, package = _module_name(path, pkg)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module:
                found.append((node.lineno, module))
            else:  # from . import x
                found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return sorted((line, m) for line, m in found if m == "alexnet_deploy" or m.startswith("alexnet_deploy."))


@functools.lru_cache(maxsize=None)
def upward_imports(pkg: Path = PKG) -> tuple[tuple[str, int, str], ...]:
    """(file relative to the package, line, module) of every import of a folder at the importer's layer or
    above (its own folder excepted)."""
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        module, _ = _module_name(path, pkg)
        src = _folder(module)
        for line, target in imports_of(path, pkg):
            dst = _folder(target)
            low, high = LAYERS.get(src, -1), LAYERS.get(dst, 99)  # unknown folders: see the test below
            if dst != src and (high > low or (high == low and low > 0)):  # layer 0 modules may use each other
                bad.append((path.relative_to(pkg).as_posix(), line, target))
    return tuple(bad)


def test_every_folder_has_a_layer():
    """A new folder or top-level module gets its place in the order (here, and in the docstring above)."""
    names = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    names |= {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert names - set(LAYERS) == set(), "give these a layer in tests/project/test_layering.py"


def _excepted(f: str, m: str) -> tuple[str, str] | None:
    return next((k for k in EXCEPTIONS if k[0] == f and (m == k[1] or m.startswith(k[1] + "."))), None)


def test_imports_point_down():
    bad = [(f, line, m) for f, line, m in upward_imports() if _excepted(f, m) is None]
    assert not bad, "upward imports (a folder imports one at its own layer or above):\n" + "\n".join(
        f"  alexnet_deploy/{f}:{line} imports {m}" for f, line, m in bad)


def test_exceptions_are_still_needed():
    present = {_excepted(f, m) for f, _, m in upward_imports()}
    stale = [k for k in EXCEPTIONS if k not in present]
    assert not stale, f"these upward imports are gone; delete their EXCEPTIONS entries: {stale}"


@pytest.mark.parametrize("folder", ["runtime", "calibration"])
def test_runtime_and_calibration_have_no_exception(folder):
    assert not [k for k in EXCEPTIONS if k[0].startswith(folder + "/")]


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: an upward import inside a function, a relative one and a ``from . import`` are found;
    a downward one is not."""
    pkg = tmp_path / "alexnet_deploy"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "exporter").mkdir()
    for d in (pkg, pkg / "runtime", pkg / "exporter"):
        (d / "__init__.py").write_text("")
    (pkg / "runtime" / "a.py").write_text(
        "from alexnet_deploy.errors import UserInputError\n"
        "def f():\n    from alexnet_deploy.exporter.tensorrt import build_engine\n"
        "from ..exporter import naming\n"
        "from .. import exporter\n")
    (pkg / "exporter" / "b.py").write_text("from alexnet_deploy.runtime.metadata import ModelMetadata\n")
    assert upward_imports(pkg) == (("runtime/a.py", 3, "alexnet_deploy.exporter.tensorrt"),
                                   ("runtime/a.py", 4, "alexnet_deploy.exporter"),
                                   ("runtime/a.py", 5, "alexnet_deploy.exporter"))


def test_stale_engine_rebuild_needs_a_builder_passed_in(tmp_path):
    """runtime/ never imports the exporter, so --rebuild-if-stale is a builder the caller wires in (the CLI passes
    alexnet_deploy.exporter.rebuild.rebuild_engine); asking for a rebuild without one is one typed line."""
    from alexnet_deploy.errors import UserInputError
    from alexnet_deploy.runtime.runners.factory import open_runner

    (tmp_path / "e.plan").write_bytes(b"\0" * 16)
    with pytest.raises(UserInputError, match="rebuild_if_stale needs a rebuild callable"):
        open_runner(tmp_path / "e.plan", rebuild_if_stale=True)


def test_pyav_is_an_optional_dependency_of_deps(monkeypatch):
    """stream/sinks.py takes PyAV through deps.require (not stream/sources.py's private helper): a missing PyAV
    is one line naming the [stream] extra and what it is for."""
    import sys

    from alexnet_deploy.deps import require
    from alexnet_deploy.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError, as where PyAV is not installed
    with pytest.raises(MissingDependencyError) as err:
        require("av")
    assert "alexnet-deploy[stream]" in str(err.value) and "video files" in str(err.value)
    assert "_require_av" not in (PKG / "stream" / "sinks.py").read_text()
