"""A bench part: one piece of the report (a table, a figure), from its measurement to its sections.

A part is one module: its options (fields of the part), a measurement that returns a typed
result, that result as JSON for ``bench.json``, and the result as report sections (tables,
figures, notes; drawn into the run directory). Three kinds, by what the measurement needs:

``StaticPart``   the kernel build alone; measured in a worker process while the guests run
``GuestPart``    a booted guest; measured in every clock's guest (or only the first's)
``DerivedPart``  other parts' results; measured after them

:class:`Registry` keeps the parts in report order; :mod:`rig.bench.run` measures the ones the
options select and writes their sections.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from rig.bench.provenance import Provenance
from rig.bench.sections import Section
from rig.errors import RigError
from rig.guest.accel import Clock
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.kernel.build import KernelBuild

R = TypeVar("R")
C = TypeVar("C")
Progress = Callable[[str], None]   # one progress note of a part: what it is doing now
Note = Callable[[str, str], None]  # one progress note of the bench: (phase, detail)

STATIC_ANALYSIS = "none (static analysis of the built kernel)"  # the accelerator of guest-free parts


class Part(ABC, Generic[R]):
    """What every part declares and how its result is reported."""

    key: ClassVar[str]                     # its entry in bench.json, unique in a registry
    title: ClassVar[str]                   # what it measures, for progress notes
    switch: ClassVar[str]                  # the `invoke bench --<switch>` that selects it
    needs: ClassVar[tuple[str, ...]] = ()  # keys of the parts whose results it reads (run with it)
    opt_in: ClassVar[bool] = False         # True: only when its switch is given (not in "all parts")

    def check(self) -> None:
        """Refuse options out of range with a :class:`RigError` before anything boots."""

    def steps(self) -> int:
        """Progress notes one measurement gives (for the progress bar)."""
        return 0

    def options_json(self) -> dict[str, Any]:
        """Its options as bench.json records them: a part's options are its dataclass fields."""
        return asdict(self) if is_dataclass(self) else {}

    @abstractmethod
    def to_json(self, result: R) -> Any:
        """The result as bench.json records it."""

    @abstractmethod
    def sections(self, result: R, report: ReportContext) -> list[Section]:
        """The result as report sections; figures are saved into ``report.run_dir``."""


class StaticPart(Part[R]):
    @abstractmethod
    def measure(self, kernel: KernelBuild) -> R:
        """Runs in a worker process: the part and its result must pickle."""


class GuestPart(Part[list[C]], Generic[C]):
    """Measured once per clock; the part's result is the list of per-clock results."""

    every_clock: ClassVar[bool] = True     # False: only in the first clock's guest

    @abstractmethod
    def measure(self, guest: Guest) -> C:
        """Measure in ``guest`` and leave it as found."""


class DerivedPart(Part[R]):
    @abstractmethod
    def measure(self, results: Results) -> R:
        """From the results of the parts it needs (and of others, when present)."""


AnyPart = StaticPart[Any] | GuestPart[Any] | DerivedPart[Any]


@dataclass(frozen=True)
class ClockRun:
    """The clock one guest ran under, as every guest part reports it."""

    clock: Clock
    accel_reason: str
    boot_seconds: float

    @property
    def name(self) -> str:
        return self.clock.name

    @property
    def section_slot(self) -> str:
        """The guest's report section: every guest part measured in it reports there."""
        return f"guest under {self.clock.name}"

    def to_json(self) -> dict[str, Any]:
        return {"clock": self.clock.name, "accelerator": self.clock.accel, "clock_meaning": self.clock.meaning,
                "accel_reason": self.accel_reason, "deterministic": self.clock.deterministic,
                "tsc_per_unit": self.clock.tsc_per_unit, "unit": self.clock.unit,
                "boot_seconds": round(self.boot_seconds, 3)}


@dataclass(frozen=True)
class Guest:
    """A booted guest under the crash watch, with an instrumenter attached."""

    machine: QemuMachine
    instr: Instrumenter
    clock: ClockRun
    note: Progress


@dataclass(frozen=True)
class ReportContext:
    """What sections need besides their result: where figures go, the kernel for provenance."""

    run_dir: Path
    kernel_build_id: str
    gcc_version: str

    def provenance(self, *, accelerator: str, clock_meaning: str, n: int, seed: int | None = None) -> Provenance:
        return Provenance.collect(accelerator=accelerator, clock_meaning=clock_meaning, n=n, seed=seed,
                                  kernel_build_id=self.kernel_build_id, gcc_version=self.gcc_version)

    def clock_provenance(self, clock: ClockRun, n: int) -> Provenance:
        """The provenance of what one guest measured under ``clock``."""
        return self.provenance(accelerator=clock.name, clock_meaning=clock.clock.meaning, n=n)


class Results:
    """The results measured so far, by part."""

    def __init__(self) -> None:
        self._by_key: dict[str, Any] = {}

    def put(self, part: Part[R], result: R) -> None:
        self._by_key[part.key] = result

    def get(self, part: type[Part[R]]) -> R | None:
        return cast("R | None", self._by_key.get(part.key))

    def require(self, part: type[Part[R]]) -> R:
        if part.key not in self._by_key:
            raise RigError(f"the bench has no {part.title} result", "name the part in the needs of the part reading it")
        return cast(R, self._by_key[part.key])

    def of(self, part: Part[R]) -> R:
        return cast(R, self._by_key[part.key])

    def __contains__(self, part: Part[Any]) -> bool:
        return part.key in self._by_key


class Registry:
    """The bench's parts in report order; a part comes after the parts it needs."""

    def __init__(self, parts: Iterable[AnyPart] = ()) -> None:
        self._parts: list[AnyPart] = []
        for part in parts:
            self.register(part)

    def register(self, part: AnyPart) -> None:
        if not isinstance(part, (StaticPart, GuestPart, DerivedPart)):
            raise TypeError(f"{part!r} is not a StaticPart, GuestPart or DerivedPart")
        known = {p.key for p in self._parts}
        if part.key in known:
            raise ValueError(f"a bench part {part.key!r} is registered already")
        missing = [key for key in part.needs if key not in known]
        if missing:
            raise ValueError(f"register {', '.join(missing)} before {part.key!r}, which needs it")
        self._parts.append(part)

    def configured(self, part: AnyPart) -> Registry:
        """A copy with ``part`` in place of the registered part of its key (other options)."""
        if part.key not in {p.key for p in self._parts}:
            raise ValueError(f"no bench part {part.key!r} to configure")
        return Registry(part if p.key == part.key else p for p in self._parts)

    def copy(self) -> Registry:
        return Registry(self._parts)

    def get(self, part: type[Part[R]]) -> Part[R]:
        return next(p for p in self._parts if p.key == part.key)

    def __iter__(self) -> Iterator[AnyPart]:
        return iter(self._parts)

    @property
    def switches(self) -> list[str]:
        return list(dict.fromkeys(part.switch for part in self._parts))

    def selected(self, switches: Iterable[str] | None) -> list[AnyPart]:
        """The parts ``switches`` select (None: all), with the parts they need, in report order."""
        on = set(self.switches if switches is None else switches)
        wanted = {part.key for part in self._parts if part.switch in on and (switches is not None or not part.opt_in)}
        for part in reversed(self._parts):  # needs come earlier: one backward pass closes them
            if part.key in wanted:
                wanted.update(part.needs)
        return [part for part in self._parts if part.key in wanted]
