"""A checkpoint corrupted on disk (one byte flipped in its tensor data) is never trained on.

`train.py --resume auto` continues from the newest checkpoint that verifies, moves the corrupt
one aside (kept as evidence, not pruned) and ends with the same weights as an uninterrupted run;
a run directory where no checkpoint verifies stops with exit 2 and one line naming the files and
how to start over, on every later attempt too; `--resume PATH` of a corrupt file is refused.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from clicheck import assert_one_line_error, make_mini_root, train_main
from fault_harness import flip_tensor_byte
from fmnist_tiny import tiny_overrides

from shiftnas.train.checkpoint import list_checkpoints, list_moved_aside, load_checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted 8-step run: checkpoints at steps 4 and 8."""
    d = tmp_path_factory.mktemp("corrupt")
    root = make_mini_root(d / "data")
    rc, _, err = train_main(tiny_overrides(root, d / "runs", "r"), seconds=600)
    assert rc == 0, err[-3000:]
    run = d / "runs" / "r"
    assert [s for s, _ in list_checkpoints(run)] == [4, 8]
    return {"root": root, "run": run, "final": load_checkpoint(run / "checkpoint-00000008.pt")}


def _copy(finished, tmp_path) -> tuple[Path, list[str]]:
    run = tmp_path / "runs" / "r"
    shutil.copytree(finished["run"], run)
    return run, tiny_overrides(finished["root"], tmp_path / "runs", "r")


def test_resume_auto_skips_a_corrupt_newest_checkpoint(finished, tmp_path):
    run, args = _copy(finished, tmp_path)
    flip_tensor_byte(run / "checkpoint-00000008.pt")
    with pytest.warns(UserWarning, match=r"skipping checkpoint checkpoint-00000008.pt \(is corrupt.*\); "
                                         "moved aside to checkpoint-00000008.pt.corrupt"):
        rc, _, err = train_main(["--resume", "auto", *args], seconds=600)
    assert rc == 0, err[-3000:]
    assert f"resumed from {run / 'checkpoint-00000004.pt'} at step 4" in err
    assert [p.name for _, p in list_moved_aside(run)] == ["checkpoint-00000008.pt.corrupt"]
    redone = load_checkpoint(run / "checkpoint-00000008.pt")  # steps 4..8 trained again, exactly
    for k, v in finished["final"]["model"].items():
        assert torch.equal(redone["model"][k], v), k


def test_run_dir_where_nothing_verifies_is_not_restarted(finished, tmp_path):
    run, args = _copy(finished, tmp_path)
    for p in list_checkpoints(run):
        flip_tensor_byte(p[1])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith("checkpoint-")}
    rc, _, err = train_main(["--resume", "auto", *args], seconds=300)
    line = assert_one_line_error(rc, err, "train.py")
    assert "checkpoint-00000008.pt (is corrupt" in line and "checkpoint-00000004.pt (is corrupt" in line
    assert "to start over" in line
    assert list_checkpoints(run) == [] and len(list_moved_aside(run)) == 2
    rc, _, err = train_main(["--resume", "auto", *args], seconds=300)  # asked again
    assert "checkpoint-00000008.pt.corrupt (moved aside earlier)" in assert_one_line_error(rc, err, "train.py")
    rc, _, err = train_main(args, seconds=300)  # a fresh run into that directory
    assert "moved aside as corrupt" in assert_one_line_error(rc, err, "train.py")
    assert len(list_moved_aside(run)) == 2 and list_checkpoints(run) == []
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.startswith("checkpoint-")} \
        == before  # metrics.jsonl, config.yaml, summary.json, ...: untouched


def test_resume_path_of_a_corrupt_checkpoint_is_refused(finished, tmp_path):
    run, args = _copy(finished, tmp_path)
    p = run / "checkpoint-00000008.pt"
    flip_tensor_byte(p)
    rc, _, err = train_main(["--resume", str(p), *args], seconds=300)
    line = assert_one_line_error(rc, err, "train.py")
    assert str(p) in line and "is corrupt" in line
    assert p.is_file()  # named explicitly: reported, left where it is
