"""Table 1 on real booted guests: the result's structure and the invariants that must hold (no timings).

Two fresh guests under TCG ``-icount`` (the TSC counts guest instructions) must give identical
figures; every spliced path costs at least its unspliced baseline; floors lie below the splices
they bound; and everything the bench wrote into the guest is undone.
"""
from __future__ import annotations

import shutil

import capstone
import pytest

from conftest import private_run_dir
from rig import instrument
from rig.bench import floors, table1
from rig.bench.stats import STATS
from rig.guest import lifecycle
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.kernel.build import KernelBuild
from rig.splicer import idt
from rig.splicer.repository import RepositoryLayout

N = 2000
RUNS = 2
SHIFT = 3


Measured = tuple[table1.Table1Result, dict[str, bytes]]


def _measure_fresh_boot(prepared: lifecycle.PreparedGuest) -> Measured:
    """Table 1 in a guest of its own; also the guest bytes the bench must leave as it found them."""
    run_dir = private_run_dir()
    try:
        with QemuMachine(prepared.config(run_dir)) as machine:
            machine.launch()
            with instrument.connect(machine.config.gdb_socket, prepared.kernel) as instr:
                result = table1.measure(machine, instr, N, RUNS)
                image = instr.image
                getpid = image.function(table1.FUNCTION)
                idt_base = image.symbol("idt_table").address
                with instr.gdb.stopped():
                    after = {
                        "text": instr.gdb.read_memory(getpid.address, getpid.size),
                        "gate": instr.gdb.read_memory(idt_base + result.floors.vector * 8, 8),
                        "scratch": instr.gdb.read_memory(RepositoryLayout().bench_scratch, floors.ARRAYS_OFFSET),
                    }
                _, active = instr.active()
                after["active"] = bytes(len(active))
            machine.console.request("ping", timeout=10)  # the guest still answers
        return result, after
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def icount_prepared(kernel: KernelBuild) -> lifecycle.PreparedGuest:
    return lifecycle.prepare(accel="tcg", icount_shift=SHIFT)


@pytest.fixture(scope="module")
def icount_twice(icount_prepared: lifecycle.PreparedGuest) -> list[Measured]:
    return [_measure_fresh_boot(icount_prepared) for _ in range(2)]


def _rows(result: table1.Table1Result) -> dict[str, table1.Row]:
    return {row.key: row for row in result.rows}


def _splice(row: table1.Row) -> table1.SpliceFacts:
    assert row.splice is not None, row.key
    return row.splice


def test_result_structure(icount_twice: list[Measured]) -> None:
    result, _ = icount_twice[0]
    rows = _rows(result)
    expected = {"baseline", "jmp", "jmp-sb1", "jmp-sb2", "jmp-sb3", "trap", "trap-own", "int3",
                *(f"floor-{f}" for f in floors.FLOORS)}
    assert set(rows) == expected
    for row in result.rows:
        assert len(row.runs) == RUNS and all(run["n"] == N for run in row.runs)
        assert set(STATS) <= set(row.stats)
        assert row.stats["min"] <= row.stats["median"] <= row.stats["max"]
    assert _splice(rows["jmp"]).hops == 1 and _splice(rows["trap"]).mode == "trap"
    assert _splice(rows["int3"]).mode == "int3"
    for k in (1, 2, 3):
        assert _splice(rows[f"jmp-sb{k}"]).hops == k + 1 and len(_splice(rows[f"jmp-sb{k}"]).springboards) == k
    assert rows["jmp"].relative is not None and rows["jmp"].relative["median"] == 1.0
    # bench.json keeps the rows' facts flat, as before the results were typed
    as_json = {row["key"]: row for row in result.to_json()["rows"]}
    assert as_json["jmp"]["hops"] == 1 and as_json["trap"]["mode"] == "trap" and "hops" not in as_json["baseline"]
    assert result.to_json()["paper"]["jmp_cycles"] == 84.0012
    ratios = result.to_json()["summary"]["min"]
    assert set(ratios) == {"trap_to_jmp", "trap_own_to_jmp", "trap_to_int_floor", "trap_own_to_int_floor",
                           "jmp_to_jmp_far_floor"} and None not in ratios.values()


def test_icount_boots_are_identical(icount_twice: list[Measured]) -> None:
    """Established experimentally: at shift 3 every per-run statistic (min, median, mean, p95, max)
    of every row repeats exactly in a second boot (no timer interrupt lands in a timed call)."""
    (first, _), (second, _) = icount_twice
    for a, b in zip(first.rows, second.rows):
        assert a.key == b.key
        assert [{s: r[s] for s in STATS} for r in a.runs] == [{s: r[s] for s in STATS} for r in b.runs], a.key
    assert all(first.identical_across_runs.values())


def test_every_spliced_path_costs_at_least_the_baseline(icount_twice: list[Measured]) -> None:
    result, _ = icount_twice[0]
    rows = _rows(result)
    base = rows["baseline"].stats["min"]
    for key in ("jmp", "jmp-sb1", "jmp-sb2", "jmp-sb3", "trap"):
        assert rows[key].stats["min"] > base, key
    # each extra springboard executes one more jmp: strictly more instructions
    chain = [rows[k].stats["min"] for k in ("jmp", "jmp-sb1", "jmp-sb2", "jmp-sb3")]
    assert chain == sorted(set(chain))


def test_floors_lie_below_their_splices(icount_twice: list[Measured]) -> None:
    result, _ = icount_twice[0]
    overhead = {key: row.overhead["min"] for key, row in _rows(result).items() if row.overhead is not None}
    assert 0 < overhead["floor-int"] < overhead["trap"]
    assert 0 < overhead["floor-jmp-far"] <= overhead["jmp"]
    assert 0 < overhead["floor-jmp"] <= overhead["floor-jmp-far"]


def test_bench_leaves_the_guest_as_it_found_it(icount_twice: list[Measured],
                                               kernel: KernelBuild) -> None:
    image = instrument.load_image(kernel.vmlinux)
    getpid = image.function(table1.FUNCTION)
    for result, after in icount_twice:
        assert after["text"] == image.text_bytes(getpid.address, getpid.size)
        gate = idt.decode_gate(after["gate"])
        assert gate.offset == image.symbol("ignore_int").address  # floor vector back to the kernel's default
        assert after["scratch"] == bytes(floors.ARRAYS_OFFSET)
        assert after["active"] == b""


def test_sampler_code_keeps_gates_kernel_only() -> None:
    """The floor gate is DPL 0 and the sampler does what the module says, decoded with capstone."""
    layout = floors.SamplerLayout.of(RepositoryLayout(), N)
    iret, part1, part2, far = floors.sampler_code(layout, 0x82)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    first = [i.mnemonic for i in md.disasm(part1, layout.entry)]
    second = [(i.mnemonic, i.op_str) for i in md.disasm(part2, layout.part2)]
    assert first[0] == "cli" and first[-1] == "ret" and first.count("rdtsc") == 5
    assert ("int", "0x82") in second and second[-1][0] == "ret"
    assert [i.mnemonic for i in md.disasm(iret, layout.iret_stub)] == ["iretd"]
    jump = next(md.disasm(far, layout.far_stub))
    assert jump.mnemonic == "jmp" and int(jump.op_str, 16) == layout.part2
    assert layout.far_stub >> 12 != layout.entry >> 12  # the far jmp really leaves the page
    assert idt.make_trap_gate(layout.iret_stub).dpl == 0


def test_default_tcg_clock_structure(guest: QemuMachine, instrumenter: Instrumenter) -> None:
    """Host-time TSC: only structure and correctness (no timing assertions)."""
    result = table1.measure(guest, instrumenter, N, 1, chains=(1,))
    _, active = instrumenter.active()
    assert not active
    rows = _rows(result)
    assert {"baseline", "jmp", "jmp-sb1", "trap", "floor-int"} <= set(rows)
    assert all(row.runs[0]["n"] == N for row in result.rows if row.kind == table1.PATH)
    assert set(result.summary) == {"min", "median"}
