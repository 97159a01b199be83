"""Rich rendering shared by the Invoke tasks (tasks.py stays a thin layer)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from invoke.exceptions import Exit
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from rig.errors import RigError
from rig.kernel.build import STEPS

console = Console(highlight=False)
P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(task: Callable[P, R]) -> Callable[P, R]:
    """A RigError becomes a red message, its hint, and exit status 1 (no traceback)."""

    @functools.wraps(task)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return task(*args, **kwargs)
        except RigError as error:
            console.print(f"[bold red]error:[/] {error.message}")
            if error.hint:
                console.print(f"[yellow]hint:[/] {error.hint}")
            raise Exit(code=1) from None

    return wrapper


@contextmanager
def build_progress() -> Iterator[Callable[[str, str], None]]:
    """A progress display for the kernel build; yields the callback rig.kernel.build expects."""
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[step]:<9}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} steps"), TextColumn("[dim]{task.fields[detail]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task_id = progress.add_task("kernel", total=len(STEPS), step="", detail="")
        seen: list[str] = []

        def update(step: str, detail: str) -> None:
            if step not in seen:
                seen.append(step)
            progress.update(task_id, completed=len(seen) - 1, step=step, detail=detail[-60:])

        yield update
        progress.update(task_id, completed=len(STEPS), step="done", detail="")


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table
