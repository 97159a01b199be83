"""Turning a bench run's data into report tables, PNG figures and ``report.md``.

Table 1 cells are in the clock's unit: host TSC ticks (TCG), guest instructions (TCG -icount,
raw TSC divided by 2^shift) or CPU cycles (KVM); the caption of every table says which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.table import Table as RichTable

from rig.bench import fig4, fig5, report
from rig.bench.report import _cell as cell_text  # exactly the text report.rich_table puts in a cell
from rig.bench.figure import pyplot, save_figure
from rig.bench.provenance import Provenance
from rig.bench.table1 import PAPER
from rig.kernel.build import KernelBuild

STATIC = "none (static analysis of the built kernel)"
PAPER_TRAP_RELATIVE = PAPER["trap_cycles"] / PAPER["jmp_cycles"]


def _prov(kernel: KernelBuild, accelerator: str, meaning: str, n: int, seed: int | None = None) -> Provenance:
    return Provenance.collect(accelerator=accelerator, clock_meaning=meaning, n=n, seed=seed,
                              kernel_build_id=kernel.build_id, gcc_version=kernel.info["host"]["gcc"])


def _paper_cell(key: str) -> str:
    if key == "jmp":
        return f"{PAPER['jmp_cycles']} cycles (1)"
    if key == "trap":
        return f"{PAPER['trap_cycles']} cycles ({PAPER_TRAP_RELATIVE:.1f})"
    return ""


def table1_table(result: dict[str, Any]) -> report.Table:
    unit = result["tsc_per_unit"]

    def u(value: float | None) -> float | str:
        return "" if value is None else (value / unit if unit != 1 else value)

    header = ["row", "jmps", "min", "median", "mean", "p95", "max", "overhead (min)", "overhead (median)",
              "x jmp splice (min)", "x jmp splice (median)", "paper (P4 1.4 GHz)"]
    rows = []
    for row in result["rows"]:
        stats, overhead = row["stats"], row.get("overhead", {})
        relative = row.get("relative", {})
        rows.append([row["label"], row.get("hops", ""), u(stats["min"]), u(stats["median"]), u(stats["mean"]),
                     u(stats["p95"]), u(stats["max"]), u(overhead.get("min")), u(overhead.get("median")),
                     *(_ratio(relative.get(stat)) for stat in ("min", "median")), _paper_cell(row["key"])])
    return report.Table(f"Table 1 ({result['clock']}; unit: {result['unit']}): getpid with splices at "
                        f"{result['function']}+0, {result['n']} calls x {result['runs']} runs; floors in "
                        "kernel mode, overhead = row - unspliced (paths) or - rdtsc pair (floors)", header, rows)


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def table1_notes(result: dict[str, Any]) -> list[str]:
    notes = [f"Clock {result['clock']}: {result['clock_meaning']}. Accelerator choice: {result['accel_reason']}."]
    for stat, s in result["summary"].items():
        parts = []
        if s.get("trap_to_jmp") is not None:
            parts.append(f"jmp : trap splice overhead = 1 : {_ratio(s['trap_to_jmp'])} "
                         f"(paper 1 : {PAPER_TRAP_RELATIVE:.1f} in P4 cycles)")
        if s.get("trap_to_int_floor") is not None:
            parts.append(f"trap splice / bare int->iret floor = {_ratio(s['trap_to_int_floor'])} "
                         "(target <= 1.2 in real cycles)")
        if s.get("trap_own_to_jmp") is not None:
            parts.append(f"with a vector of its own (no table lookup): jmp : trap = 1 : {_ratio(s['trap_own_to_jmp'])}, "
                         f"trap / bare int->iret floor = {_ratio(s.get('trap-own_to_int_floor'))}")
        if s.get("jmp_to_jmp-far_floor") is not None:
            parts.append(f"jmp splice / bare jmp out+back floor = {_ratio(s['jmp_to_jmp-far_floor'])}")
        notes.append(f"by the {stat}: " + "; ".join(parts) + ".")
    same = [k for k, v in result["identical_across_runs"].items() if v]
    notes.append(f"Statistics identical in every run of this boot: {', '.join(same) or 'none'}.")
    return notes


def latency_table(lat: dict[str, Any]) -> report.Table:
    header = ["mode", "splice stall median ms", "splice stall max ms", "unsplice median ms", "unsplice max ms",
              "prep stop median ms", "busy retries"]
    rows = [[mode, m["splice"]["median_ms"], m["splice"]["max_ms"], m["unsplice"]["median_ms"],
             m["unsplice"]["max_ms"], m["prep"]["median_ms"], m["busy_retries"]] for mode, m in lat["modes"].items()]
    return report.Table(f"Splice latency: guest held stopped (host-timed), {lat['cycles']} splice/unsplice "
                        f"cycles per mode at {lat['function']}+0", header, rows)


def hops_table(census: dict[str, Any]) -> report.Table:
    header = ["object", "functions", "instruction boundaries", "jmp rel32 %", "springboard chain %",
              "hop counts (jmps: sites)", "refused %", "refusals"]
    rows = []
    for c in [*census["objects"], census["all"]]:
        rows.append([c["name"], c["functions"], c["boundaries"], c["share_rel32_percent"],
                     c["share_springboard_percent"], ", ".join(f"{k}: {v}" for k, v in c["hops"].items()),
                     c["share_refused_percent"], ", ".join(f"{k}: {v}" for k, v in c["refusals"].items())])
    return report.Table("Hops the splicer really needs: pure planner at every instruction boundary of the four "
                        "objects' functions in vmlinux (jmp mode, single-instruction policy)", header, rows)


def plot_table1(results: list[dict[str, Any]], out_png: Path, caption: str) -> Path:
    """Overheads by the minimum, one panel per clock in its own unit, and the paper's cycles.

    Absolute, not normalised: under plain TCG the jmp splice's few ticks can vanish into host-time
    noise, which would make every ratio meaningless. Overheads the clock cannot resolve (<= 0) get
    a marker at the axis instead of a bar."""
    plt = pyplot()
    panels = len(results) + 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.8), squeeze=False, sharey=True)
    labels: list[str] = []
    for result in results:
        for row in result["rows"]:
            if "overhead" in row and row["label"] not in labels:
                labels.append(row["label"])
    ys = list(range(len(labels)))
    for ax, result in zip(axes[0], results):
        unit = result["tsc_per_unit"]
        over = {row["label"]: row["overhead"]["min"] / unit for row in result["rows"] if "overhead" in row}
        shown = [(y, over[label]) for y, label in zip(ys, labels) if over.get(label, 0) > 0]
        hidden = [y for y, label in zip(ys, labels) if label in over and over[label] <= 0]
        ax.barh([y for y, _ in shown], [v for _, v in shown], 0.6)
        if hidden:
            ax.plot([0.5] * len(hidden), hidden, "x", color="red", label="<= 0: below the clock's resolution")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlim(left=0.4)
        ax.set_title(f"{result['clock']}", fontsize=9)
        ax.set_xlabel(f"overhead, {result['unit']} (min)", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    keys = {row["label"]: row["key"] for result in results for row in result["rows"]}
    paper = [(y, PAPER["jmp_cycles"] if keys[label] == "jmp" else PAPER["trap_cycles"])
             for y, label in zip(ys, labels) if keys.get(label) in ("jmp", "trap")]
    axes[0][-1].barh([y for y, _ in paper], [v for _, v in paper], 0.6, color="grey")
    axes[0][-1].set_xscale("log")
    axes[0][-1].set_xlim(left=10)
    axes[0][-1].set_title("paper (P4 1.4 GHz)", fontsize=9)
    axes[0][-1].set_xlabel("cycles", fontsize=8)
    axes[0][-1].grid(axis="x", which="both", alpha=0.3)
    axes[0][0].set_yticks(ys, labels, fontsize=8)
    fig.suptitle("Table 1 reproduced: what each splice adds to a getpid call, and the floors")
    fig.subplots_adjust(left=0.2, wspace=0.08)
    return save_figure(fig, out_png, caption, caption_size=6)


def fig5_notes(result: fig5.Fig5Result, census: dict[str, Any] | None) -> list[str]:
    notes = [c.verdict for c in result.curves]
    if census:
        a = census["all"]
        refused = a["refusals"]
        trap_only = sum(v for k, v in refused.items() if k not in ("too-short", "unrelocatable"))
        notes.append(
            f"Where the conclusion holds and where not: a jmp rel32 reaches the whole 32-bit space, so on the "
            f"real kernel the offset of the target buffer never matters -- the growth of the paper's rel8-chain "
            f"curve is an artefact of its model. What matters is whether a site can hold a jmp at all: of "
            f"{a['boundaries']} instruction boundaries, {a['share_rel32_percent']:.1f}% take a jmp rel32 (1 jmp), "
            f"{a['share_springboard_percent']:.1f}% need a jmp rel8 plus springboards in the padding (sites by "
            f"jmps executed: {', '.join(f'{k}: {v}' for k, v in a['hops'].items() if k != '1')}), and "
            f"{a['share_refused_percent']:.1f}% are refused ({', '.join(f'{k}: {v}' for k, v in refused.items())}). "
            f"At the {trap_only} sites of >= 2 bytes without a springboard route only the 2-byte trap works: there "
            "the paper's conclusion (trap wins) holds for a different reason than its model gives; 1-byte "
            "instructions take neither a jmp nor int $n under the single-instruction policy, only the "
            "1-byte int3 (see its Table 1 row).")
        notes.append("The real-splicer curve draws hop counts only from spliceable short sites and charges each "
                     "hop a whole jmp splice; measured chains cost less (each extra springboard adds one jmp, "
                     "the jmp splice itself is two: out and back).")
    return notes


def write_run(run_dir: Path, data: dict[str, Any], kernel: KernelBuild,
              fig5_result: fig5.Fig5Result | None) -> list[report.Section]:
    sections: list[report.Section] = []
    n = data["options"]["n"]
    for result in data.get("table1", []):
        prov = _prov(kernel, result["clock"], result["clock_meaning"], n)
        section = report.Section(f"Table 1 — {result['clock']}", prov, [table1_table(result)],
                                 notes=table1_notes(result))
        if "latency" in result:
            section.tables.append(latency_table(result["latency"]))
        sections.append(section)
    if data.get("table1"):
        clocks = "; ".join(f"{r['clock']}: {r['clock_meaning']}" for r in data["table1"])
        prov = _prov(kernel, ", ".join(r["clock"] for r in data["table1"]), clocks, n)
        plot_table1(data["table1"], run_dir / "table1.png", prov.summary())
        sections.append(report.Section("Table 1 — overheads", prov, figures=["table1.png"]))
    if "fig4" in data:
        dists = [_dist(d) for d in data["fig4"]]
        prov = _prov(kernel, STATIC, "instruction counts (capstone linear sweep)", sum(d.total_instructions for d in dists[:4]))
        fig4.plot_fig4(dists, run_dir / "fig4.png", prov.summary())
        sections.append(report.Section("Fig. 4 — instruction sizes", prov, [report.fig4_table(dists)],
                                       figures=["fig4.png"], notes=[f"Paper: {fig4.PAPER_CLAIM}."]))
    census = data.get("hops")
    if census:
        prov = _prov(kernel, STATIC, "instruction boundaries (pure planner, no guest)", census["all"]["boundaries"])
        sections.append(report.Section("Hops the splicer needs on the real kernel", prov, [hops_table(census)],
                                       notes=[f"census {'read from cache' if census.get('cached') else 'computed'}"
                                              f" ({census.get('seconds', '?')} s to compute)"]))
    if fig5_result is not None:
        prov = _prov(kernel, STATIC, "relative cost (jmp splice = 1)", fig5_result.trials, seed=fig5_result.seed)
        fig5.plot_fig5(fig5_result, run_dir / "fig5.png", prov.summary())
        sections.append(report.Section("Fig. 5 — modeled average cost vs offset", prov,
                                       [report.fig5_table(fig5_result)], figures=["fig5.png"],
                                       notes=fig5_notes(fig5_result, census)))
    report.write_report(run_dir, "trapsplice bench", sections)
    return sections


def _dist(d: dict[str, Any]) -> fig4.LengthDistribution:
    from rig.bench.run import dist_from_dict

    return dist_from_dict(d)


def terminal_tables(sections: list[report.Section],
                    width: int | None = None) -> list[tuple[Any, Provenance, list[str]]]:
    """(rich table, provenance, notes) per report table; a section's notes follow its last table.

    With ``width`` (the terminal's columns) every table fits it without splitting a word: columns
    narrow only down to their longest word, and a table still too wide is shown in parts that
    each repeat its first column."""
    out: list[tuple[Any, Provenance, list[str]]] = []
    for section in sections:
        for index, table in enumerate(section.tables):
            last = index == len(section.tables) - 1
            if "paper's conclusion" in table.header:  # long prose: the notes under the table carry it
                keep = [i for i, h in enumerate(table.header) if h != "paper's conclusion"]
                table = report.Table(table.caption, [table.header[i] for i in keep],
                                     [[row[i] for i in keep] for row in table.rows])
            parts = fit_table(table, section.provenance, width) if width else [
                report.rich_table(table, section.provenance)]
            for part_index, part in enumerate(parts):
                final = part_index == len(parts) - 1
                out.append((part, section.provenance, section.notes if last and final else []))
    return out


# Rich's default table box: one border column at each side and between columns, a space of
# padding either side of every cell.
_BORDER, _PADDING = 1, 2


def _words_width(text: str) -> tuple[int, int]:
    """(longest word, whole text) in terminal cells."""
    words = text.split()
    return max((cell_len(word) for word in words), default=0), cell_len(text)


def _fits(mins: list[int], width: int) -> bool:
    return sum(mins) + len(mins) * (_BORDER + _PADDING) + _BORDER <= width


def fit_table(table: report.Table, provenance: Provenance, width: int) -> list[RichTable]:
    """``table`` as rich tables at most ``width`` cells wide in which no word is split (unless a
    single word is wider than the terminal)."""
    texts = [list(table.header)] + [[cell_text(c) for c in row] for row in table.rows]
    measured = [[_words_width(row[col]) for row in texts] for col in range(len(table.header))]
    mins = [max(word for word, _ in column) for column in measured]
    # Room goes to what the rows need; a header wraps at its spaces instead.
    maxs = [max([mins[col]] + [whole for _, whole in column[1:]]) for col, column in enumerate(measured)]
    groups: list[list[int]] = []
    for col in range(1, len(table.header)):  # column 0 names the row: every part repeats it
        if groups and _fits([mins[c] for c in [0, *groups[-1], col]], width):
            groups[-1].append(col)
        else:
            groups.append([col])
    parts = []
    for number, group in enumerate(groups or [[]], start=1):
        columns = [0, *group]
        widths = _spread([mins[c] for c in columns], [maxs[c] for c in columns],
                         width - len(columns) * (_BORDER + _PADDING) - _BORDER)
        part = report.rich_table(report.Table(table.caption, [table.header[c] for c in columns],
                                              [[row[c] for c in columns] for row in table.rows]), provenance)
        if len(groups) > 1:
            part.title = table.caption if number == 1 else f"(continued, part {number} of {len(groups)})"
            if number < len(groups):
                part.caption = None  # the provenance once, under the last part
        for column, column_width in zip(part.columns, widths):
            column.width = column_width  # fixed: rich would otherwise shrink columns below their words
        parts.append(part)
    return parts


def _spread(mins: list[int], maxs: list[int], room: int) -> list[int]:
    """Column widths from their minimums up: the columns that need least to show their text on
    one line get it first (a short header stays whole), the rest of the room goes to the others."""
    widths = list(mins)
    spare = room - sum(widths)
    for i in sorted(range(len(widths)), key=lambda i: maxs[i] - mins[i]):
        grant = max(0, min(maxs[i] - widths[i], spare))
        widths[i] += grant
        spare -= grant
    return widths
