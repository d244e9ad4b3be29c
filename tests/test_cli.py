import json
import subprocess
import sys

import pytest

from shiftnas.cli import main


def test_spaces(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert "autoformer-t" in out and "cnn-bignas" in out


def test_sample_json_and_cost_roundtrip(capsys, tmp_path):
    assert main(["sample", "--space", "vit-fmnist", "-n", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rec = json.loads(lines[0])
    f = tmp_path / "a.json"
    f.write_text(json.dumps({"space": rec["space"], "arch": rec["arch"]}))
    assert main(["cost", "--arch", str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["flops"] == rec["flops"]


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["sample", "--space", "nope"], "unknown search space 'nope'"),
        (["cost", "--arch", "/nonexistent.json"], "no such file"),
        (["sample", "--space", "vit-fmnist", "-n", "0"], "-n must be >= 1"),
    ],
)
def test_bad_input_exit_2(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_backends_command():
    r = subprocess.run([sys.executable, "-m", "shiftnas.cli", "backends"], capture_output=True, text=True)
    assert r.returncode == 0 and "layer_norm" in r.stdout
