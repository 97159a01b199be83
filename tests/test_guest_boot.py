"""The foundation on the real parts: the built 2.4.20, a booted guest, its init, the GDB stub."""
from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from rig.errors import RigError
from rig.guest import lifecycle
from rig.guest.machine import QemuMachine, pid_is_qemu
from rig.instrument import Instrumenter
from rig.kernel import build as kernel_build
from rig.kernel import source as kernel_source
from rig.splicer.image import KernelImage

from conftest import private_run_dir


def test_kernel_build_is_cached_and_complete(kernel: kernel_build.KernelBuild) -> None:
    again = kernel_build.ensure_kernel(allow_download=False)
    assert again.root == kernel.root  # same inputs: the cache answers, nothing rebuilt
    for output in (kernel.bzimage, kernel.vmlinux, kernel.system_map):
        assert output.stat().st_size > 0
    for relative in kernel_source.Manifest.load().fig4_objects:
        assert kernel.object(relative).exists(), relative
    info = kernel.info
    assert info["source"]["sha256"] == kernel_source.remembered().sha256
    assert info["patches"] == [p.name for p in kernel_build.patch_series()]
    assert "System.map" not in info  # outputs are files in the cache, not copied into the record


def test_vmlinux_keeps_symbols(kernel: kernel_build.KernelBuild) -> None:
    image = KernelImage.load(kernel.vmlinux)
    assert image.function("tcp_sync_mss").size > 0
    system_map = kernel.system_map.read_text()
    assert f"{image.function('tcp_sync_mss').address:08x} T tcp_sync_mss" in system_map


def test_banner_and_kernel_version(guest: QemuMachine) -> None:
    assert guest.boot is not None
    assert guest.boot.ready.kernel == "2.4.20"
    reply = guest.console.request("uname")
    assert reply.str_field("release") == "2.4.20"
    assert reply.str_field("machine").startswith("i")


def test_ping(guest: QemuMachine) -> None:
    assert guest.console.request("ping").str_field("pong") == "1"


def test_bench_getpid_returns_the_right_pid(guest: QemuMachine) -> None:
    reply = guest.console.request("bench getpid 1000")
    assert reply.int_field("n") == 1000
    assert reply.int_field("pid") == 1  # init is pid 1
    assert reply.bool_field("pid_ok")
    assert 0 < reply.int_field("min") <= reply.int_field("median") <= reply.int_field("p95") <= reply.int_field("max")


def test_tcp_mss_on_loopback_is_sane(guest: QemuMachine) -> None:
    reply = guest.console.request("tcp-mss", timeout=30)
    for end in ("client", "server"):
        # lo's MTU is 16436 in 2.4: the MSS is positive and at most MTU - 40.
        assert 0 < reply.int_field(end) <= 16436 - 40


def test_unknown_command_is_an_error_that_names_the_commands(guest: QemuMachine) -> None:
    with pytest.raises(RigError) as error:
        guest.console.request("no-such-command")
    assert "ping" in str(error.value)
    assert guest.console.request("ping").str_field("pong") == "1"  # still in step


def test_gdb_reads_the_running_kernel_text(instrumenter: Instrumenter, kernel: kernel_build.KernelBuild) -> None:
    image = KernelImage.load(kernel.vmlinux)
    symbol = image.function("tcp_sync_mss")
    with instrumenter.gdb.stopped():
        live = instrumenter.gdb.read_memory(symbol.address, 16)
    assert live == image.text_bytes(symbol.address, 16)


def test_gdb_stub_console_and_qmp_are_private_unix_sockets(guest: QemuMachine) -> None:
    argv = guest.config.argv()
    joined = " ".join(argv)
    assert "tcp:" not in joined and "-gdb tcp" not in joined
    for sock in (guest.config.console_socket, guest.config.gdb_socket, guest.config.qmp_socket):
        assert sock.is_socket()
        assert (sock.parent.stat().st_mode & 0o077) == 0  # run dir is 0700


def test_background_boot_status_and_halt_leave_no_qemu(prepared: lifecycle.PreparedGuest,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A cache of its own (short path: unix sockets) so a user's background guest is never touched.
    from rig import paths

    real_cache = paths.cache_root()
    monkeypatch.setenv("TRAPSPLICE_CACHE", str(private_run_dir()))
    assert paths.cache_root() != real_cache
    state, _ = lifecycle.boot_background(prepared)
    try:
        assert pid_is_qemu(state.pid)
        assert lifecycle.running() is not None
        with pytest.raises(RigError, match="already running"):
            lifecycle.boot_background(prepared)
        _, machine = lifecycle.attach()
        assert machine.console.request("ping").str_field("pong") == "1"
        machine.detach()
        assert pid_is_qemu(state.pid)  # detaching the console leaves the guest running
    finally:
        stopped = lifecycle.halt()
    assert stopped is not None and stopped.pid == state.pid
    assert not pid_is_qemu(state.pid)
    assert lifecycle.running() is None
    assert lifecycle.halt() is None


def test_banner_timeout_kills_qemu_and_shows_the_console(prepared: lifecycle.PreparedGuest) -> None:
    config = prepared.config(private_run_dir())
    config.extra_append = "init=/nonexistent"  # the kernel panics: no banner ever comes
    machine = QemuMachine(config)
    with pytest.raises(RigError) as error:
        machine.launch(ready_timeout=15)
    assert "console tail" in error.value.message
    assert "Kernel panic" in error.value.message or "init" in error.value.message
    assert machine.pid is None


def test_unknown_source_path_is_a_clear_error() -> None:
    with pytest.raises(RigError, match="does not exist"):
        kernel_source.resolve(Path("/nonexistent/linux-2.4.20.tar.bz2"))


def test_wrong_kernel_version_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "linux-2.4.20"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 2\nPATCHLEVEL = 6\nSUBLEVEL = 11\nEXTRAVERSION =\n")
    archive = tmp_path / "linux-2.4.20.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(tree, arcname="linux-2.4.20")
    before = kernel_source.remembered()
    with pytest.raises(RigError, match="2.6.11, not 2.4.20"):
        kernel_source.import_local(archive, kernel_source.Manifest.load())
    assert kernel_source.remembered() == before  # the known-good source is still the current one


def test_failed_build_shows_errors_and_leaves_the_cache_consistent(kernel: kernel_build.KernelBuild,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A real failure in the real tree: a patch that breaks a kernel source file's syntax.
    broken = tmp_path / "9999-break-the-build.patch"
    broken.write_text(subprocess.run(
        ["diff", "-u", "--label", "a/init/version.c", "--label", "b/init/version.c",
         str(kernel.tree / "init/version.c"), "-"], input=(kernel.tree / "init/version.c").read_text()
        + "\nint trapsplice_broken(void) { return }\n", capture_output=True, text=True).stdout)
    series = [*kernel_build.patch_series(), broken]
    monkeypatch.setattr(kernel_build, "patch_series", lambda: series)
    inputs = kernel_build.gather_inputs(allow_download=False)
    with pytest.raises(kernel_build.BuildFailed) as failure:
        kernel_build.build(inputs)
    assert failure.value.step == "compile"
    assert "version.c" in failure.value.message and "error" in failure.value.message
    assert failure.value.log.exists()
    key = inputs.key()
    kernels = kernel.root.parent
    assert not (kernels / key).exists() and not (kernels / f"{key}.partial").exists()


def test_accelerator_choice_follows_a_real_kvm_probe(kernel: kernel_build.KernelBuild) -> None:
    """auto picks KVM only when the probe booted the i386 kernel under it; --accel kvm otherwise refuses."""
    from rig.guest import accel

    runs, why = accel.kvm_runs_i386(kernel.bzimage)
    auto = accel.choose("auto", kernel.bzimage)
    assert auto.accel == ("kvm" if runs else "tcg")
    assert accel.choose("tcg", kernel.bzimage).accel == "tcg"
    if runs:
        assert accel.choose("kvm", kernel.bzimage).accel == "kvm"
    else:
        with pytest.raises(RigError, match="KVM cannot run this i386 guest") as error:
            accel.choose("kvm", kernel.bzimage)
        assert "--accel tcg" in (error.value.hint or "") and why
