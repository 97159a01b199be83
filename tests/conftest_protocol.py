"""TEMPORARY boot helper for tests/test_protocol.py (to be replaced by the rig's guest fixture).

Boots the kernel named by $TRAPSPLICE_TEST_BZIMAGE with the rig's initrd, serial
console on QEMU's stdio through a pexpect pty, no network, and always kills QEMU.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from rig.guest.initrd import build_initrd
from rig.guest.protocol import GuestConsole

BOOT_APPEND = ("console=ttyS0 root=/dev/ram0 init=/init panic=-1 "
               "mem=exactmap mem=640K@0 mem=15M@1M mem=44M@20M")


def kernel_image_for_tests() -> Path | None:
    named = os.environ.get("TRAPSPLICE_TEST_BZIMAGE")
    if named and Path(named).is_file():
        return Path(named)
    return None


@pytest.fixture(scope="module")
def protocol_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestConsole]:
    bzimage = kernel_image_for_tests()
    if bzimage is None:
        pytest.skip("no kernel build found (set TRAPSPLICE_TEST_BZIMAGE to a 2.4.20 bzImage)")
    initrd = build_initrd(tmp_path_factory.mktemp("initrd"))
    log = tmp_path_factory.mktemp("console") / "console.log"
    qemu = pexpect.spawn("qemu-system-i386", [
        "-m", "64", "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
        "-kernel", str(bzimage), "-initrd", str(initrd), "-append", BOOT_APPEND,
        "-serial", "stdio"], timeout=None)
    try:
        console = GuestConsole(qemu, log_path=log)
        console.wait_ready(timeout=120)
        yield console
        console.close()
    finally:
        qemu.terminate(force=True)  # SIGHUP..SIGKILL, and reaps it
        qemu.close(force=True)
