"""32-bit IDT gate descriptors: decode, encode, and finding a vector the kernel leaves unused.

Layout (Intel SDM vol. 3, 6.11): offset[15:0], selector, zero byte, P|DPL|0|type, offset[31:16].
"""
from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from rig.errors import RigError

GATE_SIZE = 8
INTERRUPT_GATE_32 = 0xE
TRAP_GATE_32 = 0xF
SYSCALL_VECTOR = 0x80
FIRST_FREE_CANDIDATE = 0x20   # 0x00-0x1f are CPU exceptions
KERNEL_CS = 0x10              # __KERNEL_CS in 2.4 i386
_GATE = struct.Struct("<HHBBH")


@dataclass(frozen=True)
class Gate:
    offset: int
    selector: int
    gate_type: int
    dpl: int
    present: bool

    def encode(self) -> bytes:
        attributes = (0x80 if self.present else 0) | (self.dpl & 3) << 5 | (self.gate_type & 0xF)
        return _GATE.pack(self.offset & 0xFFFF, self.selector, 0, attributes, self.offset >> 16 & 0xFFFF)


def decode_gate(raw: bytes) -> Gate:
    if len(raw) != GATE_SIZE:
        raise ValueError(f"a gate descriptor is 8 bytes, got {len(raw)}")
    low, selector, _zero, attributes, high = _GATE.unpack(raw)
    return Gate(high << 16 | low, selector, attributes & 0xF, attributes >> 5 & 3, bool(attributes & 0x80))


def gate_at(idt: bytes, vector: int) -> Gate:
    return decode_gate(idt[vector * GATE_SIZE:(vector + 1) * GATE_SIZE])


def make_trap_gate(handler: int, dpl: int = 0, selector: int = KERNEL_CS) -> Gate:
    """The splice gate: an *interrupt* gate (IF cleared on entry, so the handler's table walk
    cannot be interrupted) with DPL 0, so ``int $n`` from user mode raises #GP instead."""
    return Gate(handler, selector, INTERRUPT_GATE_32, dpl, True)


def find_free_vector(idt: bytes, ignore_int_addr: int, kernel_cs: int = KERNEL_CS,
                     prefer: int | None = 0x81, exclude: Collection[int] = ()) -> int:
    """A vector whose gate still points at the kernel's default ``ignore_int`` handler: ``prefer``
    if it is free, else the lowest free one from 0x20 up (CPU exceptions, the system call vector
    and ``exclude`` are never taken)."""
    count = len(idt) // GATE_SIZE

    def free(vector: int) -> bool:
        if vector < FIRST_FREE_CANDIDATE or vector in (SYSCALL_VECTOR, *exclude) or vector >= count:
            return False
        gate = gate_at(idt, vector)
        return gate.present and gate.offset == ignore_int_addr and gate.selector == kernel_cs

    if prefer is not None and free(prefer):
        return prefer
    for vector in range(FIRST_FREE_CANDIDATE, count):
        if free(vector):
            return vector
    raise RigError("no free IDT vector: every gate from 0x20 up has a handler other than ignore_int",
                   "check that ignore_int's address matches this kernel's System.map / vmlinux")
