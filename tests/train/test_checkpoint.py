"""shiftnas.train.checkpoint: atomic save, pruning, auto-resume fallback, unsafe pickles, paths, RNG,
the integrity digest, resuming past corrupt checkpoints."""
import os
import pickle
import random
import warnings
import zipfile

import numpy as np
import pytest
import torch

from shiftnas.train.checkpoint import (
    DIGEST_KEY,
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    list_moved_aside,
    load_checkpoint,
    restore_rng_state,
    resume_checkpoint,
    safe_path,
    save_checkpoint,
)


def _state(step):
    torch.manual_seed(step)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    return net, opt, {"model": net.state_dict(), "optim": opt.state_dict(), "step": step,
                      "B": torch.zeros(10), "history": [[0.1, 0.2]], "name": "x", "ema": None,
                      "rng": capture_rng_state()}


def test_round_trip(tmp_path):
    net, opt, state = _state(7)
    p = save_checkpoint(tmp_path, state, 7)
    assert p == tmp_path.resolve() / "checkpoint-00000007.pt" and p.is_file()
    got = load_checkpoint(p)
    assert got["step"] == 7 and got["name"] == "x" and got["ema"] is None
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    net2.load_state_dict(got["model"])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=1e-3)
    opt2.load_state_dict(got["optim"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert latest_checkpoint(tmp_path) == p
    assert not list(tmp_path.glob("*.tmp"))


def test_rejects_unsafe_state_up_front(tmp_path):
    with pytest.raises(ValueError, match="weights_only"):
        save_checkpoint(tmp_path, {"a": np.zeros(3)}, 1)
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, {"a": 1}, -1)
    assert list_checkpoints(tmp_path) == []


def test_pruning_keeps_newest(tmp_path):
    for s in range(0, 50, 10):
        save_checkpoint(tmp_path, {"step": s}, s, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    save_checkpoint(tmp_path, {"step": 50}, 50, keep=3)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40, 50]
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 50


def test_crash_mid_write_falls_back(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path, {"step": 1, "w": torch.randn(100)}, 1)
    p2 = save_checkpoint(tmp_path, {"step": 2, "w": torch.randn(100)}, 2)
    # a crash before os.replace leaves only a temp file: ignored
    (tmp_path / "checkpoint-00000003.pt.999.tmp").write_bytes(p2.read_bytes()[:100])
    assert latest_checkpoint(tmp_path) == p2
    # a truncated newest file (e.g. written by something non-atomic): skipped with a warning
    data = p2.read_bytes()
    p3 = tmp_path / "checkpoint-00000003.pt"
    p3.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="checkpoint-00000003.pt"):
        best = latest_checkpoint(tmp_path)
    assert best == p2 and load_checkpoint(best)["step"] == 2
    with pytest.raises(ValueError, match="not a complete shiftnas checkpoint"):
        load_checkpoint(p3)
    # the next save cleans leftovers
    save_checkpoint(tmp_path, {"step": 4}, 4)
    assert not list(tmp_path.glob("*.tmp"))


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_checkpoint_refused(tmp_path, how):
    marker = tmp_path / "PWNED"
    p = tmp_path / "checkpoint-00000009.pt"
    payload = {"model": {}, "step": 9, "evil": _Evil(marker)}
    if how == "torch":
        torch.save(payload, p, _use_new_zipfile_serialization=True)
    else:
        p.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="not a safe shiftnas checkpoint \\(refusing to unpickle code\\)"):
        load_checkpoint(p)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert latest_checkpoint(tmp_path) is None
    assert any("refusing" in str(x.message) for x in w)
    assert not marker.exists()


def test_safe_path(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert safe_path(run, "plots/a.png") == run.resolve() / "plots" / "a.png"
    assert safe_path(run, "a/../b.json") == run.resolve() / "b.json"
    for bad in ["../x", "a/../../x", "/etc/passwd", str(run / "x")]:
        with pytest.raises(ValueError):
            safe_path(run, bad)
    (run / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="escapes"):
        safe_path(run, "out/x")
    (run / "inside").symlink_to(run / "plots")
    assert safe_path(run, "inside/y") == run.resolve() / "plots" / "y"


def test_rng_round_trip(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    st = capture_rng_state()
    p = save_checkpoint(tmp_path, {"rng": st}, 0)
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(load_checkpoint(p)["rng"])
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


# ----------------------------------------------------------------------- integrity digest
def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if k != DIGEST_KEY:
                yield from _tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _flip_tensor_byte(p):
    """Flip one byte in the middle of the largest tensor record of torch's zip; return its offset."""
    with zipfile.ZipFile(p) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    data = bytearray(p.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))
    at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[at] ^= 0x10
    p.write_bytes(bytes(data))
    return at


def test_byte_flip_in_tensor_data_is_detected(tmp_path):
    _, _, state = _state(3)
    good = save_checkpoint(tmp_path, state, 3)
    p = save_checkpoint(tmp_path, state, 4)
    _flip_tensor_byte(p)
    raw = torch.load(p, map_location="cpu", weights_only=True)  # torch itself does not notice
    assert sum(not torch.equal(a, b) for a, b in zip(_tensors(raw), _tensors(state), strict=True)) == 1
    with pytest.raises(ValueError, match="is corrupt: its contents do not match the sha256 digest") as e:
        load_checkpoint(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="skipping checkpoint checkpoint-00000004.pt.*is corrupt"):
        assert latest_checkpoint(tmp_path) == good  # skipped, older one used, nothing moved
    assert p.is_file()
    assert load_checkpoint(p, verify=False)["step"] == 3  # explicit opt-out loads it


def test_changed_value_under_the_old_digest_is_detected(tmp_path):
    p = save_checkpoint(tmp_path, {"step": 5, "lr": 0.1, "w": torch.ones(4)}, 5)
    raw = torch.load(p, weights_only=True)
    assert set(raw) == {"step", "lr", "w", DIGEST_KEY} and raw[DIGEST_KEY]["algo"] == "sha256"
    for change in ({"step": 6}, {"lr": 0.2}, {"w": torch.ones(4, dtype=torch.float64)}, {"w": torch.ones(2, 2)},
                   {"extra": 1}, {DIGEST_KEY: {"algo": "md5", "hex": "0"}}):
        torch.save({**raw, **change}, p)
        with pytest.raises(ValueError, match=f"{p.name} is corrupt"):
            load_checkpoint(p)
    torch.save(raw, p)
    assert set(load_checkpoint(p)) == {"step", "lr", "w"}  # the digest is not handed back


def test_checkpoint_without_digest_is_refused_unless_trusted(tmp_path):
    p = tmp_path / "checkpoint-00000001.pt"
    torch.save({"step": 1, "w": torch.zeros(3)}, p)
    with pytest.raises(ValueError, match="has no integrity digest.*verify=False") as e:
        load_checkpoint(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="no integrity digest"):
        assert latest_checkpoint(tmp_path) is None
    trusted = load_checkpoint(p, verify=False)
    assert load_checkpoint(save_checkpoint(tmp_path, trusted, 2))["step"] == 1


def test_digest_key_is_reserved(tmp_path):
    with pytest.raises(ValueError, match=f"{DIGEST_KEY!r} is reserved"):
        save_checkpoint(tmp_path, {DIGEST_KEY: 1}, 1)


# ----------------------------------------------------------------------- resuming past corrupt files
def _w(step):
    return {"step": step, "w": torch.full((256,), float(step))}


def test_resume_falls_back_and_keeps_the_corrupt_file(tmp_path):
    assert resume_checkpoint(tmp_path) is None and resume_checkpoint(tmp_path / "missing") is None
    good = save_checkpoint(tmp_path, _w(4), 4)
    bad = save_checkpoint(tmp_path, _w(8), 8)
    _flip_tensor_byte(bad)
    with pytest.warns(UserWarning, match="skipping checkpoint checkpoint-00000008.pt \\(is corrupt.*\\); "
                                         "moved aside to checkpoint-00000008.pt.corrupt"):
        assert resume_checkpoint(tmp_path) == good
    assert not bad.exists() and [s for s, _ in list_checkpoints(tmp_path)] == [4]
    assert [p.name for _, p in list_moved_aside(tmp_path)] == ["checkpoint-00000008.pt.corrupt"]
    for step in (8, 12, 16):  # the resumed run goes on; pruning keeps the newest 2 and the evidence
        save_checkpoint(tmp_path, _w(step), step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000008.pt.corrupt", "checkpoint-00000012.pt", "checkpoint-00000016.pt"]
    assert resume_checkpoint(tmp_path) == tmp_path / "checkpoint-00000016.pt"


def test_resume_refuses_a_run_dir_where_nothing_verifies(tmp_path):
    for step in (4, 8):
        _flip_tensor_byte(save_checkpoint(tmp_path, _w(step), step))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no warnings beside it
        with pytest.raises(ValueError) as e:
            resume_checkpoint(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "has no checkpoint that loads and verifies" in msg and "to start over" in msg
    assert "checkpoint-00000008.pt (is corrupt" in msg and "checkpoint-00000004.pt (is corrupt" in msg
    assert list_checkpoints(tmp_path) == [] and len(list_moved_aside(tmp_path)) == 2
    with pytest.raises(ValueError, match="checkpoint-00000008.pt.corrupt \\(moved aside earlier\\)"):
        resume_checkpoint(tmp_path)  # asked again: still no silent fresh start


def test_resume_without_moving_and_name_collisions(tmp_path):
    p = save_checkpoint(tmp_path, _w(3), 3)
    half = p.read_bytes()[:1000]
    p.write_bytes(half)
    with pytest.raises(ValueError, match="checkpoint-00000003.pt \\(is not a complete shiftnas checkpoint"):
        resume_checkpoint(tmp_path, move_aside=False)
    assert p.is_file() and list_moved_aside(tmp_path) == []
    (tmp_path / "checkpoint-00000003.pt.corrupt").write_bytes(b"an earlier one")
    with pytest.raises(ValueError, match="moved aside to checkpoint-00000003.pt.corrupt.1"):
        resume_checkpoint(tmp_path)
    assert (tmp_path / "checkpoint-00000003.pt.corrupt").read_bytes() == b"an earlier one"
    assert (tmp_path / "checkpoint-00000003.pt.corrupt.1").read_bytes() == half
