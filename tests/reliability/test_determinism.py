"""The same seed and config give the same run on CPU.

Two tiny ShiftNAS runs (fp32, torch loader, no augmentation, one loader thread) with one seed
end with bit-identical supernet weights, optimizer moments, generator, B (and its Adam
moments), RNG states, B history, bin counts, logged losses and evaluation; a run with another
seed does not (so the comparison can fail).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.train import Trainer, load_config
from shiftnas.train.checkpoint import latest_checkpoint, load_checkpoint

# Keys whose values are wall-clock measurements, not results of the computation.
TIMING = {"img_per_s", "time", "eval_s", "wall_s", "elapsed_s", "t"}


@pytest.fixture(scope="module")
def det_root(tmp_path_factory) -> Path:
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny-det"))


def _run(root: Path, out: Path, seed: int) -> Path:
    cfg = load_config(None, [*tiny_overrides(root, out, "det"), f"run.seed={seed}", "data.augment=false"])
    assert cfg.sampler.name == "shift" and cfg.optim.amp == "off" and cfg.data.backend == "torch"
    Trainer(cfg).fit()
    return out / "det"


def _flat(obj, prefix=""):
    """{path: leaf} of nested dicts/lists (tensors are leaves)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _outputs(run_dir: Path) -> dict:
    state = load_checkpoint(latest_checkpoint(run_dir))
    state["config"]["run"].pop("out_dir")  # the only intended difference between the two runs
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "state": _flat(state),
        "metrics": _untimed(metrics),
        "sampling": _untimed(json.loads((run_dir / "sampling.json").read_text())),
        "summary": _untimed(json.loads((run_dir / "summary.json").read_text())),
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def det_runs(det_root, tmp_path_factory) -> dict[str, dict]:
    """Runs a and b: seed 3 in two run directories; c: seed 4."""
    out = tmp_path_factory.mktemp("det-runs")
    return {k: _outputs(_run(det_root, out / k, seed)) for k, seed in (("a", 3), ("b", 3), ("c", 4))}


def test_same_seed_same_run_bit_for_bit(det_runs):
    a, b = det_runs["a"], det_runs["b"]

    # Every tensor and number of the final checkpoint: supernet, AdamW moments, scheduler,
    # generator, B and its Adam moments, the sampler's torch.Generator, python/numpy/torch RNGs.
    assert a["state"].keys() == b["state"].keys()
    differ = [k for k in a["state"] if not _same(a["state"][k], b["state"][k])]
    assert not differ, differ[:10]
    for part in ("/model/", "/sampler/generator/", "/sampler/shift/B", "/sampler/torch_rng", "/optimizer/state/"):
        assert any(k.startswith(part) or part in k for k in a["state"]), f"checkpoint has no {part}"

    # The B history: same steps, bins and probabilities (exact floats), and it did move.
    hist_a, hist_b = a["sampling"]["updates"], b["sampling"]["updates"]
    assert len(hist_a) >= 2 and [h["step"] for h in hist_a] == [h["step"] for h in hist_b]
    assert hist_a == hist_b
    assert hist_a[-1]["probs"] != hist_a[0]["probs"]
    assert a["sampling"] == b["sampling"]
    assert a["metrics"] == b["metrics"]
    assert a["summary"] == b["summary"]


def test_another_seed_gives_another_run(det_runs):
    """The check above is not vacuous: the seed reaches the weights, the arch draws and B."""
    a, c = det_runs["a"], det_runs["c"]
    model = [k for k in a["state"] if k.startswith("/model/")]
    assert any(not _same(a["state"][k], c["state"][k]) for k in model)
    assert a["sampling"]["updates"] != c["sampling"]["updates"]
