"""Under `torchrun --nproc_per_node=2 --max-restarts=2 train.py` (gloo, CPU) a rank that raises or
is SIGKILLed mid-epoch makes torchrun restart the job, train.py resumes from the newest checkpoint
by itself (TORCHELASTIC_RESTART_COUNT > 0), and the job ends bit-identical to an uninterrupted
2-process run. A restart never takes over another run's checkpoints."""
from __future__ import annotations

import importlib.util

import pytest
from fault_harness import REPO, restart_scenario
from fmnist_tiny import make_tiny_root, tiny_overrides


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("how", ["raise", "sigkill"])
def test_rank_crash_mid_epoch_restarts_and_finishes_unchanged(fmnist_root, tmp_path, how):
    r = restart_scenario(fmnist_root, tmp_path, tmp_path / "logs", steps=16, ckpt_every=4, raise_at=14, rank=1,
                         how=how)
    assert r["exit_code"] == 0, r.get("output_tail")
    assert r["fault_fired"] and r["crash_logged"]
    assert r["connect_failures"] == 0  # the restarted ranks rejoined at once (fresh store keys)
    assert r["resumed_at"] == [12] and r["steps_lost"] == 2  # one restart, from the step-12 checkpoint
    assert r["unreadable_checkpoints"] == []
    assert r["steps"] == 16 and r["images_seen"] == r["expected_images"]
    assert r["diff"] == {}


def _train_main():
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_restart_continues_only_its_own_config(fmnist_root, tmp_path, monkeypatch, capsys):
    main = _train_main()
    ov = tiny_overrides(fmnist_root, tmp_path, "run") + ["optim.steps=2", "optim.warmup_steps=0", "run.ckpt_every=0"]
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert main(ov) == 0
    capsys.readouterr()
    # A first attempt refused (the run directory holds another run) must not be taken over by
    # the restart: another config is refused with exit 2 and nothing is touched.
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main([*ov, "optim.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "torchrun restart 1" in err and "written with another config" in err
    # The same config continues, as `--resume auto` would.
    assert main(ov) == 0
    assert "resumed from" in capsys.readouterr().err
