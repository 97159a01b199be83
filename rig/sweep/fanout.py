"""Running batches on many guests: in this process, or on Dask workers.

Dask distributed does the scheduling (a :class:`~distributed.LocalCluster` of ``jobs`` worker
processes on 127.0.0.1 by default, or the cluster whose scheduler ``--scheduler tcp://host:port``
names). Each worker process keeps one :class:`~rig.sweep.runner.GuestWorker` (its own private
guest, kernel found or built in that machine's cache) for every batch it is given, and shuts it
down when the worker closes. ``jobs=0`` runs the batches here, one guest, no Dask (debugging).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from distributed import Client, LocalCluster, WorkerPlugin, as_completed

from rig.errors import RigError
from rig.sweep.points import Point
from rig.sweep.runner import BatchReport, GuestWorker, SweepSettings, check_batch

log = logging.getLogger(__name__)

# One guest per worker process (and per settings), kept between batches.
_WORKERS: dict[SweepSettings, GuestWorker] = {}


def _close_workers() -> None:
    while _WORKERS:
        _, worker = _WORKERS.popitem()
        worker.close()


atexit.register(_close_workers)


def check_on_this_process(settings: SweepSettings, points: Sequence[Point]) -> BatchReport:
    """A batch on this process's guest (started on first use; replaced by the check when it fails)."""
    worker = _WORKERS.get(settings)
    if worker is None:
        worker = _WORKERS[settings] = GuestWorker(settings)
    return check_batch(worker, points)


class Engine(Protocol):
    """Runs batches; results come back in the order they finish."""

    workers: int
    description: str

    def run(self, settings: SweepSettings, batches: Iterable[Sequence[Point]]) -> Iterator[BatchReport]: ...


class InProcess:
    workers = 1
    description = "this process (no Dask)"

    def run(self, settings: SweepSettings, batches: Iterable[Sequence[Point]]) -> Iterator[BatchReport]:
        try:
            for batch in batches:
                yield check_on_this_process(settings, batch)
        finally:
            _close_workers()


class GuestTeardown(WorkerPlugin):
    """Dask worker plugin: the worker's guests are shut down with the worker."""

    name = "trapsplice-guests"

    def teardown(self, worker: Any) -> None:
        _close_workers()


class DaskEngine:
    def __init__(self, client: Any, description: str) -> None:
        self.client = client
        self.description = description
        self.workers = max(1, len(client.scheduler_info().get("workers", {})))
        client.register_plugin(GuestTeardown())

    def run(self, settings: SweepSettings, batches: Iterable[Sequence[Point]]) -> Iterator[BatchReport]:
        pending = list(batches)
        # Up to two batches per worker in flight: a worker never waits for the next one.
        window = 2 * self.workers
        futures = [self.client.submit(check_on_this_process, settings, list(b), pure=False) for b in pending[:window]]
        queued = pending[window:]
        completed = as_completed(futures)
        for future in completed:
            if queued:
                completed.add(self.client.submit(check_on_this_process, settings, list(queued.pop(0)), pure=False))
            yield future.result()


@contextlib.contextmanager
def engine(jobs: int, scheduler: str | None = None) -> Iterator[Engine]:
    """The engine ``invoke sweep`` asked for (see the module docstring)."""
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=10)
        except OSError as exc:
            raise RigError(f"cannot reach the Dask scheduler {scheduler}: {exc}",
                           "start one with `dask scheduler` and workers with `dask worker <address>`, "
                           "each worker with the rig installed and a kernel source it can find") from None
        with client:
            yield DaskEngine(client, f"Dask cluster at {scheduler}")
        return
    if jobs == 0:
        yield InProcess()
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield DaskEngine(client, f"Dask LocalCluster, {jobs} worker process(es) on 127.0.0.1")
