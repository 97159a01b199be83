"""trapsplice tasks: `invoke --list` shows them, `invoke --help TASK` explains one.

Each task parses its arguments, calls into `rig`, and renders the result; the
logic lives in `rig`.
"""
from __future__ import annotations

from pathlib import Path

from invoke import task
from rich.text import Text

from rig import adapt as adapt_mod
from rig import session
from rig.cli import args as cli_args
from rig.cli import components as component_ui
from rig.cli import preflight
from rig.cli import render as ui
from rig.cli.render import console, reports_errors
from rig.errors import RigError
from rig.guest import lifecycle
from rig.instrument import trace
from rig.instrument.components import ComponentManager
from rig.instrument.components import source_path as component_source
from rig.instrument.manager import PointRequest
from rig.kernel import build as kernel_build
from rig.splicer.kinds import Mode

cli_args.fix_invoke_parsing()  # `invoke load --help` shows help; `invoke set X -0.5` reaches the range check


def _prepare(source: str | None, accel: str, icount: int | None) -> lifecycle.PreparedGuest:
    source_path = Path(source) if source else None
    inputs = kernel_build.gather_inputs(source_path)
    if kernel_build.cached(inputs) is None:
        with ui.build_progress() as progress:
            kernel_build.build(inputs, progress=progress)
    return lifecycle.prepare(source_path, accel=accel, icount_shift=icount)


@task(help={"source": "local linux-2.4.20 tarball or tree (default: the one imported before, else kernel.org)"})
@reports_errors
def kernel(c, source=None):
    """Build Linux 2.4.20 (bzImage, vmlinux, System.map) into the user cache, or show the cached build."""
    inputs = kernel_build.gather_inputs(Path(source) if source else None)
    build = kernel_build.cached(inputs)
    if build is None:
        with ui.build_progress() as progress:
            build = kernel_build.build(inputs, progress=progress)
        headline = f"built in {build.info['build_seconds']} s"
    else:
        headline = "cached (nothing changed)"
    info = build.info
    console.print(ui.key_value_table(f"Linux 2.4.20 — {headline}", [
        ("build id", build.build_id),
        ("source", inputs.archive.describe()),
        ("patches", f"{len(info['patches'])} ({', '.join(info['patches'])})"),
        ("compiler", info["host"]["gcc"]),
        ("bzImage", str(build.bzimage)),
        ("vmlinux", str(build.vmlinux)),
        ("log", str(build.log)),
    ]))


@task(help={"source": "local linux-2.4.20 tarball or tree", "accel": "auto | tcg | kvm",
            "icount": "run TCG with -icount shift=N (the TSC then counts instructions)"})
@reports_errors
def boot(c, source=None, accel="auto", icount=None):
    """Boot the guest in the background (builds what is missing) and wait for its init."""
    shift = cli_args.whole(icount, "icount", 0, cli_args.MAX_ICOUNT_SHIFT)
    existing = lifecycle.running()
    if existing is not None:
        raise RigError(f"a guest is already running (qemu pid {existing.pid}, {existing.clock.name}, "
                       f"up since {existing.started_at})", hint="invoke status / invoke halt")
    prepared = _prepare(source, accel, shift)
    with console.status("booting Linux 2.4.20…"):
        state, boot_info = lifecycle.boot_background(prepared)
    _show_guest(state, title=f"guest up in {boot_info.boot_seconds:.2f} s")


def _show_guest(state: lifecycle.GuestState, title: str) -> None:
    config = state.machine_config()
    console.print(ui.key_value_table(title, [
        ("kernel", f"Linux {state.release} (build {state.kernel.build_id})"),
        ("accelerator", f"{state.clock.name} — {state.accel_reason}"),
        ("guest TSC", state.clock.meaning),
        ("boot time", f"{state.boot_seconds:.2f} s to the init banner"),
        ("qemu pid", str(state.pid)),
        ("gdb stub", f"{config.gdb_socket} (unix socket, private)"),
        ("console", f"{config.console_socket} (invoke console)"),
    ]))


@task
@reports_errors
def status(c):
    """Show the running guest, if any, and the last guest crash the rig saw."""
    state = lifecycle.running()
    crash = session.last_crash()
    if state is None:
        console.print("no guest is running (start one with: invoke boot)")
        if crash is not None:
            console.print(Text(crash.status_line(), style="yellow"))
        return
    _, machine = session.console()  # resumes a guest a dead command left stopped, and says so
    try:
        machine.console.request("ping", timeout=5)
    finally:
        machine.detach()
    _show_guest(state, title="guest running, init answers")
    if crash is not None and crash.at > state.started_at:
        console.print(Text(crash.status_line(), style="yellow"))


@task
@reports_errors
def halt(c):
    """Stop the background guest."""
    stopped = lifecycle.halt()
    console.print(f"stopped qemu pid {stopped.pid}" if stopped else "no guest was running")


@task(name="console", help={"cmd": "one request to send (e.g. 'bench getpid 1000'); without it, a prompt"})
@reports_errors
def console_(c, cmd=None):
    """Talk to the guest's init over its line protocol (`help` lists the commands)."""
    state, machine = session.console()
    # An oops or panic on the way fails the task with the crash decoded against vmlinux.
    with session.watched(state):
        try:
            if cmd:
                _ask(machine, cmd)  # one request: a refusal is the task's error (exit status 1)
                return
            while line := _prompt():
                try:
                    _ask(machine, line)
                except RigError as error:  # at the prompt: say so and go on
                    console.print(error.message, style="red", markup=False)  # the guest's words, not markup
        finally:
            machine.detach()


def _ask(machine, line: str) -> None:
    reply = machine.console.request(line, timeout=120)
    console.print(" ".join(f"[cyan]{k}[/]={v}" for k, v in reply.fields.items()) or "ok")


def _prompt() -> str | None:
    try:
        return input("guest> ").strip() or None
    except EOFError:
        return None


@task(iterable=["func"], help={
    "func": "kernel function to splice (e.g. tcp_sync_mss); repeat it to splice several entries in one stop",
    "offset": "byte offset of the point in FUNC, decimal or 0x-hex (default 0)",
    "addr": "absolute address of the point instead of --offset (0x-hex); also picks one of "
            "several static functions named FUNC",
    "mode": "trap (int $n, 2 bytes; default) | jmp (jmp rel32, or jmp rel8 hops via springboards) | int3 "
            "(1 byte); with --every-instruction also auto (trap where 2 bytes or more fit, else int3; default)",
    "policy": "auto (single where the instruction fits the branch, else displace; default) | single "
              "(overwrite only the instruction at the point) | displace (whole instructions)",
    "probe": "counter (count hits; default) | empty (only the displaced code: bare branch cost); "
             "not with --component",
    "component": "splice FUNC to this component's declared hook (replace or wrap) instead of a probe; "
                 "loads it first (rig/components/NAME.c or a .c path)",
    "dispatch": "trap mode: table (one shared vector, its handler looks the address up; default) | "
                "vector (a free IDT vector of the splice's own, no lookup; not with --component)",
    "every_instruction": "splice every instruction of FUNC that can take one, in one stop, and list what "
                         "was refused (see invoke annotate FUNC for the counts)"})
@reports_errors
def splice(c, func, offset=None, addr=None, mode=None, policy="auto", probe=None, component=None,
           dispatch=None, every_instruction=False):
    """Splice a probe, or a component (--component), into the running kernel at FUNC[+OFFSET]."""
    funcs = list(func)
    plan = cli_args.splice_request(funcs, offset, addr, mode, policy, probe, component, dispatch, every_instruction)
    args = plan.args
    if component:
        component_source(component)  # a typo is refused before a guest is booted for it
    for name in funcs:
        preflight.check_function(name, args.address)
    with session.instrumenter() as (_, instrumenter):
        if every_instruction or len(funcs) > 1:
            code, _ = instrumenter.resolve_point(funcs[0], address=args.address)
            requests = trace.every_instruction(code, plan.trace_mode) if every_instruction else [
                PointRequest(name, args.mode, args.policy, patch_kind=args.probe, own_vector=args.own_vector)
                for name in funcs]
            done = instrumenter.splice_many(requests, strict=not every_instruction)
            console.print(ui.batch_table(done))
            return
        if component:
            loaded, result = ComponentManager(instrumenter).splice(funcs[0], component, mode=args.mode,
                                                                   policy=args.policy, offset=args.offset)
        else:
            result = instrumenter.splice(funcs[0], mode=args.mode, policy=args.policy, offset=args.offset,
                                         address=args.address, patch_kind=args.probe, own_vector=args.own_vector)
    for table in ui.splice_tables(result):
        console.print(table)
    if component:
        hook = loaded.linked.hook_for(funcs[0])
        console.print(f"{funcs[0]} now goes to component {loaded.name} ({hook.kind} → {hook.entry} at "
                      f"{loaded.linked.symbol(hook.entry).address:#010x})")


@task(help={"func": "the function whose instructions to show with their live hit counts",
            "addr": "an address inside FUNC, to pick one of several static functions of that name"})
@reports_errors
def annotate(c, func, addr=None):
    """FUNC's disassembly with the live hit count of each spliced instruction (exact, not sampled); also a
    report file."""
    address = cli_args.address(addr)
    preflight.check_function(func, address)
    with session.instrumenter(start=False) as (state, instrumenter):
        code, lines = trace.annotate(instrumenter, func, address)
    console.print(ui.annotate_table(code, lines))
    path = ui.write_annotation(code, lines, state)
    console.print(f"report: {path}")


@task(help={"id": "the splice id (slot) shown by `invoke splices`, or `all`"})
@reports_errors
def unsplice(c, id):
    """Undo a splice (`invoke unsplice 3`, `invoke unsplice all`): the original kernel bytes come back exactly."""
    everything = id.lower() == "all"
    if not everything and not id.isdigit():
        raise RigError(f"'{id}' is not a splice id", hint="invoke unsplice ID (see invoke splices) or invoke unsplice all")
    with session.instrumenter(start=False) as (_, instrumenter):
        done = instrumenter.unsplice_all() if everything else [instrumenter.unsplice(int(id))]
    if len(done) > 8:  # a batch (every instruction of a function): one line, not hundreds
        console.print(f"unspliced {len(done)} splices in one stop ({sum(r.hits for r in done)} hits in all, stalls "
                      f"{done[0].prep_stall_s * 1000:.2f} + {done[0].stall_s * 1000:.2f} ms); text equals vmlinux again")
    else:
        for result in done:
            console.print(f"unspliced {result.slot}: {result.function} at {result.point:#010x} ({result.hits} hits, "
                          f"stalls {result.prep_stall_s * 1000:.2f} + {result.stall_s * 1000:.2f} ms); "
                          "text equals vmlinux again")
    if not done:
        console.print("nothing was spliced")


@task
@reports_errors
def splices(c):
    """List active splices with their hit counters, read live from the guest."""
    with session.instrumenter(start=False) as (_, instrumenter):
        header, active = instrumenter.active()
        hits = instrumenter.handler_hits() if header else None
    console.print(ui.splices_table(header, active, hits))


@task(help={"name": "a component in rig/components (e.g. mss_adapt) or a path to a .c file"})
@reports_errors
def load(c, name):
    """Compile (cached) and load a component into the repository, without splicing it."""
    component_source(name)  # a typo is refused before a guest is booted for it
    with session.instrumenter() as (_, instrumenter):
        loaded = ComponentManager(instrumenter).load(name)
    console.print(f"component {loaded.name}: {loaded.entry.size} bytes at {loaded.entry.base:#010x}")


@task
@reports_errors
def components(c):
    """List loaded components: where, their hooks, which splices use them, their data (live)."""
    with session.instrumenter(start=False) as (_, instrumenter):
        components_ = ComponentManager(instrumenter)
        loaded = components_.loaded()
        data = {component.name: components_.data(component) for component in loaded}
    console.print(component_ui.components_table(loaded, data))


@task(name="set", help={"param": "COMPONENT.PARAM, e.g. mss_adapt.fer (positional)",
                        "value": "a decimal number in the parameter's range, e.g. 0.05 (positional; one that "
                                 "starts with '-' only as --value=-0.5)"})
@reports_errors
def set_(c, param, value):
    """Set a component parameter live (scaled to the guest's integer, e.g. fer 0.05 -> 50000 ppm)."""
    cli_args.component_variable(param)
    cli_args.finite_number(value, param.partition(".")[2])  # worded as parse_value words its range check
    with session.instrumenter(start=False) as (_, instrumenter):
        done = ComponentManager(instrumenter).set(param, value)
    console.print(component_ui.param_line(done))


@task(help={"name": "COMPONENT.SYMBOL: a parameter or counter, e.g. mss_adapt.last_mss"})
@reports_errors
def get(c, name):
    """Read a component's 32-bit variable live."""
    cli_args.component_variable(name)
    with session.instrumenter(start=False) as (_, instrumenter):
        console.print(f"{name} = {ComponentManager(instrumenter).get(name)}")


@task(help={"name": "the component to unload (see invoke components)"})
@reports_errors
def unload(c, name):
    """Unload a component (refused while a splice still goes to it)."""
    with session.instrumenter(start=False) as (_, instrumenter):
        entry = ComponentManager(instrumenter).unload(name)
    console.print(f"unloaded {entry.name} ({entry.size} bytes at {entry.base:#010x}, now int3-filled)")


@task(help={"mode": "trap | jmp: how to splice tcp_sync_mss when an event first needs it",
            "once": "stop after the first event", "timeout": "stop after this many seconds (default: never)"})
@reports_errors
def adapt(c, mode="trap", once=False, timeout=None):
    """Watch the guest for network-environment changes (@event netenv fer=X) and adapt the MSS by itself."""
    mode_ = cli_args.choice(Mode, mode, "mode")
    seconds = cli_args.seconds(timeout, "timeout")
    state = lifecycle.running()
    if state is None:
        raise RigError("no guest is running", hint="start one with: invoke boot")
    follower = adapt_mod.ConsoleLogFollower(state.machine_config().console_log)
    console.print("watching the guest for '@event netenv' (announce one: invoke console --cmd 'netenv fer=0.05')")
    with session.instrumenter(start=False) as (_, instrumenter):
        done = adapt_mod.watch(follower, ComponentManager(instrumenter), mode=mode_, once=once, timeout=seconds,
                               report=lambda event, step: console.print(component_ui.adaptation_line(event, step)),
                               skipped=lambda event, error: console.print(component_ui.skipped_line(event, error),
                                                                          markup=False))  # a bad event's own text
    console.print(f"{len(done)} adaptation(s) applied")


@task
@reports_errors
def audit(c):
    """Check the guest against vmlinux and the repository's records (text, points, dispatch, IDT, journal)."""
    with session.instrumenter(start=False) as (_, instrumenter):
        problems = instrumenter.audit()
    for problem in problems:
        console.print(Text(problem, style="red"))
    if problems:
        raise RigError(f"{len(problems)} disagreement(s) between the guest and its records",
                       hint="a change made behind the rig's back; reboot the guest (invoke halt; invoke boot)")
    console.print("consistent: kernel text equals vmlinux outside live splices, whose points, dispatch and "
                  "records agree; no change half-done")


@task(help={"operation": "splice | unsplice | install | load: the operation whose writes are cut in turn",
            "func": "the function to splice (operation splice; default tcp_sync_mss)",
            "offset": "offset of the point in the function (operation splice)",
            "mode": "trap | jmp | int3 (splice; and which of the four live splices to undo for unsplice)",
            "dispatch": "table | vector (trap mode)",
            "component": "the component to load (operation load; default mss_adapt)"})
@reports_errors
def faults(c, operation="splice", func="tcp_sync_mss", offset=None, mode="trap", dispatch="table",
           component="mss_adapt"):
    """Kill gdb after each write of an operation in turn; the next command must repair what it left.

    Runs on guests of its own (the background guest is not touched). After each death the next command
    must find the half-made change, finish it forward or back, and leave the guest consistent
    (invoke audit's checks) and answering."""
    from rig.instrument import faults as faults_mod

    args = cli_args.splice_args(offset, None, mode, "auto", None, None, dispatch)
    scenario = faults_mod.scenario(operation, func, args.mode, args.own_vector, args.offset, component)
    prepared = _prepare(None, "tcg", None)
    with console.status(f"cutting '{scenario.name}' at each write…") as status:
        run = faults_mod.run_on_private_guests(scenario, prepared, on_injection=lambda injection: status.update(
            f"cutting '{scenario.name}': write {injection.after_writes} done"))
    console.print(ui.faults_table(run))
    if run.lost or run.guest_deaths:
        raise RigError(f"{run.lost} interrupted change(s) not repaired, {run.guest_deaths} guest death(s)",
                       hint="the journal or the audit found a state the rig cannot explain: a bug; please report it")


@task(help={"table1": "run Table 1 (guest rdtsc: splices, floors, splice latency)",
            "fig4": "run Fig. 4 (instruction sizes of the built objects and vmlinux)",
            "fig5": "run Fig. 5 (cost model, with the hop census of the real kernel)",
            "n": "getpid calls per run (default 10000)", "runs": "runs per Table 1 row (default 5)",
            "icount": "also measure under TCG -icount (deterministic instruction counts; default on)",
            "accel": "auto | tcg | kvm for the first Table 1 boot (auto: KVM only where it really runs i386)",
            "counter": "add Table 1 rows with the counting probe",
            "scale": "splices at scale (opt-in, minutes): overhead vs 1..4096 live splices, stop time vs batch size",
            "determinism": "repeatable exact counts (opt-in, ~45 s): every instruction of tcp_sendmsg traced over the "
                           "workload's tcp part and the whole workload, twice on a guest and on a fresh one, per clock"})
@reports_errors
def bench(c, table1=False, fig4=False, fig5=False, n=None, runs=None, icount=True, accel="auto", counter=False,
          scale=False, determinism=False):
    """Reproduce the paper's Table 1, Fig. 4 and Fig. 5 into reports/<run-id>/ (all parts if none picked;
    --scale and --determinism only when given)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rig.bench import render as bench_render
    from rig.bench import run as bench_run

    switches = [name for name, given in (("table1", table1), ("fig4", fig4), ("fig5", fig5),
                                                  ("scale", scale), ("determinism", determinism)) if given]
    options = bench_run.cli_options(switches=switches, n=cli_args.whole(n, "n", 1),
                                    runs=cli_args.whole(runs, "runs", 1), accel=accel, icount=icount, counter=counter)
    with Progress(TextColumn("[bold]{task.fields[phase]:<22}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("[dim]{task.fields[detail]}"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("bench", total=bench_run.planned_steps(options), phase="", detail="")
        done = bench_run.run(options, note=lambda phase, detail: progress.update(
            bar, advance=1, phase=phase, detail=detail[:60]))
        progress.update(bar, completed=bench_run.planned_steps(options))
    for table, provenance, notes in bench_render.terminal_tables(done.sections, width=console.width):
        console.print(table)
        for note in notes:
            console.print(f"  • {note}")
    console.print(f"report: {done.run_dir / 'report.md'} (+ bench.json, PNG figures)")
    console.print(f"[bold]invoke bench took {done.seconds:.1f} s[/]")


@task(iterable=["part"], help={"part": "run only this part of the workload (repeatable; default: all)",
                               "timeout": "seconds to wait for the workload (default 180)",
                               "align": "start the parts on the tick whose jiffies is a multiple of TICKS, kupdated "
                                        "restarted there: under -icount a start the host's timing cannot move "
                                        "(24000 stands every periodic kernel timer alike; a real wait under TCG)"})
@reports_errors
def workload(c, part=None, timeout=None, align=None):
    """Run the guest's broad workload (fork/exec, pipes, signals, files, mmap, TCP, UDP, timers, NIC
    traffic) once and print its digest: the same with and without splices, or something broke."""
    from rig.guest.workload import check_parts, run_workload

    parts = check_parts(tuple(part or ()))
    wait_s = cli_args.seconds(timeout, "timeout") or 180.0
    align_ticks = cli_args.whole(align, "align", 1, 1_000_000)
    state, machine = session.console()
    with session.watched(state):
        try:
            result = run_workload(machine.console, parts, timeout=wait_s, align_ticks=align_ticks)
        finally:
            machine.detach()
    ui.workload_table(result)


@task(iterable=["objects", "funcs"], help={
    "objects": "sweep every boundary of this object's functions, e.g. sched.o (repeatable; default: the "
               "paper's eepro100.o, sched.o, slab.o and page_alloc.o)",
    "funcs": "sweep every boundary of this function (repeatable)",
    "sample": "a seeded random sample of N boundaries of what was chosen (all of core text if nothing was)",
    "seed": "seed of the sample (default 0): the same seed and kernel give the same points and batches",
    "mode": "trap | trap-vector (a vector of its own) | jmp | int3 | auto (trap, int3 on 1-byte instructions)",
    "policy": "single (the instruction alone; default) | displace | auto (single, else displace)",
    "batch": "points live at once on a guest (default 250; trap-vector: at most 100)",
    "jobs": "guests at once on this machine, as Dask LocalCluster workers (default 1; 0: this process, no Dask)",
    "scheduler": "a Dask scheduler, tcp://host:port, whose workers check the batches instead",
    "resume": "a run directory reports/<run-id> of an interrupted sweep: go on where it stopped",
    "accel": "auto | tcg | kvm", "icount": "run the guests under -icount shift=N",
    "plant_panic": "0x-address of one swept point whose splice calls panic(): see the sweep bisect and "
                   "replace the guest",
})
@reports_errors
def sweep(c, objects=None, funcs=None, sample=None, seed="0", mode="trap", policy="single", batch=None, jobs="1",
          scheduler=None, resume=None, accel="tcg", icount=None, plant_panic=None):
    """Splice many kernel points live, run the workload on each batch, and record per point whether it
    was validated, unreached, refused or failed (reports/<run-id>/sweep.json and a coverage report)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from rig.sweep import coverage
    from rig.sweep import run as sweep_run
    from rig.sweep.points import SweepMode, parse_policy

    if resume:
        swept = sweep_run.resume(Path(resume))
    else:
        options = sweep_run.SweepOptions(
            objects=tuple(objects or ()), functions=tuple(funcs or ()),
            sample=cli_args.whole(sample, "sample", 1), seed=cli_args.whole(seed, "seed", 0) or 0,
            mode=SweepMode.parse(mode), policy=parse_policy(policy),
            batch_size=cli_args.whole(batch, "batch", 1) or sweep_run.DEFAULT_BATCH,
            jobs=cli_args.whole(jobs, "jobs", 0) or 0, scheduler=scheduler, accel=accel,
            icount_shift=cli_args.whole(icount, "icount", 0, 10), planted_panic=cli_args.address(plant_panic, "plant-panic"))
        swept = sweep_run.start(options, prepared=_prepare(None, accel, options.icount_shift))
    console.print(f"sweep {swept.run_dir.name}: {len(swept.results.points)} points, "
                  f"{swept.options.mode.value} mode; results in {swept.run_dir / sweep_run.RESULTS_NAME}")
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("[dim]{task.fields[counts]}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console) as progress:
        bar = progress.add_task("sweep", total=len(swept.results.points), counts="")
        sweep_run.run(swept, on_progress=lambda p: progress.update(
            bar, completed=p.done, counts=" ".join(f"{k} {v}" for k, v in p.counts.items()
                                                    if k in ("validated", "unreached", "refused", "failed") and v)))
    ui.coverage_table(coverage.by_object(swept.results), coverage.throughput(swept.results))
    console.print(f"report: {swept.run_dir / 'coverage.md'} (+ sweep.json, coverage.json, coverage.png)")
    failed = [r for r in swept.results.points.values() if r["status"] == "failed"]
    for record in failed[:10]:
        console.print(f"[red]failed[/] {record['function']}+{record['offset']:#x}: {record['reason']}: "
                      f"{record.get('oops') or record.get('detail', '')}", markup=True, highlight=False)
        console.print(f"  reproduce: {record['repro']}", markup=False)
    if failed:
        raise RigError(f"{len(failed)} point(s) failed", f"each one's record in {swept.run_dir / 'sweep.json'} "
                       "has the oops and a command that reproduces it")
