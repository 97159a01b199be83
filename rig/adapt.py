"""Condition of invocation "detected environment change" (paper 3.1.2): watch the guest for
``@event netenv fer=<x>`` and apply or retune the MSS adaptation component by itself.

The guest's console output is followed through QEMU's console log file (``console.log`` in the
run directory), not the console socket: the socket takes one client, and whoever drives the
guest (``invoke console``, a test) keeps it while this watcher reacts.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rig.errors import RigError
from rig.guest.protocol import Event, parse_line
from rig.instrument.components import ComponentManager, ParamSet, compile_component, parse_value, source_path
from rig.splicer.component import ComponentObject, Param
from rig.splicer.kinds import Mode

COMPONENT = "mss_adapt"
FUNCTION = "tcp_sync_mss"
EVENT = "netenv"
_POLL_S = 0.05


class ConsoleLogFollower:
    """``tail -f`` of the console log: protocol events written after it was created."""

    def __init__(self, path: Path, from_start: bool = False) -> None:
        if not path.exists():
            raise RigError(f"no console log at {path}", "is the guest running? (invoke status)")
        self.path = path
        self._offset = 0 if from_start else path.stat().st_size
        self._partial = ""
        self._lines: list[str] = []  # read but not yet looked at: two events may arrive in one read

    def _new_lines(self) -> list[str]:
        with self.path.open("rb") as stream:
            stream.seek(self._offset)
            chunk = stream.read()
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        *lines, self._partial = text.split("\n")
        return lines

    def next_event(self, name: str, deadline: float | None) -> Event | None:
        """The next ``@event NAME`` line, or None once ``deadline`` (monotonic) passes."""
        while True:
            self._lines += self._new_lines()
            while self._lines:
                line = self._lines.pop(0)
                try:
                    parsed = parse_line(line)
                except RigError:
                    continue  # a garbled line in the log is not ours to judge
                if isinstance(parsed, Event) and parsed.name == name:
                    return parsed
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_S)


@dataclass(frozen=True)
class Adaptation:
    fer: str
    loaded_now: bool
    spliced_slot: int | None       # the splice made now (None: it was in already)
    param: ParamSet


def fer_param(manager: ComponentManager) -> Param:
    """The component's declaration of fer (scale, documented range), from its cached object."""
    source = source_path(COMPONENT)
    declared = ComponentObject.load(compile_component(manager.kernel, source), source.stem)
    param = next((p for p in declared.params if p.name == "fer"), None)
    if param is None:
        raise RigError(f"{source.name} declares no parameter fer", "declare it with TRAPSPLICE_PARAM(fer, ...)")
    return param


def apply_environment(manager: ComponentManager, fer: str, mode: Mode = Mode.TRAP) -> Adaptation:
    """Make sure mss_adapt is loaded and spliced into tcp_sync_mss, then set its FER."""
    parse_value(fer, fer_param(manager))  # nan, inf, -0.5, 2: refused before anything is loaded or spliced
    return _apply_checked(manager, fer, mode)


def _apply_checked(manager: ComponentManager, fer: str, mode: Mode) -> Adaptation:
    loaded_before = {c.name: c for c in manager.loaded()}
    component = loaded_before.get(COMPONENT)
    slot = None
    if component is None or not component.users:
        _, result = manager.splice(FUNCTION, COMPONENT, mode=mode)
        slot = result.plan.slot
    param = manager.set(f"{COMPONENT}.fer", fer)
    return Adaptation(fer, component is None, slot, param)


def watch(follower: ConsoleLogFollower, manager: ComponentManager, mode: Mode = Mode.TRAP,
          once: bool = False, timeout: float | None = None,
          report: Callable[[Event, Adaptation], None] | None = None,
          skipped: Callable[[Event, RigError], None] | None = None) -> list[Adaptation]:
    """React to every netenv event until ``timeout`` s pass (or after the first, with ``once``).

    An event whose fer is missing or not a valid frame error rate is handed to ``skipped`` and
    changes nothing: one bad announcement must not end the watch (nor count for ``once``)."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    param = fer_param(manager)
    done: list[Adaptation] = []
    bad = 0
    while True:
        event = follower.next_event(EVENT, deadline)
        if event is None:
            if once and not done:
                raise RigError(f"no usable '@event {EVENT}' from the guest within {timeout:g}s"
                               + (f" ({bad} skipped)" if bad else ""),
                               hint="announce one: invoke console --cmd 'netenv fer=0.05'")
            return done
        fer = event.fields.get("fer")
        try:
            if fer is None:
                raise RigError("the event has no fer=", "announce one as: netenv fer=0.05")
            parse_value(fer, param)
        except RigError as error:
            bad += 1
            if skipped is not None:
                skipped(event, error)
            continue
        adaptation = _apply_checked(manager, fer, mode)
        done.append(adaptation)
        if report is not None:
            report(event, adaptation)
        if once:
            return done
