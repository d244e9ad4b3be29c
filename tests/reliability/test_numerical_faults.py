"""Issue 7, item 5: nan/inf written into the gradients (SHIFTNAS_FAULT_GRAD) are skipped and
counted, in the supernet and in the generator; MAX_BAD_STEPS in a row stop `train.py` with exit 3
and one clear line, leaving a finite checkpoint that resumes to the uninterrupted result.
fp16 GradScaler overflow needs a GPU (the engine refuses fp16 on CPU): that test skips here."""
from __future__ import annotations

import json

import pytest
import torch
from fault_harness import divergence_scenario
from fmnist_tiny import make_tiny_root, tiny_overrides

from shiftnas.train.config import load_config
from shiftnas.train.engine import MAX_BAD_STEPS, Trainer

BAD = [2, 3, 5]


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny"))


@pytest.fixture(autouse=True)
def _one_thread():
    # as the subprocess runs (OMP_NUM_THREADS=1): 2 threads on a busy 2-core machine measured
    # 10-20x slower per run (11 s vs 2.5 s for 8 steps + evaluation)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _optimizer_steps(opt: torch.optim.Optimizer, params) -> int:
    """AdamW steps taken (the most of any parameter: a block a subnet skips gets no step)."""
    return max(int(opt.state[p]["step"]) for p in params if p in opt.state)


@pytest.mark.parametrize(("kind", "where"), [("nan", "supernet"), ("inf", "supernet"), ("-inf", "generator"),
                                             ("nan", "generator")])
def test_bad_gradients_are_skipped_and_counted(fmnist_root, tmp_path, monkeypatch, kind, where):
    monkeypatch.setenv("SHIFTNAS_FAULT_GRAD", f"{kind}:{','.join(map(str, BAD))}:{where}")
    cfg = load_config(None, tiny_overrides(fmnist_root, tmp_path, "g") + ["data.augment=false", "run.ckpt_every=0"])
    tr = Trainer(cfg)
    summary = tr.fit()
    steps = cfg.optim.steps
    assert summary["steps"] == steps and summary["skipped_steps"] == len(BAD) and tr.bad_in_row == 0
    lines = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "skipped"] == BAD
    # a skipped step takes no optimizer step, for the supernet and the generator alike
    assert _optimizer_steps(tr.optimizer, tr.net.parameters()) == steps - len(BAD)
    assert _optimizer_steps(tr.optimizer, tr.extra_params) == steps - len(BAD)
    for p in [*tr.net.parameters(), *tr.extra_params]:
        assert torch.isfinite(p).all()
    assert torch.isfinite(tr.sampler.shift.B).all()


def test_bad_streak_stops_with_exit_3_and_resumes_unchanged(fmnist_root, tmp_path):
    r = divergence_scenario(fmnist_root, tmp_path, tmp_path / "logs", steps=16, ckpt_every=4, bad_from=5)
    assert r["exit_code"] == 3 and not r["traceback"]
    assert len(r["error_lines"]) == 1
    assert r["error_lines"][0].startswith("train.py [rank 0]: error: ")
    assert f"{MAX_BAD_STEPS} consecutive steps" in r["error_lines"][0]
    assert "checkpoint-00000004.pt" in r["error_lines"][0]  # names the checkpoint to resume from
    assert r["checkpoints"] == [4] and r["unreadable_checkpoints"] == [] and r["finite"]
    assert r["resume_exit_code"] == 0 and r["resumed_at"] == [4]
    assert r["diff"] == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 + GradScaler needs a GPU (refused on CPU)")
def test_fp16_overflow_is_skipped_and_the_scale_drops(fmnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTNAS_FAULT_GRAD", "inf:2,3")
    cfg = load_config(None, tiny_overrides(fmnist_root, tmp_path, "fp16") + [
        "data.augment=false", "run.ckpt_every=0", "optim.amp=fp16", "run.device=cuda"])
    tr = Trainer(cfg)
    summary = tr.fit()
    lines = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in lines if r["kind"] == "skipped"]
    assert {2, 3} <= set(skipped) and summary["skipped_steps"] == len(skipped)
    # each overflow halves the scale (no growth within 8 steps: growth_interval is 2000)
    assert tr.scaler.get_scale() <= 65536.0 / 2 ** len(skipped)
    for p in tr.net.parameters():
        assert torch.isfinite(p).all()
