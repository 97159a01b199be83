"""Fig. 4 of the paper: how long are the instructions a splice would overwrite?

The paper disassembled eepro100.o, sched.o, slab.o and page_alloc.o (Linux 2.4.20,
gcc 3.2) and reported the share of each instruction length, concluding that "at most
30% of instructions are >= 5 bytes" -- i.e. most sites cannot hold a ``jmp rel32``.

We redo it on the built kernel's objects (and the whole vmlinux) with the linear sweep of
:mod:`rig.bench.lengths`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rig.bench.figure import pyplot, save_figure
from rig.bench.lengths import LINUX_24_BUG_DATA_BYTES, LengthDistribution, length_distribution, merge_all
from rig.bench.part import STATIC_ANALYSIS, ReportContext, StaticPart
from rig.bench.sections import Section, Table
from rig.errors import RigError
from rig.kernel.build import KernelBuild

PAPER_CLAIM = (
    "at most 30% of instructions are >= 5 bytes (eepro100.o, sched.o, slab.o, page_alloc.o; "
    "Linux 2.4.20, gcc 3.2)"
)
PAPER_OBJECTS = ("drivers/net/eepro100.o", "kernel/sched.o", "mm/slab.o", "mm/page_alloc.o")
FOUR_OBJECTS = "four objects"  # the paper's objects merged: what Fig. 5 draws its lengths from


@dataclass
class Fig4Result:
    """One distribution per paper object, then the four merged, then vmlinux."""

    distributions: list[LengthDistribution]

    @property
    def paper_objects(self) -> list[LengthDistribution]:
        return self.distributions[:len(PAPER_OBJECTS)]

    @property
    def four_objects(self) -> LengthDistribution:
        return next(d for d in self.distributions if d.name == FOUR_OBJECTS)


def measure(kernel: KernelBuild) -> Fig4Result:
    dists = [length_distribution(kernel.object(o), name=Path(o).name, ud2_data_bytes=LINUX_24_BUG_DATA_BYTES)
             for o in PAPER_OBJECTS]
    dists.append(merge_all(dists, FOUR_OBJECTS))
    dists.append(length_distribution(kernel.vmlinux, name="vmlinux", ud2_data_bytes=LINUX_24_BUG_DATA_BYTES))
    return Fig4Result(dists)


def histogram_buckets(dist: LengthDistribution, last: int = 10) -> dict[str, float]:
    """Shares for lengths 1..last-1 and a ``last+`` bucket, as the paper's Fig. 4 axis."""
    buckets = {str(n): dist.share(n) for n in range(1, last)}
    buckets[f"{last}+"] = sum(dist.share(n) for n in dist.counts if n >= last)
    return buckets


def fig4_table(distributions: Sequence[LengthDistribution]) -> Table:
    buckets = list(histogram_buckets(distributions[0]).keys()) if distributions else []
    header = (["object", "instructions", "undecodable B", "BUG() data B"] + [f"{b} B %" for b in buckets]
              + [">=5 B %", "compiler"])
    rows = [[d.name, d.total_instructions, d.undecodable, d.inline_data] + list(histogram_buckets(d).values())
            + [d.share_at_least_5, d.compiler] for d in distributions]
    return Table(f"Fig. 4: instruction sizes (paper: {PAPER_CLAIM})", header, rows)


def plot_fig4(distributions: Iterable[LengthDistribution], out_png: Path, caption: str = "") -> Path:
    """Grouped bars per object: ratio of occurrence (%) by instruction size."""
    import numpy as np

    plt = pyplot()

    dists = list(distributions)
    if not dists:
        raise RigError("no distributions to plot", "pass at least one ELF file to Fig. 4")
    labels = list(histogram_buckets(dists[0]).keys())
    x = np.arange(len(labels))
    width = 0.8 / len(dists)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, dist in enumerate(dists):
        values = list(histogram_buckets(dist).values())
        ax.bar(x + (i - (len(dists) - 1) / 2) * width, values, width,
               label=f"{dist.name} (>=5 B: {dist.share_at_least_5:.1f}%)")
    ax.set_xticks(x, labels)
    ax.set_xlabel("instruction size (bytes)")
    ax.set_ylabel("ratio of occurrence (%)")
    ax.set_title("Fig. 4 reproduced: distribution of instruction sizes")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="paper: at most 30% are >= 5 B", title_fontsize=8)
    return save_figure(fig, out_png, caption)


@dataclass(frozen=True)
class Fig4Part(StaticPart[Fig4Result]):
    key: ClassVar[str] = "fig4"
    title: ClassVar[str] = "Fig. 4 sweep"
    switch: ClassVar[str] = "fig4"

    def measure(self, kernel: KernelBuild) -> Fig4Result:
        return measure(kernel)

    def to_json(self, result: Fig4Result) -> Any:
        return [d.to_dict() for d in result.distributions]

    def sections(self, result: Fig4Result, report: ReportContext) -> list[Section]:
        dists = result.distributions
        prov = report.provenance(accelerator=STATIC_ANALYSIS,
                                 clock_meaning="instruction counts (capstone linear sweep)",
                                 n=sum(d.total_instructions for d in result.paper_objects))
        plot_fig4(dists, report.run_dir / "fig4.png", prov.summary())
        return [Section("Fig. 4 — instruction sizes", prov, [fig4_table(dists)], figures=["fig4.png"],
                        notes=[f"Paper: {PAPER_CLAIM}."])]
