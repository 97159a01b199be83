"""How many jumps does the splicer really need on the real kernel? (input to Fig. 5)

The pure planner (no guest) is run at every instruction boundary of every function of the
paper's four objects as linked into vmlinux, in jmp mode with the paper's single-instruction
policy: a boundary gets 1 jmp (``jmp rel32`` fits), 1 + k jmps (a ``jmp rel8`` and k
springboards in the kernel's padding), or a refusal (with its reason: too short for even a
rel8, no springboard route, unrelocatable, ...). Functions are matched to the objects by name
and size from each ``.o``'s symbol table.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage, Symbol
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import PatchKind, SpliceRefused, plan_splice
from rig.splicer.repository import Mode, Policy, RepositoryLayout


@dataclass
class HopCensus:
    name: str
    functions: int = 0
    unmatched: int = 0
    boundaries: int = 0
    hops: Counter[int] = field(default_factory=Counter)           # jmps executed -> boundaries
    refusals: Counter[str] = field(default_factory=Counter)       # reason -> boundaries
    short_hops: list[int] = field(default_factory=list)           # hops at boundaries < 5 bytes

    def to_dict(self) -> dict[str, Any]:
        spliceable = sum(self.hops.values())
        return {"name": self.name, "functions": self.functions, "unmatched_functions": self.unmatched,
                "boundaries": self.boundaries, "spliceable": spliceable,
                "hops": {str(k): v for k, v in sorted(self.hops.items())},
                "refusals": dict(sorted(self.refusals.items())),
                "share_rel32_percent": 100.0 * self.hops.get(1, 0) / self.boundaries if self.boundaries else 0.0,
                "share_springboard_percent": 100.0 * sum(v for k, v in self.hops.items() if k > 1)
                / self.boundaries if self.boundaries else 0.0,
                "share_refused_percent": 100.0 * sum(self.refusals.values()) / self.boundaries
                if self.boundaries else 0.0,
                "short_site_hops": {str(k): v for k, v in sorted(Counter(self.short_hops).items())}}


def object_functions(obj: Path) -> list[tuple[str, int]]:
    """(name, size) of the sized functions in a relocatable object's .text."""
    with open(obj, "rb") as handle:
        elf = ELFFile(handle)
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            return []
        out = []
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"] > 0 and isinstance(shndx, int) \
                    and elf.get_section(shndx).name == ".text":
                out.append((sym.name, sym["st_size"]))
        return out


def census(image: KernelImage, objects: Sequence[tuple[str, Path]],
           progress: Callable[[str, int, int], None] | None = None) -> list[HopCensus]:
    gaps = padding_gaps(image)
    layout = RepositoryLayout()
    by_name: dict[str, list[Symbol]] = {}
    for sym in image.symbols:
        by_name.setdefault(sym.name, []).append(sym)
    results = []
    for label, obj in objects:
        result = HopCensus(label)
        functions = object_functions(obj)
        for done, (name, size) in enumerate(functions, start=1):
            if progress:
                progress(label, done, len(functions))
            matches = [s for s in by_name.get(name, []) if s.kind == "FUNC" and s.size == size]
            if len(matches) != 1:
                result.unmatched += 1
                continue
            result.functions += 1
            code = disassemble_function(image, matches[0])
            for insn in code.instructions:
                if insn.is_data:
                    continue
                result.boundaries += 1
                try:
                    plan = plan_splice(code, insn.address, Mode.JMP, Policy.SINGLE, layout, 0,
                                       patch_kind=PatchKind.EMPTY, springboard_space=gaps)
                except SpliceRefused as refused:
                    result.refusals[refused.reason] += 1
                    continue
                result.hops[plan.hops] += 1
                if insn.size < 5:
                    result.short_hops.append(plan.hops)
        results.append(result)
    return results


def merged(results: Sequence[HopCensus], name: str = "all four") -> HopCensus:
    total = HopCensus(name)
    for r in results:
        total.functions += r.functions
        total.unmatched += r.unmatched
        total.boundaries += r.boundaries
        total.hops.update(r.hops)
        total.refusals.update(r.refusals)
        total.short_hops += r.short_hops
    return total
