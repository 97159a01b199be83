"""A kernel image on disk: symbols, code bytes and free padding, read with pyelftools.

Works on a linked ELF (vmlinux, or a test program linked at kernel addresses) and on a
relocatable ``.o``: there every allocated section gets a synthetic base address and the
absolute/PC-relative relocations into code are applied, so addresses behave like a linked image.
"""
from __future__ import annotations

import bisect
import difflib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from rig.errors import Refused, RigError

# Synthetic layout for relocatable objects: far from 0 so a zero word never looks like code.
_REL_BASE = 0x10000000
_R_386_32 = 1
_R_386_PC32 = 2
# Undefined (external) symbols of a relocatable object resolve here, one 16-byte slot each,
# so a call to an external function has a real target outside every function.
_EXTERN_BASE = 0x30000000


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: str  # "FUNC", "OBJECT", "NOTYPE", ...
    section: str

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    size: int
    executable: bool
    data: bytes = field(repr=False)

    @property
    def end(self) -> int:
        return self.address + self.size

    def contains(self, address: int, length: int = 1) -> bool:
        return self.address <= address and address + length <= self.end


@dataclass(frozen=True)
class ByteRange:
    """Half-open range [start, start+length) of guest addresses."""

    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.start <= address < self.end

    def overlaps(self, other: "ByteRange") -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class PaddingGap(ByteRange):
    """A free range together with the filler bytes it holds now (for undo and verification)."""

    original: bytes = b""

    def bytes_at(self, address: int, length: int) -> bytes:
        offset = address - self.start
        if offset < 0 or offset + length > self.length:
            raise ValueError(f"{length} bytes at {address:#x} are not inside this gap")
        return self.original[offset:offset + length]


class KernelImage:
    """Symbols and bytes of one ELF image; build with :meth:`load`."""

    def __init__(self, path: Path, sections: dict[str, Section], symbols: list[Symbol],
                 relocatable: bool) -> None:
        self.path = path
        self.sections = sections
        self.relocatable = relocatable
        self.symbols = sorted(symbols, key=lambda s: (s.address, -s.size, s.name))
        self._by_name: dict[str, Symbol] = {}
        for sym in self.symbols:
            # Prefer a sized function over a same-named local label or alias.
            old = self._by_name.get(sym.name)
            if old is None or (old.kind != "FUNC" and sym.kind == "FUNC"):
                self._by_name[sym.name] = sym
        self._functions = [s for s in self.symbols if s.kind == "FUNC" and s.size > 0]
        self._function_starts = [s.address for s in self._functions]
        # Static functions of one name in several files (init_once, notesize, ...) are all kept:
        # a name alone must not silently pick one of them.
        self._functions_named: dict[str, list[Symbol]] = {}
        for sym in self._functions:
            copies = self._functions_named.setdefault(sym.name, [])
            if all(copy.address != sym.address for copy in copies):  # an alias is not a second copy
                copies.append(sym)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "KernelImage":
        path = Path(path)
        if not path.is_file():
            raise RigError(f"no kernel image at {path}", "build the kernel first (invoke kernel.build)")
        with path.open("rb") as stream:
            try:
                elf = ELFFile(stream)
            except Exception as exc:  # pyelftools raises its own ELFError and struct errors
                raise RigError(f"{path} is not an ELF file ({exc})", "pass the vmlinux, not bzImage") from exc
            if elf.get_machine_arch() != "x86":
                raise RigError(f"{path} is {elf.get_machine_arch()}, not i386",
                               "build the guest kernel for i386 (ARCH=i386)")
            relocatable = elf["e_type"] == "ET_REL"
            sections, index_names = cls._read_sections(elf, relocatable)
            symbols = cls._read_symbols(elf, sections, index_names, relocatable)
            if relocatable:
                sections = cls._apply_relocations(elf, sections, index_names)
        if not symbols:
            raise RigError(f"{path} has no symbol table", "use the unstripped vmlinux from the build tree")
        return cls(path, sections, symbols, relocatable)

    @staticmethod
    def _read_sections(elf: ELFFile, relocatable: bool) -> tuple[dict[str, Section], dict[int, str]]:
        sections: dict[str, Section] = {}
        index_names: dict[int, str] = {}
        next_base = _REL_BASE
        for index, sec in enumerate(elf.iter_sections()):
            if not sec["sh_flags"] & SH_FLAGS.SHF_ALLOC or sec["sh_size"] == 0:
                continue
            if relocatable:
                align = max(16, sec["sh_addralign"])
                next_base = (next_base + align - 1) // align * align
                address = next_base
                next_base += sec["sh_size"]
            else:
                address = sec["sh_addr"]
            data = b"" if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            sections[sec.name] = Section(sec.name, address, sec["sh_size"],
                                         bool(sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR), data)
            index_names[index] = sec.name
        return sections, index_names

    @staticmethod
    def _read_symbols(elf: ELFFile, sections: dict[str, Section], index_names: dict[int, str],
                      relocatable: bool) -> list[Symbol]:
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return []
        symbols = []
        for index, sym in enumerate(symtab.iter_symbols()):
            shndx = sym["st_shndx"]
            kind = sym["st_info"]["type"]
            if relocatable and shndx == "SHN_UNDEF" and sym.name:
                symbols.append(Symbol(sym.name, _EXTERN_BASE + 16 * index, 0, "NOTYPE", "*UND*"))
                continue
            if not sym.name or not isinstance(shndx, int) or shndx not in index_names:
                continue
            if kind in ("STT_SECTION", "STT_FILE"):
                continue
            section = index_names[shndx]
            address = sym["st_value"] + (sections[section].address if relocatable else 0)
            symbols.append(Symbol(sym.name, address, sym["st_size"], kind.removeprefix("STT_"), section))
        return symbols

    @staticmethod
    def _apply_relocations(elf: ELFFile, sections: dict[str, Section],
                           index_names: dict[int, str]) -> dict[str, Section]:
        """Resolve R_386_32/PC32 against the synthetic layout (undefined symbols stay 0)."""
        symtab = elf.get_section_by_name(".symtab")
        patched = dict(sections)
        for rel_sec in elf.iter_sections():
            if not isinstance(rel_sec, RelocationSection) or rel_sec.is_RELA():
                continue
            target_name = index_names.get(rel_sec["sh_info"])
            if target_name is None:
                continue
            target = patched[target_name]
            data = bytearray(target.data)
            for rel in rel_sec.iter_relocations():
                kind = rel["r_info_type"]
                if kind not in (_R_386_32, _R_386_PC32):
                    continue
                sym_index = rel["r_info_sym"]
                sym = symtab.get_symbol(sym_index)
                shndx = sym["st_shndx"]
                if shndx == "SHN_UNDEF":
                    value = _EXTERN_BASE + 16 * sym_index
                elif isinstance(shndx, int) and shndx in index_names:
                    value = sym["st_value"] + sections[index_names[shndx]].address
                else:
                    continue
                offset = rel["r_offset"]
                (addend,) = struct.unpack_from("<i", data, offset)
                place = target.address + offset
                result = value + addend - (place if kind == _R_386_PC32 else 0)
                struct.pack_into("<I", data, offset, result & 0xFFFFFFFF)
            patched[target_name] = Section(target.name, target.address, target.size,
                                           target.executable, bytes(data))
        return patched

    # ---- symbols -------------------------------------------------------------------------
    def symbol(self, name: str) -> Symbol:
        sym = self._by_name.get(name)
        if sym is None:
            raise RigError(f"no symbol {name!r} in {self.path.name}", self._suggest(name))
        return sym

    def function(self, name: str, containing: int | None = None) -> Symbol:
        """The sized function ``name``. When several functions have that name (statics of different
        files), ``containing``, an address inside one of them, picks it; without one it is refused."""
        copies = self._functions_named.get(name, [])
        if not copies:
            raise RigError(f"no function {name!r} in {self.path.name}", self._suggest(name))
        if len(copies) == 1:
            return copies[0]  # the caller checks that ``containing`` lies inside it
        chosen = [sym for sym in copies if containing is not None and sym.address <= containing < sym.end]
        if chosen:
            return chosen[0]
        files = self._source_files()
        lines = [f"  {sym.address:#010x}  {sym.size:5} bytes  {sym.section:<10} "
                 f"{files.get((sym.name, sym.address), 'global')}" for sym in copies]
        where = "" if containing is None else f"; {containing:#x} is inside none of them"
        raise Refused("ambiguous-function",
                      f"{len(copies)} functions are named {name!r} in {self.path.name} (a static function "
                      f"may share its name with functions of other files){where}:\n" + "\n".join(lines),
                      f"pick one by an address inside it: --func {name} --addr {copies[0].address:#x}")

    def _source_files(self) -> dict[tuple[str, int], str]:
        """(name, address) -> source file of each local function, from the STT_FILE symbol that
        precedes a file's locals in the symbol table (globals follow all locals: no file)."""
        if self.relocatable:
            return {}
        files: dict[tuple[str, int], str] = {}
        with self.path.open("rb") as stream:
            symtab = ELFFile(stream).get_section_by_name(".symtab")
            current = None
            for sym in symtab.iter_symbols() if symtab is not None else ():
                kind, bind = sym["st_info"]["type"], sym["st_info"]["bind"]
                if kind == "STT_FILE":
                    current = sym.name
                elif kind == "STT_FUNC" and bind == "STB_LOCAL" and current:
                    files[(sym.name, sym["st_value"])] = current
        return files

    def _suggest(self, name: str) -> str:
        names = [s.name for s in self._functions]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        return f"did you mean: {', '.join(close)}?" if close else "check the name with `nm vmlinux`"

    def function_at(self, address: int) -> Symbol:
        """The sized function whose bytes contain ``address``."""
        i = bisect.bisect_right(self._function_starts, address) - 1
        for sym in self._functions[max(0, i - 4):i + 1][::-1]:  # aliases/nesting: look a few back
            if sym.address <= address < sym.end:
                return sym
        raise RigError(f"address {address:#x} is not inside any function of {self.path.name}",
                       "give a function name or an address inside a function's code")

    def functions_in(self, section: str) -> list[Symbol]:
        return [s for s in self._functions if s.section == section]

    # ---- bytes ---------------------------------------------------------------------------
    def section(self, name: str) -> Section:
        try:
            return self.sections[name]
        except KeyError:
            raise RigError(f"no section {name!r} in {self.path.name}",
                           f"sections: {', '.join(sorted(self.sections))}") from None

    def section_at(self, address: int) -> Section | None:
        for sec in self.sections.values():
            if sec.contains(address) and sec.data:
                return sec
        return None

    def text_bytes(self, address: int, length: int) -> bytes:
        sec = self.section_at(address)
        if sec is None or not sec.contains(address, length):
            raise RigError(f"{length} bytes at {address:#x} are not in one section with file contents",
                           "read code of a function that lives in the image")
        offset = address - sec.address
        return sec.data[offset:offset + length]

    def read_u32(self, address: int) -> int | None:
        sec = self.section_at(address)
        if sec is None or not sec.contains(address, 4):
            return None
        return struct.unpack_from("<I", sec.data, address - sec.address)[0]
