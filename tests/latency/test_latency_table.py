"""Latency tables: probes time exactly what each FLOPs term counts, tables are monotone, sum to
predictions, round-trip, resume, and refuse what does not fit; the CLI's build and check."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shiftnas.cli import main as cli
from shiftnas.cost import cost_terms
from shiftnas.latency import LatencyTable, build_table, check_table
from shiftnas.latency import table as table_mod
from shiftnas.latency.probes import build_probe, term_probes
from shiftnas.models.static_vit import set_fused_attention
from shiftnas.spaces import get_space

SPACES = ["vit-fmnist", "cnn-fmnist"]


@pytest.mark.parametrize("space", SPACES)
def test_probes_cover_the_flops_terms_and_are_none_exactly_where_a_term_is_zero(space):
    layout, flops = term_probes(space), cost_terms(space, "flops")
    assert [(n, s) for n, s, _ in layout] == [(t.names, t.shape) for t in flops]
    for (_, _, probes), t in zip(layout, flops):
        assert len(probes) == len(t.values)
        assert all((p is None) == (v == 0) for p, v in zip(probes, t.values))


@pytest.mark.parametrize("space", SPACES)
def test_each_probe_module_does_the_macs_its_entry_counts(space):
    """FlopCounterMode / 2 of the probe's module at batch 1 equals the FLOPs entry: the table
    times the part of the network the cost model counts (24 random entries per space)."""
    rng = random.Random(0)
    layout, flops = term_probes(space), cost_terms(space, "flops")
    entries = [(p, v) for (_, _, ps), t in zip(layout, flops) for p, v in zip(ps, t.values) if p is not None]
    for probe, want in [entries[0], entries[-1], *rng.sample(entries, 22)]:
        m, x = build_probe(space, probe, batch=1)
        set_fused_attention(m, False)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x)
        assert fc.get_total_flops() / 2 == want, probe


@pytest.fixture(scope="module")
def vit_table(tmp_path_factory):
    torch.manual_seed(0)
    partial = tmp_path_factory.mktemp("lat") / "vit.json.partial"
    return build_table("vit-fmnist", threads=1, repeats=3, warmup=1, calibrate=3, resume=partial), partial


def test_table_predicts_overhead_plus_entries_and_records_where_latency_is_not_monotone(vit_table):
    """Entries are the median of three passes' ratios to the reference block times its typical time,
    scaled by the calibration; the table keeps measured values as they are and records the
    largest drop along an axis where FLOPs rise (what an envelope would have hidden)."""
    table, _ = vit_table
    space = get_space("vit-fmnist")
    assert all(len(rec["passes"]) == 3 and all({"ms", "ratio", "ref_ms"} <= set(p) for p in rec["passes"])
               for rec in table.entries.values())
    pace, scale = table.notes["reference_block_ms"], table.notes["scale"]
    rec = table.entries[json.dumps(["vit_block", 64, 2, 2.0])]
    idx = {"depth": 0, "embed_dim": 0, "layers.0.num_heads": 0, "layers.0.mlp_ratio": 0}
    ratio = sorted(p["ratio"] for p in rec["passes"])[1]
    assert table.terms[1].at(idx) == pytest.approx(ratio * pace * scale["blocks"])
    assert set(scale) == {"ends", "blocks"} and min(scale.values()) > 0
    assert table.notes["reference_block"] == ["vit_block", 96, 3, 3.0]
    drops = [t.values[i] - t.values[i + st]
             for t, f in zip(table.terms, cost_terms(space, "flops"))
             for size, st in zip(t.shape, t.strides)
             if all(f.values[i + st] >= f.values[i] for i in range(len(t.values)) if (i // st) % size < size - 1)
             for i in range(len(t.values)) if (i // st) % size < size - 1]
    assert table.notes["monotone_violation_max_ms"] == pytest.approx(max([0.0, *drops]))
    arch = space.sample(random.Random(3))
    idx = space.indices(arch)
    assert table.predict(arch) == pytest.approx(table.overhead_ms + sum(t.at(idx) for t in table.terms))
    assert table.predict(space.max()) > table.predict(space.min()) > 0
    assert len(table.notes["calibration"]) == 3 and table.machine["threads"] == 1
    with pytest.raises(ValueError, match="cnn-fmnist"):
        table.predict(get_space("cnn-fmnist").min())


def test_save_load_round_trip_and_refusals(vit_table, tmp_path):
    table, _ = vit_table
    path = table.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    arch = get_space("vit-fmnist").sample(random.Random(5))
    assert back.predict(arch) == pytest.approx(table.predict(arch))
    assert back.differences("cpu", 1) == []
    assert any(d.startswith("threads") for d in back.differences("cpu", 7))
    doc = json.loads(path.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        LatencyTable.load(bad)
    doc["terms"][1]["shape"] = [1, 1, 1, 1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="term 1 .* rebuild the table"):
        LatencyTable.load(bad)


def test_resume_times_only_what_the_partial_file_lacks(vit_table, monkeypatch):
    table, partial = vit_table
    assert set(json.loads(partial.read_text())["entries"]) == set(table.entries)
    calls = []
    real = table_mod.time_call
    monkeypatch.setattr(table_mod, "time_call", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_table("vit-fmnist", threads=1, repeats=3, warmup=1, calibrate=0, resume=partial)
    assert calls == [] and again.entries == table.entries
    doc = json.loads(partial.read_text())
    key = next(iter(doc["entries"]))
    doc["entries"][key]["passes"].pop()  # interrupted before this entry's third pass
    cut = partial.with_name("cut.partial")
    cut.write_text(json.dumps(doc))
    build_table("vit-fmnist", threads=1, repeats=3, warmup=1, calibrate=0, resume=cut)
    assert len(calls) == 2 and len(json.loads(cut.read_text())["entries"][key]["passes"]) == 3  # warm-up + that pass
    with pytest.raises(ValueError, match="other settings .*batch"):
        build_table("vit-fmnist", threads=1, batch=2, repeats=3, calibrate=0, resume=partial)


def test_check_reports_mape_and_tau(vit_table):
    res = check_table(vit_table[0], n=3, repeats=3, warmup=1)
    assert res["n"] == 3 and len(res["rows"]) == 3 and res["mape_pct"] >= 0
    assert -1 <= res["kendall_tau"] <= 1 or res["kendall_tau"] != res["kendall_tau"]
    with pytest.raises(ValueError, match="n=1"):
        check_table(vit_table[0], n=1)


def test_check_times_every_subnet_per_round_and_keeps_the_median(vit_table, monkeypatch):
    """3 rounds, the second in reverse order; a slow spell (10x) in one round of every subnet
    does not reach its result, which is the median; rounds=0 is refused."""
    order, slow = [], iter([False, True, False] * 4)
    seen: dict[str, int] = {}

    def fake(space, arch, *a, ref=None, **k):
        assert ref is not None  # every subnet is timed against the reference subnet
        key = arch.short()
        seen.setdefault(key, len(seen))
        order.append(seen[key])
        ratio = 1.0 + seen[key] + (9.0 * (1.0 + seen[key]) if next(slow) else 0.0)
        return {"ms": 2.0 * ratio, "ratio": ratio, "ref_samples": [2.0, 2.0, 2.0]}

    monkeypatch.setattr(table_mod, "measure_arch", fake)
    res = check_table(vit_table[0], n=4, rounds=3)
    assert order == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3] and res["rounds"] == 3
    assert [r["measured_ms"] for r in res["rows"]] == [2.0, 4.0, 6.0, 8.0]  # median ratio x the check's pace
    assert all(len(r["rounds_ratio"]) == 3 and max(r["rounds_ratio"]) > 9 for r in res["rows"])
    built = vit_table[0].notes["reference_arch_ms"]
    assert res["reference_ms"] == 2.0 and res["pace_vs_table"] == pytest.approx(2.0 / built)
    predicted = [r["predicted_ms"] for r in res["rows"]]
    at_build = [abs(p - m) / m * 100 for p, m in zip(predicted, [built * k for k in (1.0, 2.0, 3.0, 4.0)])]
    assert res["mape_pct_at_table_pace"] == pytest.approx(sum(at_build) / 4)
    with pytest.raises(ValueError, match="rounds=0"):
        check_table(vit_table[0], n=2, rounds=0)


def test_time_call_against_a_reference_cancels_the_machines_pace(monkeypatch):
    """Each sample of fn is followed by one of ref; the machine's pace changes 3x between samples
    (synthetic sample times): the raw median moves with it, the median per-sample ratio does not."""
    pace = itertools.chain([1.0, 1.0, 3.0, 3.0, 1.5, 1.5, 3.0, 3.0, 1.0, 1.0, 2.5, 2.5, 3.0, 3.0], itertools.repeat(1.0))
    fn, ref = (lambda: None), (lambda: None)
    monkeypatch.setattr(table_mod, "_sample", lambda f, d, inner: (2.0 if f is fn else 1.0) * next(pace))
    monkeypatch.setattr(table_mod, "_inner", lambda f, d, s: 1)
    rec = table_mod.time_call(fn, warmup=0, repeats=7, ref=ref)
    assert rec["ratio"] == 2.0 and rec["ms"] == 5.0 and rec["ref_ms"] == 2.5 and len(rec["ref_samples"]) == 7
    assert "ratio" not in table_mod.time_call(lambda: None, repeats=3)


def test_calibration_fits_an_overhead_and_a_scale_per_term_group():
    """Exact data: with no shrinkage the groups' scales are recovered, with shrinkage they move
    toward the common scale; < 3 subnets or a falling line: the overhead alone (scales 1)."""
    rng = random.Random(0)
    x = [[rng.uniform(1, 5), rng.uniform(1, 5)] for _ in range(12)]
    y = [0.5 + 1.2 * a + 1.6 * b for a, b in x]
    a, s = table_mod._fit_scales(x, y, ridge=0.0)
    assert a == pytest.approx(0.5) and s == pytest.approx([1.2, 1.6])
    _, shrunk = table_mod._fit_scales(x, y, ridge=100.0)
    assert 1.2 < shrunk[0] < shrunk[1] < 1.6 and shrunk[1] - shrunk[0] < 0.1
    assert table_mod._fit_scales([[1.0, 0.0], [2.0, 0.0]], [1.5, 2.7]) == (pytest.approx(0.6), [1.0, 1.0])
    assert table_mod._fit_scales([[1.0], [2.0], [3.0]], [3.0, 2.0, 1.0]) == (2.0 - 2.0, [1.0])
    assert table_mod._fit_scales([], []) == (0.0, [])
    with pytest.raises(ValueError, match="calibrate=-1"):
        build_table("vit-fmnist", calibrate=-1)


def test_a_calibration_that_would_predict_the_smallest_subnet_below_zero_falls_back_to_the_overhead(
        vit_table, monkeypatch):
    """Measured times far below the entries' sums (a steep, low line): the fitted line would put
    the smallest subnet below 0 ms; the table keeps scale 1 and the median overhead instead."""
    table, _ = vit_table
    space = get_space("vit-fmnist")
    raw = LatencyTable(table.space, table.batch, table.dtype, table.machine, list(table.terms), 0.0, {}, {})
    rng = random.Random(0)  # the calibration's seed below: the same 4 archs
    archs = [space.sample(rng) for _ in range(4)]
    sums = [raw.predict(a) for a in archs]
    lo = min(sums)
    measured = [1e-3 + 5.0 * (s - lo) for s in sums]  # slope 5, crossing zero near the smallest sample
    monkeypatch.setattr(table_mod, "time_archs", lambda *a, **k: {"ratios": [[m] for m in measured], "pace_ms": 1.0})
    table_mod._calibrate(raw, space, 4, 0, torch.device("cpu"), torch.float32, 0, 3, lambda s: None)
    assert set(raw.notes["scale"].values()) == {1.0}
    assert raw.overhead_ms == pytest.approx(statistics.median(m - s for m, s in zip(measured, sums)))
    assert raw.predict(space.min()) == pytest.approx(raw.overhead_ms + sum(t.at(space.indices(space.min())) for t in table.terms))


def test_bad_arguments_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="batch=0"):
        build_table("vit-fmnist", batch=0)
    with pytest.raises(ValueError, match="dtype='int8'"):
        build_table("vit-fmnist", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            build_table("vit-fmnist", device="cuda")
    with pytest.raises(ValueError, match="repeats=2"):
        table_mod.time_call(lambda: None, repeats=2)


def test_cli_build_then_check(tmp_path, capsys):
    out = tmp_path / "vit.json"
    args = ["latency", "build", "--space", "vit-fmnist", "--threads", "1", "--repeats", "3", "--warmup", "1",
            "--calibrate", "1", "--out", str(out)]
    assert cli(args) == 0 and out.exists() and not (tmp_path / "vit.json.partial").exists()
    assert cli(args) == 2 and "exists; give --force" in capsys.readouterr().err
    res, png = tmp_path / "check.json", tmp_path / "check.png"
    assert cli(["latency", "check", "--table", str(out), "-n", "2", "--repeats", "3", "--json", str(res),
                "--plot", str(png)]) == 0
    assert json.loads(res.read_text())["n"] == 2 and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        cli(["latency", "check", "--table", str(out), "-n", "0"])
