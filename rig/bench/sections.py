"""What a bench part reports: tables and sections, before they become Markdown or terminal tables.

A part builds its :class:`Section` objects once; :mod:`rig.bench.report` writes them into
``report.md`` and :mod:`rig.bench.render` fits them to the terminal.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rig.bench.provenance import Provenance
from rig.errors import RigError


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Any]]
    # Columns of long prose that the section's notes repeat: the terminal leaves them out.
    prose_columns: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise RigError(f"table '{self.caption}' has a row of {len(row)} cells for {len(self.header)} columns",
                               "give every row one cell per header column")
        if any(not 0 <= column < len(self.header) for column in self.prose_columns):
            raise RigError(f"table '{self.caption}' names a prose column it does not have",
                           "give prose_columns as indices into the header")

    def without_prose(self) -> Table:
        keep = [i for i in range(len(self.header)) if i not in self.prose_columns]
        return Table(self.caption, [self.header[i] for i in keep], [[row[i] for i in keep] for row in self.rows])


@dataclass
class Section:
    title: str
    provenance: Provenance
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # file names relative to the run directory
    notes: list[str] = field(default_factory=list)
    # Sections of one slot are shown as one (see :func:`merged`); None: a section of its own.
    slot: str | None = None


def merged(sections: Sequence[Section]) -> list[Section]:
    """One section per slot, where the first of the slot stood, under its title and provenance:
    the later ones' tables, figures and notes follow its own, in order (several parts measured in
    one guest report in that guest's section)."""
    out: list[Section] = []
    by_slot: dict[str, Section] = {}
    for section in sections:
        first = by_slot.get(section.slot) if section.slot is not None else None
        if first is None:
            kept = replace(section, tables=list(section.tables), figures=list(section.figures),
                           notes=list(section.notes))
            out.append(kept)
            if section.slot is not None:
                by_slot[section.slot] = kept
            continue
        first.tables += section.tables
        first.figures += section.figures
        first.notes += section.notes
    return out


def cell_text(value: Any) -> str:
    """A cell as both Markdown and the terminal show it."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")
