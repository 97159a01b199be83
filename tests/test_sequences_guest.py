"""Random sequences of what users combine, on one real 2.4.20 guest: hypothesis generates and shrinks
them (test_emulated_dispatch.py does the same on an emulator; test_safety_guest.py enumerates the 24
orders of four fixed splices by hand).

A step is one of: a splice at a real instruction boundary of a function the workload or init reaches,
in any mode and dispatch (shared trap vector, a trap vector of its own, jmp, int3) and policy; a batch
of such points (``splice_many``, not strict); every-instruction tracing of a small function; unsplicing
one live splice or all of them; ``bench getpid N``; a few workload parts. A refusal (overlapping
window, busy, too short, ...) is a legitimate outcome that must leave the guest as it was.

After every step: no oops on the console, init answers, the repository's live splices are exactly the
ones the rig reported making, no live hit counter went down, and the audit finds nothing. Exact counts
only where they are exact: init is the only caller of getpid while ``bench getpid N`` runs, and
sys_getpid is straight-line code, so every live splice in it counts exactly N; workload parts have a
digest that is the same on every run and boot, so each must equal the unspliced one. Each example
ends with ``unsplice_all``: no splice left, the text equal to vmlinux, the IDT as before the example.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from rig.guest import crash, lifecycle
from rig.guest.machine import QemuMachine
from rig.guest.workload import run_workload
from rig.instrument import Instrumenter, connect, trace
from rig.instrument.manager import ActiveSplice, PointRequest, load_image
from rig.splicer import idt
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import ByteRange, KernelImage
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.plan import SplicePlan

# The bound on the run: 24 examples of 10 steps, ~0.25 s a step (the audit reads the whole kernel text
# after each), take about a minute on a 2-core TCG host. Not fewer examples: hypothesis switches some
# rules off in each example (swarm testing), and with a dozen a run may never splice a single point
# in some mode or never bench a live sys_getpid splice (the coverage asserted at the end). Raise them
# locally to look harder (120 x 15: ~6.5 min). A failure shrinks for up to hypothesis' five minutes
# (each try replays steps on the guest); it is kept in hypothesis' database and replayed first next time.
MAX_EXAMPLES = 24
STEPS = 10
NO_EXPLAIN = tuple(p for p in Phase if p is not Phase.explain)  # explaining costs a replay per step

# Functions init's bench or the workload parts below run through, and which part reaches which.
FUNCTIONS = ("sys_getpid", "sys_getppid", "tcp_sync_mss", "tcp_sendmsg", "pipe_read", "pipe_write", "do_fork",
             "kmem_cache_alloc")
TRACED = ("sys_getpid", "sys_getppid", "tcp_sync_mss")  # small enough to take a splice at every instruction
PARTS = ("fork", "pipe", "tcp", "unix")                 # do_fork, getppid; pipes; tcp_*; kmem_cache_alloc
EXACT = "sys_getpid"                                    # init's bench is its only caller, N calls exactly
TIMEOUT_S = 180.0                                       # a busy shared host is several times slower


@dataclass(frozen=True)
class Dispatch:
    """How a splice branches to its patch."""

    name: str
    mode: Mode
    own_vector: bool = False


DISPATCHES = (Dispatch("trap", Mode.TRAP), Dispatch("trap-own-vector", Mode.TRAP, own_vector=True),
              Dispatch("jmp", Mode.JMP), Dispatch("int3", Mode.INT3))
POLICIES = (None, Policy.SINGLE, Policy.DISPLACE)  # None: auto, the rig's default (first: shrinks to it)


@dataclass(frozen=True)
class Live:
    """A splice the rig said it made: what the repository must hold in its slot."""

    function: str
    point: int
    mode: Mode
    own_vector: bool


class SequenceGuest:
    """A private guest for the module, gdb attached, with its unspliced workload digests; booted anew
    when an example leaves it in doubt (a failed step: shrinking needs each example to start sane)."""

    def __init__(self, prepared: lifecycle.PreparedGuest) -> None:
        self.prepared = prepared
        self.image: KernelImage = load_image(prepared.kernel.vmlinux)
        self.baseline: dict[str, str] = {}
        self.idt: bytes = b""
        self.suspect = False
        self._stack = contextlib.ExitStack()
        self.machine: QemuMachine
        self.instrumenter: Instrumenter
        self._start()

    def _start(self) -> None:
        try:
            self._boot()
        except BaseException:
            self.close()  # no QEMU left behind by a boot that failed half-way
            raise

    def _boot(self) -> None:
        self.machine = self._stack.enter_context(lifecycle.private_guest(self.prepared))
        self.instrumenter = self._stack.enter_context(connect(self.machine.config.gdb_socket, self.prepared.kernel))
        unspliced = run_workload(self.machine.console, PARTS, timeout=TIMEOUT_S)
        assert unspliced.ok, f"parts failed unspliced: {unspliced.failures}"
        assert not self.baseline or unspliced.parts == self.baseline, "the workload differs between fresh guests"
        self.baseline = unspliced.parts
        self.instrumenter.prep()  # installs the repository (its shared vector's gate): the IDT examples restore
        self.idt = self.read_idt()
        self.suspect = False

    def read_idt(self) -> bytes:
        with self.instrumenter.gdb.stopped():
            return self.instrumenter.gdb.read_memory(self.image.symbol("idt_table").address, 256 * idt.GATE_SIZE)

    def replace(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()


@pytest.fixture(scope="module")
def rig(prepared: lifecycle.PreparedGuest) -> Iterator[SequenceGuest]:
    holder = SequenceGuest(prepared)
    try:
        yield holder
    finally:
        holder.close()


def boundaries(image: KernelImage) -> dict[str, list[tuple[str, int]]]:
    """Every instruction boundary of each function, from vmlinux's disassembly (entry first)."""
    return {name: [(name, insn.address) for insn in disassemble_function(image, name).instructions
                   if not insn.is_data] for name in FUNCTIONS}


def run_sequences(rig: SequenceGuest, max_examples: int, steps: int) -> Counter[str]:
    """Run the state machine; returns what it did (so the caller can see it tested something)."""
    points = boundaries(rig.image)
    # sys_getpid three times in ten: the exact count needs a splice there live at a bench step.
    point = st.sampled_from((EXACT, EXACT, *FUNCTIONS)).flatmap(lambda name: st.sampled_from(points[name]))
    exact = ByteRange(points[EXACT][0][1], rig.image.symbol(EXACT).size)
    seen: Counter[str] = Counter()

    class SpliceSequences(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            if rig.suspect:
                rig.replace()
                seen["guest replaced"] += 1
            self.ins = rig.instrumenter
            self.console = rig.machine.console
            self.live: dict[int, Live] = {}
            self.hits: dict[int, int] = {}  # slot -> its counter when last read
            self.watch = crash.ConsoleWatch.start(rig.machine.config.console_log, rig.image,
                                                  layout=self.ins.layout)
            self.in_step = False  # set by each rule, cleared once the invariants passed after it

        @initialize()
        def starts_clean(self) -> None:
            self.in_step = True
            assert self.ins.active()[1] == [] and self.ins.audit() == []

        # ---- splicing ---------------------------------------------------------------------------
        def _request(self, where: tuple[str, int], dispatch: Dispatch, policy: Policy | None) -> PointRequest:
            function, address = where
            return PointRequest(function, dispatch.mode, policy, address=address, own_vector=dispatch.own_vector)

        def _refused(self, path: str, refusal: SpliceRefused, before: dict[int, Live]) -> None:
            seen[f"refused:{path}:{refusal.reason}"] += 1
            assert self._guest_live() == before, f"a refused {path} changed the live splices: {refusal.message}"

        def _made(self, path: str, plans: Sequence[SplicePlan], requests: Sequence[PointRequest],
                  refused: Sequence[tuple[PointRequest, SpliceRefused]] = ()) -> None:
            """Record the plans of a batch: one per request not refused, in order."""
            gone = {id(request) for request, _ in refused}
            accepted = [request for request in requests if id(request) not in gone]
            assert len(plans) == len(accepted)
            for plan, request in zip(plans, accepted):
                assert (plan.point, plan.mode) == (request.address, request.mode), plan.summary()
                assert plan.slot not in self.live, f"slot {plan.slot} handed out twice"
                self.live[plan.slot] = Live(plan.function, plan.point, plan.mode, request.own_vector)
                self.hits.pop(plan.slot, None)  # a new patch: its counter starts again
                seen[f"{path}:{'trap-own-vector' if request.own_vector else plan.mode.name.lower()}"] += 1
                if plan.point != rig.image.symbol(plan.function).address:
                    seen["not at an entry"] += 1
            seen[f"live:{min(len(self.live), 8)}"] += 1

        @rule(where=point, dispatch=st.sampled_from(DISPATCHES), policy=st.sampled_from(POLICIES))
        def splice(self, where: tuple[str, int], dispatch: Dispatch, policy: Policy | None) -> None:
            self.in_step = True
            request = self._request(where, dispatch, policy)
            before = dict(self.live)
            try:
                done = self.ins.splice(request.function, request.mode, request.policy, address=request.address,
                                       own_vector=request.own_vector)
            except SpliceRefused as refusal:
                self._refused("single", refusal, before)
                return
            self._made("single", [done.plan], [request])

        @rule(batch=st.lists(st.tuples(point, st.sampled_from(DISPATCHES), st.sampled_from(POLICIES)),
                             min_size=2, max_size=6))
        def splice_many(self, batch: list[tuple[tuple[str, int], Dispatch, Policy | None]]) -> None:
            self.in_step = True
            requests = [self._request(*item) for item in batch]
            before = dict(self.live)
            try:
                done = self.ins.splice_many(requests, strict=False)
            except SpliceRefused as refusal:  # at the stop (busy, held slots): all or nothing
                self._refused("batch", refusal, before)
                return
            assert len(done.plans) + len(done.refused) == len(requests)
            for _, refusal in done.refused:
                seen[f"refused:batch:{refusal.reason}"] += 1
            self._made("batch", done.plans, requests, done.refused)

        @rule(function=st.sampled_from(TRACED), mode=st.sampled_from((trace.AUTO, Mode.TRAP, Mode.INT3)))
        def trace_every_instruction(self, function: str, mode: Mode | None) -> None:
            self.in_step = True
            code, _ = self.ins.resolve_point(function)
            requests = trace.every_instruction(code, mode)
            before = dict(self.live)
            try:
                done = self.ins.splice_many(requests, strict=False)
            except SpliceRefused as refusal:
                self._refused("trace", refusal, before)
                return
            assert len(done.plans) + len(done.refused) == len(requests)
            for _, refusal in done.refused:  # instructions inside live windows, 1 byte under trap
                seen[f"refused:trace:{refusal.reason}"] += 1
            self._made("trace", done.plans, requests, done.refused)

        # ---- unsplicing -------------------------------------------------------------------------
        @precondition(lambda self: self.live)
        @rule(pick=st.integers(0, 63))
        def unsplice(self, pick: int) -> None:
            self.in_step = True
            slot = sorted(self.live)[pick % len(self.live)]
            try:
                undone = self.ins.unsplice(slot)
            except SpliceRefused as refusal:
                self._refused("unsplice", refusal, dict(self.live))
                return
            assert (undone.slot, undone.point) == (slot, self.live[slot].point)
            assert undone.hits >= self.hits.get(slot, 0), f"slot {slot}'s counter went down when undone"
            del self.live[slot]
            self.hits.pop(slot, None)
            seen["unsplice"] += 1

        @precondition(lambda self: self.live)
        @rule()
        def unsplice_all(self) -> None:
            self.in_step = True
            try:
                undone = self.ins.unsplice_all()
            except SpliceRefused as refusal:  # some busy: the others are undone
                seen[f"refused:unsplice-all:{refusal.reason}"] += 1
                still = self._guest_live()
                assert set(still) <= set(self.live), refusal.message
                self.live = still
                self.hits = {slot: hits for slot, hits in self.hits.items() if slot in still}
                return
            assert sorted(u.slot for u in undone) == sorted(self.live)
            self.live.clear()
            self.hits.clear()
            seen["unsplice all"] += 1

        # ---- driving the guest ------------------------------------------------------------------
        @rule(n=st.integers(1, 400))
        def bench_getpid(self, n: int) -> None:
            self.in_step = True
            before = self._counters()
            reply = self.console.request(f"bench getpid {n}", timeout=TIMEOUT_S)
            assert reply.int_field("n") == n and reply.bool_field("pid_ok")
            after = self._counters()
            for slot, live in self.live.items():
                if live.point in exact:  # straight-line code: each instruction runs once per call
                    assert after[slot] - before[slot] == n, \
                        f"slot {slot} at {EXACT}+{live.point - exact.start:#x} ({live.mode.name.lower()}): " \
                        f"counted {after[slot] - before[slot]} of {n} getpid calls"
                    seen["exact getpid count"] += 1
            seen["bench"] += 1

        @rule(parts=st.lists(st.sampled_from(PARTS), min_size=1, max_size=2, unique=True))
        def workload(self, parts: list[str]) -> None:
            self.in_step = True
            result = run_workload(self.console, parts, timeout=TIMEOUT_S)
            assert result.ok, f"parts failed: {result.failures}"
            differ = [part for part in parts if result.parts[part] != rig.baseline[part]]
            assert not differ, f"digests differ from the unspliced ones in {differ}: {result.raw}"
            seen["workload"] += 1
            seen[f"workload:{len(self.live) > 0}"] += 1

        # ---- after every step ---------------------------------------------------------------
        def _guest_live(self, active: Sequence[ActiveSplice] | None = None) -> dict[int, Live]:
            """The live splices as the repository records them (read now unless given)."""
            return {a.slot: Live(a.function, a.record.point, Mode(a.record.mode), bool(a.record.vector))
                    for a in (self.ins.active()[1] if active is None else active)}

        def _counters(self) -> dict[int, int]:
            return {a.slot: a.hits for a in self.ins.active()[1]}

        @invariant()
        def guest_is_consistent(self) -> None:
            self.watch.check(settle_s=0.5)
            assert self.console.request("ping", timeout=TIMEOUT_S).ok
            active = self.ins.active()[1]
            assert self._guest_live(active) == self.live, "the repository's live splices are not the ones made"
            for a in active:
                assert a.hits >= self.hits.get(a.slot, 0), \
                    f"slot {a.slot}'s counter went down: {self.hits[a.slot]} -> {a.hits}"
                self.hits[a.slot] = a.hits
            assert self.ins.audit() == []
            self.in_step = False

        def teardown(self) -> None:
            """Every example ends as it began: no splice, the text equal to vmlinux, the IDT as it was,
            no oops, init answering. After a failed step too (shrinking runs many failing examples: a
            guest that passes all this is reused); one that does not is booted anew for the next."""
            try:
                self.ins.unsplice_all()
                assert self.ins.active()[1] == []
                assert self.ins.audit() == []  # no splice live: the whole text equals vmlinux
                assert rig.read_idt() == rig.idt, "the IDT differs from before the example (a gate not given back)"
                assert self.console.request("ping", timeout=TIMEOUT_S).ok
                self.watch.check(settle_s=0.5)
            except Exception:
                rig.suspect = True
                if self.in_step:
                    return  # the failed step's own error is the one to report
                raise
            seen["examples"] += 1

    run_state_machine_as_test(SpliceSequences, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None, phases=NO_EXPLAIN,
        suppress_health_check=[HealthCheck.too_slow]))
    return seen


def test_random_sequences_on_the_guest(rig: SequenceGuest) -> None:
    """Whatever users combine, in whatever order: the guest stays consistent and healthy, counts stay
    exact where they are exact, and each example leaves the kernel as vmlinux."""
    seen = run_sequences(rig, MAX_EXAMPLES, STEPS)
    made = {path: sum(seen[f"{path}:{d.name}"] for d in DISPATCHES) for path in ("single", "batch", "trace")}
    assert all(made.values()), f"a path never spliced anything: {made}; {seen}"
    assert all(seen[f"single:{d.name}"] + seen[f"batch:{d.name}"] for d in DISPATCHES), \
        f"a mode or dispatch was never spliced: {seen}"
    for what in ("bench", "exact getpid count", "workload:True"):
        assert seen[what], f"never ran: {what}; {seen}"
    assert seen["unsplice"] + seen["unsplice all"], f"never unspliced in a step: {seen}"
    assert any(key.startswith("refused:") for key in seen), f"nothing was ever refused: {seen}"
    assert seen["not at an entry"], f"every splice was at a function's entry: {seen}"
    assert seen["examples"] >= MAX_EXAMPLES // 2, seen  # hypothesis may stop early, never this early
