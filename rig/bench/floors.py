"""Kernel-mode floors for Table 1: what no jmp or trap splice can beat, measured in the guest.

Design (gates stay DPL 0, so a user-mode ``int`` still faults): a *sampler* routine lives in the
repository's bench scratch region and is called by a ``PatchKind.CALL`` jmp splice at the entry of
``sys_getpid``. Every getpid system call therefore runs it once, in kernel mode, with interrupts
off (``cli``; the patch's ``popfd`` restores IF), and it stores one sample of each floor:

``null``      ``rdtsc; mov; rdtsc`` -- the timer itself
``jmp``       a bare taken ``jmp`` to the next instruction
``jmp-far``   ``jmp rel32`` to a stub in another page and ``jmp rel32`` back: the two jumps every
              jmp splice executes (point -> patch -> resume), nothing else
``int``       ``int $floor_vector`` to a stub that only does ``iret`` (DPL-0 interrupt gate on a
              second free vector)

Each delta includes the ``mov`` between the rdtscs (as ``null`` shows). The host resets the sample
index, lets the guest run ``bench getpid N``, reads the arrays back with gdb and computes the
statistics. Scratch layout (offsets from ``layout.bench_scratch``):

    +0x0000 index (u32, samples taken), capacity (u32)
    +0x0040 iret stub (the floor vector's gate target)
    +0x0100 sampler, part 1 (bound check, null, jmp, start of jmp-far)
    +0x0200 sampler, part 2 (end of jmp-far, int, index++)
    +0x2000 far stub: jmp back to part 2 (another page than the sampler)
    +0x4000 sample arrays, one per floor, ``capacity`` u32 each
"""
from __future__ import annotations

from dataclasses import dataclass

import iced_x86 as ix

from rig.splicer.memory import MemoryWrite
from rig.splicer.repository import BENCH_SCRATCH_SIZE, RepositoryLayout

FLOORS = ("null", "jmp", "jmp-far", "int")
INDEX_OFFSET = 0x0
IRET_OFFSET = 0x40
PART1_OFFSET = 0x100
PART2_OFFSET = 0x200
FAR_STUB_OFFSET = 0x2000
ARRAYS_OFFSET = 0x4000
MAX_SAMPLES = (BENCH_SCRATCH_SIZE - ARRAYS_OFFSET) // (4 * len(FLOORS))


@dataclass(frozen=True)
class SamplerLayout:
    base: int          # layout.bench_scratch
    capacity: int

    @classmethod
    def of(cls, layout: RepositoryLayout, capacity: int) -> "SamplerLayout":
        if not 1 <= capacity <= MAX_SAMPLES:
            raise ValueError(f"capacity {capacity} outside 1..{MAX_SAMPLES}")
        return cls(layout.bench_scratch, capacity)

    @property
    def index(self) -> int:
        return self.base + INDEX_OFFSET

    @property
    def iret_stub(self) -> int:
        return self.base + IRET_OFFSET

    @property
    def entry(self) -> int:
        return self.base + PART1_OFFSET

    @property
    def part2(self) -> int:
        return self.base + PART2_OFFSET

    @property
    def far_stub(self) -> int:
        return self.base + FAR_STUB_OFFSET

    def array(self, floor: str) -> int:
        return self.base + ARRAYS_OFFSET + FLOORS.index(floor) * 4 * self.capacity


_R = ix.Register
_C = ix.Code


def _abs(address: int) -> ix.MemoryOperand:
    return ix.MemoryOperand(displ=address, displ_size=4)


def _indexed(array: int) -> ix.MemoryOperand:
    return ix.MemoryOperand(index=_R.ECX, scale=4, displ=array, displ_size=4)


def _start() -> list[ix.Instruction]:
    return [ix.Instruction.create(_C.RDTSC), ix.Instruction.create_reg_reg(_C.MOV_R32_RM32, _R.ESI, _R.EAX)]


def _stop(array: int) -> list[ix.Instruction]:
    return [ix.Instruction.create(_C.RDTSC),
            ix.Instruction.create_reg_reg(_C.SUB_R32_RM32, _R.EAX, _R.ESI),
            ix.Instruction.create_mem_reg(_C.MOV_RM32_R32, _indexed(array), _R.EAX)]


def _encode(instructions: list[ix.Instruction], address: int, room: int) -> bytes:
    encoder = ix.BlockEncoder(32)
    encoder.add_many(instructions)
    code = encoder.encode(address)
    if len(code) > room:
        raise AssertionError(f"sampler code at {address:#x} outgrew its {room} bytes")
    return code


def sampler_code(s: SamplerLayout, vector: int) -> tuple[bytes, bytes, bytes, bytes]:
    """(iret stub, part 1, part 2, far stub), assembled with iced-x86 for their addresses.

    Called with every register and EFLAGS saved by the CALL patch; clobbers eax, ecx, edx, esi.
    """
    skip, near = 1, 2  # labels
    part1 = [
        ix.Instruction.create(_C.CLI),  # no timer interrupt inside a sample
        ix.Instruction.create_reg_mem(_C.MOV_R32_RM32, _R.ECX, _abs(s.index)),
        ix.Instruction.create_reg_mem(_C.CMP_R32_RM32, _R.ECX, _abs(s.index + 4)),
        ix.Instruction.create_branch(_C.JAE_REL32_32, skip),
        *_start(), *_stop(s.array("null")),
        *_start(), ix.Instruction.create_branch(_C.JMP_REL8_32, near),
    ]
    landing = _stop(s.array("jmp"))
    landing[0].ip = near
    part1 += landing
    part1 += [*_start(), ix.Instruction.create_branch(_C.JMP_REL32_32, s.far_stub)]
    ret = ix.Instruction.create(_C.RETND)
    ret.ip = skip
    part1.append(ret)
    part2 = [
        *_stop(s.array("jmp-far")),
        *_start(), ix.Instruction.create_u32(_C.INT_IMM8, vector), *_stop(s.array("int")),
        ix.Instruction.create_mem(_C.INC_RM32, _abs(s.index)),
        ix.Instruction.create(_C.RETND),
    ]
    iret = _encode([ix.Instruction.create(_C.IRETD)], s.iret_stub, PART1_OFFSET - IRET_OFFSET)
    far = _encode([ix.Instruction.create_branch(_C.JMP_REL32_32, s.part2)], s.far_stub, 16)
    return (iret, _encode(part1, s.entry, PART2_OFFSET - PART1_OFFSET),
            _encode(part2, s.part2, 0x100), far)


def install_writes(s: SamplerLayout, vector: int) -> list[MemoryWrite]:
    """Code and a zeroed index; the caller writes the IDT gate after these and the splice last."""
    iret, part1, part2, far = sampler_code(s, vector)
    return [
        MemoryWrite(s.iret_stub, iret, "floor-iret"),
        MemoryWrite(s.entry, part1, "sampler"),
        MemoryWrite(s.part2, part2, "sampler"),
        MemoryWrite(s.far_stub, far, "far-stub"),
        MemoryWrite(s.index, reset_bytes(s), "sampler-index"),
    ]


def reset_bytes(s: SamplerLayout) -> bytes:
    """index = 0, capacity = s.capacity."""
    return (0).to_bytes(4, "little") + s.capacity.to_bytes(4, "little")


def decode_samples(s: SamplerLayout, raw: bytes, count: int) -> list[int]:
    return [int.from_bytes(raw[i * 4:i * 4 + 4], "little") for i in range(count)]
