"""A `train.py --resume auto` run SIGKILLed at seeded random moments (some inside a checkpoint
write, through SHIFTNAS_FAULT_CKPT_DELAY_S) resumes each time from its newest complete checkpoint,
never leaves a checkpoint that does not load, and ends bit-identical to an uninterrupted run (fp32,
CPU). 5 kills here for CI time; `bench/fault_injection.py` does 20.
"""
from __future__ import annotations

import pytest
from fault_harness import compare_runs, crash_campaign, reference_run, run_overrides, train_cmd
from fmnist_tiny import make_tiny_root

N_KILLS = 5
STEPS = 24


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory):
    return make_tiny_root(tmp_path_factory.mktemp("fmnist-tiny"))


def test_sigkill_at_random_moments_resumes_to_the_same_run(fmnist_root, tmp_path):
    ref = reference_run(train_cmd(run_overrides(fmnist_root, tmp_path, "ref", STEPS)),
                        tmp_path / "ref", tmp_path / "logs" / "ref.log")
    camp = crash_campaign(train_cmd(run_overrides(fmnist_root, tmp_path, "crashed", STEPS)),
                          tmp_path / "crashed", tmp_path / "logs", n_kills=N_KILLS, seed=0, ref=ref,
                          total_steps=STEPS)
    report = [(a["mode"], a["target"], a["where"], a["start_step"], a["max_step"]) for a in camp["attempts"]]
    assert camp["kills"] == N_KILLS, report
    assert camp["kills_in_checkpoint_write"] >= 2 and camp["kills_half_written_temp"] >= 1, report
    assert camp["unreadable_checkpoints"] == 0, [a["unreadable"] for a in camp["attempts"]]
    assert camp["resume_errors"] == [], camp["resume_errors"]
    assert camp["temp_files_left"] == []  # the next save removed the half-written leftovers
    assert camp["steps_executed"] == STEPS + camp["steps_lost"]
    assert compare_runs(tmp_path / "ref", tmp_path / "crashed") == {}
