import random

import pytest
import timm
import torch

import shiftnas
from shiftnas import ArchSample, get_space
from shiftnas.models.vit import ViTSupernet

from archutil import dummy_input


@pytest.fixture(scope="module")
def fmnist_net():
    torch.manual_seed(0)
    return ViTSupernet("vit-fmnist").eval()


def test_forward_shapes(fmnist_net):
    sp = get_space("vit-fmnist")
    for arch in [sp.min(), sp.max(), sp.sample(random.Random(1))]:
        assert fmnist_net(dummy_input(sp, 3), arch).shape == (3, 10)


def test_depth_skips_trailing_blocks(fmnist_net):
    """Changing the heads of a layer past depth cannot matter; inside depth it must."""
    sp = get_space("vit-fmnist")
    a = sp.min().to_dict()
    x = dummy_input(sp)
    y = fmnist_net(x, sp.min())
    torch.manual_seed(1)
    with torch.no_grad():
        fmnist_net.blocks[5].attn.qkv.weight.add_(1.0)  # layer 5 is inactive at depth 4
    assert torch.equal(fmnist_net(x, sp.min()), y)
    b = dict(a, **{"layers.0.num_heads": 3})
    assert not torch.allclose(fmnist_net(x, shiftnas.ArchConfig.from_dict("vit-fmnist", b)), y)


def test_weight_sharing_prefix():
    """A smaller embed dim uses the leading slice of the same weights (AutoFormer entanglement)."""
    net = ViTSupernet("vit-fmnist")
    sp = get_space("vit-fmnist")
    x = dummy_input(sp)
    net(x, sp.min()).sum().backward()
    g = net.blocks[0].mlp.fc1.weight.grad
    assert g[:128, :64].abs().sum() > 0 and g[128:].abs().sum() == 0 and g[:, 64:].abs().sum() == 0


def test_arch_sample_matches_config_and_has_grads(fmnist_net):
    sp = get_space("vit-fmnist")
    for seed in range(3):
        arch = sp.sample(random.Random(seed))
        s = ArchSample.from_arch(arch, requires_grad=True)
        x = dummy_input(sp)
        y = fmnist_net(x, s)
        torch.testing.assert_close(y, fmnist_net(x, arch), rtol=0, atol=1e-6)
        y.square().sum().backward()
        for name in ["embed_dim", "depth", "layers.0.num_heads", "layers.0.mlp_ratio"]:
            g = s.onehots[name].grad
            assert g is not None and g.abs().sum() > 0, name


def test_bad_inputs(fmnist_net):
    sp = get_space("vit-fmnist")
    with pytest.raises(ValueError, match=r"expected input \[B, 1, 28, 28\], got \[2, 3, 28, 28\]"):
        fmnist_net(torch.randn(2, 3, 28, 28), sp.min())
    with pytest.raises(ValueError, match=r"expected input \[B, 1, 28, 28\]"):
        fmnist_net(torch.randn(2, 1, 32, 32), sp.min())
    with pytest.raises(ValueError, match="arch is from space 'autoformer-t', expected space 'vit-fmnist'"):
        fmnist_net(dummy_input(sp), get_space("autoformer-t").min())
    with pytest.raises(ValueError, match="needs a vit space"):
        ViTSupernet("cnn-fmnist")


@pytest.mark.parametrize("name", ["autoformer_t", "autoformer_s", "autoformer_b", "vit_fmnist"])
def test_timm_registry(name):
    with torch.device("meta"):
        net = timm.create_model(f"shiftnas_{name}_supernet", num_classes=7)
    assert isinstance(net, ViTSupernet) and net.num_classes == 7


def test_autoformer_t_allocates_supernet_dims():
    with torch.device("meta"):
        net = shiftnas.build_supernet("autoformer-t")
    assert net.blocks[0].attn.qkv.weight.shape == (3 * 4 * 64, 256)
    assert net.blocks[0].mlp.fc1.weight.shape == (1024, 256) and len(net.blocks) == 14


def test_autoformer_t_forward_small_batch():
    torch.manual_seed(0)
    net = shiftnas.build_supernet("autoformer-t", num_classes=5).eval()
    sp = get_space("autoformer-t")
    x = dummy_input(sp, 1)
    with torch.no_grad():
        y = net(x, sp.min())
        sub = shiftnas.export_subnet(net, sp.min())
        torch.testing.assert_close(sub(x), y, rtol=0, atol=1e-5)
