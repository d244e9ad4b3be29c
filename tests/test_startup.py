"""Startup: `import shiftnas` and the light commands import neither torch nor timm; the public
names resolve on first use; the supernets are registered with timm whichever is imported first."""
from __future__ import annotations

import subprocess
import sys

import pytest

import shiftnas


def _python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["spaces"], ["train", "--help"], ["train", "--print-config"]]
)
def test_import_and_light_commands_do_not_import_torch(argv):
    out = _python(
        "import sys, contextlib, io\n"
        "import shiftnas\n"
        "heavy = lambda: sorted({'torch', 'timm'} & set(sys.modules))\n"
        "print('import', heavy())\n"
        "from shiftnas.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "print('command', heavy())\n"
    )
    assert out.split("\n")[:2] == ["import []", "command []"]


@pytest.mark.parametrize("first", ["shiftnas", "timm"])
def test_timm_create_model_finds_the_supernets(first):
    second = "timm" if first == "shiftnas" else "shiftnas"
    out = _python(
        f"import {first}, {second}\n"
        "for name in ('shiftnas_vit_fmnist_supernet', 'shiftnas_cnn_fmnist_supernet'):\n"
        "    print(type(timm.create_model(name, num_classes=3)).__name__)\n"
    )
    assert out.split() == ["ViTSupernet", "MBConvSupernet"]


def test_every_public_name_resolves():
    assert set(shiftnas.__all__) <= set(dir(shiftnas))
    for name in shiftnas.__all__:
        assert getattr(shiftnas, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        shiftnas.nope  # noqa: B018


def test_cost_terms_and_helpers_load_without_torch():
    out = _python(
        "import sys\n"
        "from shiftnas.cost import count_flops, flops_range\n"
        "from shiftnas.spaces import get_space\n"
        "from shiftnas.spaces.cnn import conv_out, hidden_width, se_mid\n"
        "for name in ('vit-fmnist', 'cnn-fmnist'):\n"
        "    sp = get_space(name)\n"
        "    assert flops_range(sp) == (count_flops(sp, sp.min()), count_flops(sp, sp.max()))\n"
        "print(sorted({'torch', 'timm'} & set(sys.modules)))\n"
    )
    assert out.strip() == "[]"
    from shiftnas.models.static_mbconv import conv_out, hidden_width, se_mid  # re-exported there
    from shiftnas.ops.se import se_mid as se_mid_ops

    assert se_mid_ops is se_mid and (conv_out(7, 2), hidden_width(16, 1), hidden_width(16, 6), se_mid(96)) == (4, 16, 96, 24)


def test_models_package_names_resolve_lazily():
    from shiftnas import models

    assert models.ViTSupernet.__name__ == "ViTSupernet" and models.build_supernet is shiftnas.build_supernet


@pytest.mark.parametrize(
    "first", ["shiftnas.train.engine", "shiftnas.models.registry", "shiftnas.models.vit", "shiftnas.models.mbconv"]
)
def test_the_model_modules_import_first_in_a_fresh_interpreter(first):
    """Importing a module that imports timm triggers the timm registrations (shiftnas/__init__.py)
    while that module is still half-initialised: no import cycle may run through it."""
    out = _python(f"import {first}, timm\n"
                  "print(timm.create_model('shiftnas_cnn_fmnist_supernet').pretrained_cfg['input_size'])\n")
    assert out.strip() == "(1, 28, 28)"
