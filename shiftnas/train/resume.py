"""What `--resume auto|DIR|FILE` continues: the run's own config, with only harmless overrides.

    plan = resume_plan("runs/x", given, ["optim.steps=2000"])  # given: the config + overrides of now
    Trainer(plan.cfg, resume=plan.resume).fit()

The run: `auto` the run directory named by the config and overrides given now
(`run.out_dir`/`run.name`); `DIR` that run directory; `FILE` a checkpoint file, in the run
directory that holds it. Its config is the run's own `config.yaml` (or, where there is none, the
config saved in the checkpoint), never the default config plus the overrides of today; the run
directory's place is taken from where it is now (it may have been moved). The overrides given
now are applied on top, and those that change a value outside `HARMLESS` are refused with one
line naming the keys. `--resume auto` on a run directory without checkpoints (none written yet,
none moved aside) starts a fresh run of the config given now. With `FILE`, `run.out_dir` and
`run.name` may name another, checkpoint-free directory: the run continues there (a copy).

The engine checks a checkpoint against the config it is given as well (`check_same_run`): the
model, sampler, generator and shift sections and data.batch_size must be the run's, a key added
to the config after the checkpoint was written comparing at its default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from .checkpoint import latest_checkpoint, list_checkpoints, list_moved_aside, load_checkpoint
from .config import TrainConfig, load_config

# Overrides a resumed run takes: where and how often it reports, where it runs and reads its
# data from, its length, and the final evaluation. `optim.steps` stretches (or shortens, not
# below the checkpoint's step) the rest of the run: the lr cosine, the shift warm-up and update
# schedule and the distillation ramp are read against the new length from the current step on.
HARMLESS = ("run.log_every", "run.ckpt_every", "run.progress", "run.tensorboard", "run.device",
            "data.root", "data.num_threads", "optim.steps", "eval.*")
RUN_SECTIONS = ("model", "sampler", "generator", "shift")  # what check_same_run compares
STATE_KEYS = ("config", "model", "sampler", "optimizer", "scheduler", "rng", "step", "counters",
              "bin_counts", "windows")


class ResumePlan(NamedTuple):
    cfg: TrainConfig
    resume: str | None  # what Trainer takes: "auto" or a checkpoint path
    source: str  # where cfg came from, for --print-config


def harmless(key: str) -> bool:
    return key in HARMLESS or f"{key.split('.')[0]}.*" in HARMLESS


def differing_keys(saved: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    """'section.key' of every value of `cur` that `saved` (a config dict) does not hold; a key
    absent from `saved` (added to the config after it was written) compares at its default."""
    defaults = TrainConfig().to_dict()
    out = []
    for sec, values in cur.items():
        was = saved.get(sec)
        was = {**defaults[sec], **was} if isinstance(was, dict) else {}
        out += [f"{sec}.{k}" for k in sorted(set(values) | set(was)) if k not in was or was[k] != values.get(k)]
    return out


def load_train_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by the engine (`load_checkpoint`, then its keys checked)."""
    state = load_checkpoint(path)
    missing = [k for k in STATE_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict):  # a safe file, but not one of ours
        raise ValueError(f"cannot resume {str(path)!r}: not a train.py checkpoint "
                         f"(missing or malformed: {missing or ['config']})")
    return state


def check_same_run(saved: dict[str, Any], cfg: TrainConfig, path: str | Path) -> None:
    """A ValueError when `cfg` is not the config of the run that wrote `path` (`saved`)."""
    cur = cfg.to_dict()
    changed = differing_keys(saved, cur)
    for sec in RUN_SECTIONS:
        diff = [k.split(".", 1)[1] for k in changed if k.startswith(f"{sec}.")]
        if diff:
            raise ValueError(
                f"cannot resume {str(path)!r}: config section {sec!r} differs from the run's in {diff} "
                f"(saved {saved.get(sec)}, now {cur[sec]}); resume with the run's config.yaml"
            )
    if "data.batch_size" in changed:
        raise ValueError(f"cannot resume {str(path)!r}: data.batch_size differs from the run's")


def resume_plan(resume: str, given: TrainConfig, overrides: list[str] | tuple[str, ...]) -> ResumePlan:
    """The config and checkpoint `--resume resume` continues (module docstring); `given` is the
    config given now (--config + overrides), which names the run directory for 'auto'."""
    ckpt = None
    if resume == "auto":
        run_dir = Path(given.run.out_dir).expanduser() / given.run.name
        if not (list_checkpoints(run_dir) or list_moved_aside(run_dir)):
            return ResumePlan(given, "auto", "")  # nothing to continue: a fresh run
    else:
        p = Path(resume).expanduser()
        if p.is_dir():
            run_dir = p
        elif p.is_file():
            run_dir, ckpt = p.parent, p
        else:
            raise ValueError(f"--resume {resume!r}: no such checkpoint file or run directory "
                             "(use 'auto', a run directory or a checkpoint-*.pt path)")
        if run_dir.name in ("", ".", ".."):
            run_dir = run_dir.resolve()
    where = (given.run.out_dir, given.run.name) if resume == "auto" else (str(run_dir.parent), run_dir.name)
    base, source = _run_config(resume, run_dir, ckpt)
    base = base.replace([f"run.out_dir={where[0]}", f"run.name={where[1]}"])  # where the run is now
    cfg = base.replace(list(overrides))
    if _run_dir(cfg) == _run_dir(base):  # e.g. run.out_dir=./runs for runs: the same directory
        cfg = cfg.replace([f"run.out_dir={where[0]}", f"run.name={where[1]}"])
    changed = [k for k in differing_keys(base.to_dict(), cfg.to_dict()) if not harmless(k)]
    moved = ckpt is not None and {"run.out_dir", "run.name"} & set(changed)
    if moved:  # FILE, continued in another directory
        changed = [k for k in changed if k not in ("run.out_dir", "run.name")]
        dest = _run_dir(cfg)
        if list_checkpoints(dest) or list_moved_aside(dest):
            raise ValueError(f"--resume {resume!r} into {str(dest)!r}: that run directory has checkpoints of "
                             "its own; continue a copy in a new one (another run.name)")
    if changed:
        old, new = base.to_dict(), cfg.to_dict()
        values = ", ".join(f"{k}: {_value(old, k)} -> {_value(new, k)}" for k in changed)
        raise ValueError(
            f"--resume {resume!r}: overrides that change the run are refused ({values}); allowed when "
            f"resuming: {', '.join(HARMLESS)}; to change the others start a new run (another run.name)"
        )
    return ResumePlan(cfg, "auto" if ckpt is None else str(ckpt), source)


def _run_dir(cfg: TrainConfig) -> Path:
    return (Path(cfg.run.out_dir).expanduser() / cfg.run.name).resolve()


def _value(d: dict[str, Any], key: str) -> str:
    sec, k = key.split(".", 1)
    return repr(d[sec][k])


def _run_config(resume: str, run_dir: Path, ckpt: Path | None) -> tuple[TrainConfig, str]:
    """The run's config: its config.yaml, else the config saved in `ckpt` (or in the newest
    checkpoint that verifies)."""
    yaml_path = run_dir / "config.yaml"
    if yaml_path.is_file():
        return load_config(yaml_path), str(yaml_path)
    ckpt = ckpt or latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"--resume {resume!r}: {str(run_dir)!r} is no run directory with a checkpoint to "
                         "continue (no config.yaml, no checkpoint-*.pt that verifies)")
    return TrainConfig.from_dict(load_train_state(ckpt)["config"]), f"the config saved in {ckpt}"
