"""`shiftnas generate | evaluate | export` on trained runs: what they report is what the
exported model computes."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from shiftnas import count_flops, count_params
from shiftnas.cli import main
from shiftnas.models.export import load_subnet
from shiftnas.search import load_run
from shiftnas.search.generate import export_arch
from shiftnas.spaces import ArchConfig, get_space
from shiftnas.train.evaluate import prepare_input

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 40


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _static_eval(run, model, arch: ArchConfig, split: str, n: int) -> dict:
    """Top-1 (%) and mean cross-entropy of a standalone model on the first `n` images of
    `split`, in the fixed order that `LoadedRun.evaluate` uses."""
    loader = run.loader(split)
    loader.set_epoch(0)
    correct, loss, seen = 0, 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x[: n - seen], y[: n - seen]
            logits = model(prepare_input(run.net, x, arch)).float()
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            seen += x.shape[0]
            if seen >= n:
                break
    return {"top1": 100.0 * correct / seen, "loss": loss / seen, "images": seen}


@pytest.fixture(scope="module")
def shift(shift_run):
    return load_run(shift_run)


def test_generate_json_is_consistent(shift, shift_run, capsys):
    lo, hi = shift.flops_range()
    budget = lo + 0.6 * (hi - lo)
    rc, out, _ = _cli(capsys, "generate", "--run", str(shift_run), "--flops", f"{budget:.0f}", "--json",
                      "--device", "cpu")
    assert rc == 0
    (line,) = out.splitlines()
    r = json.loads(line)
    assert {"budget", "budget_mflops", "bin", "arch", "short", "flops", "mflops", "params", "rel_error",
            "in_bin"} <= set(r)
    arch = ArchConfig.from_dict(r["space"], r["arch"])
    assert arch == shift.generator.generate(r["budget"])
    assert r["budget"] == pytest.approx(round(budget)) and r["budget_mflops"] == pytest.approx(r["budget"] / 1e6)
    assert r["flops"] == count_flops(shift.space, arch) and r["params"] == count_params(shift.space, arch)
    assert r["mflops"] == pytest.approx(r["flops"] / 1e6)
    assert r["rel_error"] == pytest.approx((r["flops"] - r["budget"]) / r["budget"])
    assert r["bin"] == shift.bins.bin_of(r["budget"])
    assert r["in_bin"] == (shift.bins.bin_of(r["flops"]) == r["bin"])
    assert r["short"] == arch.short()


def test_generate_sweep_one_line_per_bin(shift, shift_run, capsys):
    rc, out, _ = _cli(capsys, "generate", "--run", str(shift_run), "--sweep", "--json", "--device", "cpu")
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["bin"] for r in rows] == list(range(len(shift.bins)))
    assert [r["budget"] for r in rows] == pytest.approx(shift.bins.centers.tolist())
    rc, out, _ = _cli(capsys, "generate", "--run", str(shift_run), "--sweep", "--device", "cpu")
    assert rc == 0 and len(out.splitlines()) == len(shift.bins)
    assert [line.split()[-1] for line in out.splitlines()] == [r["short"].split()[-1] for r in rows]


def test_generate_export_matches_the_supernet(shift, shift_run, tmp_path, capsys):
    out_dir = tmp_path / "subnet"
    mid = shift.bins.centers[2].item()
    argv = ["generate", "--run", str(shift_run), "--flops", f"{mid / 1e6:.3f}M", "--export", str(out_dir),
            "--json", "--device", "cpu"]
    rc, out, _ = _cli(capsys, *argv)
    assert rc == 0
    r = json.loads(out)
    assert r["export"] == str(out_dir) and sorted(os.listdir(out_dir)) == ["arch.json", "model.safetensors"]
    rc, out, _ = _cli(capsys, "cost", "--arch", str(out_dir / "arch.json"))
    assert rc == 0 and json.loads(out)["flops"] == r["flops"]

    arch = ArchConfig.from_dict(r["space"], r["arch"])
    model = load_subnet(out_dir)
    x, _ = next(iter(shift.loader("val")))
    with torch.no_grad():
        want = shift.net(prepare_input(shift.net, x, arch), arch)
        got = model(x)
    assert (got - want).abs().max().item() < 1e-5
    rc, _, _ = _cli(capsys, *argv)  # a folder written by an earlier export is replaced
    assert rc == 0


def _evaluate_and_check(run_dir: Path, tmp_path: Path, capsys, split: str = "val") -> dict:
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    # 2 BN calibration batches instead of 20: evaluate and export each recalibrate every CNN
    # subnet, and 20 train-mode batches per subnet are most of this test's time on 2 CPU cores.
    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["eval"]["bn_calib_batches"] = 2
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = (run_copy / "summary.json").read_bytes()
    trained_pareto = (run_copy / "plots" / "pareto.png").read_bytes()
    rc, out, _ = _cli(capsys, "evaluate", "--run", str(run_copy), "--split", split,
                      "--max-images", str(N_IMAGES), "--json", "--device", "cpu")
    assert rc == 0
    result = json.loads(out)
    assert json.loads((run_copy / "evaluate.json").read_text()) == result
    assert (run_copy / "plots" / "pareto-evaluate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_copy / "plots" / "pareto.png").read_bytes() == trained_pareto  # training's figure is kept
    assert (run_copy / "summary.json").read_bytes() == summary
    assert result["split"] == split and result["images_per_arch"] == N_IMAGES
    assert len(result["bins"]["centers_mflops"]) == len(result["bins"]["edges_mflops"]) - 1

    # Every row's top-1 is the accuracy of its exported standalone model on the same images.
    # (Rows of one arch share an export: a barely trained generator gives one arch to all bins.)
    run = load_run(run_copy)
    # The loss is compared too: a barely trained CNN can score the same top-1 with and without
    # its recalibrated BN statistics (it predicts one class), its loss cannot.
    static: dict[ArchConfig, dict] = {}
    for i, row in enumerate(result["rows"]):
        arch = ArchConfig.from_dict(result["space"], row["arch_values"])
        if arch not in static:
            out_dir = export_arch(run, arch, tmp_path / f"subnet-{i}")
            static[arch] = _static_eval(run, load_subnet(out_dir), arch, split, N_IMAGES)
        got, where = static[arch], (row["source"], row["bin"], row["arch"])
        assert got["images"] == row["images"] == N_IMAGES
        assert got["top1"] == pytest.approx(row["top1"], abs=1e-6), where
        assert got["loss"] == pytest.approx(row["loss"], rel=1e-5, abs=1e-6), where
    return result


def test_evaluate_vit_shift_rows_match_exported_models(shift_run, tmp_path, capsys):
    result = _evaluate_and_check(shift_run, tmp_path, capsys)
    k = len(result["bins"]["centers_mflops"])
    assert [r["bin"] for r in result["rows"] if r["source"] == "generator"] == list(range(k))
    assert result["sampler"] == "shift"
    rc, out, _ = _cli(capsys, "evaluate", "--run", str(tmp_path / "run"), "--max-images", "8", "--device", "cpu")
    assert rc == 0 and "source" in out and str(tmp_path / "run" / "evaluate.json") in out
    assert f"wrote {tmp_path / 'run' / 'plots' / 'pareto-evaluate.png'}" in out


def test_evaluate_cnn_rows_match_exported_models_with_recalibrated_bn(cnn_run, tmp_path, capsys):
    result = _evaluate_and_check(cnn_run, tmp_path, capsys, split="minival")
    assert {r["source"] for r in result["rows"]} == {"generator"}


def test_evaluate_baseline_uses_random_archs(uniform_run, tmp_path, capsys):
    run_copy = tmp_path / "run"
    shutil.copytree(uniform_run, run_copy)
    rc, out, _ = _cli(capsys, "evaluate", "--run", str(run_copy), "--max-images", "8", "--json", "--device", "cpu")
    assert rc == 0
    result = json.loads(out)
    rows = result["rows"]
    assert set(result["bins"]) == {"edges_mflops", "centers_mflops"}  # a FLOPs run's bins, as before
    assert rows and {r["source"] for r in rows} == {"random"}
    assert len({r["bin"] for r in rows}) == len(rows)


def test_export_command(shift, shift_run, cnn_run, tmp_path, capsys):
    arch = get_space("vit-fmnist").sample(random.Random(3))
    (tmp_path / "a.json").write_text(arch.to_json())
    out_dir = tmp_path / "out"
    rc, out, _ = _cli(capsys, "export", "--run", str(shift_run), "--arch", str(tmp_path / "a.json"),
                      "--out", str(out_dir), "--device", "cpu")
    assert rc == 0 and out.split()[0] == str(out_dir)
    assert f"{count_flops('vit-fmnist', arch) / 1e6:.2f} MFLOPs" in out
    assert load_subnet(out_dir).arch == arch
    # an exported arch.json is accepted as the arch; another space's arch is refused
    rc, _, _ = _cli(capsys, "export", "--run", str(shift_run), "--arch", str(out_dir / "arch.json"),
                    "--out", str(out_dir), "--device", "cpu")
    assert rc == 0
    rc, _, err = _cli(capsys, "export", "--run", str(cnn_run), "--arch", str(out_dir / "arch.json"),
                      "--out", str(tmp_path / "cnn"), "--device", "cpu")
    assert rc == 2 and "space 'vit-fmnist'" in err and "'cnn-fmnist'" in err and not (tmp_path / "cnn").exists()


@pytest.mark.parametrize("case", ["range", "text", "baseline", "missing", "sweep-export", "foreign-out"])
def test_generate_errors_are_one_line(case, shift_run, uniform_run, tmp_path, capsys):
    run = str(shift_run)
    args = ["--flops", "25M"]
    if case == "range":
        args, match = ["--flops", "1G"], "outside this space's range"
    elif case == "text":
        args, match = ["--flops", "25X"], "not a budget"
    elif case == "baseline":
        run, match = str(uniform_run), "has no architecture generator"
    elif case == "missing":
        run, match = str(tmp_path / "nope"), "no such run directory"
    elif case == "sweep-export":
        args, match = ["--sweep", "--export", str(tmp_path / "x")], "--export needs one budget"
    else:
        lo, hi = load_run(shift_run).flops_range()
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        args = ["--flops", f"{(lo + hi) / 2:.0f}", "--export", str(tmp_path / "mine")]
        match = f"{str(tmp_path / 'mine')!r} already holds files that export did not write (notes.txt)"
    rc, out, err = _cli(capsys, "generate", "--run", run, *args, "--device", "cpu")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("shiftnas generate: error: ")
    assert match in err
    if case == "range":
        assert ".." in err  # "range 7.9M .. 62.9M"
    if case == "foreign-out":
        assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_cli_module_exit_code(tmp_path):
    missing = str(tmp_path / "nope")
    p = subprocess.run([sys.executable, "-m", "shiftnas.cli", "evaluate", "--run", missing],
                       check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    want = (f"shiftnas evaluate: error: --run {missing!r}: no such run directory "
            "(train one with train.py first)")
    assert p.stderr.splitlines() == [want]
