"""`shiftnas convert`: an AutoFormer-T supernet checkpoint (AutoFormer's key names and shapes,
random values, saved as its supernet_train.py saves: {"model", "optimizer", "epoch", "args"})
converted in a tmp dir, loaded back, run and exported; and the refusals."""
from __future__ import annotations

import argparse
import json
import os
import random

import pytest
import torch
from test_autoformer import autoformer_t_keys, random_state

import shiftnas
from shiftnas.cli import main
from shiftnas.convert import SOURCES, autoformer, load_supernet, source_module
from shiftnas.spaces import get_space


def _save(path, model_state, **extra):
    torch.save({"model": model_state, **extra}, path)
    return path


@pytest.fixture(scope="module")
def af_state():
    return random_state(autoformer_t_keys(), seed=3)


@pytest.fixture(scope="module")
def af_ckpt(tmp_path_factory, af_state):
    args = argparse.Namespace(relative_position=True, change_qkv=True, gp=True, max_relative_position=14,
                              cfg="./experiments/supernet/supernet-T.yaml", lr=5e-4)
    return _save(tmp_path_factory.mktemp("af") / "checkpoint.pth", af_state,
                 optimizer={"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]}, epoch=499, args=args)


def _convert(capsys, ckpt, out, space="autoformer-t", source="autoformer"):
    rc = main(["convert", "--from", source, str(ckpt), "--space", space, "--out", str(out)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_convert_load_run_and_export(capsys, tmp_path, af_ckpt, af_state):
    out = tmp_path / "converted" / "af-t"
    rc, stdout, err = _convert(capsys, af_ckpt, out)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["out"] == str(out) and report["space"] == "autoformer-t" and report["tensors"] == 8 + 14 * 16
    assert sorted(p.name for p in out.iterdir()) == ["supernet.json", "supernet.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["af-t"]  # no temporary directory left
    meta = json.loads((out / "supernet.json").read_text())
    assert meta["source"] == "autoformer" and meta["source_file"] == "checkpoint.pth" and meta["num_classes"] == 1000

    net = load_supernet(out)
    assert not net.training and report["params"] == sum(p.numel() for p in net.parameters())
    want = autoformer.to_shiftnas(af_state, "autoformer-t")
    for k, v in net.state_dict().items():
        assert torch.equal(v, want[k]), k
    sp = get_space("autoformer-t")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = {a.short(): net(x, a) for a in (sp.min(), sp.max(), sp.sample(random.Random(0)))}
        assert all(o.shape == (1, 1000) and torch.isfinite(o).all() for o in outs.values())
        arch = sp.sample(random.Random(0))
        sub = shiftnas.export_subnet(net, arch)
        assert sum(p.numel() for p in sub.parameters()) == shiftnas.count_params(sp, arch)
        torch.testing.assert_close(sub(x), outs[arch.short()], rtol=0, atol=1e-5)


def test_wrappers_are_taken_off(tmp_path, af_state):
    """A DDP "module." prefix under "state_dict" converts to the same supernet as AutoFormer's own file."""
    from shiftnas.convert import read_state

    p = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in af_state.items()}, "epoch": 1}, p)
    got = read_state(p)
    assert got.keys() == af_state.keys() and all(torch.equal(got[k], af_state[k]) for k in got)


def _broken(af_state, how):
    s = dict(af_state)
    if how == "missing":
        del s["blocks.3.attn.rel_pos_embed_v.embeddings_table_h"]
    elif how == "extra":
        s["blocks.3.attn.rel_pos_embed_q.embeddings_table_h"] = torch.zeros(30, 64)
    elif how == "shape":
        s["blocks.3.fc1.weight"] = torch.zeros(960, 256)
    return s


@pytest.mark.parametrize("how,msg", [
    ("missing", "1 missing keys (blocks.3.attn.rel_pos_embed_v.embeddings_table_h)"),
    ("extra", "1 extra keys (blocks.3.attn.rel_pos_embed_q.embeddings_table_h)"),
    ("shape", "1 keys of the wrong shape (blocks.3.fc1.weight: expected (1024, 256), got (960, 256))"),
])
def test_bad_checkpoints_are_refused(capsys, tmp_path, af_state, how, msg):
    ckpt = _save(tmp_path / "bad.pth", _broken(af_state, how))
    out = tmp_path / "out"
    rc, _, err = _convert(capsys, ckpt, out)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("shiftnas convert: error: not the autoformer supernet for space 'autoformer-t' (232 keys expected): ")
    assert msg in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


@pytest.mark.parametrize("case,msg", [
    ("space", "--from autoformer converts into spaces ['autoformer-t', 'autoformer-s', 'autoformer-b'], not 'vit-fmnist'"),
    ("space-s", "175 keys of the wrong shape ("),  # a T checkpoint is not an S supernet
    ("file", "no such checkpoint file"),
    ("exists", "already exists; give a new directory (nothing was overwritten)"),
    ("pickle", "cannot be read with torch.load(weights_only=True) (UnpicklingError"),
    ("not-a-state", "no state_dict in the file (keys ['epoch', 'note']"),
])
def test_refusals(capsys, tmp_path, af_ckpt, case, msg):
    out, ckpt, space = tmp_path / "out", af_ckpt, "autoformer-t"
    marker = tmp_path / "pwned"
    if case == "space":
        space = "vit-fmnist"
    elif case == "space-s":
        space = "autoformer-s"
    elif case == "file":
        ckpt = tmp_path / "nope.pth"
    elif case == "exists":
        out.mkdir()
    elif case == "pickle":
        ckpt = tmp_path / "evil.pth"
        torch.save({"model": _Evil(marker)}, ckpt)
    elif case == "not-a-state":
        ckpt = tmp_path / "odd.pth"
        torch.save({"epoch": 3, "note": "hello"}, ckpt)
    rc, _, err = _convert(capsys, ckpt, out, space)
    assert rc == 2 and err.count("\n") == 1 and msg in err, err
    assert not marker.exists()
    assert out.exists() == (case == "exists") and not list(tmp_path.glob(".out.tmp-*"))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_sources_and_unknown_source():
    assert SOURCES == {"autoformer": "shiftnas.convert.autoformer", "attentivenas": "shiftnas.convert.attentivenas"}
    assert source_module("autoformer") is autoformer
    with pytest.raises(ValueError, match=r"unknown source 'nas'; allowed: \['attentivenas', 'autoformer'\]"):
        source_module("nas")


def test_corrupt_conversion_is_detected(capsys, tmp_path, af_ckpt):
    out = tmp_path / "c"
    assert _convert(capsys, af_ckpt, out)[0] == 0
    w = out / "supernet.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupt: supernet.safetensors or supernet.json does not match"):
        load_supernet(out)
    assert load_supernet(out, verify=False).space.name == "autoformer-t"
