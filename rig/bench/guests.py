"""The guests the guest parts measure in: one per clock, each booted fresh for the bench and
watched for crashes, so a guest that oopses under measurement fails the bench with the crash
decoded instead of a timeout."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rig import instrument, session
from rig.bench.part import ClockRun, Guest, GuestPart, Note
from rig.guest import lifecycle
from rig.guest.crash import ConsoleWatch

DEFAULT_ICOUNT_SHIFT = 3   # 2^3 per instruction: timer interrupts stay out of a 10000-call loop


@dataclass(frozen=True)
class ClockOptions:
    accel: str = "auto"         # the first guest's accelerator: auto, tcg or kvm
    icount: bool = True         # a second guest under TCG -icount (deterministic instruction counts)
    icount_shift: int = DEFAULT_ICOUNT_SHIFT

    @property
    def count(self) -> int:
        return 2 if self.icount else 1

    def to_json(self) -> dict[str, Any]:
        return {"accel": self.accel, "icount": self.icount, "icount_shift": self.icount_shift}


def prepare(options: ClockOptions) -> list[lifecycle.PreparedGuest]:
    chosen = [lifecycle.prepare(accel=options.accel)]
    if options.icount:
        chosen.append(lifecycle.prepare(accel="tcg", icount_shift=options.icount_shift))
    return chosen


def _on_clock(parts: Sequence[GuestPart[Any]], index: int) -> list[GuestPart[Any]]:
    return [part for part in parts if part.every_clock or index == 0]


@contextmanager
def booted(prepared: lifecycle.PreparedGuest, note: Note) -> Iterator[Guest]:
    name = prepared.clock.name
    note(name, "booting")
    with lifecycle.private_guest(prepared) as machine:
        boot = machine.boot
        assert boot is not None
        watch = ConsoleWatch.start(machine.config.console_log, instrument.load_image(prepared.kernel.vmlinux),
                                   crash_dir=session.crash_dir())
        with watch.guard(), instrument.connect(machine.config.gdb_socket, prepared.kernel) as instr:
            yield Guest(machine, instr, ClockRun(prepared.clock, prepared.accel_reason, boot.boot_seconds),
                        note=lambda detail: note(name, detail))


def measure(parts: Sequence[GuestPart[Any]], options: ClockOptions,
            note: Note) -> list[tuple[GuestPart[Any], list[Any]]]:
    """Each part with its results, one per clock it was measured under, in clock order."""
    per_clock: dict[str, list[Any]] = {part.key: [] for part in parts}
    if parts:  # else no guest to boot
        for index, prepared in enumerate(prepare(options)):
            with booted(prepared, note) as guest:
                for part in _on_clock(parts, index):
                    per_clock[part.key].append(part.measure(guest))
    return [(part, per_clock[part.key]) for part in parts]


def steps(parts: Sequence[GuestPart[Any]], options: ClockOptions) -> int:
    """Progress notes :func:`measure` gives: a boot per clock and what its parts note."""
    if not parts:
        return 0
    return sum(1 + sum(part.steps() for part in _on_clock(parts, index)) for index in range(options.count))
