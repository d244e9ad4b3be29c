"""Two-process torchrun (gloo, CPU): the ranks sample the same architectures and end with the
same weights, B and generator, and `torchrun ... train.py` itself runs to the end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fmnist_tiny import tiny_overrides

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("sampler", ["shift", "attentive"])
def test_two_ranks_agree(tiny_root, tmp_path, sampler):
    ov = tiny_overrides(tiny_root, tmp_path, "ddp") + [
        f"sampler.name={sampler}", "sampler.n_random=1", "sampler.n_candidates=2", "data.batch_size=8",
    ]
    r = _torchrun([str(HERE / "ddp_worker.py"), str(tmp_path), *ov], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert len(ranks) == 2
    a, b = ranks
    assert len(a["archs"]) == 8 and a["archs"] == b["archs"]
    assert len({tuple(x) for x in a["archs"]}) > 1  # the sampler did vary the subnet
    assert a["weights"] == b["weights"] and a["weights_sum"] == b["weights_sum"]
    assert "find_unused_parameters" not in r.stderr
    assert a["extra"] == b["extra"] and a["B"] == b["B"]
    assert a["images_seen"] == 8 * 8 * 2  # steps x batch x ranks
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    if sampler == "shift":
        assert len(a["B"]) == 4 and len(set(a["B"])) > 1  # B moved, identically on both ranks


def test_torchrun_train_py(tiny_root, tmp_path):
    ov = tiny_overrides(tiny_root, tmp_path, "cli") + ["optim.steps=4", "data.batch_size=8"]
    r = _torchrun([str(REPO / "train.py"), *ov], cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "generator" in r.stdout and "run directory" in r.stdout
    assert r.stdout.count("run directory") == 1  # rank 0 alone prints
    assert "find_unused_parameters" not in r.stderr  # DDP's false alarm: the unused parameters are real
    assert (tmp_path / "cli" / "checkpoint-00000004.pt").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_says_nothing_of_unused_parameters_and_skipped_blocks_keep_no_gradient():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {how: subprocess.run([sys.executable, str(HERE / "ddp_unused_worker.py"), str(_free_port()), *how],
                                env=env, capture_output=True, text=True, timeout=300, check=False)
            for how in ((), ("plain",))}
    ours, plain = runs[()], runs[("plain",)]
    assert ours.returncode == 0 and plain.returncode == 0, ours.stderr[-3000:] + plain.stderr[-3000:]
    assert "find_unused_parameters" in plain.stderr  # a bare DDP warns after the max subnet's step
    assert "find_unused_parameters" not in ours.stderr
    skipped = int(ours.stdout.split("no grad:")[1])
    assert skipped > 0 and ours.stdout == plain.stdout  # the min subnet's skipped blocks: no gradient
