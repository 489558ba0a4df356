"""Datasets meet models by class: ImageFolder splits, class mismatches, the recorded training dataset."""
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


def test_image_folder_val_is_labelled_from_train(faces):
    from alexnet_deploy.data.datasets import load_dataset

    held = load_dataset(str(faces), "heldout")
    assert held.class_names == FACES and held.labels.tolist() == [1] * 4
    train = load_dataset(str(faces), "train")
    assert train.class_names == FACES and sorted(set(train.labels.tolist())) == [0, 1]
    assert held.root == train.root == str(faces.resolve())


def test_val_class_missing_from_train_is_an_error(tmp_path):
    from alexnet_deploy.data.datasets import load_dataset

    for split, c in (("train", "a"), ("val", "b")):
        (tmp_path / split / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / c / "x.png")
    with pytest.raises(DatasetError, match="class folders that .*train lacks: b"):
        load_dataset(str(tmp_path), "heldout")


def test_dataset_for_model_defaults_and_mismatches(faces):
    from alexnet_deploy.data.datasets import dataset_for_model, labels_for_model, load_dataset

    digits = [str(i) for i in range(10)]
    assert dataset_for_model(None, digits) == "digits"
    assert dataset_for_model(None, [f"class_{i}" for i in range(10)]) == "digits"  # unnamed classes
    assert dataset_for_model(None, FACES, str(faces)) == str(faces)
    assert dataset_for_model("none", FACES) is None
    with pytest.raises(UserInputError, match="not digits and its metadata records no training dataset; pass --x"):
        dataset_for_model(None, FACES, "folder:train", option="--x")
    with pytest.raises(DatasetError, match="dataset digits has classes the model does not know"):
        dataset_for_model("digits", FACES)
    with pytest.raises(DatasetError, match="which is not here"):
        dataset_for_model(None, FACES, str(faces / "gone"))
    only_nonface = load_dataset(str(faces / "val"), "all")  # a folder holding one of the model's classes
    assert only_nonface.class_names == ["nonface"]
    assert labels_for_model(only_nonface, FACES).tolist() == [1] * 4  # mapped by name


def test_face_model_never_meets_digits_silently(cli, face_onnx, faces, tmp_path):
    code, _, err = cli(parity_main, face_onnx, "--num-images", "8", "--random-samples", "2")
    assert code == 2 and "pass --dataset FOLDER" in err and _one_line(err), err
    code, _, err = cli(parity_main, face_onnx, "--dataset", "digits")
    assert code == 2 and "classes the model does not know" in err and _one_line(err), err
    code, out, err = cli(parity_main, face_onnx, "--dataset", faces, "--random-samples", "2")
    assert code == 0 and "folder:val" in out, err
    code, _, err = cli(calibrate_main, face_onnx, "-o", tmp_path / "q.onnx")
    assert code == 2 and "pass --dataset FOLDER" in err and _one_line(err), err
    code, _, err = cli(export_main, "trt", face_onnx, "-o", tmp_path / "e.plan", "--precision", "int8")
    assert code == 2 and "pass --calib-dataset FOLDER" in err and _one_line(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_training_dataset_is_recorded_and_is_the_default(cli, faces, tmp_path, monkeypatch):
    from alexnet_deploy.cli import train_main
    from alexnet_deploy.models.weights import load_model
    from alexnet_deploy.runtime.metadata import read_onnx_metadata

    monkeypatch.chdir(faces.parent)
    code, out, err = cli(train_main, "--dataset", "faces", "--epochs", "1", "--batch-size", "4", "--no-progress",
                         "-o", tmp_path / "f.pt")
    assert code == 0, err
    assert load_model(None, str(tmp_path / "f.pt")).info["dataset"] == str(faces.resolve())
    code, out, err = cli(export_main, "onnx", "--weights", tmp_path / "f.pt", "-o", tmp_path / "f.onnx",
                         "--no-simplify")
    assert code == 0 and "folder:val" in out, err
    meta = read_onnx_metadata(tmp_path / "f.onnx")
    assert meta.training_dataset == str(faces.resolve()) and meta.class_names == FACES
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(parity_main, tmp_path / "f.onnx", "--random-samples", "2")
    assert code == 0 and "folder:val" in out, err
    # fine-tuning a checkpoint on data with other classes is refused
    code, _, err = cli(train_main, "--weights", tmp_path / "f.pt", "--epochs", "1", "-o", tmp_path / "g.pt")
    assert code == 2 and "classes" in err and _one_line(err), err
