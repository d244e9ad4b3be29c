"""`shiftnas export --format onnx|torch-export`: the static subnet of a trained run (ViT and CNN)
written beside model.safetensors + arch.json, run by its own runtime (onnxruntime,
torch.export.load) and compared with the PyTorch model; the preprocessing a user needs travels
with it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from shiftnas.cli import main
from shiftnas.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from shiftnas.models.export import load_subnet
from shiftnas.search import load_run
from shiftnas.search.export import val_inputs
from shiftnas.spaces import ArchConfig, get_space
from shiftnas.train.evaluate import calibrate_bn

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def _need_onnx():
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"ONNX export needs {', '.join(missing)} (pip install {' '.join(missing)}; in the dev extras)")


def _arch_file(tmp_path: Path, space: str, which: str) -> Path:
    sp = get_space(space)
    arch = sp.max() if which == "max" else sp.min()
    f = tmp_path / f"{space}-{which}.json"
    f.write_text(arch.to_json())
    return f


def _export(capsys, run: Path, arch_file: Path, out: Path, *extra: str) -> str:
    code = main(["export", "--run", str(run), "--arch", str(arch_file), "--out", str(out), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("run_name,space,which", [
    ("shift_run", "vit-fmnist", "max"),
    ("cnn_run", "cnn-fmnist", "min"),  # resolution 24: the 28px val images are resized for it
])
def test_onnx_export_matches_pytorch_in_onnxruntime(run_name, space, which, request, tmp_path, capsys):
    _need_onnx()
    import onnx
    import onnxruntime

    run_dir = request.getfixturevalue(run_name)
    out = tmp_path / "sub"
    printed = _export(capsys, run_dir, _arch_file(tmp_path, space, which), out, "--format", "onnx")
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "model.onnx", "model.safetensors"]
    assert f"{out / 'model.onnx'}: onnxruntime vs PyTorch on 8 val images, max |logit difference|" in printed

    run = load_run(run_dir, device="cpu")
    arch = ArchConfig.from_dict(space, json.loads((out / "arch.json").read_text())["arch"])
    x = val_inputs(run, arch, 5)  # another batch size than the one traced: the batch is dynamic
    want = load_subnet(out)(x).detach()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    assert got.shape == (5, 10)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if run.calib_batches() is not None:  # CNN: the export's BatchNorm statistics, as export recalibrated them
        calibrate_bn(run.net, arch, run.calib_batches(), run.cfg.eval.bn_calib_batches)
    with torch.no_grad():  # and the supernet's own output for that arch
        torch.testing.assert_close(got, run.net(x, arch), rtol=1e-4, atol=1e-4)

    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    meta = json.loads(props["shiftnas"])
    assert meta["space"] == space and meta["arch"] == arch.to_dict() and meta["num_classes"] == 10
    assert meta["input_size"] == [1, *x.shape[-2:]]
    pre = meta["preprocess"]
    assert (pre["mean"], pre["std"], pre["channels"]) == (list(FASHION_MNIST_MEAN), list(FASHION_MNIST_STD), 1)
    assert pre["crop"] == 28 and pre["resize"] == 28
    arch_json = json.loads((out / "arch.json").read_text())  # arch.json carries the same
    assert {k: arch_json[k] for k in ("input_size", "preprocess", "num_classes")} == {
        k: meta[k] for k in ("input_size", "preprocess", "num_classes")}


def test_torch_export_reloads_and_matches(shift_run, tmp_path, capsys):
    out = tmp_path / "sub"
    printed = _export(capsys, shift_run, _arch_file(tmp_path, "vit-fmnist", "min"), out, "--format", "torch-export")
    assert "model.pt2: torch.export.load vs PyTorch" in printed
    program = torch.export.load(str(out / "model.pt2"))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), load_subnet(out)(x), rtol=1e-5, atol=1e-5)


def test_reexport_in_another_format_leaves_no_file_of_the_old_one(shift_run, tmp_path, capsys):
    out = tmp_path / "sub"
    _export(capsys, shift_run, _arch_file(tmp_path, "vit-fmnist", "min"), out, "--format", "torch-export")
    _export(capsys, shift_run, _arch_file(tmp_path, "vit-fmnist", "max"), out)
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "model.safetensors"]


def test_missing_onnx_package_is_a_one_line_error_naming_it(shift_run, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "sub"
    code = main(["export", "--run", str(shift_run), "--arch", str(_arch_file(tmp_path, "vit-fmnist", "min")),
                 "--out", str(out), "--device", "cpu", "--format", "onnx"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--format onnx needs the Python package(s) onnxruntime" in err and "pip install onnxruntime" in err
    assert not out.exists()  # refused before anything is written
