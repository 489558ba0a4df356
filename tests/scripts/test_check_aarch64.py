"""The pieces of `make check-aarch64` that run without an arm64 root: emulation detection in the bench output
and the x86-vs-aarch64 comparison of scripts/aarch64_reference.py (the full check is run by hand; docs/jetson.md)."""
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.benchmarks import report
from alexnet_deploy.runtime import machine

ROOT = Path(__file__).parents[2]


def _reference_module():
    spec = importlib.util.spec_from_file_location("aarch64_reference", ROOT / "scripts" / "aarch64_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_emulation_is_detected_and_shown(monkeypatch):
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    assert machine.emulation() is None
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64")
    host_cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "vendor_id" not in host_cpuinfo:
        pytest.skip("needs an x86 host's /proc/cpuinfo")
    assert machine.emulation() == "qemu-user"  # an aarch64 process reading an x86 cpuinfo: qemu-user
    result = {"machine": {"cpu": "x", "cores": 2, "machine": "aarch64", "emulated": "qemu-user"}, "rows": []}
    assert "EMULATED aarch64 (qemu-user)" in report.table(result).splitlines()[0]
    result["machine"]["emulated"] = None
    assert "EMULATED" not in report.table(result)


def test_reference_comparison_gates_logits(tmp_path):
    ref = _reference_module()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 10))
    labels = [str(i) for i in range(10)]
    files = ["a.png", "b.png", "c.png"]

    def write(name, z, machine_name):
        (tmp_path / name).write_text(json.dumps({"machine": machine_name, "files": files, "logits": z.tolist(),
                                                 "top1": [labels[i] for i in z.argmax(1)]}))

    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predict = {"results": [{"image": f"/x/{f}", "top": [{"index": int(i), "label": labels[i], "probability": float(p[i])}
                                                      for i in np.argsort(-p)]} for f, p in zip(files, probs)]}
    (tmp_path / "pred.json").write_text(json.dumps(predict))
    write("x86.json", logits, "x86_64")
    write("arm.json", logits + 5e-6, "aarch64")
    ref.compare(str(tmp_path / "x86.json"), str(tmp_path / "arm.json"), str(tmp_path / "pred.json"))
    write("arm.json", logits + 5e-4, "aarch64")  # beyond LOGIT_TOLERANCE
    with pytest.raises(SystemExit, match="logits differ"):
        ref.compare(str(tmp_path / "x86.json"), str(tmp_path / "arm.json"), str(tmp_path / "pred.json"))
    write("arm.json", logits, "x86_64")  # computed on the wrong machine
    with pytest.raises(SystemExit, match="computed on x86_64"):
        ref.compare(str(tmp_path / "x86.json"), str(tmp_path / "arm.json"), str(tmp_path / "pred.json"))


def test_check_script_parses_and_has_a_make_target():
    script = ROOT / "scripts" / "check_aarch64.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "check-aarch64:" in (ROOT / "Makefile").read_text()


def test_int8_tolerance_comes_from_the_last_layers_quantization_steps(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ref = _reference_module()
    w = np.array([[10, -127], [64, 3]], dtype=np.int8)
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "ws"),
             numpy_helper.from_array(np.array([0, 0], np.int8), "wz"),
             numpy_helper.from_array(np.array(0.5, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.uint8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Gemm", ["xd", "wd"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "q.onnx")
    info = ref.int8_logit_step(str(tmp_path / "q.onnx"))
    assert info["max_abs_weight"] == pytest.approx(1.28) and info["step"] == pytest.approx(0.5 * 1.28)  # 64 x 0.02 (per row)
    tol, how = ref.int8_logit_tolerance(str(tmp_path / "q.onnx"))
    assert tol == pytest.approx(ref.INT8_STEPS * 0.64) and "INT8" in how
    assert ref.int8_logit_tolerance(None)[0] == ref.LOGIT_TOLERANCE
