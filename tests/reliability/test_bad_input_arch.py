"""Arch files: random and broken arch JSON/YAML documents and raw bytes end in a ValueError from
`ArchConfig.from_json`/`from_yaml` and in one clear error line (exit 2) from
`shiftnas cost --arch FILE`; never another exception, a traceback or a hang.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import yaml
from clicheck import FUZZ, assert_ok_or_one_line_error, assert_one_line_error, shiftnas_main
from hypothesis import assume, given
from hypothesis import strategies as st

from shiftnas.spaces import ArchConfig, get_space, list_spaces

SPACES = list_spaces()

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
not_numbers = (st.none() | st.booleans() | st.text(max_size=16)
               | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=8), scalars, max_size=3))
HUGE = [10**30, -10**30, 2**63, 2**64 + 1, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan, 10**4000]


@st.composite
def broken_arch(draw) -> dict:
    """A valid arch of a random space with one thing broken; every result is invalid."""
    sp = get_space(draw(st.sampled_from(SPACES)))
    arch = sp.sample(random.Random(draw(st.integers(0, 2**16)))).to_dict()
    name = draw(st.sampled_from(sorted(arch)))
    choices = sp.decision(name).choices
    how = draw(st.sampled_from(["missing", "unknown", "wrong type", "out of range", "huge",
                                "inactive", "space", "top-level"]))
    doc: dict = {"space": sp.name, "arch": arch}
    if how == "missing":
        del arch[name]
    elif how == "unknown":
        extra = draw(st.text(min_size=1, max_size=30))
        assume(extra not in {d.name for d in sp.decisions})
        arch[extra] = draw(json_values)
    elif how == "wrong type":
        arch[name] = draw(not_numbers)
    elif how == "out of range":
        v = draw(st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6))
        assume(v not in choices)
        arch[name] = v
    elif how == "huge":
        arch[name] = draw(st.sampled_from(HUGE))
    elif how == "inactive":  # a layer decision beyond the arch's depth
        inactive = [d for d in sp.decisions if d.name not in arch]
        assume(inactive)
        d = draw(st.sampled_from(inactive))
        arch[d.name] = d.choices[0]
    elif how == "space":
        doc["space"] = draw(st.text(max_size=20) | not_numbers)
        assume(doc["space"] not in SPACES)
    else:
        doc = draw(st.sampled_from([
            {"arch": arch}, {"space": sp.name}, [doc], {"space": sp.name, "arch": [arch]},
        ]))
    return doc


def _cost(tmp, text: str | bytes, suffix: str = ".json"):
    f = tmp / f"arch{suffix}"
    f.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return shiftnas_main(["cost", "--arch", str(f)])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("arch-files")


def test_valid_arch_files_pass(tmp):
    """The control: the same path accepts what shiftnas writes, as JSON and YAML."""
    for name in SPACES:
        arch = get_space(name).sample(random.Random(0))
        for text, suffix in ((arch.to_json(), ".json"), (arch.to_yaml(), ".yaml")):
            rc, out, err = _cost(tmp, text, suffix)
            assert rc == 0 and json.loads(out)["space"] == name, err


@FUZZ
@given(doc=broken_arch())
def test_broken_arch_documents(tmp, doc):
    text = json.dumps(doc, allow_nan=True)
    with pytest.raises(ValueError) as e:
        ArchConfig.from_json(text)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600, str(e.value)[:600]
    with pytest.raises(ValueError):
        ArchConfig.from_yaml(yaml.safe_dump(doc))
    rc, _, err = _cost(tmp, text)
    line = assert_one_line_error(rc, err, "shiftnas cost")
    assert str(tmp / "arch.json") in line  # the message names the file


@FUZZ
@given(doc=json_values)
def test_random_json_documents(tmp, doc):
    text = json.dumps(doc, allow_nan=True)
    try:
        ArchConfig.from_json(text)
    except ValueError:
        pass
    rc, _, err = _cost(tmp, text)
    assert_ok_or_one_line_error(rc, err, "shiftnas cost")


@FUZZ
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b'{"space": ', b"space: [",
                                                               b"\x00\x00", b"\x80abc"]),
       suffix=st.sampled_from([".json", ".yaml", ".txt"]))
def test_garbage_bytes(tmp, data, prefix, suffix):
    rc, _, err = _cost(tmp, prefix + data, suffix)
    assert_one_line_error(rc, err, "shiftnas cost")


@pytest.mark.parametrize("text", [
    "", " \n", "null", "[]", "{}", "1e400", '"vit-fmnist"',
    "[" * 100_000, "{\"a\": " * 50_000,  # nested past the recursion limit
    '{"space": "vit-fmnist", "arch": {"depth": 1' + "0" * 5000 + "}}",  # past int's digit limit
    '{"space": "vit-fmnist", "arch": {"depth": NaN, "embed_dim": Infinity}}',
    '{"space": "vit-fmnist", "arch": {"depth": 4}, "space": "x"}',  # duplicate key
    '{"space": "' + "x" * 1_000_000 + '", "arch": {}}',  # a 1 MB name: the error stays short
    json.dumps({"space": "vit-fmnist", "arch": {f"k{i}": i for i in range(20_000)}}),
])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_pathological_documents(tmp, text, suffix):
    rc, _, err = _cost(tmp, text, suffix)
    assert_one_line_error(rc, err, "shiftnas cost")


def test_num_classes_and_missing_file(tmp):
    f = tmp / "ok.json"
    f.write_text(get_space("vit-fmnist").min().to_json())
    for n in ("0", "-3"):
        rc, _, err = shiftnas_main(["cost", "--arch", str(f), "--num-classes", n])
        assert "--num-classes" in assert_one_line_error(rc, err, "shiftnas cost")
    for path in (tmp / "missing.json", tmp):
        rc, _, err = shiftnas_main(["cost", "--arch", str(path)])
        assert "no such file" in assert_one_line_error(rc, err, "shiftnas cost")


@pytest.mark.parametrize("extra", ["1: 2", "null: 3", "true: 4", "1.5: 5", "[a, b]: 6", "? {a: 1}\n  : 7", "!!binary aGk=: 8"])
def test_yaml_keys_that_are_not_strings(tmp, extra):
    """YAML allows numbers, null, booleans (and, refused by the parser, lists) as keys."""
    arch = get_space("vit-fmnist").min()
    body = "".join(f"  {k}: {v}\n" for k, v in arch.to_dict().items())
    extra = extra.replace("\n", "\n  ")
    text = f"space: vit-fmnist\narch:\n{body}  {extra}\n"
    with pytest.raises(ValueError):
        ArchConfig.from_yaml(text)
    rc, _, err = _cost(tmp, text, ".yaml")
    assert_one_line_error(rc, err, "shiftnas cost")
