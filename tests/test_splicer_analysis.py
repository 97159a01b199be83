"""Preprocessing on real gcc -m32 -O2 code: boundaries, branch targets, jump tables, padding."""
from __future__ import annotations

from pathlib import Path

import capstone
import pytest

from rig.errors import RigError
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage
from rig.splicer.padding import is_padding, padding_gaps
from ccode import snippet_object  # noqa: F401  (fixture)

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


@pytest.fixture(scope="module")
def image(snippet_object: Path) -> KernelImage:  # noqa: F811
    return KernelImage.load(snippet_object)


def test_boundaries_match_an_independent_decode(image: KernelImage) -> None:
    sym = image.function("caller")
    code = disassemble_function(image, "caller")
    expected = [i.address for i in _md.disasm(image.text_bytes(sym.address, sym.size), sym.address)]
    assert [i.address for i in code.instructions] == expected
    assert code.instructions[-1].end == sym.end
    assert all(code.is_boundary(a) for a in expected)
    assert not code.is_boundary(expected[2] + 1)


def test_loop_back_edge_target_is_known(image: KernelImage) -> None:
    code = disassemble_function(image, "loopy")
    backward = [i for i in code.instructions if i.target is not None and i.target < i.address]
    assert backward, "gcc -O2 emits a backward jcc for the loop"
    assert backward[0].target in code.entered_at


def test_external_call_resolves_outside_the_function(image: KernelImage) -> None:
    code = disassemble_function(image, "caller")
    calls = [i for i in code.instructions if i.mnemonic == "call"]
    assert calls and calls[0].target == image.symbol("ext").address
    assert not code.start <= calls[0].target < code.end


def test_switch_jump_table_targets_are_read(image: KernelImage) -> None:
    code = disassemble_function(image, "sw")
    assert len(code.jump_tables) == 1 and not code.unresolved_indirect_jumps
    table = code.jump_tables[0]
    assert len(table.targets) >= 6  # cases 0..5
    for target in table.targets:
        assert code.is_boundary(target) and target in code.entered_at


def test_indirect_tail_call_is_flagged(image: KernelImage) -> None:
    code = disassemble_function(image, "tail")
    assert code.unresolved_indirect_jumps


def test_padding_gaps_are_filler_between_functions(image: KernelImage) -> None:
    gaps = padding_gaps(image)
    assert gaps, "-falign-functions=16 leaves padding"
    functions = image.functions_in(".text")
    for gap in gaps:
        assert any(f.end == gap.start for f in functions)
        assert not any(f.address <= gap.start < f.end for f in functions)
        assert is_padding(image.text_bytes(gap.start, gap.length), gap.start)
        assert gap.original == image.text_bytes(gap.start, gap.length)


def test_code_is_not_padding(image: KernelImage) -> None:
    sym = image.function("caller")
    assert not is_padding(image.text_bytes(sym.address, sym.size), sym.address)


def test_unknown_function_suggests_close_names(image: KernelImage) -> None:
    with pytest.raises(RigError) as err:
        image.function("calller")
    assert "caller" in (err.value.hint or "")


def test_function_at_finds_the_enclosing_function(image: KernelImage) -> None:
    sym = image.function("sw")
    assert image.function_at(sym.address + 5) == sym
