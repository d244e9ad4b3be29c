"""`shiftnas train`, `python -m shiftnas.train` and `train.py`: one command line; bundled configs
addressable by name; `--print-config` lists every key with its value and meaning."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.cli import main as shiftnas_main
from shiftnas.train import config as config_module
from shiftnas.train.cli import config_names, field_meanings, resolve_config
from shiftnas.train.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_bundled_configs_are_the_repositorys():
    assert config_names() == sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert "fmnist-vit-shift" in config_names()


@pytest.mark.parametrize("value", ["fmnist-vit-uniform", "fmnist-vit-uniform.yaml"])
def test_a_name_resolves_to_its_bundled_file(value):
    assert resolve_config(value).read_text() == (REPO / "configs" / "fmnist-vit-uniform.yaml").read_text()


def test_a_path_wins_over_a_name(tmp_path, monkeypatch):
    (tmp_path / "fmnist-vit-shift.yaml").write_text("optim: {steps: 7}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(resolve_config("fmnist-vit-shift.yaml")).optim.steps == 7
    assert resolve_config("fmnist-vit-shift") != resolve_config("fmnist-vit-shift.yaml")


def test_an_unknown_config_lists_the_bundled_names(capsys):
    assert shiftnas_main(["train", "--config", "fmnist-vit-shfit"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("shiftnas train: error: --config 'fmnist-vit-shfit'")
    assert all(name in err for name in config_names())


def test_print_config_is_the_resolved_config_with_meanings(capsys, tmp_path):
    argv = ["--config", "fmnist-vit-uniform", "optim.steps=60", "optim.warmup_steps=5"]
    assert shiftnas_main(["train", "--print-config", *argv]) == 0
    out = capsys.readouterr().out
    cfg = load_config(REPO / "configs" / "fmnist-vit-uniform.yaml", ["optim.steps=60", "optim.warmup_steps=5"])
    assert yaml.safe_load(out) == cfg.to_dict()  # every key, its resolved value; loadable as a config
    (tmp_path / "printed.yaml").write_text(out)
    assert load_config(tmp_path / "printed.yaml") == cfg
    meanings, lines, section = field_meanings(), {}, None
    for ln in out.splitlines():
        if not ln.startswith((" ", "#")):
            section = ln.rstrip(":")
        elif ln.startswith("  "):
            lines[f"{section}.{ln.split(':')[0].strip()}"] = ln
    assert set(lines) == set(meanings)
    for key, line in lines.items():
        assert line.endswith(f"  # {meanings[key]}") if meanings[key] else "#" not in line, line


def test_meanings_are_the_comments_of_config_py():
    meanings = field_meanings()
    keys = {f"{s}.{k}" for s, v in config_module.TrainConfig().to_dict().items() for k in v}
    assert set(meanings) == keys
    source = inspect.getsource(config_module)
    described = {k: m for k, m in meanings.items() if m}
    assert len(described) > len(keys) // 2
    for key, meaning in described.items():  # every word of a meaning is in a comment of config.py
        comments = " ".join(ln.split("#", 1)[1] for ln in source.splitlines() if "#" in ln)
        assert all(word in comments for word in meaning.split()), key
    line = next(ln for ln in source.splitlines() if ln.strip().startswith("steps:"))
    assert meanings["optim.steps"] == line.split("#", 1)[1].strip()


def test_train_py_and_python_m_share_the_command_line():
    for argv in ([str(REPO / "train.py"), "--help"], ["-m", "shiftnas.train", "--help"]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=120,
                           check=False)
        assert r.returncode == 0 and "--print-config" in r.stdout and "fmnist-vit-shift" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "shiftnas.train", "--config", "nope"], capture_output=True, check=False,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("python -m shiftnas.train: error: --config 'nope'")


def test_shiftnas_train_trains(tmp_path, capsys):
    root = make_tiny_root(tmp_path / "data")
    ov = [*tiny_overrides(root, tmp_path / "runs", "t"), "optim.steps=2", "optim.warmup_steps=0", "run.ckpt_every=0"]
    assert shiftnas_main(["train", "--config", "fmnist-vit-uniform", *ov]) == 0, capsys.readouterr().err
    assert "run directory:" in capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    assert (run / "summary.json").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["sampler"]["name"] == "uniform"
