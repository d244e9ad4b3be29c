"""The training engine on a tiny real Fashion-MNIST tree: samplers, B, resume, bad steps, outputs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from shiftnas.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from shiftnas.train.engine import MAX_BAD_STEPS, Trainer, TrainingDiverged, lr_factor


def _fit(cfg, resume=None):
    tr = Trainer(cfg, resume=resume)
    return tr, tr.fit()


@pytest.mark.parametrize("sampler", ["uniform", "sandwich", "attentive", "bin_uniform", "shift"])
def test_every_sampler_trains_and_writes_outputs(tiny_cfg, sampler):
    cfg = tiny_cfg(sampler, f"sampler.name={sampler}", "optim.steps=4", "sampler.n_random=1",
                   "sampler.n_candidates=2", "eval.random_archs=true")
    tr, summary = _fit(cfg)
    d = tr.run_dir
    for f in ("config.yaml", "metrics.jsonl", "sampling.json", "summary.json", "plots/sampling.png", "plots/pareto.png"):
        assert (d / f).is_file() and (d / f).stat().st_size > 0, f
    assert [s for s, _ in list_checkpoints(d)] == [4]
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
    n_sub = {"uniform": 1, "bin_uniform": 1, "shift": 1, "sandwich": 3, "attentive": 3}[sampler]
    assert all(r["n_subnets"] == n_sub for r in train)
    sampling = json.loads((d / "sampling.json").read_text())
    assert sum(sampling["counts"]) == 4 * n_sub
    sources = {r["source"] for r in summary["rows"]}
    assert "random" in sources and (("generator" in sources) == (sampler == "shift"))
    for r in summary["rows"]:
        assert 0.0 <= r["top1"] <= 100.0 and r["images"] == 20
    # the resolved config round-trips
    from shiftnas.train.config import load_config

    assert load_config(d / "config.yaml") == cfg


def test_cnn_space_trains_with_shift(tiny_cfg):
    cfg = tiny_cfg("cnn", "model.space=cnn-fmnist", "optim.steps=4", "eval.bn_calib_batches=2")
    tr, summary = _fit(cfg)
    gen = [r for r in summary["rows"] if r["source"] == "generator"]
    assert len(gen) == 4 and all(math.isfinite(r["loss"]) for r in gen)


def test_probability_shift_moves_after_warmup_only(tiny_cfg):
    # 12 steps, warm-up 25% = 3 steps, updates at steps 4, 6, 8, 10 (the reference at 2); with
    # probe stride 2 the update at 4 measures half the bins, so B's steps are at 6, 8, 10.
    cfg = tiny_cfg("shift", "optim.steps=12")
    tr, summary = _fit(cfg)
    hist = tr.sampler.shift.history
    assert tr.sampler.probe_stride == 2 and [h["step"] for h in hist] == [6, 8, 10]
    probs = torch.tensor(summary["final_probs"])
    assert not torch.allclose(probs, torch.full_like(probs, 0.25), atol=1e-5)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    sampling = json.loads((tr.run_dir / "sampling.json").read_text())
    assert [u["step"] for u in sampling["updates"]] == [6, 8, 10]
    shift_lines = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in shift_lines if r["kind"] == "shift"] == [6, 8, 10]


def _final_state(run_dir):
    steps = list_checkpoints(run_dir)
    return load_checkpoint(steps[-1][1])


def test_resume_ends_with_the_same_weights_b_and_generator(tiny_cfg, monkeypatch):
    full, _ = _fit(tiny_cfg("full"))
    # The same run, interrupted during step 6 (after the step-4 checkpoint, which holds the
    # w_(t-1) snapshot for the B update at step 4... and the update at step 6 is redone).
    cut = Trainer(tiny_cfg("cut"))
    real = cut.train_step

    def boom(x, y):
        if cut.step == 6:
            raise KeyboardInterrupt("simulated crash")
        return real(x, y)

    monkeypatch.setattr(cut, "train_step", boom)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    assert [s for s, _ in list_checkpoints(cut.run_dir)] == [4]
    resumed, _ = _fit(tiny_cfg("cut"), resume="auto")
    assert resumed.step == 8

    a, b = _final_state(full.run_dir), _final_state(resumed.run_dir)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ga, gb = a["sampler"]["generator"], b["sampler"]["generator"]
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k
    assert torch.equal(a["sampler"]["shift"]["B"], b["sampler"]["shift"]["B"])
    assert a["sampler"]["history"] == b["sampler"]["history"]
    assert a["bin_counts"] == b["bin_counts"]
    # metrics.jsonl reads as one run: no step logged twice
    lines = [json.loads(x) for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if r["kind"] == "train"]
    assert train_steps == [2, 4, 6, 8]


def test_fresh_run_refuses_a_run_dir_with_checkpoints(tiny_cfg):
    _fit(tiny_cfg("once", "optim.steps=2", "optim.warmup_steps=0"))
    with pytest.raises(ValueError, match="already has checkpoints"):
        Trainer(tiny_cfg("once", "optim.steps=2", "optim.warmup_steps=0"))


def test_resume_with_another_sampler_is_refused(tiny_cfg):
    _fit(tiny_cfg("sw", "optim.steps=2", "optim.warmup_steps=0"))
    tr = Trainer(tiny_cfg("sw", "optim.steps=4", "optim.warmup_steps=0", "sampler.name=uniform"), resume="auto")
    with pytest.raises(ValueError, match="config section 'sampler' differs"):
        tr.fit()


def test_a_checkpoint_from_before_a_new_config_key_resumes_at_its_default(tiny_cfg):
    _fit(tiny_cfg("old", "optim.steps=2", "optim.warmup_steps=0"))
    (step, path), = list_checkpoints(tiny_cfg("old").run.out_dir + "/old")[-1:]
    state = load_checkpoint(path)
    del state["config"]["generator"]["grad_path"]  # written before the key existed
    save_checkpoint(path.parent, state, step)
    tr = Trainer(tiny_cfg("old", "optim.steps=3", "optim.warmup_steps=0"), resume="auto")
    assert tr.fit()["steps"] == 3
    # a value other than the default is still a different run
    tr = Trainer(tiny_cfg("old", "optim.steps=4", "optim.warmup_steps=0", "generator.grad_path=full"), resume="auto")
    with pytest.raises(ValueError, match=r"config section 'generator' differs from the run's in \['grad_path'\]"):
        tr.fit()


def _nan_on(trainer, bad_steps):
    net = trainer.net
    real = net.forward

    def forward(x, arch):
        out = real(x, arch)
        return out * float("nan") if trainer.step in bad_steps else out

    net.forward = forward


def test_nonfinite_steps_are_skipped_and_counted(tiny_cfg):
    tr = Trainer(tiny_cfg("nan", "sampler.name=uniform"))
    _nan_on(tr, {2, 3, 5})
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    summary = tr.fit()
    assert summary["skipped_steps"] == 3 and tr.bad_in_row == 0
    lines = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "skipped"] == [2, 3, 5]
    after = tr.net.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the good steps trained


def test_ten_bad_steps_in_a_row_stop_without_a_bad_checkpoint(tiny_cfg):
    steps = MAX_BAD_STEPS + 6
    tr = Trainer(tiny_cfg("div", "sampler.name=uniform", f"optim.steps={steps}", "run.ckpt_every=2"))
    _nan_on(tr, set(range(3, steps)))
    with pytest.raises(TrainingDiverged, match=f"{MAX_BAD_STEPS} consecutive steps"):
        tr.fit()
    ckpts = list_checkpoints(tr.run_dir)
    assert [k for k, _ in ckpts] == [2]  # none once the bad streak started (step 3 on)
    state = load_checkpoint(ckpts[-1][1])
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 0.02


def test_fp16_on_cpu_is_refused(tiny_cfg):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        Trainer(tiny_cfg("fp16", "optim.amp=fp16", "run.device=cpu"))


def test_auto_amp_says_which_dtype_and_why(tiny_cfg, capsys):
    from shiftnas.train.precision import cpu_features

    tr, summary = _fit(tiny_cfg("auto", "sampler.name=uniform", "optim.steps=2", "optim.amp=auto"))
    want = "bf16" if cpu_features()["fast_bf16"] else "fp32"
    assert summary["amp"] == want and tr.amp_dtype is (torch.bfloat16 if want == "bf16" else None)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("amp: ")]
    assert len(lines) == 1 and lines[0].startswith(f"amp: {want} (optim.amp=auto: ") and "native bf16" in lines[0]


def test_short_run_clips_the_warmup_and_logs_lines_without_a_progress_bar(tiny_cfg, capsys):
    cfg = tiny_cfg("short", "sampler.name=uniform", "optim.steps=10", "optim.warmup_steps=100",
                   "run.log_every=5", "run.progress=false")
    tr = Trainer(cfg)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.lr * lr_factor(0, 1, 10))
    summary = tr.fit()
    assert summary["steps"] == 10
    err = capsys.readouterr().err.splitlines()
    assert "optim.warmup_steps=100 >= optim.steps=10: warm-up clipped to steps // 10 = 1" in err
    lines = [x.split() for x in err if x.startswith("step ")]
    assert [x[1] for x in lines] == ["5/10", "10/10"]
    assert [x[2::2] for x in lines] == [["loss", "lr", "img/s"]] * 2
    assert all(math.isfinite(float(x[3])) and float(x[5]) > 0 and float(x[7]) > 0 for x in lines)


def test_missing_split_names_the_path(tiny_cfg):
    tr = Trainer(tiny_cfg("nosplit", "data.minival_split=nope"))
    with pytest.raises(ValueError, match="data split 'nope' not found"):
        tr.fit()


def test_generator_lands_in_the_requested_bin(tiny_cfg):
    # Joint training (task + resource loss, B updated) on vit-fmnist with 5 bins: the
    # feasibility masks keep every generated subnet in its bin whatever the generator learned.
    cfg = tiny_cfg("hits", "optim.steps=40", "optim.warmup_steps=10", "generator.lr=0.02",
                   "sampler.n_bins=5", "shift.update_every=10", "data.batch_size=8", "run.seed=0",
                   "run.ckpt_every=0", "run.log_every=100")
    tr, summary = _fit(cfg)
    gen = [r for r in summary["rows"] if r["source"] == "generator"]
    assert len(gen) == 5
    hits = sum(r["in_bin"] for r in gen)
    assert hits == len(gen), [(r["bin"], r["mflops"]) for r in gen]
    assert summary["generator_in_bin"] == hits


def test_train_py_errors_exit_2(tiny_root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(repo / "train.py"), "optim.lrr=1"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "unknown config key 'optim.lrr'" in r.stderr and "optim.lr" in r.stderr
    r = subprocess.run([sys.executable, str(repo / "train.py"), "--resume", str(tmp_path / "none.pt"),
                        f"run.out_dir={tmp_path}", f"data.root={tiny_root}"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "no such checkpoint file" in r.stderr


def test_demo_trains_prints_the_table_and_three_budgets(tiny_root, tmp_path):
    import subprocess
    import sys

    from fmnist_tiny import tiny_overrides

    ov = [o for o in tiny_overrides(tiny_root, tmp_path, "x") if not o.startswith(("run.name", "run.out_dir", "eval.max_images", "optim.steps"))]
    cmd = [sys.executable, "-m", "shiftnas.demo", "--out", str(tmp_path), "--steps", "4", "--eval-images", "20", *ov]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "source" in out and out.count("generator") >= 4
    assert out.count("  budget ") == 3 and "max |logit difference|" in out
    assert (tmp_path / "demo-shift" / "subnet-mid" / "arch.json").is_file()
    # a second run re-reads the finished run instead of refusing or retraining
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert r2.returncode == 0 and "resumed from" in r2.stderr and "4 steps" in r2.stdout


def test_mixup_cutmix_ema_bf16_and_tensorboard(tiny_cfg):
    cfg = tiny_cfg("aug", "sampler.name=uniform", "optim.steps=3", "optim.mixup=0.8", "optim.cutmix=1.0",
                   "optim.ema_decay=0.5", "optim.amp=bf16", "run.tensorboard=true", "optim.grad_clip=1.0")
    tr, summary = _fit(cfg)
    assert summary["ema"] and summary["skipped_steps"] == 0
    assert tr.mixup is not None and tr.amp_dtype is torch.bfloat16
    ema, net = tr.ema.module.state_dict(), tr.net.state_dict()
    assert any(not torch.equal(ema[k], net[k]) for k in net if net[k].is_floating_point())
    assert list((tr.run_dir / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(list_checkpoints(tr.run_dir)[-1][1])
    assert "ema" in state


def test_odd_batch_with_mixup_is_refused(tiny_cfg):
    with pytest.raises(ValueError, match="even data.batch_size"):
        Trainer(tiny_cfg("odd", "optim.mixup=0.2", "data.batch_size=15"))
