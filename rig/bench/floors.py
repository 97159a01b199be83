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

from dataclasses import asdict, dataclass
from typing import Any

import iced_x86 as ix

from rig.bench.stats import summarize
from rig.errors import RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.instrument.transaction import apply_writes
from rig.splicer import idt
from rig.splicer.kinds import Mode, PatchKind, Policy
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


@dataclass(frozen=True)
class FloorSampler:
    """Where the sampler ran: its floor vector, entry, iret stub and the splice that called it."""

    vector: int
    sampler: int
    iret_stub: int
    hook: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FloorSamples:
    runs: dict[str, list[dict[str, int]]]  # floor -> one summary (rig.bench.stats) per run
    sampler: FloorSampler


def measure(machine: QemuMachine, instr: Instrumenter, n: int, runs: int, function: str,
            guest_timeout_s: float) -> FloorSamples:
    """Install the sampler, hook it into ``function`` (a getpid path), let the guest run
    ``bench getpid n`` ``runs`` times and read the samples back; everything undone after."""
    instr.prep()  # installs the repository (and checks its memory is reserved) if not yet there
    sampler = SamplerLayout.of(instr.layout, n)
    gdb = instr.gdb
    idt_base = instr.image.symbol("idt_table").address
    with gdb.stopped():
        table = gdb.read_memory(idt_base, 256 * idt.GATE_SIZE)
        vector = idt.find_free_vector(table, instr.image.symbol("ignore_int").address, prefer=0x82)
        old_gate = table[vector * idt.GATE_SIZE:(vector + 1) * idt.GATE_SIZE]
        gate = MemoryWrite(idt_base + vector * idt.GATE_SIZE, idt.make_trap_gate(sampler.iret_stub).encode(),
                           "floor-gate", expect=old_gate)
        apply_writes(gdb, instr.layout, "install the bench's floor sampler",
                     [install_writes(sampler, vector), [gate]])
    samples: dict[str, list[dict[str, int]]] = {floor: [] for floor in FLOORS}
    spliced = None
    try:
        spliced = instr.splice(function, mode=Mode.JMP, policy=Policy.SINGLE, patch_kind=PatchKind.CALL,
                               call_target=sampler.entry)
        for _ in range(runs):
            with gdb.stopped():
                apply_writes(gdb, instr.layout, "reset the floor sampler",
                             [[MemoryWrite(sampler.index, reset_bytes(sampler), "floor-index")]])
            machine.console.request(f"bench getpid {n}", timeout=guest_timeout_s)
            with gdb.stopped():
                taken = int.from_bytes(gdb.read_memory(sampler.index, 4), "little")
                raws = gdb.read_many([(sampler.array(f), 4 * taken) for f in FLOORS])
            if taken < n:
                raise RigError(f"the floor sampler ran {taken} times for {n} getpid calls",
                               hint="the sampler splice did not stay in place; reboot the guest")
            for floor, raw in zip(FLOORS, raws):
                samples[floor].append(summarize(decode_samples(sampler, raw, taken)))
    finally:
        if spliced is not None:
            instr.unsplice(spliced.plan.slot)
        with gdb.stopped():
            gate_back = MemoryWrite(idt_base + vector * idt.GATE_SIZE, old_gate, "floor-gate")
            apply_writes(gdb, instr.layout, "remove the bench's floor sampler",
                         [[gate_back], [MemoryWrite(sampler.base, bytes(ARRAYS_OFFSET), "floor-sampler")]],
                         commit=gate_back)
    return FloorSamples(samples, FloorSampler(vector, sampler.entry, sampler.iret_stub,
                                              f"jmp/call splice at {function}+0"))
