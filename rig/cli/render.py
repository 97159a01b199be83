"""Rich rendering shared by the Invoke tasks (tasks.py stays a thin layer)."""
from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from invoke.exceptions import Exit
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from rig import paths
from rig.errors import RigError
from rig.kernel.build import STEPS

if TYPE_CHECKING:
    from rig.guest.lifecycle import GuestState
    from rig.guest.workload import WorkloadResult
    from rig.instrument import ActiveSplice, SpliceResult
    from rig.instrument.faults import FaultRun
    from rig.instrument.manager import BatchResult
    from rig.instrument.trace import AnnotatedLine
    from rig.splicer.analysis import FunctionCode
    from rig.splicer.repository import Header
    from rig.sweep.coverage import ObjectCoverage

console = Console(highlight=False)
P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(task: Callable[P, R]) -> Callable[P, R]:
    """A RigError becomes a red message, its hint, and exit status 1 (no traceback)."""

    @functools.wraps(task)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        show_notices()
        try:
            return task(*args, **kwargs)
        except RigError as error:
            console.print(f"[bold red]error:[/] {error.message}")
            if error.hint:
                console.print(f"[yellow]hint:[/] {error.hint}")
            raise Exit(code=1) from None

    return wrapper


class _Notices(logging.Handler):
    """The rig's log records on the terminal: warnings are what a command found and did on its own
    (a guest left stopped, an interrupted change repaired), said in yellow; debug lines (QEMU
    command lines, gdb traffic) only with TRAPSPLICE_VERBOSE=1."""

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        console.print(Text(f"{record.levelname.lower()}: {record.getMessage()}", style=style))


def show_notices() -> None:
    logger = logging.getLogger("rig")
    if not any(isinstance(handler, _Notices) for handler in logger.handlers):
        logger.addHandler(_Notices())
        logger.propagate = False
    logger.setLevel(logging.DEBUG if os.environ.get("TRAPSPLICE_VERBOSE") else logging.WARNING)


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


def splice_tables(result: "SpliceResult") -> list[Table]:
    """The plan of an applied splice: disassembly before/after, the writes, the route."""
    plan = result.plan
    route = ("int3 through vector 3 (the kernel's gate, re-pointed), no jumps" if plan.mode.name == "INT3" else
             "trap gate, no jumps") if plan.mode.name != "JMP" else (
        f"{plan.hops} jmp(s) through {len(plan.springboards)} springboard(s)" if plan.springboards
        else "1 jmp rel32")
    overview = key_value_table(f"spliced {plan.function}+{plan.point - plan.window.start:#x}".replace("+0x0", ""), [
        ("point", f"{plan.point:#010x} ({plan.mode.name.lower()}, policy {plan.policy.name.lower()})"),
        ("window", f"{plan.window.length} byte(s) replaced, resumes at {plan.window.end:#010x}"),
        ("route", route + (f", vector {result.vector:#x}" + (" of its own" if plan.trap_return is None else
                                                             " (shared, table lookup)")
                           if plan.mode.name == "TRAP" else "")),
        ("repository slot", f"{plan.slot}, patch at {plan.patch_address:#010x}"
                            + (f" (free slot(s) {', '.join(map(str, result.held_slots))} passed over: a task may "
                               "still return into their old patch)" if result.held_slots else "")),
        ("hit counter", f"{plan.counter_address:#010x}" if plan.counter_address else "none"),
        ("guest stalls", f"{result.stall_s * 1000:.2f} ms to check and write the point, after "
                         f"{result.stage_stall_s * 1000:.2f} ms staging what no branch leads to yet (patch, record, "
                         f"bucket) and {result.prep_stall_s * 1000:.2f} ms reading the repository and task list "
                         + ("(three host-timed stops, stop→continue)" if not result.held_slots else
                            "(host-timed stops, stop→continue; and an earlier staging stop that found a held slot "
                            "and wrote nothing)")
                         + (f", {result.busy_retries} busy retries" if result.busy_retries else "")),
    ])
    code = Table(title="code", title_justify="left")
    code.add_column("before (vmlinux)", style="dim")
    code.add_column("after (guest)")
    code.add_row(Text(plan.before), Text(plan.after))  # Text: "[esp + 0xc]" is not rich markup
    writes = Table(title="writes, in the order applied", title_justify="left")
    for column in ("#", "role", "address", "bytes"):
        writes.add_column(column)
    for index, write in enumerate(plan.writes, start=1):
        shown = write.data.hex(" ") if len(write.data) <= 16 else f"{write.data[:12].hex(' ')} … ({len(write.data)} B)"
        writes.add_row(str(index), write.role, f"{write.address:#010x}", shown)
    return [overview, code, writes]


def splices_table(header: "Header | None", active: "list[ActiveSplice]", handler_hits: int | None) -> Table:
    title = "active splices" if header else "no component repository yet (nothing spliced since boot)"
    if header is not None:
        title += f" — trap vector {header.vector:#x}, handler hits {handler_hits}"
    table = Table(title=title, title_justify="left")
    for column in ("id", "function", "point", "mode", "window", "hops", "hits"):
        table.add_column(column, justify="right" if column in ("id", "window", "hops", "hits") else "left")
    for splice in active:
        table.add_row(str(splice.slot), f"{splice.function}+{splice.offset:#x}", f"{splice.record.point:#010x}",
                      splice.mode + (f" (own vector {splice.record.vector:#x})" if splice.record.vector else ""),
                      str(splice.record.window_length), str(splice.record.hops), str(splice.hits))
    return table


def faults_table(run: "FaultRun") -> Table:
    """One row per injected gdb death: where it struck, what the next command found and did."""
    table = Table(title=f"faults: {run.operation}", title_justify="left")
    for column in ("gdb died after write", "guest found", "next command", "rewrote", "audit", "init"):
        table.add_column(column, overflow="fold")
    repairs = {"forward": "finished it", "back": "rolled it back", "lost": "could not repair", None: "nothing to do"}
    for injection in run.injections:
        died = str(injection.after_writes) if injection.cut else f"none ({injection.after_writes - 1} writes done)"
        table.add_row(died, injection.found_status or "no QMP", repairs[injection.direction],
                      ", ".join(injection.rewritten) or "-",
                      "consistent" if not injection.problems else Text("; ".join(injection.problems), style="red"),
                      "answers" if injection.alive else Text("dead", style="red"))
    table.caption = (f"{run.writes} writes cut in turn; torn states found {run.torn}, repaired {run.repaired}, "
                     f"lost {run.lost}, guest deaths {run.guest_deaths}")
    return table


def batch_table(done: "BatchResult") -> Table:
    """A batch splice: how many went live in one stop, and every refusal by reason."""
    table = Table(title=f"spliced {len(done.plans)} point(s) in one stop "
                        f"({done.stall_s * 1000:.1f} ms to check and write the points, after "
                        f"{done.stage_stall_s * 1000:.1f} ms staging patches, records and buckets and "
                        f"{done.prep_stall_s * 1000:.1f} ms reading the repository)", title_justify="left")
    for column in ("", "points", "detail"):
        table.add_column(column, overflow="fold")
    modes = Counter(plan.mode.name.lower() for plan in done.plans)
    table.add_row("live", str(len(done.plans)), ", ".join(f"{m}: {n}" for m, n in sorted(modes.items())) or "-")
    reasons: dict[str, list[int]] = {}
    for request, refusal in done.refused:
        reasons.setdefault(refusal.reason, []).append(request.address or 0)
    for reason, points in sorted(reasons.items()):
        shown = ", ".join(f"{p:#x}" for p in points[:6]) + (f" … ({len(points)})" if len(points) > 6 else "")
        table.add_row(Text(f"refused: {reason}", style="yellow"), str(len(points)), shown)
    if done.held_slots:
        table.add_row("held slots", str(len(done.held_slots)),
                      f"passed over (a task may still return into their old patch): {', '.join(map(str, done.held_slots))}")
    return table


def annotate_table(code: "FunctionCode", lines: "list[AnnotatedLine]") -> Table:
    """The disassembly with exact hit counts, hottest marked."""
    total = sum(line.hits or 0 for line in lines)
    table = Table(title=f"{code.name}: {sum(1 for l in lines if l.hits is not None)} of {len(lines)} instructions "
                        f"spliced, {total} hits", title_justify="left")
    for column, justify in (("hits", "right"), ("%", "right"), ("address", "left"), ("instruction", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for line in lines:
        insn = line.instruction
        share = f"{100 * line.hits / total:.1f}" if total and line.hits else ""
        hits = "-" if line.hits is None else str(line.hits)
        style = "bold" if total and line.hits and line.hits * 20 >= total else None
        table.add_row(hits, share, f"{insn.address:#010x}", Text(f"{insn.mnemonic} {insn.op_str}".strip()),
                      style=style)
    return table


def write_annotation(code: "FunctionCode", lines: "list[AnnotatedLine]", state: "GuestState") -> Path:
    """The annotated disassembly as ``reports/<run-id>/annotate-FUNC.md``, with its provenance."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = paths.reports_dir() / f"{stamp}-annotate"
    run_dir.mkdir(parents=True, exist_ok=True)
    total = sum(line.hits or 0 for line in lines)
    out = [f"# {code.name}: hits per instruction", "",
           f"*Provenance: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; kernel {state.kernel.build_id}; "
           f"accel {state.clock.name}; counts are exact (a counting splice at each instruction, read live); "
           f"{sum(1 for l in lines if l.hits is not None)} of {len(lines)} instructions spliced; {total} hits*", "",
           "| hits | % | address | bytes | instruction |", "|---:|---:|---|---|---|"]
    for line in lines:
        insn = line.instruction
        share = f"{100 * line.hits / total:.1f}" if total and line.hits else ""
        out.append(f"| {'-' if line.hits is None else line.hits} | {share} | `{insn.address:#010x}` | "
                   f"`{insn.bytes.hex(' ')}` | `{insn.mnemonic} {insn.op_str}`".rstrip() + " |")
    path = run_dir / f"annotate-{code.name}.md"
    path.write_text("\n".join(out) + "\n")
    return path


def workload_table(result: "WorkloadResult") -> None:
    """The workload's digest and each part's: equal digests mean the same results."""
    started = f", started at jiffies {result.start_jiffies}" if result.start_jiffies is not None else ""
    table = Table(title=f"guest workload: digest {result.digest} ({result.seconds:.1f} s{started})",
                  title_justify="left")
    for column in ("part", "digest"):
        table.add_column(column)
    for part, digest in result.parts.items():
        table.add_row(part, digest)
    console.print(table)


def coverage_table(rows: "list[ObjectCoverage]", speed: dict[str, float]) -> None:
    table = Table(title="sweep coverage (reached % = validated live / all boundaries)", title_justify="left")
    for column in ("object", "boundaries", "plannable", "validated", "unreached", "refused", "failed", "pending",
                   "reached %", "top refusals"):
        table.add_column(column, justify="left" if column in ("object", "top refusals") else "right")
    for row in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in row.refused_by_reason.most_common(3))
        table.add_row(row.name, str(row.boundaries), str(row.plannable), str(row.validated), str(row.unreached),
                      str(row.refused), Text(str(row.failed), style="red" if row.failed else ""), str(row.pending),
                      f"{row.reached_percent:.1f}", reasons)
    console.print(table)
    console.print(f"{speed['validated']} validated, {speed['checked_live']} checked live in {speed['seconds']} s: "
                  f"{speed['validated_per_minute']} validated/min, {speed['checked_per_minute']} checked/min")
