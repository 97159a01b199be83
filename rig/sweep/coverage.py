"""The sweep's coverage report: per object and mode, how many boundaries there were, how many the
planner could splice, how many were validated live, reached by the workload, refused (by reason)
or failed -- beside the static hop census of the same objects (``invoke bench``'s Fig. 5 input).

Written to ``reports/<run-id>/coverage.md`` (tables with provenance), ``coverage.json`` and
``coverage.png`` (one stacked bar per object).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.bench.hops import HopCensus
from rig.bench.provenance import Provenance
from rig.sweep.results import SweepResults

GOAL_REACHED_PERCENT = 60.0
GOAL_VALIDATED_PER_MINUTE = 100.0


@dataclass
class ObjectCoverage:
    name: str
    boundaries: int = 0
    plannable: int = 0
    validated: int = 0
    unreached: int = 0
    refused: int = 0
    failed: int = 0
    pending: int = 0
    refused_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def reached_percent(self) -> float:
        """Share of all boundaries the workload ran through a live splice."""
        return 100.0 * self.validated / self.boundaries if self.boundaries else 0.0

    @property
    def validated_of_plannable_percent(self) -> float:
        return 100.0 * self.validated / self.plannable if self.plannable else 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.boundaries += 1
        status = record.get("status") or "pending"
        if record.get("plannable") or status in ("validated", "unreached", "failed") \
                or (status == "refused" and record.get("stage") == "live"):
            self.plannable += 1
        setattr(self, status, getattr(self, status) + 1)
        if status == "refused":
            self.refused_by_reason[record.get("reason", "?")] += 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["refused_by_reason"] = dict(self.refused_by_reason.most_common())
        data["reached_percent"] = round(self.reached_percent, 1)
        data["validated_of_plannable_percent"] = round(self.validated_of_plannable_percent, 1)
        return data


def by_object(results: SweepResults) -> list[ObjectCoverage]:
    """One row per object (points chosen by function or sample: one row named so), and the total."""
    rows: dict[str, ObjectCoverage] = {}
    total = ObjectCoverage("all")
    for record in results.points.values():
        name = record.get("object") or "(functions / sample)"
        rows.setdefault(name, ObjectCoverage(name)).add(record)
        total.add(record)
    return [*sorted(rows.values(), key=lambda row: row.name), total]


def throughput(results: SweepResults) -> dict[str, float]:
    seconds = sum(run["seconds"] for run in results.header.get("runs", []))
    checked = sum(1 for r in results.points.values() if r.get("stage") == "live")
    validated = sum(1 for r in results.points.values() if r.get("status") == "validated")
    minutes = seconds / 60 if seconds else 0.0
    return {"seconds": round(seconds, 1), "checked_live": checked, "validated": validated,
            "checked_per_minute": round(checked / minutes, 1) if minutes else 0.0,
            "validated_per_minute": round(validated / minutes, 1) if minutes else 0.0}


def provenance(results: SweepResults) -> Provenance:
    header = results.header
    options = header["options"]
    return Provenance.collect(accelerator=header.get("clock", "?"),
                              clock_meaning="host wall time (throughput); hit counts are exact",
                              n=len(results.points), seed=options.get("seed"),
                              kernel_build_id=header.get("kernel_build_id", "?"))


def census_rows(rows: list[ObjectCoverage], census: dict[str, HopCensus]) -> list[list[str]]:
    """The static census (jmp, the paper's single-instruction policy) beside what the sweep's mode
    could plan, per object the census knows."""
    out = []
    for row in rows:
        static = census.get(row.name)
        if static is None or not row.boundaries:
            continue
        out.append([row.name, str(static.boundaries), f"{static.share_rel32_percent:.1f}",
                    f"{static.share_springboard_percent:.1f}", f"{static.share_refused_percent:.1f}",
                    f"{100.0 * row.plannable / row.boundaries:.1f}", f"{row.reached_percent:.1f}"])
    return out


CENSUS_HEADER = ["object", "boundaries (census)", "jmp rel32 %", "jmp via springboards %", "jmp refused %",
                 "plannable in this sweep %", "validated live %"]


def markdown(results: SweepResults, census: dict[str, HopCensus] | None = None) -> str:
    options = results.header["options"]
    rows = by_object(results)
    speed = throughput(results)
    lines = [f"# Live coverage sweep ({options['mode']} mode, policy {options['policy']})", "",
             "| object | boundaries | plannable | validated | unreached | refused | failed | pending | "
             "reached % | validated % of plannable | refused by reason |", "|" + "---|" * 11]
    for row in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in row.refused_by_reason.most_common(4))
        lines.append(f"| {row.name} | {row.boundaries} | {row.plannable} | {row.validated} | {row.unreached} | "
                     f"{row.refused} | {row.failed} | {row.pending} | {row.reached_percent:.1f} | "
                     f"{row.validated_of_plannable_percent:.1f} | {reasons} |")
    total = rows[-1]
    lines += ["", f"Reached by the workload: {total.reached_percent:.1f} % of all boundaries (goal on the four "
                  f"Fig. 4 objects: >= {GOAL_REACHED_PERCENT:.0f} %); failed: {total.failed} (goal 0).",
              f"Throughput: {speed['validated']} validated and {speed['checked_live']} checked live in "
              f"{speed['seconds']} s: {speed['validated_per_minute']} validated/min "
              f"(goal >= {GOAL_VALIDATED_PER_MINUTE:.0f}), {speed['checked_per_minute']} checked/min; engine "
              f"{', '.join(run['engine'] for run in results.header.get('runs', [])) or '?'}.",
              "", f"*Provenance: {provenance(results).summary()}*", ""]
    static = census_rows(rows, census or {})
    if static:
        lines += ["## Beside the static hop census", "",
                  "| " + " | ".join(CENSUS_HEADER) + " |", "|" + "---|" * len(CENSUS_HEADER)]
        lines += ["| " + " | ".join(cells) + " |" for cells in static]
        lines += ["", "The census plans every boundary statically in jmp mode (`invoke bench`, Fig. 5's input); "
                      "the sweep's columns are this sweep's mode, planned and then run live.", ""]
    return "\n".join(lines)


def plot(results: SweepResults, out_png: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = by_object(results)
    statuses = [("validated", "#2a9d8f"), ("unreached", "#e9c46a"), ("refused", "#adb5bd"),
                ("failed", "#e63946"), ("pending", "#ffffff")]
    fig, axis = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for status, colour in statuses:
        shares = [100.0 * getattr(row, status) / row.boundaries if row.boundaries else 0.0 for row in rows]
        axis.barh([row.name for row in rows], shares, left=left, color=colour, edgecolor="#555", label=status)
        left = [a + b for a, b in zip(left, shares)]
    options = results.header["options"]
    axis.set_title(f"live sweep: {options['mode']} mode, policy {options['policy']}", fontsize=10, pad=24)
    axis.set_xlim(0, 100)
    axis.set_xlabel("% of instruction boundaries")
    axis.invert_yaxis()
    axis.legend(ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8)
    fig.text(0.01, 0.01, provenance(results).summary(), fontsize=5, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def write(run_dir: Path, results: SweepResults, census: dict[str, HopCensus] | None = None) -> list[Path]:
    md = run_dir / "coverage.md"
    md.write_text(markdown(results, census))
    data = run_dir / "coverage.json"
    data.write_text(json.dumps({"objects": [row.to_dict() for row in by_object(results)],
                                "census": [dict(zip(CENSUS_HEADER, cells)) for cells in
                                           census_rows(by_object(results), census or {})],
                                "throughput": throughput(results),
                                "provenance": provenance(results).to_dict()}, indent=2) + "\n")
    return [md, data, plot(results, run_dir / "coverage.png")]
