import json
import re
import subprocess
import sys
from pathlib import Path

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
    r = subprocess.run([sys.executable, "-m", "shiftnas.cli", "backends"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "layer_norm" in r.stdout


def test_version_is_the_distributions(capsys):
    from importlib.metadata import version

    import shiftnas

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)  # no tomllib in 3.10
    assert capsys.readouterr().out.strip() == f"shiftnas {version('shiftnas')}"
    assert version("shiftnas") == shiftnas.__version__ == declared


def test_module_commands_are_listed_with_their_own_help():
    """`shiftnas --help` lists the module commands without importing them: the one-line help it
    shows for each is the one its module gives."""
    from shiftnas.cli import MODULE_COMMANDS, build_parser

    def helps(parser):
        sub = next(a for a in parser._actions if a.dest == "cmd")
        return {a.dest: a.help for a in sub._choices_actions}

    full, light = helps(build_parser()), helps(build_parser(""))
    assert full == light and set(MODULE_COMMANDS) <= set(full)
    for name, (_, _, one_line) in MODULE_COMMANDS.items():
        assert full[name] == one_line


def test_python_m_shiftnas():
    r = subprocess.run([sys.executable, "-m", "shiftnas", "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.startswith("shiftnas ")
