"""Bad input, as a new user types it: each ends in one clear error, a hint and exit status 1,
found before a guest is booted, attached or changed; nothing crashes, nothing is silently ignored.

The command-line cases run the real `invoke` in a subprocess with a private cache (no guest
there; the kernel source is a path that does not exist, so nothing is downloaded or built)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from elftools.elf.elffile import ELFFile
from invoke_cli import run_invoke
from rich.console import Console

from rig import adapt, paths
from rig.cli import preflight
from rig.bench import fig4, hops, lengths, render, sections
from rig.bench.part import STATIC_ANALYSIS
from rig.bench.provenance import Provenance
from rig.instrument.components import compile_component, parse_value, source_path
from rig.errors import Refused, RigError
from rig.guest.machine import QemuMachine
from rig.instrument import Instrumenter
from rig.kernel.build import KernelBuild
from rig.splicer.component import ComponentObject, Param
from rig.splicer.image import KernelImage

# (arguments, what the one-line error must say)
BAD_ARGUMENTS = [
    (["splice", "--func", "tcp_sync_mss", "--offset", "abc"], "--offset abc is not a number (hex needs 0x)"),
    (["splice", "--func", "tcp_sync_mss", "--offset", "c01abc70"],
     "--offset c01abc70 is not a number: hex needs 0x, and this looks like an address"),
    (["splice", "--func", "tcp_sync_mss", "--offset", "08"], "--offset 08 has a leading zero"),
    (["splice", "--func", "tcp_sync_mss", "--offset", "-4"], "--offset -4 is negative"),
    (["splice", "--func", "tcp_sync_mss", "--offset", "0xc01abc70"],
     "--offset 0xc01abc70 is a kernel address, not an offset in a function"),
    (["splice", "--func", "tcp_sync_mss", "--addr", "c01abc70"], "--addr c01abc70 has no 0x"),
    (["splice", "--func", "tcp_sync_mss", "--addr", "0x1c01abc70"], "--addr 0x1c01abc70 does not fit in 32 bits"),
    (["splice", "--func", "tcp_sync_mss", "--offset", "4", "--addr", "0xc01abc70"], "give --offset or --addr, not both"),
    (["splice", "--func", "tcp_sync_mss", "--probe", "call"], "unknown --probe 'call'"),
    (["splice", "--func", "tcp_sync_mss", "--mode", "fast"], "unknown --mode 'fast'"),
    (["splice", "--func", "tcp_sync_mss", "--policy", "fast"], "unknown --policy 'fast'"),  # hint: auto | ...
    (["splice", "--func", "tcp_sync_mss", "--dispatch", "fast"], "unknown --dispatch 'fast'"),
    (["splice", "--func", "tcp_sync_mss", "--mode", "jmp", "--dispatch", "vector"],
     "--dispatch vector is for trap splices, not --mode jmp"),
    (["splice", "--func", "tcp_sync_mss", "--component", "mss_adapt", "--probe", "counter"],
     "--probe counter is not taken with --component"),
    (["splice", "--func", "tcp_sync_mss", "--component", "mss_adapt", "--dispatch", "vector"],
     "--dispatch vector is not taken with --component"),
    (["splice", "--func", "tcp_sync_mss", "--component", "mss_adapt", "--addr", "0xc01abc70"],
     "--addr is not taken with --component"),
    (["splice", "--func", "tcp_sync_mss", "--component", "nosuch"], "no component named 'nosuch'"),
    (["load", "nosuch"], "no component named 'nosuch'"),
    (["set", "mss_adapt.fer", "nan"], "fer = nan is not a finite number"),
    (["set", "mss_adapt.fer", "inf"], "fer = inf is not a finite number"),
    (["set", "mss_adapt.fer", "abc"], "fer = 'abc' is not a number"),
    (["set", "fer", "0.05"], "'fer' is not COMPONENT.NAME"),
    (["get", "fer"], "'fer' is not COMPONENT.NAME"),
    (["unsplice", "x"], "'x' is not a splice id"),
    (["boot", "--icount", "abc"], "--icount abc is not a whole number from 0 to 10"),
    (["adapt", "--timeout", "nan"], "--timeout nan is not a number of seconds above 0"),
    (["adapt", "--mode", "fast"], "unknown --mode 'fast'"),
    (["bench", "-n", "abc"], "-n abc is not a whole number 1 or more"),
    (["bench", "--runs", "0"], "--runs 0 is not a whole number 1 or more"),
    (["sweep", "--mode", "fast"], "unknown sweep mode 'fast'"),
    (["sweep", "--policy", "fast"], "unknown policy 'fast'"),
    (["sweep", "--batch", "0"], "--batch 0 is not a whole number 1 or more"),
    (["sweep", "--jobs", "-1"], "--jobs -1 is not a whole number 0 or more"),
    (["sweep", "--sample", "many"], "--sample many is not a whole number 1 or more"),
    (["sweep", "--plant-panic", "c0100000"], "--plant-panic c0100000 has no 0x"),
    (["sweep", "--resume", "no-such-run"], "cannot read the sweep results no-such-run/sweep.json"),
    (["workload", "--part", "dance"], "unknown workload part(s): dance"),
]


@pytest.mark.parametrize(("args", "error"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_end_in_one_error_before_any_guest(args: list[str], error: str, tmp_path: Path) -> None:
    done = run_invoke(*args, cache=tmp_path)
    assert done.code == 1, done.out
    assert done.error_line.startswith(f"error: {error}"), done.out
    assert "hint: " in done.out and "Traceback" not in done.out
    assert not (tmp_path / "run" / "guest.json").exists(), "a guest was started for a bad argument"


def test_a_negative_value_reaches_the_task(tmp_path: Path) -> None:
    """invoke split `-0.5` into the flags -0 -. -5 ("No idea what '-.' is!"); now it is a value,
    checked like any other (the range needs the loaded component: here no guest runs)."""
    for args in (["set", "mss_adapt.fer", "-0.5"], ["set", "mss_adapt.fer", "--value=-0.5"]):
        done = run_invoke(*args, cache=tmp_path)
        assert done.code == 1 and done.error_line == "error: no guest is running", done.out
    done = run_invoke("splice", "--func", "tcp_sync_mss", "--offset", "-0.5", cache=tmp_path)
    assert done.code == 1 and done.error_line == "error: --offset '-0.5' is not a number", done.out
    done = run_invoke("splices", "-0.5", cache=tmp_path)  # where no value is taken, invoke's own words
    assert done.code == 1 and done.out.strip() == "No idea what '-0.5' is!"


def test_hints_name_every_choice(tmp_path: Path) -> None:
    done = run_invoke("splice", "--func", "tcp_sync_mss", "--policy", "fast", cache=tmp_path)
    assert "hint: one of: auto | single | displace" in done.out
    done = run_invoke("splice", "--func", "tcp_sync_mss", "--probe", "call", cache=tmp_path)
    assert "hint: one of: counter | empty" in done.out, "call, replace and wrap are the rig's own patch kinds"


# ---- parameter values: the declared range of the real component ---------------------------------
@pytest.fixture(scope="module")
def fer(kernel: KernelBuild) -> Param:  # noqa: ANN001 - conftest fixture
    source = source_path("mss_adapt")
    declared = ComponentObject.load(compile_component(kernel, source), source.stem)
    return next(p for p in declared.params if p.name == "fer")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "sNaN", "1e999999999", "-1e999999999", "-0.5", "2",
                                  "1.0000001", "abc", "0x10", ""])
def test_parameter_values_outside_the_declared_range_are_refused(fer: Param, text: str) -> None:
    with pytest.raises(RigError) as refused:
        parse_value(text, fer)
    assert refused.value.message.startswith("fer = ")
    assert refused.value.hint == "fer takes a number from 0 to 1 (frame error rate (0..1))"


@pytest.mark.parametrize(("text", "raw"), [("0", 0), ("0.05", 50_000), ("1", 1_000_000), ("-0", 0), (" 0.5", 500_000)])
def test_parameter_values_in_range_are_scaled(fer: Param, text: str, raw: int) -> None:
    assert parse_value(text, fer) == raw


def test_an_undeclared_range_is_what_32_bits_hold() -> None:
    frame = Param("frame", 1, "link frame payload in bytes")
    assert parse_value("4294967295", frame) == 0xFFFFFFFF
    with pytest.raises(RigError, match="out of range"):
        parse_value("4294967296", frame)
    with pytest.raises(RigError, match="out of range"):
        parse_value("-1", frame)


def _log(tmp_path: Path, lines: list[str]) -> adapt.ConsoleLogFollower:
    path = tmp_path / "console.log"
    path.write_text("".join(f"{line}\n" for line in lines))
    return adapt.ConsoleLogFollower(path, from_start=True)


def test_adapt_reports_and_skips_bad_events(kernel: KernelBuild, tmp_path: Path) -> None:
    """A guest event `netenv fer=nan` crashed `invoke adapt` (after splicing): bad events are now
    reported and skipped before anything is loaded, spliced or set (the stand-in manager has
    nothing to load or splice with: touching it would fail the test)."""
    bad = ["fer=nan", "fer=inf", "fer=1e999999999", "fer=-0.5", "fer=2", "fer=abc", "mss=1"]
    follower = _log(tmp_path, [f"@event netenv {fields}" for fields in bad])
    skipped: list[tuple[str, RigError]] = []
    done = adapt.watch(follower, SimpleNamespace(kernel=kernel), timeout=0.3,  # type: ignore[arg-type]
                       skipped=lambda event, error: skipped.append((event.raw, error)))
    assert done == []
    assert [raw for raw, _ in skipped] == [f"@event netenv {fields}" for fields in bad]
    assert skipped[0][1].message == "fer = nan is not a finite number"
    assert skipped[3][1].message == "fer = -0.5 is out of range"
    assert skipped[-1][1].message == "the event has no fer="
    with pytest.raises(RigError, match=r"no usable '@event netenv' from the guest within 0.3s \(7 skipped\)"):
        adapt.watch(_log(tmp_path, [f"@event netenv {f}" for f in bad]), SimpleNamespace(kernel=kernel),  # type: ignore[arg-type]
                    once=True, timeout=0.3)


def test_adapt_skips_a_bad_announcement_and_applies_the_next(guest: QemuMachine,
                                                             components: adapt.ComponentManager) -> None:
    """On the real guest: init announces any decimal fraction, so fer=2 reaches the watcher."""
    follower = adapt.ConsoleLogFollower(guest.config.console_log)
    guest.console.request("netenv fer=2", timeout=10)
    guest.console.request("netenv fer=0.05", timeout=10)
    skipped: list[str] = []
    [applied] = adapt.watch(follower, components, once=True, timeout=30,
                            skipped=lambda event, error: skipped.append(f"{event.raw}: {error.message}"))
    assert skipped == ["@event netenv fer=2: fer = 2 is out of range"]
    assert applied.fer == "0.05" and applied.param.raw == 50_000


def test_set_refuses_values_outside_the_loaded_components_range(components: adapt.ComponentManager) -> None:
    """What `invoke set mss_adapt.fer -0.5` does once the value gets past invoke: nothing is written."""
    components.load("mss_adapt")
    for text, message in (("-0.5", "fer = -0.5 is out of range"), ("2", "fer = 2 is out of range"),
                          ("1e999999999", "fer = 1e999999999 is out of range"),
                          ("nan", "fer = nan is not a finite number")):
        with pytest.raises(RigError) as refused:
            components.set("mss_adapt.fer", text)
        assert (refused.value.message, refused.value.hint) == (
            message, "fer takes a number from 0 to 1 (frame error rate (0..1))")
    assert components.get("mss_adapt.fer") == 0


# ---- one of several static functions of the same name --------------------------------------------
@pytest.fixture(scope="module")
def vmlinux(kernel: KernelBuild) -> KernelImage:  # noqa: ANN001 - conftest fixture
    return KernelImage.load(kernel.vmlinux)


def _names_defined_twice(path: Path) -> dict[str, list[int]]:
    """Straight from the symbol table: sized functions whose name occurs more than once."""
    seen: dict[str, list[int]] = {}
    with path.open("rb") as stream:
        for sym in ELFFile(stream).get_section_by_name(".symtab").iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] > 0:
                seen.setdefault(sym.name, []).append(sym["st_value"])
    return {name: sorted(set(addresses)) for name, addresses in seen.items() if len(set(addresses)) > 1}


def test_nine_function_names_are_ambiguous_in_vmlinux(kernel: KernelBuild, vmlinux: KernelImage) -> None:
    twice = _names_defined_twice(kernel.vmlinux)
    assert set(twice) == {"__constant_copy_to_user", "__constant_copy_from_user.part.0", "init_once", "notesize",
                          "parse_options", "raw_init", "raw_ioctl", "seq_puts.isra.0", "sock_no_open"}
    for name, addresses in twice.items():
        with pytest.raises(Refused) as refused:
            vmlinux.function(name)
        assert refused.value.reason == "ambiguous-function"
        assert all(f"{address:#010x}" in refused.value.message for address in addresses), name
        assert refused.value.hint == f"pick one by an address inside it: --func {name} --addr {addresses[0]:#x}"
        for address in addresses:
            assert vmlinux.function(name, containing=address + 1).address == address


def test_init_once_lists_its_four_files(vmlinux: KernelImage) -> None:
    with pytest.raises(Refused) as refused:
        vmlinux.function("init_once")
    lines = refused.value.message.splitlines()
    assert lines[0].startswith("4 functions are named 'init_once' in vmlinux")
    assert [line.split()[-1] for line in lines[1:]] == ["block_dev.c", "char_dev.c", "locks.c", "inode.c"]


def test_resolve_point_picks_the_copy_the_address_is_in(kernel: KernelBuild, vmlinux: KernelImage) -> None:
    """Only the name lookup is exercised, from vmlinux: no gdb is needed for it."""
    manager = Instrumenter(None, kernel)  # type: ignore[arg-type]
    char_dev = _names_defined_twice(kernel.vmlinux)["init_once"][1]  # the second copy (char_dev.c)
    code, point = manager.resolve_point("init_once", address=char_dev + 4)
    assert (code.start, point) == (char_dev, char_dev + 4)
    for kwargs in ({}, {"offset": 4}, {"address": 0xC0100000}):
        with pytest.raises(Refused, match="functions are named 'init_once'"):
            manager.resolve_point("init_once", **kwargs)
    code, point = manager.resolve_point("tcp_sync_mss", offset=1)  # a unique name: as before
    assert point == code.start + 1


@pytest.fixture
def linked_cache(kernel: KernelBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private cache that shares the built kernel and its source record (symlinks, no copy) but
    has no guest: a command that got past its checks would boot its own one, stopped here."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real = paths.cache_root()
    for part in ("kernels", "sources"):
        (cache / part).symlink_to(real / part, target_is_directory=True)
    with monkeypatch.context() as env:
        env.setenv("TRAPSPLICE_CACHE", str(cache))
        env.delenv("TRAPSPLICE_KERNEL_SOURCE", raising=False)
        found = preflight._kernel_to_use()
    assert found is not None and found.root.resolve() == kernel.root.resolve(), \
        "the check before booting must see the built kernel, else the command would boot a guest"
    yield cache
    if (cache / "run" / "guest.json").exists():  # only if the check failed: stop the guest it booted
        run_invoke("halt", cache=cache, no_source=False)
        pytest.fail("a guest was booted for an ambiguous function name")


def test_an_ambiguous_name_is_refused_before_a_guest_is_booted(linked_cache: Path) -> None:
    for extra in ([], ["--offset", "4"], ["--addr", "0xc0100000"]):
        done = run_invoke("splice", "--func", "init_once", *extra, cache=linked_cache, no_source=False)
        assert done.code == 1, done.out
        assert done.out.startswith("error: 4 functions are named 'init_once' in vmlinux"), done.out
        assert "block_dev.c" in done.out and "hint: pick one by an address inside it: --func init_once --addr" \
            in done.out
    assert not (linked_cache / "run" / "guest.json").exists()


# ---- the bench's tables in an 80-column terminal ----------------------------------------------
def _rendered_words(tables: list, width: int) -> tuple[str, list[str]]:
    console = Console(width=width, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    for table in tables:
        console.print(table)
    text = console.export_text()
    borders = str.maketrans({c: " " for c in "│┃┏┓┗┛┡┩┠┨┣┫━─┳┻╇╈┼┯┷┬┴┌┐└┘├┤═╞╡╪"})
    return text, text.translate(borders).split()


def _source_words(table: sections.Table, provenance: Provenance) -> set[str]:
    words = set(table.caption.split()) | set(provenance.summary().split())
    for cell in [*table.header, *(c for row in table.rows for c in row)]:
        words |= set(sections.cell_text(cell).split())
    continued = {"(continued,", "part", "of"} | {f"{n}" for n in range(2, 6)} | {f"{n})" for n in range(2, 6)}
    return words | continued  # the title of a table's later parts


@pytest.fixture(scope="module")
def real_sections(kernel: KernelBuild) -> list[sections.Section]:
    """The bench's static sections on the real kernel: the hop census (its refusals column broke
    mid-word at 80 columns) and Fig. 4."""
    census = hops.census_cached(kernel)
    prov = Provenance.collect(accelerator=STATIC_ANALYSIS, clock_meaning="instruction boundaries", n=1,
                              kernel_build_id=kernel.build_id)
    dists = [lengths.length_distribution(kernel.object(o), name=Path(o).name) for o in fig4.PAPER_OBJECTS]
    return [sections.Section("hops", prov, [hops.hops_table(census)], notes=["census"]),
            sections.Section("fig4", prov, [fig4.fig4_table(dists)])]


@pytest.mark.parametrize("width", [80, 100, 60])
def test_bench_tables_split_no_word_in_a_narrow_terminal(real_sections: list[sections.Section], width: int) -> None:
    for section in real_sections:
        [table] = section.tables
        assert section.title != "hops" or "no-springboard-route:" in sections.cell_text(table.rows[-1][-1])
        parts = [t for t, _, _ in render.terminal_tables([section], width=width)]
        text, words = _rendered_words(parts, width)
        allowed = _source_words(table, section.provenance)
        broken = [word for word in words if word not in allowed]
        assert not broken, f"words split at width {width}: {broken[:10]}\n{text}"
        assert max(len(line) for line in text.splitlines()) <= width
        for cell in (c for row in table.rows for c in row):  # every value is shown, whole
            assert all(word in words for word in sections.cell_text(cell).split()), cell
        assert render.terminal_tables([section], width=width)[-1][2] == section.notes


def test_the_refusals_column_broke_words_before(real_sections: list[sections.Section]) -> None:
    """The same check on rich's own layout (no width given): it does split words at 80 columns."""
    section = real_sections[0]
    parts = [t for t, _, _ in render.terminal_tables([section])]
    _, words = _rendered_words(parts, 80)
    assert any(word not in _source_words(section.tables[0], section.provenance) for word in words)

