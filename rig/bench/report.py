"""Writing a benchmark run: its directory, JSON data and Markdown report.

A run lives in ``reports/<run-id>/`` (run-id = UTC timestamp + short random suffix so two
runs in the same second do not collide).  Every table and figure is written with its
provenance caption, so nothing in ``report.md`` is a bare number.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig.bench.provenance import Provenance
from rig.bench.sections import Section, Table, cell_text
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


def table_markdown(table: Table, provenance: Provenance) -> str:
    lines = [f"**{table.caption}**", "",
             "| " + " | ".join(cell_text(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(cell_text(c) for c in row) + " |" for row in table.rows]
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
