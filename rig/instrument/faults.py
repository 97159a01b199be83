"""Fault injection: the rig's gdb killed right after each write of an operation in turn.

For k = 1, 2, ... the operation runs with a gdb that dies after its k-th memory write
(:mod:`rig.gdb.dying`), leaving the guest stopped with the change half-made, as a killed
``invoke`` would. Then the *next command* attaches as any command does and must find the open
journal, finish the change forward or back, say what it did and let the guest run; the rig's
audit (:meth:`Instrumenter.audit`) must then find the kernel text and the repository consistent,
and the guest's init must answer. The loop ends at the first k the operation survives (it has
fewer writes than k).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rig import tools
from rig.errors import RigError
from rig.gdb import dying
from rig.guest import qmp
from rig.guest.lifecycle import PreparedGuest, private_guest
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter, connect, trace
from rig.instrument.components import ComponentManager
from rig.kernel.build import KernelBuild
from rig.splicer.kinds import Mode

log = logging.getLogger(__name__)
Step = Callable[[Instrumenter], object]
MAX_WRITES = 64


@dataclass(frozen=True)
class Injection:
    after_writes: int
    cut: bool                      # gdb died there (False: the operation finished: it has fewer writes)
    found_status: str | None       # QMP status the next command found ("debug": left stopped)
    repair: str | None             # what the next command found and did (None: no journal open)
    direction: str | None          # "forward", "back" (None: nothing to repair)
    rewritten: tuple[str, ...]     # roles of the writes the repair had to write again
    problems: tuple[str, ...]      # the audit after the repair; () = consistent
    alive: bool                    # init answered after the repair

    @property
    def lost(self) -> bool:
        return bool(self.problems) or self.direction == "lost"


@dataclass
class FaultRun:
    operation: str
    injections: list[Injection] = field(default_factory=list)

    @property
    def writes(self) -> int:
        """How many writes the operation made (the last k that cut it)."""
        return sum(1 for i in self.injections if i.cut)

    @property
    def torn(self) -> int:
        return sum(1 for i in self.injections if i.cut and i.repair is not None)

    @property
    def repaired(self) -> int:
        return sum(1 for i in self.injections if i.cut and i.repair is not None and not i.lost)

    @property
    def lost(self) -> int:
        return sum(1 for i in self.injections if i.lost)

    @property
    def guest_deaths(self) -> int:
        return sum(1 for i in self.injections if not i.alive)


def inject_each_write(machine: QemuMachine, kernel: KernelBuild, operation_name: str, operation: Step,
                      setup: Step | None = None, fresh_guest: Callable[[], QemuMachine] | None = None,
                      on_injection: Callable[[Injection], None] | None = None,
                      max_writes: int = MAX_WRITES) -> FaultRun:
    """Cut ``operation`` after each of its writes in turn; see the module docstring.

    ``setup`` brings the guest to the operation's starting state before every try (with a gdb that
    lives); ``fresh_guest`` (for operations that only run once per boot, like installing the
    repository) replaces the guest before every try after the first and returns the new one."""
    run = FaultRun(operation_name)
    real_gdb = tools.require("gdb")
    with tempfile.TemporaryDirectory(prefix="ts-faults-") as scratch:
        for k in range(1, max_writes + 1):
            if fresh_guest is not None and k > 1:  # the first try runs on the guest given
                machine = fresh_guest()
            if setup is not None:
                with connect(machine.config.gdb_socket, kernel) as instrumenter:
                    setup(instrumenter)
            cut = _run_with_dying_gdb(machine, kernel, operation, dying.launcher(Path(scratch), k, real_gdb))
            injection = _next_command(machine, kernel, k, cut)
            run.injections.append(injection)
            if on_injection is not None:
                on_injection(injection)
            if not cut:
                return run
    raise RigError(f"{operation_name} was still being cut after {max_writes} writes",
                   hint="raise max_writes, or check that the operation ends")


def _run_with_dying_gdb(machine: QemuMachine, kernel: KernelBuild, operation: Step, gdb: Path) -> bool:
    """True if gdb died inside the operation (it raised), False if the operation finished."""
    try:
        with connect(machine.config.gdb_socket, kernel, gdb_path=str(gdb)) as instrumenter:
            operation(instrumenter)
    except RigError as error:
        log.debug("operation cut: %s", error.message)
        return True
    return False


def _next_command(machine: QemuMachine, kernel: KernelBuild, k: int, cut: bool) -> Injection:
    """What the next rig command finds and does, and the audit after it."""
    found = qmp.query_status(machine.config.qmp_socket)
    with connect(machine.config.gdb_socket, kernel) as instrumenter:
        repair = instrumenter.repair
        problems = tuple(instrumenter.audit())
    try:
        machine.console.request("ping", timeout=15)
        alive = True
    except RigError:
        alive = False
    return Injection(k, cut, found.status if found else None, repair.summary() if repair else None,
                     repair.direction.value if repair else None, repair.differing if repair else (), problems, alive)


# ---- the operations users cut ------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    operation: Step
    setup: Step
    needs_fresh_guest: bool = False


def splice_scenario(function: str, mode: Mode, own_vector: bool = False, offset: int | None = None) -> Scenario:
    """Splicing ``function`` from a guest with the repository installed and nothing spliced."""
    def setup(instrumenter: Instrumenter) -> None:
        instrumenter.unsplice_all()
        instrumenter.prep(install=True)

    label = f"splice {function}{f'+{offset:#x}' if offset else ''} --mode {mode.name.lower()}" + \
        (" --dispatch vector" if own_vector else "")
    return Scenario(label, lambda i: i.splice(function, mode=mode, offset=offset, own_vector=own_vector), setup)


def batch_scenario(function: str) -> Scenario:
    """Splicing every instruction of ``function`` in one batch (one stop, one transaction)."""
    def setup(instrumenter: Instrumenter) -> None:
        instrumenter.unsplice_all()
        instrumenter.prep(install=True)

    def operation(instrumenter: Instrumenter) -> None:
        code, _ = instrumenter.resolve_point(function)
        instrumenter.splice_many(trace.every_instruction(code), strict=False)

    return Scenario(f"splice every instruction of {function}", operation, setup)


LIVE_SET: tuple[tuple[str, Mode, bool, int | None], ...] = (
    ("sys_getpid", Mode.JMP, False, None),        # slot 0: the order that once hid slot 1's trap
    ("tcp_sync_mss", Mode.TRAP, False, None),
    ("tcp_sync_mss", Mode.INT3, False, 2),
    ("sys_getppid", Mode.TRAP, True, None),
)


def unsplice_scenario(index: int) -> Scenario:
    """Unsplicing the ``index``-th of :data:`LIVE_SET` while all four (jmp, trap, int3, own
    vector) are live."""
    function, mode, own, offset = LIVE_SET[index]

    def setup(instrumenter: Instrumenter) -> None:
        instrumenter.unsplice_all()
        for f, m, o, off in LIVE_SET:
            instrumenter.splice(f, mode=m, own_vector=o, offset=off)

    def operation(instrumenter: Instrumenter) -> None:
        _, active = instrumenter.active()
        slot = next(a.slot for a in active if a.function == function and Mode(a.record.mode) is mode
                    and bool(a.record.vector) == own)
        instrumenter.unsplice(slot)

    label = (f"unsplice {function} ({mode.name.lower()}{', own vector' if own else ''}) "
             "with jmp, trap, int3 and own-vector live")
    return Scenario(label, operation, setup)


def install_scenario() -> Scenario:
    """Installing the repository (the first splice of a boot does it): a fresh guest every try."""
    return Scenario("install the repository", lambda i: i.prep(install=True), lambda i: None, needs_fresh_guest=True)


def component_load_scenario(component: str = "mss_adapt") -> Scenario:
    def setup(instrumenter: Instrumenter) -> None:
        instrumenter.unsplice_all()
        manager = ComponentManager(instrumenter)
        if any(c.name == component for c in manager.loaded()):
            manager.unload(component)
        instrumenter.prep(install=True)

    return Scenario(f"load component {component}", lambda i: ComponentManager(i).load(component), setup)


def run_on_private_guests(scenario: Scenario, prepared: PreparedGuest,
                          on_injection: Callable[[Injection], None] | None = None) -> FaultRun:
    """The scenario on guests of its own (the user's background guest is not touched): one guest,
    or a fresh one for every try when the scenario needs it."""
    with contextlib.ExitStack() as current:
        def fresh() -> QemuMachine:
            current.close()  # the guest before goes first
            return current.enter_context(private_guest(prepared))

        machine = fresh()
        return inject_each_write(machine, prepared.kernel, scenario.name, scenario.operation, setup=scenario.setup,
                                 fresh_guest=fresh if scenario.needs_fresh_guest else None,
                                 on_injection=on_injection)


OPERATIONS = ("splice", "unsplice", "install", "load", "trace")


def scenario(operation: str, function: str, mode: Mode, own_vector: bool, offset: int | None,
             component: str) -> Scenario:
    """The scenario ``invoke faults`` names: its --operation with the splice options."""
    if operation == "splice":
        return splice_scenario(function, mode, own_vector, offset)
    if operation == "unsplice":
        for index, (_, live_mode, live_own, _) in enumerate(LIVE_SET):
            if live_mode is mode and live_own == own_vector:
                return unsplice_scenario(index)
        raise RigError(f"no live splice of --mode {mode.name.lower()} to undo",
                       "unsplice runs with a jmp, a trap, an int3 and an own-vector trap splice live; pick one "
                       "with --mode trap|jmp|int3 (and --dispatch vector)")
    if operation == "install":
        return install_scenario()
    if operation == "load":
        return component_load_scenario(component)
    if operation == "trace":
        return batch_scenario(function)
    raise RigError(f"unknown --operation '{operation}'", f"one of: {' | '.join(OPERATIONS)}")
