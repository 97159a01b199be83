"""Guest crash detection and decoding (rig.guest.crash).

The parser is tested on console logs captured from the real guest (tests/data/console/*.txt:
each made by writing faulting bytes into the running kernel, as the live tests below do), and
the live tests make the real 2.4.20 kernel oops, BUG and panic and decode what it printed.
The captures are kept as templates (console_capture.py): parsed as captured, and decoded as the
vmlinux being tested would have printed them.
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from console_capture import DATA, captured, rendered

from rig.errors import RigError
from rig.guest import crash as crash_mod
from rig.guest.crash import (ConsoleWatch, CrashKind, GuestCrashed, KernelCrash, console_banner, decode,
                             kernel_banner, keep_crash, last_crash, locate, parse_crashes, reads_as, render_lines)
from rig.guest.machine import QemuMachine
from rig.instrument import connect, load_image
from rig.kernel.build import KernelBuild
from rig.splicer import repository
from rig.splicer.image import KernelImage, Section, Symbol

REPOSITORY = "in the component repository (0xC1000000-0xC1400000)"
# How each capture was made: a fresh guest (TCG), bytes written through gdb, then one console command.
CAPTURES = {
    "oops-getpid-ud2.txt": "0f 0b (ud2) at sys_getpid; bench getpid 1",
    "oops-getpid-null.txt": "a1 04 00 00 00 (mov eax, [4]) at sys_getpid; bench getpid 1",
    "oops-getpid-paging.txt": "a1 00 00 00 d0 (mov eax, [0xd0000000]) at sys_getpid; bench getpid 1",
    "oops-getpid-gpf.txt": "8e d8 (mov ds, eax; eax = 0x14) at sys_getpid; bench getpid 1",
    "oops-tcp_sync_mss-ud2.txt": "0f 0b at tcp_sync_mss; tcp-mss",
    "oops-do_timer-irq.txt": "0f 0b at do_timer (the timer interrupt); ping",
    "bug-release_thread.txt": "jmp from sys_getpid to the first BUG() in .text; bench getpid 1",
    "oops-in-repository.txt": "mov eax, [4] at bench scratch+0x40, jmp there from sys_getpid; bench getpid 1",
    "panic-from-repository.txt": "push msg; call panic at bench scratch+0x40, jmp there from sys_getpid; "
                                 "bench getpid 1",
}


def only_crash(name: str, image: KernelImage | None = None) -> KernelCrash:
    """The one crash of capture ``name``: as captured, or as the build of ``image`` printed it."""
    crashes = parse_crashes(captured(name) if image is None else rendered(name, image))
    assert len(crashes) == 1, [c.headline for c in crashes]
    return crashes[0]


# ---- parsing real captured oopses ------------------------------------------------------------

def test_every_capture_is_described() -> None:
    assert sorted(path.name for path in DATA.glob("*.txt")) == sorted(CAPTURES)


def test_bare_ud2_in_sys_getpid() -> None:
    """ud2 at sys_getpid: handle_BUG reads garbage after it; the exception is 'invalid operand'."""
    crash = only_crash("oops-getpid-ud2.txt")
    assert crash.kind is CrashKind.TRAP and crash.bare_ud2
    assert (crash.trap, crash.error_code) == ("invalid operand", 0)
    assert crash.headline == "invalid operand: 0000"
    assert (crash.cs, crash.eip, crash.tainted, crash.cpu) == (0x10, 0xC011E170, "Not tainted", 0)
    assert crash.eflags == 0x287
    assert crash.registers["eax"] == 20 and crash.registers["esp"] == 0xC3FE5FC0 and crash.registers["ss"] == 0x18
    assert len(crash.registers) == 11
    assert (crash.process, crash.pid) == ("init", 1)
    assert len(crash.stack) == 16 and crash.stack[0] == 0xC010A7A7
    assert crash.call_trace == (0xC010A7A7,)
    assert crash.code[:2] == b"\x0f\x0b" and len(crash.code) == 20
    assert crash.panic == "Attempted to kill init!" and crash.died
    assert crash.panic_notes == ("Rebooting in 1 seconds",)
    assert crash.raw.startswith("kernel BUG at <bad filename>:") and crash.raw.endswith("Rebooting in 1 seconds..")
    assert "\r" not in crash.raw


def test_null_pointer_with_a_doubled_character() -> None:
    """QEMU's console log doubled a comma in this capture ("pid: 1,,"); the parse still holds."""
    crash = only_crash("oops-getpid-null.txt")
    assert crash.kind is CrashKind.NULL_POINTER and crash.fault_address == 4
    assert (crash.trap, crash.error_code) == ("Oops", 0)
    assert crash.page_tables == {"pde": 0}
    assert "(pid: 1,, stackpage" in crash.raw and (crash.process, crash.pid) == ("init", 1)
    assert crash.code[:5] == bytes.fromhex("a104000000")
    assert crash.summary() == ("Unable to handle kernel NULL pointer dereference at virtual address 00000004; "
                               "process init (pid 1); Kernel panic: Attempted to kill init!")


def test_paging_request_and_general_protection() -> None:
    paging = only_crash("oops-getpid-paging.txt")
    assert paging.kind is CrashKind.PAGING and paging.fault_address == 0xD0000000
    assert paging.headline == "Unable to handle kernel paging request at virtual address d0000000"
    gpf = only_crash("oops-getpid-gpf.txt")
    assert gpf.kind is CrashKind.TRAP and (gpf.trap, gpf.error_code) == ("general protection fault", 0x14)
    assert gpf.code[:2] == b"\x8e\xd8"  # mov ds, eax with the LDT selector 0x14 (getpid's number)


def test_call_trace_over_two_lines() -> None:
    crash = only_crash("oops-tcp_sync_mss-ud2.txt")
    assert crash.eip == 0xC01ABC70 and len(crash.call_trace) == 10
    assert crash.call_trace[0] == 0xC01AD4C6 and crash.call_trace[-1] == 0xC010A7A7
    assert len(crash.stack) == 24


def test_oops_in_an_interrupt_handler() -> None:
    crash = only_crash("oops-do_timer-irq.txt")
    assert (crash.process, crash.pid) == ("swapper", 0)
    assert crash.panic == "Aiee, killing interrupt handler!"
    assert crash.panic_notes == ("In interrupt handler - not syncing", "Rebooting in 1 seconds")
    assert len(crash.call_trace) == 11


def test_real_bug_record() -> None:
    crash = only_crash("bug-release_thread.txt")
    assert crash.kind is CrashKind.BUG and not crash.bare_ud2
    assert crash.bug_location == "process.c:543" and crash.headline == "kernel BUG at process.c:543!"
    assert crash.trap == "invalid operand"


def test_characters_the_uart_doubled() -> None:
    """QEMU's console log doubles a character now and then (its chardev logs a socket write that hit EAGAIN,
    then logs the retry); a value is repaired when only one reading is possible, else left out and named."""
    bug = only_crash("bug-release_thread.txt")
    assert "ss: 00118" in bug.raw and "ss" not in bug.registers and bug.garbled == ("ss",)
    assert "Rebooting in 1  seconds" in bug.raw and bug.panic_notes == ("Rebooting in 1 seconds",)
    text = captured("oops-getpid-null.txt")
    cut = text.index("EIP:")  # a doubled "e" beside the real "11": "c011ee170" reads either way
    glitched = parse_crashes(text[:cut] + text[cut:].replace("[<c011e170>]", "[<c011ee170>]", 1))[0]
    assert glitched.eip == 0xC011E170 and glitched.garbled == ()  # fault.c's " printing eip:" copy
    glitched = parse_crashes(text[cut:].replace("[<c011e170>]", "[<c011ee170>]", 1))[0]
    assert glitched.eip is None and glitched.garbled == ("EIP",)  # and no headline: still an oops
    assert glitched.headline == "an oops whose first line was garbled in the console log"
    assert glitched.call_trace == (0xC010A7A7,) and glitched.died
    assert set(glitched.eip_readings) == {0xC01EE170, 0xC011E170}
    panic = parse_crashes("Kernel panic: Atttempted to kill innit!\n")[0]  # a fixed message comes back exact
    assert panic.panic == "Attempted to kill init!" and reads_as("initt", "init") and not reads_as("int", "init")
    repo = only_crash("oops-in-repository.txt")
    assert "esi: ab03b9aa2" in repo.raw and repo.registers["esi"] == 0xAB03B9A2 == repo.stack[4]
    assert repo.garbled == () and repo.eip == 0xC1020040


@pytest.mark.parametrize("name", ["oops-tcp_sync_mss-ud2.txt", "oops-getpid-null.txt", "oops-do_timer-irq.txt"])
def test_any_doubled_label_character(name: str) -> None:
    """The real block with one character of its printk text doubled, every character in turn (what QEMU's
    log does); hex values and numbers are left alone (a doubled digit is only repairable sometimes)."""
    real = only_crash(name)
    lines = real.raw.split("\n")
    for row, line in enumerate(lines):
        values = {i for m in re.finditer(r"\b[0-9a-f]+\b", line) for i in range(m.start(), m.end())}
        for at in (i for i, char in enumerate(line) if i not in values and not char.isspace()):
            glitched = "\n".join(lines[:row] + [line[:at] + line[at] + line[at:]] + lines[row + 1:])
            crashes = parse_crashes(glitched)
            assert len(crashes) == 1, glitched
            crash = crashes[0]
            assert (crash.kind, crash.trap, crash.error_code, crash.fault_address) == \
                (real.kind, real.trap, real.error_code, real.fault_address), glitched
            assert (crash.eip, crash.call_trace, crash.code, crash.registers) == \
                (real.eip, real.call_trace, real.code, real.registers), glitched
            assert crash.pid == real.pid and crash.died and crash.panic_notes == real.panic_notes, glitched


def test_panic_without_an_oops() -> None:
    crash = only_crash("panic-from-repository.txt")
    assert crash.kind is CrashKind.PANIC and crash.eip is None and crash.call_trace == ()
    assert crash.panic == "trapsplice test panic" and crash.headline == "Kernel panic: trapsplice test panic"
    assert crash.raw.startswith("Kernel panic: trapsplice test panic")


def test_the_boot_itself_is_no_crash() -> None:
    for path in sorted(DATA.glob("*.txt")):
        text = captured(path.name)
        assert parse_crashes(text[:text.index("@ready")]) == [], path.name


def test_a_crash_still_being_printed() -> None:
    """Cut after the Call Trace: what arrived is parsed; the panic is not there yet."""
    text = captured("oops-tcp_sync_mss-ud2.txt")
    crash = parse_crashes(text[:text.index("Code:")])[0]
    assert crash.eip == 0xC01ABC70 and len(crash.call_trace) == 10 and crash.code == b""
    assert crash.panic is None and not crash.died


def test_two_oopses_and_unrelated_lines_between() -> None:
    """Two real blocks back to back stay two crashes; a panic far from an oops is a crash of its own."""
    first, second = captured("oops-getpid-gpf.txt"), captured("oops-getpid-paging.txt")
    oops_one = first[first.index("general protection"):first.index("Kernel panic")]
    oops_two = second[second.index("Unable to handle"):]
    crashes = parse_crashes(oops_one + oops_two)
    assert [c.kind for c in crashes] == [CrashKind.TRAP, CrashKind.PAGING]
    assert crashes[0].panic is None and crashes[1].panic == "Attempted to kill init!"
    chatter = "\n".join(f"@{i} ok pong=1" for i in range(10)) + "\n"
    panic = captured("panic-from-repository.txt")
    crashes = parse_crashes(oops_one + chatter + panic[panic.index("Kernel panic"):])
    assert [c.kind for c in crashes] == [CrashKind.TRAP, CrashKind.PANIC]


# ---- decoding --------------------------------------------------------------------------------

def _synthetic_image() -> KernelImage:
    """An entry.S-like layout: labels without an ELF size, then a sized function."""
    text = Section(".text", 0xC0100000, 0x100, True, bytes(0x100))
    symbols = [Symbol("system_call", 0xC0100010, 0, "NOTYPE", ".text"),
               Symbol("ret_from_sys_call", 0xC0100040, 0, "NOTYPE", ".text"),
               Symbol("sys_getpid", 0xC0100080, 14, "FUNC", ".text"),
               Symbol("__sys_getpid_alias", 0xC0100080, 0, "NOTYPE", ".text")]
    return KernelImage(Path("synthetic"), {".text": text}, symbols, relocatable=False)


def test_locate_like_ksymoops() -> None:
    image = _synthetic_image()
    assert str(locate(0xC0100083, image)) == "sys_getpid+0x3/0xe"
    assert str(locate(0xC0100033, image)) == "system_call+0x23/0x30"  # sized up to the next label
    assert str(locate(0xC0100090, image)) == "sys_getpid+0x10/0x80"   # past its size: up to the section end
    assert str(locate(0xC0100005, image)) == "unknown"                # before any symbol
    assert str(locate(0xD0000000, image)) == "unknown"
    layout = repository.RepositoryLayout()
    assert str(locate(layout.patch_code(2) + 3, image)) == f"{REPOSITORY}: patch area of slot 2+0x13"
    assert str(locate(layout.handler + 4, image)) == f"{REPOSITORY}: trap handler stub+0x4"
    assert str(locate(layout.bench_scratch + 0x20, image)) == f"{REPOSITORY}: bench scratch+0x20"


def test_disassembly_marks_cut_off_and_bad_bytes() -> None:
    lines = crash_mod.disassemble(only_crash("oops-tcp_sync_mss-ud2.txt").code, 0xC01ABC70)
    assert [line.text for line in lines][:2] == ["ud2", "mov edx, dword ptr [esp + 0xc]"]
    assert lines[-1].text.startswith("(cut off") and sum(len(line.data) for line in lines) == 20


def test_every_capture_renders_against_vmlinux(kernel: KernelBuild) -> None:
    """Rendered for this build, each capture reads as the same crash; only what came from vmlinux moved."""
    image = load_image(kernel.vmlinux)
    same = ("kind", "trap", "error_code", "fault_address", "cs", "registers", "process", "pid", "panic",
            "panic_notes", "garbled")
    for path in sorted(DATA.glob("*.txt")):
        was, now = only_crash(path.name), only_crash(path.name, image)
        assert [getattr(now, name) for name in same] == [getattr(was, name) for name in same], path.name
        assert (len(now.stack), len(now.call_trace), len(now.code)) == \
            (len(was.stack), len(was.call_trace), len(was.code)), path.name
        assert (now.bug_location is None) == (was.bug_location is None) and now.bare_ud2 == was.bare_ud2


def test_decode_captured_oops_against_vmlinux(kernel: KernelBuild) -> None:
    image = load_image(kernel.vmlinux)
    decoded = decode(only_crash("oops-tcp_sync_mss-ud2.txt", image), image)
    assert str(decoded.eip) == f"tcp_sync_mss+0x0/{image.function('tcp_sync_mss').size:#x}"
    names = [loc.symbol for loc in decoded.trace]
    assert names[0] == "tcp_connect" and names[-1] == "system_call"
    assert {"tcp_v4_connect", "inet_stream_connect", "sys_connect", "sys_socketcall"} <= set(names)
    assert decoded.code_changed == (0, 1)  # the ud2 written over "push esi; push ebx"
    assert decoded.image_code[0].text == "push esi"


def test_garbled_eip_is_read_by_the_code_bytes(kernel: KernelBuild) -> None:
    """An EIP the log made ambiguous ("c011ee170": c011e170 or c01ee170): vmlinux's bytes at one reading match
    the Code: line (all but the 5 bytes written over sys_getpid), at the other they do not.
    A doubled digit is ambiguous only next to a repeated one, which sys_getpid's address on another build
    need not have: the captured log's two readings are moved with sys_getpid to this build instead."""
    image = load_image(kernel.vmlinux)
    text = captured("oops-getpid-null.txt")
    text = text[text.index("Oops:"):].replace("[<c011e170>]", "[<c011ee170>]", 1)  # no fault.c copy either
    garbled = parse_crashes(text)[0]
    assert garbled.eip is None and len(garbled.eip_readings) == 2
    getpid = image.function("sys_getpid").address
    moved = tuple(reading - only_crash("oops-getpid-null.txt").eip + getpid for reading in garbled.eip_readings)
    here = only_crash("oops-getpid-null.txt", image)  # this build's Code: bytes after the 5 written ones
    assert here.eip == getpid
    crash = dataclasses.replace(here, eip=None, eip_readings=moved, garbled=garbled.garbled)
    decoded = decode(crash, image)
    assert decoded.eip_chosen and decoded.eip is not None and decoded.eip.address == getpid
    assert decoded.code_changed == (0, 1, 2, 3, 4)
    assert any("garbled in the log; the reading whose vmlinux code matches" in line for line in render_lines(decoded))


def test_decode_captured_bug_and_repository_eip(kernel: KernelBuild) -> None:
    image = load_image(kernel.vmlinux)
    bug = decode(only_crash("bug-release_thread.txt", image), image)
    assert str(bug.eip).startswith("release_thread+") and bug.code_changed == ()
    record = f"(BUG() record: line 543, file name at {_file_pointer(bug)})"
    assert [line.text for line in bug.code[:2]] == ["ud2", record]
    assert any("garbled in the console log, left out: ss" == line for line in render_lines(bug))
    repo = decode(only_crash("oops-in-repository.txt", image), image)
    # Captured under the repository layout of version 1 (bench scratch at +0x20000); the part names
    # follow the layout of this rig, so only the place in the repository is fixed.
    assert str(repo.eip).startswith(f"{REPOSITORY}: ") and repo.eip.address == 0xC1020040
    assert repo.code_changed is None
    assert repo.summary().startswith("Unable to handle kernel NULL pointer dereference at virtual address 00000004 "
                                     f"{REPOSITORY}: ")


def _file_pointer(decoded: crash_mod.DecodedCrash) -> str:
    return f"{struct.unpack_from('<I', decoded.crash.code, 4)[0]:#010x}"


def test_render_and_keep(kernel: KernelBuild, tmp_path: Path) -> None:
    image = load_image(kernel.vmlinux)
    text = rendered("oops-getpid-ud2.txt", image)
    assert console_banner(text) == kernel_banner(image) is not None  # the log as this build printed it
    decoded = decode(only_crash("oops-getpid-ud2.txt", image), image)
    getpid, (returns_to,) = image.function("sys_getpid"), decoded.crash.call_trace
    where = f"sys_getpid+0x0/{getpid.size:#x}"
    lines = render_lines(decoded, ["slot 0: trap at sys_getpid+0x0"])
    assert lines[0].startswith("invalid operand: 0000 (a ud2 with no BUG() record")
    assert f"EIP:    0010:[<{getpid.address:08x}>] {where}    (Not tainted)" in lines
    assert any(line.startswith(f"  [<{returns_to:08x}>] system_call+0x") for line in lines)
    assert any(line.endswith("ud2   <=====") for line in lines)
    assert "Kernel panic: Attempted to kill init!" in lines and "  slot 0: trap at sys_getpid+0x0" in lines
    log = tmp_path / "console.log"
    log.write_bytes(text.encode())
    record = keep_crash(log, tmp_path / "crashes", decoded, ["slot 0: trap at sys_getpid+0x0"])
    assert Path(record.log).read_bytes() == log.read_bytes()
    assert last_crash(tmp_path / "crashes") == record
    assert record.status_line().startswith(f"the last guest crashed at {record.at}: invalid operand: 0000 at "
                                           f"{where} in init (pid 1); Kernel panic: Attempted to kill init!")
    assert record.status_line().endswith(f", log: {record.log}")
    summary = json.loads(next((tmp_path / "crashes").glob("*.json")).read_text())
    assert (summary["kind"], summary["pid"], summary["splices"]) == ("trap", 1, ["slot 0: trap at sys_getpid+0x0"])
    assert last_crash(tmp_path / "nothing-here") is None


def test_watch_reads_only_what_was_appended(tmp_path: Path) -> None:
    image = _synthetic_image()  # what the watch finds does not depend on the build
    text = captured("oops-getpid-gpf.txt").encode()
    cut = text.index(b"general protection")
    log = tmp_path / "console.log"
    log.write_bytes(text[:cut])
    watch = ConsoleWatch.start(log, image, crash_dir=tmp_path / "crashes")
    watch.check(settle_s=0)  # the boot alone: nothing
    with log.open("ab") as stream:
        stream.write(text[cut:])
    with pytest.raises(GuestCrashed) as caught:
        with watch.guard():
            raise RigError("the guest console closed (QEMU exited or the socket dropped)")
    error = caught.value
    assert error.crash.trap == "general protection fault" and error.crash.died
    assert isinstance(error.__context__, RigError) and "console closed" in error.__context__.message
    assert str(last_crash(tmp_path / "crashes").log) in (error.hint or "")
    assert ConsoleWatch.start(log, image).crashes() == []  # a later command starts after it
    log.unlink()
    log.write_bytes(text[cut:])  # a new boot's log, shorter than where the watch started: read from its start
    assert [crash.trap for crash in watch.crashes()] == ["general protection fault"]


# ---- the real guest: make 2.4.20 fault, read what it printed ------------------------------------

def _jmp(source: int, target: int) -> bytes:
    return b"\xe9" + struct.pack("<i", target - (source + 5))


def _call(source: int, target: int) -> bytes:
    return b"\xe8" + struct.pack("<i", target - (source + 5))


def _bug_site(image: KernelImage) -> tuple[int, str, int]:
    """The first BUG() in .text: (its ud2, file, line) read from the record after the ud2."""
    text = image.section(".text")
    at = text.data.find(b"\x0f\x0b")
    while at >= 0:
        line, file_pointer = struct.unpack_from("<HI", text.data, at + 2)
        name = _rodata_string(image, file_pointer)
        if name is not None and name.endswith((".c", ".h")):
            return text.address + at, name, line
        at = text.data.find(b"\x0f\x0b", at + 1)
    raise AssertionError("no BUG() record in vmlinux .text")


def _rodata_string(image: KernelImage, address: int) -> str | None:
    section = image.section_at(address)
    if section is None or section.name != ".rodata":
        return None
    start = address - section.address
    return section.data[start:section.data.find(b"\0", start)].decode(errors="replace")


Writes = Callable[[KernelImage], list[tuple[int, bytes]]]


def crash_guest(machine: QemuMachine, kernel: KernelBuild, crash_dir: Path, writes: Writes,
                command: str = "bench getpid 1") -> GuestCrashed:
    """Write ``writes`` into the running kernel, send ``command`` under a ConsoleWatch, return the crash."""
    with connect(machine.config.gdb_socket, kernel) as instrumenter:
        watch = ConsoleWatch.start(machine.config.console_log, instrumenter.image, crash_dir,
                                   splices=["(test) bytes written into the kernel by hand"])
        with pytest.raises(GuestCrashed) as caught:
            with watch.guard():
                with instrumenter.gdb.stopped():
                    instrumenter.gdb.write_many(writes(instrumenter.image))
                machine.console.request(command, timeout=60)
    return caught.value


@pytest.mark.guest
def test_ud2_in_sys_getpid_kills_init(fresh_guest: QemuMachine, kernel: KernelBuild, tmp_path: Path) -> None:
    """init (pid 1) calls getpid: the oops kills it and the kernel panics."""
    def ud2(image: KernelImage) -> list[tuple[int, bytes]]:
        return [(image.function("sys_getpid").address, b"\x0f\x0b")]

    error = crash_guest(fresh_guest, kernel, tmp_path, ud2)
    decoded, image = error.decoded, load_image(kernel.vmlinux)
    assert error.crash.kind is CrashKind.TRAP and error.crash.trap == "invalid operand"
    assert str(decoded.eip) == f"sys_getpid+0x0/{image.function('sys_getpid').size:#x}"
    assert [loc.symbol for loc in decoded.trace] == ["system_call"]
    assert reads_as(error.crash.process or "", "init") and error.crash.pid == 1, error.crash.raw
    assert error.crash.panic == "Attempted to kill init!"
    assert decoded.code[0].text == "ud2" and decoded.code_changed == (0, 1)
    assert error.message.startswith("the guest died: invalid operand: 0000 at sys_getpid+0x0/")
    assert "system_call+" in error.message and "(test) bytes written into the kernel by hand" in error.message
    record = last_crash(tmp_path)
    assert record is not None and record.log in (error.hint or "")
    assert "Kernel panic: Attempted to kill init!" in Path(record.log).read_text(errors="replace")
    assert len(parse_crashes(fresh_guest.config.console_log.read_bytes().decode(errors="replace"))) == 1


@pytest.mark.guest
def test_real_bug(fresh_guest: QemuMachine, kernel: KernelBuild, tmp_path: Path) -> None:
    """sys_getpid jumps to a real BUG() (ud2 + line + file): 'kernel BUG at FILE:LINE!' as in vmlinux."""
    site, file, line = _bug_site(load_image(kernel.vmlinux))

    def jump_to_bug(image: KernelImage) -> list[tuple[int, bytes]]:
        getpid = image.function("sys_getpid").address
        return [(getpid, _jmp(getpid, site))]

    error = crash_guest(fresh_guest, kernel, tmp_path, jump_to_bug)
    image = load_image(kernel.vmlinux)
    function = image.function_at(site)
    assert error.crash.kind is CrashKind.BUG and error.crash.bug_location == f"{file}:{line}"
    assert error.crash.eip == site
    assert str(error.decoded.eip) == f"{function.name}+{site - function.address:#x}/{function.size:#x}"
    assert error.decoded.code_changed == ()  # the BUG site itself is vmlinux's own code
    assert error.decoded.trace[-1].symbol == "system_call"


@pytest.mark.guest
def test_null_dereference_deep_in_tcp(fresh_guest: QemuMachine, kernel: KernelBuild, tmp_path: Path) -> None:
    """A NULL read at tcp_sync_mss's entry, reached by connect(): a long call trace, decoded."""
    def null_read(image: KernelImage) -> list[tuple[int, bytes]]:
        return [(image.function("tcp_sync_mss").address, bytes.fromhex("a104000000"))]  # mov eax, [4]

    error = crash_guest(fresh_guest, kernel, tmp_path, null_read, command="tcp-mss")
    crash, decoded = error.crash, error.decoded
    assert crash.kind is CrashKind.NULL_POINTER and crash.fault_address == 4
    assert decoded.eip is not None and (decoded.eip.symbol, decoded.eip.offset) == ("tcp_sync_mss", 0)
    assert all(loc.region == "kernel" for loc in decoded.trace) and len(decoded.trace) > 5
    names = [loc.symbol for loc in decoded.trace]  # (these addresses have no doubled digit: always repaired)
    assert {"tcp_connect", "sys_socketcall", "system_call"} <= set(names)
    assert decoded.code[0].text == "mov eax, dword ptr [4]"


@pytest.mark.guest
def test_fault_in_repository_code(fresh_guest: QemuMachine, kernel: KernelBuild, tmp_path: Path) -> None:
    """Code in the component repository faults: its EIP is named as a place in the repository."""
    layout = repository.RepositoryLayout()
    code_at = layout.bench_scratch + 0x40

    def faulting_patch(image: KernelImage) -> list[tuple[int, bytes]]:
        getpid = image.function("sys_getpid").address
        return [(code_at, bytes.fromhex("a104000000")), (getpid, _jmp(getpid, code_at))]

    error = crash_guest(fresh_guest, kernel, tmp_path, faulting_patch)
    assert error.crash.kind is CrashKind.NULL_POINTER and error.crash.eip == code_at
    assert str(error.decoded.eip) == f"{REPOSITORY}: bench scratch+0x40"
    assert error.decoded.code_changed is None  # nothing of vmlinux to compare with
    assert error.decoded.trace[-1].symbol == "system_call"


@pytest.mark.guest
def test_panic_called_from_repository_code(fresh_guest: QemuMachine, kernel: KernelBuild, tmp_path: Path) -> None:
    """A panic with no oops before it (push message; call panic)."""
    layout = repository.RepositoryLayout()
    message, code_at = layout.bench_scratch, layout.bench_scratch + 0x40

    def call_panic(image: KernelImage) -> list[tuple[int, bytes]]:
        getpid = image.function("sys_getpid").address
        push = b"\x68" + struct.pack("<I", message)
        code = push + _call(code_at + len(push), image.function("panic").address)
        return [(message, b"trapsplice test panic\0"), (code_at, code), (getpid, _jmp(getpid, code_at))]

    error = crash_guest(fresh_guest, kernel, tmp_path, call_panic)
    assert error.crash.kind is CrashKind.PANIC and reads_as(error.crash.panic or "", "trapsplice test panic")
    assert error.decoded.eip is None and error.message.startswith("the guest died: Kernel panic: ")
