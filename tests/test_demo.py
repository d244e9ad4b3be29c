"""`python -m shiftnas.demo` trains the bundled demo config (found as an installed wheel finds
it, through shiftnas.train.cli.config_dir), never the defaults in its place."""
from __future__ import annotations

import pytest

import shiftnas.train.cli as train_cli
from shiftnas import demo
from shiftnas.train import load_config

DEMO_YAML = train_cli.resolve_config(demo.CONFIG)  # the real bundled file (before a test replaces the folder)


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A config folder standing in for the package's shiftnas/configs/."""
    folder = tmp_path / "configs"
    folder.mkdir()
    monkeypatch.setattr(train_cli, "config_dir", lambda: folder)
    return folder


def test_demo_reads_the_bundled_config(bundled, tmp_path):
    text = DEMO_YAML.read_text()
    assert "\nsampler:\n" in text and "n_bins" not in text
    (bundled / "fmnist-vit-shift.yaml").write_text(text.replace("\nsampler:\n", "\nsampler:\n  n_bins: 3\n", 1))
    args = demo.build_parser().parse_args(["--out", str(tmp_path / "runs"), "--steps", "5", "shift.lr=0.5"])
    cfg = demo.demo_config(args)
    assert cfg.sampler.n_bins == 3  # the value only the bundled file holds
    assert (cfg.optim.steps, cfg.shift.lr, cfg.run.name) == (5, 0.5, "demo-shift")
    want = load_config(bundled / "fmnist-vit-shift.yaml", [f"run.out_dir={tmp_path / 'runs'}", "run.name=demo-shift",
                                                          "eval.max_images=2000", "optim.steps=5", "shift.lr=0.5"])
    assert cfg == want


def test_demo_config_differs_from_the_defaults_where_the_file_says_so():
    cfg = demo.demo_config(demo.build_parser().parse_args([]))
    defaults = load_config(None, ["eval.max_images=2000", "run.out_dir=runs", "run.name=demo-shift"])
    assert cfg != defaults and cfg.data.augment is False  # the demo trains without augmentation


def test_demo_without_its_bundled_config_is_an_error_not_the_defaults(bundled, tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: error: --config 'fmnist-vit-shift': no such file and no bundled config"), err
    assert not (tmp_path / "runs").exists()
