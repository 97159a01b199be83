"""Fig. 4 on real machine code: C compiled here with gcc -m32 -O2, and the built 2.4.20 kernel if present."""
from __future__ import annotations

import math
from pathlib import Path

import capstone
import pytest
from elftools.elf.elffile import ELFFile

from rig.bench.fig4 import PAPER_OBJECTS, histogram_buckets, plot_fig4
from rig.bench.lengths import LINUX_24_BUG_DATA_BYTES, function_ranges, length_distribution, merge_all
from rig.errors import RigError
from ccode import PLAIN_FLAGS, compile_c

SOURCES = {
    "sched_like.c": r"""
        struct task { int prio, counter, policy; struct task *next; };
        struct task *runqueue;
        int goodness(struct task *p, int this_cpu) {
            int weight = p->counter;
            if (p->policy) return 1000 + p->prio;
            if (weight) weight += 20 - p->prio + (this_cpu == 3);
            return weight;
        }
        struct task *pick_next(int cpu) {
            struct task *best = 0; int c = -1000;
            for (struct task *p = runqueue; p; p = p->next) {
                int w = goodness(p, cpu);
                if (w > c) { c = w; best = p; }
            }
            if (!c) for (struct task *p = runqueue; p; p = p->next) p->counter = (p->counter >> 1) + p->prio;
            return best;
        }
    """,
    "switchy.c": r"""
        int classify(int op, int a, int b) {
            switch (op) {
            case 0: return a + b;   case 1: return a - b;   case 2: return a * b;
            case 3: return b ? a / b : 0;   case 4: return a << (b & 31);
            case 5: return a >> (b & 31);   case 6: return a & b;   case 7: return a | b;
            case 8: return a ^ b;   case 9: return ~a;   case 10: return -b;
            default: return 0x12345678;
            }
        }
        long long wide(long long x, long long y) { return x * y + (x >> 3) - 0x123456789LL; }
    """,
    "strings.c": r"""
        #include <stddef.h>
        size_t my_strlen(const char *s) { const char *p = s; while (*p) p++; return p - s; }
        void my_memcpy(char *d, const char *s, size_t n) { while (n--) *d++ = *s++; }
        int my_strcmp(const char *a, const char *b) {
            while (*a && *a == *b) { a++; b++; }
            return (unsigned char)*a - (unsigned char)*b;
        }
        char *my_strchr(char *s, int c) { for (; *s; s++) if (*s == (char)c) return s; return 0; }
        static char buffer[4096];
        char *fill(int c) { for (int i = 0; i < 4096; i++) buffer[i] = (char)(c + i); return buffer; }
    """,
}


def compile_objects(directory: Path) -> list[Path]:
    return [compile_c(text, directory, Path(name).stem, flags=PLAIN_FLAGS) for name, text in SOURCES.items()]


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return compile_objects(tmp_path_factory.mktemp("fig4"))


def independent_sweep(obj: Path) -> tuple[dict[int, int], int]:
    """Re-count by hand: each STT_FUNC symbol of .text*, capstone one instruction at a time."""
    counts: dict[int, int] = {}
    function_bytes = 0
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    with open(obj, "rb") as handle:
        elf = ELFFile(handle)
        sections = list(elf.iter_sections())
        for symbol in elf.get_section_by_name(".symtab").iter_symbols():
            if symbol["st_info"]["type"] != "STT_FUNC" or symbol["st_size"] == 0:
                continue
            section = sections[symbol["st_shndx"]]
            code = section.data()[symbol["st_value"]:symbol["st_value"] + symbol["st_size"]]
            function_bytes += len(code)
            offset = 0
            while offset < len(code):
                insn = next(md.disasm(code[offset:], offset, count=1), None)
                assert insn is not None, f"gcc output not decodable at {symbol.name}+{offset}"
                counts[insn.size] = counts.get(insn.size, 0) + 1
                offset += insn.size
    return counts, function_bytes


def test_counts_match_independent_sweep(objects: list[Path]) -> None:
    for obj in objects:
        dist = length_distribution(obj)
        counts, function_bytes = independent_sweep(obj)
        assert {k: v for k, v in dist.counts.items() if v} == counts, obj.name
        assert dist.undecodable == 0 and dist.inline_data == 0
        # Every byte of every function is accounted for, and nothing else.
        assert dist.decoded_bytes + dist.undecodable == function_bytes == dist.function_bytes
        assert dist.function_bytes <= dist.section_bytes
        assert dist.total_instructions == sum(counts.values()) > 10


def test_shares_are_consistent(objects: list[Path]) -> None:
    dists = [length_distribution(obj) for obj in objects]
    for dist in dists + [merge_all(dists)]:
        assert math.isclose(sum(dist.shares.values()), 100.0, abs_tol=1e-9)
        assert math.isclose(dist.share_at_least_5, sum(s for n, s in dist.shares.items() if n >= 5), abs_tol=1e-9)
        assert math.isclose(sum(histogram_buckets(dist).values()), 100.0, abs_tol=1e-9)
        assert 0.0 < dist.share_at_least_5 < 100.0
        assert "GCC" in dist.compiler


def test_merge_adds_counts(objects: list[Path]) -> None:
    dists = [length_distribution(obj) for obj in objects]
    merged = merge_all(dists)
    assert merged.total_instructions == sum(d.total_instructions for d in dists)
    for length in range(1, 16):
        assert merged.counts[length] == sum(d.counts[length] for d in dists)


def test_padding_between_functions_is_not_swept(objects: list[Path]) -> None:
    # gcc aligns functions, so .text holds padding the function symbols do not cover.
    with open(objects[-1], "rb") as handle:
        ranges = function_ranges(ELFFile(handle))
    starts = [r.start for r in ranges if r.section == ".text"]
    assert len(starts) == len(set(starts)) >= 3
    assert all(a.end <= b.start for a, b in zip(ranges, ranges[1:]) if a.section == b.section)


def test_ud2_inline_data_is_skipped_not_decoded(tmp_path: Path) -> None:
    # The 2.4 BUG() idiom compiled for real (non-PIC, as the kernel): ud2, .word line, .long file.
    obj = compile_c(r"""
        void bug_if(int *p) {
            if (!p) __asm__ __volatile__("ud2\n\t.word %c0\n\t.long %c1" : : "i"(123), "i"("bug.c"));
            *p = 42;
        }
    """, tmp_path, "bug", ["-fno-pic"], flags=PLAIN_FLAGS)
    plain = length_distribution(obj)
    kernel_style = length_distribution(obj, ud2_data_bytes=LINUX_24_BUG_DATA_BYTES)
    assert kernel_style.inline_data == LINUX_24_BUG_DATA_BYTES
    assert kernel_style.decoded_bytes + kernel_style.inline_data + kernel_style.undecodable == kernel_style.function_bytes
    assert plain.decoded_bytes + plain.undecodable == plain.function_bytes
    assert plain.total_instructions > kernel_style.total_instructions


def test_not_an_elf_is_a_rig_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.o"
    bogus.write_text("not an elf")
    with pytest.raises(RigError):
        length_distribution(bogus)
    with pytest.raises(RigError):
        length_distribution(tmp_path / "missing.o")


def test_plot_writes_png(objects: list[Path], tmp_path: Path) -> None:
    png = plot_fig4([length_distribution(o) for o in objects], tmp_path / "fig4.png", caption="test run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_paper_objects_from_the_built_kernel(kernel) -> None:  # noqa: ANN001 - conftest fixture
    tree = kernel.tree
    dists = [length_distribution(tree / rel, name=Path(rel).name, ud2_data_bytes=LINUX_24_BUG_DATA_BYTES)
             for rel in PAPER_OBJECTS]
    for dist in dists:
        assert dist.total_instructions > 500
        assert dist.decoded_bytes + dist.inline_data + dist.undecodable == dist.function_bytes
        # With BUG() data skipped, gcc's kernel code decodes cleanly.
        assert dist.undecodable == 0, dist.name
        assert math.isclose(sum(dist.shares.values()), 100.0, abs_tol=1e-9)
        print(f"{dist.name}: {dist.total_instructions} insns, >=5 B {dist.share_at_least_5:.1f}%, "
              f"{ {k: round(v, 1) for k, v in histogram_buckets(dist).items()} }")
    merged = merge_all(dists)
    print(f"all four: {merged.total_instructions} insns, >=5 B {merged.share_at_least_5:.1f}%")
    vmlinux = tree / "vmlinux"
    if vmlinux.is_file():
        whole = length_distribution(vmlinux, ud2_data_bytes=LINUX_24_BUG_DATA_BYTES)
        assert whole.decoded_bytes + whole.inline_data + whole.undecodable == whole.function_bytes
        assert whole.total_instructions > merged.total_instructions
        print(f"vmlinux: {whole.total_instructions} insns, >=5 B {whole.share_at_least_5:.1f}%, "
              f"undecodable {whole.undecodable} B")
