"""trapsplice tasks: `invoke --list` shows them, `invoke --help TASK` explains one.

Each task parses its arguments, calls into `rig`, and renders the result; the
logic lives in `rig`.
"""
from __future__ import annotations

from pathlib import Path

from invoke import task

from rig import ui
from rig.errors import RigError
from rig.guest import lifecycle
from rig.kernel import build as kernel_build
from rig.ui import console, reports_errors


def _prepare(source: str | None, accel: str, icount: int | None) -> lifecycle.PreparedGuest:
    source_path = Path(source) if source else None
    inputs = kernel_build.gather_inputs(source_path)
    if kernel_build.cached(inputs) is None:
        with ui.build_progress() as progress:
            kernel_build.build(inputs, progress=progress)
    return lifecycle.prepare(source_path, accel=accel, icount_shift=icount)


@task(help={"source": "local linux-2.4.20 tarball or tree (default: the one imported before, else kernel.org)"})
@reports_errors
def kernel(c, source=None):
    """Build Linux 2.4.20 (bzImage, vmlinux, System.map) into the user cache, or show the cached build."""
    inputs = kernel_build.gather_inputs(Path(source) if source else None)
    build = kernel_build.cached(inputs)
    if build is None:
        with ui.build_progress() as progress:
            build = kernel_build.build(inputs, progress=progress)
        headline = f"built in {build.info['build_seconds']} s"
    else:
        headline = "cached (nothing changed)"
    info = build.info
    console.print(ui.key_value_table(f"Linux 2.4.20 — {headline}", [
        ("build id", build.build_id),
        ("source", inputs.archive.describe()),
        ("patches", f"{len(info['patches'])} ({', '.join(info['patches'])})"),
        ("compiler", info["host"]["gcc"]),
        ("bzImage", str(build.bzimage)),
        ("vmlinux", str(build.vmlinux)),
        ("log", str(build.log)),
    ]))


@task(help={"source": "local linux-2.4.20 tarball or tree", "accel": "auto | tcg | kvm",
            "icount": "run TCG with -icount shift=N (the TSC then counts instructions)"})
@reports_errors
def boot(c, source=None, accel="auto", icount=None):
    """Boot the guest in the background (builds what is missing) and wait for its init."""
    existing = lifecycle.running()
    if existing is not None:
        raise RigError(f"a guest is already running (qemu pid {existing.pid}, {existing.clock.name}, "
                       f"up since {existing.started_at})", hint="invoke status / invoke halt")
    prepared = _prepare(source, accel, int(icount) if icount is not None else None)
    with console.status("booting Linux 2.4.20…"):
        state, boot_info = lifecycle.boot_background(prepared)
    _show_guest(state, title=f"guest up in {boot_info.boot_seconds:.2f} s")


def _show_guest(state: lifecycle.GuestState, title: str) -> None:
    console.print(ui.key_value_table(title, [
        ("kernel", f"Linux {state.release} (build {state.kernel.build_id})"),
        ("accelerator", f"{state.clock.name} — {state.accel_reason}"),
        ("guest TSC", state.clock.meaning),
        ("boot time", f"{state.boot_seconds:.2f} s to the init banner"),
        ("qemu pid", str(state.pid)),
        ("gdb stub", f"{state.run_dir}/gdb.sock (unix socket, private)"),
        ("console", f"{state.run_dir}/console.sock (invoke console)"),
    ]))


@task
@reports_errors
def status(c):
    """Show the running guest, if any."""
    state = lifecycle.running()
    if state is None:
        console.print("no guest is running (start one with: invoke boot)")
        return
    _, machine = lifecycle.attach()
    try:
        machine.console.request("ping", timeout=5)
    finally:
        machine.detach()
    _show_guest(state, title="guest running, init answers")


@task
@reports_errors
def halt(c):
    """Stop the background guest."""
    stopped = lifecycle.halt()
    console.print(f"stopped qemu pid {stopped.pid}" if stopped else "no guest was running")


@task(name="console", help={"cmd": "one request to send (e.g. 'bench getpid 1000'); without it, a prompt"})
@reports_errors
def console_(c, cmd=None):
    """Talk to the guest's init over its line protocol (`help` lists the commands)."""
    _, machine = lifecycle.attach()
    try:
        if cmd:
            _ask(machine, cmd)
            return
        while line := _prompt():
            _ask(machine, line)
    finally:
        machine.detach()


def _ask(machine, line: str) -> None:
    try:
        reply = machine.console.request(line, timeout=120)
    except RigError as error:
        console.print(f"[red]{error.message}[/]")
        return
    console.print(" ".join(f"[cyan]{k}[/]={v}" for k, v in reply.fields.items()) or "ok")


def _prompt() -> str | None:
    try:
        return input("guest> ").strip() or None
    except EOFError:
        return None
