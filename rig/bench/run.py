"""``invoke bench``: Table 1 in booted guests, Fig. 4, the hop census and Fig. 5, one report.

Everything measurable without a guest (Fig. 4, the hop census behind Fig. 5) runs in a worker
process while the guests are measured, so the whole bench stays short. The hop census is a pure
function of the kernel build and is cached per build id.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig import instrument, paths, session
from rig.bench import fig4, fig5, hops, latency, report, table1
from rig.errors import RigError
from rig.guest import lifecycle
from rig.guest.crash import ConsoleWatch
from rig.kernel.build import KernelBuild, ensure_kernel

DEFAULT_N = 10_000
DEFAULT_RUNS = 5
DEFAULT_ICOUNT_SHIFT = 3   # 2^3 per instruction: timer interrupts stay out of a 10000-call loop
DEFAULT_LATENCY_CYCLES = 20
DEFAULT_SEED = 2005
Note = Callable[[str, str], None]   # (phase, detail)


@dataclass(frozen=True)
class BenchOptions:
    table1: bool = True
    fig4: bool = True
    fig5: bool = True
    n: int = DEFAULT_N
    runs: int = DEFAULT_RUNS
    accel: str = "auto"
    icount: bool = True
    icount_shift: int = DEFAULT_ICOUNT_SHIFT
    latency_cycles: int = DEFAULT_LATENCY_CYCLES
    counter_rows: bool = False
    seed: int = DEFAULT_SEED
    reports_root: Path = field(default_factory=paths.reports_dir)

    def check(self) -> None:
        if not (self.table1 or self.fig4 or self.fig5):
            raise RigError("nothing to run", hint="pick at least one of --table1 --fig4 --fig5 (or none for all)")
        if not 1 <= self.n <= 64_512:
            raise RigError(f"--n {self.n} is outside 1..64512",
                           hint="the guest and the floor sampler keep at most 64512 samples per run")
        if self.runs < 1:
            raise RigError("--runs must be at least 1")


@dataclass
class BenchRun:
    run_dir: Path
    data: dict[str, Any]
    sections: list[report.Section]
    seconds: float


# ---- guest-free work (runs in a worker process) -------------------------------------------------
def static_analysis(kernel_root: str, want_fig4: bool, want_hops: bool) -> dict[str, Any]:
    kernel = KernelBuild(Path(kernel_root))
    out: dict[str, Any] = {}
    if want_fig4:
        dists = [fig4.length_distribution(kernel.object(o), name=Path(o).name,
                                          ud2_data_bytes=fig4.LINUX_24_BUG_DATA_BYTES) for o in fig4.PAPER_OBJECTS]
        dists.append(fig4.merge_all(dists, "four objects"))
        dists.append(fig4.length_distribution(kernel.vmlinux, name="vmlinux",
                                              ud2_data_bytes=fig4.LINUX_24_BUG_DATA_BYTES))
        out["fig4"] = [d.to_dict() for d in dists]
    if want_hops:
        out["hops"] = hop_census_cached(kernel)
    return out


def _planner_digest() -> str:
    """The pure splicer's source: the census is the planner's verdict, so a changed planner recounts."""
    sources = sorted((Path(__file__).parent.parent / "splicer").glob("*.py"))
    return hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]


def hop_census_cached(kernel: KernelBuild) -> dict[str, Any]:
    cache = paths.cache_dir("bench") / f"hops-{kernel.build_id}-{_planner_digest()}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        data["cached"] = True
        return data
    started = time.monotonic()
    image = instrument.load_image(kernel.vmlinux)
    objects = [(Path(o).name, kernel.object(o)) for o in fig4.PAPER_OBJECTS]
    per_object = hops.census(image, objects)
    data = {"objects": [c.to_dict() for c in per_object], "all": hops.merged(per_object).to_dict(),
            "short_hops": hops.merged(per_object).short_hops, "seconds": round(time.monotonic() - started, 2)}
    cache.write_text(json.dumps(data))
    data["cached"] = False
    return data


def dist_from_dict(d: dict[str, Any]) -> fig4.LengthDistribution:
    dist = fig4.LengthDistribution(name=d["name"], compiler=d["compiler"])
    dist.counts = {int(k): v for k, v in d["counts"].items()}
    dist.undecodable, dist.inline_data = d["undecodable_bytes"], d["inline_data_bytes"]
    dist.functions, dist.function_bytes = d["functions"], d["function_bytes"]
    dist.section_bytes = d["executable_section_bytes"]
    return dist


# ---- guests ------------------------------------------------------------------------------------
def clocks(options: BenchOptions) -> list[lifecycle.PreparedGuest]:
    first = lifecycle.prepare(accel=options.accel)
    chosen = [first]
    if options.icount:
        chosen.append(lifecycle.prepare(accel="tcg", icount_shift=options.icount_shift))
    return chosen


def measure_guest(prepared: lifecycle.PreparedGuest, options: BenchOptions, with_latency: bool,
                  note: Note) -> dict[str, Any]:
    clock = prepared.clock
    note(clock.name, "booting")
    with lifecycle.private_guest(prepared) as machine:
        boot = machine.boot
        assert boot is not None
        # A guest that oopses under measurement fails the bench with the crash decoded, not a timeout.
        watch = ConsoleWatch.start(machine.config.console_log, instrument.load_image(prepared.kernel.vmlinux),
                                   crash_dir=session.crash_dir())
        with watch.guard(), instrument.connect(machine.config.gdb_socket, prepared.kernel) as instr:
            result = table1.measure(machine, instr, options.n, options.runs, counter=options.counter_rows,
                                    progress=lambda detail: note(clock.name, detail))
            if with_latency and options.latency_cycles:
                result["latency"] = latency.measure(instr, options.latency_cycles,
                                                    progress=lambda detail: note(clock.name, detail))
    unit = 2 ** clock.icount_shift if clock.icount_shift is not None else 1
    result.update({"clock": clock.name, "accelerator": clock.accel, "clock_meaning": clock.meaning,
                   "accel_reason": prepared.accel_reason, "deterministic": clock.deterministic,
                   "tsc_per_unit": unit, "unit": "guest instructions" if clock.icount_shift is not None
                   else ("CPU cycles" if clock.accel == "kvm" else "host TSC ticks"),
                   "boot_seconds": round(boot.boot_seconds, 3), "identical_across_runs": identical_across_runs(result)})
    return result


def identical_across_runs(result: dict[str, Any]) -> dict[str, bool]:
    """Per statistic: did every run of every row give the same figure in this boot?"""
    return {stat: all(len({run[stat] for run in row["runs"]}) == 1 for row in result["rows"])
            for stat in ("min", "median", "mean", "p95", "max")}


# ---- the whole bench ----------------------------------------------------------------------------
def planned_steps(options: BenchOptions) -> int:
    """How many progress notes :func:`run` will give (for a progress bar)."""
    steps = 0
    if options.fig4 or options.fig5:
        steps += 2
    if options.table1:
        rows = len(table1.splice_rows(counter=options.counter_rows))
        per_clock = 1 + options.runs * (1 + rows) + 1
        steps += per_clock * (2 if options.icount else 1) + 2 * options.latency_cycles
    return steps + (1 if options.fig5 else 0)


def run(options: BenchOptions, note: Note | None = None) -> BenchRun:
    options.check()
    say = note or (lambda phase, detail: None)
    started = time.monotonic()
    kernel = ensure_kernel(allow_download=False)
    data: dict[str, Any] = {"options": {"n": options.n, "runs": options.runs, "accel": options.accel,
                                        "icount": options.icount, "icount_shift": options.icount_shift,
                                        "seed": options.seed, "parts": [p for p in ("table1", "fig4", "fig5")
                                                                         if getattr(options, p)]},
                            "kernel": {"build_id": kernel.build_id, "gcc": kernel.info["host"]["gcc"],
                                       "cc": kernel.info["cc"]}}
    with ProcessPoolExecutor(max_workers=1) as pool:
        static: Future[dict[str, Any]] | None = None
        if options.fig4 or options.fig5:
            say("static", "Fig. 4 sweep and hop census (background)")
            static = pool.submit(static_analysis, str(kernel.root), options.fig4 or options.fig5, options.fig5)
        if options.table1:
            data["table1"] = [measure_guest(p, options, index == 0, say)
                              for index, p in enumerate(clocks(options))]
        if static is not None:
            say("static", "waiting for the Fig. 4 sweep and hop census")
            data.update(static.result())
    fig5_result = None
    if options.fig5:
        say("fig5", "Monte Carlo model")
        fig5_result, data["fig5"] = fig5_data(data, options.seed)
    run_dir = report.new_run_dir(options.reports_root)
    data["seconds"] = round(time.monotonic() - started, 2)
    from rig.bench import render  # matplotlib is slow to import: only when writing

    sections = render.write_run(run_dir, data, kernel, fig5_result)
    data["seconds_with_report"] = round(time.monotonic() - started, 2)
    report.write_json(run_dir, "bench", data)
    return BenchRun(run_dir, data, sections, data["seconds_with_report"])


def measured_costs(clock_result: dict[str, Any]) -> fig5.CostSet | None:
    rows = {row["key"]: row for row in clock_result["rows"]}
    try:
        # the minimum: robust to host load under plain TCG, equal to the median under -icount
        jmp, trap = rows["jmp"]["overhead"]["min"], rows["trap"]["overhead"]["min"]
    except KeyError:
        return None
    if jmp <= 0 or trap <= 0:
        return None  # TCG host-time noise can hide a 2-jump overhead entirely
    return fig5.CostSet.from_cycles(f"measured, {clock_result['clock']}", jmp, trap)


def fig5_data(data: dict[str, Any], seed: int) -> tuple[fig5.Fig5Result, dict[str, Any]]:
    dists = {d["name"]: d for d in data["fig4"]}
    counts = {int(k): v for k, v in dists["four objects"]["counts"].items()}
    short_hops = data.get("hops", {}).get("short_hops") or None
    cost_sets = [c for c in (measured_costs(r) for r in data.get("table1", [])) if c is not None]
    base = fig5.simulate(counts, seed=seed, measured_costs=cost_sets[0] if cost_sets else None,
                         measured_short_hops=short_hops)
    for extra in cost_sets[1:]:
        more = fig5.simulate(counts, seed=seed, measured_costs=extra, measured_short_hops=short_hops)
        base.curves += [c for c in more.curves if c.costs.label == extra.label]
    return base, {"result": base.to_dict(), "cost_sets": [c.label for c in cost_sets]}
