"""A Unicorn x86-32 machine holding the real vmlinux, to execute the rig's generated code.

The memory is the guest's 64 MiB direct map at 0xC0000000 (zero-filled), with the vmlinux
sections written at their link addresses and the component repository (0xC1000000, 4 MiB)
inside it, zero until the rig's writes fill it. The IDT at ``idt_table`` is what 2.4's
``setup_idt``/``trap_init``/``init_IRQ`` leave: every gate an interrupt gate to ``ignore_int``,
vector 3 a DPL-3 trap gate to ``int3``, 0x80 a DPL-3 trap gate to ``system_call`` and the 16
IRQ vectors 0x20.. interrupt gates to ``interrupt[i]``. A flat GDT gives ``__KERNEL_CS``
(0x10) and ``__KERNEL_DS`` (0x18), so ``iret`` reloads CS as on the guest.

Unicorn reports ``int n``/``int3`` to a hook instead of delivering them: the hook delivers
them as the CPU does from CPL 0 through a CPL-0 gate (read from the emulated IDT, push EFLAGS,
CS and the EIP after the instruction, clear TF/NT/RF, and IF for interrupt gates).

:meth:`Machine.run` executes from an address while EIP stays in a *zone* (address ranges) and
reports where it left it. A direct or indirect ``call`` that leaves the zone is a *call-out*:
its state is recorded and the callee is skipped (the return address popped), in every run
alike, so code that calls kernel functions can be compared without running the kernel.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import capstone
from unicorn import (UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INTR, UC_HOOK_MEM_UNMAPPED, UC_HOOK_MEM_WRITE,
                     UC_MEM_FETCH_UNMAPPED, UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_UNMAPPED, UC_MODE_32, Uc,
                     UcError)
from unicorn import x86_const as ux

from rig.splicer import idt
from rig.splicer.image import ByteRange, KernelImage
from rig.splicer.memory import MemoryWrite
from rig.splicer.repository import RepositoryLayout

KERNEL_CS = 0x10
KERNEL_DS = 0x18
USER_CS = 0x23
USER_DS = 0x2B

DIRECT_MAP = 0xC0000000
DIRECT_MAP_SIZE = 64 << 20          # the rig's guest has 64 MiB; all of it mapped at 0xC0000000
SCRATCH = 0xC0800000                # physical 8 MiB: ordinary RAM far above the kernel image
GDT = SCRATCH
STACK_BASE = SCRATCH + 0x2000       # an 8 KiB kernel stack, aligned as 2.4's task union
STACK_SIZE = 0x2000
STACK_TOP = STACK_BASE + STACK_SIZE
RETURN_PAGE = SCRATCH + 0x10000     # stack words point here: a `ret` leaves any zone
CODE_PAGE = SCRATCH + 0x20000       # scratch code (a foreign int3)
DATA = SCRATCH + 0x100000           # zeroed memory for register pointers
END_ADDRESS = 0xFFFFFFF0            # never reached: runs end through the hooks or the budget

FLAG_CF, FLAG_PF, FLAG_AF, FLAG_ZF, FLAG_SF = 0x1, 0x4, 0x10, 0x40, 0x80
FLAG_TF, FLAG_IF, FLAG_DF, FLAG_OF = 0x100, 0x200, 0x400, 0x800
FLAG_NT, FLAG_RF = 0x4000, 0x10000
COMPARED_FLAGS = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_IF | FLAG_DF | FLAG_OF

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_REG = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in (*GPRS, "eip", "eflags")}
_SOFTWARE_VECTORS = frozenset({3, *range(0x20, 0x100)})  # int3 and int n; 0x00-0x1f else are faults
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@dataclass(frozen=True)
class CpuState:
    """Registers at the start of a run, and the words on the stack from ESP up."""

    eax: int = 0
    ecx: int = 0
    edx: int = 0
    ebx: int = 0
    esp: int = STACK_TOP - 0x200
    ebp: int = 0
    esi: int = 0
    edi: int = 0
    eflags: int = 0x202                 # IF set, as kernel code mostly runs
    stack: tuple[int, ...] = ()


@dataclass(frozen=True)
class Callout:
    target: int
    registers: dict[str, int]
    stack: bytes                        # from ESP + 4 (above the return address) to the stack top
    stack_writes: frozenset[int]        # stack bytes written so far in the run


@dataclass
class Outcome:
    stop: str                           # "exit" | "kernel" (ignore_int or int3 reached) | "fault" | "budget"
    eip: int
    registers: dict[str, int]           # GPRs and EFLAGS (COMPARED_FLAGS only)
    stack: bytes                        # final ESP to the stack top
    stack_writes: frozenset[int]        # stack bytes the run wrote (below the entry ESP: the defined ones)
    stores: dict[int, int]              # bytes written outside the stack and the repository: final values
    callouts: list[Callout]
    entries: int                        # how often EIP was at the run's ``count_at`` address
    fault: tuple[str, int] | None       # ("read"/"write"/"fetch", address) or ("vector", n)
    deliveries: list[tuple[int, int]] = field(default_factory=list)  # (vector, saved EIP)

    def describe(self) -> str:
        regs = " ".join(f"{k}={v:#x}" for k, v in self.registers.items())
        fault = f" fault={self.fault[0]}:{self.fault[1]:#x}" if self.fault else ""
        ints = " ".join(f"int{v:#x}->{e:#x}" for v, e in self.deliveries)
        return f"{self.stop} at {self.eip:#x}{fault} [{ints}] {regs}"


@dataclass
class _Run:
    zone: Sequence[tuple[int, int]]
    count_at: int | None
    stop: str | None = None
    entries: int = 0
    last: tuple[int, int] | None = None
    fault: tuple[str, int] | None = None
    old: dict[int, int] = field(default_factory=dict)     # first value of every byte written
    deliveries: list[tuple[int, int]] = field(default_factory=list)


def segment_descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    """A GDT descriptor (Intel SDM vol. 3, 3.4.5); flags 0xC: 4 KiB granularity, 32-bit."""
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, base >> 16 & 0xFF, access,
                       flags << 4 | limit >> 16 & 0xF, base >> 24 & 0xFF)


def flat_gdt() -> bytes:
    """Null, unused, then 2.4's flat kernel code/data and user code/data (0x10, 0x18, 0x23, 0x2b)."""
    return (bytes(16) + segment_descriptor(0, 0xFFFFF, 0x9A) + segment_descriptor(0, 0xFFFFF, 0x92)
            + segment_descriptor(0, 0xFFFFF, 0xFA) + segment_descriptor(0, 0xFFFFF, 0xF2))


def kernel_idt(image: KernelImage) -> bytes:
    """The 256 gates as 2.4.20's setup_idt, trap_init and init_IRQ leave the ones that matter here."""
    ignore = idt.make_trap_gate(image.symbol("ignore_int").address).encode()  # DPL-0 interrupt gate
    gates = [ignore] * 256
    gates[3] = idt.Gate(image.symbol("int3").address, KERNEL_CS, idt.TRAP_GATE_32, 3, True).encode()
    gates[idt.SYSCALL_VECTOR] = idt.Gate(image.symbol("system_call").address, KERNEL_CS,
                                         idt.TRAP_GATE_32, 3, True).encode()
    irq_stubs = image.symbol("interrupt")
    for irq in range(irq_stubs.size // 4):
        stub = image.read_u32(irq_stubs.address + 4 * irq)
        assert stub is not None
        gates[0x20 + irq] = idt.make_trap_gate(stub).encode()
    return b"".join(gates)


class WriteMismatch(Exception):
    """A write's ``expect`` bytes are not in memory (the rig refuses and writes nothing)."""


class Machine:
    def __init__(self, image: KernelImage, layout: RepositoryLayout | None = None) -> None:
        self.image = image
        self.layout = layout or RepositoryLayout()
        self.idt_base = image.symbol("idt_table").address
        self.ignore_int = image.symbol("ignore_int").address
        self.kernel_int3 = image.symbol("int3").address
        self.kernel_entries = frozenset({self.ignore_int, self.kernel_int3})
        assert DIRECT_MAP <= self.layout.base and self.layout.base + self.layout.size <= DIRECT_MAP + DIRECT_MAP_SIZE
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.mem_map(DIRECT_MAP, DIRECT_MAP_SIZE)
        for section in image.sections.values():
            if section.data:
                self.uc.mem_write(section.address, section.data)
        self.uc.mem_write(self.idt_base, kernel_idt(image))
        self._segments()
        # A fault the run stops at stays pending in QEMU's exception state (the next two faults
        # would become #DF and a triple-fault reset): every run starts from this clean CPU context.
        self._clean = self.uc.context_save()
        self._run: _Run | None = None
        self._count = 0  # instructions executed inside the zone in this run
        self.uc.hook_add(UC_HOOK_CODE, self._on_code)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)
        self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)

    def _segments(self) -> None:
        gdt = flat_gdt()
        self.uc.mem_write(GDT, gdt)
        self.uc.reg_write(ux.UC_X86_REG_GDTR, (0, GDT, len(gdt) - 1, 0))
        self.uc.reg_write(ux.UC_X86_REG_IDTR, (0, self.idt_base, 256 * idt.GATE_SIZE - 1, 0))
        self.uc.reg_write(ux.UC_X86_REG_CS, KERNEL_CS)
        for reg in (ux.UC_X86_REG_SS, ux.UC_X86_REG_DS, ux.UC_X86_REG_ES):
            self.uc.reg_write(reg, KERNEL_DS)

    # ---- memory ----------------------------------------------------------------------------
    def read(self, address: int, length: int) -> bytes:
        return bytes(self.uc.mem_read(address, length))

    def write(self, address: int, data: bytes) -> None:
        """Write as the rig's gdb does; code translated from these bytes before is dropped (Unicorn
        keeps translated blocks across mem_write, unlike QEMU's gdb stub on the guest)."""
        self.uc.mem_write(address, data)
        if data:
            self.uc.ctl_remove_cache(address, address + len(data))

    def apply(self, writes: Iterable[MemoryWrite]) -> None:
        """All ``expect`` checks first, then the writes in order (as the rig's splice stop does)."""
        writes = list(writes)
        for w in writes:
            if w.expect is not None and self.read(w.address, len(w.expect)) != w.expect:
                raise WriteMismatch(f"{w}: expected {w.expect.hex()}, found "
                                    f"{self.read(w.address, len(w.expect)).hex()}")
        for w in writes:
            self.write(w.address, w.data)
        for w in writes:
            assert self.read(w.address, len(w.data)) == w.data, f"{w} did not read back"

    def gate(self, vector: int) -> idt.Gate:
        return idt.decode_gate(self.read(self.idt_base + vector * idt.GATE_SIZE, idt.GATE_SIZE))

    def idt_bytes(self) -> bytes:
        return self.read(self.idt_base, 256 * idt.GATE_SIZE)

    def reg(self, name: str) -> int:
        return self.uc.reg_read(_REG[name])

    # ---- running -----------------------------------------------------------------------------
    def run(self, start: int, state: CpuState, zone: Sequence[ByteRange], count_at: int | None = None,
            budget: int = 20000) -> Outcome:
        """Execute from ``start`` until EIP leaves ``zone`` (call-outs skipped), a fault, or ``budget``
        instructions. Memory the run writes outside the repository is restored afterwards; the
        repository keeps its changes (hit counters), as on the guest."""
        self._load(state)
        run = self._run = _Run([(r.start, r.end) for r in zone], count_at)
        self._count = 0
        callouts: list[Callout] = []
        eip, left = start, budget
        try:
            while True:
                run.stop = None
                try:
                    self.uc.emu_start(eip, END_ADDRESS, count=left)
                except UcError as error:
                    run.stop = "fault"
                    run.fault = run.fault or ("error", error.errno)
                left = budget - self._count
                eip = self.reg("eip")
                if run.stop is None or left <= 0:
                    run.stop = run.stop or "budget"
                    break
                if run.stop == "exit" and eip in self.kernel_entries:
                    run.stop = "kernel"
                if run.stop != "exit" or not self._called_out(eip):
                    break
                callouts.append(Callout(eip, self._registers(), self._stack(self.reg("esp") + 4),
                                        self._stack_writes(run)))
                esp = self.reg("esp")
                eip = int.from_bytes(self.read(esp, 4), "little")
                self.uc.reg_write(_REG["esp"], esp + 4)  # the callee returns at once
            return Outcome(run.stop, eip, self._registers(), self._stack(self.reg("esp")), self._stack_writes(run),
                           self._stores(run), callouts, run.entries, run.fault, run.deliveries)
        finally:
            for address, value in run.old.items():
                self.uc.mem_write(address, bytes([value]))
            self._run = None

    def _load(self, state: CpuState) -> None:
        assert STACK_BASE <= state.esp <= STACK_TOP - 4 * len(state.stack)
        self.uc.mem_write(STACK_BASE, bytes(STACK_SIZE))  # data only: no translated code to drop
        self.uc.mem_write(state.esp, struct.pack(f"<{len(state.stack)}I", *state.stack))
        self.uc.context_restore(self._clean)
        for name in GPRS:
            self.uc.reg_write(_REG[name], getattr(state, name))
        self.uc.reg_write(_REG["eflags"], state.eflags)

    def _registers(self) -> dict[str, int]:
        regs = {name: self.reg(name) for name in GPRS}
        regs["eflags"] = self.reg("eflags") & COMPARED_FLAGS
        return regs

    def _stack(self, esp: int) -> bytes:
        return self.read(esp, STACK_TOP - esp) if STACK_BASE <= esp <= STACK_TOP else b""

    @staticmethod
    def _stack_writes(run: _Run) -> frozenset[int]:
        return frozenset(a for a in run.old if STACK_BASE <= a < STACK_TOP)

    def _stores(self, run: _Run) -> dict[int, int]:
        kept = {}
        for address in run.old:
            if self.layout.contains(address) or STACK_BASE <= address < STACK_TOP:
                continue  # the rig's own counters; the stack is compared from ESP up
            kept[address] = self.read(address, 1)[0]
        return kept

    def _called_out(self, eip: int) -> bool:
        """The last instruction was a call that left the zone and pushed its own end."""
        run = self._run
        assert run is not None
        if run.last is None:
            return False
        address, size = run.last
        insn = next(_md.disasm(self.read(address, size), address, count=1), None)
        esp = self.reg("esp")
        return (insn is not None and insn.mnemonic == "call"
                and int.from_bytes(self.read(esp, 4), "little") == address + size)

    # ---- hooks -------------------------------------------------------------------------------
    def _on_code(self, uc: Uc, address: int, size: int, _data: object) -> None:
        run = self._run
        if run is None:
            return
        if not any(lo <= address < hi for lo, hi in run.zone):
            run.stop = "exit"
            uc.emu_stop()
            return
        self._count += 1
        if address == run.count_at:
            run.entries += 1
        run.last = (address, size)

    def _on_interrupt(self, uc: Uc, vector: int, _data: object) -> None:
        run = self._run
        assert run is not None
        if vector not in _SOFTWARE_VECTORS:
            run.fault = ("vector", vector)
            run.stop = "fault"
            uc.emu_stop()
            return
        return_eip = self.reg("eip")  # Unicorn reports software interrupts with EIP after the instruction
        run.deliveries.append((vector, return_eip))
        self.deliver(vector, return_eip)

    def deliver(self, vector: int, return_eip: int) -> None:
        """``int n``/``int3`` at CPL 0 through a CPL-0 gate: push EFLAGS, CS, EIP; jump to the gate."""
        gate = self.gate(vector)
        if not gate.present or gate.gate_type not in (idt.INTERRUPT_GATE_32, idt.TRAP_GATE_32) \
                or gate.selector != KERNEL_CS:
            raise AssertionError(f"vector {vector:#x}: gate {gate} cannot be delivered from CPL 0")
        eflags = self.reg("eflags")
        esp = self.reg("esp") - 12
        self.uc.mem_write(esp, struct.pack("<III", return_eip, KERNEL_CS, eflags))
        cleared = FLAG_TF | FLAG_NT | FLAG_RF | (FLAG_IF if gate.gate_type == idt.INTERRUPT_GATE_32 else 0)
        self.uc.reg_write(_REG["esp"], esp)
        self.uc.reg_write(_REG["eflags"], eflags & ~cleared)
        self.uc.reg_write(_REG["eip"], gate.offset)

    def _on_write(self, uc: Uc, _access: int, address: int, size: int, _value: int, _data: object) -> None:
        run = self._run
        if run is None:
            return
        for offset in range(size):
            byte = address + offset
            if byte not in run.old and not self.layout.contains(byte):
                run.old[byte] = uc.mem_read(byte, 1)[0]

    def _on_unmapped(self, _uc: Uc, access: int, address: int, _size: int, _value: int,
                     _data: object) -> bool:
        run = self._run
        if run is not None:
            kind = {UC_MEM_READ_UNMAPPED: "read", UC_MEM_WRITE_UNMAPPED: "write",
                    UC_MEM_FETCH_UNMAPPED: "fetch"}.get(access, str(access))
            run.fault = (kind, address)
        return False
