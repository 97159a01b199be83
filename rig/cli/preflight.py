"""Checks against the kernel image that a task can make before it boots or attaches to a guest."""
from __future__ import annotations

from rig.errors import RigError
from rig.guest import lifecycle
from rig.instrument import load_image
from rig.kernel import build as kernel_build
from rig.kernel.build import KernelBuild


def _kernel_to_use() -> KernelBuild | None:
    """The running guest's kernel, else the built one a boot would use (None: not built yet)."""
    state = lifecycle.running()
    if state is not None:
        return state.kernel
    try:
        return kernel_build.cached(kernel_build.gather_inputs(allow_download=False))
    except RigError:
        return None  # no source known yet: the boot says so itself


def check_function(name: str, address: int | None) -> None:
    """Refuse an unknown or ambiguous FUNC (several statics of that name, none picked by
    ``address``) before any guest is booted or stopped. Where the point lies in the function is
    checked later, against its decoded code, when the splice is planned."""
    kernel = _kernel_to_use()
    if kernel is not None:
        load_image(kernel.vmlinux).function(name, containing=address)
