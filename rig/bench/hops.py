"""How many jumps does the splicer really need on the real kernel? (input to Fig. 5)

The pure planner (no guest) is run at every instruction boundary of every function of the
paper's four objects as linked into vmlinux, in jmp mode with the paper's single-instruction
policy: a boundary gets 1 jmp (``jmp rel32`` fits), 1 + k jmps (a ``jmp rel8`` and k
springboards in the kernel's padding), or a refusal (with its reason: too short for even a
rel8, no springboard route, unrelocatable, ...). Functions are matched to the objects by name
and size from each ``.o``'s symbol table.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from rig import instrument, paths
from rig.bench.fig4 import PAPER_OBJECTS
from rig.bench.part import STATIC_ANALYSIS, ReportContext, StaticPart
from rig.bench.sections import Section, Table
from rig.kernel.build import KernelBuild
from rig.splicer.analysis import disassemble_function
from rig.splicer.image import KernelImage, Symbol
from rig.splicer.kinds import Mode, PatchKind, Policy, SpliceRefused
from rig.splicer.padding import padding_gaps
from rig.splicer.plan import plan_splice
from rig.splicer.repository import RepositoryLayout


# Refusals a trap splice has too: a 1-byte site, an instruction that cannot be moved.
TRAP_REFUSES_TOO = ("too-short", "unrelocatable")


@dataclass
class HopCensus:
    name: str
    functions: int = 0
    unmatched: int = 0
    boundaries: int = 0
    hops: Counter[int] = field(default_factory=Counter)           # jmps executed -> boundaries
    refusals: Counter[str] = field(default_factory=Counter)       # reason -> boundaries
    short_hops: list[int] = field(default_factory=list)           # hops at boundaries < 5 bytes

    @property
    def spliceable(self) -> int:
        return sum(self.hops.values())

    def _percent(self, count: int) -> float:
        return 100.0 * count / self.boundaries if self.boundaries else 0.0

    @property
    def share_rel32_percent(self) -> float:
        return self._percent(self.hops.get(1, 0))

    @property
    def share_springboard_percent(self) -> float:
        return self._percent(sum(v for k, v in self.hops.items() if k > 1))

    @property
    def share_refused_percent(self) -> float:
        return self._percent(sum(self.refusals.values()))

    @property
    def trap_only_sites(self) -> int:
        """Refused sites of >= 2 bytes whose instructions move: only the 2-byte trap fits there."""
        return sum(v for k, v in self.refusals.items() if k not in TRAP_REFUSES_TOO)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "functions": self.functions, "unmatched_functions": self.unmatched,
                "boundaries": self.boundaries, "spliceable": self.spliceable,
                "hops": {str(k): v for k, v in sorted(self.hops.items())},
                "refusals": dict(sorted(self.refusals.items())),
                "share_rel32_percent": self.share_rel32_percent,
                "share_springboard_percent": self.share_springboard_percent,
                "share_refused_percent": self.share_refused_percent,
                "short_site_hops": {str(k): v for k, v in sorted(Counter(self.short_hops).items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HopCensus:
        """Back from :meth:`to_dict` (``short_hops`` comes back sorted: to_dict keeps only counts)."""
        short_hops = [int(k) for k, v in d["short_site_hops"].items() for _ in range(v)]
        return cls(d["name"], d["functions"], d["unmatched_functions"], d["boundaries"],
                   Counter({int(k): v for k, v in d["hops"].items()}), Counter(d["refusals"]), sorted(short_hops))


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


def linked_functions(image: KernelImage, obj: Path) -> list[Symbol | None]:
    """Each sized .text function of ``obj`` as linked into vmlinux: the one vmlinux function of that
    name and size, or None where there is none or several (a name shared by same-sized statics)."""
    by_name: dict[str, list[Symbol]] = {}
    for sym in image.symbols:
        if sym.kind == "FUNC":
            by_name.setdefault(sym.name, []).append(sym)
    linked: list[Symbol | None] = []
    for name, size in object_functions(obj):
        matches = [s for s in by_name.get(name, []) if s.size == size]
        linked.append(matches[0] if len(matches) == 1 else None)
    return linked


def census(image: KernelImage, objects: Sequence[tuple[str, Path]],
           progress: Callable[[str, int, int], None] | None = None) -> list[HopCensus]:
    gaps = padding_gaps(image)
    layout = RepositoryLayout()
    results = []
    for label, obj in objects:
        result = HopCensus(label)
        functions = linked_functions(image, obj)
        for done, symbol in enumerate(functions, start=1):
            if progress:
                progress(label, done, len(functions))
            if symbol is None:
                result.unmatched += 1
                continue
            result.functions += 1
            code = disassemble_function(image, symbol)
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


@dataclass
class HopsResult:
    objects: list[HopCensus]
    all: HopCensus
    short_hops: list[int]  # hops at spliceable sites < 5 bytes in census order: Fig. 5 draws from it
    seconds: float         # to compute the census (when it was computed, not read)
    cached: bool

    def to_json(self) -> dict[str, Any]:
        return {"objects": [c.to_dict() for c in self.objects], "all": self.all.to_dict(),
                "short_hops": self.short_hops, "seconds": self.seconds, "cached": self.cached}

    @classmethod
    def from_json(cls, d: dict[str, Any], cached: bool) -> HopsResult:
        return cls([HopCensus.from_dict(c) for c in d["objects"]], HopCensus.from_dict(d["all"]),
                   list(d["short_hops"]), d["seconds"], cached)


def _planner_digest() -> str:
    """The pure splicer's source: the census is the planner's verdict, so a changed planner recounts."""
    sources = sorted((Path(__file__).parent.parent / "splicer").glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]


def census_cached(kernel: KernelBuild) -> HopsResult:
    """The census of the paper's four objects; a pure function of the build and the planner, so cached."""
    cache = paths.cache_dir("bench") / f"hops-{kernel.build_id}-{_planner_digest()}.json"
    if cache.is_file():
        return HopsResult.from_json(json.loads(cache.read_text()), cached=True)
    started = time.monotonic()
    image = instrument.load_image(kernel.vmlinux)
    per_object = census(image, [(Path(o).name, kernel.object(o)) for o in PAPER_OBJECTS])
    total = merged(per_object)
    result = HopsResult(per_object, total, total.short_hops, round(time.monotonic() - started, 2), cached=False)
    stored = result.to_json()
    del stored["cached"]
    cache.write_text(json.dumps(stored))
    return result


def _counts(counter: Counter[Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def hops_table(result: HopsResult) -> Table:
    header = ["object", "functions", "instruction boundaries", "jmp rel32 %", "springboard chain %",
              "hop counts (jmps: sites)", "refused %", "refusals"]
    rows = [[c.name, c.functions, c.boundaries, c.share_rel32_percent, c.share_springboard_percent, _counts(c.hops),
             c.share_refused_percent, _counts(c.refusals)] for c in [*result.objects, result.all]]
    return Table("Hops the splicer really needs: pure planner at every instruction boundary of the four "
                 "objects' functions in vmlinux (jmp mode, single-instruction policy)", header, rows)


@dataclass(frozen=True)
class HopsPart(StaticPart[HopsResult]):
    key: ClassVar[str] = "hops"
    title: ClassVar[str] = "hop census"
    switch: ClassVar[str] = "fig5"  # Fig. 5's real-splicer curve draws from it

    def measure(self, kernel: KernelBuild) -> HopsResult:
        return census_cached(kernel)

    def to_json(self, result: HopsResult) -> Any:
        return result.to_json()

    def sections(self, result: HopsResult, report: ReportContext) -> list[Section]:
        prov = report.provenance(accelerator=STATIC_ANALYSIS, clock_meaning="instruction boundaries (pure planner, "
                                 "no guest)", n=result.all.boundaries)
        how = "read from cache" if result.cached else "computed"
        return [Section("Hops the splicer needs on the real kernel", prov, [hops_table(result)],
                        notes=[f"census {how} ({result.seconds} s to compute)"])]
