"""Instruction lengths of an ELF file: a linear sweep over every function's bytes.

Every SHF_EXECINSTR section, swept over each function symbol's bytes (so the alignment padding
between functions is not counted), capstone in 32-bit mode.  Bytes capstone cannot decode are
skipped one at a time and counted as ``undecodable`` so the byte accounting always closes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from rig.errors import RigError

MAX_X86_LENGTH = 15
# Linux 2.4 i386 BUG() is "ud2; .word __LINE__; .long __FILE__": 6 data bytes follow every
# ud2 in kernel code; sweeping them as instructions would desynchronise the sweep.
LINUX_24_BUG_DATA_BYTES = 6

@dataclass(frozen=True)
class FunctionRange:
    """Bytes ``[start, end)`` of one function, as offsets into its section."""

    name: str
    section: str
    start: int
    end: int


@dataclass
class LengthDistribution:
    """Instruction-length counts of one ELF file (or several merged)."""

    name: str
    counts: dict[int, int] = field(default_factory=lambda: {n: 0 for n in range(1, MAX_X86_LENGTH + 1)})
    undecodable: int = 0
    inline_data: int = 0  # bytes after ud2 skipped as BUG() data, see LINUX_24_BUG_DATA_BYTES
    functions: int = 0
    function_bytes: int = 0
    section_bytes: int = 0
    compiler: str = ""

    @property
    def total_instructions(self) -> int:
        return sum(self.counts.values())

    @property
    def decoded_bytes(self) -> int:
        return sum(length * count for length, count in self.counts.items())

    def share(self, length: int) -> float:
        """Percent of instructions that are exactly ``length`` bytes."""
        total = self.total_instructions
        return 100.0 * self.counts.get(length, 0) / total if total else 0.0

    @property
    def shares(self) -> dict[int, float]:
        return {length: self.share(length) for length in self.counts}

    @property
    def share_at_least_5(self) -> float:
        """Percent of instructions long enough to hold a ``jmp rel32`` (5 bytes)."""
        total = self.total_instructions
        long_ones = sum(count for length, count in self.counts.items() if length >= 5)
        return 100.0 * long_ones / total if total else 0.0

    def merged_with(self, other: "LengthDistribution", name: str) -> "LengthDistribution":
        merged = LengthDistribution(name=name)
        for source in (self, other):
            for length, count in source.counts.items():
                merged.counts[length] = merged.counts.get(length, 0) + count
            merged.undecodable += source.undecodable
            merged.inline_data += source.inline_data
            merged.functions += source.functions
            merged.function_bytes += source.function_bytes
            merged.section_bytes += source.section_bytes
        compilers = {c for c in (self.compiler, other.compiler) if c}
        merged.compiler = "; ".join(sorted(compilers))
        return merged

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "counts": {str(k): v for k, v in sorted(self.counts.items())},
            "shares_percent": {str(k): v for k, v in sorted(self.shares.items())},
            "share_at_least_5_percent": self.share_at_least_5,
            "total_instructions": self.total_instructions,
            "undecodable_bytes": self.undecodable,
            "inline_data_bytes": self.inline_data,
            "functions": self.functions,
            "function_bytes": self.function_bytes,
            "executable_section_bytes": self.section_bytes,
            "compiler": self.compiler,
        }


def merge_all(distributions: Sequence[LengthDistribution], name: str = "all") -> LengthDistribution:
    merged = LengthDistribution(name=name)
    for dist in distributions:
        merged = merged.merged_with(dist, name)
    return merged


def _open_elf(elf_path: Path) -> tuple[object, ELFFile]:
    try:
        handle = open(elf_path, "rb")
    except OSError as exc:
        raise RigError(f"cannot read {elf_path}: {exc.strerror}",
                       "build the kernel first (invoke kernel.build) or pass an existing object file") from exc
    try:
        elf = ELFFile(handle)
    except ELFError as exc:
        handle.close()
        raise RigError(f"{elf_path} is not an ELF file ({exc})", "pass a .o or vmlinux built for i386") from exc
    if elf.get_machine_arch() != "x86":
        handle.close()
        raise RigError(f"{elf_path} is {elf.get_machine_arch()}, not i386 code",
                       "Fig. 4 is about 32-bit x86; build with -m32 / ARCH=i386")
    return handle, elf


def function_ranges(elf: ELFFile) -> list[FunctionRange]:
    """Non-overlapping byte ranges of the function symbols in executable sections.

    Aliases (same start) are kept once; a symbol starting inside the previous
    function's range is clipped so no byte is swept twice.
    """
    executable = {
        index: section
        for index, section in enumerate(elf.iter_sections())
        if section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and section["sh_type"] == "SHT_PROGBITS"
    }
    raw: list[FunctionRange] = []
    for symtab in elf.iter_sections():
        if not isinstance(symtab, SymbolTableSection) or symtab.name != ".symtab":
            continue
        for symbol in symtab.iter_symbols():
            shndx = symbol["st_shndx"]
            if symbol["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int) or shndx not in executable:
                continue
            section = executable[shndx]
            # In a .o sh_addr is 0 and st_value is an offset; in vmlinux both are addresses.
            start = symbol["st_value"] - section["sh_addr"]
            end = min(start + symbol["st_size"], section["sh_size"])
            if symbol["st_size"] > 0 and 0 <= start < end:
                raw.append(FunctionRange(symbol.name, section.name, start, end))
    ranges: list[FunctionRange] = []
    for fn in sorted(raw, key=lambda r: (r.section, r.start, -r.end)):
        if ranges and ranges[-1].section == fn.section and fn.start < ranges[-1].end:
            if fn.end <= ranges[-1].end:
                continue
            fn = FunctionRange(fn.name, fn.section, ranges[-1].end, fn.end)
        ranges.append(fn)
    return ranges


def sweep_lengths(code: bytes, address: int, disassembler: capstone.Cs,
                  ud2_data_bytes: int = 0) -> tuple[list[int], int, int]:
    """Linear sweep of one function.

    Returns the lengths of the decoded instructions, the count of bytes capstone could
    not decode (skipped one at a time) and the count of inline-data bytes skipped after
    ``ud2`` (``ud2_data_bytes`` per ud2; Linux 2.4's BUG() puts line and file there).
    """
    lengths: list[int] = []
    undecodable = 0
    inline_data = 0
    position = 0
    while position < len(code):
        progressed = False
        for _addr, size, mnemonic, _operands in disassembler.disasm_lite(code[position:], address + position):
            lengths.append(size)
            position += size
            progressed = True
            if mnemonic == "ud2" and ud2_data_bytes:
                skipped = min(ud2_data_bytes, len(code) - position)
                inline_data += skipped
                position += skipped
                break  # restart decoding after the data
        if position < len(code) and not progressed:
            # capstone stops at the first byte it cannot decode: step over it and go on.
            undecodable += 1
            position += 1
    return lengths, undecodable, inline_data


def _compiler_of(elf: ELFFile) -> str:
    comment = elf.get_section_by_name(".comment")
    if comment is None:
        return ""
    strings = {s.decode(errors="replace").strip() for s in comment.data().split(b"\0") if s.strip()}
    return "; ".join(sorted(strings))


def length_distribution(elf_path: Path | str, name: str | None = None,
                        ud2_data_bytes: int = 0) -> LengthDistribution:
    """Count instruction lengths over every function in the ELF's executable sections.

    Pass ``ud2_data_bytes=LINUX_24_BUG_DATA_BYTES`` for Linux 2.4 kernel code.
    """
    elf_path = Path(elf_path)
    handle, elf = _open_elf(elf_path)
    with handle:
        dist = LengthDistribution(name=name or elf_path.name, compiler=_compiler_of(elf))
        disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        sections = {s.name: s for s in elf.iter_sections() if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR
                    and s["sh_type"] == "SHT_PROGBITS"}
        dist.section_bytes = sum(s["sh_size"] for s in sections.values())
        data_cache: dict[str, bytes] = {}
        ranges = function_ranges(elf)
        if not ranges:
            raise RigError(f"{elf_path} has no function symbols in executable sections",
                           "use an unstripped object (the kernel build's .o files and vmlinux keep .symtab)")
        for fn in ranges:
            if fn.section not in data_cache:
                data_cache[fn.section] = sections[fn.section].data()
            code = data_cache[fn.section][fn.start:fn.end]
            lengths, skipped, data = sweep_lengths(code, sections[fn.section]["sh_addr"] + fn.start,
                                                   disassembler, ud2_data_bytes)
            for length in lengths:
                dist.counts[length] += 1
            dist.undecodable += skipped
            dist.inline_data += data
            dist.functions += 1
            dist.function_bytes += fn.end - fn.start
    return dist


