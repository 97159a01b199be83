"""Every-instruction tracing and batches on the real guest: a whole function spliced in one stop,
exact counts that agree with each other along straight-line code, annotate's view of them, and
the text equal to vmlinux again after one unsplice."""
from __future__ import annotations

import pytest

from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter, trace
from rig.instrument.manager import PointRequest
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, SpliceRefused


def test_every_instruction_requests_fit_each_instruction(kernel) -> None:  # noqa: ANN001 - fixture
    image = KernelImage.load(kernel.vmlinux)
    code = disassemble_function(image, "tcp_sendmsg")
    requests = trace.every_instruction(code)
    assert [r.address for r in requests] == [i.address for i in code.instructions if not i.is_data]
    sizes = {i.address: i.size for i in code.instructions}
    assert all(r.mode is (Mode.TRAP if sizes[r.address] >= 2 else Mode.INT3) for r in requests)
    assert {r.mode for r in trace.every_instruction(code, Mode.INT3)} == {Mode.INT3}


def test_a_whole_function_traced_in_one_stop(clean: Instrumenter, guest: QemuMachine) -> None:
    code, _ = clean.resolve_point("tcp_connect")
    done = clean.splice_many(trace.every_instruction(code), strict=False)
    assert len(done.plans) + len(done.refused) == len([i for i in code.instructions if not i.is_data])
    assert len(done.plans) > 250 and len({p.slot for p in done.plans}) == len(done.plans)
    assert clean.audit() == []
    first = guest.console.request("tcp-mss", timeout=60).fields
    _, lines = trace.annotate(clean, "tcp_connect")
    counts = {line.instruction.address: line.hits for line in lines}
    entry = counts[code.start]
    assert entry and entry >= 1
    # Straight-line entry code: every instruction up to the first branch runs as often as the entry.
    for insn in code.instructions:
        if insn.target is not None or insn.mnemonic.startswith("j") or insn.mnemonic in ("call", "ret"):
            break
        assert counts[insn.address] == entry, f"{insn.text()}: {counts[insn.address]} != {entry}"
    second = guest.console.request("tcp-mss", timeout=60).fields
    assert (first["client"], first["server"]) == (second["client"], second["server"])
    _, again = trace.annotate(clean, "tcp_connect")
    assert {l.instruction.address: l.hits for l in again}[code.start] == 2 * entry  # exact: one more handshake
    undone = clean.unsplice_all()
    assert len(undone) == len(done.plans)


def test_a_batch_is_all_or_nothing(clean: Instrumenter) -> None:
    """One refusal in a strict batch: nothing is written at all."""
    with pytest.raises(SpliceRefused) as refused:
        clean.splice_many([PointRequest("sys_getpid", Mode.TRAP), PointRequest("start_kernel", Mode.TRAP)])
    assert refused.value.reason == "init-text"
    assert clean.active()[1] == []
    done = clean.splice_many([PointRequest("sys_getpid", Mode.JMP), PointRequest("tcp_sync_mss", Mode.TRAP),
                              PointRequest("sys_getppid", Mode.TRAP, own_vector=True)])
    assert [p.slot for p in done.plans] == [0, 1, 2] and done.vectors[0] == 0 and done.vectors[2] != done.vectors[1]
    assert clean.audit() == []
