"""Latency budgets: measured per-device lookup tables in the shape of the FLOPs cost model.

    shiftnas latency build --space vit-fmnist --device cpu --batch 1 --out vit.json
    shiftnas latency check --table vit.json -n 50 --plot vit.png

A table holds, for every entry of every FLOPs cost term of a space (shiftnas/cost/), the
measured milliseconds of the module that term counts (`probes.py`), plus a fixed overhead fitted
on a few whole subnets; `LatencyTable.predict(arch)` sums them. See `table.py` for how entries
are timed.
"""
from .check import check_table, plot_check
from .table import FORMAT, LatencyTable, build_table, measure_arch, time_call

__all__ = ["FORMAT", "LatencyTable", "build_table", "check_table", "measure_arch", "plot_check", "time_call"]
