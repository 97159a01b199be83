"""Summary statistics, defined exactly as the guest's ``bench`` command defines them.

So a floor computed on the host from raw samples and a path timed by the guest are comparable:
median = upper median ``a[n // 2]``, mean = integer ``sum // n``, p95 = ``a[ceil(0.95 n) - 1]``.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

STATS = ("min", "median", "mean", "p95", "max")


def summarize(samples: Sequence[int]) -> dict[str, int]:
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    n = len(ordered)
    return {"n": n, "min": ordered[0], "median": ordered[n // 2], "mean": sum(ordered) // n,
            "p95": ordered[(n * 95 + 99) // 100 - 1], "max": ordered[-1]}


def across_runs(runs: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """One figure per statistic over several runs: min of the minima, max of the maxima,
    the median of the runs' medians, means and p95s."""
    if not runs:
        raise ValueError("no runs")
    return {
        "min": min(r["min"] for r in runs),
        "median": statistics.median(r["median"] for r in runs),
        "mean": statistics.median(r["mean"] for r in runs),
        "p95": statistics.median(r["p95"] for r in runs),
        "max": max(r["max"] for r in runs),
    }
