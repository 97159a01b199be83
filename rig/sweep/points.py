"""Which kernel points a sweep visits, and what the pure planner says of each.

A point is one instruction boundary of a function in vmlinux's core text. The population is
every boundary of the named objects' functions (``--objects sched.o``: matched by name and size
from the object's own symbol table, as the hop census does), of the named functions (``--funcs``),
or of all of core text; ``--sample N`` takes a seeded random sample of it. Each point is then
planned statically (no guest) in the sweep's mode: a refusal there is final (the live planner
would say the same), a plan gives the window and springboards that keep the batches of one
guest stop from overlapping.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rig.bench.hops import linked_functions
from rig.errors import RigError
from rig.kernel.build import KernelBuild
from rig.splicer import idt
from rig.splicer.analysis import FunctionCode, disassemble_function
from rig.splicer.image import ByteRange, KernelImage, Symbol
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.modes import OwnVector
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import plan_auto, plan_splice
from rig.splicer.repository import RepositoryLayout
from rig.splicer.sections import CORE_TEXT

# The paper's Fig. 4 objects: the sweep's default population.
FIG4_OBJECTS = ("drivers/net/eepro100.o", "kernel/sched.o", "mm/slab.o", "mm/page_alloc.o")
# Static plans need a vector number; the live planner uses the installed one (the same kind of gate).
_PLANNING_VECTOR = 0x81


class SweepMode(str, Enum):
    """How each point is spliced: the splicer's modes, plus the own-vector trap and "auto"
    (a trap where the instruction has 2 bytes or more, int3 where it has one)."""

    TRAP = "trap"
    TRAP_VECTOR = "trap-vector"
    JMP = "jmp"
    INT3 = "int3"
    AUTO = "auto"

    def splicer_mode(self, instruction_size: int) -> Mode:
        if self is SweepMode.AUTO:
            return Mode.TRAP if instruction_size >= 2 else Mode.INT3
        return {SweepMode.TRAP: Mode.TRAP, SweepMode.TRAP_VECTOR: Mode.TRAP, SweepMode.JMP: Mode.JMP,
                SweepMode.INT3: Mode.INT3}[self]

    @property
    def own_vector(self) -> bool:
        return self is SweepMode.TRAP_VECTOR

    @classmethod
    def parse(cls, text: str) -> SweepMode:
        try:
            return cls(text)
        except ValueError:
            raise RigError(f"unknown sweep mode '{text}'",
                           f"one of: {' | '.join(m.value for m in cls)}") from None


def parse_policy(text: str) -> Policy | None:
    """``auto`` (None: the tactics in turn), ``single`` or ``displace``."""
    if text == "auto":
        return None
    try:
        return Policy[text.upper()]
    except KeyError:
        raise RigError(f"unknown policy '{text}'", "one of: auto | single | displace") from None


@dataclass(frozen=True, order=True)
class Point:
    address: int
    function: str
    offset: int
    size: int          # the instruction's length
    obj: str           # the object it came from ("" when chosen by function or sample)

    @property
    def key(self) -> str:
        """Stable name in results files: the address (static functions can share names)."""
        return f"{self.address:#x}"

    @property
    def label(self) -> str:
        return f"{self.function}+{self.offset:#x}"


@dataclass(frozen=True)
class StaticVerdict:
    """The pure planner's word on a point: a refusal (final), or the ranges its splice occupies."""

    point: Point
    refusal: SpliceRefused | None
    occupied: tuple[ByteRange, ...] = ()   # window and springboards: what a batch must not share

    @property
    def plannable(self) -> bool:
        return self.refusal is None


def functions_of_object(image: KernelImage, kernel: KernelBuild, obj: str) -> list[Symbol]:
    """The vmlinux functions linked from ``obj`` (e.g. ``sched.o`` or ``kernel/sched.o``), matched
    as the hop census matches them (by name and size)."""
    return [symbol for symbol in linked_functions(image, _object_path(kernel, obj)) if symbol is not None]


def _object_path(kernel: KernelBuild, obj: str) -> Path:
    wanted = obj if "/" in obj else next((o for o in FIG4_OBJECTS if Path(o).name == obj), None)
    if wanted is not None:
        path = kernel.object(wanted)
        if path.is_file():
            return path
    candidates = sorted(kernel.tree.rglob(Path(obj).name))
    if len(candidates) == 1:
        return candidates[0]
    raise RigError(f"no object '{obj}' in the kernel build" if not candidates else
                   f"'{obj}' is ambiguous in the kernel build ({len(candidates)} objects)",
                   "name it by its path in the tree, e.g. kernel/sched.o or drivers/net/eepro100.o")


def boundaries(code: FunctionCode, obj: str = "") -> list[Point]:
    return [Point(insn.address, code.name, insn.address - code.start, insn.size, obj)
            for insn in code.instructions if not insn.is_data]


def select_points(image: KernelImage, kernel: KernelBuild, objects: Sequence[str] = (),
                  functions: Sequence[str] = (), sample: int | None = None, seed: int = 0) -> list[Point]:
    """The sweep's points in address order; see the module docstring. With neither objects nor
    functions the population is all of core text (then a ``sample`` is usual)."""
    chosen: dict[int, Point] = {}

    def add(symbols: Iterable[Symbol], obj: str) -> None:
        for symbol in symbols:
            for point in boundaries(disassemble_function(image, symbol), obj):
                chosen.setdefault(point.address, point)

    for obj in objects:
        symbols = functions_of_object(image, kernel, obj)
        if not symbols:
            raise RigError(f"no function of '{obj}' was found in vmlinux", "check the object's name")
        add(symbols, Path(obj).name)
    for name in functions:
        add([image.function(name)], "")
    if not objects and not functions:
        add([s for s in image.symbols if s.kind == "FUNC" and s.size > 0 and s.section in CORE_TEXT], "")
    points = sorted(chosen.values())
    if sample is not None and sample < len(points):
        points = sorted(random.Random(seed).sample(points, sample))
    return points


class StaticPlanner:
    """Plans points on vmlinux alone, as the live planner would on a guest with nothing spliced."""

    def __init__(self, image: KernelImage, mode: SweepMode, policy: Policy | None) -> None:
        self.image = image
        self.mode = mode
        self.policy = policy
        self.layout = RepositoryLayout()
        self._gaps = padding_gaps(image)
        self._codes: dict[int, FunctionCode] = {}
        idt_base = image.symbol("idt_table").address
        self._own = OwnVector(_PLANNING_VECTOR, idt_base, bytes(idt.GATE_SIZE)) if mode.own_vector else None

    def _code(self, point: Point) -> FunctionCode:
        symbol = self.image.function_at(point.address)
        if symbol.address not in self._codes:
            self._codes[symbol.address] = disassemble_function(self.image, symbol)
        return self._codes[symbol.address]

    def verdict(self, point: Point) -> StaticVerdict:
        mode = self.mode.splicer_mode(point.size)
        options = dict(patch_kind=PatchKind.COUNTER, vector=_PLANNING_VECTOR, springboard_space=self._gaps,
                       own_vector=self._own)
        try:
            if self.policy is None:
                plan = plan_auto(self._code(point), point.address, mode, self.layout, 0, **options)
            else:
                plan = plan_splice(self._code(point), point.address, mode, self.policy, self.layout, 0,
                                   **options)  # type: ignore[arg-type]
        except SpliceRefused as refused:
            return StaticVerdict(point, refused)
        occupied = (plan.window, *(ByteRange(board.address, len(board.original)) for board in plan.springboards))
        return StaticVerdict(point, None, occupied)
