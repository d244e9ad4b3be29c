"""Train a ShiftNAS supernet (or a baseline sampler's) from a run config.

    shiftnas train                                         # one process, the fmnist-vit-shift config
    shiftnas train --config fmnist-vit-uniform optim.steps=200 run.name=quick
    shiftnas train --print-config --config fmnist-vit-shift optim.steps=60   # every key, value, meaning
    torchrun --standalone --nproc_per_node=8 -m shiftnas.train --config imagenet-autoformer-t-shift
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m shiftnas.train --config imagenet-autoformer-t-shift data.root=/data/imagenet
    shiftnas train --resume runs/fmnist-vit-shift          # continue a run (its own config.yaml) from its newest checkpoint
    shiftnas train --resume runs/fmnist-vit-shift optim.steps=2000   # ... and extend it
    torchrun --standalone --nproc_per_node=8 --max-restarts=3 -m shiftnas.train ...   # a crashed rank restarts the job

`python -m shiftnas.train` and the repository's `train.py` take the same arguments.
--config is a bundled config's name (the repository's configs/*.yaml, shipped inside the package)
or the path of a YAML file.

--resume auto|DIR|FILE continues a run with its own config (the run directory's config.yaml):
auto the run directory that --config and the overrides name (a fresh run when it has no
checkpoint), DIR a run directory, FILE a checkpoint (a copy may continue in a new directory
named by run.out_dir/run.name). Overrides given with it may change only run.log_every,
run.ckpt_every, run.progress, run.tensorboard, run.device, data.root, data.num_threads,
optim.steps (extend or shorten the run) and eval.*; others are refused, naming them.
Ctrl-C or SIGTERM saves a checkpoint at the current step and exits (130 / 143) with the command
that continues the run. Under torchrun a restarted job (TORCHELASTIC_RESTART_COUNT > 0)
continues from the run's newest checkpoint as `--resume auto` does, when that checkpoint was
written with the same config; re-submitting a job that died as a whole takes `--resume auto`.

Trailing `section.key=value` arguments override the config (`--print-config` lists the keys).
Writes runs/<run.name>/: config.yaml, checkpoint-*.pt, metrics.jsonl, tb/, sampling.json,
summary.json, plots/sampling.png, plots/pareto.png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "fmnist-vit-shift"
HELP = "train a supernet from a run config (what train.py does)"


# ---------------------------------------------------------------- bundled configs
def config_dir() -> Path:
    """The folder of the bundled run configs: `shiftnas/configs/` in an installed wheel, the
    repository's `configs/` in a source tree or an editable install."""
    from importlib.resources import files

    bundled = files("shiftnas").joinpath("configs")
    if bundled.is_dir():
        return Path(str(bundled))
    return Path(__file__).resolve().parents[2] / "configs"


def config_names() -> list[str]:
    """The names `--config` accepts besides a path, e.g. 'fmnist-vit-shift'."""
    folder = config_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_config(value: str) -> Path:
    """The YAML file of `--config`: an existing file, else a bundled config's name (with or
    without '.yaml'); otherwise a ValueError listing the bundled names."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = value.removesuffix(".yaml")
    if name in config_names():
        return config_dir() / f"{name}.yaml"
    raise ValueError(
        f"--config {value!r}: no such file and no bundled config of that name; "
        f"bundled configs: {', '.join(config_names()) or '(none found in ' + str(config_dir()) + ')'}"
    )


# ---------------------------------------------------------------- arguments
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="NAME|PATH",
                   help=f"a bundled config's name (listed below) or a YAML file (default: {DEFAULT_CONFIG})")
    p.add_argument("--resume", default=None, metavar="auto|DIR|FILE",
                   help="continue a run with its own config.yaml: 'auto' the run directory named by --config and "
                        "the overrides (fresh if it has no checkpoint), DIR a run directory, FILE a checkpoint; "
                        "from the newest checkpoint that verifies (corrupt ones are moved aside as *.corrupt; "
                        "exit 2 if none verifies); overrides that change the run are refused")
    p.add_argument("--print-config", action="store_true",
                   help="print every config key with its resolved value (defaults <- --config <- overrides) "
                        "and its meaning, as YAML, then exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")


def _epilog() -> str:
    return (
        "Overrides: section.key=value, e.g. optim.lr=5e-4 optim.steps=2000 sampler.name=uniform\n"
        "  (`--print-config` lists every key with its value and meaning)\n"
        f"Bundled configs: {', '.join(config_names())}"
    )


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of `train.py` / `python -m shiftnas.train` (`shiftnas train`: add_train_parser)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    return p


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to a ``shiftnas`` sub-parser set."""
    p = subparsers.add_parser("train", help=HELP, description=__doc__, epilog=_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(fn=lambda args: run(args, "shiftnas train"))
    return p


def main(argv: list[str] | None = None, prog: str = "python -m shiftnas.train") -> int:
    return run(build_parser(prog).parse_args(argv), prog)


# ---------------------------------------------------------------- --print-config
def field_meanings() -> dict[str, str]:
    """'section.key' -> the comment on that field in shiftnas/train/config.py: the comment lines
    right above it, then its trailing comment ('' where it has none)."""
    import ast
    import dataclasses
    import inspect
    import io
    import tokenize

    from . import config

    source = inspect.getsource(config)
    lines = source.splitlines()
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    classes = {type(getattr(config.TrainConfig(), f.name)).__name__: f.name
               for f in dataclasses.fields(config.TrainConfig)}
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef) or node.name not in classes:
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, row = [], stmt.lineno - 1
            while row in comments and lines[row - 1].lstrip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            trailing = comments.get(stmt.end_lineno) if not lines[stmt.end_lineno - 1].lstrip().startswith("#") else None
            out[f"{classes[node.name]}.{stmt.target.id}"] = " ".join([*above, *([trailing] if trailing else [])])
    return out


def format_config(cfg, source: str, overrides: list[str]) -> str:
    """The resolved config as YAML (loadable as a config file), each key with its meaning."""
    import yaml

    meanings = field_meanings()
    out = [f"# resolved config: defaults <- {source}" + (f" <- {' '.join(overrides)}" if overrides else ""),
           "# every key with its value and meaning (shiftnas/train/config.py); override one with section.key=value"]
    for section, values in cfg.to_dict().items():
        out.append(f"{section}:")
        for key, value in values.items():
            text = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=10**9)
            meaning = meanings.get(f"{section}.{key}", "")
            out.append("  " + text.rstrip("\n").replace("\n", "\n  ") + (f"  # {meaning}" if meaning else ""))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- running
def run(args: argparse.Namespace, prog: str) -> int:
    """Train as `args` say (or print the config); the exit code: 0, 2 (bad input), 3 (diverged).
    Errors are one line on stderr starting with `prog`."""
    try:
        cfg, resume, source = _resolve(args)
        if args.print_config:
            print(format_config(cfg, source, args.overrides), end="")
            return 0
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    # Looked up at call time (tests replace shiftnas.train.engine.Trainer).
    from .distributed import init_distributed, shutdown
    from .engine import Trainer, TrainingDiverged
    from .evaluate import format_bin_table

    info = trainer = None
    try:
        resume = _restart_resume(cfg, resume)
        info = init_distributed(cfg.run.device)
        trainer = Trainer(cfg, resume=resume, info=info)
        summary = trainer.fit()
    except (ValueError, OSError, TrainingDiverged) as e:  # OSError: e.g. run.out_dir is a file
        rank = info.rank if info is not None else 0
        print(f"{prog} [rank {rank}]: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM (TrainingInterrupted: after its checkpoint)
        if info is None or info.is_main:
            print(_interrupted(prog, cfg, trainer, info), file=sys.stderr)
        return getattr(e, "exit_code", 130)
    finally:
        if info is not None:
            shutdown(info)
    if info.is_main:
        print(format_bin_table(summary["rows"]))
        print(f"run directory: {trainer.run_dir}")
    return 0


def _resolve(args: argparse.Namespace):
    """(config, what Trainer's resume takes, where the config came from) of the command line."""
    from .config import load_config

    if args.config is not None and args.resume not in (None, "auto"):
        raise ValueError(f"--config {args.config!r} with --resume {args.resume!r}: a resumed run keeps its own "
                         "config (its config.yaml); drop --config")
    path = resolve_config(args.config or DEFAULT_CONFIG)
    cfg = load_config(path, args.overrides)
    if args.resume is None:
        return cfg, None, str(path)
    from .resume import resume_plan

    plan = resume_plan(args.resume, cfg, args.overrides)
    return plan.cfg, plan.resume, plan.source or str(path)


def _interrupted(prog: str, cfg, trainer, info) -> str:
    """The line a Ctrl-C / SIGTERM ends with: the step, the newest checkpoint, the command to continue."""
    import shlex

    from .checkpoint import list_checkpoints

    run_dir = Path(cfg.run.out_dir).expanduser() / cfg.run.name
    step = trainer.step if trainer is not None else 0
    saved = list_checkpoints(run_dir)
    command = {"train.py": "python train.py"}.get(prog, prog)
    if info is not None and info.distributed:
        command = "torchrun [the same options] " + ("-m shiftnas.train" if "shiftnas" in prog else prog)
    if not saved:
        return f"interrupted at step {step}, before the first checkpoint; nothing to continue: run the same command again"
    at, ckpt = saved[-1]
    where = f"checkpoint {ckpt}" if at == step else f"newest checkpoint {ckpt} (step {at})"
    return f"interrupted at step {step}; {where}; continue with: {command} --resume {shlex.quote(str(run_dir))}"


def _restart_resume(cfg, resume: str | None) -> str | None:
    """What a torchrun restart (TORCHELASTIC_RESTART_COUNT > 0) resumes; `resume` otherwise.
    A restart continues the run directory's newest checkpoint ('auto'): also after `--resume
    FILE`, once the first attempt has written checkpoints of its own. Without --resume it
    continues only a checkpoint written with this very config: when the first attempt was refused
    because the run directory held another run's checkpoints, the restart must not take that run over."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "")
    if restart in ("", "0"):
        return resume
    from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    run_dir = Path(cfg.run.out_dir).expanduser() / cfg.run.name
    if resume is not None:
        return "auto" if list_checkpoints(run_dir) else resume
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and load_checkpoint(ckpt).get("config") != cfg.to_dict():
        raise ValueError(
            f"torchrun restart {restart}: {str(ckpt)!r} was written with another config, not "
            "continuing it; pass --resume auto to continue it anyway, or set run.name for a new run"
        )
    return "auto"
