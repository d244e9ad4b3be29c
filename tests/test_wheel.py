"""A wheel that trains: build the wheel (CUDA sources off) from a copy of the source tree, install
it into a fresh venv, and from outside the source tree train a few steps with a bundled config
given by name. Slow: it compiles shiftnas._C (C++ only)."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from fmnist_tiny import make_tiny_root, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                    ".pytest_cache", ".hypothesis", ".ruff_cache")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, dict[str, str], Path, Path]:
    """(the fresh venv's python, an environment without the source tree, a cwd outside it, the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(SHIFTNAS_BUILD_CUDA="0", PIP_DISABLE_PIP_VERSION_CHECK="1", TQDM_DISABLE="1")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp / "dist"), str(src)],
         tmp, env, 900)
    (whl,) = (tmp / "dist").glob("shiftnas-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env, 300)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(whl)], tmp, env, 300)
    if sys.prefix != sys.base_prefix:  # the test runs in a venv: give the new one its torch etc. too
        outer = next(p for p in site.getsitepackages() if Path(p).name == "site-packages")
        inner = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env, 60).stdout
        # A path line: the outer packages are importable, its .pth files (the editable shiftnas) are not run.
        (Path(inner.strip()) / "outer_site_packages.pth").write_text(outer + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    return py, env, work, whl


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_the_license(wheel_env):
    names = zipfile.ZipFile(wheel_env[3]).namelist()
    assert {f"shiftnas/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")} <= set(names)
    assert any(n.endswith((".dist-info/licenses/LICENSE", ".dist-info/LICENSE")) for n in names), names
    assert any(n.startswith("shiftnas/_C") and n.endswith(".so") for n in names)


@pytest.mark.slow
def test_the_installed_wheel_trains_from_outside_the_source_tree(wheel_env, tmp_path):
    py, env, work, _ = wheel_env
    shiftnas = str(py.parent / "shiftnas")
    where = _run([str(py), "-c", "import shiftnas; print(shiftnas.__file__)"], work, env, 120).stdout.strip()
    assert Path(where).is_relative_to(py.parent.parent) and not Path(where).is_relative_to(REPO), where
    assert _run([shiftnas, "--version"], work, env, 120).stdout.strip() == "shiftnas 0.1.0"
    printed = _run([str(py), "-m", "shiftnas.train", "--print-config", "--config", "fmnist-cnn-shift"], work, env, 120)
    assert yaml.safe_load(printed.stdout)["model"]["space"] == "cnn-fmnist"

    root = make_tiny_root(tmp_path / "data")
    ov = [*tiny_overrides(root, work / "runs", "w"), "optim.steps=3", "optim.warmup_steps=0", "run.ckpt_every=0"]
    r = _run([shiftnas, "train", "--config", "fmnist-vit-shift", *ov], work, env, 600)
    assert "run directory:" in r.stdout
    run = work / "runs" / "w"
    assert (run / "summary.json").is_file() and any(run.glob("checkpoint-*.pt"))
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["steps"] == 3


@pytest.mark.slow
def test_the_installed_wheel_imports_every_kernel_module(wheel_env):
    """`kernels/` ships as `shiftnas.kernels` (setup.py's package_dir): every module of it imports
    from the installed wheel, outside the source tree."""
    pytest.importorskip("triton")
    py, env, work, _ = wheel_env
    names = sorted(p.stem for p in (REPO / "kernels").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, shiftnas\n"
            f"for n in {names!r}:\n"
            "    m = importlib.import_module('shiftnas.kernels.' + n)\n"
            "    assert 'site-packages' in m.__file__, m.__file__\n"
            f"print('ok', {len(names)})\n")
    env = {**env, "TRITON_INTERPRET": "1"}
    assert _run([str(py), "-c", code], work, env, 300).stdout.split() == ["ok", str(len(names))]
