"""The kernel component manager (the paper's): compile, load, list, unload components, and
read/write their data by name, in the running guest behind an :class:`Instrumenter`.

Components are C files (``rig/components/NAME.c`` or any path) compiled with the kernel's own
flags against the built tree's headers; objects are cached per kernel build and source digest.
Linking is pure (:mod:`rig.splicer.component`); this module does the I/O. The guest's component
table (:mod:`rig.splicer.component_table`) is the record of what is loaded: the host finds the
linked layout again from its cached object by the sha256 the table holds.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import iced_x86 as ix

from rig import paths
from rig.errors import RigError
from rig.instrument import Instrumenter, SpliceResult
from rig.kernel.cflags import argv_text, compile_object, kernel_cflags
from rig.splicer import component_table as ctab
from rig.splicer.component import (ComponentObject, ComponentRefused, LinkedComponent, Param, find_hook, kernel_symbols,
                                   layout_size, link, size_breakdown)
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode, PatchKind, Policy
from rig.splicer.memory import MemoryWrite
from rig.splicer.repository import PATCH_AREA_SIZE, PATCH_CODE_OFFSET, SlotRecord
from rig.instrument.transaction import apply_writes

COMPONENTS_DIR = paths.REPO_ROOT / "rig" / "components"
_ERROR_LINES = 15


class CompileFailed(RigError):
    def __init__(self, source: Path, errors: list[str], argv: list[str]) -> None:
        super().__init__(f"component {source.name} does not compile:\n" + "\n".join(errors),
                         hint=f"fix the source; the command was: {argv_text(argv)}")
        self.errors = errors


@dataclass(frozen=True)
class LoadedComponent:
    index: int
    entry: ctab.ComponentEntry
    linked: LinkedComponent
    users: tuple[int, ...]   # slots of active splices that branch into it

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass(frozen=True)
class ParamSet:
    component: str
    param: Param
    address: int
    raw: int          # what the guest variable now holds
    previous: int


def source_path(name: str) -> Path:
    """``NAME`` (a file in rig/components) or a path to a ``.c`` file."""
    given = Path(name)
    if given.suffix == ".c":
        if not given.is_file():
            raise RigError(f"no component source at {given}", "give an existing .c file")
        return given
    path = COMPONENTS_DIR / f"{name}.c"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in COMPONENTS_DIR.glob("*.c"))) or "none"
        raise RigError(f"no component named {name!r}", f"components: {known}; or give a path to a .c file")
    return path


def compile_component(kernel, source: Path) -> Path:
    """The component's object, compiled with the kernel's flags (cached by source, headers, flags)."""
    flags = kernel_cflags(kernel)
    header = COMPONENTS_DIR / "trapsplice.h"
    digest = hashlib.sha256("\0".join([source.read_text(), header.read_text(), *flags]).encode()).hexdigest()
    out_dir = paths.cache_dir("components", kernel.key)
    obj = out_dir / f"{source.stem}-{digest[:16]}.o"
    if not obj.exists():
        partial = obj.with_suffix(".partial.o")
        result = compile_object(kernel, source, partial, extra=["-I", str(COMPONENTS_DIR)])
        if not result.ok:
            partial.unlink(missing_ok=True)
            raise CompileFailed(source, _errors(result.stderr), result.argv)
        partial.replace(obj)
    by_sha = out_dir / "by-sha" / f"{hashlib.sha256(obj.read_bytes()).hexdigest()}.o"
    if not by_sha.exists():
        by_sha.parent.mkdir(exist_ok=True)
        shutil.copyfile(obj, by_sha)
    return obj


def _errors(stderr: str) -> list[str]:
    """The compiler's error lines (the kernel headers' many warnings left out)."""
    lines = stderr.splitlines()
    picked = [line for line in lines if " error: " in line or "error:" in line.split(" ")[0:2][-1:]]
    picked = picked or [line for line in lines if "error" in line.lower()] or lines[-_ERROR_LINES:]
    return picked[:_ERROR_LINES]


def parse_value(text: str, param: Param) -> int:
    """A decimal ``text`` as the guest's u32, round(value * scale). Only finite numbers in the
    parameter's range: what its 32 bits hold, narrowed to a range its doc declares as "(LOW..HIGH)"
    (mss_adapt: "frame error rate (0..1)"). A guest event goes through here too: nan, inf or
    1e999999999 must not reach the arithmetic."""
    import re  # local: only this function may change in this module for now

    low, high = Decimal(0), Decimal(0xFFFFFFFF) / param.scale
    declared = re.search(r"\((-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)\)", param.doc)
    if declared:
        low, high = max(low, Decimal(declared[1])), min(high, Decimal(declared[2]))
    allowed = f"{param.name} takes a number from {low:f} to {high.normalize():f}" + (
        f" ({param.doc})" if param.doc else "")
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise RigError(f"{param.name} = {text!r} is not a number", allowed) from None
    if not value.is_finite():
        raise RigError(f"{param.name} = {text} is not a finite number", allowed)
    if not low <= value <= high:
        raise RigError(f"{param.name} = {text} is out of range", allowed)
    return int((value * param.scale).to_integral_value())


class ComponentManager:
    def __init__(self, instrumenter: Instrumenter) -> None:
        self.instrumenter = instrumenter
        self.gdb = instrumenter.gdb
        self.kernel = instrumenter.kernel
        self.layout = instrumenter.layout

    # ---- reading the guest -----------------------------------------------------------
    def _read_table(self) -> ctab.ComponentTable | None:
        raw = self.gdb.read_memory(ctab.table_address(self.layout), ctab.HEADER_SIZE + ctab.ENTRIES * ctab.ENTRY_SIZE)
        return ctab.decode_table(raw)

    def _linked(self, entry: ctab.ComponentEntry) -> LinkedComponent:
        obj = paths.cache_dir("components", self.kernel.key) / "by-sha" / f"{entry.sha256}.o"
        if not obj.exists():
            raise RigError(f"component {entry.name} in the guest was loaded from an object this host does not "
                           f"have (sha256 {entry.sha256[:16]}...)", "unload it and load it again from here")
        return link(ComponentObject.load(obj, entry.name), entry.base, kernel_symbols(self.instrumenter.image))

    def _users(self, entry: ctab.ComponentEntry, slots: list[SlotRecord]) -> tuple[int, ...]:
        """Active splices whose patch branches into the component (read from their patch code)."""
        users = []
        in_use = [(index, record) for index, record in enumerate(slots) if record.in_use]
        areas = self.gdb.read_many([(r.patch_address, PATCH_AREA_SIZE - PATCH_CODE_OFFSET) for _, r in in_use])
        for (index, record), code in zip(in_use, areas):
            for insn in ix.Decoder(32, code, ip=record.patch_address):
                if insn.is_jmp_near or insn.is_call_near:
                    if entry.contains(insn.near_branch_target):
                        users.append(index)
                        break
                    if insn.near_branch_target == record.return_address:
                        break  # the jmp back: the patch ends here
        return tuple(users)

    def loaded(self) -> list[LoadedComponent]:
        with self.gdb.stopped():
            table = self._read_table()
            if table is None:
                return []
            slots = self.instrumenter.read_slots() if self.instrumenter.read_header() is not None else []
            return [LoadedComponent(index, entry, self._linked(entry), self._users(entry, slots))
                    for index, entry in table.loaded()]

    def find(self, name: str) -> LoadedComponent:
        for component in self.loaded():
            if component.name == name:
                return component
        names = ", ".join(c.name for c in self.loaded()) or "none"
        raise RigError(f"component {name!r} is not loaded", f"loaded: {names} (invoke components)")

    # ---- load / unload ---------------------------------------------------------------------
    def load(self, name: str) -> LoadedComponent:
        """Compile (cached), link at a free place, write it and its table entry; idempotent."""
        source = source_path(name)
        obj = ComponentObject.load(compile_component(self.kernel, source), source.stem)
        self.instrumenter.prep(install=True)  # the repository exists and its memory is reserved
        with self.gdb.stopped():
            table = self._read_table()
            fresh = table is None
            table = table or ctab.empty_table(self.layout)
            found = table.find(obj.name)
            if found is not None:
                index, entry = found
                if entry.sha256 == obj.sha256:
                    return LoadedComponent(index, entry, self._linked(entry), ())
                raise RigError(f"component {obj.name} is already loaded from a different build",
                               f"unload it first: invoke unload {obj.name}")
            size = layout_size(obj)
            base = table.allocate(size, f"component {obj.name} ({size_breakdown(obj)})")
            linked = link(obj, base, kernel_symbols(self.instrumenter.image), capacity=table.largest_gap())
            index = table.free_index()
            entry = ctab.ComponentEntry(obj.name, base, linked.size, obj.sha256)
            writes = ctab.load_writes(self.layout, table, index, entry, linked.image, fresh)
            # One verified write at a time (the entry lies inside a fresh table); the entry commits.
            apply_writes(self.gdb, self.layout, f"load component {obj.name}", [[w] for w in writes])
        return LoadedComponent(index, entry, linked, ())

    def unload(self, name: str) -> ctab.ComponentEntry:
        """Refused while a splice branches into it or a task is stopped inside it."""
        with self.gdb.stopped():
            table = self._read_table()
            found = table.find(name) if table is not None else None
            if found is None:
                names = ", ".join(e.name for _, e in table.loaded()) if table else ""
                raise RigError(f"component {name!r} is not loaded", f"loaded: {names or 'none'}")
            index, entry = found
            snap = self.instrumenter.snapshot(install=False)
            users = self._users(entry, snap.slots)
            if users:
                raise ComponentRefused("in-use", f"component {name} is still spliced in (slot(s) "
                                       f"{', '.join(map(str, users))})",
                                       f"unsplice first: invoke unsplice {users[0]}")
            self.instrumenter.check_not_busy(snap.tasks, gone=[ByteRange(entry.base, entry.size)])
            clear_entry, fill = ctab.unload_writes(self.layout, index, entry)
            apply_writes(self.gdb, self.layout, f"unload component {name}", [[clear_entry], [fill]],
                         commit=clear_entry)
        return entry

    # ---- data by name ----------------------------------------------------------------
    def _split(self, dotted: str) -> tuple[str, str]:
        component, sep, name = dotted.partition(".")
        if not sep or not component or not name:
            raise RigError(f"{dotted!r} is not COMPONENT.NAME", "for example: mss_adapt.fer")
        return component, name

    def set(self, dotted: str, value: str) -> ParamSet:
        component_name, name = self._split(dotted)
        component = self.find(component_name)
        param = component.linked.param(name)
        raw = parse_value(value, param)
        address = component.linked.symbol(param.name).address
        with self.gdb.stopped():
            previous = int.from_bytes(self.gdb.read_memory(address, 4), "little")
            write = MemoryWrite(address, raw.to_bytes(4, "little"), f"param {dotted}")
            apply_writes(self.gdb, self.layout, f"set {dotted} = {value}", [[write]])
        return ParamSet(component.name, param, address, raw, previous)

    def get(self, dotted: str) -> int:
        """A 32-bit variable of the component (a parameter or a counter), read live."""
        component_name, name = self._split(dotted)
        symbol = self.find(component_name).linked.symbol(name)
        with self.gdb.stopped():
            return int.from_bytes(self.gdb.read_memory(symbol.address, 4), "little")

    def data(self, component: LoadedComponent) -> dict[str, int]:
        """Every 4-byte data symbol of the component, read live."""
        symbols = [s for s in component.linked.symbols.values() if s.kind == "OBJECT" and s.size == 4]
        with self.gdb.stopped():
            values = self.gdb.read_many([(s.address, 4) for s in symbols])
        return {s.name: int.from_bytes(v, "little") for s, v in zip(symbols, values)}

    # ---- splicing to a component -----------------------------------------------------------
    def splice(self, function: str, component: str, mode: Mode = Mode.TRAP,
               policy: Policy | None = None, offset: int | None = None) -> tuple[LoadedComponent, SpliceResult]:
        """Load the component if needed and splice ``function`` to its declared hook."""
        source = source_path(component)
        obj = ComponentObject.load(compile_component(self.kernel, source), source.stem)
        find_hook(obj.name, obj.hooks, function)  # refuse before loading anything
        loaded = self.load(component)
        hook = loaded.linked.hook_for(function)
        kind = PatchKind.REPLACE if hook.kind == "replace" else PatchKind.WRAP
        target = loaded.linked.symbol(hook.entry).address
        result = self.instrumenter.splice(function, mode=mode, policy=policy, offset=offset, patch_kind=kind,
                                  call_target=target)
        return loaded, result
