"""The step registry of alexnet-deploy (deploy/plan.py STEP_KINDS, filled by deploy/steps.py's @register_step):
each kind owns its planned steps, cache key, command and run; nothing else branches on the kind."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from alexnet_deploy.deploy.plan import (DeployOptions, Step, StepKind, kind_of, plan_steps, register_step,
                                        step_kinds)


def _opts(tmp_path: Path, **kw) -> DeployOptions:
    return DeployOptions(weights=tmp_path / "w.pt", out=tmp_path / "dep", dataset="digits", **kw)


def test_every_kind_is_registered_once_in_plan_order():
    kinds = step_kinds()
    assert list(kinds) == ["export", "calibrate", "trt", "golden", "parity", "bench", "triton"]
    assert [k for k, v in kinds.items() if v.writes_artifact] == ["export", "calibrate", "trt", "golden", "triton"]
    assert {k for k, v in kinds.items() if v.reads_weights} == {"export", "golden"}
    with pytest.raises(ValueError, match="registered twice"):
        register_step("export")(type("Again", (StepKind,), {}))


def test_a_new_kind_is_one_class(tmp_path, monkeypatch):
    """A registered class is planned (after the kinds before it) and run through the registry, with no edit
    anywhere else."""
    kinds = step_kinds()
    monkeypatch.setattr("alexnet_deploy.deploy.plan.STEP_KINDS", dict(kinds))  # undone after the test

    @register_step("notes")
    class Notes(StepKind):
        def plan(self, opts, engines, models):
            return [Step("notes", self.name, "notes", needs=tuple(models[:1]))]

        def command(self, ctx, step):
            return "echo notes"

    steps = plan_steps(_opts(tmp_path, precisions=("fp32",), targets=("onnx",)), ("ort",))
    assert steps[-1] == Step("notes", "notes", "notes", needs=("onnx-fp32",))
    assert isinstance(kind_of(steps[-1]), Notes) and kind_of(steps[-1]).writes_artifact
    assert "notes" not in kinds  # the real registry is untouched


def test_commands_come_from_the_kinds(tmp_path):
    from alexnet_deploy.deploy.steps import Context, command

    opts = _opts(tmp_path)
    ctx = Context(opts, "0" * 64, {"name": "digits"}, ("torch", "ort", "trt"))
    steps = {s.name: s for s in plan_steps(opts, ctx.engines)}
    assert command(ctx, steps["export fp16"]).startswith("alexnet-export onnx --weights ../w.pt")
    assert "--fp16" in shlex.split(command(ctx, steps["export fp16"]))
    cal = shlex.split(command(ctx, steps["calibrate int8"]))
    assert cal[0] == "alexnet-calibrate" and cal[cal.index("--placement") + 1] == "ort"
    trt = command(ctx, steps["trt int8"])  # TensorRT's placement, calibrated into the engine's folder first
    first, second = trt.split(" && ")
    assert "--placement tensorrt" in first and second.startswith("alexnet-export trt trt-int8/model.int8.onnx")
    assert command(ctx, steps["parity onnx-int8 ort"]).startswith("alexnet-parity onnx-int8/model.onnx --engine ort")
    assert command(ctx, steps["bench pytorch"]).startswith("alexnet-bench ../w.pt --engine torch")
    assert kind_of(steps["parity onnx-int8 ort"]).record_name(steps["parity onnx-int8 ort"]) == \
        "onnx-int8.ort.parity.json"
    assert kind_of(steps["bench pytorch"]).record_name(steps["bench pytorch"]) == "pytorch.bench.json"


def test_runners_view_replaces_a_kinds_run(monkeypatch):
    from alexnet_deploy.deploy import steps

    kind = step_kinds()["golden"]
    assert set(steps.RUNNERS) == {"export", "calibrate", "trt", "triton", "golden"}
    assert steps.RUNNERS["golden"] == kind.run
    with pytest.raises(KeyError):
        steps.RUNNERS["parity"]  # a check kind has no run into a staging folder

    def hook(ctx, step, stage):
        return {"hooked": True}

    monkeypatch.setitem(steps.RUNNERS, "golden", hook)
    assert kind.run(None, None, None) == {"hooked": True}
