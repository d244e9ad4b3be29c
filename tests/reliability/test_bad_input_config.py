"""Config YAML and train.py arguments: random YAML documents, broken configs, unknown keys, wrong
types and Python YAML tags end in a ValueError naming the problem from `load_config`, and in one
clear `train.py: error: ...` line (exit 2) from train.py; YAML tags that would build Python objects
are refused without running anything.

train.py runs in-process with `Trainer` replaced by a stub: a config that passes validation
stops there (these tests never train).
"""
from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
import yaml
from clicheck import (
    FUZZ,
    TRAIN_PY,
    assert_ok_or_one_line_error,
    assert_one_line_error,
    no_line_breaks,
    run_subprocess,
    shiftnas_main,
    train_main,
)
from hypothesis import given
from hypothesis import strategies as st

from shiftnas.spaces import ArchConfig
from shiftnas.train.config import TrainConfig, load_config

SECTIONS = TrainConfig().to_dict()
KEYS = [f"{s}.{k}" for s, sec in SECTIONS.items() for k in sec]

scalars = (st.none() | st.booleans() | st.integers() | st.sampled_from([10**30, -1, 0, 2**32, 2**64])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


class WouldTrain(Exception):
    """Raised by the stub Trainer: the arguments passed every check."""


class _StubTrainer:
    def __init__(self, cfg, resume=None, info=None):
        assert isinstance(cfg, TrainConfig)
        raise WouldTrain


def train(argv: list[str]):
    """train.py in-process, stopped before training: (rc, stderr) or 'valid'."""
    with mock.patch("shiftnas.train.engine.Trainer", _StubTrainer), \
            mock.patch.dict(os.environ, {"TORCHELASTIC_RESTART_COUNT": ""}):
        try:
            rc, _, err = train_main(argv)
        except WouldTrain:
            return "valid"
    return rc, err


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("configs")


def _write(tmp: Path, data: str | bytes, name: str = "cfg.yaml") -> Path:
    f = tmp / name
    f.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return f


def _check_error(e: ValueError) -> str:
    msg = str(e)
    assert "\n" not in msg and len(msg) < 600, msg[:600]
    return msg


@st.composite
def broken_config(draw) -> tuple[dict, str]:
    """The default config as a mapping with one thing broken; (document, the bad key)."""
    doc = {s: dict(v) for s, v in SECTIONS.items()}
    how = draw(st.sampled_from(["unknown key", "unknown section", "wrong type", "section type"]))
    sec = draw(st.sampled_from(sorted(doc)))
    if how == "unknown key":
        k = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in doc[sec]))
        doc[sec][k] = draw(yaml_values)
        return doc, f"{sec}.{k}"
    if how == "unknown section":
        s = draw(st.text(min_size=1, max_size=20).filter(lambda s: s not in doc))
        doc[s] = draw(yaml_values)
        return doc, s
    if how == "section type":
        doc[sec] = draw(st.lists(scalars, max_size=3) | st.text(min_size=1, max_size=10) | st.integers())
        return doc, sec
    k = draw(st.sampled_from(sorted(doc[sec])))
    doc[sec][k] = draw(st.lists(scalars, min_size=1, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, min_size=1, max_size=3))
    return doc, f"{sec}.{k}"


@FUZZ
@given(case=broken_config())
def test_broken_configs_name_the_key(tmp, case):
    doc, key = case
    f = _write(tmp, yaml.safe_dump(doc))
    with pytest.raises(ValueError) as e:
        load_config(f)
    msg = _check_error(e.value)
    # The key as written (unknown keys that the config's YAML reads as a number, e.g. 0E0 as
    # 0.0, are named as read).
    named = repr(key)[:30].rstrip("'") in msg or msg.startswith("unknown config key ")
    assert named or "must be a mapping" in msg, (key, msg)
    rc, err = train(["--config", str(f)])
    assert_one_line_error(rc, err, "train.py")


@FUZZ
@given(doc=yaml_values | st.dictionaries(st.sampled_from([*SECTIONS, "x"]),
                                         st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]),
                                                         yaml_values, max_size=3), max_size=3))
def test_random_yaml_mappings(tmp, doc):
    f = _write(tmp, yaml.safe_dump(doc))
    try:
        cfg = load_config(f)
    except ValueError as e:
        _check_error(e)
    else:
        assert cfg == TrainConfig.from_dict(cfg.to_dict())
    r = train(["--config", str(f)])
    if r != "valid":
        assert_one_line_error(*r, "train.py")


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_random_yaml_text_and_bytes(tmp, text):
    f = _write(tmp, text)
    try:
        load_config(f)
    except ValueError as e:
        _check_error(e)
    r = train(["--config", str(f)])
    if r != "valid":
        assert_one_line_error(*r, "train.py")


# ----------------------------------------------------------------------- YAML tags
def _tags(marker: Path) -> list[str]:
    cmd = f"touch {marker}"
    return [
        f"!!python/object/apply:os.system [{cmd!r}]",
        f"!!python/object/apply:subprocess.check_call [[touch, {marker}]]",
        f"!!python/object/new:os.system [{cmd!r}]",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:builtins.exec {}",
        f"!!python/object/apply:builtins.exec [\"open('{marker}', 'w').write('x')\"]",
        "!!binary aGVsbG8=",  # safe tags that still are no config value
        "!!set {a, b}",
        "2024-01-01",
        "!!timestamp 2024-13-45",
        "!!int 0xZZ",
    ]


def test_yaml_tags_refused_and_nothing_runs(tmp):
    marker = tmp / "PWNED-yaml"
    docs = []
    for tag in _tags(marker):
        docs += [f"optim:\n  lr: {tag}\n", f"run: {tag}\n", f"{tag}\n", f"optim: {{steps: [{tag}]}}\n"]
    for i, doc in enumerate(docs):
        f = _write(tmp, doc, f"tag{i}.yaml")
        with pytest.raises(ValueError) as e:
            load_config(f)
        _check_error(e.value)
        assert_one_line_error(*train(["--config", str(f)]), "train.py")
        with pytest.raises(ValueError):
            ArchConfig.from_yaml(doc)
        a = _write(tmp, doc, f"tag{i}-arch.yaml")
        assert_one_line_error(*shiftnas_main(["cost", "--arch", str(a)])[::2], "shiftnas cost")
    for tag in _tags(marker):  # the same tags in command-line overrides
        for o in (f"optim.lr={tag}", f"optim={{lr: {tag}}}", f"data.root={tag}"):
            r = train([o])
            if o.startswith("data.root"):  # a string key takes the text verbatim
                assert r == "valid"
                continue
            assert_one_line_error(*r, "train.py")
    assert not marker.exists()


def test_yaml_bombs_stay_small_and_fast(tmp):
    """Nested aliases ('billion laughs': 10**9 leaves if expanded) and deep nesting: refused
    within the time limit, with a short message."""
    bomb = "optim:\n  steps: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for i in range(1, 9):
        bomb += f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
    bomb += "]\n"
    for doc in (bomb, "optim: " + "[" * 20_000 + "]" * 20_000, "optim: {lr: " + "x" * 1_000_000 + "}",
                "optim:\n  " + "x" * 100_000 + ": 1\n"):
        f = _write(tmp, doc)
        with pytest.raises(ValueError) as e:
            load_config(f)
        _check_error(e.value)
        assert_one_line_error(*train(["--config", str(f)]), "train.py")


# ----------------------------------------------------------------------- train.py argv
_override = st.one_of(
    st.text(max_size=40).filter(no_line_breaks),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([*KEYS, *SECTIONS, "optim.lrr", "x.y", "", "a.b.c"]),
              st.text(max_size=20) | st.sampled_from(["1e400", "nan", "-1", "0", "null", "[", "{a: 1}",
                                                      "10000000000000000000000", "../x", "/abs", "cuda"])),
)
_flag = st.sampled_from(["--config", "--resume", "--confi", "--res", "-x", "--", "--config=", "-h"])


@FUZZ
@given(argv=st.lists(_override | _flag, max_size=6))
def test_train_py_random_argv(tmp, argv):
    argv = [a for a in argv if no_line_breaks(a)]
    r = train(argv)
    if r == "valid":
        return
    rc, err = r
    if rc == 0:  # --help
        assert "-h" in argv or any(a.startswith("--h") for a in argv)
        return
    assert_one_line_error(rc, err, "train.py")


@pytest.mark.parametrize("argv,msg", [
    (["run.name=../escape"], "run.name"),
    (["run.name=/abs"], "run.name"),
    (["run.name=a/b"], "run.name"),
    (["run.name=.."], "run.name"),
    (["run.name="], "run.name"),
    (["data.train_split=../../etc"], "data.train_split"),
    (["run.seed=100000000000000000000000"], "run.seed"),
    (["run.device=tpu"], "run.device"),
    (["optim.lr=nan"], "optim.lr"),
    (["optim.steps=1e400"], "optim.steps"),
    (["--config", "/nonexistent.yaml"], "no such file"),
    (["--config", "/"], "--config"),
    (["optim.lrr=1"], "optim.lr"),
])
def test_train_py_named_errors(argv, msg):
    line = assert_one_line_error(*train(argv), "train.py")
    assert msg in line


@pytest.mark.parametrize(("key", "limit"), [("generator.hidden", 4096), ("data.image_size", 1024),
                                          ("sampler.n_bins", 100), ("data.batch_size", 8192),
                                          ("eval.batch_size", 8192)])
def test_sizes_have_upper_bounds_named_in_the_error(key, limit):
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}={limit}"]), section), name) == limit
    for bad in (limit + 1, limit * 1000):
        with pytest.raises(ValueError) as e:
            load_config(None, [f"{key}={bad}"])
        assert _check_error(e.value).startswith(f"config key {key!r}: value {bad} is not allowed; must be in [1, {limit}]")
        assert f"{key!r}: value {bad}" in assert_one_line_error(*train([f"{key}={bad}"]), "train.py")
    with pytest.raises(ValueError, match=rf"'{key}': value 0 is not allowed; must be in \[1, {limit}\]"):
        load_config(None, [f"{key}=0"])


def test_skip_corrupt_is_a_boolean_key():
    assert load_config(None, []).data.skip_corrupt is False
    assert load_config(None, ["data.skip_corrupt=true"]).data.skip_corrupt is True
    with pytest.raises(ValueError, match="'data.skip_corrupt': value 'yes' .* is not a valid bool"):
        load_config(None, ["data.skip_corrupt=yes"])


def test_run_device_cuda_without_gpu_is_one_line(tmp):
    """init_distributed's 'no GPU' is a configuration error (exit 2), not a traceback."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    rc, err = train(["run.device=cuda"])
    assert "run.device=cuda" in assert_one_line_error(rc, err, "train.py [rank 0]")


def test_train_py_subprocess_sample(tmp):
    """A few cases through a real interpreter: real argv, real stderr, with a time limit."""
    marker = tmp / "PWNED-sub"
    bad = _write(tmp, f"optim: !!python/object/apply:os.system ['touch {marker}']\n", "sub.yaml")
    binary = _write(tmp, b"\x89PNG\r\n\x1a\n\x00\xff garbage", "bin.yaml")
    for argv, what in (
        (["--config", str(bad)], "not valid YAML"),
        (["--config", str(binary)], "UTF-8"),
        (["optim.lrr=1"], "optim.lr"),
        (["--resume"], "expected one argument"),
    ):
        rc, _, err = run_subprocess([str(TRAIN_PY), *argv], cwd=tmp)
        assert what in assert_one_line_error(rc, err, "train.py")
    assert not marker.exists()


def test_override_garbage_ok_or_error():
    """Overrides of every key with hostile strings: accepted or refused naming the key."""
    for key in KEYS:
        for raw in ("1e400", "[1, [2, [3]]]", "{a: {b: c}}", "x" * 5000, "!!python/name:os.system", "-0", "~"):
            try:
                load_config(None, [f"{key}={raw}"])
            except ValueError as e:
                assert key in _check_error(e) or "YAML" in str(e), (key, raw, str(e))


def test_valid_configs_still_load(tmp):
    """The control: the shipped configs pass the same path."""
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        assert train(["--config", str(c)]) == "valid", c
    assert_ok_or_one_line_error(0, "", "train.py")
