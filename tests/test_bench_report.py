"""Report writer: run directory, JSON round trip, Markdown with provenance, terminal tables, real PNGs."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from rig.bench.cost_model import CostSet, simulate
from rig.bench.fig4 import fig4_table, plot_fig4
from rig.bench.fig5 import fig5_table, plot_fig5
from rig.bench.lengths import length_distribution
from rig.bench.provenance import Provenance, elf_build_id
from rig.bench.render import rich_table, terminal_tables
from rig.bench.report import new_run_dir, read_json, write_json, write_report
from rig.bench.sections import Section, Table, merged
from rig.errors import RigError
from ccode import PLAIN_FLAGS, compile_c

SOURCE = r"""
    int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
    unsigned hash(const char *s) { unsigned h = 5381; while (*s) h = h * 33 + (unsigned char)*s++; return h; }
    int lookup(const int *table, int n, int key) {
        int lo = 0, hi = n - 1;
        while (lo <= hi) { int mid = (lo + hi) / 2; if (table[mid] == key) return mid;
                           if (table[mid] < key) lo = mid + 1; else hi = mid - 1; }
        return -1;
    }
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(SOURCE, tmp_path_factory.mktemp("report"), "lib", flags=PLAIN_FLAGS)


def test_run_dirs_are_unique_and_json_round_trips(tmp_path: Path) -> None:
    first, second = new_run_dir(tmp_path), new_run_dir(tmp_path)
    assert first != second and first.parent == tmp_path and first.is_dir()
    data = {"offsets": [1024, 2048], "mean": [1.5, 2.25], "seed": 7, "name": "x"}
    path = write_json(first, "fig5", data)
    assert path.name == "fig5.json"
    assert read_json(path) == data


def test_provenance_is_complete(obj: Path) -> None:
    prov = Provenance.collect(accelerator="none (static analysis)", clock_meaning="relative cost units",
                              n=10_000, seed=3, kernel_build_id=elf_build_id(obj))
    fields = prov.to_dict()
    assert set(fields) == {"host_cpu", "accelerator", "clock_meaning", "kernel_build_id", "gcc_version", "n",
                           "date_iso", "rig_commit", "trapsplice_version", "seed"}
    assert fields["gcc_version"] != "unknown" and fields["kernel_build_id"].split()[0] in {"build-id", "sha256"}
    summary = prov.summary()
    assert "\n" not in summary and "seed 3" in summary and "N=10000" in summary


def test_full_report_with_figures(obj: Path, tmp_path: Path) -> None:
    run_dir = new_run_dir(tmp_path)
    dist = length_distribution(obj)
    result = simulate(dist.counts, seed=11, measured_costs=CostSet.from_cycles("measured", 740, 1000),
                      measured_short_hops=[2, 3])
    prov4 = Provenance.collect(accelerator="none (static analysis)", clock_meaning="instruction counts", n=1)
    prov5 = Provenance.collect(accelerator="none (model)", clock_meaning="relative cost (jmp = 1)",
                               n=result.trials, seed=result.seed)
    plot_fig4([dist], run_dir / "fig4.png", caption=prov4.summary())
    plot_fig5(result, run_dir / "fig5.png", caption=prov5.summary())
    for png in ("fig4.png", "fig5.png"):
        assert (run_dir / png).stat().st_size > 10_000
    write_json(run_dir, "fig4", {"provenance": prov4.to_dict(), "objects": [dist.to_dict()]})
    write_json(run_dir, "fig5", {"provenance": prov5.to_dict(), **result.to_dict()})
    assert read_json(run_dir / "fig5.json")["seed"] == 11
    assert read_json(run_dir / "fig4.json")["objects"][0]["total_instructions"] == dist.total_instructions

    sections = [
        Section("Fig. 4", prov4, tables=[fig4_table([dist])], figures=["fig4.png"], notes=["lengths by capstone"]),
        Section("Fig. 5", prov5, tables=[fig5_table(result)], figures=["fig5.png"]),
    ]
    report = write_report(run_dir, "trapsplice benchmark", sections).read_text()
    assert report.startswith("# trapsplice benchmark")
    assert "![fig4.png](fig4.png)" in report and "![fig5.png](fig5.png)" in report
    # Every table and every figure carries its provenance line.
    assert report.count(prov4.summary()) == 2 and report.count(prov5.summary()) == 2
    assert "rel8-chain" in report and "lib.o" in report


def test_report_refuses_missing_figures_and_ragged_tables(tmp_path: Path) -> None:
    prov = Provenance.collect(accelerator="none", clock_meaning="-", n=1)
    with pytest.raises(RigError):
        write_report(tmp_path, "t", [Section("s", prov, figures=["absent.png"])])
    with pytest.raises(RigError):
        Table("ragged", ["a", "b"], [[1]])


def test_terminal_table_shows_numbers_and_provenance(obj: Path) -> None:
    dist = length_distribution(obj)
    prov = Provenance.collect(accelerator="none", clock_meaning="instruction counts", n=1)
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(rich_table(fig4_table([dist]), prov))
    text = console.export_text()
    assert "lib.o" in text and str(dist.total_instructions) in text and prov.date_iso in text


def test_prose_columns_stay_in_the_markdown_and_leave_the_terminal_to_the_notes(obj: Path, tmp_path: Path) -> None:
    result = simulate(length_distribution(obj).counts, seed=5)
    prov = Provenance.collect(accelerator="none (model)", clock_meaning="relative cost", n=result.trials)
    table = fig5_table(result)
    verdicts = [curve.verdict for curve in result.curves]
    section = Section("Fig. 5", prov, [table], notes=verdicts)
    report = write_report(new_run_dir(tmp_path), "t", [section]).read_text()
    assert "paper's conclusion" in report and all(report.count(v) == 2 for v in verdicts)  # cell and note
    [(shown, _, notes)] = terminal_tables([section])
    assert [column.header for column in shown.columns] == table.header[:-1] and notes == verdicts
    with pytest.raises(RigError):
        Table("bad", ["a"], [[1]], prose_columns=(1,))


def test_sections_of_one_slot_are_shown_as_one() -> None:
    prov = Provenance.collect(accelerator="tcg", clock_meaning="ticks", n=1)
    table1 = Section("Table 1 — tcg", prov, [Table("t1", ["a"], [[1]])], notes=["t1 note"], slot="guest tcg")
    alone = Section("Fig. 4", prov, [Table("f4", ["a"], [[2]])])
    latency = Section("Splice latency — tcg", prov, [Table("lat", ["a"], [[3]])], slot="guest tcg")
    shown = merged([table1, alone, latency])
    assert [s.title for s in shown] == ["Table 1 — tcg", "Fig. 4"]
    assert [t.caption for t in shown[0].tables] == ["t1", "lat"] and shown[0].notes == ["t1 note"]
    assert [t.caption for t in table1.tables] == ["t1"]  # the parts' own sections are left as they were
