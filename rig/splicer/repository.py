"""The component repository: guest kernel memory the rig owns, and its binary layout.

Default: 4 MiB at virtual 0xC1000000 = physical 16-20 MiB, which ``mem=exactmap`` boot
parameters leave reserved (the kernel never allocates it) while 2.4 still maps it in its direct
map. Everything the host needs to know about live splices is stored here, so the guest memory,
not a host-side file, is the record of what is spliced:

    base+0x000000 header   magic "TRAPSPLC", version, size, vector, handler address, handler hits,
                           slot count, table/slot/patch addresses, patch area size
    base+0x000100 trap handler stub (interrupt gate target)
    base+0x000200 int3 handler stub (vector 3 while int3 splices exist; chains to the kernel's)
    base+0x001000 in-use flags, one byte per slot (an index of the slot table: a reader fetches only
                  the live records; the records stay the truth)
    base+0x002000 dispatch table (rig.splicer.dispatch): BUCKETS (key, patch) u32 pairs, open
                  addressing on the trapping EIP; a trap or int3 splice through the shared handlers
                  holds one bucket, named in its slot record
    base+0x012000 slot table: one SLOT_RECORD_SIZE record per slot (DEFAULT_SLOTS = 4096)
    base+0x092000 write journal (rig.splicer.journal): the open transaction, if a rig process died in one
    base+0x100000 patch areas: PATCH_AREA_SIZE each; hit counter at +0, code at +PATCH_CODE_OFFSET
    base+0x200000 bench scratch (BENCH_SCRATCH_*): the benchmarks' floor code and samples, never
                  used by splices; rig.bench lays it out and clears it after a run
    base+0x300000 component table (rig.splicer.component_table): which components are loaded where
    base+0x301000 component region: loaded components' code and data, to the end of the repository

The header keeps no "slots in use" count: it would duplicate the in-use flags of the slot
records and could go stale if an apply is interrupted; count in-use records instead.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import iced_x86 as ix

from rig.errors import RigError
from rig.splicer import dispatch
from rig.splicer.journal import JOURNAL_OFFSET, JOURNAL_SIZE
from rig.splicer.memory import MemoryWrite

MAGIC = b"TRAPSPLC"
VERSION = 2                   # 2: 4096 slots, hashed dispatch (1: 128 slots, a scanned table)
DEFAULT_BASE = 0xC1000000
DEFAULT_SIZE = 4 << 20
HANDLER_OFFSET = 0x100
INT3_HANDLER_OFFSET = 0x200
HANDLER_MAX = 0x200           # both stubs: code a vCPU may be dispatching a splice in
IN_USE_OFFSET = 0x1000        # one byte per slot, 1 = in use
TABLE_OFFSET = 0x2000
SLOT_TABLE_OFFSET = TABLE_OFFSET + dispatch.BUCKETS * dispatch.ENTRY.size
SLOT_RECORD_SIZE = 128
DEFAULT_SLOTS = 4096
PATCH_OFFSET = 0x100000
PATCH_AREA_SIZE = 256
PATCH_CODE_OFFSET = 16
VECTOR_STUB_OFFSET = 4        # between the hit counter and the code: 8 bytes of own-vector stub
FREE_KEY = dispatch.FREE
MAX_ORIGINAL = 16
MAX_SPRINGBOARDS = 6
SPRINGBOARD_MAX_BYTES = 7
BENCH_SCRATCH_OFFSET = PATCH_OFFSET + DEFAULT_SLOTS * PATCH_AREA_SIZE
BENCH_SCRATCH_SIZE = 0x100000
COMPONENT_TABLE_OFFSET = BENCH_SCRATCH_OFFSET + BENCH_SCRATCH_SIZE
COMPONENT_TABLE_SIZE = 0x1000
COMPONENT_REGION_OFFSET = COMPONENT_TABLE_OFFSET + COMPONENT_TABLE_SIZE
assert IN_USE_OFFSET + DEFAULT_SLOTS <= TABLE_OFFSET
assert SLOT_TABLE_OFFSET + DEFAULT_SLOTS * SLOT_RECORD_SIZE <= JOURNAL_OFFSET
assert JOURNAL_OFFSET + JOURNAL_SIZE <= PATCH_OFFSET
assert COMPONENT_REGION_OFFSET < DEFAULT_SIZE

_HEADER = struct.Struct("<8sIIIIIIIIII")
HEADER_HITS_OFFSET = 8 + 4 * 4  # magic, version, size, vector, handler -> hits
_SLOT_HEAD = struct.Struct(f"<BBBBBBBBIIII{MAX_ORIGINAL}sH")
_SPRINGBOARD = struct.Struct(f"<IB{SPRINGBOARD_MAX_BYTES}s")


@dataclass(frozen=True)
class Header:
    vector: int
    handler: int
    handler_hits: int
    slots: int
    table: int
    slot_table: int
    patches: int
    patch_area_size: int
    size: int
    version: int = VERSION


@dataclass(frozen=True)
class SpringboardRecord:
    address: int
    original: bytes


@dataclass(frozen=True)
class SlotRecord:
    in_use: bool
    mode: int
    policy: int
    window_length: int
    branch_length: int
    hops: int
    point: int
    return_address: int
    patch_address: int
    counter_address: int
    original: bytes
    springboards: tuple[SpringboardRecord, ...] = field(default_factory=tuple)
    vector: int = 0  # trap splice with a vector of its own (no table lookup); 0: none
    bucket: int = dispatch.NO_BUCKET  # its dispatch table bucket (shared trap and int3 splices)


@dataclass(frozen=True)
class RepositoryLayout:
    base: int = DEFAULT_BASE
    size: int = DEFAULT_SIZE
    slots: int = DEFAULT_SLOTS

    def __post_init__(self) -> None:
        if not 0 < self.slots <= DEFAULT_SLOTS:
            raise RigError(f"{self.slots} slots: the layout has room for 1 to {DEFAULT_SLOTS}",
                           f"use at most {DEFAULT_SLOTS} slots")
        if self.base + COMPONENT_REGION_OFFSET > self.base + self.size:
            raise RigError(f"the layout does not fit in {self.size:#x} bytes at {self.base:#x}",
                           f"use a repository of at least {COMPONENT_REGION_OFFSET:#x} bytes")

    @property
    def handler(self) -> int:
        return self.base + HANDLER_OFFSET

    @property
    def int3_handler(self) -> int:
        return self.base + INT3_HANDLER_OFFSET

    @property
    def handler_hits(self) -> int:
        return self.base + HEADER_HITS_OFFSET

    @property
    def journal(self) -> int:
        return self.base + JOURNAL_OFFSET

    @property
    def table(self) -> int:
        return self.base + TABLE_OFFSET

    def bucket(self, index: int) -> int:
        """Where dispatch table bucket ``index`` lives."""
        if not 0 <= index < dispatch.BUCKETS:
            raise RigError(f"bucket {index} is outside 0..{dispatch.BUCKETS - 1}", "a slot record is damaged")
        return self.table + index * dispatch.ENTRY.size

    def in_use_flag(self, slot: int) -> int:
        self._check_slot(slot)
        return self.base + IN_USE_OFFSET + slot

    def slot_record(self, slot: int) -> int:
        return self.base + SLOT_TABLE_OFFSET + slot * SLOT_RECORD_SIZE

    def patch_area(self, slot: int) -> int:
        return self.base + PATCH_OFFSET + slot * PATCH_AREA_SIZE

    def counter(self, slot: int) -> int:
        return self.patch_area(slot)

    def vector_stub(self, slot: int) -> int:
        """Where a trap splice with a vector of its own has its gate point (in the patch area)."""
        return self.patch_area(slot) + VECTOR_STUB_OFFSET

    def patch_code(self, slot: int) -> int:
        return self.patch_area(slot) + PATCH_CODE_OFFSET

    @property
    def bench_scratch(self) -> int:
        """Start of the region the benchmarks own (floor code, sample arrays)."""
        return self.base + BENCH_SCRATCH_OFFSET

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size

    def free_slot(self, in_use: Iterable[int]) -> int:
        used = set(in_use)
        for slot in range(self.slots):
            if slot not in used:
                return slot
        raise RigError(f"all {self.slots} repository slots are in use", "undo a splice first")

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise RigError(f"slot {slot} is outside 0..{self.slots - 1}", "pick a free slot")

    def header(self, vector: int) -> Header:
        return Header(vector, self.handler, 0, self.slots, self.table, self.slot_record(0),
                      self.patch_area(0), PATCH_AREA_SIZE, self.size)


# ---- header and slot records ------------------------------------------------------------------
def encode_header(h: Header) -> bytes:
    return _HEADER.pack(MAGIC, h.version, h.size, h.vector, h.handler, h.handler_hits, h.slots,
                        h.table, h.slot_table, h.patches, h.patch_area_size)


def header_size() -> int:
    return _HEADER.size


def decode_header(raw: bytes) -> Header:
    if len(raw) < _HEADER.size:
        raise RigError(f"repository header needs {_HEADER.size} bytes, got {len(raw)}", None)
    (magic, version, size, vector, handler, hits, slots, table, slot_table, patches,
     patch_size) = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise RigError("no component repository in the guest (magic missing)",
                       "install the repository first (it is lost when the guest reboots)")
    if version != VERSION:
        raise RigError(f"repository version {version}, this rig speaks {VERSION}",
                       "reboot the guest to start from a clean repository")
    return Header(vector, handler, hits, slots, table, slot_table, patches, patch_size, size, version)


def encode_slot(record: SlotRecord) -> bytes:
    if len(record.original) > MAX_ORIGINAL or len(record.springboards) > MAX_SPRINGBOARDS:
        raise ValueError("slot record overflow")
    head = _SLOT_HEAD.pack(record.in_use, record.mode, record.policy, record.window_length,
                           record.branch_length, record.hops, len(record.springboards), record.vector,
                           record.point,
                           record.return_address, record.patch_address, record.counter_address,
                           record.original.ljust(MAX_ORIGINAL, b"\0"), record.bucket)
    boards = b"".join(_SPRINGBOARD.pack(sb.address, len(sb.original), sb.original)
                      for sb in record.springboards)
    return (head + boards).ljust(SLOT_RECORD_SIZE, b"\0")


def decode_slot(raw: bytes) -> SlotRecord:
    (in_use, mode, policy, window, branch, hops, n_boards, vector, point, ret, patch, counter,
     original, bucket) = _SLOT_HEAD.unpack_from(raw)
    boards = []
    for i in range(min(n_boards, MAX_SPRINGBOARDS)):
        address, length, data = _SPRINGBOARD.unpack_from(raw, _SLOT_HEAD.size + i * _SPRINGBOARD.size)
        boards.append(SpringboardRecord(address, data[:length]))
    return SlotRecord(bool(in_use), mode, policy, window, branch, hops, point, ret, patch, counter,
                      original[:window], tuple(boards), vector, bucket)


# ---- the trap handler stub --------------------------------------------------------------------
def _label(label: int, instr: ix.Instruction) -> ix.Instruction:
    instr.ip = label  # iced matches branch targets to instruction ips: a label id
    return instr


def _hash_probe(layout: RepositoryLayout, scan: int, found: int, missing: int) -> list[ix.Instruction]:
    """eax = saved EIP; esi = its home bucket (rig.splicer.dispatch.home), then linear probing: to
    ``found`` with esi at the bucket, or ``missing`` at an EMPTY one or after every bucket (edx
    counts: released buckets are never emptied, so a table may hold no EMPTY one). ecx holds the
    bucket's key."""
    mem, reg, code = ix.MemoryOperand, ix.Register, ix.Code
    key = mem(reg.NONE, reg.ESI, 8, layout.table, 4)
    return [
        ix.Instruction.create_reg_reg_u32(code.IMUL_R32_RM32_IMM32, reg.ESI, reg.EAX, dispatch.MULTIPLIER),
        ix.Instruction.create_reg_u32(code.SHR_RM32_IMM8, reg.ESI, dispatch.SHIFT),
        ix.Instruction.create_reg_u32(code.MOV_R32_IMM32, reg.EDX, dispatch.BUCKETS),
        _label(scan, ix.Instruction.create_reg_mem(code.MOV_R32_RM32, reg.ECX, key)),
        ix.Instruction.create_reg_reg(code.CMP_R32_RM32, reg.ECX, reg.EAX),
        ix.Instruction.create_branch(code.JE_REL8_32, found),
        ix.Instruction.create_reg_reg(code.TEST_RM32_R32, reg.ECX, reg.ECX),
        ix.Instruction.create_branch(code.JE_REL8_32, missing),
        ix.Instruction.create_reg(code.INC_R32, reg.ESI),
        ix.Instruction.create_reg_u32(code.AND_RM32_IMM32, reg.ESI, dispatch.BUCKETS - 1),
        ix.Instruction.create_reg(code.DEC_R32, reg.EDX),
        ix.Instruction.create_branch(code.JNE_REL8_32, scan),
        ix.Instruction.create_branch(code.JMP_REL8_32, missing),
    ]


def _encode(body: list[ix.Instruction], address: int, limit: int, what: str) -> bytes:
    encoder = ix.BlockEncoder(32)
    encoder.add_many(body)
    stub = encoder.encode(address)
    if len(stub) > limit:
        raise AssertionError(f"{what} outgrew its region")
    return stub


_SAVED = (ix.Register.EAX, ix.Register.ESI, ix.Register.ECX, ix.Register.EDX)  # what the probe clobbers
_SAVED_EIP = 4 * len(_SAVED)  # the interrupted EIP above the saved registers


def _save() -> list[ix.Instruction]:
    return [ix.Instruction.create_reg(ix.Code.PUSH_R32, r) for r in _SAVED]


def _restore(label: int | None = None) -> list[ix.Instruction]:
    pops = [ix.Instruction.create_reg(ix.Code.POP_R32, r) for r in reversed(_SAVED)]
    return [_label(label, pops[0]), *pops[1:]] if label is not None else pops


def _lookup(layout: RepositoryLayout, scan: int, found: int, missing: int) -> list[ix.Instruction]:
    """Registers saved; the saved EIP looked up; found: the saved EIP becomes the patch address."""
    mem, reg, code = ix.MemoryOperand, ix.Register, ix.Code
    return [
        *_save(),
        ix.Instruction.create_reg_mem(code.MOV_R32_RM32, reg.EAX, mem(reg.ESP, displ=_SAVED_EIP, displ_size=1)),
        *_hash_probe(layout, scan, found, missing),
        _label(found, ix.Instruction.create_reg_mem(code.MOV_R32_RM32, reg.EAX,
                                                    mem(reg.NONE, reg.ESI, 8, layout.table + 4, 4))),
        ix.Instruction.create_mem_reg(code.MOV_RM32_R32, mem(reg.ESP, displ=_SAVED_EIP, displ_size=1), reg.EAX),
    ]


def trap_handler_code(layout: RepositoryLayout) -> bytes:
    """Interrupt-gate target for the splice vector, assembled with iced-x86.

    Entry stack (kernel -> kernel, no privilege change): [esp] = EIP after ``int $n``, then CS,
    EFLAGS. The stub counts the hit, looks the EIP up in the trap table and, when found,
    replaces the saved EIP with the patch address; ``iret`` then resumes there with the
    interrupted EFLAGS (so the flags the stub clobbers do not leak). eax/esi/ecx are saved.
    Not found (cannot happen while the rig's records hold: a table entry is written before its
    point and released after it): the registers come back and ``ud2`` oopses right here, so the
    crash names the handler; returning would resume at the window's end and silently skip the
    displaced instructions (a 2-byte window has no int3 filler to stop it).
    """
    scan, found, missing = 1, 2, 3
    body = [
        ix.Instruction.create_mem(ix.Code.INC_RM32, ix.MemoryOperand(displ=layout.handler_hits, displ_size=4)),
        *_lookup(layout, scan, found, missing),
        *_restore(),
        ix.Instruction.create(ix.Code.IRETD),
        *_restore(missing),
        ix.Instruction.create(ix.Code.UD2),
    ]
    return _encode(body, layout.handler, INT3_HANDLER_OFFSET - HANDLER_OFFSET, "trap handler")


def int3_handler_code(layout: RepositoryLayout, kernel_int3: int) -> bytes:
    """Target of vector 3 while int3 splices exist: the kernel's own gate, only re-pointed here.

    Vector 3 stays what 2.4 made it (a DPL-3 trap gate: user-space debuggers use ``int3``), so
    the stub first hands every ``int3`` from user mode (saved CS with RPL 3) to the kernel's own
    ``int3`` entry unchanged. From kernel mode it looks the saved EIP (point + 1) up in the
    trap table: found, it counts the hit and ``iret``s into the patch; not found (an ``int3``
    that is not ours), it restores the registers and jumps to the kernel's entry too.
    """
    mem, reg, code = ix.MemoryOperand, ix.Register, ix.Code
    scan, found, missing, chain = 1, 2, 3, 4
    body = [
        ix.Instruction.create_mem_u32(code.TEST_RM8_IMM8, mem(reg.ESP, displ=4, displ_size=1), 3),
        ix.Instruction.create_branch(code.JNE_REL8_32, chain),
        *_lookup(layout, scan, found, missing),
        ix.Instruction.create_mem(code.INC_RM32, mem(displ=layout.handler_hits, displ_size=4)),
        *_restore(),
        ix.Instruction.create(code.IRETD),
        *_restore(missing),
        _label(chain, ix.Instruction.create_branch(code.JMP_REL32_32, kernel_int3)),
    ]
    return _encode(body, layout.int3_handler, HANDLER_MAX - (INT3_HANDLER_OFFSET - HANDLER_OFFSET), "int3 handler")


def vector_stub_code(layout: RepositoryLayout, slot: int) -> bytes:
    """Gate target of a trap splice that has an IDT vector of its own: the vector itself says
    which patch, so no table lookup: ``mov dword [esp], patch; iret`` (the saved EIP becomes the
    patch entry; iret restores the interrupted EFLAGS)."""
    mem, reg, code = ix.MemoryOperand, ix.Register, ix.Code
    body = [ix.Instruction.create_mem_u32(code.MOV_RM32_IMM32, mem(reg.ESP), layout.patch_code(slot)),
            ix.Instruction.create(code.IRETD)]
    return _encode(body, layout.vector_stub(slot), PATCH_CODE_OFFSET - VECTOR_STUB_OFFSET, "vector stub")


def install_writes(layout: RepositoryLayout, vector: int, idt_base: int | None = None,
                   gate: bytes | None = None, kernel_int3: int | None = None) -> list[MemoryWrite]:
    """Writes that set up an empty repository; the IDT gate (if given) goes last. The slot table is
    not cleared: a record counts only while its in-use flag is set, and a splice writes it whole.

    With ``kernel_int3`` (the kernel's own vector-3 entry) the int3 stub is written too; it stays
    unused until an int3 splice re-points vector 3 at it."""
    writes = [
        MemoryWrite(layout.handler, trap_handler_code(layout), "handler"),
        *([MemoryWrite(layout.int3_handler, int3_handler_code(layout, kernel_int3), "int3-handler")]
          if kernel_int3 is not None else []),
        MemoryWrite(layout.table, bytes(dispatch.BUCKETS * dispatch.ENTRY.size), "dispatch-table"),
        MemoryWrite(layout.in_use_flag(0), bytes(layout.slots), "slot-flags"),
        MemoryWrite(layout.base, encode_header(layout.header(vector)), "header"),
    ]
    if idt_base is not None and gate is not None:
        writes.append(MemoryWrite(idt_base + vector * 8, gate, "idt-gate"))
    return writes
