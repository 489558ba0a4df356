"""Calibration's stages without a model: the options dataclass (the one place a QuantConfig is made), the
greedy search shared by INT8 and INT4, the placement rule and CalibrationResult.to_dict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alexnet_deploy.calibration.evaluate import Evaluation
from alexnet_deploy.calibration.placement import Placement, placement_for
from alexnet_deploy.calibration.qdq import Method
from alexnet_deploy.calibration.run import CalibrationOptions, CalibrationResult
from alexnet_deploy.calibration.search import keep_until_within, needs_search
from alexnet_deploy.errors import UserInputError


def _ev(drop: float, kept=()) -> Evaluation:
    return Evaluation("minmax", list(kept), 90.0, 90.0 - drop, 1.0 - drop / 100)


def test_search_keeps_the_ranked_layers_until_the_budget_fits():
    cost = {"a": 3.0, "b": 1.0, "c": 0.5}  # what each layer costs while it stays quantized
    built, lines = [], []

    def build(kept):
        built.append(list(kept))
        return Path("/".join(kept)), _ev(sum(v for k, v in cost.items() if k not in kept), kept)

    start = (Path("all"), _ev(sum(cost.values())))
    assert needs_search(start[1], 1.0) and not needs_search(start[1], None) and not needs_search(start[1], 4.5)
    kept, path, ev = keep_until_within(["a", "b", "c"], build, 1.0, start, "float", lines.append)
    assert kept == ["a", "b"] and built == [["a"], ["a", "b"]] and path == Path("a/b") and ev.drop == 0.5
    assert lines == ["  keeping a in float: drop +1.50 pts", "  keeping a, b in float: drop +0.50 pts"]
    # a budget that cannot be met: every layer is tried, the last one built is returned
    kept, _, ev = keep_until_within(["a", "b", "c"], build, -1.0, start, "INT8", lines.append)
    assert kept == ["a", "b", "c"] and ev.drop == 0.0 and lines[-1].endswith("in INT8: drop +0.00 pts")
    assert keep_until_within([], build, 1.0, start, "float", lines.append) == ([], *start)  # nothing to keep


def test_options_make_every_quant_config():
    opts = CalibrationOptions(placement="tensorrt", percentile=99.9, overflow_fix=False)
    cfg = opts.config(Method.ENTROPY, ["features.0"])
    assert (cfg.method, cfg.percentile, cfg.keep_float, cfg.placement, cfg.overflow_fix) == \
        (Method.ENTROPY, 99.9, ["features.0"], Placement.TENSORRT, False)
    assert CalibrationOptions(method="auto").methods == list(Method)
    for bad, match in (({"percentile": 0}, "--percentile"), ({"method": "kl"}, "unknown calibration method"),
                       ({"placement": "everywhere"}, "unknown Q/DQ placement")):
        with pytest.raises(UserInputError, match=match):
            CalibrationOptions(**bad).validate()


def test_placement_for_each_target():
    assert placement_for("onnx") is Placement.ORT and placement_for("triton") is Placement.ORT
    assert placement_for("trt") is Placement.TENSORRT and placement_for("tensorrt") is Placement.TENSORRT
    assert json.dumps({"placement": Placement.TENSORRT}) == '{"placement": "tensorrt"}'
    assert f"{Placement.ORT}" == "ort" and str(Placement.ALL) == "all"
    with pytest.raises(UserInputError, match="unknown deployment target"):
        placement_for("openvino")


def test_result_to_dict_is_the_json(tmp_path):
    res = CalibrationResult(tmp_path / "q.onnx", _ev(0.5, ["classifier.6"]), [_ev(1.0)], [{"layer": "x"}],
                            {"method": "minmax"}, {"minmax": {"t": 1.0}}, {"QuantizeLinear": 3})
    d = res.to_dict()
    assert d == {"output": str(tmp_path / "q.onnx"), "chosen": res.chosen.row(), "tried": [res.tried[0].row()],
                 "sensitivity": [{"layer": "x"}], "provenance": {"method": "minmax"},
                 "qdq_nodes": {"QuantizeLinear": 3}}
    assert json.loads(json.dumps(d)) == d and d["chosen"]["kept_float"] == ["classifier.6"]


def test_cli_placement_choices_are_the_enum():
    from alexnet_deploy.cli.calibrate import PLACEMENT_CHOICES, _placement

    assert PLACEMENT_CHOICES == tuple(p.value for p in Placement)
    assert _placement(None, None, "tensorrt") is Placement.TENSORRT and _placement(None, None, None) is None
