"""shiftnas.train.plots: the sampling-distribution and accuracy/FLOPs figures."""

import subprocess
import sys

import pytest

from shiftnas.train.plots import plot_pareto, plot_sampling, sampling_grid

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _history(k=4, n=6):
    out = []
    for t in range(n):
        raw = [1.0 + 0.2 * t * (b == 0) for b in range(k)]
        s = sum(raw)
        out.append({"step": 10 * t, "probs": [r / s for r in raw]})
    return out


def test_plot_sampling_writes_png_into_new_folders(tmp_path):
    path = tmp_path / "a" / "b" / "sampling.png"
    got = plot_sampling(_history(), path, centers_mflops=[1.0, 2.0, 3.0, 4.0], title="B")
    assert got == path
    assert _is_png(path)
    assert _leftovers(path.parent, {"sampling.png"}) == []  # no temp files left behind
    # without centres, and overwriting an existing file
    path.write_bytes(b"old")
    plot_sampling(_history(k=3), path)
    assert _is_png(path)


def test_plot_sampling_empty_history_uses_centres(tmp_path):
    path = plot_sampling([], tmp_path / "s.png", centers_mflops=[1.5, 2.5])
    assert _is_png(path)
    with pytest.raises(ValueError, match="number of bins"):
        plot_sampling([], tmp_path / "t.png")
    with pytest.raises(ValueError, match="number of bins"):
        plot_sampling([], tmp_path / "t.png", centers_mflops=[])
    assert not (tmp_path / "t.png").exists()


def test_plot_sampling_rejects_bad_history(tmp_path):
    bad = _history(k=3)
    bad[2] = {"step": 20, "probs": [0.5, 0.5]}
    with pytest.raises(ValueError, match="history\\[2\\]"):
        plot_sampling(bad, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'step' and 'probs'"):
        plot_sampling([{"probs": [1.0]}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="centres"):
        plot_sampling(_history(k=3), tmp_path / "x.png", centers_mflops=[1.0, 2.0])
    assert list(tmp_path.iterdir()) == []


def test_sampling_heat_map_is_probability_times_bins_with_one_cell_per_entry():
    edges, grid = sampling_grid([0, 10, 20, 50], [[0.25, 0.75], [0.5, 0.5], [0.1, 0.9], [0.5, 0.5]])
    assert edges == [0.0, 10.0, 20.0, 50.0, 60.0]  # the last entry holds for the median gap
    assert grid == [[0.5, 1.0, 0.2, 1.0], [1.5, 1.0, 1.8, 1.0]]  # rows: bins; 1 = uniform
    assert sampling_grid([7], [[1.0]]) == ([7.0, 8.0], [[1.0]])


def test_plot_sampling_draws_the_bin_counts_and_checks_their_number(tmp_path):
    path = plot_sampling(_history(k=4), tmp_path / "s.png", centers_mflops=[1, 2, 3, 4], counts=[5, 0, 3, 2])
    assert _is_png(path)
    assert _is_png(plot_sampling([], tmp_path / "e.png", centers_mflops=[1, 2], counts=[1, 1]))
    with pytest.raises(ValueError, match="3 bin counts given for 4 bins"):
        plot_sampling(_history(k=4), tmp_path / "x.png", counts=[1, 2, 3])
    assert not (tmp_path / "x.png").exists()


def test_failed_save_leaves_target_and_folder_clean(tmp_path):
    path = tmp_path / "fig.notaformat"
    path.write_bytes(b"keep me")
    with pytest.raises(ValueError):  # matplotlib: unknown format
        plot_sampling(_history(), path)
    assert path.read_bytes() == b"keep me"
    assert _leftovers(tmp_path, {"fig.notaformat"}) == []


def _rows():
    rows = []
    for src, base in (("generator", 70.0), ("random", 65.0)):
        for k, mf in enumerate([3.0, 1.0, 2.0]):  # unsorted MFLOPs
            rows.append(
                {
                    "bin": k,
                    "lo_mflops": mf - 0.5,
                    "hi_mflops": mf + 0.5,
                    "source": src,
                    "mflops": mf,
                    "top1": base + mf,
                }
            )
    return rows


def test_plot_pareto_writes_png(tmp_path):
    path = plot_pareto(_rows(), tmp_path / "out" / "pareto.png", title="front")
    assert path == tmp_path / "out" / "pareto.png"
    assert _is_png(path)
    assert _leftovers(path.parent, {"pareto.png"}) == []
    # rows without bin edges or source are fine too
    p2 = plot_pareto([{"mflops": 1.0, "top1": 50.0}], tmp_path / "p2.png")
    assert _is_png(p2)


def test_plot_pareto_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        plot_pareto([], tmp_path / "p.png")
    rows = _rows()
    del rows[3]["top1"]
    with pytest.raises(ValueError, match="rows\\[3\\]"):
        plot_pareto(rows, tmp_path / "p.png")
    with pytest.raises(ValueError, match="mflops"):
        plot_pareto([{"top1": 1.0, "mflops": "abc"}], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_importing_shiftnas_does_not_import_matplotlib():
    code = (
        "import sys, shiftnas, shiftnas.train.plots, shiftnas.train.evaluate; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
