"""The component loader/linker and component table on real objects compiled at test time (gcc -m32 -O2)."""
from __future__ import annotations

import struct
from pathlib import Path

import iced_x86 as ix
import pytest

from rig.paths import REPO_ROOT
from rig.splicer import component_table as ctab
from rig.splicer.analysis import disassemble_function
from rig.splicer.component import ComponentObject, ComponentRefused, layout_size, link
from rig.splicer.image import KernelImage
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import plan_splice
from rig.splicer.repository import RepositoryLayout
from ccode import compile_c, snippet_object  # noqa: F401  (fixture)

BASE = 0xC1121000
EXT = 0xC0123450       # where "the kernel" has ext() in these tests
COUNTER_SYM = 0xC0400000
HEADER_DIR = ["-I", str(REPO_ROOT / "rig" / "components")]

COMPONENT = r"""
#include "trapsplice.h"
extern int ext(int);
extern int kernel_counter;
unsigned int knob = 7;          /* .data */
unsigned int hits;              /* .bss */
static int helper(int x) { return x * (int)knob + kernel_counter; }
int entry(int x) { hits++; return ext(helper(x)) + 1; }
void wrapper(struct trapsplice_frame *f) { f->args[0] += knob; }
TRAPSPLICE_REPLACE(some_kernel_fn, entry);
TRAPSPLICE_WRAP(other_kernel_fn, wrapper);
TRAPSPLICE_PARAM(knob, 1000, "a knob");
"""

KERNEL = {"ext": EXT, "kernel_counter": COUNTER_SYM}


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("components")
    return {
        "good": compile_c(COMPONENT, d, "good", HEADER_DIR + ["-fno-inline", "-fno-common"]),
        "missing": compile_c("extern int no_such_kernel_fn(int);\nint f(int x) { return no_such_kernel_fn(x) + 1; }",
                             d, "missing"),
        "pic": compile_c("int shared_var;\nint g(void) { return shared_var; }", d, "pic", ["-fPIC"]),
        "big": compile_c("unsigned char big[100000] = {1};\nint h(int i) { return big[i]; }", d, "big"),
        "baddecl": compile_c('#include "trapsplice.h"\nint f(int x) { return x; }\nTRAPSPLICE_REPLACE(k, nothere);',
                             d, "baddecl", HEADER_DIR),
    }


def linked_good(objects: dict[str, Path]):
    return link(ComponentObject.load(objects["good"]), BASE, KERNEL.get)


def decode_function(linked, name: str) -> list[ix.Instruction]:
    sym = linked.symbols[name]
    data = linked.image[sym.address - BASE: sym.address - BASE + sym.size]
    return list(ix.Decoder(32, data, ip=sym.address))


def test_link_places_sections_and_resolves_calls_and_data(objects: dict[str, Path]) -> None:
    linked = linked_good(objects)
    assert linked.base == BASE and linked.size == layout_size(ComponentObject.load(objects["good"]))
    for sym in linked.symbols.values():
        assert BASE <= sym.address < linked.end, sym
    entry = decode_function(linked, "entry")
    calls = [i.near_branch_target for i in entry if i.is_call_near]
    assert EXT in calls, "the call to ext() goes to the kernel's address"
    assert linked.symbols["helper"].address in calls or any(
        i.memory_displacement == COUNTER_SYM for i in entry), "helper is called or inlined"
    displacements = {i.memory_displacement for i in entry if i.memory_base == ix.Register.NONE}
    assert linked.symbols["hits"].address in displacements, "hits++ addresses the placed .bss variable"
    knob = linked.symbols["knob"]
    assert struct.unpack_from("<I", linked.image, knob.address - BASE)[0] == 7, ".data initialiser kept"
    assert linked.image[linked.symbols["hits"].address - BASE: linked.symbols["hits"].address - BASE + 4] == bytes(4)


def test_declarations_are_read_and_not_loaded(objects: dict[str, Path]) -> None:
    linked = linked_good(objects)
    assert {(h.kind, h.kernel_function, h.entry) for h in linked.hooks} == {
        ("replace", "some_kernel_fn", "entry"), ("wrap", "other_kernel_fn", "wrapper")}
    assert linked.param("knob").scale == 1000
    assert not any(s.name.startswith("trapsplice_meta") for s in linked.symbols.values())
    with pytest.raises(ComponentRefused) as err:
        linked.param("nope")
    assert err.value.reason == "no-param" and "good.knob" in err.value.hint
    with pytest.raises(ComponentRefused) as err:
        linked.hook_for("tcp_sync_mss")
    assert "replace some_kernel_fn" in err.value.hint


def test_unresolved_symbol_is_named(objects: dict[str, Path]) -> None:
    with pytest.raises(ComponentRefused) as err:
        link(ComponentObject.load(objects["missing"]), BASE, KERNEL.get)
    assert err.value.reason == "unresolved-symbol"
    assert "no_such_kernel_fn" in err.value.message


def test_unsupported_relocation_is_named(objects: dict[str, Path]) -> None:
    with pytest.raises(ComponentRefused) as err:
        link(ComponentObject.load(objects["pic"]), BASE, lambda name: None)
    assert err.value.reason == "unsupported-relocation"
    assert "R_386_GOT" in err.value.message  # GOTPC / GOT32X / GOTOFF: PIC code
    assert "shared_var" in err.value.message or "_GLOBAL_OFFSET_TABLE_" in err.value.message


def test_too_large_says_sizes(objects: dict[str, Path]) -> None:
    obj = ComponentObject.load(objects["big"])
    with pytest.raises(ComponentRefused) as err:
        link(obj, BASE, lambda name: None, capacity=4096)
    assert err.value.reason == "too-large"
    assert str(layout_size(obj)) in err.value.message and "4096" in err.value.message


def test_declared_entry_must_exist(objects: dict[str, Path]) -> None:
    with pytest.raises(ComponentRefused) as err:
        link(ComponentObject.load(objects["baddecl"]), BASE, lambda name: None)
    assert err.value.reason == "bad-declaration" and "nothere" in err.value.message


def test_component_table_round_trip_and_first_fit() -> None:
    layout = RepositoryLayout()
    table = ctab.empty_table(layout)
    a = ctab.ComponentEntry("a", table.allocate(100, "a"), 100, "11" * 32)
    table = ctab.ComponentTable(table.region_base, table.region_size, (a,) + (None,) * (ctab.ENTRIES - 1))
    b = ctab.ComponentEntry("b", table.allocate(50, "b"), 50, "22" * 32)
    assert b.base == a.base + 112, "16-byte aligned after a"
    entries = (None, b) + (None,) * (ctab.ENTRIES - 2)  # a unloaded
    table = ctab.ComponentTable(table.region_base, table.region_size, entries)
    assert table.allocate(100, "c") == a.base, "a's hole is reused"
    assert table.allocate(200, "d") > b.base, "too big for the hole"
    raw = ctab.encode_header(table) + b"".join(ctab.encode_entry(e) for e in entries)
    back = ctab.decode_table(raw)
    assert back == table
    assert ctab.decode_table(bytes(len(raw))) is None
    with pytest.raises(ComponentRefused) as err:
        table.allocate(table.region_size, "huge")
    assert err.value.reason == "too-large" and str(table.region_size) in err.value.message


def test_load_writes_put_the_entry_last() -> None:
    layout = RepositoryLayout()
    table = ctab.empty_table(layout)
    entry = ctab.ComponentEntry("x", table.region_base, 32, "00" * 32)
    writes = ctab.load_writes(layout, table, 3, entry, b"\x90" * 32, fresh=True)
    assert [w.role for w in writes] == ["component-table", "component", "component-entry"]
    assert writes[-1].address == ctab.entry_address(layout, 3)
    undo = ctab.unload_writes(layout, 3, entry)
    assert [w.role for w in undo] == ["component-entry", "component"] and undo[1].data == b"\xcc" * 32


# ---- splicing to a component: plans on gcc code --------------------------------------------
def test_replace_and_wrap_patches(snippet_object: Path) -> None:  # noqa: F811
    image = KernelImage.load(snippet_object)
    code = disassemble_function(image, "caller")
    layout, target = RepositoryLayout(), BASE + 0x40
    for mode in (Mode.TRAP, Mode.JMP):
        replace = plan_splice(code, code.start, mode, Policy.DISPLACE, layout, 0, PatchKind.REPLACE, vector=0x81,
                              springboard_space=padding_gaps(image), call_target=target)
        patch = list(ix.Decoder(32, replace.patch_code, ip=replace.patch_address))
        assert patch[-1].is_jmp_near and patch[-1].near_branch_target == target, "replace ends in the component"
        assert not any(i.near_branch_target == replace.window.end for i in patch if i.is_jmp_near), "no way back"
        assert replace.counter_address is not None
        wrap = plan_splice(code, code.start, mode, Policy.DISPLACE, layout, 0, PatchKind.WRAP, vector=0x81,
                           springboard_space=padding_gaps(image), call_target=target)
        patch = list(ix.Decoder(32, wrap.patch_code, ip=wrap.patch_address))
        mnemonics = [i.mnemonic for i in patch]
        call = next(index for index, i in enumerate(patch) if i.is_call_near)
        assert patch[call].near_branch_target == target
        assert mnemonics[call - 3: call] == [ix.Mnemonic.PUSHFD, ix.Mnemonic.PUSHAD, ix.Mnemonic.PUSH]
        assert patch[call - 1].op0_register == ix.Register.ESP, "the component gets the saved frame"
        assert patch[-1].is_jmp_near and patch[-1].near_branch_target == wrap.window.end, "then the original"
    with pytest.raises(SpliceRefused) as err:
        plan_splice(code, code.instructions[1].address, Mode.TRAP, Policy.DISPLACE, layout, 0, PatchKind.REPLACE,
                    vector=0x81, call_target=target)
    assert err.value.reason == "replace-not-entry"
    with pytest.raises(SpliceRefused) as err:
        plan_splice(code, code.start, Mode.TRAP, Policy.DISPLACE, layout, 0, PatchKind.WRAP, vector=0x81)
    assert err.value.reason == "bad-call-target"


def test_init_symbols_of_vmlinux_are_refused(kernel, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    """A component calling an __init function of the real vmlinux (freed after boot) is refused by name;
    one calling core kernel code links."""
    from rig.splicer.component import kernel_symbols
    from rig.splicer.image import KernelImage

    image = KernelImage.load(kernel.vmlinux)
    resolve = kernel_symbols(image)
    init_caller = compile_c("extern void tcp_init(void);\nvoid f(void) { tcp_init(); }", tmp_path, "initcall")
    with pytest.raises(ComponentRefused) as err:
        link(ComponentObject.load(init_caller), BASE, resolve)
    assert err.value.reason == "init-symbol" and "tcp_init" in err.value.message and ".text.init" in err.value.message
    core_caller = compile_c("extern int sys_getpid(void);\nint f(void) { return sys_getpid(); }", tmp_path, "core")
    linked = link(ComponentObject.load(core_caller), BASE, resolve)
    assert image.function("sys_getpid").address in [
        i.near_branch_target for i in decode_function(linked, "f") if i.is_call_near or i.is_jmp_near]  # -O2: tail jmp
