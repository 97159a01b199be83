"""GdbSession against a real QEMU GDB stub.

Firmware-only tests boot ``qemu-system-i386`` with no disk: SeaBIOS runs (real mode, so
linear == physical addresses) and halts in its idle loop with interrupts on, which keeps
the BIOS timer tick count at 0x46c moving while the guest runs. Guest tests boot the
rig's 2.4.20 kernel (the `kernel` fixture of tests/conftest.py).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from rig.errors import RigError
from rig.gdb import GdbCommandError, GdbSession, StubAddress
from rig.gdb.batch import RESTORE_MIN_BYTES, Batch
from rig.gdb.mi import MiResult

QEMU = "qemu-system-i386"
BIOS_TICKS = 0x46C       # BIOS data area: timer ticks since midnight, 18.2 Hz
SCRATCH = 0x600          # conventional memory between the BIOS data area and SeaBIOS' stack

pytestmark = pytest.mark.skipif(shutil.which(QEMU) is None or shutil.which("gdb") is None,
                                reason="needs qemu-system-i386 and gdb (apt-get install qemu-system-x86 gdb)")


# --- real parts --------------------------------------------------------------

def _bios_image() -> Path | None:
    """The SeaBIOS image QEMU loads by default, found through QEMU's own data directories."""
    listing = subprocess.run([QEMU, "-L", "help"], capture_output=True, text=True).stdout
    for directory in listing.split():
        candidate = Path(directory) / "bios-256k.bin"
        if candidate.is_file():
            return candidate.resolve()
    return None


def _compiled_function(tmp_path: Path) -> tuple[Path, str, bytes]:
    """An i386 object built now with gcc -m32 -O2; returns (object, function name, its bytes)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "probe.c"
    source.write_text("int probe_counter;\n"
                      "int probe_mix(int a, int b) { probe_counter += a; return (a * 33) ^ (b >> 3); }\n")
    obj = tmp_path / "probe.o"
    built = subprocess.run(["gcc", "-m32", "-O2", "-fno-pic", "-fcf-protection=none",
                            "-fno-asynchronous-unwind-tables", "-c", str(source), "-o", str(obj)],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"gcc -m32 does not work here (gcc-multilib?): {built.stderr[:200]}")
    with obj.open("rb") as handle:
        elf = ELFFile(handle)
        symbol = elf.get_section_by_name(".symtab").get_symbol_by_name("probe_mix")[0]
        text = elf.get_section_by_name(".text").data()
        code = text[symbol["st_value"]:symbol["st_value"] + symbol["st_size"]]
    assert len(code) >= 8
    return obj, "probe_mix", code


class Qemu:
    """A tiny owner for a test QEMU; always killed by the fixture."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen([QEMU, *args], stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)

    def wait_for_path(self, path: Path, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"QEMU did not create {path}: {self.log.read_text(errors='replace')}")
            time.sleep(0.02)

    def wait_for_output(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if text in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._log_file.close()


@pytest.fixture
def firmware_stub(tmp_path: Path) -> Iterator[tuple[Path, Qemu]]:
    """QEMU running only its firmware, GDB stub on a unix socket."""
    sock = tmp_path / "gdb.sock"
    bios = _bios_image()
    args = ["-nographic", "-nodefaults", "-display", "none", "-m", "16",
            "-gdb", f"unix:{sock},server,nowait"]
    if bios is not None:
        args += ["-bios", str(bios)]
    qemu = Qemu(args, tmp_path / "qemu.log")
    try:
        qemu.wait_for_path(sock)
        time.sleep(0.5)  # let SeaBIOS reach its idle loop
        yield sock, qemu
    finally:
        qemu.kill()


def _gdb_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


# --- firmware tests ------------------------------------------------------------

def test_attach_stops_guest_and_reads_registers(firmware_stub: tuple[Path, Qemu]) -> None:
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        gdb.attach(sock)
        assert gdb.is_attached and gdb.is_stopped
        regs = gdb.read_registers()
        for name in ("eax", "esp", "eip", "eflags", "cs", "ss", "ds"):
            assert name in regs
        assert regs["eflags"] & 0x2, "EFLAGS bit 1 is always set on x86"
        # The same value through a different path: gdb's expression evaluator.
        pc = gdb.command("-data-evaluate-expression $pc").payload["value"]
        assert int(pc.split()[0], 16) == regs["eip"]
        assert set(gdb.read_registers(["eip", "cs"])) == {"eip", "cs"}
        assert f"{regs['eip']:#x}" in gdb.console("info registers eip")


def test_reset_vector_matches_bios_image(firmware_stub: tuple[Path, Qemu]) -> None:
    bios = _bios_image()
    if bios is None:
        pytest.skip("QEMU's bios-256k.bin not found in its data directories")
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        gdb.attach(sock)
        # The BIOS image ends at 4 GiB and its last 64 KiB are mirrored below 1 MiB.
        tail = bios.read_bytes()[-16:]
        high, low = gdb.read_many([(0xFFFFFFF0, 16), (0xFFFF0, 16)])
        assert high == tail
        # The shadow copy below 1 MiB is RAM that SeaBIOS patches at its very last byte.
        assert low[:15] == tail[:15]
        assert tail[0] == 0xEA, "the reset vector is a far jmp"


def test_write_then_read_compiled_code(firmware_stub: tuple[Path, Qemu], tmp_path: Path) -> None:
    _, _, code = _compiled_function(tmp_path)
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        gdb.attach(sock)
        original = gdb.read_memory(SCRATCH, len(code) + 8)
        try:
            gdb.write_memory(SCRATCH, code)
            assert gdb.read_memory(SCRATCH, len(code)) == code
            # A trap splice's shape: two bytes of int $0x81 over the code, batched with a second write.
            gdb.write_many([(SCRATCH, b"\xcd\x81"), (SCRATCH + len(code), code[:4])])
            first, second = gdb.read_many([(SCRATCH, len(code)), (SCRATCH + len(code), 4)])
            assert first == b"\xcd\x81" + code[2:]
            assert second == code[:4]
        finally:
            gdb.write_memory(SCRATCH, original)
        assert gdb.read_memory(SCRATCH, len(original)) == original


def test_large_writes_go_through_restore(firmware_stub: tuple[Path, Qemu]) -> None:
    """Writes from RESTORE_MIN_BYTES up are restored from the batch's file, small ones stay MI
    writes, in queue order in one pipeline."""
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        gdb.attach(sock)
        original = gdb.read_memory(SCRATCH, 0x3000)
        big = bytes((i * 7) & 0xFF for i in range(0x2000))
        try:
            batch = gdb.batch()
            batch.write(SCRATCH, big)                              # restored
            batch.write(SCRATCH + 8, b"\x11\x22")                   # MI, lands on top of it
            batch.write(SCRATCH + 0x2000, big[:RESTORE_MIN_BYTES])  # restored: its bytes further in the file
            after = batch.read(SCRATCH, 0x2000 + RESTORE_MIN_BYTES)
            kinds = [command.split('"')[1].split()[0] if "console" in command else command.split()[0]
                     for command in batch._commands]
            batch.run()
            assert kinds == ["restore", "-data-write-memory-bytes", "restore", "-data-read-memory-bytes"]
            assert after.value == big[:8] + b"\x11\x22" + big[10:] + big[:RESTORE_MIN_BYTES]
        finally:
            gdb.write_memory(SCRATCH, original)
        assert gdb.read_memory(SCRATCH, len(original)) == original


class _WarningPipeline:
    """gdb's answer to a restore the target refused: ^done, and a warning on the log stream."""

    def __init__(self, path: Path) -> None:
        self.blob_path = path

    def commands(self, commands: list[str], timeout_s: float | None = None) -> list[MiResult]:
        return [MiResult(c, i, "done", {}, log=["warning: restore: memory write failed (errno -1).\n"])
                for i, c in enumerate(commands)]

    def require_stopped(self, action: str) -> None:
        pass

    def register_names(self) -> list[str]:
        return []


def test_refused_restore_raises(tmp_path: Path) -> None:
    batch = Batch(_WarningPipeline(tmp_path / "writes.bin"))
    batch.write(0xC1000000, bytes(RESTORE_MIN_BYTES))
    with pytest.raises(GdbCommandError, match="memory write failed"):
        batch.run()


def test_guest_runs_only_between_interrupts(firmware_stub: tuple[Path, Qemu]) -> None:
    sock, _ = firmware_stub

    def ticks(gdb: GdbSession) -> int:
        return int.from_bytes(gdb.read_memory(BIOS_TICKS, 4), "little")

    with GdbSession() as gdb:
        gdb.attach(sock)
        held = ticks(gdb)
        time.sleep(0.3)
        assert ticks(gdb) == held, "the BIOS clock moved while gdb held the guest stopped"
        gdb.cont()
        assert not gdb.is_stopped
        with pytest.raises(RigError, match="while the guest runs"):
            gdb.read_memory(BIOS_TICKS, 4)
        stalls = []
        seen = [held]
        for _ in range(5):
            time.sleep(0.15)
            with gdb.stopped():
                assert gdb.is_stopped
                seen.append(ticks(gdb))
            assert not gdb.is_stopped
            assert gdb.last_stall_s is not None
            stalls.append(gdb.last_stall_s)
        assert seen[-1] > seen[0], f"BIOS ticks never advanced while running: {seen}"
        print(f"\nstop->continue host stall: min {min(stalls) * 1e3:.2f} ms, max {max(stalls) * 1e3:.2f} ms")

        gdb.interrupt()
        with gdb.stopped():      # already stopped: nothing to continue
            pass
        assert gdb.last_stall_s is None and gdb.is_stopped


def test_stopped_continues_after_exception(firmware_stub: tuple[Path, Qemu]) -> None:
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        gdb.attach(sock)
        gdb.cont()
        with pytest.raises(ZeroDivisionError):
            with gdb.stopped():
                assert gdb.is_stopped
                _ = 1 // 0
        assert not gdb.is_stopped


def test_symbol_address_from_loaded_file(firmware_stub: tuple[Path, Qemu], tmp_path: Path) -> None:
    obj, name, _ = _compiled_function(tmp_path)
    linked = tmp_path / "probe.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x100000", "-e", name, str(obj), "-o", str(linked)],
                   check=True)
    with linked.open("rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        expected = {sym: symtab.get_symbol_by_name(sym)[0]["st_value"] for sym in (name, "probe_counter")}
    sock, _ = firmware_stub
    with GdbSession(vmlinux=linked) as gdb:
        assert gdb.symbol_address(name) == expected[name]
        assert gdb.symbol_address("probe_counter") == expected["probe_counter"]
        assert gdb.symbol_address("no_such_symbol_here") is None
        gdb.attach(sock)
        assert gdb.read_registers(["eip"])["eip"] >= 0


def test_latency_per_command(firmware_stub: tuple[Path, Qemu]) -> None:
    sock, _ = firmware_stub
    with GdbSession() as gdb:
        started = time.perf_counter()
        gdb.attach(sock)
        attach_s = time.perf_counter() - started
        rounds = 200
        started = time.perf_counter()
        for _ in range(rounds):
            gdb.read_memory(BIOS_TICKS, 4)
        single_s = (time.perf_counter() - started) / rounds
        started = time.perf_counter()
        for _ in range(rounds // 20):
            gdb.read_many([(SCRATCH + 16 * i, 16) for i in range(20)])
        batched_s = (time.perf_counter() - started) / rounds
        assert gdb.command_count >= 2 * rounds
    print(f"\nattach {attach_s * 1e3:.2f} ms; read_memory {single_s * 1e3:.3f} ms/command; "
          f"read_many {batched_s * 1e3:.3f} ms/region")


def test_tcp_stub(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    qemu = Qemu(["-nographic", "-nodefaults", "-display", "none", "-gdb", f"tcp:127.0.0.1:{port}"],
                tmp_path / "qemu.log")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "QEMU's TCP GDB stub never listened"
                time.sleep(0.05)
        with GdbSession() as gdb:
            gdb.attach(f"127.0.0.1:{port}")
            assert gdb.stub == StubAddress(host="127.0.0.1", port=port)
            assert "eip" in gdb.read_registers()
    finally:
        qemu.kill()


# --- failures say what is wrong -----------------------------------------------------

def test_missing_socket_says_guest_not_running(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    with GdbSession() as gdb:
        with pytest.raises(RigError, match="guest is not running") as caught:
            gdb.attach(sock)
        assert str(sock) in str(caught.value)
        assert not gdb.is_attached


def test_stale_socket_reports_connection_failure(tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    listener.close()  # the file stays, nobody listens: like a QEMU that died
    with GdbSession() as gdb:
        with pytest.raises(RigError, match="could not connect") as caught:
            gdb.attach(sock)
        assert str(sock) in str(caught.value)


def test_missing_gdb_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RigError) as caught:
        with GdbSession():
            pass
    assert "gdb" in str(caught.value) and "apt-get install gdb" in str(caught.value)


def test_bad_command_raises_with_gdb_message() -> None:
    with GdbSession() as gdb:
        with pytest.raises(GdbCommandError, match="-no-such-command"):
            gdb.command("-no-such-command")
        with pytest.raises(RigError, match="not attached"):
            gdb.read_memory(0, 4)


def test_no_gdb_left_behind(firmware_stub: tuple[Path, Qemu]) -> None:
    sock, qemu = firmware_stub
    with pytest.raises(RuntimeError):
        with GdbSession() as gdb:
            gdb.attach(sock)
            pid = gdb.pid
            raise RuntimeError("boom")
    assert pid is not None and not _gdb_alive(pid)

    # QEMU dies under an attached session: close() still reaps gdb.
    with GdbSession() as gdb:
        gdb.attach(sock)
        pid = gdb.pid
        qemu.kill()
    assert pid is not None and not _gdb_alive(pid)


# --- a booted 2.4.20 guest -------------------------------------------------------------

@pytest.fixture
def booted_kernel(tmp_path: Path, kernel) -> Iterator[tuple[Path, Path]]:  # noqa: ANN001 - conftest fixture
    """A 2.4.20 guest past paging setup; without root fs it panics and (panic=0) stays up."""
    bzimage, vmlinux = kernel.bzimage, kernel.vmlinux
    sock = tmp_path / "gdb.sock"
    qemu = Qemu(["-m", "64", "-nographic", "-no-reboot", "-kernel", str(bzimage),
                 "-append", "console=ttyS0 panic=0 mem=exactmap mem=640K@0 mem=15M@1M mem=44M@20M",
                 "-gdb", f"unix:{sock},server,nowait"], tmp_path / "serial.log")
    try:
        qemu.wait_for_path(sock)
        if not qemu.wait_for_output("Kernel panic", 120) and not qemu.wait_for_output("Freeing unused", 1):
            raise AssertionError(f"guest did not boot far enough:\n{qemu.log.read_text(errors='replace')[-2000:]}")
        yield sock, vmlinux
    finally:
        qemu.kill()


@pytest.mark.guest
def test_kernel_text_through_stub_matches_vmlinux(booted_kernel: tuple[Path, Path]) -> None:
    sock, vmlinux = booted_kernel
    with vmlinux.open("rb") as handle:
        elf = ELFFile(handle)
        symbol = elf.get_section_by_name(".symtab").get_symbol_by_name("tcp_sync_mss")[0]
        text = elf.get_section_by_name(".text")
        offset = symbol["st_value"] - text["sh_addr"]
        expected = text.data()[offset:offset + 16]
    with GdbSession(vmlinux=vmlinux) as gdb:
        assert gdb.symbol_address("tcp_sync_mss") == symbol["st_value"]
        gdb.attach(sock)
        assert gdb.read_registers()["cs"] == 0x10, "kernel code segment (__KERNEL_CS)"
        assert gdb.read_memory(symbol["st_value"], 16) == expected
        gdb.cont()
        with gdb.stopped():
            repository = gdb.read_memory(0xC1000000, 64)
            gdb.write_memory(0xC1000000, b"\x90\x90\xcd\x81")
            assert gdb.read_memory(0xC1000000, 4) == b"\x90\x90\xcd\x81"
            gdb.write_memory(0xC1000000, repository[:4])
        assert len(repository) == 64
        print(f"\ntcp_sync_mss via stub == vmlinux; stall {gdb.last_stall_s * 1e3:.2f} ms")


def test_memory_fast_path_gives_pygdbmi_s_record() -> None:
    from pygdbmi.gdbmiparser import parse_response

    from rig.gdb.mi import parse_memory_result

    line = ('12^done,memory=[{begin="0xc011e130",offset="0x00000000",end="0xc011e134",contents="b800e0ff"},'
            '{begin="0xc011e134",offset="0x00000000",end="0xc011e135",contents="ff"}]')
    assert parse_memory_result(line) == parse_response(line)
    assert parse_memory_result('12^done,value="0x1"') is None
    assert parse_memory_result('12^error,msg="Cannot access memory at address 0x0"') is None
