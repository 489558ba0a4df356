"""fileio: output paths that are inputs (symlinks and .. resolved) are refused."""
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


def test_refuse_overlapping_paths_resolves_symlinks(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "link.json").symlink_to(model)
    with pytest.raises(UserInputError, match="--json .*link.json is the same file as the model"):
        refuse_overlapping_paths(inputs={"the model": model}, outputs={"--json": tmp_path / "link.json"})
    with pytest.raises(UserInputError, match="are the same file"):
        refuse_overlapping_paths(outputs={"--json": tmp_path / "a.json", "--junit": tmp_path / "sub/../a.json"})
    refuse_overlapping_paths(inputs={"the model": model, "--reference": None},
                             outputs={"--json": tmp_path / "r.json", "--junit": None})
