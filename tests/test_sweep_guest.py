"""invoke sweep on real guests: points validated live and undone, a planted crash bisected down to
its point on fresh guests, a sweep resumed from its results file, and the same verdicts from two
Dask workers as from one guest in this process."""
from __future__ import annotations

from pathlib import Path

import pytest

from rig.guest import lifecycle
from rig.splicer.kinds import Policy
from rig.sweep import run as sweep_run
from rig.sweep.points import SweepMode
from rig.sweep.results import SweepResults, validate

pytestmark = pytest.mark.guest

# Two small functions the workload runs through, one it never calls.
FUNCTIONS = ("sys_getpid", "tcp_sync_mss", "sys_uselib")


def _sweep(tmp_path: Path, prepared: lifecycle.PreparedGuest, **options: object) -> sweep_run.Sweep:
    chosen = sweep_run.SweepOptions(**{"functions": FUNCTIONS, "mode": SweepMode.AUTO, "policy": Policy.SINGLE,
                                       "batch_size": 200, "jobs": 0, **options})  # type: ignore[arg-type]
    return sweep_run.run(sweep_run.start(chosen, reports_root=tmp_path, prepared=prepared))


def _statuses(sweep: sweep_run.Sweep | SweepResults) -> dict[str, str]:
    results = sweep.results if isinstance(sweep, sweep_run.Sweep) else sweep
    return {key: record["status"] for key, record in results.points.items()}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, prepared: lifecycle.PreparedGuest) -> sweep_run.Sweep:
    return _sweep(tmp_path_factory.mktemp("sweep"), prepared)


def test_points_are_validated_live_and_undone(in_process: sweep_run.Sweep) -> None:
    records = in_process.results.points.values()
    by_function = {name: [r for r in records if r["function"] == name] for name in FUNCTIONS}
    assert not validate({"header": in_process.results.header, "points": in_process.results.points})
    assert all(r["status"] in ("validated", "unreached", "refused") for r in records), \
        [r for r in records if r["status"] == "failed"]
    # getpid's entry runs on every call; its ret too; nothing in a function never called is reached.
    getpid = by_function["sys_getpid"]
    assert getpid[0]["status"] == "validated" and getpid[-1]["status"] == "validated"
    assert all(r["status"] == "unreached" for r in by_function["sys_uselib"]
               if r["status"] != "refused")
    assert all(r["hits"] > 0 for r in records if r["status"] == "validated")
    assert (in_process.run_dir / "coverage.md").is_file() and (in_process.run_dir / "coverage.png").is_file()


def test_a_planted_crash_is_bisected_to_its_point(tmp_path: Path, prepared: lifecycle.PreparedGuest,
                                                  in_process: sweep_run.Sweep) -> None:
    """A splice that calls panic() at a point the workload reaches: the batch fails, the guest is replaced,
    halves are tried on fresh guests, and only that point is failed, with its oops and a reproducer."""
    reached = [r for r in in_process.results.points.values() if r["status"] == "validated"
               and r["function"] == "sys_getpid"]
    planted = reached[len(reached) // 2]["address"]
    sweep = _sweep(tmp_path, prepared, functions=("sys_getpid",), planted_panic=planted)
    failed = {r["address"]: r for r in sweep.results.points.values() if r["status"] == "failed"}
    assert list(failed) == [planted]
    record = failed[planted]
    assert record["reason"] == "oops" and record["oops"]  # panic() with a register for its format: it dies
    assert f"--addr {planted:#x}" in record["repro"] and record["repro"].endswith("invoke workload")
    assert sum(batch["guests_booted"] for batch in sweep.results.batches) >= 2
    others = {k: s for k, s in _statuses(sweep).items() if int(k, 16) != planted}
    assert others == {k: s for k, s in _statuses(in_process).items() if k in others}


def test_a_sweep_resumes_where_it_stopped(tmp_path: Path, prepared: lifecycle.PreparedGuest,
                                          in_process: sweep_run.Sweep) -> None:
    sweep = _sweep(tmp_path, prepared, functions=("sys_getpid",))
    done = _statuses(sweep)
    forgotten = sorted(done)[::3]
    for key in forgotten:  # as if the sweep had been killed before these were checked
        sweep.results.points[key]["status"] = None
    sweep.results.save()
    resumed = sweep_run.resume(sweep.run_dir)
    assert sorted(p.key for p in resumed.results.pending()) == forgotten
    sweep_run.run(resumed)
    assert _statuses(SweepResults.load(sweep.run_dir / sweep_run.RESULTS_NAME)) == done


def test_two_dask_workers_agree_with_one_guest(tmp_path: Path, prepared: lifecycle.PreparedGuest,
                                               in_process: sweep_run.Sweep) -> None:
    sweep = _sweep(tmp_path, prepared, jobs=2, batch_size=40)
    assert "LocalCluster" in sweep.engine_description
    assert _statuses(sweep) == _statuses(in_process)


def test_an_existing_dask_cluster_takes_the_batches(tmp_path: Path, prepared: lifecycle.PreparedGuest,
                                                   in_process: sweep_run.Sweep) -> None:
    """--scheduler: the batches go to the workers of a cluster the sweep did not start."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        sweep = _sweep(tmp_path, prepared, functions=("sys_getpid",), scheduler=cluster.scheduler_address)
    assert cluster.scheduler_address in sweep.engine_description
    assert _statuses(sweep) == {k: s for k, s in _statuses(in_process).items() if k in _statuses(sweep)}


@pytest.mark.parametrize("mode, policy", [(SweepMode.TRAP, Policy.SINGLE), (SweepMode.TRAP_VECTOR, Policy.SINGLE),
                                          (SweepMode.INT3, Policy.SINGLE), (SweepMode.JMP, None)])
def test_every_mode_sweeps_cleanly(tmp_path: Path, prepared: lifecycle.PreparedGuest, mode: SweepMode,
                                   policy: Policy | None) -> None:
    sweep = _sweep(tmp_path, prepared, functions=("sys_getpid", "tcp_sync_mss"), mode=mode, policy=policy)
    records = list(sweep.results.points.values())
    assert not [r for r in records if r["status"] in ("failed", None)]
    entry = min((r for r in records if r["function"] == "sys_getpid"), key=lambda r: r["offset"])
    assert entry["status"] == "validated", entry
    assert sweep.results.header["options"]["mode"] == mode.value
