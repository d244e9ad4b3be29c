"""Every arch file a command writes is accepted by every command that reads one: the files are
written through the real commands (sample, generate, generate --export, search --out, and
ArchConfig's JSON/YAML) and read back by `cost --arch` and `export --arch`."""
from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest

from shiftnas.cli import main
from shiftnas.cost import count_flops
from shiftnas.search.export import read_arch_file
from shiftnas.spaces import ArchConfig, get_space

TINY_SEARCH = ["--population", "4", "--mutations", "2", "--crossovers", "2", "--parents", "2",
               "--generations", "1", "--images", "16", "--device", "cpu"]
WRITERS = ["to_json", "to_yaml", "sample --json", "generate --json", "generate --export", "search --out"]


def _stdout(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def written(shift_run, tmp_path_factory) -> dict[str, tuple[Path, ArchConfig]]:
    """writer -> (the file it wrote, the arch it says it wrote), every writer run once."""
    d = tmp_path_factory.mktemp("arch-files")

    def run(*argv: str) -> str:  # capsys is per test; this fixture is per module
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(list(argv)) == 0
        return out.getvalue()

    files = {}
    arch = get_space("vit-fmnist").sample(random.Random(3))
    (d / "a.json").write_text(arch.to_json())
    files["to_json"] = (d / "a.json", arch)
    (d / "a.yaml").write_text(arch.to_yaml())
    files["to_yaml"] = (d / "a.yaml", arch)

    line = run("sample", "--space", "vit-fmnist", "-n", "1", "--seed", "5", "--json")
    (d / "sample.json").write_text(line)
    rec = json.loads(line)
    files["sample --json"] = (d / "sample.json", ArchConfig.from_dict(rec["space"], rec["arch"]))

    line = run("generate", "--run", str(shift_run), "--flops", "30M", "--json", "--device", "cpu")
    (d / "generate.json").write_text(line)
    rec = json.loads(line)
    files["generate --json"] = (d / "generate.json", ArchConfig.from_dict(rec["space"], rec["arch"]))

    run("generate", "--run", str(shift_run), "--flops", "20M", "--export", str(d / "sub"), "--device", "cpu")
    meta = json.loads((d / "sub" / "arch.json").read_text())
    files["generate --export"] = (d / "sub" / "arch.json", ArchConfig.from_dict(meta["space"], meta["arch"]))

    run("search", "--run", str(shift_run), "--flops", "30M", *TINY_SEARCH, "--out", str(d / "search.json"))
    res = json.loads((d / "search.json").read_text())
    files["search --out"] = (d / "search.json", ArchConfig.from_dict(res["space"], res["best"]["arch"]))
    return files


@pytest.mark.parametrize("writer", WRITERS)
def test_cost_reads_every_arch_file(written, writer, capsys):
    path, arch = written[writer]
    assert read_arch_file(path) == arch
    out = json.loads(_stdout(capsys, "cost", "--arch", str(path)))
    assert out["space"] == arch.space and out["flops"] == count_flops(arch.space, arch)


@pytest.mark.parametrize("writer", WRITERS)
def test_export_reads_every_arch_file(written, writer, shift_run, tmp_path, capsys):
    path, arch = written[writer]
    _stdout(capsys, "export", "--run", str(shift_run), "--arch", str(path), "--out", str(tmp_path / "sub"),
            "--device", "cpu")
    meta = json.loads((tmp_path / "sub" / "arch.json").read_text())
    assert ArchConfig.from_dict(meta["space"], meta["arch"]) == arch


def test_several_json_lines_are_refused_with_how_to_pick_one(tmp_path, capsys):
    f = tmp_path / "five.json"
    f.write_text(_stdout(capsys, "sample", "--space", "vit-fmnist", "-n", "5", "--json"))
    assert main(["cost", "--arch", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shiftnas cost: error: --arch") and str(f) in err and "5 JSON lines" in err


@pytest.mark.parametrize("doc,found", [
    ({"spaec": "vit-fmnist", "arch": {}}, "found keys ['arch', 'spaec']"),
    ({"space": "vit-fmnist", "best": {"short": "d6"}}, "found keys ['best', 'space']"),  # best without its arch
    ([1, 2], "found a list"),
])
def test_a_document_without_the_keys_names_the_file_and_the_keys(tmp_path, capsys, doc, found):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    assert main(["cost", "--arch", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(f) in err and '{"space": NAME, "arch": {decision: value}}' in err and found in err, err


def test_an_arch_json_carrying_the_inference_keys_is_read(tmp_path, capsys):
    arch = get_space("cnn-fmnist").min()
    doc = {"format": "shiftnas-subnet/1", "space": arch.space, "arch": arch.to_dict(), "num_classes": 10,
           "flops": 1, "params": 2, "input_size": [1, 24, 24],
           "preprocess": {"resize": 28, "crop": 28, "interpolation": "bilinear", "mean": [0.286], "std": [0.353],
                          "channels": 1}}
    f = tmp_path / "arch.json"
    f.write_text(json.dumps(doc, indent=1))
    assert read_arch_file(f) == arch
    assert json.loads(_stdout(capsys, "cost", "--arch", str(f)))["flops"] == count_flops(arch.space, arch)
