"""The guest init's line protocol: parsing of real captured lines, the initrd
build, and every command against a booted 2.4.20 guest."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pexpect
import pytest
from elftools.elf.elffile import ELFFile

from rig.errors import RigError
from rig.guest.initrd import build_init, build_initrd, initrd_inputs_digest
from rig.guest.protocol import Event, GuestCommandError, GuestConsole, ReadyInfo, Reply, parse_line

# Captured verbatim from a 2.4.20 guest's serial console (pexpect pty: \r\n endings).
CAPTURED_CONSOLE = (
    "VFS: Mounted root (ext2 filesystem) readonly.\r\n"
    "Freeing unused kernel memory: 76k freed\r\n"
    "@ready proto=1 kernel=2.4.20\r\n"
    "@1 ok n=1000 min=1256 median=2182 mean=2217 p95=2352 max=61234 tsc_overhead=68 pid=1 pid_ok=1\r\n"
    "@event netenv fer=7\r\n"
    "@2 ok\r\n"
    "@3 err unknown command 'foo' (known: ping,uname,bench,tcp-mss,user-int,netenv,help)\r\n"
    "@4 ok sysname=Linux release=2.4.20 version=#4_Thu_Nov_26_11:17:26_UTC_2026 machine=i686\r\n"
)


# --- parsing of real lines --------------------------------------------------

@pytest.fixture
def protocol_console(guest) -> GuestConsole:  # noqa: ANN001 - conftest fixture
    """The shared real guest's console (tests/conftest.py boots it)."""
    return guest.console


def test_parse_banner() -> None:
    ready = parse_line("@ready proto=1 kernel=2.4.20\r")
    assert isinstance(ready, ReadyInfo)
    assert (ready.proto, ready.kernel) == (1, "2.4.20")


def test_parse_ok_reply_fields_and_typed_getters() -> None:
    reply = parse_line("@3 ok n=1000 min=1256 median=2182 mean=2217 p95=2352 max=61234 "
                       "tsc_overhead=68 pid=1 pid_ok=1")
    assert isinstance(reply, Reply) and reply.ok and reply.id == 3
    assert reply.int_field("median") == 2182
    assert reply.bool_field("pid_ok") is True
    with pytest.raises(RigError, match="no field 'nope'"):
        reply.int_field("nope")


def test_parse_err_reply_keeps_message_with_spaces() -> None:
    reply = parse_line("@10 err unknown command 'foo' (known: ping,uname,bench,tcp-mss,user-int,netenv,help)")
    assert isinstance(reply, Reply) and not reply.ok
    assert reply.message.startswith("unknown command 'foo' (known: ping,")


def test_parse_event_and_noise() -> None:
    event = parse_line("@event netenv fer=7")
    assert isinstance(event, Event) and event.name == "netenv" and event.fields == {"fer": "7"}
    assert parse_line("Freeing unused kernel memory: 76k freed") is None
    assert parse_line("ttyS00 at 0x03f8 (irq = 4) is a 16550A") is None


def test_non_integer_field_is_an_error() -> None:
    reply = parse_line("@2 ok sysname=Linux release=2.4.20 version=#4_Thu_Nov_26_11:17:26_UTC_2026 machine=i686")
    assert isinstance(reply, Reply)
    with pytest.raises(RigError, match="not an integer"):
        reply.int_field("release")


def test_console_over_a_real_pty_skips_noise_and_queues_events(tmp_path: Path) -> None:
    transcript = tmp_path / "console.txt"
    transcript.write_bytes(CAPTURED_CONSOLE.encode())
    child = pexpect.spawn("cat", [str(transcript)])
    try:
        console = GuestConsole(child, log_path=tmp_path / "log")
        assert console.wait_ready(timeout=10).kernel == "2.4.20"
        first = console.request("bench getpid 1000", timeout=10)
        assert first.id == 1 and first.int_field("min") == 1256
        assert console.request("netenv fer=7", timeout=10).fields == {}
        assert [event.raw for event in console.events()] == ["@event netenv fer=7"]
        with pytest.raises(GuestCommandError, match="unknown command 'foo'"):
            console.request("foo", timeout=10)
        assert console.request("uname", timeout=10).str_field("release") == "2.4.20"
        with pytest.raises(RigError, match="console closed|no reply") as timed_out:
            console.request("ping", timeout=2)
        assert "machine=i686" in str(timed_out.value)  # the hint carries the console tail
        console.close()
        logged = (tmp_path / "log").read_bytes().decode().replace("\r", "")
        # the log holds what came in (here the pty also echoes our requests into it)
        for line in CAPTURED_CONSOLE.replace("\r", "").splitlines():
            assert line in logged
    finally:
        child.close(force=True)


# --- the init binary and the image --------------------------------------------

def test_init_is_a_static_i386_executable(tmp_path: Path) -> None:
    init = build_init(tmp_path)
    with init.open("rb") as stream:
        elf = ELFFile(stream)
        assert elf["e_machine"] == "EM_386" and elf["e_type"] == "ET_EXEC"
        assert not any(segment["p_type"] == "PT_INTERP" for segment in elf.iter_segments())
    assert build_init(tmp_path) == init and len(initrd_inputs_digest()) == 16


def test_initrd_is_ext2_that_linux_2_4_reads_with_device_nodes(tmp_path: Path) -> None:
    image = build_initrd(tmp_path)
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True)
    if header.returncode != 0 and "not found" in header.stderr:
        pytest.skip("dumpe2fs (e2fsprogs) not installed")
    assert "Filesystem features:      (none)" in header.stdout
    assert "Inode size:\t          128" in header.stdout
    for node, numbers in (("/dev/console", "05:01"), ("/dev/ttyS0", "04:64"), ("/dev/null", "01:03")):
        stat = subprocess.run(["debugfs", "-R", f"stat {node}", str(image)], capture_output=True, text=True)
        assert f"Device major/minor number: {numbers}" in stat.stdout, stat.stdout
    listing = subprocess.run(["debugfs", "-R", "ls -l /", str(image)], capture_output=True, text=True)
    assert " init" in listing.stdout and " proc" in listing.stdout


# --- a real guest ----------------------------------------------------------------


@pytest.mark.guest
def test_banner_and_ping(protocol_console: GuestConsole) -> None:
    assert protocol_console.ready is not None and protocol_console.ready.kernel == "2.4.20"
    assert protocol_console.request("ping").int_field("pong") == 1
    assert protocol_console.resync().int_field("pong") == 1


@pytest.mark.guest
def test_uname(protocol_console: GuestConsole) -> None:
    reply = protocol_console.request("uname")
    assert reply.str_field("sysname") == "Linux"
    assert reply.str_field("release") == "2.4.20"
    assert reply.str_field("machine") == "i686"
    assert " " not in reply.str_field("version")


def assert_ordered_stats(reply: Reply, n: int) -> None:
    assert reply.int_field("n") == n
    assert (reply.int_field("min") <= reply.int_field("median") <= reply.int_field("p95")
            <= reply.int_field("max"))
    assert reply.int_field("min") <= reply.int_field("mean") <= reply.int_field("max")
    assert reply.int_field("tsc_overhead") > 0


@pytest.mark.guest
def test_bench_getpid(protocol_console: GuestConsole) -> None:
    reply = protocol_console.request("bench getpid 1000")
    assert_ordered_stats(reply, 1000)
    assert reply.int_field("pid") == 1 and reply.int_field("pid_ok") == 1
    # a system call costs more than reading the clock twice
    assert reply.int_field("min") > reply.int_field("tsc_overhead")


@pytest.mark.guest
@pytest.mark.parametrize("kind", ["null", "jmp"])
def test_bench_floors(protocol_console: GuestConsole, kind: str) -> None:
    assert_ordered_stats(protocol_console.request(f"bench {kind} 1000"), 1000)


@pytest.mark.guest
def test_tcp_mss_over_loopback(protocol_console: GuestConsole) -> None:
    reply = protocol_console.request("tcp-mss", timeout=20)
    for end in ("client", "server"):
        assert 0 < reply.int_field(end) <= 16396  # lo MTU 16436 - 40 header bytes
    assert reply.int_field("port") > 0


@pytest.mark.guest
def test_user_mode_int_on_a_dpl0_gate_faults(protocol_console: GuestConsole) -> None:
    reply = protocol_console.request("user-int 129")
    assert reply.int_field("vector") == 129
    assert reply.int_field("faulted") == 1 and reply.int_field("signal") == 11
    syscall = protocol_console.request("user-int 128")  # the DPL-3 system call gate
    assert syscall.int_field("faulted") == 0 and syscall.int_field("status") == 0


@pytest.mark.guest
def test_netenv_emits_event_before_reply(protocol_console: GuestConsole) -> None:
    protocol_console.events()  # drop events other tests on the shared guest left queued
    protocol_console.request("netenv fer=12345")
    assert protocol_console.wait_event("netenv", timeout=5).fields == {"fer": "12345"}


@pytest.mark.guest
def test_help_lists_commands(protocol_console: GuestConsole) -> None:
    names = protocol_console.request("help").str_field("commands").split(",")
    assert {"ping", "uname", "bench", "tcp-mss", "user-int", "netenv", "help"} <= set(names)


@pytest.mark.guest
@pytest.mark.parametrize("command, message", [
    ("frobnicate", "unknown command 'frobnicate'"),
    ("bench getpid 12x", "N must be a number"),
    ("bench getpid 999999999999", "N must be a number"),
    ("user-int 256", "user-int V"),
    ("netenv fer=abc", "decimal"),
])
def test_bad_requests_get_err_and_guest_survives(protocol_console: GuestConsole,
                                                 command: str, message: str) -> None:
    with pytest.raises(GuestCommandError, match=message):
        protocol_console.request(command)
    assert protocol_console.request("ping").int_field("pong") == 1
