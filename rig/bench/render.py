"""A run's sections as terminal tables: rich tables fitted to the terminal's width.

Cells show exactly the text ``report.md`` shows (:func:`rig.bench.sections.cell_text`).
"""
from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.table import Table as RichTable

from rig.bench.provenance import Provenance
from rig.bench.sections import Section, Table, cell_text


def rich_table(table: Table, provenance: Provenance) -> RichTable:
    """A terminal rendering of ``table`` with the provenance as its caption."""
    rendered = RichTable(title=table.caption, caption=provenance.summary(), caption_justify="left")
    for column in table.header:
        rendered.add_column(column, overflow="fold")
    for row in table.rows:
        rendered.add_row(*(cell_text(c) for c in row))
    return rendered


def terminal_tables(sections: list[Section],
                    width: int | None = None) -> list[tuple[Any, Provenance, list[str]]]:
    """(rich table, provenance, notes) per report table; a section's notes follow its last table.

    With ``width`` (the terminal's columns) every table fits it without splitting a word: columns
    narrow only down to their longest word, and a table still too wide is shown in parts that
    each repeat its first column."""
    out: list[tuple[Any, Provenance, list[str]]] = []
    for section in sections:
        for index, table in enumerate(section.tables):
            last = index == len(section.tables) - 1
            table = table.without_prose()  # the notes under the table carry its long prose
            parts = fit_table(table, section.provenance, width) if width else [rich_table(table, section.provenance)]
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


def fit_table(table: Table, provenance: Provenance, width: int) -> list[RichTable]:
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
        part = rich_table(Table(table.caption, [table.header[c] for c in columns],
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
