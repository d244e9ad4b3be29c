"""The timm registrations carry each space's data config: `timm.data.resolve_data_config` on a
`timm.create_model` supernet gives the input the space takes (not timm's ImageNet fallback)."""
import pytest
import timm
import torch
from timm.data import resolve_data_config

import shiftnas
from shiftnas.data.recipe import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD

CASES = {  # model name -> (input size, mean, std)
    "shiftnas_vit_fmnist_supernet": ((1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "shiftnas_cnn_fmnist_supernet": ((1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "shiftnas_autoformer_t_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_autoformer_s_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_autoformer_b_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_cnn_bignas_supernet": ((3, 288, 288), IMAGENET_MEAN, IMAGENET_STD),  # its largest resolution
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resolve_data_config_gives_the_spaces_input(name):
    size, mean, std = CASES[name]
    with torch.device("meta"):  # no memory for the big supernets
        model = timm.create_model(name)
    cfg = resolve_data_config(model=model)
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == (size, mean, std)
    assert timm.models.get_pretrained_cfg(name).num_classes == model.num_classes
    assert model.pretrained_cfg["classifier"] in dict(model.named_modules())


def test_a_resolved_transform_feeds_the_fmnist_supernet():
    model = timm.create_model("shiftnas_vit_fmnist_supernet").eval()
    tf = timm.data.create_transform(**resolve_data_config(model=model))
    from PIL import Image

    x = tf(Image.new("L", (40, 30), 128))[None]
    sp = shiftnas.get_space("vit-fmnist")
    assert model(x, sp.max()).shape == (1, 10)
