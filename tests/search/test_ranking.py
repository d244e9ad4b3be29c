"""Ranking correlation: the two coefficients, fine-tuning an exported subnet, `shiftnas rank`."""
from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from shiftnas.cli import main
from shiftnas.models.export import export_subnet
from shiftnas.search import load_run
from shiftnas.search.ranking import (
    _finetune_loader,
    finetune,
    kendall_tau,
    rank_archs,
    rank_correlation,
    spearman,
)
from shiftnas.spaces import ArchConfig

# ------------------------------------------------------------------------------ coefficients
# scipy.stats.kendalltau's documented example (tau-b): C=2, D=6, 2 pairs tied in x, 1 in y
# (one of them tied in both): (2 - 6) / sqrt((10 - 2) (10 - 1)).
TIES_X, TIES_Y = [12, 2, 1, 12, 2], [1, 4, 7, 1, 0]


def test_kendall_tau_hand_computed():
    assert kendall_tau(TIES_X, TIES_Y) == pytest.approx(-4 / math.sqrt(72))
    # no ties: 2 discordant pairs of 10 -> (8 - 2) / 10
    assert kendall_tau([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    # ties in x only: pairs (1,2),(1,3),(2,3) tied in x; C = 3, D = 0 -> 3 / sqrt(3 * 6)
    assert kendall_tau([1, 1, 1, 2], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(18))
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2], [5, 5.5]) == 1.0


def test_spearman_hand_computed():
    # y ranks with the tie averaged: [1, 2, 3.5, 5, 3.5]; Pearson with 1..5 = 8 / sqrt(10 * 9.5)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0


def test_coefficients_depend_on_ranks_only_and_are_symmetric():
    rng = random.Random(0)
    x = [rng.gauss(0, 1) for _ in range(30)]
    y = [a + rng.gauss(0, 1) for a in x]
    y[3] = y[7]  # a tie in y
    tau, rho = kendall_tau(x, y), spearman(x, y)
    assert 0.2 < tau < 0.9 and 0.2 < rho < 0.95  # correlated, not identical
    mx, my = [math.exp(a) for a in x], [b**3 + 5 for b in y]  # strictly increasing maps
    assert kendall_tau(mx, my) == pytest.approx(tau, abs=1e-12)
    assert spearman(mx, my) == pytest.approx(rho, abs=1e-12)
    assert kendall_tau(y, x) == pytest.approx(tau, abs=1e-12)
    assert spearman(y, x) == pytest.approx(rho, abs=1e-12)
    neg = [-b for b in y]  # a decreasing map flips the sign
    assert kendall_tau(x, neg) == pytest.approx(-tau, abs=1e-12)
    assert spearman(x, neg) == pytest.approx(-rho, abs=1e-12)


def test_constant_input_gives_nan():
    assert math.isnan(kendall_tau([1, 2, 3], [7, 7, 7]))
    assert math.isnan(spearman([1, 2, 3], [7, 7, 7]))
    assert math.isnan(kendall_tau([4, 4], [1, 2]))


@pytest.mark.parametrize("fn", [kendall_tau, spearman])
def test_coefficient_errors(fn):
    with pytest.raises(ValueError, match="x has 3 values and y has 2"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 pairs, got 1"):
        fn([1], [1])
    with pytest.raises(ValueError, match=r"pair 1 is not finite \(x=nan"):
        fn([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(ValueError, match="pair 2 is not finite"):
        fn([1, 2, 3], [1, 2, float("inf")])


# ------------------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def vit(shift_run):
    return load_run(shift_run)


def _params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_finetune_trains_a_deterministic_copy(vit):
    run = vit
    arch = rank_archs(run.space, run.bins, 1, seed=0)[0]  # bin 0: the cheapest to train
    supernet = _params(run.net)
    start = export_subnet(run.net, arch).eval()
    rng = torch.get_rng_state()
    # the batches finetune(seed=0) reads, in its order: its loss on them must go down
    loader = _finetune_loader(run, run.cfg.data.batch_size, 0)
    loader.set_epoch(0)
    seen = [b for _, b in zip(range(6), loader)]

    def loss(m):
        with torch.no_grad():
            return sum(float(F.cross_entropy(m(x), y)) for x, y in seen) / len(seen)

    a = finetune(run, arch, 6, lr=1e-3, seed=0)
    b = finetune(run, arch, 6, lr=1e-3, seed=0)
    c = finetune(run, arch, 6, lr=1e-3, seed=1)
    assert not a.training
    pa, pb, pc, p0 = _params(a), _params(b), _params(c), _params(start)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # the same seed: the same weights
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)  # another seed: another data order
    changed = [k for k, _ in a.named_parameters() if not torch.equal(pa[k], p0[k])]
    assert changed == [k for k, _ in a.named_parameters()]  # every parameter trained
    assert all(torch.equal(v, supernet[k]) for k, v in run.net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    before, after = loss(start), loss(a)
    assert after < before - 0.03, (before, after)  # measured: 2.140 -> 2.069


def test_finetune_rejects_bad_arguments(vit):
    arch = rank_archs(vit.space, vit.bins, 1)[0]
    with pytest.raises(ValueError, match="steps=-1 must be an integer >= 0"):
        finetune(vit, arch, -1)
    with pytest.raises(ValueError, match="lr=0 must be > 0"):
        finetune(vit, arch, 1, lr=0)
    with pytest.raises(ValueError, match="expected an ArchConfig"):
        finetune(vit, {"depth": 5}, 1)


def test_rank_archs_are_distinct_and_cycle_over_bins(vit):
    archs = rank_archs(vit.space, vit.bins, 8, seed=3)
    assert len(set(archs)) == 8
    assert rank_archs(vit.space, vit.bins, 8, seed=3) == archs
    from shiftnas.cost import count_flops

    assert [vit.bins.bin_of(count_flops(vit.space, a)) for a in archs] == [0, 1, 2, 3] * 2


def test_rank_correlation_validates_first(vit):
    with pytest.raises(ValueError, match="n=1 must be an integer >= 2"):
        rank_correlation(vit, n=1)
    with pytest.raises(ValueError, match="finetune_steps=-2 must be an integer >= 0"):
        rank_correlation(vit, n=3, finetune_steps=-2)
    with pytest.raises(ValueError, match="images=0 must be an integer >= 1"):
        rank_correlation(vit, n=3, images=0)
    with pytest.raises(ValueError, match="split 'nosuch' not found"):
        rank_correlation(vit, n=3, split="nosuch", write=False)


@pytest.mark.parametrize("which", ["shift_run", "cnn_run"])
def test_no_finetuning_reproduces_inherited(which, request):
    """steps=0: the exported subnet (CNN: BN re-estimated on the same batches) scores as the
    supernet's subnet, up to kernel rounding; a stale BN would change the loss by far more."""
    run = load_run(request.getfixturevalue(which), overrides=["eval.bn_calib_batches=2"])
    res = rank_correlation(run, n=2, finetune_steps=0, images=32, write=False)
    assert res["images"] == 32 and res["settings"]["bn_recalibrated"] == (which == "cnn_run")
    for r in res["archs"]:
        assert r["finetuned_loss"] == pytest.approx(r["inherited_loss"], rel=1e-4)
        assert abs(r["finetuned"] - r["inherited"]) <= 100 / 32 + 1e-9  # one borderline image at most


# ------------------------------------------------------------------------------ the command
def test_rank_command_on_a_vit_run(shift_run, tmp_path, capsys):
    run_dir = tmp_path / "shift"
    shutil.copytree(shift_run, run_dir)
    rc = main(["rank", "--run", str(run_dir), "--n", "4", "--finetune-steps", "2", "--images", "32",
               "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert json.loads((run_dir / "rank.json").read_text()) == res
    assert (run_dir / "plots" / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert err.count("\n") == 4 and "1/4" in err  # one progress line per subnet on stderr
    assert (res["n"], res["finetune_steps"], res["split"], res["images"], res["seed"]) == (4, 2, "val", 32, 0)
    run = load_run(run_dir)
    assert res["settings"]["lr"] == pytest.approx(0.1 * run.cfg.optim.lr)
    assert res["wall_s"] > 0
    archs = [ArchConfig.from_dict(run.space.name, r["arch"]) for r in res["archs"]]
    assert archs == rank_archs(run.space, run.bins, 4, seed=0)
    for r, arch in zip(res["archs"], archs):
        assert r["short"] == arch.short()
        assert r["inherited"] == run.evaluate(arch, "val", 32)["top1"]
        assert 0 <= r["finetuned"] <= 100 and r["params"] > 0
    inh, ft = [r["inherited"] for r in res["archs"]], [r["finetuned"] for r in res["archs"]]
    tau, rho = kendall_tau(inh, ft), spearman(inh, ft)
    assert res["kendall_tau"] == (None if math.isnan(tau) else pytest.approx(tau))
    assert res["spearman"] == (None if math.isnan(rho) else pytest.approx(rho))


def test_rank_command_on_a_cnn_run(cnn_run, tmp_path, capsys):
    run_dir = tmp_path / "cnn"
    shutil.copytree(cnn_run, run_dir)
    rc = main(["rank", "--run", str(run_dir), "--n", "2", "--finetune-steps", "2", "--images", "16",
               "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0].lstrip().startswith("1/2") and "fine-tuned" in lines[0]
    assert lines[2].startswith("Kendall tau = ") and "Spearman rho = " in lines[2]
    assert lines[3] == f"wrote {run_dir / 'rank.json'}, {run_dir / 'plots' / 'rank.png'}"
    res = json.loads((run_dir / "rank.json").read_text())
    assert res["settings"]["bn_recalibrated"] and len(res["archs"]) == 2
    assert (run_dir / "plots" / "rank.png").is_file()


@pytest.mark.parametrize("args,msg", [
    (["--n", "1"], "--n=1 must be an integer >= 2"),
    (["--n", "0"], "--n=0 must be an integer >= 2"),
    (["--finetune-steps", "-1"], "--finetune-steps=-1 must be an integer >= 0"),
    (["--images", "0"], "--images=0 must be an integer >= 1"),
    (["--lr", "-1"], "--lr -1.0 must be > 0"),
])
def test_rank_command_argument_errors(shift_run, args, msg, capsys):
    assert main(["rank", "--run", str(shift_run), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("shiftnas rank: error: ") and msg in err


def test_rank_command_missing_run(tmp_path, capsys):
    assert main(["rank", "--run", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "no such run directory" in err


@pytest.mark.parametrize("n,want", [(2, [0, 9]), (3, [0, 4, 9]), (5, [0, 2, 4, 7, 9]), (12, [*range(10), 0, 1])])
def test_rank_archs_fewer_than_the_bins_span_the_whole_range(n, want):
    from shiftnas.cost import FlopsBins, count_flops
    from shiftnas.spaces import get_space

    space = get_space("vit-fmnist")
    bins = FlopsBins(space, n_bins=10)
    archs = rank_archs(space, bins, n, seed=1)
    assert [bins.bin_of(count_flops(space, a)) for a in archs] == want
