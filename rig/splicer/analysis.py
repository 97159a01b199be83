"""Preprocessing (the paper's step 1): decode a function and learn which bytes may be overwritten.

Capstone decodes the function linearly (gcc emits no data inside i386 functions, except the
6-byte file/line record 2.4's BUG() puts after ``ud2``). The result says where instructions
begin and which addresses inside the function are entered by a jump — from the function itself,
from out-of-line sections (.text.lock, .fixup), from switch jump tables, or the fault handler.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import capstone
from capstone import x86_const as x86

from rig.errors import RigError
from rig.splicer.flow import image_flow_facts
from rig.splicer.image import KernelImage, Symbol

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
_md.detail = True

_RELATIVE_GROUPS = (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL)
# 2.4.20 BUG(): "ud2; .word __LINE__; .long __FILE__" (include/asm-i386/page.h).
LINUX24_BUG_TRAILER = 6


@dataclass(frozen=True)
class Instruction:
    address: int
    size: int
    bytes: bytes
    mnemonic: str
    op_str: str
    target: int | None = None     # absolute target of a direct jmp/jcc/call/loop/jecxz
    is_relative: bool = False     # encoding depends on where the instruction sits
    is_indirect_jump: bool = False
    is_data: bool = False         # bytes that are not code (BUG() trailer)

    @property
    def end(self) -> int:
        return self.address + self.size

    def text(self) -> str:
        return f"{self.address:#010x}: {self.bytes.hex(' '):<24} {self.mnemonic} {self.op_str}".rstrip()


@dataclass(frozen=True)
class JumpTable:
    jump_address: int       # the `jmp *table(,%reg,4)`
    table_address: int
    targets: tuple[int, ...]


@dataclass
class FunctionCode:
    symbol: Symbol
    instructions: list[Instruction]
    entered_at: frozenset[int]                 # addresses inside (start, end) some branch lands on
    exception_sites: frozenset[int]            # instructions the fault handler looks up by address
    jump_tables: list[JumpTable] = field(default_factory=list)
    unresolved_indirect_jumps: list[int] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list, repr=False)
    _ending_at: dict[int, list[Instruction]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._starts = [i.address for i in self.instructions]
        self._ending_at = {}
        for insn in self.instructions:
            self._ending_at.setdefault(insn.end, []).append(insn)

    @property
    def name(self) -> str:
        return self.symbol.name

    @property
    def start(self) -> int:
        return self.symbol.address

    @property
    def end(self) -> int:
        return self.symbol.end

    def is_boundary(self, address: int) -> bool:
        i = bisect.bisect_left(self._starts, address)
        return i < len(self._starts) and self._starts[i] == address and not self.instructions[i].is_data

    def instruction_at(self, address: int) -> Instruction:
        i = bisect.bisect_left(self._starts, address)
        if i < len(self._starts) and self._starts[i] == address:
            return self.instructions[i]
        raise KeyError(address)

    def instructions_from(self, address: int) -> list[Instruction]:
        return self.instructions[bisect.bisect_left(self._starts, address):]

    def instructions_in(self, start: int, end: int) -> list[Instruction]:
        """The instructions that start in [start, end), in order."""
        return self.instructions[bisect.bisect_left(self._starts, start):bisect.bisect_left(self._starts, end)]

    def instructions_ending_at(self, address: int) -> list[Instruction]:
        """The instructions whose last byte is right before ``address``, in order."""
        return list(self._ending_at.get(address, ()))

    def listing(self, start: int | None = None, end: int | None = None) -> str:
        lo, hi = start or self.start, end or self.end
        return "\n".join(i.text() for i in self.instructions if lo <= i.address < hi)


def decode(data: bytes, address: int) -> list[Instruction]:
    """Decode bytes as a straight run of i386 instructions (no BUG trailer handling)."""
    return [_instruction(insn) for insn in _md.disasm(data, address)]


def _instruction(insn: capstone.CsInsn) -> Instruction:
    target = None
    relative = insn.group(capstone.CS_GRP_BRANCH_RELATIVE)
    indirect = False
    if any(insn.group(g) for g in _RELATIVE_GROUPS):
        op = insn.operands[0] if insn.operands else None
        if relative and op is not None and op.type == x86.X86_OP_IMM:
            target = op.imm & 0xFFFFFFFF
        elif insn.group(capstone.CS_GRP_JUMP) and op is not None:
            indirect = True
    return Instruction(insn.address, insn.size, bytes(insn.bytes), insn.mnemonic, insn.op_str,
                       target, bool(relative), indirect)


def disassemble_function(image: KernelImage, name_or_symbol: str | Symbol,
                         bug_trailer: int | None = None) -> FunctionCode:
    """Decode one function; ``bug_trailer`` = data bytes after ud2 (default: 6 on a 2.4 vmlinux)."""
    sym = name_or_symbol if isinstance(name_or_symbol, Symbol) else image.function(name_or_symbol)
    if bug_trailer is None:
        bug_trailer = LINUX24_BUG_TRAILER if _looks_like_linux24(image) else 0
    data = image.text_bytes(sym.address, sym.size)
    instructions: list[Instruction] = []
    offset = 0
    while offset < len(data):
        decoded = next(_md.disasm(data[offset:], sym.address + offset, count=1), None)
        if decoded is None:
            raise RigError(f"{sym.name}+{offset:#x} does not decode as i386 code",
                           "the function holds data or the image is not i386; pick another function")
        insn = _instruction(decoded)
        instructions.append(insn)
        offset += insn.size
        if insn.mnemonic == "ud2" and bug_trailer and offset + bug_trailer <= len(data):
            chunk = data[offset:offset + bug_trailer]
            instructions.append(Instruction(sym.address + offset, bug_trailer, chunk, ".bug", chunk.hex(),
                                            is_data=True))
            offset += bug_trailer

    inside = range(sym.address + 1, sym.end)
    facts = image_flow_facts(image)
    entered = {t for t in facts.targets if t in inside}
    entered |= {f for f in facts.fixups if f in inside}
    entered |= {i.target for i in instructions if i.target is not None and i.target in inside}

    tables: list[JumpTable] = []
    unresolved: list[int] = []
    for insn in instructions:
        if insn.is_indirect_jump:
            table = _read_jump_table(image, sym, insn)
            if table is None:
                unresolved.append(insn.address)
            else:
                tables.append(table)
                entered |= {t for t in table.targets if t in inside}
    sites = frozenset(s for s in facts.exception_sites if sym.address <= s < sym.end)
    return FunctionCode(sym, instructions, frozenset(entered), sites, tables, unresolved)


def _looks_like_linux24(image: KernelImage) -> bool:
    try:
        image.symbol("linux_banner")
    except RigError:
        return False
    return not image.relocatable


def _read_jump_table(image: KernelImage, func: Symbol, insn: Instruction) -> JumpTable | None:
    """gcc's switch: ``jmp *TABLE(,%reg,4)``; entries are absolute addresses in the function.

    The table length is not in the code; read words while they point into the function and
    stop at the next symbol. Too many entries only make the check stricter.
    """
    decoded = next(_md.disasm(insn.bytes, insn.address, count=1))
    op = decoded.operands[0]
    if op.type != x86.X86_OP_MEM or op.mem.base != 0 or op.mem.index == 0 or op.mem.scale != 4:
        return None
    table = op.mem.disp & 0xFFFFFFFF
    targets: list[int] = []
    next_symbol = min((s.address for s in image.symbols if s.address > table), default=table + 4096)
    address = table
    while address < next_symbol:
        word = image.read_u32(address)
        if word is None or not func.address <= word < func.end:
            break
        targets.append(word)
        address += 4
    if not targets:
        return None
    return JumpTable(insn.address, table, tuple(targets))
