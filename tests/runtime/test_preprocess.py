import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.models import get_variant
from alexnet_deploy.runtime.postprocess import softmax, topk
from alexnet_deploy.runtime.preprocess import find_images, load_image, preprocess_batch, preprocess_image


def _torchvision_pipeline(prep):
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(prep.resize), transforms.CenterCrop(prep.crop), transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])


@pytest.mark.parametrize("variant", ["torchvision", "paper", "cifar10", "bn"])
def test_matches_torchvision_on_real_photos(photos, variant):
    prep = get_variant(variant).preprocessing
    tv = _torchvision_pipeline(prep)
    for path in photos.values():
        img = Image.open(path).convert("RGB")
        ours = preprocess_image(img, prep)
        theirs = tv(img).numpy()
        assert ours.shape == theirs.shape == (3, prep.crop, prep.crop)
        assert np.abs(ours - theirs).max() <= 1e-6


def test_odd_sizes_and_small_images_match_torchvision():
    prep = get_variant("torchvision").preprocessing
    tv = _torchvision_pipeline(prep)
    rng = np.random.default_rng(0)
    for h, w in [(300, 301), (257, 999), (100, 50), (224, 224)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert np.abs(preprocess_image(img, prep) - tv(img).numpy()).max() <= 1e-6


def test_modes_are_handled_like_convert_rgb(tmp_path):
    prep = get_variant("cifar10").preprocessing
    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L")
    pal = rgba.convert("RGB").convert("P")
    for img in (rgba, gray, pal):
        expected = preprocess_image(img.convert("RGB"), prep)
        assert np.array_equal(preprocess_image(img, prep), expected)
    g16 = Image.fromarray((rng.integers(0, 65536, (40, 40))).astype(np.uint16))
    assert preprocess_image(g16, prep).shape == (3, 32, 32)


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.size == (20, 40)  # portrait after transposition
    a = np.asarray(loaded)
    assert a[:20].mean() > 200 and a[20:].mean() < 50  # white half now on top


def test_bad_images(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(UserInputError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(UserInputError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_find_images(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    assert find_images([tmp_path / "a"]) == [str(tmp_path / "a" / "x.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no images"):
        find_images([tmp_path / "empty"])


def test_softmax_and_topk():
    logits = np.array([[1.0, 3.0, 2.0], [1000.0, 0.0, 0.0]], dtype=np.float32)
    p = softmax(logits)
    assert np.allclose(p.sum(1), 1) and np.isfinite(p).all()
    top = topk(p, 2, ["a", "b", "c"])
    assert [t["label"] for t in top[0]] == ["b", "c"] and top[1][0]["label"] == "a"
    assert preprocess_batch([], get_variant("cifar10").preprocessing).shape == (0, 3, 32, 32)
