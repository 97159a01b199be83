"""Execute the rig's generated code on the real vmlinux in a CPU emulator (Unicorn), no guest.

Each check starts at a splice point with a realistic kernel register/stack state and runs the
spliced machine (point -> branch -> handler/stub -> patch -> back) until EIP leaves the window,
the repository and the springboards; a pristine machine runs the original instructions from
the same state until EIP leaves the window. Both must end at the same EIP with the same
registers, EFLAGS (arithmetic flags, IF, DF), stack and stores, make the same calls out, and
the patch's hit counter must count every entry of the point. A fault counts as equal behaviour
only when both runs fault on the same access with the same registers.

The state machine splices and unsplices in random order with every mode and dispatch, doing
the I/O exactly as rig/instrument/manager.py does (slots lowest-free-first, live records read back from
the repository, vector-3 re-pointing for int3, gates given back on undo), and after every step
executes every live splice, checks the kernel text and IDT, and that int3s that are not the
rig's (kernel or user mode) still reach the kernel's own ``int3`` entry.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from emulator import (CODE_PAGE, DATA, FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF,
                      KERNEL_CS, RETURN_PAGE, STACK_TOP, USER_CS, USER_DS, CpuState, Machine, Outcome,
                      WriteMismatch, kernel_idt)
from hypothesis import HealthCheck, Phase, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from unicorn import UC_ERR_INSN_INVALID

from rig.splicer import dispatch as dispatch_table
from rig.splicer import idt
from rig.splicer.analysis import FunctionCode, Instruction, disassemble_function
from rig.splicer.image import ByteRange, KernelImage, PaddingGap
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.memory import MemoryWrite
from rig.splicer.padding import padding_gaps
from rig.splicer.modes import OwnVector
from rig.splicer.plan import SplicePlan, plan_splice, undo_writes
from rig.splicer.repository import (HANDLER_MAX, SLOT_RECORD_SIZE, RepositoryLayout, SlotRecord, decode_slot,
                                    install_writes)

LAYOUT = RepositoryLayout()
REPOSITORY = ByteRange(LAYOUT.base, LAYOUT.size)
FUNCTIONS = ("sys_getpid", "tcp_sync_mss", "do_fork", "schedule", "tcp_sendmsg", "kmem_cache_alloc")
DRAWN_FROM = ("do_fork", "schedule", "tcp_sendmsg", "kmem_cache_alloc")
NO_EXPLAIN = tuple(p for p in Phase if p is not Phase.explain)  # explaining a failure costs seconds per step
ARITHMETIC_FLAGS = (FLAG_CF, FLAG_PF, FLAG_AF, FLAG_ZF, FLAG_SF, FLAG_OF)


@dataclass(frozen=True)
class Dispatch:
    """How a splice branches to its patch."""

    name: str
    mode: Mode
    own_vector: bool = False


TRAP = Dispatch("trap", Mode.TRAP)
TRAP_OWN = Dispatch("trap-own-vector", Mode.TRAP, own_vector=True)
INT3 = Dispatch("int3", Mode.INT3)
JMP = Dispatch("jmp", Mode.JMP)
DISPATCHES = (TRAP, TRAP_OWN, INT3, JMP)

# A kernel-mode state: registers point into zeroed direct-map memory (reads through them work),
# ecx is small (a `rep` count stays short), IF set, some arithmetic flags set; the stack holds a
# return address out of every zone, pointers and small numbers (locals and arguments). No word
# has TF (bit 8): a `popfd` in a window restores what a `pushfd` saved, and no kernel path
# single-steps itself (with TF the debug trap would come one instruction earlier in a patch).
def pointer(k: int) -> int:
    return DATA + 0x200 * k


STATE = CpuState(eax=pointer(1), ecx=3, edx=pointer(2), ebx=pointer(3), ebp=pointer(4),
                 esi=pointer(5), edi=pointer(6), eflags=0x202 | FLAG_CF | FLAG_ZF,
                 stack=(RETURN_PAGE, pointer(7), 5, pointer(8), 0x14, RETURN_PAGE + 0x40,
                        pointer(9), 0, 1, pointer(10), 0x218, pointer(11)))


# ---- the kernel, decoded once ------------------------------------------------------------------
class World:
    """The real vmlinux, its decoded functions and padding, and a pristine machine for reference runs."""

    def __init__(self, image: KernelImage) -> None:
        self.image = image
        self.codes = {name: disassemble_function(image, name) for name in FUNCTIONS}
        self.gaps: list[PaddingGap] = padding_gaps(image)
        self.pristine = Machine(image, LAYOUT)
        self.text = image.section(".text")
        self.idt = kernel_idt(image)
        self._references: dict[tuple[int, int, CpuState], Outcome] = {}

    def symbol(self, name: str) -> int:
        return self.image.symbol(name).address

    def reference(self, window: ByteRange, state: CpuState) -> Outcome:
        """The original instructions from the window start until EIP first leaves the window."""
        key = (window.start, window.end, state)
        if key not in self._references:
            self._references[key] = self.pristine.run(window.start, state, [window], count_at=window.start)
        return self._references[key]


@pytest.fixture(scope="module")
def world(kernel) -> World:  # noqa: ANN001 - conftest fixture
    return World(KernelImage.load(kernel.vmlinux))


# ---- the rig's I/O side, against an emulated machine ------------------------------------------
@dataclass(frozen=True)
class Live:
    plan: SplicePlan
    own: OwnVector | None


class EmulatedRig:
    """What rig/instrument/manager.py's Instrumenter does to the guest, done to a Machine."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.machine = Machine(world.image, LAYOUT)
        self.idt_base = world.symbol("idt_table")
        self.free_gate = idt.make_trap_gate(world.symbol("ignore_int")).encode()
        self.vector = idt.find_free_vector(self.machine.idt_bytes(), world.symbol("ignore_int"))
        self.machine.apply(install_writes(LAYOUT, self.vector, self.idt_base,
                                          idt.make_trap_gate(LAYOUT.handler).encode(),
                                          kernel_int3=world.symbol("int3")))
        self.live: dict[int, Live] = {}

    def records(self) -> dict[int, SlotRecord]:
        """The live slot records as the rig's prep stop reads them: in-use flags, then records."""
        flags = self.machine.read(LAYOUT.in_use_flag(0), LAYOUT.slots)
        records = {slot: decode_slot(self.machine.read(LAYOUT.slot_record(slot), SLOT_RECORD_SIZE))
                   for slot, flag in enumerate(flags) if flag}
        return {slot: record for slot, record in records.items() if record.in_use}

    def splice(self, code: FunctionCode, point: int, dispatch: Dispatch, policy: Policy) -> SplicePlan:
        """Raises SpliceRefused (the planner's) or WriteMismatch (the splice stop's expect check)."""
        records = self.records()
        slot = LAYOUT.free_slot(records)
        own = self._free_own_vector() if dispatch.own_vector else None
        plan = plan_splice(code, point, dispatch.mode, policy, LAYOUT, slot, vector=self.vector,
                           springboard_space=self.world.gaps, active=list(records.values()), own_vector=own)
        gate = self._int3_gate_writes(to_rig=True) if dispatch.mode is Mode.INT3 else []
        self.machine.apply([*plan.writes[:-1], *gate, plan.writes[-1]])  # the point last
        self.live[slot] = Live(plan, own)
        return plan

    def unsplice(self, slot: int) -> None:
        record = self.records()[slot]
        own = OwnVector(record.vector, self.idt_base, self.free_gate) if record.vector else None
        writes = undo_writes(LAYOUT, slot, record, own_vector=own)
        last_int3 = record.mode == Mode.INT3 and not any(
            r.mode == Mode.INT3 for s, r in self.records().items() if s != slot)
        gate = self._int3_gate_writes(to_rig=False) if last_int3 else []
        assert writes[0].role == "point"
        self.machine.apply([*writes, *gate])
        del self.live[slot]

    def _free_own_vector(self) -> OwnVector:
        """Instrumenter._free_own_vector: the lowest vector whose gate is still the ignore_int gate."""
        table = self.machine.idt_bytes()
        for vector in range(idt.FIRST_FREE_CANDIDATE, 256):
            gate = table[vector * idt.GATE_SIZE:(vector + 1) * idt.GATE_SIZE]
            if vector not in (idt.SYSCALL_VECTOR, self.vector) and gate == self.free_gate:
                return OwnVector(vector, self.idt_base, self.free_gate)
        raise AssertionError("no free vector")

    def _int3_gate_writes(self, to_rig: bool) -> list[MemoryWrite]:
        """Instrumenter._int3_gate_writes: only vector 3's offset moves (type and DPL 3 stay)."""
        address = self.idt_base + 3 * idt.GATE_SIZE
        now = self.machine.read(address, idt.GATE_SIZE)
        gate = idt.decode_gate(now)
        kernel, rig = self.world.symbol("int3"), LAYOUT.int3_handler
        want, other = (rig, kernel) if to_rig else (kernel, rig)
        if gate.offset == want:
            return []
        assert gate.offset == other, f"vector 3 points at {gate.offset:#x}"
        return [MemoryWrite(address, dataclasses.replace(gate, offset=want).encode(), "int3-gate", expect=now)]


# ---- executing a splice --------------------------------------------------------------------------
def zone_of(plan: SplicePlan) -> list[ByteRange]:
    """Where the spliced path may run: the window, the repository, the springboards."""
    return [plan.window, REPOSITORY, *(ByteRange(b.address, len(b.data)) for b in plan.springboards)]


def counter(machine: Machine, plan: SplicePlan) -> int:
    assert plan.counter_address is not None
    return int.from_bytes(machine.read(plan.counter_address, 4), "little")


def check_dispatch(world: World, machine: Machine, plan: SplicePlan, state: CpuState = STATE) -> None:
    """Run the spliced point and the original window from ``state``: same effect, one hit per entry."""
    original = world.reference(plan.window, state)
    before = counter(machine, plan)
    spliced = machine.run(plan.point, state, zone_of(plan), count_at=plan.patch_address)
    hits = counter(machine, plan) - before
    what = f"{plan.summary()}\n  original: {original.describe()}\n  spliced:  {spliced.describe()}"
    # First, as one assertion whatever follows (so hypothesis shrinks one failure): its own patch.
    assert spliced.entries == original.entries, (
        f"the point dispatched {spliced.entries}x to its patch, the original entered it {original.entries}x"
        f"{f'; chained to the kernel({_entry(world, spliced.eip)})' if spliced.stop == 'kernel' else ''}\n{what}")
    assert spliced.stop != "kernel", f"the rig's code chained to the kernel's {_entry(world, spliced.eip)}\n{what}"
    assert original.stop in ("exit", "fault"), f"the original window did not finish\n{what}"
    assert spliced.stop == original.stop, what
    if original.stop == "fault":  # the same access faults, after the same work
        assert spliced.fault == original.fault, what
        assert spliced.registers == original.registers, what  # EIP aside: the copy runs in the patch
    else:
        assert spliced.eip == original.eip, what
        assert spliced.registers == original.registers, what
    assert defined_stack(spliced.stack, spliced.registers["esp"], state.esp, original.stack_writes) == \
        defined_stack(original.stack, original.registers["esp"], state.esp, original.stack_writes), \
        f"stack differs\n{what}"
    assert spliced.stores == original.stores, f"stores differ\n{what}"
    assert [c.target for c in spliced.callouts] == [c.target for c in original.callouts], f"calls differ\n{what}"
    for ours, theirs in zip(spliced.callouts, original.callouts):
        assert ours.registers == theirs.registers, f"registers differ at the call to {theirs.target:#x}\n{what}"
        esp = theirs.registers["esp"] + 4
        assert defined_stack(ours.stack, esp, state.esp, theirs.stack_writes) == \
            defined_stack(theirs.stack, esp, state.esp, theirs.stack_writes), \
            f"stack differs at the call to {theirs.target:#x}\n{what}"
    assert hits == original.entries, f"hit counter went up by {hits}, the point was entered {original.entries}x\n{what}"


def defined_stack(stack: bytes, esp: int, entry_esp: int, written: frozenset[int]) -> list[int | None]:
    """The stack from ``esp`` up; bytes below the entry ESP that the original code did not write are
    undefined (None): below ESP anything may be written at any time (interrupts, the trap frame)."""
    return [byte if esp + i >= entry_esp or esp + i in written else None for i, byte in enumerate(stack)]


def _entry(world: World, eip: int) -> str:
    return "ignore_int" if eip == world.symbol("ignore_int") else "int3 entry" if eip == world.symbol("int3") \
        else f"code at {eip:#x}"


def check_foreign_kernel_int3(world: World, machine: Machine) -> None:
    """An int3 that is not the rig's, in kernel code, reaches the kernel's int3 entry untouched."""
    machine.write(CODE_PAGE, b"\xcc")
    out = machine.run(CODE_PAGE, STATE, [ByteRange(CODE_PAGE, 1), REPOSITORY])
    assert out.stop == "kernel" and out.eip == world.symbol("int3"), out.describe()
    assert out.deliveries == [(3, CODE_PAGE + 1)]
    frame = CODE_PAGE + 1, KERNEL_CS, STATE.eflags
    assert out.stack[:12] == b"".join(v.to_bytes(4, "little") for v in frame), "the trap frame was changed"
    expected = {name: getattr(STATE, name) for name in out.registers if name != "eflags"}
    expected["esp"] -= 12
    assert {k: v for k, v in out.registers.items() if k != "eflags"} == expected, out.describe()
    assert out.registers["eflags"] & 0x200, "vector 3 is a trap gate: IF stays set"


def check_user_int3(world: World, machine: Machine) -> None:
    """A user-mode int3 (saved CS 0x23) goes from whatever vector 3 points at to the kernel's entry."""
    frame = (0x08048123, USER_CS, 0x246, 0xBFFFF000, USER_DS)  # EIP, CS, EFLAGS, ESP, SS of user mode
    state = dataclasses.replace(STATE, esp=STACK_TOP - 4 * len(frame), stack=frame, eflags=0x046)
    out = machine.run(machine.gate(3).offset, state, [REPOSITORY])
    assert out.stop == "kernel" and out.eip == world.symbol("int3"), out.describe()
    assert out.stack == b"".join(v.to_bytes(4, "little") for v in frame), "the user frame was changed"
    assert {k: v for k, v in out.registers.items() if k != "eflags"} == \
        {name: getattr(state, name) for name in out.registers if name != "eflags"}, out.describe()


def _note(text: str) -> None:
    """A hypothesis event inside a hypothesis test; nothing in a plain test."""
    if currently_in_test_context():
        event(text)


def plan_and_apply(rig: EmulatedRig, function: str, point: int, dispatch: Dispatch,
                   policy: Policy) -> SplicePlan | None:
    try:
        return rig.splice(rig.world.codes[function], point, dispatch, policy)
    except SpliceRefused as refused:
        _note(f"refused: {dispatch.name}/{policy.name.lower()} {refused.reason}")
    except WriteMismatch:
        _note(f"refused at the splice stop: {dispatch.name} window covers another splice")
    return None


# ---- a. one splice at a time -----------------------------------------------------------------------
@pytest.mark.parametrize("dispatch", DISPATCHES, ids=lambda d: d.name)
@pytest.mark.parametrize("function", ["sys_getpid", "tcp_sync_mss"])
def test_entry_splice_dispatches_and_returns(world: World, function: str, dispatch: Dispatch) -> None:
    """At sys_getpid (a 5-byte mov) and tcp_sync_mss (a 1-byte push): every policy that plans, runs."""
    planned = 0
    for policy in Policy:
        rig = EmulatedRig(world)
        plan = plan_and_apply(rig, function, world.symbol(function), dispatch, policy)
        if plan is None:
            continue
        planned += 1
        check_dispatch(world, rig.machine, plan)
        check_dispatch(world, rig.machine, plan)  # and again: the counter counts every hit
        check_undo(world, rig, plan)
    assert planned, f"no policy plans a {dispatch.name} splice at {function}"


def test_tcp_sync_mss_push_takes_int3_single(world: World) -> None:
    """The 1-byte push only fits int3 under the single-instruction policy (the paper's case)."""
    rig = EmulatedRig(world)
    point = world.symbol("tcp_sync_mss")
    plan = rig.splice(world.codes["tcp_sync_mss"], point, INT3, Policy.SINGLE)
    assert plan.window.length == 1 and plan.new_bytes == b"\xcc"
    assert rig.machine.gate(3).offset == LAYOUT.int3_handler
    check_dispatch(world, rig.machine, plan)
    check_foreign_kernel_int3(world, rig.machine)
    check_user_int3(world, rig.machine)


def check_undo(world: World, rig: EmulatedRig, plan: SplicePlan) -> None:
    rig.unsplice(plan.slot)
    assert rig.machine.read(world.text.address, world.text.size) == world.text.data, "text differs from vmlinux"
    assert rig.machine.idt_bytes() == expected_idt(world, rig), "IDT not given back"


def expected_idt(world: World, rig: EmulatedRig) -> bytes:
    gates = bytearray(world.idt)

    def put(vector: int, gate: idt.Gate) -> None:
        gates[vector * idt.GATE_SIZE:(vector + 1) * idt.GATE_SIZE] = gate.encode()

    put(rig.vector, idt.make_trap_gate(LAYOUT.handler))
    if any(live.plan.mode is Mode.INT3 for live in rig.live.values()):
        put(3, dataclasses.replace(idt.decode_gate(world.idt[24:32]), offset=LAYOUT.int3_handler))
    for slot, live in rig.live.items():
        if live.own is not None:
            put(live.own.vector, idt.make_trap_gate(LAYOUT.vector_stub(slot)))
    return bytes(gates)


def _boundaries(code: FunctionCode) -> list[Instruction]:
    return [i for i in code.instructions if not i.is_data]


def _states() -> st.SearchStrategy[CpuState]:
    pointers = st.integers(0, 0x3F).map(pointer)
    small = st.sampled_from([0, 1, 2, 3, 0x14, 0x218, 0xFFFFFEFF, 0x80000000])  # no TF bit (see STATE)
    word = st.one_of(pointers, small)
    flags = st.lists(st.sampled_from(ARITHMETIC_FLAGS), unique=True).map(sum)
    return st.builds(CpuState, eax=word, ecx=st.integers(0, 4), edx=word, ebx=word, ebp=word, esi=word,
                     edi=word, eflags=flags.map(lambda f: 0x202 | f),
                     stack=st.lists(st.one_of(word, st.just(RETURN_PAGE)), min_size=12, max_size=12)
                     .map(lambda words: (RETURN_PAGE, *words)))


@settings(max_examples=150, deadline=None, phases=NO_EXPLAIN, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_drawn_points_dispatch_and_return(world: World, data: st.DataObject) -> None:
    """Any instruction boundary of a few big functions, any dispatch and policy, a drawn state."""
    function = data.draw(st.sampled_from(DRAWN_FROM), label="function")
    insn = data.draw(st.sampled_from(_boundaries(world.codes[function])), label="instruction")
    dispatch = data.draw(st.sampled_from(DISPATCHES), label="dispatch")
    policy = data.draw(st.sampled_from(Policy), label="policy")
    state = data.draw(_states(), label="state")
    rig = EmulatedRig(world)
    plan = plan_and_apply(rig, function, insn.address, dispatch, policy)
    if plan is None:
        return
    event(f"planned: {dispatch.name}")
    check_dispatch(world, rig.machine, plan, state)
    check_undo(world, rig, plan)


# ---- b. random splice/unsplice sequences --------------------------------------------------------------
def _first(code: FunctionCode, pred: Callable[[Instruction], bool]) -> Instruction | None:
    return next((i for i in _boundaries(code)[1:] if pred(i) and i.address not in code.exception_sites
                 and i.mnemonic != "ud2"), None)


@functools.lru_cache(maxsize=1)
def sequence_points(world: World) -> tuple[tuple[str, int], ...]:
    """~20 real boundaries: each function's entry and its first 1-byte, 2..4-byte, >=5-byte and call
    instructions, so int3 (1 byte), trap (2), springboard jmps and rel32 jmps all find points."""
    points: list[tuple[str, int]] = [("sys_getpid", world.symbol("sys_getpid"))]
    kinds = (lambda i: i.size == 1, lambda i: 2 <= i.size <= 4, lambda i: i.size >= 5 and i.mnemonic != "call",
             lambda i: i.mnemonic == "call")
    for function in ("tcp_sync_mss", *DRAWN_FROM):
        code = world.codes[function]
        chosen = [code.start, *(i.address for kind in kinds if (i := _first(code, kind)) is not None)]
        points += [(function, address) for address in dict.fromkeys(chosen)]
    return tuple(points)


def run_sequences(world: World, max_examples: int, steps: int) -> Counter[str]:
    """Run the state machine; returns what it did (so a caller can see it tested something)."""
    points = sequence_points(world)
    seen: Counter[str] = Counter()

    class SpliceSequence(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.rig = EmulatedRig(world)

        @rule(point=st.sampled_from(points), dispatch=st.sampled_from(DISPATCHES), policy=st.sampled_from(Policy))
        def splice(self, point: tuple[str, int], dispatch: Dispatch, policy: Policy) -> None:
            function, address = point
            plan = plan_and_apply(self.rig, function, address, dispatch, policy)
            if plan is None:
                return
            seen[dispatch.name] += 1
            seen[f"live:{len(self.rig.live)}"] += 1
            lower = [live for slot, live in self.rig.live.items() if slot < plan.slot]
            if plan.trap_return is not None and any(live.plan.trap_return is None for live in lower):
                seen["table splice above a jmp/own-vector slot"] += 1

        @precondition(lambda self: self.rig.live)
        @rule(pick=st.integers(0, 31))
        def unsplice(self, pick: int) -> None:
            slots = sorted(self.rig.live)
            self.rig.unsplice(slots[pick % len(slots)])
            seen["unsplice"] += 1

        @invariant()
        def live_splices_dispatch_and_return(self) -> None:
            for live in self.rig.live.values():
                check_dispatch(world, self.rig.machine, live.plan)

        @invariant()
        def records_are_the_live_splices(self) -> None:
            records = self.rig.records()
            assert sorted(records) == sorted(self.rig.live)
            for slot, record in records.items():
                plan = self.rig.live[slot].plan
                assert (record.point, record.original, record.patch_address) == \
                    (plan.point, plan.original, plan.patch_address)

        @invariant()
        def text_is_vmlinux_outside_live_splices(self) -> None:
            text = bytearray(world.text.data)
            for live in self.rig.live.values():
                plan = live.plan
                _put(text, world.text.address, plan.point, plan.new_bytes)
                for board in plan.springboards:
                    _put(text, world.text.address, board.address, board.data)
            assert self.rig.machine.read(world.text.address, world.text.size) == bytes(text)

        @invariant()
        def idt_is_the_kernels_plus_live_gates(self) -> None:
            assert self.rig.machine.idt_bytes() == expected_idt(world, self.rig)

        @invariant()
        def foreign_int3s_reach_the_kernel(self) -> None:
            check_foreign_kernel_int3(world, self.rig.machine)
            check_user_int3(world, self.rig.machine)

    run_state_machine_as_test(SpliceSequence, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None, phases=NO_EXPLAIN,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    return seen


def _put(text: bytearray, base: int, address: int, data: bytes) -> None:
    text[address - base:address - base + len(data)] = data


def test_random_splice_sequences(world: World) -> None:
    """Every live splice dispatches to its own patch, whatever else is spliced in whichever slot."""
    seen = run_sequences(world, max_examples=100, steps=15)
    assert all(seen[d.name] >= 5 for d in DISPATCHES), seen
    assert seen["unsplice"] >= 10 and seen["table splice above a jmp/own-vector slot"] >= 3, seen
    assert any(seen[f"live:{n}"] for n in range(4, 16)), f"never 4 splices live at once: {seen}"


def test_sequence_points_cover_every_mode(world: World) -> None:
    """The fixed points give each dispatch something to splice (else the state machine tests little)."""
    planned: dict[str, int] = {}
    for function, address in sequence_points(world):
        for dispatch in DISPATCHES:
            for policy in Policy:
                rig = EmulatedRig(world)
                if plan_and_apply(rig, function, address, dispatch, policy) is not None:
                    planned[dispatch.name] = planned.get(dispatch.name, 0) + 1
    assert len(sequence_points(world)) >= 15
    assert all(planned.get(d.name, 0) >= 5 for d in DISPATCHES), planned


@pytest.mark.parametrize(("lower", "upper", "upper_policy"), [(JMP, TRAP, Policy.DISPLACE),
                                                            (TRAP_OWN, INT3, Policy.SINGLE)],
                         ids=["jmp-then-trap", "own-vector-then-int3"])
def test_table_splice_above_a_slot_without_table_dispatch(world: World, lower: Dispatch, upper: Dispatch,
                                                           upper_policy: Policy) -> None:
    """The shortest cases of a table-dispatched splice in a slot above one that dispatches without the
    table (its entry must not end the handlers' scan)."""
    rig = EmulatedRig(world)
    first = rig.splice(world.codes["sys_getpid"], world.symbol("sys_getpid"), lower, Policy.SINGLE)
    second = rig.splice(world.codes["tcp_sync_mss"], world.symbol("tcp_sync_mss"), upper, upper_policy)
    assert (first.slot, second.slot) == (0, 1)
    check_dispatch(world, rig.machine, first)
    check_dispatch(world, rig.machine, second)


def test_many_live_splices_every_one_dispatches(world: World) -> None:
    """Hundreds of splices live at once, modes mixed (own vectors while free ones last), shared-vector
    traps among the last: every splice reaches its own patch through the hashed dispatch table,
    collisions and all; all undone, vmlinux again."""
    rig = EmulatedRig(world)
    candidates = iter([(f, i.address) for f in ("tcp_sendmsg", "do_fork", "schedule", "kmem_cache_alloc")
                       for i in _boundaries(world.codes[f])])
    cycle = (JMP, INT3, TRAP, TRAP)
    wanted = 600
    for slot in range(wanted):
        dispatch = TRAP_OWN if slot < 24 and slot % 4 == 1 else cycle[slot % len(cycle)]
        plan = next((p for f, a in candidates if (p := plan_and_apply(rig, f, a, dispatch, Policy.SINGLE))), None)
        if plan is None:
            break
        assert plan.slot == slot
    assert len(rig.live) >= 400, f"only {len(rig.live)} points of the four functions took a splice"
    shared = [record for record in rig.records().values() if record.bucket != dispatch_table.NO_BUCKET]
    probed = [r for r in shared if r.bucket != dispatch_table.home(r.point + r.branch_length)]
    assert len(shared) > 200 and probed, "some keys must have collided and been placed further along"
    for live in rig.live.values():
        check_dispatch(world, rig.machine, live.plan)
    check_foreign_kernel_int3(world, rig.machine)
    for slot in sorted(rig.live, key=lambda s: (s * 37) % LAYOUT.slots):  # an order unlike the splices'
        rig.unsplice(slot)
    assert rig.machine.read(world.text.address, world.text.size) == world.text.data
    assert rig.machine.idt_bytes() == expected_idt(world, rig)


def test_shared_handler_miss_oopses_in_the_handler(world: World) -> None:
    """An `int $n` on the shared vector whose EIP no entry names (a broken record) must stop loudly in
    the handler, registers restored, not resume at the window's end and skip the displaced code."""
    rig = EmulatedRig(world)
    scratch = 0xC0800000  # zero-filled direct-mapped memory: no splice anywhere near it
    rig.machine.write(scratch, bytes([0xCD, rig.vector]))
    state = CpuState(eax=0x1111, ecx=0x2222, esi=0x3333)
    out = rig.machine.run(scratch, state, [ByteRange(scratch, 2), ByteRange(LAYOUT.handler, HANDLER_MAX)])
    # #UD (Unicorn reports it as an invalid instruction) at the handler's ud2
    assert out.stop == "fault" and out.fault in (("vector", 6), ("error", UC_ERR_INSN_INVALID)), out.describe()
    assert LAYOUT.handler <= out.eip < LAYOUT.handler + HANDLER_MAX
    assert rig.machine.read(out.eip, 2) == b"\x0f\x0b"
    assert (out.registers["eax"], out.registers["ecx"], out.registers["esi"]) == (0x1111, 0x2222, 0x3333)


def test_a_miss_ends_even_when_no_bucket_is_empty(world: World) -> None:
    """Released buckets are never emptied: after enough churn a table may hold no EMPTY bucket. A
    lookup miss must still end (the handlers count their probes) at the ud2, not loop forever."""
    rig = EmulatedRig(world)
    rig.machine.write(LAYOUT.table, dispatch_table.encode_entry(dispatch_table.FREE, 0) * dispatch_table.BUCKETS)
    scratch = 0xC0800000
    rig.machine.write(scratch, bytes([0xCD, rig.vector]))
    zone = [ByteRange(scratch, 2), ByteRange(LAYOUT.handler, HANDLER_MAX)]
    out = rig.machine.run(scratch, CpuState(eax=0x1111), zone,
                          budget=200_000)
    assert out.stop == "fault" and rig.machine.read(out.eip, 2) == b"\x0f\x0b", out.describe()
    assert out.registers["eax"] == 0x1111
