"""Typed training configuration: defaults <- YAML file <- ``section.key=value`` overrides.

    cfg = load_config("configs/fmnist-vit-shift.yaml", ["optim.lr=5e-4", "run.seed=1"])
    cfg.optim.lr, cfg.sampler.name; cfg.to_yaml()  # the resolved config a run writes

Sections are frozen dataclasses; defaults = a few-minute CPU ShiftNAS run on Fashion-MNIST
(docs/method.md sections 2-3). Unknown keys (with difflib close matches), wrong types and invalid
values raise ValueError naming the key. YAML goes through a SafeLoader subclass that reads
only true/false as booleans (``amp: off`` stays "off") and ``1e-3`` as a float.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SAMPLERS = ("shift", "uniform", "sandwich", "attentive", "bin_uniform")
AMP_MODES = ("auto", "gpu", "bf16", "fp16", "off")
DATA_BACKENDS = ("dali", "torch", "auto")
ATTENTIVE_MODES = ("best", "worst")
ESTIMATORS = ("delta", "rate", "literal")  # shiftnas.sampling.shift.ESTIMATORS (kept import-free here)
GRAD_PATHS = ("prefix", "full")  # shiftnas.sampling.shift_sampler.GRAD_PATHS
COSTS = ("flops", "params", "latency")  # shiftnas.cost.COSTS
DEVICES = ("auto", "cpu", "cuda")
# Upper bounds: far above any sensible run (paper: 224 px, 10 bins, 64 hidden units, batch
# 128-1024 per GPU), low enough that a typo (an extra 0 or three) is an error, not an OOM an hour in.
MAX_IMAGE_SIZE = 1024
MAX_BATCH_SIZE = 8192
MAX_BINS = 100
MAX_HIDDEN = 4096


@dataclass(frozen=True)
class RunConfig:
    name: str = "fmnist-vit-shift"  # run directory: <out_dir>/<name>/
    out_dir: str = "runs"
    seed: int = 0
    log_every: int = 20  # steps between metrics.jsonl lines
    ckpt_every: int = 250  # steps between checkpoints (0: only at the end)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    progress: bool = True  # rank 0 progress bar; false: a line every log_every steps (step, loss, lr, img/s)
    tensorboard: bool = True  # TensorBoard events under <run>/tb


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str | None = None  # None: $SHIFTNAS_DATA/<dataset> (see shiftnas.data.prepare)
    image_size: int = 28
    batch_size: int = 128  # per rank
    backend: str = "dali"  # dali | torch | auto
    num_threads: int | None = None
    augment: bool | None = None  # None: the dataset recipe's default
    train_split: str = "train"
    minival_split: str = "minival"  # carved from train: the probability shift's L_val (shift only)
    val_split: str = "val"  # per-bin top-1 at the end
    # false: a file that is no readable image is an error naming it (found by a quick check of
    # every file's signature and end, or when decoded). true: every image is decoded once before
    # training (slow on ImageNet) and those that fail are left out, counted in a warning.
    skip_corrupt: bool = False
    # With skip_corrupt, the most of a split that may be left out: more corrupt images than this
    # fraction stop the run with an error (damaged data, a wrong folder), not a silent shrink.
    max_corrupt_frac: float = 0.01

    def corrupt_checks(self, verify: str = "quick") -> dict[str, Any]:
        """build_loader's corruption arguments for this config: with skip_corrupt every file is
        decoded up front (verify="full", so the same files are left out wherever the split is
        read), else `verify`."""
        return {"skip_corrupt": self.skip_corrupt, "max_corrupt_frac": self.max_corrupt_frac,
                "verify": "full" if self.skip_corrupt else verify}


@dataclass(frozen=True)
class ModelConfig:
    space: str = "vit-fmnist"
    num_classes: int = 10


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # AdamW, cosine schedule after a linear warm-up
    weight_decay: float = 0.05
    # linear lr warm-up; one as long as the run or longer (warmup_steps >= steps, e.g. a short
    # run with the default 100) is clipped to steps // 10, with a note in the log: effective_warmup
    warmup_steps: int = 100
    steps: int = 1000  # total optimizer steps
    grad_clip: float | None = 5.0  # None: no clipping
    label_smoothing: float = 0.1
    # auto: bf16 on CUDA and on CPUs with AMX (amx_bf16; precision.py), else fp32
    # (shiftnas/train/precision.py) | bf16 | fp16 (GradScaler, GPU) | off (fp32)
    amp: str = "auto"
    ema_decay: float = 0.0  # 0: no EMA
    mixup: float = 0.0  # alpha; 0: off
    cutmix: float = 0.0  # alpha; 0: off

    @property
    def effective_warmup(self) -> int:
        """The warm-up the schedule uses: `warmup_steps`, or `steps // 10` when the warm-up would
        fill the whole run (`warmup_steps >= steps`)."""
        return self.steps // 10 if self.warmup_steps >= self.steps else self.warmup_steps


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "shift"
    n_bins: int = 10  # FLOPs bins (shift, bin_uniform, attentive)
    cost: str = "flops"  # what the bins measure (shift, bin_uniform, attentive): flops | params | latency
    latency_table: str | None = None  # cost=latency: a `shiftnas latency build` table of model.space
    n_random: int = 2  # random subnets per step (sandwich, attentive)
    n_candidates: int = 4  # candidates per FLOPs target (attentive)
    mode: str = "best"  # attentive: best | worst
    # Sandwich/attentive in-place distillation: labels only for this fraction of the steps,
    # then the weight of the max subnet's soft logits ramps 0 -> 1 over distill_ramp_frac.
    distill_warmup_frac: float = 0.0
    distill_ramp_frac: float = 0.0


@dataclass(frozen=True)
class GeneratorConfig:
    hidden: int = 64  # LSTM hidden units (paper)
    tau_start: float = 5.0  # Gumbel-softmax temperature, annealed to tau_end
    tau_end: float = 0.5
    lam: float = 1.0  # weight of the resource loss on the normalised cost
    lr: float = 1e-3
    pretrain_steps: int = 0  # steps on the resource loss alone (every bin per step, no data) before training
    pretrain_lr: float = 1e-2
    grad_path: str = "prefix"  # task gradient to the one-hots: prefix (the subnet's cost) | full (Eq. 9 at full width)
    # Fraction of the steps that train a random arch inside the drawn bin instead of the
    # generator's (0: the paper's sampler). 0.5 measured: README "Samplers compared".
    explore: float = 0.5


@dataclass(frozen=True)
class ShiftConfig:
    warmup_frac: float = 0.25  # B stays uniform for this fraction of the steps
    update_every: int = 100  # steps between updates of B (paper: 100)
    estimator: str = "delta"  # delta: per-bin loss change over the interval | rate: delta / (K p_k) | literal: PAPER Eq. 7-8
    probe_stride: int = 2  # delta/rate: each update measures every m-th bin, each bin over m intervals (1: all bins every update); cost / m
    lr: float | None = None  # Adam on B; None: min(movement / (number of updates in the run), max_lr)
    movement: float = 5.6  # total movement budget of B's logits (paper: ~5,600 updates x lr 1e-3)
    max_lr: float = 0.075  # the derived lr's cap: short runs move B less (sampling/shift.py MAX_DERIVED_LR)


@dataclass(frozen=True)
class EvalConfig:
    max_images: int | None = None  # images of the val split per subnet (None: all)
    batch_size: int = 256  # per rank
    bn_calib_batches: int = 20  # training batches that recalibrate BN per subnet (CNN)
    random_archs: bool = True  # also evaluate one fixed-seed random arch per bin (all samplers)


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(_merge(TrainConfig().to_dict(), d, ""))

    def replace(self, overrides: list[str]) -> TrainConfig:
        return _apply(self.to_dict(), None, overrides)


# ---------------------------------------------------------------- YAML reading
class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _yaml_load(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:  # problem + position, on one line (str(e) spans several)
        problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"{what}: not valid YAML: {problem}{at}") from None
    except (RecursionError, OverflowError) as e:  # pathological input
        raise ValueError(f"{what}: not valid YAML: {type(e).__name__}") from None
    except (ValueError, TypeError) as e:  # a tagged scalar that does not parse: !!timestamp 2024-13-45
        raise ValueError(f"{what}: not valid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# ---------------------------------------------------------------- merging and checking
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80  # errors stay one short line, even for a 100 KB value
_repr.maxlevel, _repr.maxlist, _repr.maxdict = 3, 4, 4  # and bounded for YAML alias bombs


def _r(value: Any) -> str:
    """repr for error messages: bounded in length and time (a nested alias 'bomb' whose full
    repr would take gigabytes is cut at a few elements)."""
    return _repr.repr(value)


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig)}


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, c in _sections().items() for f in dataclasses.fields(c)]


def _unknown(key: str) -> ValueError:
    keys = _all_keys() if "." in key else list(_sections())
    if len(key) > 200:  # difflib is quadratic: a pasted blob is no key
        return ValueError(f"unknown config key {_r(key)}; close matches: []")
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    if not close and "." in key:  # e.g. 'optm.lrr': try the leaf name in every section
        leaf = key.rsplit(".", 1)[1]
        close = [k for k in _all_keys() if difflib.get_close_matches(leaf, [k.split(".")[1]], 1, 0.75)]
    return ValueError(f"unknown config key {_r(key)}; close matches: {close[:3]}")


def _merge(base: dict[str, Any], new: Any, prefix: str) -> dict[str, Any]:
    if new is None:
        return base
    if not isinstance(new, dict):
        where = f"config key {prefix.rstrip('.')!r}" if prefix else "the config"
        raise ValueError(f"{where} must be a mapping of keys to values, got {type(new).__name__}")  # noqa: TRY004 - the API promises ValueError
    out = dict(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or k not in base:
            raise _unknown(str(key))
        out[k] = _merge(base[k], v, key + ".") if isinstance(base[k], dict) else v
    return out


def _type_name(t: Any) -> str:
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return f"{args[0].__name__} or null" if args else t.__name__


def _coerce(key: str, value: Any, t: Any) -> Any:
    optional = type(None) in typing.get_args(t)
    base = next((a for a in typing.get_args(t) if a is not type(None)), t)
    if value is None and optional:
        return None
    ok = None
    if isinstance(value, bool) or base is str:
        ok = value if type(value) is base else None
    elif base is int and isinstance(value, (int, float)):
        ok = int(value) if isinstance(value, int) or value.is_integer() else None
    elif base is float and isinstance(value, (int, float, str)):
        try:
            ok = float(value)
        except (ValueError, OverflowError):
            ok = None
        if ok is not None and not math.isfinite(ok):
            raise ValueError(f"config key {key!r}: value {_r(value)} is not finite")
    if ok is None:
        raise ValueError(f"config key {key!r}: value {_r(value)} ({type(value).__name__}) is not a valid {_type_name(t)}")
    return ok


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_RULES: dict[str, tuple[Any, str]] = {
    "run.name": (lambda v: bool(_NAME.match(v)), "a plain directory name: letters, digits, '.', '_', '-' (no '/', no leading '.')"),
    "run.out_dir": (lambda v: v != "", "a non-empty path"),
    "run.seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),  # torch/numpy seed ranges
    "run.log_every": (lambda v: v >= 1, ">= 1"),
    "run.ckpt_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "data.dataset": (lambda v: v != "", "a non-empty name"),
    "data.image_size": (lambda v: 1 <= v <= MAX_IMAGE_SIZE, f"in [1, {MAX_IMAGE_SIZE}]"),
    "data.batch_size": (lambda v: 1 <= v <= MAX_BATCH_SIZE, f"in [1, {MAX_BATCH_SIZE}] (per rank)"),
    "data.backend": (lambda v: v in DATA_BACKENDS, f"one of {list(DATA_BACKENDS)}"),
    "data.num_threads": (lambda v: v is None or v >= 1, "null or >= 1"),
    "data.train_split": (lambda v: bool(_NAME.match(v)), "a split folder name under data.root"),
    "data.minival_split": (lambda v: bool(_NAME.match(v)), "a split folder name under data.root"),
    "data.val_split": (lambda v: bool(_NAME.match(v)), "a split folder name under data.root"),
    "run.device": (lambda v: v in DEVICES, f"one of {list(DEVICES)}"),
    "eval.max_images": (lambda v: v is None or v >= 1, "null (all) or >= 1"),
    "eval.batch_size": (lambda v: 1 <= v <= MAX_BATCH_SIZE, f"in [1, {MAX_BATCH_SIZE}] (per rank)"),
    "eval.bn_calib_batches": (lambda v: v >= 1, ">= 1"),
    "model.num_classes": (lambda v: v >= 1, ">= 1"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "optim.steps": (lambda v: v >= 1, ">= 1"),
    "optim.grad_clip": (lambda v: v is None or v > 0, "null (off) or > 0"),
    "optim.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.amp": (lambda v: v in AMP_MODES, f"one of {list(AMP_MODES)}"),
    "optim.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0: off)"),
    "optim.mixup": (lambda v: v >= 0, ">= 0 (0: off)"),
    "optim.cutmix": (lambda v: v >= 0, ">= 0 (0: off)"),
    "sampler.name": (lambda v: v in SAMPLERS, f"one of {list(SAMPLERS)}"),
    "sampler.n_bins": (lambda v: 1 <= v <= MAX_BINS, f"in [1, {MAX_BINS}]"),
    "sampler.cost": (lambda v: v in COSTS, f"one of {list(COSTS)}"),
    "sampler.n_random": (lambda v: v >= 0, ">= 0"),
    "sampler.n_candidates": (lambda v: v >= 1, ">= 1"),
    "sampler.mode": (lambda v: v in ATTENTIVE_MODES, f"one of {list(ATTENTIVE_MODES)}"),
    "generator.hidden": (lambda v: 1 <= v <= MAX_HIDDEN, f"in [1, {MAX_HIDDEN}]"),
    "generator.tau_start": (lambda v: v > 0, "> 0"),
    "generator.tau_end": (lambda v: v > 0, "> 0"),
    "generator.lam": (lambda v: v >= 0, ">= 0"),
    "generator.lr": (lambda v: v > 0, "> 0"),
    "shift.warmup_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "shift.update_every": (lambda v: v >= 1, ">= 1"),
    "shift.lr": (lambda v: v is None or v > 0, "null (movement / updates) or > 0"),
    "shift.movement": (lambda v: v > 0, "> 0"),
    "shift.max_lr": (lambda v: v > 0, "> 0"),
    "shift.estimator": (lambda v: v in ESTIMATORS, f"one of {list(ESTIMATORS)}"),
    "shift.probe_stride": (lambda v: v >= 1, ">= 1"),
    "generator.pretrain_steps": (lambda v: v >= 0, ">= 0 (0: off)"),
    "generator.pretrain_lr": (lambda v: v > 0, "> 0"),
    "generator.grad_path": (lambda v: v in GRAD_PATHS, f"one of {list(GRAD_PATHS)}"),
    "generator.explore": (lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"),
    "sampler.distill_warmup_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "sampler.distill_ramp_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "data.max_corrupt_frac": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _check_space(v: str) -> None:
    from ..spaces import list_spaces  # lazy: keep `import shiftnas.train.config` light

    if v not in list_spaces():
        raise ValueError(f"config key 'model.space': value {_r(v)} is not allowed; must be one of {list_spaces()}")


def _build(d: dict[str, dict[str, Any]]) -> TrainConfig:
    sections = {}
    for s, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        kw = {}
        for f in dataclasses.fields(cls):
            key = f"{s}.{f.name}"
            v = _coerce(key, d[s][f.name], hints[f.name])
            rule = _RULES.get(key)
            if rule is not None and not rule[0](v):
                raise ValueError(f"config key {key!r}: value {_r(v)} is not allowed; must be {rule[1]}")
            kw[f.name] = v
        sections[s] = cls(**kw)
    cfg = TrainConfig(**sections)
    _check_space(cfg.model.space)
    _check_cost(cfg)
    return cfg


def _check_cost(cfg: TrainConfig) -> None:
    """sampler.cost=latency needs sampler.latency_table: a readable table of model.space."""
    s = cfg.sampler
    if s.cost != "latency":
        if s.latency_table is not None:
            raise ValueError(f"config key 'sampler.latency_table': value {_r(s.latency_table)} is only read with "
                             f"sampler.cost=latency (sampler.cost is {_r(s.cost)})")
        return
    if s.latency_table is None:
        raise ValueError("config key 'sampler.cost': latency needs sampler.latency_table=PATH, a table built by "
                         f"`shiftnas latency build --space {cfg.model.space} --out PATH`")
    from ..cost import get_cost  # lazy: reads the table (json), no torch

    try:
        get_cost(cfg.model.space, "latency", table=Path(s.latency_table).expanduser())
    except ValueError as e:
        raise ValueError(f"config key 'sampler.latency_table': value {_r(s.latency_table)}: {e}") from None


def _parse_override(o: str) -> dict[str, Any]:
    if not isinstance(o, str) or "=" not in o:
        raise ValueError(f"override {_r(o)}: expected section.key=value (e.g. optim.lr=5e-4)")
    key, raw = o.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        if key in _sections():  # a whole section as a YAML mapping: optim={lr: 1e-3}
            return {key: _yaml_load(raw, f"override {_r(o)}")}
        raise _unknown(key)
    s, k = parts
    if s not in _sections() or k not in {f.name for f in dataclasses.fields(_sections()[s])}:
        raise _unknown(key)
    hint = typing.get_type_hints(_sections()[s])[k]
    if hint is str or (hint == (str | None) and raw.strip() not in ("null", "~", "")):
        value: Any = raw  # strings verbatim: run.name=123, optim.amp=off
    else:
        value = _yaml_load(raw, f"override {_r(o)}")
    return {s: {k: value}}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``section.key=value`` overrides."""
    return _apply(TrainConfig().to_dict(), path, overrides)


def _apply(d: dict, path: str | Path | None, overrides: Any) -> TrainConfig:
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:  # a folder, unreadable, binary or not UTF-8
            raise ValueError(f"{path}: cannot read the config as UTF-8 YAML text: {e}") from None
        d = _merge(d, _yaml_load(text, str(path)), "")
    for o in overrides:
        d = _merge(d, _parse_override(o), "")
    return _build(d)
