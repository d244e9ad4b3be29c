"""shiftnas.integrity.content_digest: what changes the digest and what does not."""
import pytest
import torch

from shiftnas.integrity import content_digest


def test_same_contents_same_digest():
    a = {"w": torch.arange(6.0).reshape(2, 3), "step": 3, "names": ["a", "b"]}
    b = {"names": ["a", "b"], "step": 3, "w": torch.arange(6.0).reshape(2, 3).clone()}  # key order differs
    assert content_digest(a) == content_digest(b)
    wide = torch.arange(12.0).reshape(2, 6)
    assert content_digest(wide[:, :3]) == content_digest(wide[:, :3].contiguous())  # a view: its values only
    assert len(content_digest(a)) == 64


@pytest.mark.parametrize("other", [
    {"w": torch.arange(6.0).reshape(3, 2)},                         # shape
    {"w": torch.arange(6.0, dtype=torch.float64).reshape(2, 3)},    # dtype
    {"w": torch.arange(6.0).reshape(2, 3).index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(5.5))},
    {"w": torch.arange(6.0).reshape(2, 3), "x": 1},                 # an extra key
    {"w": torch.arange(6.0).reshape(2, 3), "x": True},
    {"w": torch.arange(6.0).reshape(2, 3), "x": 1.0},
    {"w": torch.arange(6.0).reshape(2, 3), "x": "1"},
    {"w": [torch.arange(6.0).reshape(2, 3)]},
])
def test_a_change_changes_the_digest(other):
    base = {"w": torch.arange(6.0).reshape(2, 3)}
    assert content_digest(base) != content_digest(other)


def test_types_are_told_apart():
    values = [0, 0.0, -0.0, False, None, "0", b"0", [0], (0,), {0: 0}, {"0": 0}, torch.Size([0]),
              torch.float32, torch.device("cpu"), torch.zeros(1), torch.zeros(1, dtype=torch.int32),
              torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bfloat16), 1j]
    assert len({content_digest(v) for v in values}) == len(values)


def test_flipped_bit_in_a_tensor_changes_the_digest():
    t = torch.randn(1000)
    before = content_digest({"t": t})
    t.view(torch.int32)[500] ^= 1  # the lowest mantissa bit of one element
    assert content_digest({"t": t}) != before


def test_unsupported_leaf_is_named():
    with pytest.raises(ValueError, match=r"obj\['model'\]\['opt'\]: builtins.set"):
        content_digest({"model": {"opt": {1, 2}}})
