import pytest
import torch

from alexnet_deploy.errors import UserInputError
from alexnet_deploy.models import VARIANTS, build_model, get_variant, list_variants
from alexnet_deploy.models.alexnet import count_parameters

EXPECTED_PARAMS = {  # from the issue, independent of the spec table
    "cifar10": 2_472_266, "torchvision": 61_100_840, "paper": 60_965_224,
    "paper-ungrouped": 62_378_344, "plain": 62_378_344, "bn": 22_804_554,
}


def test_registry_lists_all_six():
    assert set(list_variants()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("variant", list(EXPECTED_PARAMS))
def test_parameter_count(variant):
    with torch.device("meta"):
        model = build_model(variant, seed=None)
    assert count_parameters(model) == EXPECTED_PARAMS[variant] == VARIANTS[variant].param_count


@pytest.mark.parametrize("variant", list(EXPECTED_PARAMS))
def test_layer_shapes(variant):
    spec = get_variant(variant)
    model = build_model(variant)
    seen = {}
    for name, module in model.named_modules():
        if name in spec.layer_shapes:
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
    with torch.inference_mode():
        out = model(torch.randn(2, *spec.input_shape))
    assert seen == spec.layer_shapes
    assert out.shape == (2, spec.default_num_classes)


def test_cifar10_spatial_chain():
    # 32 -> 8 -> 4 -> 4 -> 2 -> 2 -> 2 -> 2 -> 1 as the issue states
    sizes = [32] + [VARIANTS["cifar10"].layer_shapes[k][1] for k in
                    ("features.0", "features.2", "features.3", "features.5", "features.6", "features.8",
                     "features.10", "features.12")]
    assert sizes == [32, 8, 4, 4, 2, 2, 2, 2, 1]


def test_num_classes_is_a_parameter():
    model = build_model("paper", num_classes=7)
    assert model(torch.randn(1, 3, 227, 227)).shape == (1, 7)


def test_torchvision_variant_has_torchvision_keys():
    import torchvision

    ours = build_model("torchvision").state_dict()
    theirs = torchvision.models.alexnet(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_plain_softmax_option():
    model = build_model("plain", softmax=True, num_classes=5)
    out = model(torch.randn(2, 3, 227, 227))
    assert torch.allclose(out.sum(1), torch.ones(2), atol=1e-5)
    with pytest.raises(UserInputError, match="no softmax option"):
        build_model("cifar10", softmax=True)


def test_unknown_variant_names_the_choices():
    with pytest.raises(UserInputError, match="unknown variant 'resnet'.*cifar10"):
        get_variant("resnet")


def test_seeded_init_is_deterministic():
    a = build_model("cifar10", seed=3).state_dict()
    b = build_model("cifar10", seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
