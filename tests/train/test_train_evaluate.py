"""shiftnas.train.evaluate: BN recalibration, subnet evaluation, per-bin archs and tables."""

import copy
import json
import math
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from archutil import dummy_input
from torch import nn

from shiftnas.cost import FlopsBins, count_flops, count_params
from shiftnas.models.registry import build_supernet
from shiftnas.ops.batch_norm import ElasticBatchNorm2d
from shiftnas.spaces import ArchConfig, get_space
from shiftnas.train.evaluate import (
    arch_row,
    bin_archs,
    calibrate_bn,
    evaluate_arch,
    format_bin_table,
    prepare_input,
)


def _cnn():
    torch.manual_seed(0)
    model = build_supernet("cnn-fmnist")
    arch = get_space("cnn-fmnist").sample(random.Random(3))
    if arch == model.space.max():  # pragma: no cover - the seed is fixed; keep some channels unused
        arch = model.space.min()
    return model, arch


def _batches(space, n, batch=8, seed=0):
    """n (x, y) batches of 28x28 images with different means per batch (so stats differ)."""
    g = torch.Generator().manual_seed(seed)
    hp = space.hparams
    out = []
    for i in range(n):
        x = torch.randn(batch, hp["in_chans"], 28, 28, generator=g) * (1 + 0.5 * i) + 0.3 * i
        out.append((x, torch.randint(0, hp["num_classes"], (batch,), generator=g)))
    return out


def _bn_inputs(model, arch, batches):
    """Inputs of every ElasticBatchNorm2d per batch, from train-mode forwards of a copy."""
    m = copy.deepcopy(model).train()
    seen = {}
    hooks = []
    for name, mod in m.named_modules():
        if isinstance(mod, ElasticBatchNorm2d):
            hooks.append(
                mod.register_forward_pre_hook(
                    lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach())
                )
            )
    with torch.no_grad():
        for x, _ in batches:
            m(prepare_input(m, x, arch), arch)
    for h in hooks:
        h.remove()
    return seen


# -- prepare_input ------------------------------------------------------------------------------
def test_prepare_input_resizes_cnn_and_keeps_vit():
    cnn = build_supernet("cnn-fmnist")
    arch = cnn.space.min()  # resolution 24
    x = torch.randn(2, 1, 28, 28)
    assert prepare_input(cnn, x, arch).shape == (2, 1, 24, 24)
    assert prepare_input(cnn, x, cnn.space.max()) is x  # already 28
    vit = build_supernet("vit-fmnist")
    xv = dummy_input(vit.space, 2)
    assert prepare_input(vit, xv, vit.space.min()) is xv


# -- calibrate_bn -------------------------------------------------------------------------------
def test_calibrate_bn_running_stats_are_exact_batch_averages():
    model, arch = _cnn()
    for m in model.modules():  # stale statistics that calibration must overwrite
        if isinstance(m, ElasticBatchNorm2d):
            m.running_mean.uniform_(-3, 3)
            m.running_var.uniform_(2, 5)
    batches = _batches(model.space, 3)
    inputs = _bn_inputs(model, arch, batches)
    assert calibrate_bn(model, arch, batches) == 3
    mods = dict(model.named_modules())
    n_unused = 0
    for name, mod in mods.items():
        if not isinstance(mod, ElasticBatchNorm2d):
            continue
        if name not in inputs:  # a block the subnet skips: reset, never updated
            n_unused += 1
            assert torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1), name
            continue
        xs = inputs[name]
        c = xs[0].shape[1]
        want_mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
        want_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(mod.running_mean[:c], want_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mod.running_var[:c], want_var, rtol=1e-4, atol=1e-5)
        # channels beyond the subnet's width are reset, not left stale
        assert torch.all(mod.running_mean[c:] == 0) and torch.all(mod.running_var[c:] == 1), name
    assert n_unused > 0  # the test arch leaves some blocks out


def test_calibrate_bn_twice_gives_identical_buffers_and_stops_at_n_batches():
    model, arch = _cnn()
    batches = _batches(model.space, 3)
    calibrate_bn(model, arch, batches)
    first = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    calibrate_bn(model, arch, batches)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, first[k]), k

    drawn = []

    def gen():
        for b in batches:
            drawn.append(1)
            yield b

    assert calibrate_bn(model, arch, gen(), n_batches=2) == 2
    assert len(drawn) == 2  # the third batch is never drawn from the loader
    # two batches give other statistics than three
    assert any(
        not torch.equal(v, first[k]) for k, v in model.state_dict().items() if "running" in k
    )
    ref = copy.deepcopy(model)
    calibrate_bn(ref, arch, batches[:2])
    for (k, v), v2 in zip(model.state_dict().items(), ref.state_dict().values()):
        if "running" in k:
            assert torch.equal(v, v2), k


def test_eval_forward_after_single_batch_calibration_matches_train_forward():
    model, arch = _cnn()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    xin = prepare_input(model, x, arch)
    with torch.no_grad():
        want = copy.deepcopy(model).train()(xin, arch)  # batch statistics
    sizes = {
        k: v[0].numel() // v[0].shape[1] for k, v in _bn_inputs(model, arch, [(x, None)]).items()
    }
    assert calibrate_bn(model, arch, [(x, None)]) == 1
    model.eval()
    with torch.no_grad():
        got = model(xin, arch)
    # running_var is the unbiased variance (factor N/(N-1) >= 1 + 1/min N); the outputs differ
    # by about that factor per BN layer, so compare with that tolerance ...
    tol = 4 * len(sizes) / (min(sizes.values()) - 1)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= tol * scale
    # ... and exactly once each running_var is turned into the biased variance the train forward used.
    mods = dict(model.named_modules())
    for name, n in sizes.items():
        mod = mods[name]
        mod.running_var.mul_((n - 1) / n)
    with torch.no_grad():
        got = model(xin, arch)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


def test_calibrate_bn_restores_momentum_and_modes():
    model, arch = _cnn()
    bns = [m for m in model.modules() if isinstance(m, ElasticBatchNorm2d)]
    for i, m in enumerate(bns):
        m.momentum = 0.05 + 0.01 * (i % 3)
    moms = [m.momentum for m in bns]
    batches = _batches(model.space, 2, batch=8)

    model.eval()
    calibrate_bn(model, arch, batches)
    assert [m.momentum for m in bns] == moms
    assert not any(m.training for m in model.modules())

    model.train()
    model.stages[1].eval()  # mixed modes are restored module by module
    modes = [m.training for m in model.modules()]
    calibrate_bn(model, arch, batches)
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in bns] == moms

    model.eval()
    bad = [(torch.randn(4, 3, 28, 28), None)]  # wrong channel count: the forward raises
    with pytest.raises(ValueError, match="channels"):
        calibrate_bn(model, arch, bad)
    assert [m.momentum for m in bns] == moms
    assert not any(m.training for m in model.modules())


class _TorchBN(nn.Module):
    """A 'vit'-family model (identity input) with a plain torch BatchNorm1d, momentum=None."""

    def __init__(self):
        super().__init__()
        self.space = get_space("vit-fmnist")
        self.bn = nn.BatchNorm1d(4, momentum=None)

    def forward(self, x, arch):
        return self.bn(x)


def test_calibrate_bn_handles_torch_batchnorm_with_cumulative_momentum():
    model = _TorchBN()
    model.bn.num_batches_tracked.fill_(100)  # a cumulative average would weight batches by 1/101..
    model.bn.running_mean.fill_(7.0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 4, generator=g) + i, None) for i in range(3)]
    assert calibrate_bn(model, model.space.min(), batches) == 3
    allx = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(model.bn.running_mean, allx.mean(0), rtol=1e-5, atol=1e-6)
    want_var = torch.stack([b[0].var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(model.bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert model.bn.momentum is None
    assert model.training  # a fresh module is in train mode and stays so


def test_calibrate_bn_without_batchnorm_returns_zero_and_changes_nothing():
    model = build_supernet("vit-fmnist")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert calibrate_bn(model, model.space.max(), []) == 0
    assert calibrate_bn(model, model.space.max(), [(dummy_input(model.space, 2), None)]) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_calibrate_bn_rejects_empty_batches_and_leaves_stats_alone():
    model, arch = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no batch"):
        calibrate_bn(model, arch, iter([]))
    with pytest.raises(ValueError, match="n_batches"):
        calibrate_bn(model, arch, _batches(model.space, 1), n_batches=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# -- evaluate_arch ------------------------------------------------------------------------------
class _FixedLogits(nn.Module):
    """The 'images' are the logits: predictions and losses are known by construction."""

    def __init__(self, out_dtype=torch.float32):
        super().__init__()
        self.space = get_space("vit-fmnist")
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.out_dtype = out_dtype
        self.calls = []

    def forward(self, x, arch):
        enabled = torch.is_autocast_enabled("cpu")
        self.calls.append(
            (self.training, enabled, torch.get_autocast_dtype("cpu") if enabled else None)
        )
        return x.to(self.out_dtype)


_LOGITS = [
    ([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]], [0, 2, 2, 1]),
    ([[0.0, 0.0, 1.0], [5.0, 0.0, 0.0]], [0, 0]),
]


def _loader():
    return [(torch.tensor(x), torch.tensor(y)) for x, y in _LOGITS]


def _ce(row, label):
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def test_evaluate_arch_exact_top1_and_loss():
    model = _FixedLogits()
    model.train()
    arch = model.space.min()
    out = evaluate_arch(model, arch, _loader())
    rows = [(r, lab) for x, y in _LOGITS for r, lab in zip(x, y)]
    assert out["images"] == 6
    assert out["top1"] == pytest.approx(100.0 * 4 / 6, abs=1e-9)  # rows 0, 2, 3, 5 correct
    assert out["loss"] == pytest.approx(sum(_ce(r, lab) for r, lab in rows) / 6, rel=1e-6)
    assert set(out) == {"top1", "loss", "images"}
    assert all(not training for training, _, _ in model.calls)  # forwards ran in eval mode
    assert model.training  # and the previous mode is back


def test_evaluate_arch_max_images_truncates_exactly():
    model = _FixedLogits()
    arch = model.space.min()
    rows = [(r, lab) for x, y in _LOGITS for r, lab in zip(x, y)]
    out = evaluate_arch(model, arch, _loader(), max_images=5)  # 4 + the first row of batch 2
    assert out["images"] == 5
    assert out["top1"] == pytest.approx(60.0, abs=1e-9)
    assert out["loss"] == pytest.approx(sum(_ce(r, lab) for r, lab in rows[:5]) / 5, rel=1e-6)

    drawn = []

    def gen():
        for b in _loader():
            drawn.append(1)
            yield b

    out = evaluate_arch(model, arch, gen(), max_images=4)
    assert out["images"] == 4 and out["top1"] == pytest.approx(75.0, abs=1e-9)
    assert len(drawn) == 1  # the cap was reached: the second batch is not drawn
    out = evaluate_arch(model, arch, _loader(), max_images=1000)
    assert out["images"] == 6


def test_evaluate_arch_low_precision_logits_and_autocast():
    model = _FixedLogits(out_dtype=torch.bfloat16)
    arch = model.space.min()
    out = evaluate_arch(model, arch, _loader(), amp_dtype=torch.bfloat16)
    assert all(enabled and dt == torch.bfloat16 for _, enabled, dt in model.calls)
    assert out["top1"] == pytest.approx(100.0 * 4 / 6, abs=1e-9)  # the logits are exact in bf16
    rows = [(r, lab) for x, y in _LOGITS for r, lab in zip(x, y)]
    assert out["loss"] == pytest.approx(sum(_ce(r, lab) for r, lab in rows) / 6, rel=1e-5)
    model.calls.clear()
    evaluate_arch(model, arch, _loader())
    assert all(not enabled for _, enabled, _ in model.calls)


def test_evaluate_arch_zero_images_raises():
    model = _FixedLogits()
    with pytest.raises(ValueError, match="zero images"):
        evaluate_arch(model, model.space.min(), [])
    with pytest.raises(ValueError, match="max_images"):
        evaluate_arch(model, model.space.min(), _loader(), max_images=0)


def test_evaluate_arch_real_supernets_and_calibration():
    model, arch = _cnn()
    batches = _batches(model.space, 2, batch=8)
    ref = copy.deepcopy(model)
    calibrate_bn(ref, arch, batches, n_batches=1)
    want = evaluate_arch(ref, arch, batches)
    got = evaluate_arch(model, arch, batches, calib_batches=batches, calib_n=1)
    for (k, v), v2 in zip(model.state_dict().items(), ref.state_dict().values()):
        if "running" in k:
            assert torch.equal(v, v2), k
    assert got == want
    assert got["images"] == 16 and 0.0 <= got["top1"] <= 100.0 and got["loss"] > 0

    vit = build_supernet("vit-fmnist")
    torch.manual_seed(0)
    loader = [(dummy_input(vit.space, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    a = vit.space.min()
    fp32 = evaluate_arch(vit, a, loader)
    bf16 = evaluate_arch(vit, a, loader, amp_dtype=torch.bfloat16)
    assert fp32["images"] == bf16["images"] == 16
    assert bf16["loss"] == pytest.approx(fp32["loss"], abs=0.05)


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from torch import nn
    from shiftnas.spaces import get_space
    from shiftnas.train.evaluate import evaluate_arch

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.space = get_space("vit-fmnist")
            self.p = nn.Parameter(torch.zeros(()))
        def forward(self, x, arch):
            return x

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    shards = %s
    x, y = shards[rank]
    m = M()
    res = evaluate_arch(m, m.space.min(), [(torch.tensor(x), torch.tensor(y))])
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(res, f)
    """
)


def test_evaluate_arch_all_reduces_across_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER % repr(_LOGITS))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                str(tmp_path / "store"),
                str(tmp_path / f"r{r}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    for p in procs:
        log, _ = p.communicate(timeout=60)
        assert p.returncode == 0, log.decode()[-2000:]
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    model = _FixedLogits()
    want = evaluate_arch(model, model.space.min(), _loader())  # both shards in one process
    for r in res:
        assert r["images"] == 6
        assert r["top1"] == pytest.approx(want["top1"], abs=1e-9)
        assert r["loss"] == pytest.approx(want["loss"], rel=1e-6)


# -- bin_archs, arch_row, format_bin_table --------------------------------------------------------
@pytest.fixture(scope="module")
def vit_bins():
    space = get_space("vit-fmnist")
    return space, FlopsBins(space, n_bins=10)


def test_bin_archs_deterministic_and_in_bin(vit_bins):
    space, bins = vit_bins
    a = bin_archs(space, bins, seed=0)
    b = bin_archs("vit-fmnist", bins, seed=0)
    assert a == b
    assert [e["bin"] for e in a] == list(range(10))
    assert sum(e["hit"] for e in a) >= 8
    for e in a:
        assert isinstance(e["arch"], ArchConfig)
        f = count_flops(space, e["arch"])
        if e["hit"]:
            assert float(bins.edges[e["bin"]]) <= f <= float(bins.edges[e["bin"] + 1])
            assert bins.bin_of(f) == e["bin"]
    c = bin_archs(space, bins, seed=1)
    assert [e["arch"] for e in c] != [e["arch"] for e in a]


def test_arch_row_fields(vit_bins):
    space, bins = vit_bins
    draws = bin_archs(space, bins, seed=0)
    e = next(d for d in draws if d["hit"] and d["bin"] > 0)
    k, arch = e["bin"], e["arch"]
    row = arch_row(space, arch, bins, k, "generator", {"top1": 81.5, "loss": 0.5})
    assert row["bin"] == k and row["source"] == "generator"
    assert row["lo_mflops"] == pytest.approx(float(bins.edges[k]) / 1e6)
    assert row["hi_mflops"] == pytest.approx(float(bins.edges[k + 1]) / 1e6)
    assert row["mflops"] == pytest.approx(count_flops(space, arch) / 1e6)
    assert row["params_m"] == pytest.approx(count_params(space, arch) / 1e6)
    assert row["lo_mflops"] <= row["mflops"] <= row["hi_mflops"]
    assert row["in_bin"] is True
    assert row["arch"] == arch.short()
    assert ArchConfig.from_dict(space.name, row["arch_values"]) == arch
    assert row["top1"] == 81.5 and row["loss"] == 0.5
    json.dumps(row)  # JSON-able
    assert arch_row(space, arch, bins, k - 1, "random", {})["in_bin"] is False
    # another classifier size changes the parameter count
    p100 = arch_row(space, arch, bins, k, "g", {}, num_classes=100)["params_m"]
    assert p100 == pytest.approx(count_params(space, arch, 100) / 1e6) and p100 > row["params_m"]
    with pytest.raises(ValueError, match="out of range"):
        arch_row(space, arch, bins, 10, "g", {})


def test_format_bin_table_lists_every_row_sorted(vit_bins):
    space, bins = vit_bins
    draws = bin_archs(space, bins, seed=0)[:3]
    rows = []
    for source, acc in (("random", 50.0), ("generator", 60.0)):
        for d in reversed(draws):
            rows.append(
                arch_row(space, d["arch"], bins, d["bin"], source, {"top1": acc + d["bin"]})
            )
    rows.append(arch_row(space, draws[0]["arch"], bins, 0, "zzz-no-top1", {}))
    text = format_bin_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["bin", "range", "(MFLOPs)"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    body = lines[2:]
    assert len(body) == len(rows)
    want_order = sorted(rows, key=lambda r: (r["bin"], r["source"]))
    for line, r in zip(body, want_order):
        assert line.split()[0] == str(r["bin"])
        assert r["source"] in line
        assert line.endswith(r["arch"])
        assert f"{r['mflops']:.2f}" in line
        assert f"{r['lo_mflops']:.2f}-{r['hi_mflops']:.2f}" in line
        if "top1" in r:
            assert f"{r['top1']:.2f}" in line
        assert (" yes " in line) == r["in_bin"]
    assert body[2].split()[:3][2] == "zzz-no-top1" and " - " in body[2]
