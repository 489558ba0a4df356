"""Provenance on disk: reference weights resolve from anywhere, hashes name bytes that exist."""
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


def test_reference_weights_resolve_from_anywhere(tmp_path, monkeypatch):
    import shutil

    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.models.weights import load_model, save_checkpoint
    from alexnet_deploy.parity.api import check_parity

    (tmp_path / "proj" / "models").mkdir(parents=True)
    save_checkpoint(tmp_path / "proj" / "w.pt", load_model("cifar10", "random", seed=3))
    monkeypatch.chdir(tmp_path / "proj")
    export_onnx(load_model(None, "w.pt"), "models/m.onnx", ExportOptions(check=False, simplify=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = check_parity(str(tmp_path / "proj" / "models" / "m.onnx"), dataset=None, random_samples=4)
    assert report.passed
    # moved together (the absolute path is gone): the relative path still finds the weights
    shutil.move(tmp_path / "proj", tmp_path / "moved")
    assert check_parity(str(tmp_path / "moved" / "models" / "m.onnx"), dataset=None, random_samples=4).passed
    # replaced weights are noticed through the sha256
    save_checkpoint(tmp_path / "moved" / "w.pt", load_model("cifar10", "random", seed=4))
    with pytest.raises(ModelLoadError, match="changed since export"):
        check_parity(str(tmp_path / "moved" / "models" / "m.onnx"), dataset=None, random_samples=4)


def test_derived_models_hash_only_bytes_on_disk(tmp_path, cli, small_onnx):
    """A direct FP16 export saves no FP32 file, so it names none (fp32_onnx_sha256 is empty, and the metadata
    says why); an INT8 model calibrated from a saved FP32 file names that file's sha256."""
    from alexnet_deploy.exporter.onnx_export import ExportOptions, export_onnx
    from alexnet_deploy.fileio import sha256_file
    from alexnet_deploy.models.weights import load_model, save_checkpoint
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    save_checkpoint(tmp_path / "w.pt", load_model("cifar10", "random"))
    meta = export_onnx(load_model(None, str(tmp_path / "w.pt")), tmp_path / "h.onnx",
                       ExportOptions(fp16=True, check=False, simplify=False)).metadata
    assert meta.precision == "fp16" and meta.source_sha256 == sha256_file(tmp_path / "w.pt")
    assert meta.fp32_onnx_sha256 == ""
    assert "not saved" in meta.extra["converted_from"]
    code, _, err = cli(calibrate_main, small_onnx, "-o", tmp_path / "q.onnx", "--num-images", "16",
                       "--eval-images", "16")
    assert code == 0, err
    meta8 = read_onnx_metadata(tmp_path / "q.onnx")
    assert meta8.precision == "int8" and meta8.fp32_onnx_sha256 == sha256_file(small_onnx)
