"""shiftnas.train.config: defaults, shipped configs, overrides, errors, YAML round trip."""
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftnas.train.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_valid():
    cfg = load_config(None, [])
    assert cfg == TrainConfig()
    assert cfg.sampler.name == "shift" and cfg.model.space == "vit-fmnist"
    assert cfg.generator.hidden == 64 and cfg.shift.update_every == 100 and cfg.shift.lr is None
    assert cfg.shift.estimator == "delta" and cfg.shift.movement == 5.6
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # frozen


def test_shipped_configs_load():
    names = {p.name for p in CONFIGS}
    for want in ["fmnist-vit-shift", "fmnist-vit-uniform", "fmnist-vit-sandwich", "fmnist-vit-attentive",
                 "fmnist-vit-binuniform", "fmnist-cnn-shift", "imagenet-autoformer-t-shift",
                 "imagenet-autoformer-s-shift", "imagenet-autoformer-b-shift", "imagenet-cnn-shift"]:
        assert want + ".yaml" in names
    for p in CONFIGS:
        assert p.read_text().startswith("#"), p
        cfg = load_config(p, [])
        assert cfg.run.name == p.stem
    assert load_config(CONFIGS[0].parent / "fmnist-vit-binuniform.yaml").sampler.name == "bin_uniform"
    t = load_config(CONFIGS[0].parent / "imagenet-autoformer-t-shift.yaml")
    assert (t.model.space, t.data.image_size, t.data.root, t.model.num_classes) == ("autoformer-t", 224, "/data/imagenet", 1000)


def test_overrides():
    cfg = load_config(None, ["optim.lr=5e-4", "optim.amp=off", "run.name=123", "optim.grad_clip=null",
                             "data.augment=false", "optim.steps=2e3", "sampler.name=attentive"])
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.amp == "off" and cfg.run.name == "123" and cfg.optim.grad_clip is None
    assert cfg.data.augment is False and cfg.optim.steps == 2000 and cfg.sampler.name == "attentive"
    # overrides win over the file
    cfg = load_config(CONFIGS[0].parent / "fmnist-vit-uniform.yaml", ["sampler.name=shift"])
    assert cfg.sampler.name == "shift"


def test_a_warmup_as_long_as_the_run_is_clipped_to_a_tenth():
    assert load_config(None, ["optim.steps=60"]).optim.effective_warmup == 6  # default warm-up: 100
    assert load_config(None, ["optim.steps=100"]).optim.effective_warmup == 10
    assert load_config(None, ["optim.steps=5"]).optim.effective_warmup == 0
    kept = load_config(None, ["optim.steps=60", "optim.warmup_steps=59"]).optim
    assert kept.effective_warmup == kept.warmup_steps == 59
    assert load_config(None, []).optim.effective_warmup == 100


def test_unknown_key_close_matches(tmp_path):
    with pytest.raises(ValueError) as e:
        load_config(None, ["optim.lrr=1"])
    assert str(e.value) == "unknown config key 'optim.lrr'; close matches: ['optim.lr']"
    with pytest.raises(ValueError, match="unknown config key 'optm.lr'.*'optim.lr'"):
        load_config(None, ["optm.lr=1"])
    f = tmp_path / "c.yaml"
    f.write_text("sampler:\n  n_binz: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'sampler.n_binz'.*'sampler.n_bins'"):
        load_config(f)
    f.write_text("samplr:\n  name: shift\n")
    with pytest.raises(ValueError, match=r"'samplr'.*\['sampler'\]"):
        load_config(f)


@pytest.mark.parametrize("override, match", [
    ("optim.lr=abc", r"'optim.lr'.*'abc'.*float"),
    ("optim.steps=1.5", r"'optim.steps'.*1.5.*int"),
    ("optim.steps=true", r"'optim.steps'.*True.*int"),
    ("data.augment=1", r"'data.augment'.*bool"),
    ("optim.lr=-1", r"'optim.lr'.*> 0"),
    ("optim.lr=.nan", r"'optim.lr'.*not finite"),
    ("optim.steps=0", r"'optim.steps'.*>= 1"),
    ("sampler.name=foo", r"'sampler.name'.*'foo'.*\['shift', 'uniform', 'sandwich', 'attentive', 'bin_uniform'\]"),
    ("optim.amp=fp32", r"'optim.amp'.*\['auto', 'gpu', 'bf16', 'fp16', 'off'\]"),
    ("model.space=nope", r"'model.space'.*vit-fmnist"),
    ("run.name=../escape", r"'run.name'"),
    ("optim", r"section.key=value"),
    ("optim=3", r"'optim' must be a mapping"),
    ("optim.lr=[1", r"not valid YAML"),
])
def test_type_and_value_errors(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


_keys = st.sampled_from(["optim.lr", "optim.steps", "optim.amp", "sampler.name", "run.name", "data.root",
                         "data.augment", "optim.grad_clip", "model.space", "optim", "x.y", ""])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", _keys, st.text(max_size=30))))
def test_garbage_overrides_only_raise_value_error(o):
    try:
        cfg = load_config(None, [o])
    except ValueError:
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.replace([]) == cfg and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_round_trip(tmp_path):
    cfg = load_config(CONFIGS[0].parent / "imagenet-autoformer-s-shift.yaml",
                      ["optim.amp=off", "run.name=yes", "data.augment=true", "optim.lr=1e-5"])
    f = tmp_path / "config.yaml"
    f.write_text(cfg.to_yaml())
    assert load_config(f) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert load_config(None, []).to_dict()["optim"]["amp"] == "auto"


def test_config_choice_lists_match_the_sampler_modules():
    """The config keeps its own import-free copies of the samplers' choice lists; they must agree."""
    from shiftnas.sampling.shift import ESTIMATORS
    from shiftnas.sampling.shift_sampler import GRAD_PATHS
    from shiftnas.train import config

    assert config.ESTIMATORS == ESTIMATORS and config.GRAD_PATHS == GRAD_PATHS
    cfg = load_config(None, ["shift.estimator=rate"])
    assert cfg.shift.estimator == "rate"
