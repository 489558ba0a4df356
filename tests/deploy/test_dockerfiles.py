"""deploy/docker/Dockerfile.cpu and .gpu (issue 21 §4), parsed with dockerfile-parse (no Docker daemon here):
multi-stage, a non-root final USER, a HEALTHCHECK on the server's real ready route, only the serving extras, and an
ENTRYPOINT whose every option alexnet-serve's own parser accepts."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="parses the Dockerfiles ([dev] extra)")

EXTRAS = {"Dockerfile.cpu": {"runtime", "serve"}, "Dockerfile.gpu": {"serve", "gpu"}}


def _instructions(path: Path) -> list[tuple[str, str]]:
    import io

    parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))  # reads, never writes
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


def _serve_params(argv: list[str]) -> dict:
    from alexnet_deploy.cli.serve import serve_cmd

    ctx = serve_cmd.make_context("alexnet-serve", list(argv), resilient_parsing=False)
    return ctx.params


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_dockerfile_shape(name):
    ins = _instructions(DOCKER / name)
    froms = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    assert len(froms) >= 2, "multi-stage: wheels built in a stage of their own"
    final = ins[froms[-1]:]
    users = [v for k, v in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users

    # only the serving extras, and no PyTorch / build extras anywhere in the file
    pips = [m for k, v in ins if k == "RUN" for m in re.findall(r"\bpip (?:install|wheel)\b[^&]*", v)]
    extras = {e for v in pips for group in re.findall(r"alexnet-deploy\[([^\]]+)\]|\"\.\[([^\]]+)\]\"", v)
              for e in ",".join(group).split(",") if e}
    assert extras == EXTRAS[name], extras
    assert not re.search(r"\btorch\b|\[export|\[build|\[dev", " ".join(pips))

    # the final stage's base: python slim (CPU), NVIDIA's CUDA runtime with cuDNN (GPU)
    args = dict(v.split("=", 1) for k, v in ins if k == "ARG" and "=" in v)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ins[froms[-1]][1])
    if name.endswith(".gpu"):
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base), base
    else:
        assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base

    entry = json.loads(next(v for k, v in final if k == "ENTRYPOINT"))
    cmd = json.loads(next(v for k, v in final if k == "CMD"))
    assert entry[0] == "alexnet-serve" and cmd == ["/models"], (entry, cmd)
    params = _serve_params(entry[1:] + cmd)  # alexnet-serve's real parser: an unknown option raises
    assert params["host"] == "0.0.0.0" and params["name"] == "auto" and params["model"] == "/models"
    expose = {int(p) for k, v in final if k == "EXPOSE" for p in v.split()}
    assert expose == {params["port"], params["grpc_port"]} == {8080, 8081}
    if name.endswith(".gpu"):
        from alexnet_deploy.runtime.engines import ONNX_ENGINES

        assert params["engine"] == "ort-cuda" and params["engine"] in ONNX_ENGINES
    assert any(k == "WORKDIR" and v == "/models" for k, v in final)

    health = next(v for k, v in final if k == "HEALTHCHECK")
    assert "CMD" in health and "curl" not in health and "wget" not in health
    url = re.search(r"urllib\.request\.urlopen\('http://127\.0\.0\.1:(\d+)(/[^']+)'", health)
    assert url and int(url[1]) == params["port"] and url[2] == "/v2/health/ready", health
    probe = json.loads(health.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    assert shlex.split(health)


def test_entrypoint_options_are_in_alexnet_serve_help():
    """The options the images pass are the ones `alexnet-serve --help` lists (the installed CLI)."""
    from click.testing import CliRunner

    from alexnet_deploy.cli.serve import serve_cmd

    help_text = CliRunner().invoke(serve_cmd, ["--help"]).output
    for name in EXTRAS:
        entry = json.loads(next(v for k, v in _instructions(DOCKER / name) if k == "ENTRYPOINT"))
        for opt in (a for a in entry[1:] if a.startswith("--")):
            assert re.search(rf"(^|\s|,){re.escape(opt)}\b", help_text), (name, opt)


def test_legacy_dockerfile_is_the_cpu_image():
    """deploy/docker/Dockerfile stays for existing scripts and tests; it builds what Dockerfile.cpu builds."""
    legacy = [(k, v) for k, v in _instructions(DOCKER / "Dockerfile")]
    assert legacy == _instructions(DOCKER / "Dockerfile.cpu")


def test_the_checker_catches_a_root_user_and_extra_extras(tmp_path):
    text = (DOCKER / "Dockerfile.cpu").read_text()
    bad = tmp_path / "Dockerfile.cpu"
    bad.write_text(text.replace("USER 10001:10001", "USER root"))
    ins = _instructions(bad)
    assert [v for k, v in ins if k == "USER"] == ["root"]
    bad.write_text(text.replace('"alexnet-deploy[runtime,serve]"', '"alexnet-deploy[runtime,serve,export]"'))
    pips = " ".join(v for k, v in _instructions(bad) if k == "RUN")
    assert "[runtime,serve,export]" in pips


# The python3 each Ubuntu LTS ships (its python3 package): wheels built in one stage must fit the other's interpreter.
UBUNTU_PYTHON3 = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_the_wheels_are_built_for_the_final_stage_python(name):
    ins = _instructions(DOCKER / name)
    args = dict(re.match(r"(\w+)=(\S+)", v).groups() for i, v in ins if i == "ARG" and "=" in v)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], v.split()[0]) for i, v in ins if i == "FROM"]
    build = re.fullmatch(r"python:(3\.\d+)[-\w]*", froms[0])
    assert build, f"{name}: the build stage should be an official python image, not {froms[0]}"
    final = froms[-1]
    if final.startswith("python:"):
        assert final.split(":")[1].startswith(build.group(1) + "-"), (froms[0], final)
        return
    ubuntu = re.search(r"ubuntu(\d\d\.\d\d)$", final)
    assert ubuntu and ubuntu.group(1) in UBUNTU_PYTHON3, f"{name}: unknown final base {final}"
    assert UBUNTU_PYTHON3[ubuntu.group(1)] == build.group(1), (
        f"{name}: wheels built with Python {build.group(1)} but {final} runs python3 {UBUNTU_PYTHON3[ubuntu.group(1)]}")
