"""Command-line arguments: random argv for every `shiftnas` subcommand - options taken from the
parser itself, values drawn from hostile strings, numbers and a pool of broken run directories,
checkpoints and arch files - ends in success or in one clear `shiftnas CMD: error: ...` line with
exit code 2 (argparse's usage errors: usage + one line); never a traceback, a hang, or code from a
crafted file being run.

The bulk runs `shiftnas.cli.main` in-process; a sample runs as real processes.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from clicheck import (
    FUZZ,
    assert_ok_or_one_line_error,
    assert_one_line_error,
    no_line_breaks,
    run_subprocess,
    shiftnas_main,
)
from hypothesis import event, given
from hypothesis import strategies as st

from shiftnas.cli import build_parser
from shiftnas.spaces import get_space, list_spaces
from shiftnas.train.config import load_config


class _Evil:
    """Unpickling this runs a shell command that creates `target`."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@dataclass
class Pool:
    root: Path
    marker: Path
    runs: list[str]
    checkpoints: list[str]
    archs: list[str]
    outs: list[str]
    source: Path
    prep_out: Path
    evil_run: Path
    no_ckpt_run: Path


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    d = tmp_path_factory.mktemp("cli-pool")
    marker = d / "PWNED-cli"
    cfg = load_config(None, [f"data.root={d / 'no-data'}", "run.progress=false", "run.tensorboard=false"]).to_yaml()

    def run_dir(name: str, config: str | bytes | None, ckpt: bytes | object | None = None) -> Path:
        r = d / name
        r.mkdir()
        if config is not None:
            (r / "config.yaml").write_bytes(config if isinstance(config, bytes) else config.encode())
        if isinstance(ckpt, bytes):
            (r / "checkpoint-00000004.pt").write_bytes(ckpt)
        elif ckpt is not None:
            torch.save(ckpt, r / "checkpoint-00000004.pt")
        return r

    (d / "a-file").write_text("x")
    runs = [
        d / "no-such-run", d / "a-file", run_dir("empty", None),
        run_dir("garbage-cfg", b"\xff\x00garbage: ["),
        run_dir("tag-cfg", f"run: !!python/object/apply:os.system ['touch {marker}']\n"),
        run_dir("unknown-key-cfg", "optim: {lrr: 1}\n"),
        no_ckpt := run_dir("no-ckpt", cfg),
        run_dir("junk-ckpt", cfg, b"PK\x03\x04 not a zip at all"),
        evil := run_dir("evil-ckpt", cfg, {"model": {}, "step": 4, "x": _Evil(marker)}),
    ]
    evil_file = d / "evil.pt"
    torch.save({"step": 1, "x": _Evil(marker)}, evil_file)
    (d / "junk.pt").write_bytes(b"\x80\x02}q\x00.")  # a bare pickled dict, legacy format
    arch_ok = d / "arch-ok.json"
    arch_ok.write_text(get_space("vit-fmnist").min().to_json())
    (d / "arch-bad.json").write_text('{"space": "vit-fmnist", "arch": {"depth": 99}}')
    (d / "arch-tag.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    (d / "arch-bytes.json").write_bytes(b"\xff\xfe\x00\x01")
    (d / "source").mkdir()
    return Pool(
        root=d, marker=marker, runs=[str(r) for r in runs],
        checkpoints=[str(p) for p in (evil_file, d / "junk.pt", d / "missing.pt", d)],
        archs=[str(p) for p in (arch_ok, d / "arch-bad.json", d / "arch-tag.yaml", d / "arch-bytes.json",
                                d / "missing.json", d)],
        outs=[str(p) for p in (d / "out-new", d / "a-file", d, "/proc/no/such/dir")],
        source=d / "source", prep_out=d / "prep-out", evil_run=evil, no_ckpt_run=no_ckpt,
    )


# ----------------------------------------------------------------------- argv generation
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


PARSER = build_parser()
# `train` would start real training runs: its argv and configs are fuzzed through train.py with
# the Trainer stubbed out (test_bad_input_config.py).
COMMANDS = {k: v for k, v in _subparsers(PARSER).items() if k != "train"}
FASHION = _subparsers(COMMANDS["prepare"])["fashion-mnist"]

text = st.text(max_size=24).filter(no_line_breaks)
numbers = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.sampled_from(["0", "-1", "1e400", "-1e400", "nan", "inf", "1e-30", "10" * 30, "0x10", "1_000", " 5", "5 "]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
budgets = st.one_of(
    numbers, st.sampled_from(["25M", "1.3G", "900k", "25m", "-5M", "0M", "1e400M", "M", "25MM", "25 M", "nanM",
                              "inf", "1e9G", "3T"]),
)


def _typed_values(action: argparse.Action, pool: Pool, cmd: str):
    opt = action.option_strings[-1]
    if action.choices is not None:
        return st.sampled_from(list(action.choices))
    if opt == "--run":
        return st.sampled_from(pool.runs)
    if opt == "--checkpoint":
        return st.sampled_from(pool.checkpoints)
    if opt == "--arch":
        return st.sampled_from(pool.archs)
    if opt in ("--out", "--export"):
        return st.sampled_from(pool.outs)
    if opt == "--space":
        return st.sampled_from([*list_spaces(), "nope", "", "VIT-FMNIST"])
    if opt in ("--flops", "--params", "--min-flops", "--min-params"):
        return budgets
    if cmd == "sample" and opt == "-n":  # a valid -n prints n lines: keep success small
        return st.integers(-5, 20).map(str)
    if action.type in (int, float):
        return numbers
    return st.sampled_from(["val", "train", "minival", "../x", "/etc", ".", ""])


def _values(draw, action: argparse.Action, pool: Pool, cmd: str) -> str:
    """Mostly a value of the option's kind (so that examples get past argparse into the
    command's own checks), sometimes any text."""
    return draw(text if draw(st.integers(0, 5)) == 0 else _typed_values(action, pool, cmd))


@st.composite
def shiftnas_argv(draw, pool: Pool) -> list[str]:
    cmd = draw(st.sampled_from([*COMMANDS, *COMMANDS, "", "nope", "--version", "-x"]))
    argv = [cmd] if cmd else []
    parser = COMMANDS.get(cmd)
    if cmd == "prepare":
        which = draw(st.sampled_from(["fashion-mnist", "fashion-mnist", "cifar10", "--out"]))
        argv.append(which)
        parser = FASHION if which == "fashion-mnist" else None
    if parser is not None:
        actions = [a for a in parser._actions if a.option_strings and "-h" not in a.option_strings]
        chosen = [a for a in actions if a.required and draw(st.integers(0, 9)) < 9]
        chosen += draw(st.lists(st.sampled_from(actions), max_size=5)) if actions else []
        order = draw(st.permutations(chosen))
        for a in order:
            flag = draw(st.sampled_from(a.option_strings))
            if a.nargs == 0:
                argv.append(flag)
                continue
            if draw(st.integers(0, 19)) == 0:  # the value forgotten
                argv.append(flag)
                continue
            v = _values(draw, a, pool, cmd)
            argv += [f"{flag}={v}"] if draw(st.integers(0, 9)) == 0 else [flag, v]
    if draw(st.integers(0, 5)) == 0:  # stray tokens
        argv += draw(st.lists(text | st.sampled_from(["--", "-", "--json", "--run", "-h"]), min_size=1, max_size=2))
    if cmd == "prepare":  # never the real IDX files: prepare must fail on its source, in tmp
        argv += ["--source", str(pool.source), "--out", str(pool.prep_out)]
    return argv


@FUZZ
@given(data=st.data())
def test_random_shiftnas_argv(pool, data):
    argv = data.draw(shiftnas_argv(pool), label="argv")
    rc, _, err = shiftnas_main(argv, seconds=180)
    line = assert_ok_or_one_line_error(rc, err, "shiftnas")
    if line is None:  # success: only what can succeed
        helped = any(a in ("-h", "--help") or a.startswith("--h") for a in argv)
        version = len(argv[0]) > 2 and "--version".startswith(argv[0])  # --version or an abbreviation
        assert helped or version or argv[0] in ("spaces", "sample", "cost", "backends"), argv
    # --hypothesis-show-statistics: how deep the examples got (argparse vs the commands' checks)
    event(f"{argv[0] if argv else '-'}: " + ("ok" if line is None else "argparse" if err.startswith("usage:") else "own error"))
    assert not pool.marker.exists(), argv


def test_every_subcommand_is_fuzzed():
    """New subcommands join the fuzz automatically; this notices one that cannot."""
    assert set(COMMANDS) >= {"spaces", "sample", "cost", "backends", "prepare", "generate", "search",
                             "evaluate", "export", "rank"}


# ----------------------------------------------------------------------- named cases
def _cases(pool: Pool) -> list[tuple[list[str], str]]:
    nc, evil = str(pool.no_ckpt_run), str(pool.evil_run)
    return [
        (["cost", "--arch", "a\nb.json"], "no such file"),
        (["sample", "--space", "vit\nfmnist"], "unknown search space"),
        (["generate", "--run", "runs/\nx", "--flops", "25M"], "no such run directory"),
        (["generate", "--run", nc, "--flops", "2\n5M"], "--flops"),
        (["generate", "--run", nc, "--flops", "25M"], "no checkpoint"),
        (["generate", "--run", evil, "--flops", "25M"], "refusing to unpickle"),
        (["evaluate", "--run", evil, "--max-images", "0"], "--max-images"),
        (["search", "--run", nc], "--flops"),
        (["search", "--run", nc, "--flops", "25M", "--out", str(pool.root)], "folder"),
        (["search", "--run", nc, "--flops", "25M", "--population", "0"], "population"),
        (["search", "--run", nc, "--flops", "25M", "--mutate-prob", "nan"], "mutate_prob"),
        (["rank", "--run", nc, "--n", "1"], "--n"),
        (["export", "--run", nc, "--arch", str(pool.root / "arch-tag.yaml"), "--out", "x"], "not valid YAML"),
        (["export", "--run", nc, "--arch", str(pool.root / "arch-bytes.json"), "--out", "x"], "UTF-8"),
        (["prepare", "fashion-mnist", "--source", str(pool.source), "--out", str(pool.prep_out)], "source"),
    ]


def test_named_errors_in_process(pool):
    for argv, what in _cases(pool):
        rc, _, err = shiftnas_main(argv)
        line = assert_one_line_error(rc, err, f"shiftnas {argv[0]}")
        assert what.lower() in line.lower(), (argv, line)
    assert not pool.marker.exists()


def test_subprocess_sample(pool):
    """Real processes (`python -m shiftnas.cli`), each under a time limit."""
    picked = [c for i, c in enumerate(_cases(pool)) if i in (0, 5, 7, 12)]
    picked += [(["nope"], "invalid choice"), (["cost"], "required")]
    for argv, what in picked:
        rc, _, err = run_subprocess(["-m", "shiftnas.cli", *argv], cwd=pool.root)
        line = assert_one_line_error(rc, err, "shiftnas")
        assert what.lower() in line.lower(), (argv, line)
    assert not pool.marker.exists()
