"""Kernel components as relocatable ELF objects: read, lay out, link (pure; nothing touches the guest).

A component is one ``.o`` compiled against the kernel's headers. :func:`link` places its
allocated sections one after another at a base address in the component repository and applies
its relocations: symbols it defines resolve to their placed addresses, the others through a
``resolve`` callback (vmlinux's symbols). Only what a non-PIC i386 kernel object needs is
supported (R_386_32, R_386_PC32 and R_386_PLT32, which without a PLT is PC32); anything else is
refused by name, like an unresolved symbol.

A component declares what it offers in a ``.trapsplice`` section of NUL-separated strings (see
``rig/components/trapsplice.h``): ``replace KERNEL_FN COMPONENT_FN``, ``wrap KERNEL_FN
COMPONENT_FN`` and ``param NAME SCALE DOC`` (a 32-bit variable set from the host as
``round(value * SCALE)``). That section is read by the host and not loaded.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from rig.errors import Refused, RigError
from rig.splicer.image import KernelImage
from rig.splicer.sections import freed_after_boot

META_SECTION = ".trapsplice"
SECTION_ALIGN = 16
R_386_NAMES = {0: "R_386_NONE", 1: "R_386_32", 2: "R_386_PC32", 3: "R_386_GOT32", 4: "R_386_PLT32",
               5: "R_386_COPY", 6: "R_386_GLOB_DAT", 7: "R_386_JMP_SLOT", 8: "R_386_RELATIVE",
               9: "R_386_GOTOFF", 10: "R_386_GOTPC", 11: "R_386_32PLT", 20: "R_386_16", 21: "R_386_PC16",
               22: "R_386_8", 23: "R_386_PC8", 41: "R_386_IRELATIVE", 43: "R_386_GOT32X"}
_ABSOLUTE, _PC_RELATIVE = 1, 2
_SUPPORTED = {1: _ABSOLUTE, 2: _PC_RELATIVE, 4: _PC_RELATIVE}


class ComponentRefused(Refused):
    """A component the loader will not load."""


@dataclass(frozen=True)
class Hook:
    kind: str             # "replace" | "wrap"
    kernel_function: str  # the function spliced
    entry: str            # the component function the splice sends it to


@dataclass(frozen=True)
class Param:
    name: str
    scale: int            # host value * scale, rounded, is what the guest variable holds
    doc: str


@dataclass(frozen=True)
class ObjSection:
    index: int
    name: str
    size: int
    align: int
    data: bytes = field(repr=False)  # zeros for NOBITS (.bss)
    executable: bool


@dataclass(frozen=True)
class ObjSymbol:
    index: int
    name: str
    section: int | str     # section index, or "SHN_UNDEF" / "SHN_ABS" / "SHN_COMMON"
    value: int
    size: int
    kind: str              # "FUNC", "OBJECT", "NOTYPE", "SECTION", ...
    bind: str


@dataclass(frozen=True)
class Relocation:
    section: int           # index of the section patched
    offset: int
    type: int
    symbol: int

    @property
    def type_name(self) -> str:
        return R_386_NAMES.get(self.type, f"R_386 type {self.type}")


@dataclass(frozen=True)
class ComponentObject:
    name: str
    path: Path
    sha256: str
    sections: tuple[ObjSection, ...]
    symbols: tuple[ObjSymbol, ...]
    relocations: tuple[Relocation, ...]
    hooks: tuple[Hook, ...]
    params: tuple[Param, ...]

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> "ComponentObject":
        raw = path.read_bytes()
        with path.open("rb") as stream:
            try:
                elf = ELFFile(stream)
            except Exception as exc:  # pyelftools raises assorted errors on garbage
                raise ComponentRefused("not-elf", f"{path.name} is not an ELF object ({exc})",
                                       "compile the component with -c") from exc
            if elf["e_type"] != "ET_REL" or elf.get_machine_arch() != "x86":
                raise ComponentRefused("not-relocatable", f"{path.name} is {elf['e_type']} for "
                                       f"{elf.get_machine_arch()}, not an i386 relocatable object",
                                       "compile with the kernel's flags (-m32) and -c, do not link")
            sections, meta = _read_sections(elf)
            symbols = _read_symbols(elf)
            relocations = _read_relocations(elf, {s.index for s in sections})
        hooks, params = _parse_meta(meta, path)
        return cls(name or path.stem, path, hashlib.sha256(raw).hexdigest(), tuple(sections), tuple(symbols),
                   tuple(relocations), hooks, params)


@dataclass(frozen=True)
class PlacedSymbol:
    name: str
    address: int
    size: int
    kind: str


@dataclass(frozen=True)
class SectionPlacement:
    name: str
    address: int
    size: int


@dataclass(frozen=True)
class LinkedComponent:
    """The component's bytes as they go into guest memory at ``base``."""

    name: str
    sha256: str
    base: int
    image: bytes = field(repr=False)
    sections: tuple[SectionPlacement, ...]
    symbols: dict[str, PlacedSymbol]
    hooks: tuple[Hook, ...]
    params: tuple[Param, ...]

    @property
    def size(self) -> int:
        return len(self.image)

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int) -> bool:
        return self.base <= address < self.end

    def hook_for(self, kernel_function: str) -> Hook:
        return find_hook(self.name, self.hooks, kernel_function)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        existing = ", ".join(f"{self.name}.{p.name}" for p in self.params) or "none"
        raise ComponentRefused("no-param", f"component {self.name} has no parameter {name!r}",
                               f"its parameters: {existing}")

    def symbol(self, name: str) -> PlacedSymbol:
        found = self.symbols.get(name)
        if found is None:
            data = ", ".join(sorted(s.name for s in self.symbols.values() if s.kind == "OBJECT")) or "none"
            raise ComponentRefused("no-symbol", f"component {self.name} has no symbol {name!r}",
                                   f"its data symbols: {data}")
        return found


def find_hook(component: str, hooks: tuple[Hook, ...], kernel_function: str) -> Hook:
    for hook in hooks:
        if hook.kernel_function == kernel_function:
            return hook
    offered = ", ".join(f"{h.kind} {h.kernel_function}" for h in hooks) or "none"
    raise ComponentRefused("no-hook", f"component {component} declares no hook for {kernel_function}",
                           f"it offers: {offered} (TRAPSPLICE_REPLACE/TRAPSPLICE_WRAP in its source)")


def layout_size(obj: ComponentObject) -> int:
    """Bytes the component occupies once placed (sections aligned, .bss included)."""
    offset = 0
    for section in obj.sections:
        offset = _align(offset, section.align) + section.size
    return _align(offset, SECTION_ALIGN)


def size_breakdown(obj: ComponentObject) -> str:
    return ", ".join(f"{s.name} {s.size}" for s in obj.sections) or "no sections"


def kernel_symbols(image: KernelImage) -> Callable[[str], int | None]:
    """``link``'s resolver for a vmlinux: a symbol's address, None when it has none; a symbol in
    memory 2.4 frees after boot (``__init``/``__initdata``) is refused by name."""
    def resolve(name: str) -> int | None:
        try:
            symbol = image.symbol(name)
        except RigError:
            return None
        if freed_after_boot(symbol.section):
            raise ComponentRefused("init-symbol", f"the component uses {name}, which lives in {symbol.section}: "
                                   "2.4 frees that memory after boot (free_initmem)",
                                   "use kernel code and data that stay (not __init/__initdata)")
        return symbol.address
    return resolve


def link(obj: ComponentObject, base: int, resolve: Callable[[str], int | None],
         capacity: int | None = None) -> LinkedComponent:
    """Place ``obj`` at ``base`` and apply its relocations; refuses with every problem named."""
    if base % SECTION_ALIGN:
        raise ValueError(f"component base {base:#x} is not {SECTION_ALIGN}-byte aligned")
    size = layout_size(obj)
    if capacity is not None and size > capacity:
        raise ComponentRefused("too-large", f"component {obj.name} needs {size} bytes ({size_breakdown(obj)}), "
                               f"the component region has {capacity} bytes free",
                               "unload other components (invoke unload NAME) or make the component smaller")
    image = bytearray(size)
    placed: dict[int, int] = {}
    offset = 0
    placements = []
    for section in obj.sections:
        offset = _align(offset, section.align)
        placed[section.index] = base + offset
        image[offset:offset + section.size] = section.data
        placements.append(SectionPlacement(section.name, base + offset, section.size))
        offset += section.size

    values, problems = _symbol_values(obj, placed, resolve)
    for rel in obj.relocations:
        mode = _SUPPORTED.get(rel.type)
        sym = obj.symbols[rel.symbol]
        where = f"{_section_name(obj, rel.section)}+{rel.offset:#x}"
        if mode is None:
            problems.append(f"unsupported relocation {rel.type_name} at {where} (symbol {sym.name or '<section>'})")
            continue
        value = values.get(rel.symbol)
        if value is None:
            continue  # unresolved: already named once in problems
        at = placed[rel.section] - base + rel.offset
        (addend,) = struct.unpack_from("<i", image, at)
        result = value + addend - (base + at if mode == _PC_RELATIVE else 0)
        struct.pack_into("<I", image, at, result & 0xFFFFFFFF)
    if problems:
        unsupported = [p for p in problems if p.startswith("unsupported")]
        reason = "unsupported-relocation" if unsupported else "unresolved-symbol"
        raise ComponentRefused(reason, f"component {obj.name} cannot be linked: " + "; ".join(problems),
                               "the kernel exports only what vmlinux defines; compile with the kernel's "
                               "flags (non-PIC) so only R_386_32/R_386_PC32 relocations appear")

    symbols = {}
    for sym in obj.symbols:
        if sym.name and isinstance(sym.section, int) and sym.section in placed and sym.kind not in ("SECTION", "FILE"):
            symbols[sym.name] = PlacedSymbol(sym.name, placed[sym.section] + sym.value, sym.size, sym.kind)
    linked = LinkedComponent(obj.name, obj.sha256, base, bytes(image), tuple(placements), symbols, obj.hooks,
                             obj.params)
    _check_declarations(linked)
    return linked


def _symbol_values(obj: ComponentObject, placed: dict[int, int],
                   resolve: Callable[[str], int | None]) -> tuple[dict[int, int], list[str]]:
    values: dict[int, int] = {}
    unresolved: list[str] = []
    problems: list[str] = []
    used = {rel.symbol for rel in obj.relocations}
    for sym in obj.symbols:
        if sym.index not in used:
            continue
        if sym.section == "SHN_UNDEF":
            address = resolve(sym.name)
            if address is None:
                unresolved.append(sym.name)
            else:
                values[sym.index] = address
        elif sym.section == "SHN_ABS":
            values[sym.index] = sym.value
        elif isinstance(sym.section, int) and sym.section in placed:
            values[sym.index] = placed[sym.section] + sym.value
        elif sym.section == "SHN_COMMON":
            problems.append(f"common symbol {sym.name} (compile with -fno-common)")
        else:
            problems.append(f"symbol {sym.name or '<section>'} lives in section {sym.section}, which is not loaded")
    if unresolved:
        problems.insert(0, "unresolved symbol(s) " + ", ".join(sorted(set(unresolved))) + " (not in vmlinux)")
    return values, problems


def _check_declarations(linked: LinkedComponent) -> None:
    for hook in linked.hooks:
        entry = linked.symbols.get(hook.entry)
        if entry is None or entry.kind != "FUNC":
            raise ComponentRefused("bad-declaration", f"component {linked.name} declares {hook.kind} "
                                   f"{hook.kernel_function} -> {hook.entry}, but defines no function {hook.entry}",
                                   "fix the TRAPSPLICE_REPLACE/TRAPSPLICE_WRAP line")
    for param in linked.params:
        var = linked.symbols.get(param.name)
        if var is None or var.size != 4:
            raise ComponentRefused("bad-declaration", f"component {linked.name} declares parameter {param.name}, "
                                   "but defines no 4-byte variable of that name",
                                   "parameters are 32-bit integers (u32/int) defined in the component")


# ---- reading the object -----------------------------------------------------------------------
def _read_sections(elf: ELFFile) -> tuple[list[ObjSection], bytes]:
    sections = []
    meta = b""
    for index, sec in enumerate(elf.iter_sections()):
        if sec.name == META_SECTION:
            meta = sec.data()
            continue
        if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
            continue
        nobits = sec["sh_type"] == "SHT_NOBITS"
        data = bytes(sec["sh_size"]) if nobits else sec.data()
        sections.append(ObjSection(index, sec.name, sec["sh_size"], max(1, sec["sh_addralign"]), data,
                                   bool(sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR)))
    return sections, meta


def _read_symbols(elf: ELFFile) -> list[ObjSymbol]:
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise ComponentRefused("no-symbols", "the component object has no symbol table", "do not strip it")
    return [ObjSymbol(index, sym.name, sym["st_shndx"], sym["st_value"], sym["st_size"],
                      sym["st_info"]["type"].removeprefix("STT_"), sym["st_info"]["bind"].removeprefix("STB_"))
            for index, sym in enumerate(symtab.iter_symbols())]


def _read_relocations(elf: ELFFile, loaded: set[int]) -> list[Relocation]:
    relocations = []
    for sec in elf.iter_sections():
        if not isinstance(sec, RelocationSection) or sec["sh_info"] not in loaded:
            continue
        if sec.is_RELA():
            raise ComponentRefused("unsupported-relocation", f"{sec.name}: RELA relocations are not i386 REL",
                                   "compile for i386 with -m32")
        relocations += [Relocation(sec["sh_info"], rel["r_offset"], rel["r_info_type"], rel["r_info_sym"])
                        for rel in sec.iter_relocations()]
    return relocations


def _parse_meta(meta: bytes, path: Path) -> tuple[tuple[Hook, ...], tuple[Param, ...]]:
    hooks, params = [], []
    for entry in meta.split(b"\0"):
        text = entry.decode("ascii", errors="replace").strip()
        if not text:
            continue
        words = text.split(maxsplit=3)
        if words[0] in ("replace", "wrap") and len(words) == 3:
            hooks.append(Hook(words[0], words[1], words[2]))
        elif words[0] == "param" and len(words) >= 3 and words[2].isdigit():
            params.append(Param(words[1], int(words[2]), words[3] if len(words) > 3 else ""))
        else:
            raise ComponentRefused("bad-declaration", f"{path.name}: cannot read the declaration {text!r}",
                                   "use the macros of rig/components/trapsplice.h")
    return tuple(hooks), tuple(params)


def _section_name(obj: ComponentObject, index: int) -> str:
    for section in obj.sections:
        if section.index == index:
            return section.name
    return f"section {index}"


def _align(value: int, align: int) -> int:
    return (value + align - 1) // align * align
