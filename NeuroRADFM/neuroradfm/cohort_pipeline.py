"""Cohort mode with overlap: the next cases load and preprocess in worker processes while this process runs the
model (loaded once) and a background thread writes the previous case's outputs.

Preparation (``neuroradfm.preprocess.prepare_case``: reading the four volumes, N4, registration, resampling)
goes to a ``concurrent.futures.ProcessPoolExecutor`` started with ``spawn`` (no fork of a process that already runs
torch threads; works from ``python -m neuroradfm`` and ``PythonSlicer -m neuroradfm`` alike, the worker function
being this importable module's). A worker gets the bundle's card and settings, not its weights, and imports neither
torch nor MONAI. Writing (SimpleITK's compressed NRRD, slicerio, PNG) goes to one thread. At most ``workers + 1``
cases are being prepared or waiting, and at most two predictions are waiting to be written: memory stays bounded
whatever the cohort's size.

A worker sends its case back prepared or as a failure already described (``neuroradfm.errors.describe_failure``
in the worker, so an exception that does not pickle is recorded like any other), and its progress goes through
a queue to the one progress callback, every case's share of the run shown monotone. Results come back in case
order. Workers ignore Ctrl-C (the main process decides) and are stopped on an interruption: they write nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from neuroradfm.errors import describe_failure
from neuroradfm.progress import Progress

MAX_DEFAULT_WORKERS = 4
"""More preparing workers than this rarely pay: the model and the writer take the rest of a case's time, and every
worker holds one case's volumes (a few hundred MB for a BraTS-size case)."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the system tells it, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(processes_per_node: int = 1) -> int:
    """Preparing workers per predicting process: one CPU is left for the model and the writer, at most
    MAX_DEFAULT_WORKERS, at least 1; under torchrun the node's CPUs are shared by its ``processes_per_node`` ranks."""
    share = available_cpus() // max(1, processes_per_node)
    return max(1, min(MAX_DEFAULT_WORKERS, share - 1))


@dataclass
class Job:
    index: int
    """Position in the run (progress and tables keep this order)."""
    case_id: str
    load: Callable[[], Any]
    folder: Path


@dataclass
class Failure:
    kind: str
    message: str
    trace: str | None = None
    """The formatted traceback, for an internal error's log."""

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        kind, message = describe_failure(error)
        return cls(kind, message, "".join(traceback.format_exception(type(error), error, error.__traceback__)))


@dataclass
class Prepared:
    """What a worker sends back: the preprocessed case and its input files, or why it failed."""

    index: int
    prepared: Any = None
    inputs: tuple[str, ...] = ()
    failure: Failure | None = None


@dataclass
class Outcome:
    """One case done: its result folder, or its failure; the prediction when it was made here."""

    job: Job
    folder: Path | None = None
    failure: Failure | None = None
    prediction: Any = None


class CohortProgress:
    """Every case's fraction (0..1) kept apart and the run reported as their mean, never going back: worker
    processes, this process and the writer report in any order, the callback sees one monotone run."""

    def __init__(self, progress: Progress, cases: int) -> None:
        self.progress = progress
        self.fractions = [0.0] * max(1, cases)
        self.shown = 0.0
        self.lock = threading.Lock()

    def report(self, index: int, stage: str, fraction: float, message: str = "") -> None:
        with self.lock:
            self.fractions[index] = max(self.fractions[index], min(max(float(fraction), 0.0), 1.0))
            self.shown = max(self.shown, sum(self.fractions) / len(self.fractions))
            self.progress(stage, self.shown, message)

    def case(self, index: int, start: float = 0.0, end: float = 1.0) -> Progress:
        """The progress callback of one case (its own 0..1 mapped onto [start, end] of its share)."""

        def report(stage: str, fraction: float, message: str = "") -> None:
            self.report(index, stage, start + (end - start) * min(max(fraction, 0.0), 1.0), message)

        return report


# --- in the worker processes ------------------------------------------------------------------------------------

PREPARE_SHARE = 0.8
"""Of a case's progress, the share of its preparation (as in ``neuroradfm.predict.predict_case``)."""
_worker: dict[str, Any] = {}


def _start_worker(bundle: Any, allow_missing: bool, events: Any) -> None:
    """Each worker once: the bundle's card and settings (no weights), the option, the progress queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal reaches the whole group: main decides
    _worker.update(bundle=bundle, allow_missing=allow_missing, events=events)


def _prepare(index: int, load: Callable[[], Any]) -> Prepared:
    """Load and prepare one case (in a worker); any failure comes back described, never raised."""
    events = _worker["events"]

    def report(stage: str, fraction: float, message: str = "") -> None:
        events.put((index, stage, PREPARE_SHARE * min(max(fraction, 0.0), 1.0), message))

    from neuroradfm.preprocess import prepare_case

    try:
        case = load()
        prepared = prepare_case(case, _worker["bundle"], report, _worker["allow_missing"])
        return Prepared(index, prepared, tuple(str(path) for path in case.inputs))
    except Exception as error:  # noqa: BLE001 - one case's failure of any kind is recorded, the others go on
        return Prepared(index, failure=Failure.of(error))


# --- in the main process ---------------------------------------------------------------------------------------

def _relay(events: Any, progress: CohortProgress, stop: threading.Event) -> None:
    """Workers' progress events -> the run's progress, until ``stop``."""
    while not stop.is_set():
        try:
            index, stage, fraction, message = events.get(timeout=0.1)
        except queue.Empty:
            continue
        except (EOFError, OSError, ValueError):  # the queue closed under an interruption
            return
        progress.report(index, stage, fraction, message)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (an interruption): they only prepare cases in memory, so nothing is left half written.
    ``terminate_workers`` from Python 3.14; before, the executor's own process table."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
    # A worker killed while it sent a result leaves the executor's manager thread reading the rest of that message
    # for ever, and shutdown() (and the interpreter's exit) waits on that thread. With every worker gone, our own
    # end of the result pipe is its last writer: closing it turns the wait into an end of file, which the manager
    # treats as a broken pool and ends.
    if not any(process.is_alive() for process in processes):
        writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)
        if writer is not None:
            writer.close()


def _predict(batch: Sequence[tuple[Job, Prepared]], bundle: Any, device: str, progress: CohortProgress,
             cam_layer: str | None, precision: str) -> list[Any]:
    """A Prediction or a Failure for each (job, prepared case) of ``batch``, in order: one forward pass for all of
    them; when that pass fails as a whole (out of GPU memory, ...), each case again alone, so that only the case at
    fault fails."""
    from neuroradfm.predict import predict_prepared, predict_prepared_batch

    def alone(job: Job, ready: Prepared) -> Any:
        try:
            return predict_prepared(job.case_id, ready.prepared, bundle, device, progress.case(job.index), cam_layer,
                                    precision)
        except Exception as error:  # noqa: BLE001 - one case's failure of any kind is recorded
            return Failure.of(error)

    results: list[Any] = [ready.failure for _, ready in batch]
    todo = [index for index, (_, ready) in enumerate(batch) if ready.failure is None]
    if len(todo) == 1:
        results[todo[0]] = alone(*batch[todo[0]])
    elif todo:
        def report(stage: str, fraction: float, message: str = "") -> None:
            for index in todo:
                progress.case(batch[index][0].index)(stage, fraction, message)

        try:
            together = predict_prepared_batch([(batch[i][0].case_id, batch[i][1].prepared) for i in todo], bundle,
                                              device, report, cam_layer, precision)
        except Exception:  # noqa: BLE001 - the whole pass failed: each case alone
            together = [alone(*batch[i]) for i in todo]
        for index, outcome in zip(todo, together):
            results[index] = Failure.of(outcome) if isinstance(outcome, Exception) else outcome
    return results


LOST_WORKER = ("the worker process preparing this case died (stopped by the system, e.g. out of memory); try it "
               "again with fewer --workers or --workers 0")


def run_overlapped(jobs: Sequence[Job], bundle: Any, device: str, progress: CohortProgress, workers: int,
                   cam_layer: str | None, allow_missing: bool, write: Callable[[Any, Path, Sequence[str]], Path],
                   record: Callable[[Outcome], None], precision: str = "auto", batch_size: int = 1) -> None:
    """``record`` each job's outcome, in job order, preparing ahead in ``workers`` processes and writing with
    ``write(prediction, folder, inputs)`` in a background thread. Ctrl-C or a cancel stops the workers, lets the
    write under way finish (a case folder is whole or absent), records what was done and propagates.

    ``batch_size`` > 1: the cases already prepared when the model is free (up to that many) go through one forward
    pass together (``predict_prepared_batch``; worth it on a GPU, where the model outruns the workers' preparation
    only when several cases wait); none is waited for.

    A worker killed by the system (out of memory) breaks the pool: the cases it held are prepared again one at a
    time in a new pool, so that the case that breaks it alone is the one recorded as failed."""
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(events, progress, stop), name="neuroradfm-progress", daemon=True)
    relay.start()
    card_only = replace(bundle, encoder=None, heads=None)  # preparing needs the card and settings, not the weights

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(card_only, allow_missing, events))

    pool = new_pool()
    writer = ThreadPoolExecutor(1, thread_name_prefix="neuroradfm-writer")
    waiting = iter(jobs)
    retry: deque[Job] = deque()
    """Cases that were in a pool that broke: prepared again one at a time."""
    preparing: deque[tuple[Job, Future]] = deque()
    writing: deque[tuple[Job, Future, Any]] = deque()

    def submit(job: Job) -> Future:
        try:
            return pool.submit(_prepare, job.index, job.load)
        except BrokenProcessPool as error:  # broke since the last result: seen when this future is awaited
            future: Future = Future()
            future.set_exception(error)
            return future

    def fill() -> None:
        while len(preparing) < (1 if retry else workers + 1):
            job = retry.popleft() if retry else next(waiting, None)
            if job is None:
                return
            preparing.append((job, submit(job)))

    def fail(job: Job, failure: Failure) -> None:
        progress.report(job.index, "failed", 1.0, f"{job.case_id}: {failure.message}")
        record(Outcome(job, failure=failure))

    def written(job: Job, future: Future, prediction: Any) -> None:
        try:
            folder = future.result()
        except Exception as error:  # noqa: BLE001 - a write that fails is that case's failure
            fail(job, Failure.of(error))
        else:
            record(Outcome(job, folder=folder, prediction=prediction))

    finished = False
    try:
        fill()
        while preparing:
            job, future = preparing[0]
            try:
                ready: Prepared = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
                if len(preparing) > 1:  # which of them broke it is not known: each again, alone
                    retry = deque(sorted([*retry, *(queued for queued, _ in preparing)], key=lambda j: j.index))
                    preparing.clear()
                    fill()
                    continue
                ready = Prepared(job.index, failure=Failure("resources", LOST_WORKER))
            preparing.popleft()
            fill()
            batch = [(job, ready)]
            while len(batch) < batch_size and not retry and preparing and preparing[0][1].done():
                try:  # the cases already prepared join the batch; none is waited for
                    batch.append((preparing[0][0], preparing[0][1].result()))
                except BrokenProcessPool:
                    break  # seen again at the top of the loop
                preparing.popleft()
                fill()
            predictions = _predict(batch, bundle, device, progress, cam_layer, precision)
            for (job, ready), prediction in zip(batch, predictions):
                if isinstance(prediction, Failure):
                    fail(job, prediction)
                else:
                    writing.append((job, writer.submit(write, prediction, job.folder, ready.inputs), prediction))
            while writing and (len(writing) > 1 or writing[0][1].done()):
                written(*writing[0])  # taken off only once recorded: a Ctrl-C while it waits leaves it to finally
                writing.popleft()
        while writing:
            written(*writing[0])
            writing.popleft()
        finished = True
    finally:
        for _, future in preparing:
            future.cancel()
        if not finished:
            _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)  # the write under way completes: whole or absent
        if not finished:  # what was written before the interruption is in the tables
            for job, future, prediction in writing:
                if future.done() and not future.cancelled():
                    written(job, future, prediction)
        stop.set()
        relay.join(timeout=5)
        events.cancel_join_thread()
        events.close()
