"""The three stops of a splice as the cli and the bench show them: the stop that checks and writes
the points, the staging stop before it, the prep stop (issue 10)."""
from __future__ import annotations

from rich.console import Console

from rig.bench.latency import LatencyResult, ModeLatency, StallSummary, latency_table
from rig.cli import render
from rig.instrument import SpliceResult, load_image
from rig.instrument.manager import BatchResult
from rig.kernel.build import KernelBuild
from rig.splicer.analysis import disassemble_function
from rig.splicer.kinds import Mode, Policy
from rig.splicer.plan import plan_splice
from rig.splicer.repository import RepositoryLayout


def shown(*renderables: object) -> str:
    console = Console(width=400, record=True)
    for renderable in renderables:
        console.print(renderable)
    return " ".join(console.export_text().split())


def test_splice_and_batch_tables_show_the_staging_stop(kernel: KernelBuild) -> None:
    code = disassemble_function(load_image(kernel.vmlinux), "sys_getpid")
    plan = plan_splice(code, code.start, Mode.TRAP, Policy.SINGLE, RepositoryLayout(), 0, vector=0x81)
    result = SpliceResult(plan, stall_s=0.00512, busy_retries=0, vector=0x81, prep_stall_s=0.00231,
                          stage_stall_s=0.00744)
    text = shown(*render.splice_tables(result))
    assert "5.12 ms to check and write the point, after 7.44 ms staging" in text
    assert "and 2.31 ms reading the repository" in text and "(three host-timed stops" in text
    held = SpliceResult(plan, stall_s=0.00512, busy_retries=2, vector=0x81, prep_stall_s=0.00231,
                        stage_stall_s=0.00744, held_slots=(0,))
    text = shown(*render.splice_tables(held))
    assert "free slot(s) 0 passed over" in text and "an earlier staging stop that found a held slot" in text
    assert "three host-timed stops" not in text and text.count("2 busy retries") == 1
    batch = BatchResult([plan], [0x81], [], stall_s=0.0109, prep_stall_s=0.0051, busy_retries=0, stage_stall_s=0.2117)
    text = shown(render.batch_table(batch))
    assert "10.9 ms to check and write the points, after 211.7 ms staging" in text and "5.1 ms reading" in text


def test_latency_table_has_the_staging_stop_beside_the_others() -> None:
    def summary(ms: float) -> StallSummary:
        return StallSummary.of([ms / 1000] * 3)

    mode = ModeLatency(summary(5.0), summary(9.0), summary(3.0), summary(6.0), 0, [0.005], [0.009], [0.006])
    table = latency_table(LatencyResult("sys_getpid", 3, {"trap": mode}))
    assert table.header[1:5] == ["splice stall median ms", "splice stall max ms", "staging stop median ms",
                                 "prep stop median ms"]
    assert table.rows[0][1:5] == [5.0, 5.0, 9.0, 3.0]
