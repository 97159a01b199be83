"""The bench's guest-free parts end to end on the built kernel: report files, Fig. 4 shares,
hop census accounting, Fig. 5 curves with the real hop counts (no guest, no timings)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig.bench import run
from rig.errors import RigError
from rig.kernel.build import KernelBuild


@pytest.fixture(scope="module")
def static_run(kernel: KernelBuild, tmp_path_factory: pytest.TempPathFactory) -> run.BenchRun:
    options = run.BenchOptions(table1=False, fig4=True, fig5=True, reports_root=tmp_path_factory.mktemp("reports"))
    return run.run(options)


def test_report_files(static_run: run.BenchRun) -> None:
    for name in ("report.md", "bench.json", "fig4.png", "fig5.png"):
        assert (static_run.run_dir / name).stat().st_size > 0, name
    text = (static_run.run_dir / "report.md").read_text()
    assert "Fig. 4" in text and "Fig. 5" in text and "Provenance:" in text
    data = json.loads((static_run.run_dir / "bench.json").read_text())
    assert data["kernel"]["build_id"] and "table1" not in data


def test_fig4_shares_sum_to_100(static_run: run.BenchRun) -> None:
    names = [d["name"] for d in static_run.data["fig4"]]
    assert names == ["eepro100.o", "sched.o", "slab.o", "page_alloc.o", "four objects", "vmlinux"]
    for dist in static_run.data["fig4"]:
        assert sum(dist["shares_percent"].values()) == pytest.approx(100.0)
        assert dist["total_instructions"] > 0 and dist["undecodable_bytes"] == 0
    merged = static_run.data["fig4"][4]
    assert merged["total_instructions"] == sum(d["total_instructions"] for d in static_run.data["fig4"][:4])


def test_hop_census_accounts_for_every_boundary(static_run: run.BenchRun) -> None:
    census = static_run.data["hops"]
    for c in [*census["objects"], census["all"]]:
        assert sum(c["hops"].values()) + sum(c["refusals"].values()) == c["boundaries"] > 0
        assert c["share_rel32_percent"] + c["share_springboard_percent"] + c["share_refused_percent"] \
            == pytest.approx(100.0)
        assert all(int(k) >= 1 for k in c["hops"])
    assert set(census["short_hops"]) <= {int(k) for k in census["all"]["hops"] if k != "1"}


def test_fig5_has_the_real_splicer_curve(static_run: run.BenchRun) -> None:
    curves = static_run.data["fig5"]["result"]["curves"]
    variants = {c["variant"] for c in curves}
    assert variants == {"rel8-chain", "gilk-springboard", "real-splicer"}
    real = next(c for c in curves if c["variant"] == "real-splicer")
    assert len(set(real["jmp_mean"])) == 1  # rel32 reach: the offset never matters


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RigError):
        run.BenchOptions(table1=False, fig4=False, fig5=False).check()
    with pytest.raises(RigError):
        run.BenchOptions(n=10**6).check()
