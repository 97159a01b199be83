"""Shared fixtures: the real kernel build and a real booted 2.4.20 guest.

Guest tests skip only when no kernel source is known to the rig at all (none was
ever given with `invoke kernel --source`, none in $TRAPSPLICE_KERNEL_SOURCE) and
nothing may be downloaded; any other failure to build or boot fails the tests.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.instrument.components import ComponentManager
from rig.errors import RigError
from rig.guest import lifecycle
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter, connect
from rig.kernel import build as kernel_build
from rig.kernel import source as kernel_source


def _no_source_reason() -> str | None:
    try:
        kernel_source.resolve(allow_download=False)
    except RigError as error:
        return f"no Linux 2.4.20 source known to the rig ({error.message}); {error.hint}"
    return None


@pytest.fixture(scope="session")
def kernel() -> kernel_build.KernelBuild:
    reason = _no_source_reason()
    if reason:
        pytest.skip(reason)
    return kernel_build.ensure_kernel(allow_download=False)


@pytest.fixture(scope="session")
def prepared(kernel: kernel_build.KernelBuild) -> lifecycle.PreparedGuest:
    return lifecycle.prepare(accel="tcg")


def private_run_dir() -> Path:
    # Short path: unix socket paths are limited to 108 bytes.
    return Path(tempfile.mkdtemp(prefix="ts-"))


booted = lifecycle.private_guest


@pytest.fixture(scope="session")
def guest(prepared: lifecycle.PreparedGuest) -> Iterator[QemuMachine]:
    """One booted guest shared by the tests that leave it as they found it."""
    with booted(prepared) as machine:
        yield machine


@pytest.fixture
def fresh_guest(prepared: lifecycle.PreparedGuest) -> Iterator[QemuMachine]:
    """A guest of the test's own, for tests that may leave it changed."""
    with booted(prepared) as machine:
        yield machine


@pytest.fixture(scope="session")
def instrumenter(guest: QemuMachine, kernel: kernel_build.KernelBuild) -> Iterator[Instrumenter]:
    """gdb attached to the shared guest (its stub takes one gdb at a time), guest left running."""
    with connect(guest.config.gdb_socket, kernel) as instrumenter:
        yield instrumenter


@pytest.fixture
def clean(instrumenter: Instrumenter) -> Iterator[Instrumenter]:
    """The shared guest's instrumenter; the test starts and ends with no live splice, the whole kernel
    text equal to vmlinux (springboards live in padding anywhere in it) and the repository consistent."""
    instrumenter.unsplice_all()
    yield instrumenter
    instrumenter.unsplice_all()
    assert instrumenter.audit() == []


@pytest.fixture
def components(instrumenter: Instrumenter) -> Iterator[ComponentManager]:
    """A component manager on the shared guest (its one gdb); whatever a test spliced or loaded is undone after."""
    manager = ComponentManager(instrumenter)
    try:
        yield manager
    finally:
        manager.instrumenter.unsplice_all()
        for component in manager.loaded():
            manager.unload(component.name)
