"""No file a user is handed runs code, and outputs stay in the run directory.

- every `torch.load` in the code is `weights_only=True` (read from the source, and seen at run
  time); nothing else unpickles or loads YAML unsafely;
- checkpoints crafted to run a shell command when unpickled are refused with a clear error by
  `load_checkpoint`, `latest_checkpoint`, `Trainer`, `train.py --resume PATH` and
  `shiftnas generate/evaluate --run/--checkpoint`, and the command never runs (its marker file
  is never created);
- exported subnets are safetensors + JSON; `load_subnet` refuses a pickle named
  model.safetensors and an arch.json with code-like content;
- run.name / split names cannot leave their folder; what train.py, evaluate, rank and export
  write lies in the run directory (or the export folder given), and a symlink planted in the
  run directory cannot redirect the outputs of training, evaluate or rank out of it.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from clicheck import (
    FUZZ,
    REPO,
    TRAIN_PY,
    assert_one_line_error,
    make_mini_root,
    run_subprocess,
    shiftnas_main,
    train_main,
)
from fmnist_tiny import tiny_overrides
from hypothesis import given
from hypothesis import strategies as st

from shiftnas.models.export import load_subnet, save_subnet
from shiftnas.spaces import get_space
from shiftnas.train import Trainer, load_config
from shiftnas.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

# torch's weights-only unpickler warns about protocol 5 before it refuses the file
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# ----------------------------------------------------------------------- crafted files
class _Shell:
    """Unpickling runs `touch target` through os.system (pickled as posix.system)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Exec:
    """Unpickling runs Python source through builtins.exec."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def _craft(path: Path, how: str, marker: Path, genuine: dict | None = None) -> Path:
    """Write a checkpoint at `path` that runs code (creating `marker`) when unpickled."""
    evil = _Shell(marker)
    if how == "torch zip":
        torch.save({"model": {}, "step": 9, "x": evil}, path)
    elif how == "torch legacy":
        torch.save({"model": {}, "step": 9, "x": evil}, path, _use_new_zipfile_serialization=False)
    elif how == "raw pickle":
        path.write_bytes(pickle.dumps({"model": {}, "step": 9, "x": evil}, protocol=2))
    elif how == "pickle protocol 5 exec":
        path.write_bytes(pickle.dumps({"step": 9, "x": _Exec(marker)}, protocol=5))
    elif how == "hand-written opcodes":  # GLOBAL builtins.exec, no helper class on the way
        src = f"open({str(marker)!r}, 'w').write('pwned')".encode()
        path.write_bytes(b"cbuiltins\nexec\n(V" + src + b"\ntR.")
    elif how == "genuine + payload":  # a real train.py checkpoint with one object slipped in
        state = dict(genuine)
        state["sampler"] = {**state["sampler"], "note": evil}
        torch.save(state, path)
    else:
        raise AssertionError(how)
    return path


HOWS = ["torch zip", "torch legacy", "raw pickle", "pickle protocol 5 exec", "hand-written opcodes",
        "genuine + payload"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A real run directory (config.yaml + checkpoint-00000000.pt, no step trained) on a tiny
    self-made tree: what the crafted files imitate, and the control that the path works."""
    d = tmp_path_factory.mktemp("safe")
    root = make_mini_root(d / "data")
    cfg = load_config(None, [*tiny_overrides(root, d / "runs", "real"), "optim.steps=2", "optim.warmup_steps=0"])
    tr = Trainer(cfg)
    tr.restore()
    tr.run_dir.mkdir(parents=True)
    (tr.run_dir / "config.yaml").write_text(cfg.to_yaml())
    ckpt = tr.save()
    return {"dir": d, "root": root, "cfg": cfg, "run": tr.run_dir, "ckpt": ckpt, "state": load_checkpoint(ckpt)}


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a crafted file ran code"


def _copy_run(genuine, dst: Path) -> Path:
    shutil.copytree(genuine["run"], dst)
    for p in dst.glob("checkpoint-*.pt"):
        p.unlink()
    return dst


# ----------------------------------------------------------------------- weights_only
SOURCES = [REPO / "train.py", *sorted((REPO / "shiftnas").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    loads, bad = 0, []
    for f in SOURCES:
        for call, name in _calls(ast.parse(f.read_text(), str(f))):
            where = f"{f.relative_to(REPO)}:{call.lineno} {name}"
            kw = {k.arg: k.value for k in call.keywords}
            if name.endswith("torch.load") or (name == "load" and "weights_only" in kw):
                loads += 1
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where}: without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads", "dill.load",
                          "joblib.load", "torch.jit.load", "yaml.unsafe_load", "yaml.full_load"):
                bad.append(where)
            elif name in ("np.load", "numpy.load") and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                bad.append(f"{where}: without allow_pickle=False")
            elif name == "yaml.load":
                loader = kw.get("Loader")
                if loader is None or ast.unparse(loader) not in ("_Loader", "yaml.SafeLoader", "yaml.CSafeLoader"):
                    bad.append(f"{where}: Loader={ast.unparse(loader) if loader else None}")
            elif name in ("eval", "exec"):
                bad.append(where)
    assert loads >= 1 and not bad, bad
    from shiftnas.train.config import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)


def test_load_checkpoint_calls_torch_load_weights_only(genuine):
    real = torch.load
    seen = []

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    with mock.patch("torch.load", spy):
        load_checkpoint(genuine["ckpt"])
        assert latest_checkpoint(genuine["run"]) == genuine["ckpt"]
        Trainer(genuine["cfg"], resume=str(genuine["ckpt"])).restore()
    assert len(seen) >= 3 and all(v is True for v in seen), seen


# ----------------------------------------------------------------------- crafted checkpoints
@pytest.mark.parametrize("how", HOWS)
def test_crafted_checkpoint_refused_by_the_api(genuine, tmp_path, marker, how):
    p = _craft(tmp_path / "checkpoint-00000009.pt", how, marker, genuine["state"])
    with pytest.raises(ValueError, match="not a safe shiftnas checkpoint \\(refusing to unpickle code\\)") as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert latest_checkpoint(tmp_path) is None
    assert any("refusing to unpickle" in str(x.message) for x in w)
    # beside a genuine older checkpoint, auto-resume falls back to the genuine one
    shutil.copy(genuine["ckpt"], tmp_path / "checkpoint-00000004.pt")
    with pytest.warns(UserWarning, match="checkpoint-00000009.pt"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-00000004.pt"
    tr = Trainer(genuine["cfg"], resume=str(p))
    with pytest.raises(ValueError, match="refusing to unpickle code"):
        tr.restore()


@pytest.mark.parametrize("how", ["torch zip", "hand-written opcodes", "genuine + payload"])
def test_train_py_resume_refuses_crafted_checkpoint(genuine, tmp_path, marker, how):
    p = _craft(tmp_path / "evil.pt", how, marker, genuine["state"])
    argv = ["--resume", str(p), *tiny_overrides(genuine["root"], tmp_path / "runs", "resumed"),
            "optim.steps=2", "optim.warmup_steps=0"]
    rc, _, err = train_main(argv, seconds=300)
    line = assert_one_line_error(rc, err, "train.py")
    assert "refusing to unpickle code" in line and str(p) in line
    assert not list((tmp_path / "runs").rglob("checkpoint-*.pt"))  # nothing trained on top of it


def test_train_py_resume_crafted_checkpoint_subprocess(genuine, tmp_path, marker):
    p = _craft(tmp_path / "evil.pt", "torch zip", marker)
    rc, _, err = run_subprocess([str(TRAIN_PY), "--resume", str(p),
                                 *tiny_overrides(genuine["root"], tmp_path / "runs", "resumed")], cwd=tmp_path)
    assert "refusing to unpickle code" in assert_one_line_error(rc, err, "train.py")


@pytest.mark.parametrize("how", ["torch zip", "raw pickle", "genuine + payload"])
def test_shiftnas_commands_refuse_crafted_checkpoint(genuine, tmp_path, marker, how):
    run = _copy_run(genuine, tmp_path / "run")
    evil = _craft(run / "checkpoint-00000008.pt", how, marker, genuine["state"])
    base = ["--device", "cpu"]
    for argv in (["generate", "--run", str(run), "--flops", "1M", *base],    # the run's newest checkpoint
                 ["generate", "--run", str(genuine["run"]), "--checkpoint", str(evil), "--sweep", *base],
                 ["evaluate", "--run", str(run), "--max-images", "4", *base]):
        rc, _, err = shiftnas_main(argv)
        line = assert_one_line_error(rc, err, f"shiftnas {argv[0]}")
        assert "refusing to unpickle code" in line, line
    assert not (run / "evaluate.json").exists()


def test_shiftnas_generate_crafted_checkpoint_subprocess(genuine, tmp_path, marker):
    run = _copy_run(genuine, tmp_path / "run")
    _craft(run / "checkpoint-00000008.pt", "torch zip", marker)
    rc, _, err = run_subprocess(["-m", "shiftnas.cli", "generate", "--run", str(run), "--sweep", "--device", "cpu"],
                                cwd=tmp_path)
    assert "refusing to unpickle code" in assert_one_line_error(rc, err, "shiftnas generate")


def test_foreign_but_safe_checkpoint_is_refused_clearly(genuine, tmp_path):
    """A weights-only file that is no train.py checkpoint (a bare state_dict, a list, a real one
    with a part missing or of the wrong type), with a valid digest where it is a dict."""
    no_model = {k: v for k, v in genuine["state"].items() if k != "model"}
    for i, obj in enumerate(({"weight": torch.zeros(3)}, [torch.zeros(2)], {"config": [1, 2]}, no_model,
                             {**genuine["state"], "config": "model: x"})):
        if isinstance(obj, dict):
            p = save_checkpoint(tmp_path / f"foreign{i}", obj, 0)
            want = "not a train.py checkpoint"
        else:
            torch.save(obj, p := tmp_path / f"foreign{i}.pt")
            want = "holds list, not a dict"
        rc, _, err = train_main(["--resume", str(p), *tiny_overrides(genuine["root"], tmp_path / "runs", f"f{i}")],
                                seconds=300)
        line = assert_one_line_error(rc, err, "train.py")
        assert str(p) in line and want in line


# ----------------------------------------------------------------------- exported subnets
@pytest.fixture
def subnet(tmp_path) -> Path:
    import shiftnas

    arch = get_space("vit-fmnist").min()
    net = shiftnas.build_supernet("vit-fmnist")
    return save_subnet(shiftnas.export_subnet(net, arch), arch, tmp_path / "subnet")


def test_exported_subnet_is_safetensors_and_json(subnet):
    from safetensors import safe_open

    assert sorted(p.name for p in subnet.iterdir()) == ["arch.json", "model.safetensors"]
    data = (subnet / "model.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + header])  # safetensors: a JSON header, then raw tensor bytes
    assert meta["__metadata__"]["format"] == "shiftnas-subnet/1"
    with safe_open(str(subnet / "model.safetensors"), "pt") as f:
        assert "head.weight" in f.keys()  # noqa: SIM118 - safe_open has keys(), no __contains__
    assert not data.startswith((b"\x80", b"PK"))  # neither a pickle nor torch's zip of one
    assert load_subnet(subnet).arch == get_space("vit-fmnist").min()


@pytest.mark.parametrize("how", ["torch zip", "raw pickle", "hand-written opcodes"])
def test_load_subnet_refuses_a_pickle_named_safetensors(subnet, marker, how):
    _craft(subnet / "model.safetensors", how, marker)
    with pytest.raises(ValueError, match="is not a safetensors file.*never unpickles") as e:
        load_subnet(subnet)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change", [
    {"space": "!!python/object/apply:os.system"},
    {"space": "__import__('os').system('touch PWNED')"},
    {"arch": "__import__('os').system('touch PWNED')"},
    {"arch": {"__reduce__": ["os.system", "touch PWNED"]}},
    {"arch": None},
    {"num_classes": "__import__('os').system('touch PWNED')"},
    {"num_classes": 10**9},  # would allocate a 256 GB head before the shape check
    {"num_classes": -1},
    {"num_classes": 10.5},
    {"format": "pickle"},
])
def test_load_subnet_refuses_code_like_arch_json(subnet, change, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = json.loads((subnet / "arch.json").read_text())
    meta.update(change)
    (subnet / "arch.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        load_subnet(subnet)
    assert "\n" not in str(e.value) and "arch.json" in str(e.value) or "does not match" in str(e.value)
    assert not (tmp_path / "PWNED").exists()


def test_load_subnet_missing_keys_and_yaml_tags(subnet):
    meta = json.loads((subnet / "arch.json").read_text())
    for k in ("space", "arch", "num_classes"):
        m = {key: v for key, v in meta.items() if key != k}
        (subnet / "arch.json").write_text(json.dumps(m))
        with pytest.raises(ValueError, match="arch.json"):
            load_subnet(subnet)
    (subnet / "arch.json").write_text("!!python/object/apply:os.system ['touch PWNED']")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_subnet(subnet)


# ----------------------------------------------------------------------- output paths
names = st.text(max_size=30) | st.sampled_from(["..", ".", "../x", "a/../../b", "/abs", "~", "~/x", "a/b", "a\\b",
                                                ".hidden", "a..b", "x.", "-", "_", "C:x", "name\x00"])


@FUZZ
@given(name=names)
def test_run_name_cannot_leave_out_dir(name):
    out = Path("/tmp/shiftnas-out-dir-check")
    try:
        cfg = load_config(None, [f"run.out_dir={out}", f"run.name={name}"])
    except ValueError as e:
        assert "run.name" in str(e) or "override" in str(e)
        return
    run_dir = (Path(cfg.run.out_dir).expanduser() / cfg.run.name).resolve()  # as Trainer builds it
    assert run_dir.parent == out.resolve() and run_dir.name == name


@FUZZ
@given(name=names, key=st.sampled_from(["data.train_split", "data.minival_split", "data.val_split"]))
def test_split_names_cannot_leave_the_data_root(name, key):
    try:
        cfg = load_config(None, ["data.root=/data", f"{key}={name}"])
    except ValueError:
        return
    split = getattr(cfg.data, key.split(".")[1])
    assert (Path("/data") / split).resolve().parent == Path("/data")


def _files(d: Path) -> set[Path]:
    return {p for p in d.rglob("*") if p.is_file() or p.is_symlink()}


def test_writes_stay_in_the_run_dir(genuine, tmp_path):
    """train.py, evaluate, rank: new files only inside the run directory; export: only in --out."""
    work = tmp_path / "work"
    root = make_mini_root(work / "data")
    before = _files(tmp_path)
    rc, _, err = train_main([*tiny_overrides(root, work / "runs", "r1"), "optim.steps=2", "optim.warmup_steps=0",
                             "run.ckpt_every=1"], seconds=600)
    assert rc == 0, err
    run = work / "runs" / "r1"
    for argv in (["evaluate", "--run", str(run), "--max-images", "4", "--device", "cpu"],
                 ["rank", "--run", str(run), "--n", "2", "--finetune-steps", "1", "--images", "4", "--device", "cpu"]):
        rc, _, err = shiftnas_main(argv, seconds=600)
        assert rc == 0, err
    arch = tmp_path / "arch.json"
    arch.write_text(get_space("vit-fmnist").min().to_json())
    rc, _, err = shiftnas_main(["export", "--run", str(run), "--arch", str(arch), "--out", str(tmp_path / "sub"),
                                "--device", "cpu"])
    assert rc == 0, err
    new = _files(tmp_path) - before - {arch}
    outside = sorted(str(p) for p in new if run not in p.parents and (tmp_path / "sub") not in p.parents)
    assert not outside, outside
    assert {"evaluate.json", "rank.json", "summary.json", "config.yaml"} <= {p.name for p in new}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["arch.json", "model.safetensors"]


@pytest.mark.parametrize("planted", ["plots", "evaluate.json", "rank.json"])
def test_symlink_in_run_dir_cannot_redirect_outputs(genuine, tmp_path, planted):
    run = tmp_path / "run"
    shutil.copytree(genuine["run"], run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.json").write_text("{}")
    (run / planted).symlink_to(elsewhere if planted == "plots" else elsewhere / "keep.json")
    for argv in (["evaluate", "--run", str(run), "--max-images", "4", "--device", "cpu"],
                 ["rank", "--run", str(run), "--n", "2", "--finetune-steps", "0", "--images", "4", "--device", "cpu"]):
        rc, _, err = shiftnas_main(argv, seconds=600)
        if rc == 0:  # this command does not write the planted name
            assert planted == {"evaluate": "rank.json", "rank": "evaluate.json"}[argv[0]], argv
            continue
        assert "escapes the run directory" in assert_one_line_error(rc, err, f"shiftnas {argv[0]}")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.json"]
    assert (elsewhere / "keep.json").read_text() == "{}"


@pytest.mark.parametrize("start", ["fresh", "resume"])
@pytest.mark.parametrize("planted", ["config.yaml", "metrics.jsonl", "tb", "summary.json", "sampling.json", "plots"])
def test_symlink_in_run_dir_cannot_redirect_training_outputs(genuine, tmp_path, planted, start):
    """A symlink out of the run directory planted for any output of a training run, fresh or
    resumed, is refused with the output's name before the run writes anything."""
    run = tmp_path / "runs" / "real"
    if start == "resume":
        shutil.copytree(genuine["run"], run)
    else:
        run.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.json").write_text("{}")
    (run / planted).unlink(missing_ok=True)
    (run / planted).symlink_to(elsewhere if planted in ("plots", "tb") else elsewhere / "keep.json")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink()}
    cfg = genuine["cfg"].replace([f"run.out_dir={tmp_path / 'runs'}", "run.tensorboard=true"])
    tr = Trainer(cfg, resume="auto" if start == "resume" else None)
    with pytest.raises(ValueError, match=rf"^output path '{planted}[^']*' escapes the run directory"):
        tr.fit()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.json"]
    assert (elsewhere / "keep.json").read_text() == "{}"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.is_symlink()} == before


def test_unusable_out_dir_is_one_line(genuine, tmp_path):
    """run.out_dir is a file, or cannot be created: exit 2 and one line, not an OSError traceback."""
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", Path("/proc/shiftnas-no-such-dir")):
        rc, _, err = train_main([*tiny_overrides(genuine["root"], out, "r"), "optim.steps=1", "optim.warmup_steps=0"],
                                seconds=300)
        assert str(out) in assert_one_line_error(rc, err, "train.py")
