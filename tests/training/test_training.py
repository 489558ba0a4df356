import pickle

import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.data.datasets import balanced_subset, load_dataset, load_digits
from alexnet_deploy.errors import DatasetError, UserInputError
from alexnet_deploy.models.weights import load_model
from alexnet_deploy.training.train import TrainConfig, train


def test_digits_split_is_fixed_and_stratified():
    train_set, held = load_digits("train"), load_digits("heldout")
    assert len(train_set) + len(held) == 1797
    assert np.array_equal(held.labels, load_digits("heldout").labels)
    counts = np.bincount(held.labels)
    assert counts.min() >= 35 and counts.max() <= 37


def test_cifar10_on_digits_reaches_95_percent(digits_checkpoint, session_dir):
    seconds, acc = map(float, (session_dir / "train_seconds.txt").read_text().split())
    loaded = load_model(None, str(digits_checkpoint))
    assert loaded.info["heldout_accuracy"] == pytest.approx(acc)
    assert acc >= 0.95, f"held-out accuracy {acc:.2%}"
    assert loaded.class_names == [str(i) for i in range(10)]
    assert loaded.preprocessing.crop == 32


def _write_cifar_batch(path, n, rng):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(i % 10) for i in range(n)]
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


@pytest.fixture
def cifar_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    _write_cifar_batch(root / "data_batch_1", 40, rng)
    _write_cifar_batch(root / "test_batch", 20, rng)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    return root


def test_cifar10_python_batches(cifar_folder):
    train_set, held = load_dataset(str(cifar_folder), "train"), load_dataset(str(cifar_folder), "heldout")
    assert (len(train_set), len(held)) == (40, 20)
    assert train_set.class_names[0] == "airplane"
    assert train_set.image(0).size == (32, 32)


def test_train_on_cifar10_folder_writes_checkpoint(cifar_folder, tmp_path):
    train_set, held = load_dataset(str(cifar_folder), "train"), load_dataset(str(cifar_folder), "heldout")
    loaded = load_model("cifar10", num_classes=10, class_names=train_set.class_names)
    res = train(loaded, train_set, held, TrainConfig(epochs=1, batch_size=16), tmp_path / "c.pt", progress=False)
    assert res.checkpoint.is_file() and 0.0 <= res.heldout_accuracy <= 1.0
    assert load_model(None, str(res.checkpoint)).class_names[-1] == "truck"


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    ds = load_dataset(str(tmp_path / "imgs"))
    assert ds.class_names == ["cat", "dog"] and len(ds) == 10
    assert len(load_dataset(str(tmp_path / "imgs"), "heldout")) == 2
    assert balanced_subset(ds, 4).labels.tolist() == [0, 0, 1, 1]


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a CIFAR-10 python batch"):
        load_dataset(str(tmp_path / "bad"))


def test_class_count_mismatch_is_explained(tmp_path):
    loaded = load_model("cifar10", num_classes=5)
    with pytest.raises(UserInputError, match="--num-classes 10"):
        train(loaded, load_digits("train"), load_digits("heldout"), TrainConfig(epochs=1), progress=False)


def test_an_empty_class_folder_is_warned_about(tmp_path, caplog):
    """A class folder without images used to calibrate and check silently without that class."""
    for c, n in (("cat", 3), ("dog", 0), ("fox", 2)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="alexnet_deploy.data.datasets"):
        ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["cat", "dog", "fox"] and sorted(set(ds.labels.tolist())) == [0, 2]
    assert any("dog hold no images" in r.getMessage() for r in caplog.records), caplog.text
    caplog.clear()
    (tmp_path / "dog" / "0.png").write_bytes((tmp_path / "cat" / "0.png").read_bytes())
    with caplog.at_level("WARNING", logger="alexnet_deploy.data.datasets"):
        load_dataset(str(tmp_path))
    assert not caplog.records
