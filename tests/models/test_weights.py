import pytest
import torch

from alexnet_deploy.errors import ModelLoadError, UserInputError
from alexnet_deploy.models import build_model
from alexnet_deploy.models.weights import infer_variant, load_model, save_checkpoint


def test_checkpoint_roundtrip_pt_and_safetensors(tmp_path):
    loaded = load_model("cifar10", "random", seed=1, class_names=list("abcdefghij"))
    for name in ("m.pt", "m.safetensors"):
        save_checkpoint(tmp_path / name, loaded, heldout_accuracy=0.5)
        back = load_model(None, str(tmp_path / name))
        assert back.variant == "cifar10" and back.class_names == list("abcdefghij")
        assert back.info["heldout_accuracy"] == 0.5
        sd, sd2 = loaded.model.state_dict(), back.model.state_dict()
        assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries
    assert (tmp_path / "m.pt").stat().st_mode & 0o044  # readable by others, like a plain open() (umask 022)


def test_plain_state_dict_infers_variant_and_classes(tmp_path):
    torch.save(build_model("bn", num_classes=4).state_dict(), tmp_path / "sd.pth")
    assert infer_variant(torch.load(tmp_path / "sd.pth")) == "bn"
    loaded = load_model(None, str(tmp_path / "sd.pth"))
    assert loaded.variant == "bn" and loaded.num_classes == 4


def test_dataparallel_prefix_is_stripped(tmp_path):
    sd = {f"module.{k}": v for k, v in build_model("cifar10").state_dict().items()}
    torch.save(sd, tmp_path / "dp.pt")
    assert load_model("cifar10", str(tmp_path / "dp.pt")).variant == "cifar10"


def test_mismatch_lists_keys_and_shapes(tmp_path):
    sd = build_model("cifar10").state_dict()
    sd.pop("features.0.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["classifier.0.weight"] = torch.zeros(10, 128)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError) as err:
        load_model("cifar10", str(tmp_path / "bad.pt"))
    msg = str(err.value)
    assert "missing key features.0.bias" in msg and "unexpected key extra.weight" in msg
    assert "shape mismatch at classifier.0.weight" in msg


def test_checkpoint_of_other_variant(tmp_path):
    save_checkpoint(tmp_path / "c.pt", load_model("cifar10"))
    with pytest.raises(ModelLoadError, match="holds a 'cifar10' model, not 'bn'"):
        load_model("bn", str(tmp_path / "c.pt"))


def test_checkpoint_of_other_class_count(tmp_path):
    save_checkpoint(tmp_path / "c.pt", load_model("cifar10"))
    with pytest.raises(ModelLoadError, match="has 10 classes, not 5"):
        load_model("cifar10", str(tmp_path / "c.pt"), num_classes=5)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model("cifar10", str(tmp_path / "x.pt"))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("cifar10", str(tmp_path / "nope.pt"))


def test_imagenet_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(ModelLoadError) as err:
        load_model("torchvision", "imagenet")
    assert "alexnet-owt-7be5be79.pth" in str(err.value) and str(tmp_path / "th") in str(err.value)
    with pytest.raises(UserInputError, match="only for the torchvision variant"):
        load_model("paper", "imagenet")


def test_imagenet_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    folder = tmp_path / "th" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    sd = build_model("torchvision", seed=5).state_dict()
    torch.save(sd, folder / "alexnet-owt-7be5be79.pth")
    loaded = load_model("torchvision", "imagenet")
    assert loaded.num_classes == 1000 and loaded.class_names[0] == "tench"
    assert torch.equal(loaded.model.state_dict()["features.0.weight"], sd["features.0.weight"])


def test_corrupt_checkpoint_message_is_readable(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"hi\n")  # torch reports just the pickle opcode: "105"
    with pytest.raises(ModelLoadError, match=r"\(not a torch.save file"):
        load_model("cifar10", str(tmp_path / "x.pt"))
