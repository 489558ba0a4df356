"""INT8 that is right on every CPU's ONNX Runtime kernels (calibration/overflow.py).

The x86 AVX2 / AVX-512-without-VNNI kernels add pairs of UINT8 x INT8 products in a saturating int16; VNNI, AMX
and ARM64 do not. ``qemu-x86_64-static -cpu Haswell`` hides VNNI from ONNX Runtime on any x86 host, so its AVX2
kernels run here whatever CPU CI lands on (bit-exact with a real AVX2 machine). The exact reference is the same
model with no graph optimizations (QuantizeLinear/DequantizeLinear as float ops), on any CPU."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from alexnet_deploy.calibration.overflow import (SAFE_PAIR_SUM, channel_rows, fix_pair_overflow, layer_risks,
                                                 safe_levels, worst_pair)
from alexnet_deploy.calibration.run import KERNEL_GATE, calibrate
from alexnet_deploy.runtime.cpu_features import kernel_family
from alexnet_deploy.runtime.metadata import read_onnx_metadata

QEMU = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
HELD_OUT = 100  # images run under emulation (about 10 s for the 32x32 model)


def _need_qemu():
    if platform.machine() not in ("x86_64", "AMD64") or QEMU is None:
        reason = "needs qemu-x86_64-static (apt-get install qemu-user-static) on an x86_64 host"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: .ci/run installs it, so CI must have it")
        pytest.skip(reason)


def _haswell(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this interpreter under qemu-user with a Haswell CPU (AVX2, FMA; no AVX-512, no VNNI)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


_RUN_SCRIPT = """
import sys, numpy as np
from alexnet_deploy.runtime.cpu_features import kernel_family
from alexnet_deploy.runtime.machine import isa_features
from alexnet_deploy.runtime.metadata import read_onnx_metadata
from alexnet_deploy.runtime.runners.ort import OrtRunner
model, x, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
with OrtRunner(model, read_onnx_metadata(model), threads=1) as r:
    np.save(out, r.infer_batches(x, 50))
print(",".join(sorted(k for k, v in isa_features()["flags"].items() if v)))
print(kernel_family())
"""


def _ort(model: Path, x: np.ndarray, exact: bool = False) -> np.ndarray:
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    with OrtRunner(model, read_onnx_metadata(model), exact_qdq=exact) as r:
        return r.infer_batches(x, 50)


@pytest.fixture(scope="module")
def held_out(digits_onnx):
    from alexnet_deploy.calibration.data import load_calibration_set

    held = load_calibration_set("digits", read_onnx_metadata(digits_onnx), HELD_OUT, "heldout", False)
    return held.x.astype(np.float32), held.labels


@pytest.fixture(scope="module")
def int8_models(digits_onnx, tmp_path_factory):
    """The digits model calibrated on this host: ort and all placements, and ort without the fix."""
    d = tmp_path_factory.mktemp("portable")
    out = {}
    for tag, kw in {"ort": {}, "all": {"placement": "all"}, "ort-nofix": {"overflow_fix": False,
                                                                          "allow_kernel_mismatch": True}}.items():
        res = calibrate(digits_onnx, d / f"{tag}.onnx", num_images=200, eval_images=200, echo=lambda *_: None, **kw)
        out[tag] = res
    return out


# ------------------------------------------------------------------------------------------------ the bound
def test_worst_pair_pairs_neighbours_and_pads_odd_k():
    rows = np.array([[100, 29, -100, -28, 5],     # (100, 29) = 129 same sign: can saturate
                     [127, -127, 64, 64, 127],    # opposite signs and 64 + 64 = 128: safe; 127 pairs with padding
                     [1, 100, 100, 1, 0]])        # 100 + 100 straddle two pairs: safe on this pairing
    assert worst_pair(rows).tolist() == [129, 128, 101]
    assert SAFE_PAIR_SUM * 255 <= 32767 < (SAFE_PAIR_SUM + 1) * 255


def test_conv_rows_follow_onnxruntime_filter_order():
    # QLinearConv reorders (M, C, kh, kw) to (kh, kw, C) per output channel: channels innermost
    w = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    rows = channel_rows("Conv", w, {})
    assert rows[0].tolist() == [w[0, c, i, j] for i in range(2) for j in range(2) for c in range(3)]
    assert channel_rows("Gemm", np.ones((4, 6)), {"transB": 1}).shape == (4, 6)
    assert channel_rows("Gemm", np.ones((6, 4)), {}).shape == (4, 6)


def test_safe_levels_are_the_largest_safe_ones():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(32, 75))
    rows[:, 0] = rows[:, 1] = np.abs(rows).max(axis=1)  # a same-sign pair at the channel's max: worst case
    amax = np.abs(rows).max(axis=1)
    levels = safe_levels(rows, amax)
    for r, a, level in zip(rows, amax, levels):
        q = lambda lv: np.clip(np.round(r / (a / lv)), -lv, lv)[None]  # noqa: E731
        assert worst_pair(q(level))[0] <= SAFE_PAIR_SUM
        assert level == 127 or worst_pair(q(level + 1))[0] > SAFE_PAIR_SUM
    assert levels.min() >= 64 and (levels == 64).all()  # two weights at amax: only 64 + 64 fits


def test_calibrated_layers_cannot_saturate(int8_models):
    """Fails on a model calibrated without the fix (today's INT8 before this change), on any host."""
    for tag in ("ort", "all"):
        model = onnx.load(str(int8_models[tag].output))
        risks = layer_risks(model)
        assert len(risks) == 6 and max(risks.values()) <= SAFE_PAIR_SUM, (tag, risks)
    nofix = layer_risks(onnx.load(str(int8_models["ort-nofix"].output)))
    assert max(nofix.values()) > SAFE_PAIR_SUM  # the digits model has such pairs: the check can fail


def test_fix_is_recorded_and_keeps_accuracy(int8_models):
    fixed, nofix = int8_models["ort"], int8_models["ort-nofix"]
    prov = read_onnx_metadata(fixed.output).extra["calibration"]["int16_overflow_fix"]
    assert prov["layers"]["features.0"]["changed"] > 0 and "vpmaddubsw" in prov["reason"]
    assert all(64 <= v["min_level"] <= 127 for v in prov["layers"].values())
    off = read_onnx_metadata(nofix.output).extra["calibration"]["int16_overflow_fix"]
    assert off == {"applied": False, "reason": "--no-overflow-fix"}
    # what the finer-than-7-bit remedy costs, on the exact math: within a tenth of a point of 8-bit weights
    assert fixed.exact.drop <= nofix.exact.drop + 0.1 and fixed.exact.agreement >= 0.99, (fixed.exact, nofix.exact)


def test_tensorrt_placement_is_left_alone(digits_onnx, tmp_path):
    res = calibrate(digits_onnx, tmp_path / "t.onnx", num_images=64, eval_images=64, placement="tensorrt",
                    echo=lambda *_: None)
    assert res.provenance["int16_overflow_fix"]["applied"] is False


def test_fix_requantizes_only_channels_at_risk():
    from onnx import helper, numpy_helper

    q = np.zeros((3, 4, 1, 1), np.int8)
    q[0, :2, 0, 0] = [100, 100]  # at risk
    q[1, :2, 0, 0] = [100, -100]  # opposite signs: safe
    q[2, :2, 0, 0] = [64, 64]  # safe
    scale = np.array([0.5, 0.25, 1.0], np.float32)
    inits = [numpy_helper.from_array(q, "w_quantized"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(np.zeros(3, np.int8), "w_zero_point"),
             numpy_helper.from_array(np.float32(0.1), "x_scale"), numpy_helper.from_array(np.uint8(0), "x_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero_point"], ["w_dq"], axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="/features/features.0/Conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x_q", onnx.TensorProto.UINT8, [1, 4, 1, 1])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 1, 1])], inits)
    model = helper.make_model(g)
    float_w = q.astype(np.float32) * scale[:, None, None, None]
    (fix,) = fix_pair_overflow(model, {"w": float_w})
    assert (fix.layer, fix.changed, fix.min_level) == ("features.0", 1, 64)
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert w["w_quantized"][0, :2, 0, 0].tolist() == [64, 64] and w["w_scale"][0] == pytest.approx(50 / 64)
    assert (w["w_quantized"][1:] == q[1:]).all() and (w["w_scale"][1:] == scale[1:]).all()


def test_kernel_gate():
    ref = np.eye(10)[np.arange(100) % 10] * 10
    exact = ref + 0.05
    assert KERNEL_GATE.problem(exact + 0.01, exact, ref) is None
    saturated = exact.copy()
    saturated[:3] -= 4.0
    assert "max logit error" in KERNEL_GATE.problem(saturated, exact, ref)


# ------------------------------------------------------------------------------------ other CPUs' kernels
@pytest.mark.slow
def test_int8_built_here_is_exact_on_avx2_kernels(int8_models, held_out, digits_onnx, tmp_path):
    """The deployment case: INT8 built on this host, run on an AVX2-only CPU (qemu Haswell). Fails on a
    saturating model (before the fix: max logit error ~4 against ~0.1 for the exact math)."""
    _need_qemu()
    x, y = held_out
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(_RUN_SCRIPT)
    fp32 = _ort(digits_onnx, x)
    acc = lambda out: 100 * float(np.mean(out.argmax(1) == y))  # noqa: E731
    for tag in ("ort", "all"):
        model = int8_models[tag].output
        proc = _haswell(str(script), str(model), str(tmp_path / "x.npy"), str(tmp_path / f"{tag}.npy"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "x86 AVX2 without VNNI (int16 pair sums)", proc.stdout
        # the report's flags are the emulated CPU's, not the host's /proc/cpuinfo (no AVX-512 of any kind)
        assert "avx512" not in proc.stdout.strip().splitlines()[-2] and "avx2" in proc.stdout, proc.stdout
        avx2, exact = np.load(tmp_path / f"{tag}.npy"), _ort(model, x, exact=True)
        problem = KERNEL_GATE.problem(avx2, exact, fp32)
        assert problem is None, f"{tag}: {problem}"
        # held-out accuracy on the AVX2 kernels within a tenth of a point of the exact math
        assert acc(avx2) >= acc(exact) - 0.1, (tag, acc(avx2), acc(exact))


@pytest.mark.slow
def test_calibrate_on_an_avx2_host(digits_onnx, tmp_path):
    """alexnet-calibrate itself on an AVX2-only CPU: with the fix it writes a model whose AVX2 run matches the
    exact math; without it, it sees the saturation, says so in one line and writes nothing (exit 1)."""
    _need_qemu()
    cli = [str(Path(sys.executable).parent / "alexnet-calibrate"), str(digits_onnx), "--num-images", "100",
           "--eval-images", "100"]
    ok = _haswell(*cli, "-o", str(tmp_path / "ok.onnx"), "--json", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "ok.json").read_text())["provenance"]["int16_overflow_fix"]["layers"]
    extra = read_onnx_metadata(tmp_path / "ok.onnx").extra
    assert extra["int8_evaluation"]["kernels"] == "x86 AVX2 without VNNI (int16 pair sums)"
    assert extra["int8_evaluation_exact_qdq"]["kernel_mismatch"] is None
    bad = _haswell(*cli, "-o", str(tmp_path / "bad.onnx"), "--no-overflow-fix")
    err = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert bad.returncode == 1 and len(err) == 1 and "int16 saturation on this CPU" in err[0], bad.stderr[-2000:]
    assert not (tmp_path / "bad.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_kernel_family_names_this_host():
    fam = kernel_family()
    assert fam.split()[0] in ("x86", "arm64", platform.machine().lower())
    assert kernel_family(frozenset({"avx2", "fma"}), "x86_64") == "x86 AVX2 without VNNI (int16 pair sums)"
    assert kernel_family(frozenset({"avx2", "avx512bw", "avx512_vnni"}), "x86_64") == "x86 AVX-512 VNNI"
    assert kernel_family(frozenset({"asimd", "asimddp"}), "aarch64") == "arm64 NEON dot-product"
