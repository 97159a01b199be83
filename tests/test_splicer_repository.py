"""Repository layout, trap handler stub, IDT gates, busy-point check."""
from __future__ import annotations

import capstone
import pytest

from rig.errors import RigError
from rig.splicer import idt
from rig.splicer.image import ByteRange
from rig.splicer.kinds import Mode, Policy
from rig.splicer.repository import (HANDLER_MAX, RepositoryLayout, SlotRecord, SpringboardRecord, decode_header, decode_slot,
                                    encode_header, encode_slot, install_writes, int3_handler_code,
                                    trap_handler_code)
from rig.splicer.stackcheck import busy_words

LAYOUT = RepositoryLayout()
_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def test_trap_handler_disassembles_to_the_intended_stub() -> None:
    code = trap_handler_code(LAYOUT)
    insns = list(_md.disasm(code, LAYOUT.handler))
    assert sum(i.size for i in insns) == len(code)
    text = [f"{i.mnemonic} {i.op_str}".strip() for i in insns]
    assert text[0] == f"inc dword ptr [{LAYOUT.handler_hits:#x}]"
    assert text[1:6] == ["push eax", "push esi", "push ecx", "push edx", "mov eax, dword ptr [esp + 0x10]"]
    assert text[6:8] == ["imul esi, eax, 0x9e3779b1", "shr esi, 0x13"]  # the home bucket: a hash of the EIP
    assert "mov dword ptr [esp + 0x10], eax" in text  # the saved EIP is replaced
    assert text[-10:] == ["pop edx", "pop ecx", "pop esi", "pop eax", "iretd",
                          "pop edx", "pop ecx", "pop esi", "pop eax", "ud2"]
    # Every branch stays inside the stub.
    for insn in insns:
        if insn.mnemonic.startswith("j"):
            assert LAYOUT.handler <= int(insn.op_str, 16) < LAYOUT.handler + len(code)


def test_header_round_trip_and_magic_check() -> None:
    header = LAYOUT.header(vector=0x81)
    assert decode_header(encode_header(header)) == header
    with pytest.raises(RigError):
        decode_header(bytes(64))


def test_slot_round_trip() -> None:
    record = SlotRecord(True, Mode.JMP, Policy.SINGLE, 3, 2, 2, 0xC0123456, 0xC0123459,
                        LAYOUT.patch_code(4), LAYOUT.counter(4), b"\x83\xec\x0c",
                        (SpringboardRecord(0xC0123470, b"\x8d\x76\x00\x90\x90"),))
    raw = encode_slot(record)
    assert decode_slot(raw) == record


def test_layout_regions_do_not_overlap() -> None:
    assert LAYOUT.handler_hits < LAYOUT.handler < LAYOUT.in_use_flag(0) < LAYOUT.table < LAYOUT.slot_record(0)
    assert LAYOUT.slot_record(LAYOUT.slots) <= LAYOUT.journal < LAYOUT.patch_area(0)
    assert LAYOUT.slots == 4096 and LAYOUT.patch_area(LAYOUT.slots) <= LAYOUT.bench_scratch < LAYOUT.base + LAYOUT.size
    assert LAYOUT.free_slot([0, 1, 3]) == 2


def test_install_writes_gate_last() -> None:
    gate = idt.make_trap_gate(LAYOUT.handler).encode()
    writes = install_writes(LAYOUT, 0x81, idt_base=0xC0300000, gate=gate)
    assert writes[-1].role == "idt-gate" and writes[-1].address == 0xC0300000 + 0x81 * 8


def test_gate_encoding_round_trip() -> None:
    gate = idt.make_trap_gate(0xC1000100)
    raw = gate.encode()
    assert raw[5] == 0x8E  # present, DPL 0, 32-bit interrupt gate
    assert idt.decode_gate(raw) == gate


def test_find_free_vector_prefers_ignore_int_vectors() -> None:
    ignore_int, other = 0xC0100200, 0xC0105000
    gates = [idt.Gate(ignore_int, idt.KERNEL_CS, 0xE, 0, True)] * 256
    gates = list(gates)
    gates[0x80] = idt.Gate(other, idt.KERNEL_CS, 0xF, 3, True)
    gates[0x81] = idt.Gate(other, idt.KERNEL_CS, 0xE, 0, True)
    table = b"".join(g.encode() for g in gates)
    assert idt.find_free_vector(table, ignore_int) == 0x20
    assert idt.find_free_vector(table, ignore_int, prefer=0x82) == 0x82
    with pytest.raises(RigError):
        idt.find_free_vector(table, 0xDEADBEEF)


def test_busy_words_only_strictly_inside() -> None:
    window = ByteRange(0xC0100010, 5)
    words = [(0xC0100010, "first byte"), (0xC0100012, "middle"), (0xC0100015, "after")]
    assert [b.origin for b in busy_words([window], words)] == ["middle"]
    assert [b.origin for b in busy_words([window], words, allow_first_byte=False)] == ["first byte", "middle"]


def test_int3_handler_chains_user_mode_and_misses_to_the_kernel() -> None:
    kernel_int3 = 0xC010A92C
    code = int3_handler_code(LAYOUT, kernel_int3)
    insns = list(_md.disasm(code, LAYOUT.int3_handler))
    assert sum(i.size for i in insns) == len(code)
    text = [f"{i.mnemonic} {i.op_str}".strip() for i in insns]
    assert text[0] == "test byte ptr [esp + 4], 3"  # saved CS: from user mode?
    assert text[1].startswith("jne ") and int(text[1].split()[1], 16) == insns[-1].address
    assert text[-1] == f"jmp {kernel_int3:#x}"      # user mode and unknown int3s: the kernel's entry
    assert text.count("iretd") == 1                 # only a found entry returns into a patch
    assert f"inc dword ptr [{LAYOUT.handler_hits:#x}]" in text
    assert LAYOUT.handler + len(trap_handler_code(LAYOUT)) <= LAYOUT.int3_handler
    assert LAYOUT.int3_handler + len(code) <= LAYOUT.handler + HANDLER_MAX
