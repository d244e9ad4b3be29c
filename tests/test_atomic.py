"""shiftnas.atomic: the package's one way to write a file."""
from __future__ import annotations

import json
import os

import pytest

from shiftnas.atomic import atomic_write, fsync_dir, write_json_atomic, write_text_atomic


def test_writes_the_bytes_and_creates_the_folder(tmp_path):
    p = atomic_write(tmp_path / "a" / "b.bin", lambda f: f.write(b"\x00\x01"))
    assert p.read_bytes() == b"\x00\x01"
    assert [q.name for q in p.parent.iterdir()] == ["b.bin"]  # no temp file left


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.txt"
    write_text_atomic(p, "old\n")

    def half(f):
        f.write(b"new, half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, half)
    assert p.read_text() == "old\n"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.txt"]


def test_the_target_changes_only_at_the_rename(tmp_path):
    p = tmp_path / "x.txt"
    write_text_atomic(p, "old")
    seen = []
    atomic_write(p, lambda f: f.write(b"new"), before_replace=lambda: seen.append(p.read_text()))
    assert seen == ["old"] and p.read_text() == "new"


def test_a_planted_symlink_at_the_temp_path_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    p = tmp_path / "out.txt"
    (tmp_path / f".out.txt.tmp-{os.getpid()}").symlink_to(victim)
    write_text_atomic(p, "data")
    assert victim.read_text() == "keep" and p.read_text() == "data" and not p.is_symlink()


def test_mode_is_0644_less_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = write_text_atomic(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640


def test_json_refuses_nan_and_writes_tensors_as_lists(tmp_path):
    import torch

    p = write_json_atomic(tmp_path / "j.json", {"t": torch.tensor([1, 2]), "s": torch.tensor(3.5)})
    assert json.loads(p.read_text()) == {"t": [1, 2], "s": 3.5} and p.read_text().endswith("\n")
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "j.json", {"a": float("nan")})
    assert json.loads(p.read_text())["s"] == 3.5  # the refused write left the file as it was


def test_fsync_dir_of_a_missing_folder_is_a_no_op(tmp_path):
    fsync_dir(tmp_path / "missing")
