"""The write journal on real plans: a transaction cut after any of its writes is finished in one
direction, ending exactly all-old or all-new (no guest: memory is a byte map)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
from fake_guest import FakeGuest

from rig.guest.kernel_layout import task_layout
from rig.splicer import idt, journal
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, Policy
from rig.splicer.memory import MemoryWrite
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import SplicePlan, plan_splice
from rig.splicer.repository import RepositoryLayout, install_writes

LAYOUT = RepositoryLayout()


@pytest.fixture(scope="module")
def vmlinux(kernel) -> KernelImage:  # noqa: ANN001 - conftest fixture
    return KernelImage.load(kernel.vmlinux)


@pytest.fixture
def fresh(vmlinux: KernelImage, kernel) -> Callable[[], FakeGuest]:  # noqa: ANN001 - conftest fixture
    """Guest memory as the host would see it: vmlinux's sections, the repository zero."""
    tasks = task_layout(kernel)
    return lambda: FakeGuest(vmlinux, tasks)


def plans(image: KernelImage) -> list[SplicePlan]:
    gaps = padding_gaps(image)
    out = []
    for function, mode, policy in [("sys_getpid", Mode.TRAP, Policy.SINGLE), ("tcp_sync_mss", Mode.INT3, Policy.SINGLE),
                                   ("tcp_sync_mss", Mode.JMP, Policy.DISPLACE),
                                   ("sys_getpid", Mode.JMP, Policy.SINGLE)]:
        code = disassemble_function(image, function)
        out.append(plan_splice(code, code.start, mode, policy, LAYOUT, 0, vector=0x81, springboard_space=gaps))
    return out


def cut_and_repair(memory: FakeGuest, writes: list[MemoryWrite], commit: int, cut: int) -> journal.Repair:
    """Apply the first ``cut`` writes, as a dying rig would, then repair from the journal alone."""
    old = [memory.peek(w.address, len(w.data)) for w in writes]
    payload, header = journal.encode(journal.entry_for("test", writes, old, commit))
    state = journal.decode_header(header)
    assert state is not None and state.open
    entry = journal.decode_payload(state, payload)
    assert entry is not None
    for write in writes[:cut]:
        memory.poke(write.address, write.data)
    repair = journal.repair(entry, [memory.peek(w.address, len(w.data)) for w in writes])
    for write in repair.writes:
        memory.poke(write.address, write.data)
    return repair


@pytest.mark.parametrize("commit_first", [False, True], ids=["splice (point last)", "unsplice (point first)"])
def test_any_cut_ends_all_old_or_all_new(vmlinux: KernelImage, fresh: Callable[[], FakeGuest],
                                          commit_first: bool) -> None:
    for plan in plans(vmlinux):
        writes = list(plan.undo) if commit_first else list(plan.writes)
        commit = 0 if commit_first else len(writes) - 1
        for cut in range(len(writes) + 1):
            memory = fresh()
            if commit_first:  # the splice is live before its undo starts
                for write in plan.writes:
                    memory.poke(write.address, write.data)
            before = [memory.peek(w.address, len(w.data)) for w in writes]
            repair = cut_and_repair(memory, writes, commit, cut)
            after = [memory.peek(w.address, len(w.data)) for w in writes]
            landed = cut > commit
            assert repair.direction is (journal.Direction.FORWARD if landed else journal.Direction.BACK)
            if landed:
                assert after == [bytes(w.data) for w in writes], (plan.summary(), cut)
            else:
                assert after == before, (plan.summary(), cut)
            # The kernel text at the point is whole: the original or the complete branch.
            assert memory.peek(plan.point, plan.window.length) in (plan.original, plan.new_bytes)


def test_overlapping_writes_replay_in_order(fresh: Callable[[], FakeGuest]) -> None:
    """A component load writes a fresh table, then an entry inside it: forward replays both in order."""
    table = MemoryWrite(LAYOUT.base + 0x120000, bytes(64), "component-table")
    entry = MemoryWrite(LAYOUT.base + 0x120010, b"ENTRY!!!", "component-entry")
    assert journal.final_bytes([table, entry]) == [(table.address, bytes(16) + b"ENTRY!!!" + bytes(40)),
                                                   (entry.address, b"ENTRY!!!")]
    memory = fresh()
    repair = cut_and_repair(memory, [table, entry], commit=1, cut=2)
    assert repair.direction is journal.Direction.FORWARD
    assert memory.peek(table.address, 64) == bytes(16) + b"ENTRY!!!" + bytes(40)


def test_install_cut_before_the_gate_leaves_no_repository(vmlinux: KernelImage,
                                                          fresh: Callable[[], FakeGuest]) -> None:
    """The header written but not the IDT gate: rolled back, the repository is not there at all."""
    gate = idt.make_trap_gate(LAYOUT.handler).encode()
    idt_base = vmlinux.symbol("idt_table").address
    writes = install_writes(LAYOUT, 0x81, idt_base, gate, kernel_int3=vmlinux.symbol("int3").address)
    memory = fresh()
    repair = cut_and_repair(memory, writes, commit=len(writes) - 1, cut=len(writes) - 1)
    assert repair.direction is journal.Direction.BACK and "header" in repair.differing
    assert memory.peek(LAYOUT.base, 8) == bytes(8)


def test_bytes_neither_old_nor_new_are_not_touched(vmlinux: KernelImage) -> None:
    plan = plans(vmlinux)[0]
    writes = list(plan.writes)
    old = [bytes(len(w.data)) for w in writes]
    entry = journal.entry_for("test", writes, old, len(writes) - 1)
    current = [*old[:-1], b"\x90" * len(writes[-1].data)]  # someone else wrote the point
    repair = journal.repair(entry, current)
    assert repair.direction is journal.Direction.LOST and repair.writes == () and "point" in repair.differing
    assert "not repaired" in repair.summary()


def test_torn_journal_reads_as_nothing_to_repair(vmlinux: KernelImage) -> None:
    plan = plans(vmlinux)[0]
    writes = list(plan.writes)
    payload, header = journal.encode(journal.entry_for("x", writes, [bytes(len(w.data)) for w in writes], 0))
    state = journal.decode_header(header)
    assert state is not None
    assert journal.decode_payload(state, payload[:-1] + b"\0") is None   # payload of another transaction
    assert journal.decode_header(bytes(journal.HEADER_SIZE)) is None        # never written
    idle = journal.decode_header(journal.idle_header())
    assert idle is not None and not idle.open
