"""Offsets into 2.4.20's task_struct, taken from the built tree's own headers.

The busy-point check walks the task list and scans each sleeping task's kernel
stack, so it needs ``offsetof(struct task_struct, ...)`` for this exact build.
vmlinux has no debug info, so a tiny C file is compiled against the tree's
headers with the kernel's compiler flags and the numbers are read back from the
object's data (no guessing, no hard-coded offsets).
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

from elftools.elf.elffile import ELFFile

from rig.errors import RigError
from rig.kernel.build import KernelBuild
from rig.kernel.cflags import compile_object

_FIELDS = ("next_task", "pid", "state", "comm", "thread_esp", "thread_eip", "stack_size")
_SOURCE = """
#include <linux/sched.h>
#include <linux/stddef.h>
const unsigned long trapsplice_layout[] = {
    offsetof(struct task_struct, next_task),
    offsetof(struct task_struct, pid),
    offsetof(struct task_struct, state),
    offsetof(struct task_struct, comm),
    offsetof(struct task_struct, thread.esp),
    offsetof(struct task_struct, thread.eip),
    sizeof(union task_union),
};
"""


@dataclass(frozen=True)
class TaskLayout:
    next_task: int
    pid: int
    state: int
    comm: int
    thread_esp: int
    thread_eip: int
    stack_size: int  # the task_union: task_struct at the bottom, kernel stack above it


def task_layout(kernel: KernelBuild) -> TaskLayout:
    cached = kernel.root / "task-layout.json"
    if cached.exists():
        return TaskLayout(**json.loads(cached.read_text()))
    layout = _compile_layout(kernel)
    cached.write_text(json.dumps(asdict(layout)))
    return layout


def _compile_layout(kernel: KernelBuild) -> TaskLayout:
    work = kernel.root / "layout"
    work.mkdir(exist_ok=True)
    source, obj = work / "layout.c", work / "layout.o"
    source.write_text(_SOURCE)
    done = compile_object(kernel, source, obj, extra=["-w"])
    if not done.ok:
        raise RigError(f"cannot compute task_struct offsets against the kernel headers:\n{done.stderr[-1500:]}",
                       hint=f"the kernel tree at {kernel.tree} may be incomplete; rebuild with: invoke kernel")
    with obj.open("rb") as handle:
        elf = ELFFile(handle)
        symbol = elf.get_section_by_name(".symtab").get_symbol_by_name("trapsplice_layout")[0]
        section = elf.get_section(symbol["st_shndx"])
        data = section.data()[symbol["st_value"]: symbol["st_value"] + 4 * len(_FIELDS)]
    return TaskLayout(*struct.unpack(f"<{len(_FIELDS)}I", data))
