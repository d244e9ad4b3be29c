import json
import random

import pytest

import shiftnas
from shiftnas import ArchConfig, get_space, list_spaces
from shiftnas.cost import flops_range


def test_known_spaces():
    assert set(list_spaces()) >= {"autoformer-t", "autoformer-s", "autoformer-b", "vit-fmnist", "cnn-bignas", "cnn-fmnist"}


def test_unknown_space_lists_known():
    with pytest.raises(ValueError, match="known spaces.*autoformer-t"):
        get_space("autoformer-x")


@pytest.mark.parametrize(
    "name,embed,ratios,heads,depth,super_embed",
    [
        ("autoformer-t", (192, 216, 240), (3.5, 4.0), (3, 4), (12, 13, 14), 256),
        ("autoformer-s", (320, 384, 448), (3.0, 3.5, 4.0), (5, 6, 7), (12, 13, 14), 448),
        ("autoformer-b", (528, 576, 624), (3.0, 3.5, 4.0), (9, 10), (14, 15, 16), 640),
    ],
)
def test_autoformer_values(name, embed, ratios, heads, depth, super_embed):
    sp = get_space(name)
    assert sp.decision("embed_dim").choices == embed
    assert sp.decision("depth").choices == depth
    assert sp.decision("layers.0.num_heads").choices == heads
    assert sp.decision("layers.0.mlp_ratio").choices == ratios
    assert sp.hparams["head_dim"] == 64 and sp.hparams["super_embed_dim"] == super_embed
    assert sp.hparams["super_depth"] == max(depth)


def test_cnn_bignas_values():
    sp = get_space("cnn-bignas")
    assert sp.decision("resolution").choices == (192, 224, 256, 288)
    assert sp.decision("stage4.depth").choices == (3, 4, 5, 6, 7, 8)
    assert sp.decision("stage5.width").choices == (192, 200, 208, 216)
    assert sp.decision("head.width").choices == (1792, 1984)


def test_vit_fmnist_flops_ratio():
    lo, hi = flops_range("vit-fmnist")
    assert hi / lo >= 4


@pytest.mark.parametrize("name", ["autoformer-t", "vit-fmnist", "cnn-fmnist", "cnn-bignas"])
def test_sample_min_max_roundtrip(name):
    sp = get_space(name)
    rng = random.Random(0)
    for arch in [sp.min(), sp.max()] + [sp.sample(rng) for _ in range(20)]:
        assert ArchConfig.from_json(arch.to_json()) == arch
        assert ArchConfig.from_yaml(arch.to_yaml()) == arch
        assert sp.from_indices(sp.indices(arch)) == arch
        assert hash(arch) == hash(ArchConfig.from_json(arch.to_json()))


def test_sample_is_seeded():
    sp = get_space("autoformer-t")
    assert sp.sample(random.Random(3)) == sp.sample(random.Random(3))
    assert len({sp.sample(random.Random(i)) for i in range(20)}) > 15


def test_inactive_layers_not_stored():
    sp = get_space("vit-fmnist")
    arch = sp.min()
    assert arch["depth"] == 4 and arch.get("layers.4.num_heads") is None
    with pytest.raises(KeyError, match="inactive"):
        arch["layers.5.num_heads"]


def test_bad_value_names_field_and_allowed():
    d = get_space("vit-fmnist").max().to_dict()
    d["embed_dim"] = 100
    with pytest.raises(ValueError, match=r"embed_dim=100.*allowed values: \[64, 96, 128\]"):
        ArchConfig.from_dict("vit-fmnist", d)


def test_missing_unknown_and_inactive_fields():
    d = get_space("vit-fmnist").min().to_dict()
    with pytest.raises(ValueError, match="missing decision 'layers.3.mlp_ratio'"):
        ArchConfig.from_dict("vit-fmnist", {k: v for k, v in d.items() if k != "layers.3.mlp_ratio"})
    with pytest.raises(ValueError, match="unknown decision.*embed_dims.*embed_dim"):
        ArchConfig.from_dict("vit-fmnist", {**d, "embed_dims": 64})
    with pytest.raises(ValueError, match="inactive"):
        ArchConfig.from_dict("vit-fmnist", {**d, "layers.4.num_heads": 2})
    with pytest.raises(ValueError, match="must be a number"):
        ArchConfig.from_dict("vit-fmnist", {**d, "depth": "4"})


def test_bad_documents():
    with pytest.raises(ValueError, match="not valid JSON"):
        ArchConfig.from_json("{")
    with pytest.raises(ValueError, match="mapping"):
        ArchConfig.from_json(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="unknown search space"):
        ArchConfig.from_json(json.dumps({"space": "nope", "arch": {}}))


def test_arch_from_another_space_rejected():
    arch = get_space("vit-fmnist").min()
    with pytest.raises(ValueError, match="arch is from space 'vit-fmnist', expected space 'autoformer-t'"):
        shiftnas.count_flops("autoformer-t", arch)


def test_enumerate_small_space(monkeypatch):
    from shiftnas.spaces import base
    from shiftnas.spaces.base import Decision, SearchSpace, register_space

    monkeypatch.setattr(base, "_SPACES", dict(base._SPACES))  # keep the toy space out of other tests
    sp = register_space(SearchSpace(
        "toy-enumerate",
        "vit",
        (Decision("depth", "depth", (1, 2)), Decision("layers.0.w", "w", (1, 2)), Decision("layers.1.w", "w", (1, 2, 3), ("depth", 1))),
    ))
    archs = list(sp.enumerate())
    assert len(archs) == len(set(archs)) == 8
    assert sp.size() == 2 + 6
    with pytest.raises(ValueError, match="over limit"):
        list(get_space("autoformer-t").enumerate())
