"""The bench's guest-free parts end to end on the built kernel: report files, Fig. 4 shares,
hop census accounting, Fig. 5 curves with the real hop counts (no guest, no timings); the
registry of parts, and a part registered by a test reaching the report."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rig.bench import registry, run
from rig.bench.determinism import DeterminismPart
from rig.bench.fig4 import Fig4Part
from rig.bench.fig5 import Fig5Part
from rig.bench.hops import HopsPart
from rig.bench.part import STATIC_ANALYSIS, DerivedPart, Registry, ReportContext, Results
from rig.bench.render import terminal_tables
from rig.bench.scale import ScalePart
from rig.bench.sections import Section, Table
from rig.bench.table1 import Table1Part
from rig.errors import RigError
from rig.kernel.build import KernelBuild


@pytest.fixture(scope="module")
def static_run(kernel: KernelBuild, tmp_path_factory: pytest.TempPathFactory) -> run.BenchRun:
    options = run.BenchOptions(switches=frozenset({"fig4", "fig5"}), reports_root=tmp_path_factory.mktemp("reports"))
    return run.run(options)


def test_report_files(static_run: run.BenchRun) -> None:
    for name in ("report.md", "bench.json", "fig4.png", "fig5.png"):
        assert (static_run.run_dir / name).stat().st_size > 0, name
    text = (static_run.run_dir / "report.md").read_text()
    assert "Fig. 4" in text and "Fig. 5" in text and "Provenance:" in text
    data = json.loads((static_run.run_dir / "bench.json").read_text())
    assert data["kernel"]["build_id"] and "table1" not in data and "latency" not in data
    assert data["options"]["parts"] == ["fig4", "fig5"] and data["options"]["fig5"] == {"seed": 2005}
    assert [s.title for s in static_run.sections] == ["Fig. 4 — instruction sizes",
                                                      "Hops the splicer needs on the real kernel",
                                                      "Fig. 5 — modeled average cost vs offset"]


def test_fig4_shares_sum_to_100(static_run: run.BenchRun) -> None:
    names = [d["name"] for d in static_run.data["fig4"]]
    assert names == ["eepro100.o", "sched.o", "slab.o", "page_alloc.o", "four objects", "vmlinux"]
    for dist in static_run.data["fig4"]:
        assert sum(dist["shares_percent"].values()) == pytest.approx(100.0)
        assert dist["total_instructions"] > 0 and dist["undecodable_bytes"] == 0
    merged = static_run.data["fig4"][4]
    assert merged["total_instructions"] == sum(d["total_instructions"] for d in static_run.data["fig4"][:4])
    typed = static_run.results.get(Fig4Part)
    assert typed is not None and typed.four_objects.total_instructions == merged["total_instructions"]


def test_hop_census_accounts_for_every_boundary(static_run: run.BenchRun) -> None:
    census = static_run.data["hops"]
    for c in [*census["objects"], census["all"]]:
        assert sum(c["hops"].values()) + sum(c["refusals"].values()) == c["boundaries"] > 0
        assert c["share_rel32_percent"] + c["share_springboard_percent"] + c["share_refused_percent"] \
            == pytest.approx(100.0)
        assert all(int(k) >= 1 for k in c["hops"])
    assert set(census["short_hops"]) <= {int(k) for k in census["all"]["hops"] if k != "1"}
    typed = static_run.results.get(HopsPart)
    assert typed is not None and typed.all.to_dict() == census["all"]


def test_fig5_has_the_real_splicer_curve(static_run: run.BenchRun) -> None:
    curves = static_run.data["fig5"]["result"]["curves"]
    variants = {c["variant"] for c in curves}
    assert variants == {"rel8-chain", "gilk-springboard", "real-splicer"}
    real = next(c for c in curves if c["variant"] == "real-splicer")
    assert len(set(real["jmp_mean"])) == 1  # rel32 reach: the offset never matters
    assert static_run.data["fig5"]["cost_sets"] == []  # no Table 1 in this run: the paper's costs only


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RigError, match="nothing to run"):
        run.BenchOptions(switches=frozenset()).check()
    with pytest.raises(RigError, match="no bench part"):
        run.BenchOptions(switches=frozenset({"fig6"})).check()
    with pytest.raises(RigError, match="outside 1..64512"):
        run.cli_options(switches=["table1"], n=10**6, runs=None, accel="auto", icount=True, counter=False).check()
    with pytest.raises(RigError, match="--runs"):
        run.BenchOptions(parts=registry.PARTS.configured(Table1Part(runs=0))).check()


def keys(*switches: str) -> list[str]:
    """The parts ``invoke bench`` with these switches runs, in order."""
    options = run.cli_options(switches=switches, n=None, runs=None, accel="auto", icount=True, counter=False)
    return [part.key for part in options.selected()]


@pytest.mark.parametrize("switch, part", [("scale", ScalePart), ("determinism", DeterminismPart)])
def test_opt_in_parts_run_only_when_named(switch: str, part: type[ScalePart] | type[DeterminismPart]) -> None:
    assert switch not in keys()
    assert keys(switch) == [switch]
    assert registry.PARTS.get(part) == part()  # the shared registry keeps its defaults


def test_cli_switches_select_parts_and_what_they_need() -> None:
    assert keys() == ["table1", "latency", "fig4", "hops", "fig5"]
    assert keys("table1") == ["table1", "latency"]
    assert keys("fig4") == ["fig4"]
    assert keys("fig5") == ["fig4", "hops", "fig5"]
    configured = run.cli_options(switches=[], n=7, runs=2, accel="tcg", icount=False, counter=True)
    assert configured.parts.get(Table1Part) == Table1Part(n=7, runs=2, counter_rows=True)
    assert registry.PARTS.get(Table1Part) == Table1Part()  # the shared registry keeps its defaults
    # progress: boot + per round (baseline + 14 rows) + floors, latency's 2 x 20 cycles; no static, no Fig. 5
    assert run.planned_steps(run.cli_options(switches=["table1"], n=None, runs=2, accel="tcg", icount=False,
                                             counter=True)) == 1 + 2 * (1 + 14) + 1 + 2 * 20


def test_registry_refuses_duplicates_and_needs_out_of_order() -> None:
    with pytest.raises(ValueError, match="registered already"):
        Registry([Fig4Part(), Fig4Part()])
    with pytest.raises(ValueError, match="before 'fig5'"):
        Registry([Fig4Part(), Fig5Part()])
    with pytest.raises(TypeError):
        Registry([object()])  # type: ignore[list-item]


@dataclass(frozen=True)
class CountingPart(DerivedPart[list[int]]):
    """The smallest part there is: no guest, no kernel analysis, one table."""

    key: ClassVar[str] = "counting"
    title: ClassVar[str] = "counting to three"
    switch: ClassVar[str] = "counting"

    up_to: int = 3

    def measure(self, results: Results) -> list[int]:
        return list(range(1, self.up_to + 1))

    def to_json(self, result: list[int]) -> Any:
        return {"counted": result}

    def sections(self, result: list[int], report: ReportContext) -> list[Section]:
        prov = report.provenance(accelerator=STATIC_ANALYSIS, clock_meaning="numbers", n=len(result))
        return [Section("Counting", prov, [Table("numbers counted", ["number"], [[i] for i in result])],
                        notes=["counted by a part the test registered"])]


def test_a_registered_part_reaches_the_report(kernel: KernelBuild, tmp_path: Path) -> None:
    parts = registry.PARTS.copy()
    parts.register(CountingPart())
    options = run.BenchOptions(switches=frozenset({"counting"}), parts=parts, reports_root=tmp_path)
    assert run.planned_steps(options) == 1
    notes: list[tuple[str, str]] = []
    done = run.run(options, note=lambda phase, detail: notes.append((phase, detail)))
    assert notes == [("counting", "counting to three")]
    assert [s.title for s in done.sections] == ["Counting"]
    assert done.results.get(CountingPart) == [1, 2, 3]
    data = json.loads((done.run_dir / "bench.json").read_text())
    assert data["counting"] == {"counted": [1, 2, 3]} and data["options"]["parts"] == ["counting"]
    text = (done.run_dir / "report.md").read_text()
    assert "## Counting" in text and "**numbers counted**" in text and "- counted by a part the test registered" in text
    [(table, _, shown_notes)] = terminal_tables(done.sections, width=80)
    assert table.title == "numbers counted" and shown_notes == ["counted by a part the test registered"]
    assert "counting" not in [part.key for part in registry.PARTS]
