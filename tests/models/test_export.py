"""Export: standalone models equal the supernet at the arch; save/load round trip."""
import json
import random

import pytest
import torch

import shiftnas
from shiftnas import get_space
from shiftnas.models.static_vit import StaticViT

from archutil import dummy_input


def _check_export(name, archs, batch=2):
    torch.manual_seed(0)
    net = shiftnas.build_supernet(name).eval()
    sp = get_space(name)
    for arch in archs:
        sub = shiftnas.export_subnet(net, arch)
        assert not sub.training
        assert not any(isinstance(m, type(net)) for m in sub.modules())
        assert sum(p.numel() for p in sub.parameters()) == shiftnas.count_params(sp, arch)
        x = dummy_input(sp, batch, arch)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, arch), rtol=0, atol=1e-5)


def test_export_vit_fmnist_random_archs():
    sp = get_space("vit-fmnist")
    rng = random.Random(0)
    _check_export("vit-fmnist", [sp.min(), sp.max()] + [sp.sample(rng) for _ in range(10)])


@pytest.mark.parametrize("name", ["autoformer-t", "autoformer-s", "autoformer-b"])
def test_export_autoformer(name):
    sp = get_space(name)
    _check_export(name, [sp.min(), sp.sample(random.Random(1))], batch=1)


def test_export_copies_weights():
    net = shiftnas.build_supernet("vit-fmnist")
    arch = get_space("vit-fmnist").max()
    sub = shiftnas.export_subnet(net, arch)
    with torch.no_grad():
        net.head.weight.add_(1.0)
    assert not torch.equal(sub.head.weight, net.head.weight[:10, :128])


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = shiftnas.build_supernet("vit-fmnist").eval()
    sp = get_space("vit-fmnist")
    arch = sp.sample(random.Random(2))
    sub = shiftnas.export_subnet(net, arch)
    out = shiftnas.save_subnet(sub, arch, tmp_path / "sub")
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "arch.json").read_text())
    assert meta["space"] == "vit-fmnist" and meta["flops"] == shiftnas.count_flops(sp, arch)
    sub2 = shiftnas.load_subnet(out)
    assert isinstance(sub2, StaticViT) and sub2.arch == arch
    x = dummy_input(sp, 4)
    with torch.no_grad():
        torch.testing.assert_close(sub2(x), net(x, arch), rtol=0, atol=1e-5)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        shiftnas.load_subnet(tmp_path / "missing")
    net = shiftnas.build_supernet("vit-fmnist")
    arch = get_space("vit-fmnist").min()
    out = shiftnas.save_subnet(shiftnas.export_subnet(net, arch), arch, tmp_path / "s")
    meta = json.loads((out / "arch.json").read_text())
    meta["arch"]["embed_dim"] = 96  # weights no longer match
    (out / "arch.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match arch"):
        shiftnas.load_subnet(out)
    (out / "arch.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        shiftnas.load_subnet(out)


def test_save_rejects_mismatched_arch(tmp_path):
    net = shiftnas.build_supernet("vit-fmnist")
    sp = get_space("vit-fmnist")
    with pytest.raises(ValueError, match="different arch"):
        shiftnas.save_subnet(shiftnas.export_subnet(net, sp.min()), sp.max(), tmp_path / "x")


@pytest.fixture
def saved(tmp_path):
    net = shiftnas.build_supernet("vit-fmnist")
    arch = get_space("vit-fmnist").min()
    return shiftnas.save_subnet(shiftnas.export_subnet(net, arch), arch, tmp_path / "s")


def test_byte_flip_in_subnet_weights_is_detected(saved):
    from safetensors.torch import load_file

    w = saved / "model.safetensors"
    data = bytearray(w.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")  # then the raw tensor bytes
    data[header + (len(data) - header) // 2] ^= 0x10
    w.write_bytes(bytes(data))
    load_file(str(w))  # safetensors itself does not notice
    with pytest.raises(ValueError, match="model.safetensors is corrupt: its tensors do not match") as e:
        shiftnas.load_subnet(saved)
    assert str(w) in str(e.value) and "\n" not in str(e.value)
    assert shiftnas.load_subnet(saved, verify=False).arch == get_space("vit-fmnist").min()


def test_arch_json_not_written_with_the_weights_is_detected(saved):
    meta = json.loads((saved / "arch.json").read_text())
    meta["flops"] += 1  # still a valid arch file, but not the one saved with these weights
    (saved / "arch.json").write_text(json.dumps(meta, indent=1) + "\n")
    with pytest.raises(ValueError, match="arch.json is not the arch.json written with model.safetensors"):
        shiftnas.load_subnet(saved)


def test_subnet_without_digest_is_refused_unless_trusted(saved):
    from safetensors.torch import load_file, save_file

    w = saved / "model.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "shiftnas-subnet/1"})  # as written before digests
    with pytest.raises(ValueError, match="has no integrity digest.*verify=False"):
        shiftnas.load_subnet(saved)
    sub = shiftnas.load_subnet(saved, verify=False)
    again = shiftnas.save_subnet(sub, sub.arch, saved.parent / "again")
    assert shiftnas.load_subnet(again).arch == sub.arch


def test_saved_subnet_is_shareable_and_carries_extra_keys(tmp_path):
    import os
    import stat

    sp = get_space("vit-fmnist")
    arch = sp.min()
    sub = shiftnas.export_subnet(shiftnas.build_supernet("vit-fmnist").eval(), arch)
    old = os.umask(0o022)
    try:
        out = shiftnas.save_subnet(sub, arch, tmp_path / "sub", extra={"input_size": [1, 28, 28]})
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "model.safetensors": 0o644, "arch.json": 0o644}  # as readable as any file the user shares
    assert json.loads((out / "arch.json").read_text())["input_size"] == [1, 28, 28]
    assert shiftnas.load_subnet(out).arch == arch  # the digest covers the richer arch.json
    with pytest.raises(ValueError, match=r"extra keys \['flops'\] are arch.json's own"):
        shiftnas.save_subnet(sub, arch, tmp_path / "other", extra={"flops": 1})
