"""`shiftnas prepare fashion-mnist`: counts, pixels and labels against the IDX files, the
minival split, idempotence and atomicity (an interrupted run is never taken as finished)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shiftnas.data import DataError, is_prepared, prepare_fashion_mnist, scan_split
from shiftnas.data import prepare as prep
from shiftnas.data.prepare import FASHION_MNIST_FOLDERS, MARKER, SOURCE_FILES, main, minival_indices

REPO = Path(__file__).resolve().parents[2]
quiet = {"log": lambda *_: None}


def _index(path: str) -> int:
    return int(Path(path).stem)


def test_real_fashion_mnist_counts_pixels_labels(fmnist_root, fmnist_idx):
    splits = {s: scan_split(fmnist_root, s) for s in ("train", "minival", "val")}
    assert len(splits["train"]) + len(splits["minival"]) == 60_000
    assert len(splits["minival"]) == 5_000
    assert len(splits["val"]) == 10_000
    for s in splits.values():  # folder order == official label order
        assert s.classes == FASHION_MNIST_FOLDERS
    # minival: class-balanced, carved out of train (disjoint, together all 60,000)
    assert np.bincount(splits["minival"].labels).tolist() == [500] * 10
    train_ids = {_index(f) for f in splits["train"].files}
    mini_ids = {_index(f) for f in splits["minival"].files}
    assert not train_ids & mini_ids and train_ids | mini_ids == set(range(60_000))
    assert {_index(f) for f in splits["val"].files} == set(range(10_000))

    rng = np.random.default_rng(1)
    for split, (xs, ys) in {
        "train": ("train_images", "train_labels"),
        "minival": ("train_images", "train_labels"),
        "val": ("test_images", "test_labels"),
    }.items():
        idx = splits[split]
        for k in rng.choice(len(idx), 150, replace=False):
            i = _index(idx.files[k])
            with Image.open(idx.files[k]) as im:
                assert im.mode == "L" and im.size == (28, 28)
                np.testing.assert_array_equal(
                    np.asarray(im), fmnist_idx[xs][i], err_msg=idx.files[k]
                )
            assert idx.labels[k] == fmnist_idx[ys][i], idx.files[k]


def test_finished_tree_is_left_alone(fmnist_root):
    marker = fmnist_root / MARKER
    before = marker.stat().st_mtime_ns
    said = []
    t0 = time.perf_counter()
    prepare_fashion_mnist(fmnist_root, log=said.append)
    assert time.perf_counter() - t0 < 10  # a check (hash + count), not a rewrite
    assert marker.stat().st_mtime_ns == before and "already prepared" in said[0]
    assert is_prepared(fmnist_root)


def test_minival_indices_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 50)
    a = minival_indices(labels, 23, seed=3)
    assert len(a) == 23 and len(set(a)) == 23
    assert np.bincount(labels[a], minlength=10).tolist() == [3, 3, 3] + [2] * 7
    assert (a == minival_indices(labels, 23, seed=3)).all()
    with pytest.raises(DataError, match="--minival 501"):
        minival_indices(labels, 501)


def test_small_prepare_and_cli(tmp_path, small_source, capsys):
    out = tmp_path / "fm"
    assert (
        main(
            [
                "fashion-mnist",
                "--out",
                str(out),
                "--source",
                str(small_source),
                "--minival",
                "25",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "prepared train 275, val 60, minival 25" in capsys.readouterr().out
    m = json.loads((out / MARKER).read_text())
    assert m["minival"] == 25 and sum(m["counts"]["minival"].values()) == 25
    assert (
        main(["fashion-mnist", "--out", str(out), "--source", str(small_source), "--minival", "25"])
        == 0
    )
    assert "left alone" in capsys.readouterr().out
    # asked for another split: refuse to clobber, --force replaces
    assert (
        main(["fashion-mnist", "--out", str(out), "--source", str(small_source), "--minival", "10"])
        == 2
    )
    err = capsys.readouterr().err
    assert "minival=25" in err and "--force" in err
    assert (
        main(
            [
                "fashion-mnist",
                "--out",
                str(out),
                "--source",
                str(small_source),
                "--minival",
                "0",
                "--force",
            ]
        )
        == 0
    )
    assert not (out / "minival").exists() and len(scan_split(out, "train")) == 300
    assert not list(tmp_path.glob("fm.tmp-*"))
    assert [p.name for p in tmp_path.iterdir()] == ["fm"]  # no lock file or tree left beside it


def test_interrupted_run_is_not_finished(tmp_path, small_source, monkeypatch):
    out = tmp_path / "fm"
    calls = []
    real = prep._write_png

    def dies_after_50(path, pixels):
        calls.append(path)
        if len(calls) == 50:
            raise KeyboardInterrupt  # Ctrl-C half-way
        real(path, pixels)

    monkeypatch.setattr(prep, "_write_png", dies_after_50)
    with pytest.raises(KeyboardInterrupt):
        prepare_fashion_mnist(out, small_source, 25, workers=1, **quiet)
    assert not out.exists() and not is_prepared(out)
    monkeypatch.setattr(prep, "_write_png", real)
    prepare_fashion_mnist(out, small_source, 25, workers=1, **quiet)
    assert is_prepared(out) and len(scan_split(out, "val")) == 60


def test_killed_run_is_not_finished(tmp_path, small_source):
    """SIGKILL (no cleanup at all) half-way: the partial tree stays in DIR.tmp-*, never DIR."""
    out = tmp_path / "fm"
    code = (
        "import time, shiftnas.data.prepare as p\n"
        "real = p._write_png\n"
        "def slow(path, px):\n"
        "    time.sleep(0.02); real(path, px)\n"
        "p._write_png = slow\n"
        f"p.prepare_fashion_mnist({str(out)!r}, {str(small_source)!r}, 25, workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            tmps = list(tmp_path.glob("fm.tmp-*"))
            if tmps and sum(1 for _ in tmps[0].rglob("*.png")) > 20:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the preparation never started writing")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and not is_prepared(out)
    assert list(tmp_path.glob("fm.tmp-*"))  # the debris of the killed run
    prepare_fashion_mnist(out, small_source, 25, **quiet)
    assert is_prepared(out) and not list(tmp_path.glob("fm.tmp-*"))


def test_tree_without_marker_is_not_taken_as_finished(tmp_path, small_source):
    out = tmp_path / "fm"
    (out / "train" / FASHION_MNIST_FOLDERS[0]).mkdir(parents=True)  # e.g. a copy cut short
    (out / "train" / FASHION_MNIST_FOLDERS[0] / "00001.png").write_bytes(b"x")
    assert not is_prepared(out)
    with pytest.raises(DataError, match=f"{out} exists but has no valid {MARKER}.*--force"):
        prepare_fashion_mnist(out, small_source, 25, **quiet)
    prepare_fashion_mnist(out, small_source, 25, force=True, **quiet)
    assert is_prepared(out)


def test_damaged_tree_is_prepared_again(tmp_path, small_source):
    out = tmp_path / "fm"
    prepare_fashion_mnist(out, small_source, 25, **quiet)
    victim = next((out / "val").rglob("*.png"))
    victim.unlink()
    assert not is_prepared(out)
    with pytest.warns(UserWarning, match="does not hold the images"):
        prepare_fashion_mnist(out, small_source, 25, **quiet)
    assert is_prepared(out) and victim.is_file()


def test_missing_or_bad_sources(tmp_path, small_source):
    with pytest.raises(
        DataError,
        match=f"{tmp_path}/nowhere/train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist",
    ):
        prepare_fashion_mnist(tmp_path / "out", tmp_path / "nowhere", **quiet)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in SOURCE_FILES.values():
        (bad / f).write_bytes((small_source / f).read_bytes())
    data = (small_source / SOURCE_FILES["test_images"]).read_bytes()
    (bad / SOURCE_FILES["test_images"]).write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(DataError, match=str(bad / SOURCE_FILES["test_images"])):
        prepare_fashion_mnist(tmp_path / "out", bad, 25, **quiet)
    assert not (tmp_path / "out").exists()


def test_shiftnas_cli_prepare(tmp_path, small_source, capsys):
    """`shiftnas prepare ...` once shiftnas/cli.py registers add_prepare_parser."""
    from shiftnas import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    assert "prepare" in sub.choices
    out = tmp_path / "fm"
    argv = ["prepare", "fashion-mnist", "--out", str(out), "--source", str(small_source)]
    assert cli.main([*argv, "--minival", "20"]) == 0 and is_prepared(out)
    assert (
        cli.main(["prepare", "fashion-mnist", "--out", str(out), "--source", str(tmp_path / "x")])
        == 2
    )
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_standalone_prepare_is_the_cli_command_without_the_cli():
    """`python -m shiftnas.data.prepare` parses and fails as `shiftnas prepare` does, without
    importing shiftnas.cli."""
    code = (
        "import sys\n"
        "from shiftnas.data.prepare import main\n"
        "rc = main(['fashion-mnist', '--out', sys.argv[1], '--source', sys.argv[1]])\n"
        "print(rc, 'shiftnas.cli' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "/nonexistent/fm"], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.stdout.split() == ["2", "False"], r.stderr[-2000:]
    assert r.stderr.startswith("shiftnas prepare: error: ")
    r = subprocess.run([sys.executable, "-m", "shiftnas.data.prepare", "--help"], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0 and r.stdout.startswith("usage: shiftnas prepare ")
