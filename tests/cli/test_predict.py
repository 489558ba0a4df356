"""alexnet-predict on hostile images: corrupt files skipped, decompression bombs refused, one line each."""
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


def test_predict_skips_bad_images_and_refuses_bombs(cli, small_onnx, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a_good.png")
    _png_header_only(folder / "b_bomb.png", 12000, 12000)  # 140 KB as a real PNG, 432 MB decoded
    (folder / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    Image.new("RGB", (20, 20)).save(folder / "d_good.png")
    code, out, err = cli(predict_main, small_onnx, folder, "--json")
    assert code == 2 and "Traceback" not in err
    res = json.loads(out)
    assert [Path(r["image"]).name for r in res["results"]] == ["a_good.png", "d_good.png"]
    assert [Path(p).name for p in res["skipped"]] == ["b_bomb.png", "c_corrupt.jpg"]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "144.0 MP, over the limit of 50 MP" in lines[0] and "--max-pixels" in lines[0]
    assert "c_corrupt.jpg" in lines[1] and "2 of 4 images" in lines[2]
    # one image: the bomb is the command's one-line error; a lower limit applies to any image
    code, _, err = cli(predict_main, small_onnx, folder / "b_bomb.png")
    assert code == 2 and "over the limit" in err and _one_line(err)
    _png_header_only(tmp_path / "huge.png", 20000, 20000)  # beyond Pillow's own bomb limit
    code, _, err = cli(predict_main, small_onnx, tmp_path / "huge.png")
    assert code == 2 and "too large" in err and _one_line(err)
    code, _, err = cli(predict_main, small_onnx, folder / "a_good.png", "--max-pixels", "100")
    assert code == 2 and "40x30" in err and "over the limit of 0.0001 MP" in err and _one_line(err)
