"""rig.instrument on an in-memory guest (tests/fake_guest.py): splice and unsplice in every mode,
the busy rule, the journal repairing a change cut after any write, components; no QEMU, no gdb.

The fake answers the rig's real gdb/MI batches from a byte map seeded with the real vmlinux, so
what runs here is the instrumenter, the transaction and the component manager as they run on
the guest, minus the CPU.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from emulator import kernel_idt
from fake_guest import FakeGuest

import rig.instrument.manager as manager_module
from rig.errors import RigError
from rig.gdb.batch import READ_GAP
from rig.gdb.memory import GuestMemory
from rig.gdb.mi import GdbCommandError, GdbDied
from rig.gdb.session import GdbSession
from rig.guest.kernel_layout import TaskLayout, task_layout
from rig.instrument import Instrumenter, SpliceResult, load_image
from rig.instrument.components import ComponentManager, compile_component, source_path
from rig.instrument.manager import PointRequest
from rig.instrument.transaction import recover
from rig.kernel.build import KernelBuild
from rig.splicer import component_table as ctab
from rig.splicer import idt, journal
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.repository import PATCH_AREA_SIZE, RepositoryLayout

LAYOUT = RepositoryLayout()
Operation = Callable[[Instrumenter], object]


@pytest.fixture(scope="module")
def image(kernel: KernelBuild) -> KernelImage:
    return load_image(kernel.vmlinux)


@pytest.fixture(scope="module")
def tasks(kernel: KernelBuild) -> TaskLayout:
    return task_layout(kernel)


@pytest.fixture(scope="module", autouse=True)
def _padding_once() -> Iterator[None]:
    """The padding scan is pure and takes ~0.15 s; the instrumenter redoes it at every splice."""
    with pytest.MonkeyPatch.context() as patch:
        if hasattr(manager_module, "padding_gaps"):
            patch.setattr(manager_module, "padding_gaps", functools.cache(manager_module.padding_gaps))
        yield


@pytest.fixture(scope="module")
def pristine(image: KernelImage, tasks: TaskLayout) -> FakeGuest:
    return FakeGuest(image, tasks, LAYOUT)


@pytest.fixture
def fake(pristine: FakeGuest) -> FakeGuest:
    return pristine.clone()


@pytest.fixture
def inst(fake: FakeGuest, kernel: KernelBuild) -> Instrumenter:
    return Instrumenter(fake, kernel, LAYOUT)


# ---- what each mode splices ------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    function: str
    mode: Mode
    own_vector: bool = False
    short_jmp: bool = False   # jmp over a 2-4 byte instruction: a rel8 into springboards

    def splice(self, inst: Instrumenter) -> SpliceResult:
        if not self.short_jmp:
            return inst.splice(self.function, mode=self.mode, own_vector=self.own_vector, retries=0)
        code = disassemble_function(inst.image, self.function)
        short = next(i for i in code.instructions if 2 <= i.size < 5)
        return inst.splice(self.function, mode=self.mode, policy=Policy.SINGLE, address=short.address, retries=0)


CASES = [Case("trap", "sys_getpid", Mode.TRAP), Case("trap-own-vector", "sys_getppid", Mode.TRAP, own_vector=True),
         Case("int3", "tcp_sync_mss", Mode.INT3), Case("jmp", "sys_getuid", Mode.JMP),
         Case("jmp-springboards", "tcp_sync_mss", Mode.JMP, short_jmp=True)]
CASE_IDS = [case.name for case in CASES]


def text_is_vmlinux(fake: FakeGuest, image: KernelImage) -> bool:
    start, end = image.symbol("_stext").address, image.symbol("_etext").address
    return fake.peek(start, end - start) == image.text_bytes(start, end - start)


def journal_open(fake: FakeGuest) -> bool:
    state = journal.decode_header(fake.peek(LAYOUT.journal, journal.HEADER_SIZE))
    return state is not None and state.open


def idt_now(fake: FakeGuest, image: KernelImage) -> bytes:
    return fake.peek(image.symbol("idt_table").address, 256 * idt.GATE_SIZE)


def idt_as_booted_plus_repository(image: KernelImage, vector: int) -> bytes:
    """2.4's IDT with only the repository's shared vector added (it stays once installed)."""
    gates = bytearray(kernel_idt(image))
    gates[vector * idt.GATE_SIZE:(vector + 1) * idt.GATE_SIZE] = idt.make_trap_gate(LAYOUT.handler).encode()
    return bytes(gates)


# ---- the protocol and the pipeline -------------------------------------------------------------
def test_gdb_session_and_fake_satisfy_guest_memory(fake: FakeGuest) -> None:
    members = [name for name in vars(GuestMemory) if not name.startswith("_")]
    assert set(members) == {"last_stall_s", "stopped", "batch", "read_memory", "read_many", "write_memory"}
    for implementation in (GdbSession(), fake):
        assert isinstance(implementation, GuestMemory)
        for name in members:
            wanted = getattr(GuestMemory, name)
            if callable(wanted):
                got = inspect.signature(getattr(implementation, name)).parameters
                assert list(got) == list(inspect.signature(wanted).parameters)[1:], (type(implementation), name)


def test_a_batch_runs_in_order_and_errors_after_the_rest(fake: FakeGuest, image: KernelImage) -> None:
    where = LAYOUT.base + 0x3000
    with pytest.raises(RigError, match="while the guest runs"):
        fake.read_memory(where, 4)  # as gdb: only a stopped guest
    with fake.stopped():
        batch = fake.batch()
        before = batch.read(where, 4)
        batch.write(where, b"abcd")
        after = batch.read(where, 4)
        regs = batch.registers(["eip", "cs"])
        batch.run()
        assert (before.value, after.value) == (bytes(4), b"abcd")
        assert regs.value == {"eip": image.symbol("default_idle").address, "cs": 0x10}
        batch = fake.batch()
        batch.read(0x1000, 4)              # below the direct map: gdb answers ^error
        batch.write(where, b"wxyz")        # ... and still runs what follows
        with pytest.raises(GdbCommandError):
            batch.run()
        assert fake.read_memory(where, 4) == b"wxyz"
    assert fake.running and fake.stops == 1 and fake.last_stall_s is not None


def test_neighbouring_reads_go_as_one_command(fake: FakeGuest) -> None:
    """Batch.reads: regions within READ_GAP of each other are one read, each gets its own slice."""
    where = LAYOUT.base + 0x3000
    fake.poke(where, bytes(range(256)) * 8)
    far = where + 308 + READ_GAP + 1  # one byte too far from the region before it
    regions = [(far + 100, 16), (where + 300, 8), (where, 4), (where + 2, 4), (far, 4)]
    with fake.stopped():
        batch = fake.batch()
        pending = batch.reads(regions)
        assert len(batch) == 2
        batch.run()
    assert [p.value for p in pending] == [fake.peek(address, length) for address, length in regions]


# ---- splice and unsplice in every mode -------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_splice_then_unsplice_all_leaves_vmlinux(fake: FakeGuest, inst: Instrumenter, image: KernelImage,
                                                  case: Case) -> None:
    result = case.splice(inst)
    assert result.plan.mode is case.mode and fake.running
    # The prep stop (which installed the repository), the staging stop, then the stop that writes the point.
    assert fake.stops == 3
    assert inst.audit() == []
    header, active = inst.active()
    assert header is not None and [(a.function, a.mode) for a in active] == [(case.function, case.mode.name.lower())]
    assert fake.peek(result.plan.point, result.plan.window.length) == result.plan.new_bytes
    if case.short_jmp:
        assert result.plan.springboards and not text_is_vmlinux(fake, image)
    if case.own_vector:
        assert idt.gate_at(idt_now(fake, image), result.vector).offset == LAYOUT.vector_stub(result.plan.slot)
    assert (idt.gate_at(idt_now(fake, image), 3).offset == LAYOUT.int3_handler) == (case.mode is Mode.INT3)

    undone = inst.unsplice_all()
    assert [u.slot for u in undone] == [result.plan.slot]
    assert inst.audit() == []
    assert text_is_vmlinux(fake, image)
    assert idt_now(fake, image) == idt_as_booted_plus_repository(image, header.vector)
    assert not journal_open(fake)


def test_every_mode_live_at_once_then_all_undone(fake: FakeGuest, inst: Instrumenter, image: KernelImage) -> None:
    results = [case.splice(inst) for case in CASES]
    assert inst.audit() == []
    _, active = inst.active()
    assert sorted(a.slot for a in active) == sorted(r.plan.slot for r in results)
    for result in reversed(results[1:]):  # out of order: each keeps the others consistent
        inst.unsplice(result.plan.slot)
        assert inst.audit() == []
    inst.unsplice_all()
    assert inst.audit() == [] and text_is_vmlinux(fake, image)


# ---- refusals that write nothing ---------------------------------------------------------------
def _installed(fake: FakeGuest, inst: Instrumenter) -> None:
    inst.prep()
    fake.writes.clear()
    fake.stops = 0


def test_a_task_stack_inside_the_window_refuses_and_writes_nothing(fake: FakeGuest, inst: Instrumenter) -> None:
    point = inst.image.symbol("sys_getpid").address
    task = fake.add_task([0xC0101234, point + 1, 0])  # a return address inside the 5-byte window
    _installed(fake, inst)
    with pytest.raises(SpliceRefused) as refused:
        inst.splice("sys_getpid", mode=Mode.TRAP, retries=2)
    assert refused.value.reason == "busy" and f"task {task:#x}" in refused.value.message
    assert fake.writes == [] and fake.stops == 1 + 3  # the prep stop, then 3 busy attempts
    assert fake.running and inst.audit() == []
    esp = int.from_bytes(fake.peek(task + fake.task_layout.thread_esp, 4), "little")
    fake.poke(esp + 4, bytes(4))
    inst.splice("sys_getpid", mode=Mode.TRAP, retries=0)  # the task moved on: no longer busy
    assert inst.audit() == []


@pytest.mark.parametrize("where", ["eip", "stack"])
def test_the_vcpu_inside_the_window_refuses(fake: FakeGuest, inst: Instrumenter, where: str) -> None:
    point = inst.image.symbol("sys_getpid").address
    if where == "eip":
        fake.registers["eip"] = point + 2
    else:
        fake.poke(fake.registers["esp"] + 8, (point + 3).to_bytes(4, "little"))
    _installed(fake, inst)
    with pytest.raises(SpliceRefused, match=f"vcpu {where}") as refused:
        inst.splice("sys_getpid", mode=Mode.JMP, retries=0)
    assert refused.value.reason == "busy" and fake.writes == []


def test_a_task_forked_after_the_prep_stop_is_seen(fake: FakeGuest, inst: Instrumenter) -> None:
    """The splice stop reads the task list again: a task made while the host planned counts."""
    point = inst.image.symbol("sys_getpid").address
    _installed(fake, inst)
    forked: list[int] = []

    def fork_while_planning(guest: FakeGuest) -> None:
        if guest.stops == 2 and not forked:  # the splice stop: the guest ran since the prep stop
            forked.append(guest.add_task([point + 1]))
    fake.on_stop = fork_while_planning
    with pytest.raises(SpliceRefused) as refused:
        inst.splice("sys_getpid", mode=Mode.TRAP, retries=0)
    assert forked and f"task {forked[0]:#x}" in refused.value.message and fake.writes == []


def test_a_point_busy_only_in_the_stop_that_writes_it_takes_the_staged_writes_back(fake: FakeGuest,
                                                                                   inst: Instrumenter) -> None:
    """The staging stop found the window free and wrote the repository side; a task that slept in
    the window since (at the second of the two one-byte pushes a trap displaces at tcp_sync_mss's
    entry) makes the stop that writes the point refuse (every retry), and the staged writes are
    taken back: the guest is as before, the journal closed."""
    point = inst.image.symbol("tcp_sync_mss").address
    _installed(fake, inst)
    before = fake.clone()
    entered: list[int] = []

    def sleep_inside_after_staging(guest: FakeGuest) -> None:
        if guest.stops == 3 and not entered:  # the first stop after the staging stop
            entered.append(guest.add_task([point + 1]))
    fake.on_stop = sleep_inside_after_staging
    with pytest.raises(SpliceRefused) as refused:
        inst.splice("tcp_sync_mss", mode=Mode.TRAP, policy=Policy.DISPLACE, retries=1)
    assert refused.value.reason == "busy" and f"task {entered[0]:#x}" in refused.value.message
    assert fake.stops == 1 + 1 + 2 + 1  # prep, staging, 2 attempts to commit, taking the staged writes back
    assert fake.writes and not journal_open(fake) and fake.running
    assert text_is_vmlinux(fake, inst.image) and state(fake)[1:] == state(before)[1:]  # the repository too
    assert inst.audit() == []


def test_the_stop_that_writes_a_one_instruction_window_reads_no_stack(fake: FakeGuest, inst: Instrumenter) -> None:
    """A window of one whole instruction has no byte anything can resume at but its first, so the stop
    that writes its point is the point's bytes and their read-back: fewer commands than for a wider
    window, whose stop reads every task's stack again."""
    _installed(fake, inst)

    def commands_of_the_point_stop(function: str, policy: Policy) -> int:
        counts: list[int] = []
        fake.on_stop = lambda guest: counts.append(guest.command_count)
        slot = inst.splice(function, mode=Mode.TRAP, policy=policy).plan.slot
        fake.on_stop = None
        total = fake.command_count - counts[-1]
        inst.unsplice(slot)
        return total

    one = commands_of_the_point_stop("sys_getpid", Policy.SINGLE)        # mov $-8192,%eax: 5 bytes
    wide = commands_of_the_point_stop("tcp_sync_mss", Policy.DISPLACE)   # push; push
    assert 0 < one < wide, (one, wide)


def test_unsplice_refused_while_the_vcpu_is_in_the_shared_handler(fake: FakeGuest, inst: Instrumenter,
                                                                   image: KernelImage) -> None:
    slot = inst.splice("sys_getpid", mode=Mode.TRAP).plan.slot
    fake.registers["eip"] = LAYOUT.handler + 3  # between the trap and its iret to the patch
    fake.writes.clear()
    with pytest.raises(SpliceRefused, match="busy"):
        inst.unsplice(slot, retries=1)
    assert fake.writes == [] and inst.audit() == []
    fake.registers["eip"] = image.symbol("default_idle").address
    inst.unsplice(slot, retries=0)
    assert inst.audit() == [] and text_is_vmlinux(fake, image)


# ---- held slots: a free slot's old patch that a task may still return to ----------------------------
def _hold(fake: FakeGuest, slot: int, layout: RepositoryLayout = LAYOUT) -> int:
    """A task asleep with a return address in ``slot``'s patch (as after a displaced call whose
    callee blocks, its splice undone since); its task_struct address."""
    return fake.add_task([0xC0101234, layout.patch_code(slot) + 7, 0])


def _release(fake: FakeGuest, task: int) -> None:
    """The task woke and left: nothing on its stack points anywhere any more."""
    esp = int.from_bytes(fake.peek(task + fake.task_layout.thread_esp, 4), "little")
    fake.poke(esp, bytes(task + fake.task_layout.stack_size - esp))


def test_a_held_free_slot_is_passed_over_until_its_task_leaves(fake: FakeGuest, inst: Instrumenter) -> None:
    """Slot 0 is free but a task sleeps in its old patch: the next splice takes slot 1 (it used to be
    refused as busy, and so was every splice after it), slot 0's patch stays as the task left it, and
    once the task has gone slot 0 is taken again."""
    inst.unsplice(inst.splice("sys_getpid", mode=Mode.TRAP).plan.slot)
    task = _hold(fake, 0)
    old_patch = fake.peek(LAYOUT.patch_area(0), PATCH_AREA_SIZE)
    fake.stops = 0
    result = inst.splice("sys_getuid", mode=Mode.TRAP, retries=0)
    assert (result.plan.slot, result.held_slots) == (1, (0,))
    # The prep stop, the staging stop that found slot 0 held (nothing written), the staging stop
    # of the plan on slot 1, the stop that writes the point.
    assert fake.stops == 4
    assert fake.peek(LAYOUT.patch_area(0), PATCH_AREA_SIZE) == old_patch and inst.audit() == []
    assert inst.splice("sys_getppid", mode=Mode.JMP, retries=0).plan.slot == 2  # still held
    _release(fake, task)
    again = inst.splice("sys_geteuid", mode=Mode.TRAP, retries=0)
    assert (again.plan.slot, again.held_slots) == (0, ())  # no blacklist: usable once the task has left
    inst.unsplice_all()
    assert inst.audit() == [] and text_is_vmlinux(fake, inst.image)


def test_a_batch_passes_over_every_held_slot_in_one_more_round(fake: FakeGuest, inst: Instrumenter) -> None:
    """Slots 0 (a sleeping task) and 2 (the vCPU, still in an old patch) are held: a batch of three
    takes 1, 3 and 4 after one more plan, all or nothing; the busy rule for the points' own windows
    is unchanged (a busy window refuses the whole batch, nothing written)."""
    names = ["sys_getpid", "sys_getuid", "sys_getppid"]
    requests = [PointRequest(name, Mode.TRAP) for name in names]
    inst.splice_many(requests)  # slots 0-2, undone: their old patches stay until a slot is reused
    inst.unsplice_all()
    _hold(fake, 0)
    fake.registers["eip"] = LAYOUT.patch_code(2) + 3
    holder = fake.add_task([inst.image.symbol("tcp_sync_mss").address + 1])  # inside its entry's 2-byte window
    fake.writes.clear()
    wide = PointRequest("tcp_sync_mss", Mode.TRAP, Policy.DISPLACE)
    with pytest.raises(SpliceRefused) as refused:
        inst.splice_many([*requests, wide], retries=0)
    assert refused.value.reason == "busy" and f"task {holder:#x}" in refused.value.message
    assert fake.writes == [] and not journal_open(fake)
    _release(fake, holder)
    fake.stops = 0
    done = inst.splice_many(requests, retries=0)
    assert [plan.slot for plan in done.plans] == [1, 3, 4] and done.held_slots == (0, 2)
    assert fake.stops == 1 + 2 + 1  # prep, two staging stops (the first wrote nothing), the points
    assert inst.audit() == []
    inst.unsplice_all()
    assert inst.audit() == [] and text_is_vmlinux(fake, inst.image)


def test_no_usable_slot_left_is_refused_as_busy_naming_the_holder(image: KernelImage, tasks: TaskLayout,
                                                                  kernel: KernelBuild) -> None:
    """Two slots, one live and the other held: nothing to splice into, so the splice is refused
    (busy: waiting for the task helps) and writes nothing."""
    small = RepositoryLayout(slots=2)
    fake = FakeGuest(image, tasks, small)
    inst = Instrumenter(fake, kernel, small)
    inst.splice("sys_getpid", mode=Mode.TRAP)
    inst.unsplice(inst.splice("sys_getuid", mode=Mode.TRAP).plan.slot)
    task = _hold(fake, 1, small)
    fake.writes.clear()
    with pytest.raises(SpliceRefused) as refused:
        inst.splice("sys_getppid", mode=Mode.TRAP, retries=0)
    assert refused.value.reason == "busy" and "no usable repository slot left" in refused.value.message
    assert f"task {task:#x}" in refused.value.message and "slot 1's patch area" in refused.value.message
    assert fake.writes == [] and inst.audit() == []
    _release(fake, task)
    assert inst.splice("sys_getppid", mode=Mode.TRAP, retries=0).plan.slot == 1
    inst.unsplice_all()
    assert inst.audit() == [] and text_is_vmlinux(fake, image)


def test_repository_memory_the_kernel_may_allocate_is_refused(image: KernelImage, tasks: TaskLayout,
                                                              kernel: KernelBuild) -> None:
    fake = FakeGuest(image, tasks, LAYOUT, e820=((0, 640 << 10, 1), (1 << 20, 63 << 20, 1)))  # plain mem=64M
    with pytest.raises(RigError, match="overlaps the component repository"):
        Instrumenter(fake, kernel, LAYOUT).splice("sys_getpid")
    assert fake.writes == []


def test_text_changed_behind_the_rigs_back_refuses(fake: FakeGuest, inst: Instrumenter) -> None:
    _installed(fake, inst)
    fake.poke(inst.image.symbol("sys_getpid").address + 7, b"\x90")
    with pytest.raises(RigError, match="not the one the rig built"):
        inst.splice("sys_getpid", mode=Mode.TRAP, retries=0)
    assert fake.writes == []


def test_a_slot_taken_while_the_host_planned_refuses(fake: FakeGuest, inst: Instrumenter) -> None:
    """Another writer between the prep stop and the splice stop: the slot re-read differs."""
    _installed(fake, inst)
    fake.on_stop = lambda guest: guest.poke(LAYOUT.slot_record(0), b"\x01") if guest.stops == 2 else None
    with pytest.raises(RigError, match="changed since it was read"):
        inst.splice("sys_getpid", mode=Mode.TRAP, retries=0)
    assert fake.writes == []


def test_a_write_that_does_not_stick_rolls_everything_back(fake: FakeGuest, inst: Instrumenter,
                                                           image: KernelImage) -> None:
    _installed(fake, inst)
    before = fake.clone()
    point = image.symbol("sys_getpid").address
    fake.read_only.append((point, 1))  # the commit write (the point) reads back unchanged
    with pytest.raises(RigError, match="rolled back"):
        inst.splice("sys_getpid", mode=Mode.TRAP, retries=0)
    assert fake.writes and inst.audit() == []
    assert state(fake) == state(before)


# ---- the journal: cut after each write, then the next command repairs ------------------------------
def state(fake: FakeGuest) -> tuple[bytes, ...]:
    """Everything a change may touch, the journal left out (its bytes record the change)."""
    kernel = fake.image.section(".text").address
    end = fake.image.section(".bss").end
    journal_at, journal_end = LAYOUT.journal - LAYOUT.base, LAYOUT.journal - LAYOUT.base + journal.JOURNAL_SIZE
    repository = fake.peek(LAYOUT.base, LAYOUT.size)
    return fake.peek(kernel, end - kernel), repository[:journal_at], repository[journal_end:]


def _installed_guest(fake: FakeGuest, inst: Instrumenter) -> None:
    inst.prep()


def _spliced(case: Case) -> Callable[[FakeGuest, Instrumenter], None]:
    def setup(fake: FakeGuest, inst: Instrumenter) -> None:
        case.splice(inst)
    return setup


def _unsplice_first(inst: Instrumenter) -> object:
    _, active = inst.active()
    return inst.unsplice(active[0].slot, retries=0)


def _load(inst: Instrumenter) -> object:
    return ComponentManager(inst).load("mss_adapt")


def _unload(inst: Instrumenter) -> object:
    return ComponentManager(inst).unload("mss_adapt")


@dataclass(frozen=True)
class Cut:
    name: str
    setup: Callable[[FakeGuest, Instrumenter], object]
    operation: Operation
    commit_first: bool = False  # the commit write first (taking away), else last (bringing in)


CUTS = [Cut("install", lambda fake, inst: None, lambda inst: inst.prep())]
CUTS += [Cut(f"splice-{case.name}", _installed_guest, case.splice) for case in CASES]
CUTS += [Cut(f"unsplice-{case.name}", _spliced(case), _unsplice_first, commit_first=True) for case in CASES]
CUTS += [Cut("component-load", _installed_guest, _load),
         Cut("component-unload", lambda fake, inst: _load(inst), _unload, commit_first=True)]


@pytest.mark.parametrize("cut", CUTS, ids=[c.name for c in CUTS])
def test_a_change_cut_after_any_write_is_repaired(pristine: FakeGuest, kernel: KernelBuild, cut: Cut) -> None:
    base = pristine.clone()
    cut.setup(base, Instrumenter(base, kernel, LAYOUT))
    done = base.clone()
    cut.operation(Instrumenter(done, kernel, LAYOUT))
    writes, old, new = len(done.writes), state(base), state(done)
    assert writes > 2 and old != new
    directions = []
    for k in range(1, writes + 1):
        fake = base.clone()
        inst = Instrumenter(fake, kernel, LAYOUT)
        fake.die_after_writes(k)
        with pytest.raises(GdbDied):
            cut.operation(inst)
        assert fake.writes == done.writes[:k] and not fake.running  # the dead gdb left the guest stopped
        torn = state(fake)
        fake.reattach()  # the next command: attach, repair, let the guest run
        repair = recover(fake, LAYOUT)
        fake.cont()
        assert inst.audit() == [], (k, repair)
        now = state(fake)
        if repair is None:  # the journal was not open yet (k=1: its payload only) or already idle
            assert now == (new if k == writes else old), k
            directions.append("none")
        else:
            assert repair.direction in (journal.Direction.FORWARD, journal.Direction.BACK), repair.summary()
            forward = repair.direction is journal.Direction.FORWARD
            assert now == (new if forward else old), (k, repair.summary())
            # The commit write is the one that makes the change take effect: bringing something
            # in, it lands after all the rest; taking something away, before any of the rest.
            if forward and not cut.commit_first:
                assert torn == new, (k, "the commit write landed before the rest")
            if not forward and cut.commit_first:
                assert torn == old, (k, "a write landed before the commit write")
            directions.append(repair.direction.value)
    # Back until the commit write lands, forward after it; the idle mark ends the pipeline.
    assert directions[0] == directions[-1] == "none"
    middle = directions[1:-1]
    assert middle == sorted(middle, key=["back", "forward"].index) and middle[-1] == "forward", directions


# ---- components ------------------------------------------------------------------------------
def test_component_load_set_unload_go_through_the_journal(fake: FakeGuest, inst: Instrumenter,
                                                          image: KernelImage, kernel: KernelBuild) -> None:
    compile_component(kernel, source_path("mss_adapt"))  # cached per kernel build
    components = ComponentManager(inst)
    _installed(fake, inst)
    loaded = components.load("mss_adapt")
    # The transaction's shape: journal payload and header first, the idle mark last.
    assert fake.writes[0][0] == LAYOUT.journal + journal.HEADER_SIZE and fake.writes[1][0] == LAYOUT.journal
    assert fake.writes[-1][0] == LAYOUT.journal and not journal_open(fake)
    table = ctab.decode_table(fake.peek(ctab.table_address(LAYOUT), ctab.HEADER_SIZE + ctab.ENTRIES * ctab.ENTRY_SIZE))
    assert table is not None and table.find("mss_adapt") == (loaded.index, loaded.entry)
    assert fake.peek(loaded.entry.base, loaded.entry.size) == loaded.linked.image
    assert [c.name for c in components.loaded()] == ["mss_adapt"]
    assert components.load("mss_adapt").entry == loaded.entry  # idempotent

    fer = components.set("mss_adapt.fer", "0.05")
    assert fer.raw == 50000 and components.get("mss_adapt.fer") == 50000
    assert components.data(components.find("mss_adapt"))["fer"] == 50000

    spliced_loaded, spliced = components.splice("tcp_sync_mss", "mss_adapt", mode=Mode.TRAP)
    assert inst.audit() == [] and components.find("mss_adapt").users == (spliced.plan.slot,)
    with pytest.raises(RigError, match="still spliced in"):
        components.unload("mss_adapt")
    inst.unsplice_all()
    entry = components.unload("mss_adapt")
    assert components.loaded() == [] and entry == loaded.entry
    assert fake.peek(entry.base, entry.size) == bytes([ctab.FILLER]) * entry.size
    assert inst.audit() == [] and text_is_vmlinux(fake, image)
