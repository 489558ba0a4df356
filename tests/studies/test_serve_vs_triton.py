"""The serve-vs-Triton study's ONNX Runtime ceiling (the study itself needs PyTriton and is not run by pytest)."""
from __future__ import annotations

import pytest


def test_ort_ceiling_measures_each_batch(tmp_path):
    pytest.importorskip("onnx")
    from helpers import make_model

    from alexnet_deploy.studies.serve_vs_triton import ort_ceiling

    model = make_model(tmp_path / "small.onnx")
    got = ort_ceiling(model, 1, [1, 4], seconds=0.05)
    assert sorted(got) == [1, 4] and all(v > 0 for v in got.values()), got
