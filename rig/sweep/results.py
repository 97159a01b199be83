"""``reports/<run-id>/sweep.json``: one record per point, written after every batch.

Statuses:

* ``validated`` -- spliced live, reached by the workload (its counter moved), the guest stayed
  up with no oops and the unspliced workload digest, and after the unsplice the kernel text
  equalled vmlinux;
* ``unreached`` -- the same, but the counter stayed 0: the splice was harmless but never ran, so
  its relocated code was not tried;
* ``refused`` -- the splicer refused it (``reason``: its reason code; ``detail``: its message);
* ``failed`` -- it failed alone after bisection (``reason``: oops, digest, hang, splice-error,
  unsplice or audit; ``oops``: the decoded oops; ``repro``: commands that reproduce it).

The file is rewritten whole after each batch (renamed into place), so a killed sweep resumes from
it: points with a status are not visited again.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import RigError
from rig.sweep.points import Point

FORMAT_VERSION = 1
STATUSES = ("validated", "unreached", "refused", "failed")
FAILURE_KINDS = ("oops", "digest", "hang", "splice-error", "unsplice", "audit")


@dataclass
class SweepResults:
    path: Path
    header: dict[str, Any]
    points: dict[str, dict[str, Any]] = field(default_factory=dict)   # key -> record
    batches: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, path: Path, header: dict[str, Any], points: list[Point]) -> SweepResults:
        results = cls(path, dict(header, version=FORMAT_VERSION))
        for point in points:
            results.points[point.key] = {"function": point.function, "offset": point.offset,
                                         "address": point.address, "size": point.size, "object": point.obj,
                                         "status": None}
        results.save()
        return results

    @classmethod
    def load(cls, path: Path) -> SweepResults:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RigError(f"cannot read the sweep results {path}: {exc}",
                           "give the run directory of an earlier invoke sweep (reports/<run-id>)") from None
        problems = validate(data)
        if problems:
            raise RigError(f"{path} is not a valid sweep results file: {problems[0]}",
                           "start a new sweep instead of resuming this one")
        return cls(path, data["header"], data["points"], data.get("batches", []))

    def save(self) -> None:
        data = {"header": self.header, "points": self.points, "batches": self.batches,
                "summary": self.summary()}
        scratch = self.path.with_suffix(".json.partial")
        scratch.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(scratch, self.path)

    def pending(self) -> list[Point]:
        return [Point(r["address"], r["function"], r["offset"], r["size"], r["object"])
                for r in self.points.values() if r["status"] is None]

    def record(self, point: Point, outcome: dict[str, Any]) -> None:
        self.points[point.key].update(outcome)

    def summary(self) -> dict[str, Any]:
        counts = Counter(r["status"] or "pending" for r in self.points.values())
        return {"points": len(self.points), **{s: counts.get(s, 0) for s in (*STATUSES, "pending")},
                "refused_by_reason": dict(Counter(r.get("reason", "?") for r in self.points.values()
                                                  if r["status"] == "refused")),
                "failed_by_kind": dict(Counter(r.get("reason", "?") for r in self.points.values()
                                               if r["status"] == "failed"))}


def validate(data: Any) -> list[str]:
    """What is wrong with a loaded sweep.json ([] when it is well-formed)."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), dict) or "header" not in data:
        return ["no header or points"]
    if data["header"].get("version") != FORMAT_VERSION:
        return [f"format version {data['header'].get('version')} (this rig writes {FORMAT_VERSION})"]
    problems = []
    for key, record in data["points"].items():
        status = record.get("status")
        if status is not None and status not in STATUSES:
            problems.append(f"{key}: unknown status {status!r}")
        elif status == "refused" and not record.get("reason"):
            problems.append(f"{key}: refused without a reason")
        elif status == "failed" and (record.get("reason") not in FAILURE_KINDS or not record.get("repro")):
            problems.append(f"{key}: failed without a failure kind and a command that reproduces it")
        elif status in ("validated", "unreached") and (status == "validated") != (record.get("hits", 0) > 0):
            problems.append(f"{key}: {status} with {record.get('hits')} hits")
    return problems
