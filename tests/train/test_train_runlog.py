"""shiftnas.train.runlog: metrics.jsonl lines, truncation on resume, fsync, paths kept in the run dir,
atomic text/JSON writes."""
import json
import os

import pytest

from shiftnas.atomic import write_json_atomic, write_text_atomic
from shiftnas.train.runlog import RunLog


def _lines(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_lines_and_truncation_on_resume(tmp_path):
    log = RunLog(tmp_path, 0, 10, progress=False, tensorboard=False)
    for s in range(1, 7):
        log.log(s - 1, {"B": 0.5}, kind="shift")
        log.log(s, {"loss": float("nan") if s == 3 else 1.0 / s})
    log.close()
    assert _lines(tmp_path)[5] == {"step": 3, "kind": "train", "loss": "nan"}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "kind": "tr')  # a line cut by a crash
    RunLog(tmp_path, 4, 10, progress=False, tensorboard=False).close()  # resumed from the step-4 checkpoint
    assert [(r["step"], r["kind"]) for r in _lines(tmp_path)] == [
        (0, "shift"), (1, "train"), (1, "shift"), (2, "train"), (2, "shift"), (3, "train"), (3, "shift"), (4, "train")]


def test_fsync_forces_metrics_to_disk(tmp_path, monkeypatch):
    log = RunLog(tmp_path, 0, 10, progress=False, tensorboard=False)
    log.log(1, {"loss": 1.0})
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd))[1])
    log.fsync()
    assert synced == [(tmp_path / "metrics.jsonl").stat().st_ino]
    assert _lines(tmp_path) == [{"step": 1, "kind": "train", "loss": 1.0}]
    log.close()
    log.fsync()  # after close, and on ranks without a log: nothing to do
    RunLog(tmp_path / "other-rank", 0, 10, enabled=False).fsync()
    assert synced == [(tmp_path / "metrics.jsonl").stat().st_ino]
    assert not (tmp_path / "other-rank").exists()


@pytest.mark.parametrize("planted", ["metrics.jsonl", "tb"])
def test_symlink_in_run_dir_cannot_redirect_the_log(tmp_path, planted):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep.jsonl").write_text('{"step": 99}\n')
    (run / planted).symlink_to(elsewhere / "keep.jsonl" if planted == "metrics.jsonl" else elsewhere)
    with pytest.raises(ValueError, match=f"output path '{planted}' escapes the run directory"):
        RunLog(run, 5, 10, progress=False, tensorboard=True)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.jsonl"]
    assert (elsewhere / "keep.jsonl").read_text() == '{"step": 99}\n'
    RunLog(run, 5, 10, enabled=False).close()  # a rank that writes nothing does not care


def test_symlink_inside_the_run_dir_is_followed(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "metrics.jsonl").symlink_to(tmp_path / "logs" / "m.jsonl")
    log = RunLog(tmp_path, 0, 10, progress=False, tensorboard=False)
    log.log(1, {"loss": 2.0})
    log.close()
    assert json.loads((tmp_path / "logs" / "m.jsonl").read_text()) == {"step": 1, "kind": "train", "loss": 2.0}


def test_atomic_writes_never_follow_a_planted_temp_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / f".out.json.tmp-{os.getpid()}").symlink_to(victim)
    write_json_atomic(tmp_path / "out.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": [1, 2]} and victim.read_text() == "keep"
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "out.json", {"a": float("nan")})
    assert json.loads((tmp_path / "out.json").read_text()) == {"a": [1, 2]}
    write_text_atomic(tmp_path / "sub" / "t.txt", "x\n")
    assert (tmp_path / "sub" / "t.txt").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "sub", "victim.txt"]
