"""Every search space has a timm registration beside its model, and its data config:
`timm.data.resolve_data_config` on a `timm.create_model` supernet gives the input the space takes
(not timm's ImageNet fallback), and the cfg names the model's first conv and classifier."""
import importlib
import subprocess
import sys

import pytest
import timm
import torch
from timm.data import resolve_data_config

import shiftnas
from shiftnas.data.recipe import FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from shiftnas.models.timm_cfg import timm_name

CASES = {  # model name -> (input size, mean, std)
    "shiftnas_vit_fmnist_supernet": ((1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "shiftnas_cnn_fmnist_supernet": ((1, 28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "shiftnas_autoformer_t_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_autoformer_s_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_autoformer_b_supernet": ((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD),
    "shiftnas_cnn_bignas_supernet": ((3, 288, 288), IMAGENET_MEAN, IMAGENET_STD),  # its largest resolution
}


# The spaces shiftnas ships, listed by a fresh interpreter: other tests register variants of them
# in this process (vit_variant), which have no timm registration.
SPACES = subprocess.run([sys.executable, "-c", "import shiftnas; print(*shiftnas.list_spaces())"],
                        capture_output=True, text=True, check=True, timeout=120).stdout.split()


def test_every_space_is_registered_and_nothing_else():
    assert len(SPACES) >= 6 and sorted(CASES) == sorted(timm_name(s) for s in SPACES)
    assert sorted(timm.list_models("shiftnas_*")) == sorted(CASES)


@pytest.mark.parametrize("space", SPACES)
def test_resolve_data_config_gives_the_spaces_input(space):
    name = timm_name(space)
    size, mean, std = CASES[name]
    with torch.device("meta"):  # no memory for the big supernets
        model = timm.create_model(name)
    cfg = resolve_data_config(model=model)
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == (size, mean, std)
    pcfg = model.pretrained_cfg
    modules = dict(model.named_modules())
    hp = shiftnas.get_space(space).hparams
    assert pcfg["num_classes"] == model.num_classes == hp["num_classes"]
    assert modules[pcfg["classifier"]].weight.shape[0] == hp["num_classes"]
    assert modules[pcfg["first_conv"]].weight.shape[1] == hp["in_chans"] == size[0]


@pytest.mark.parametrize("space", SPACES)
def test_the_registration_sits_in_the_models_module(space):
    name = timm_name(space)
    with torch.device("meta"):
        model = timm.create_model(name)
    entry = timm.models.model_entrypoint(name)
    assert entry.__module__ == type(model).__module__
    assert name in importlib.import_module(entry.__module__).default_cfgs  # the cfg sits there too


def test_a_resolved_transform_feeds_the_fmnist_supernet():
    model = timm.create_model("shiftnas_vit_fmnist_supernet").eval()
    tf = timm.data.create_transform(**resolve_data_config(model=model))
    from PIL import Image

    x = tf(Image.new("L", (40, 30), 128))[None]
    sp = shiftnas.get_space("vit-fmnist")
    assert model(x, sp.max()).shape == (1, 10)
