"""Units in names: percentages end in _pct, fractions are fractions (parity and calibrate JSON)."""
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


def test_percentages_are_named_pct_and_fractions_are_fractions(cli, small_onnx, tmp_path):
    code, out, err = cli(parity_main, small_onnx, "--num-images", "20", "--random-samples", "2",
                         "--json", tmp_path / "p.json", "--junit", tmp_path / "p.xml")
    assert code in (0, 1), err
    sets = json.loads((tmp_path / "p.json").read_text())["sets"]
    labelled = next(s for s in sets if s["name"].startswith("digits"))["metrics"]
    assert {"ref_accuracy_pct", "cand_accuracy_pct", "accuracy_delta_pct", "accuracy_drop_pct"} <= set(labelled)
    assert not [k for k in labelled if "accuracy" in k and not k.endswith("_pct")]
    assert 0 <= labelled["top1_agreement"] <= 1 and 0 <= labelled["top5_overlap"] <= 1
    assert "ref_accuracy_pct" in (tmp_path / "p.xml").read_text() and "ref_accuracy_pct" in out
    code, out, err = cli(calibrate_main, small_onnx, "-o", tmp_path / "q.onnx", "--num-images", "16",
                         "--eval-images", "16", "--json", tmp_path / "c.json")
    assert code == 0, err
    row = json.loads((tmp_path / "c.json").read_text())["chosen"]
    assert {"fp32_accuracy_pct", "int8_accuracy_pct", "drop_pct", "top1_agreement"} <= set(row)
    assert row["drop_measure"] == "accuracy" and 0 <= row["top1_agreement"] <= 1
    assert not [k for k in row if "accuracy" in k and not k.endswith("_pct")]
