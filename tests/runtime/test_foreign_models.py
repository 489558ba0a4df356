"""Models alexnet-deploy did not export: wrong output shapes refused where the runner opens them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.cli import calibrate_main, export_main, parity_main, predict_main
from alexnet_deploy.errors import DatasetError, ModelLoadError, UserInputError
from alexnet_deploy.fileio import refuse_overlapping_paths
from helpers import FACES, foreign_onnx as _foreign_onnx, one_line as _one_line, png_header_only as _png_header_only


@pytest.mark.parametrize("four_d, message", [(True, "outputs shape (N, 3, 32, 32), not (N, 10)"),
                                             (False, "outputs 3 classes but variant 'cifar10' has 10")])
def test_foreign_model_outputs_are_refused_when_opened(cli, tmp_path, four_d, message):
    model = _foreign_onnx(tmp_path / "foreign.onnx", four_d)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code, out, err = cli(predict_main, model, tmp_path / "x.png", "--variant", "cifar10")
    assert code == 2 and message in err and _one_line(err), err
    assert out == ""


def test_runner_checks_output_shape_at_inference(small_onnx):
    """A dynamic output dimension is checked on the first result."""
    from alexnet_deploy.errors import InferenceError
    from alexnet_deploy.runtime.metadata import read_onnx_metadata
    from alexnet_deploy.runtime.runners.ort import OrtRunner

    meta = read_onnx_metadata(small_onnx)
    meta.class_names = meta.class_names[:7]
    runner = OrtRunner(small_onnx, meta)
    with pytest.raises(ModelLoadError, match="outputs 10 classes but its metadata lists 7"):
        runner.activate()
    runner = OrtRunner(small_onnx, read_onnx_metadata(small_onnx))
    with runner:
        runner.metadata = read_onnx_metadata(small_onnx)
        runner.metadata.class_names = ["a", "b"]
        with pytest.raises(InferenceError, match=r"returned shape \(1, 10\)"):
            runner.infer(np.zeros((1, 3, 32, 32), np.float32))
