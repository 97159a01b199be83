"""Components in a real 2.4.20 guest: the MSS adaptation on tcp_sync_mss (replace, trap and jmp),
a wrap, live parameters, the environment-change trigger, load/unload and the refusals."""
from __future__ import annotations

from pathlib import Path

import pytest

from rig import adapt
from rig.guest.machine import QemuMachine
from rig.instrument.components import CompileFailed, ComponentManager, compile_component
from rig.kernel.build import KernelBuild
from rig.splicer import component_table as ctab
from rig.splicer.component import ComponentObject, ComponentRefused, link
from rig.splicer.kinds import Mode

FUNCTION = "tcp_sync_mss"
PPM = 1_000_000


def adapted_mss(base: int, fer_ppm: int, frame: int = 256, target: int = 900_000) -> int:
    """The rule documented in rig/components/mss_adapt.c, computed independently on the host."""
    if fer_ppm == 0 or frame <= 40 or base <= 0:
        return base
    need = -(-(base + 40) // frame)
    survival, n = PPM, 0
    if fer_ppm >= PPM:
        n = 1
    else:
        while n < need:
            survival_next = survival * (PPM - fer_ppm) // PPM
            if survival_next < target:
                break
            survival, n = survival_next, n + 1
        n = n or 1
    return base if n >= need else n * frame - 40


def tcp_mss(guest: QemuMachine) -> tuple[int, int]:
    reply = guest.console.request("tcp-mss", timeout=60)
    return reply.int_field("client"), reply.int_field("server")


def text_equals_vmlinux(manager: ComponentManager) -> bool:
    image = manager.instrumenter.image
    symbol = image.function(FUNCTION)
    with manager.gdb.stopped():
        now = manager.gdb.read_memory(symbol.address, symbol.size)
    return now == image.text_bytes(symbol.address, symbol.size)


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.JMP], ids=["trap", "jmp"])
def test_mss_adapt_replaces_tcp_sync_mss(guest: QemuMachine, components: ComponentManager, mode: Mode) -> None:
    unspliced = tcp_mss(guest)
    loaded, result = components.splice(FUNCTION, "mss_adapt", mode=mode)
    assert result.plan.mode is mode and loaded.linked.hook_for(FUNCTION).kind == "replace"

    components.set("mss_adapt.fer", "0")
    assert tcp_mss(guest) == unspliced, "with no frame errors the component computes 2.4.20's MSS exactly"
    assert components.get("mss_adapt.calls") > 0, "the kernel called the component"
    base = components.get("mss_adapt.last_base_mss")

    seen = {}
    for fer in ("0.01", "0.05"):
        done = components.set("mss_adapt.fer", fer)
        assert done.raw == int(float(fer) * PPM)
        client, server = tcp_mss(guest)
        assert client == adapted_mss(unspliced[0], done.raw), (fer, client)
        assert server == adapted_mss(unspliced[1], done.raw), (fer, server)
        seen[fer] = client
    assert seen["0.05"] < seen["0.01"] < unspliced[0], f"higher FER, smaller segments: {seen}, base {base}"

    components.instrumenter.unsplice(result.plan.slot)
    assert tcp_mss(guest) == unspliced, "unsplicing brings back 2.4.20's own MSS"
    components.unload("mss_adapt")
    assert text_equals_vmlinux(components)


@pytest.mark.parametrize("mode", [Mode.TRAP, Mode.JMP], ids=["trap", "jmp"])
def test_wrap_sees_and_changes_the_arguments(guest: QemuMachine, components: ComponentManager, mode: Mode) -> None:
    unspliced = tcp_mss(guest)
    loaded, result = components.splice(FUNCTION, "mss_probe", mode=mode)
    assert loaded.linked.hook_for(FUNCTION).kind == "wrap"
    assert tcp_mss(guest) == unspliced, "a wrap that changes nothing leaves the original result"
    calls = components.get("mss_probe.calls")
    assert calls > 0 and components.get("mss_probe.last_pmtu") > unspliced[0], "it saw the pmtu argument"
    components.set("mss_probe.shrink", "1000")
    client, server = tcp_mss(guest)
    # The original code ran on the lowered pmtu (the client calls tcp_sync_mss again with its
    # stored, already lowered pmtu_cookie, so its MSS drops further than the server's).
    assert client < unspliced[0] and server < unspliced[1], "the original tcp_sync_mss ran on the lowered pmtu"
    components.set("mss_probe.shrink", "0")
    assert tcp_mss(guest) == unspliced, "with nothing to change, the wrap is transparent again"
    components.instrumenter.unsplice(result.plan.slot)
    assert tcp_mss(guest) == unspliced


def test_environment_change_applies_the_adaptation(guest: QemuMachine, components: ComponentManager) -> None:
    unspliced = tcp_mss(guest)
    follower = adapt.ConsoleLogFollower(guest.config.console_log)
    guest.console.request("netenv fer=0.05", timeout=10)
    [first] = adapt.watch(follower, components, once=True, timeout=30)
    assert first.spliced_slot is not None and first.param.raw == 50_000
    assert tcp_mss(guest)[0] == adapted_mss(unspliced[0], 50_000) < unspliced[0]

    guest.console.request("netenv fer=0", timeout=10)  # the link got clean again: retune, no new splice
    [second] = adapt.watch(follower, components, once=True, timeout=30)
    assert second.spliced_slot is None and not second.loaded_now
    assert tcp_mss(guest) == unspliced


def test_load_unload_keeps_the_repository_consistent(guest: QemuMachine, components: ComponentManager) -> None:
    header_before = components.instrumenter.prep(install=True).header
    loaded = components.load("mss_adapt")
    again = components.load("mss_adapt")
    assert again.entry == loaded.entry, "loading twice is idempotent"
    with components.gdb.stopped():
        table = components._read_table()
        image = components.gdb.read_memory(loaded.entry.base, loaded.entry.size)
    assert table is not None and table.find("mss_adapt") == (loaded.index, loaded.entry)
    assert image == loaded.linked.image, "the linked bytes are in the guest"
    components.unload("mss_adapt")
    with components.gdb.stopped():
        table = components._read_table()
        filler = components.gdb.read_memory(loaded.entry.base, loaded.entry.size)
    assert table is not None and table.loaded() == []
    assert filler == bytes([ctab.FILLER]) * loaded.entry.size
    assert components.instrumenter.prep(install=False).header == header_before
    assert text_equals_vmlinux(components)


def test_refusals(guest: QemuMachine, components: ComponentManager, kernel: KernelBuild, tmp_path: Path) -> None:
    _, result = components.splice(FUNCTION, "mss_adapt", mode=Mode.TRAP)
    with pytest.raises(ComponentRefused) as err:
        components.unload("mss_adapt")
    assert err.value.reason == "in-use" and str(result.plan.slot) in err.value.message

    with pytest.raises(ComponentRefused) as err:
        components.set("mss_adapt.mtu", "1")
    assert "mss_adapt.fer" in err.value.hint and "mss_adapt.frame" in err.value.hint

    big = tmp_path / "too_big.c"
    big.write_text("unsigned char hoard[8 << 20];\nint touch(int i) { return hoard[i]; }\n")
    with pytest.raises(ComponentRefused) as err:
        components.load(str(big))
    assert err.value.reason == "too-large" and f".bss {8 << 20}" in err.value.message


def test_compile_errors_and_unresolved_symbols_are_named(kernel: KernelBuild, tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("#include <linux/kernel.h>\nint f(void) { return undeclared_thing + ; }\n")
    with pytest.raises(CompileFailed) as err:
        compile_component(kernel, broken)
    assert "broken.c:2" in err.value.message and "error" in err.value.message

    missing = tmp_path / "missing.c"
    missing.write_text("#include <linux/kernel.h>\nextern int tcp_no_such_helper(int);\n"
                       "int f(int x) { printk(\"x\\n\"); return tcp_no_such_helper(x); }\n")
    obj = ComponentObject.load(compile_component(kernel, missing))
    from rig.instrument import load_image
    image = load_image(kernel.vmlinux)

    def resolve(name: str) -> int | None:
        try:
            return image.symbol(name).address
        except Exception:
            return None
    with pytest.raises(ComponentRefused) as err:
        link(obj, 0xC1121000, resolve)
    assert err.value.reason == "unresolved-symbol"
    assert "tcp_no_such_helper" in err.value.message and "printk" not in err.value.message
