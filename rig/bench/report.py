"""Writing a benchmark run: its directory, JSON data, Markdown report, terminal tables.

A run lives in ``reports/<run-id>/`` (run-id = UTC timestamp + short random suffix so two
runs in the same second do not collide).  Every table and figure is written with its
provenance caption, so nothing in ``report.md`` is a bare number.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table as RichTable

from rig.bench.fig4 import PAPER_CLAIM, LengthDistribution, histogram_buckets
from rig.bench.fig5 import Fig5Result
from rig.bench.provenance import Provenance
from rig.errors import RigError


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def new_run_dir(reports_root: Path) -> Path:
    run_dir = Path(reports_root) / new_run_id()
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise RigError(f"cannot create the report directory {run_dir}: {exc.strerror}",
                       "check that the reports directory is writable") from exc
    return run_dir


def write_json(run_dir: Path, name: str, data: Any) -> Path:
    """Write ``data`` as ``<run_dir>/<name>.json`` (``name`` may already end in .json)."""
    path = Path(run_dir) / (name if name.endswith(".json") else f"{name}.json")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Any]]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise RigError(f"table '{self.caption}' has a row of {len(row)} cells for {len(self.header)} columns",
                               "give every row one cell per header column")


@dataclass
class Section:
    title: str
    provenance: Provenance
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # file names relative to the run directory
    notes: list[str] = field(default_factory=list)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def table_markdown(table: Table, provenance: Provenance) -> str:
    lines = [f"**{table.caption}**", "",
             "| " + " | ".join(_cell(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    lines += ["", f"*Provenance: {provenance.summary()}*", ""]
    return "\n".join(lines)


def section_markdown(section: Section) -> str:
    parts = [f"## {section.title}", ""]
    for table in section.tables:
        parts.append(table_markdown(table, section.provenance))
    for figure in section.figures:
        parts += [f"![{figure}]({figure})", "", f"*{figure} -- provenance: {section.provenance.summary()}*", ""]
    for note in section.notes:
        parts += [f"- {note}"]
    if section.notes:
        parts.append("")
    return "\n".join(parts)


def write_report(run_dir: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write ``report.md``; figures must already exist in ``run_dir``."""
    missing = [f for s in sections for f in s.figures if not (Path(run_dir) / f).is_file()]
    if missing:
        raise RigError(f"report figures missing from {run_dir}: {', '.join(missing)}",
                       "save the plots into the run directory before writing the report")
    body = [f"# {title}", "", f"Run `{Path(run_dir).name}`", ""] + [section_markdown(s) for s in sections]
    path = Path(run_dir) / "report.md"
    path.write_text("\n".join(body))
    return path


# --- Fig. 4 / Fig. 5 as report tables and terminal tables -------------------------------------

def fig4_table(distributions: Sequence[LengthDistribution]) -> Table:
    buckets = list(histogram_buckets(distributions[0]).keys()) if distributions else []
    header = (["object", "instructions", "undecodable B", "BUG() data B"] + [f"{b} B %" for b in buckets]
              + [">=5 B %", "compiler"])
    rows = [[d.name, d.total_instructions, d.undecodable, d.inline_data] + list(histogram_buckets(d).values())
            + [d.share_at_least_5, d.compiler] for d in distributions]
    return Table(f"Fig. 4: instruction sizes (paper: {PAPER_CLAIM})", header, rows)


def _offset(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _crossover_cell(crossover: int | None, first: int) -> str:
    if crossover is None:
        return "never"
    return f"<= {crossover:,}" if crossover == first else f"{crossover:,}"


def fig5_table(result: Fig5Result) -> Table:
    offsets = result.curves[0].offsets if result.curves else [0]
    first, last = offsets[0], offsets[-1]
    header = ["variant", "relative costs", f"jmp @ {_offset(first)}", f"jmp @ {_offset(last)}", "trap",
              "jmp > trap from (B)", "paper's conclusion"]
    rows = [[c.variant, c.costs.label, c.jmp_mean[0], c.jmp_mean[-1], c.trap_mean[0],
             _crossover_cell(c.crossover_offset, first), c.verdict]
            for c in result.curves]
    return Table(f"Fig. 5: modeled average cost ({result.trials} trials/offset, seed {result.seed}, "
                 f"P(2-4 B)={result.share_short:.3f})", header, rows)


def rich_table(table: Table, provenance: Provenance) -> RichTable:
    """A terminal rendering of ``table`` with the provenance as its caption."""
    rendered = RichTable(title=table.caption, caption=provenance.summary(), caption_justify="left")
    for column in table.header:
        rendered.add_column(column, overflow="fold")
    for row in table.rows:
        rendered.add_row(*(_cell(c) for c in row))
    return rendered


def fig4_rich(distributions: Sequence[LengthDistribution], provenance: Provenance) -> RichTable:
    return rich_table(fig4_table(distributions), provenance)
