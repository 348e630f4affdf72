"""A parallel task runner: ``[fn(job) for job in jobs]`` in worker processes or on Ray.

This module knows nothing about episodes or training (:mod:`agents.evaluation` and
:mod:`agents.campaign` give it their jobs); it imports nothing from ``agents``.

Backends (:func:`run_tasks`, results always in input order):

``local``
    ``workers`` = 1 runs the jobs one after another in this process. More workers: a pool of
    spawned processes with at most ``workers`` jobs in flight. A worker process that dies
    (segfault, OOM kill, ``os._exit``) breaks the pool (``BrokenProcessPool``) without saying
    which job killed it, so the jobs that were in flight are re-run one at a time, each in a
    fresh process: a job that dies there is the culprit; the others simply finish.
``ray``
    every job is a Ray task (``num_cpus=1``) on the cluster at ``ray_address`` (``auto``,
    ``ray://host:10001``, or the ``RAY_ADDRESS`` environment variable), or on a local Ray
    started for the run with ``num_cpus = workers`` (default: every core) and shut down after
    it; a Ray already initialized in this process (``ray.init`` by the caller) is used as it is.

Retries: only failures that may not happen again are retried, up to ``retries`` times (default
2, so 3 attempts): a worker process that died, and exceptions of the classes in
:data:`TRANSIENT_ERRORS` (connection or time-outs, memory) or with a true ``retryable``
attribute. Every other exception (a bad config, a shape mismatch, any ``ValueError``, a bug)
would fail the same way again: it is reported after one attempt (:func:`is_retryable`).

A job that still fails is never dropped, and never leaves the caller waiting:
:class:`TaskFailures` (a ``RuntimeError``) lists every failed job by name with its last error
after all other jobs have finished; its ``results`` holds what did finish (``None`` for the
failed ones).

Progress: ``progress(done, total, result, status)`` is called after every finished job
(``result`` is its return value, ``None`` if it failed for good) and on every retry (``done``
unchanged, ``result`` None); :class:`Status` carries the failure and retry counts, elapsed time,
an estimate of the time left, and the name and error of the job concerned.

Ray is optional (``pip install -e '.[ray]'``); it is imported only when the ``ray`` backend is
used, and :func:`require_ray` turns its absence into :class:`BackendUnavailable` (an
``ImportError`` whose message says how to install it).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKENDS", "DEFAULT_RETRIES", "RAY_INSTALL_HINT", "TRANSIENT_ERRORS", "BackendUnavailable",
    "Status", "Failure", "TaskFailures", "is_retryable", "require_ray", "ray_session", "run_tasks",
]

BACKENDS = ("local", "ray")
#: Re-runs of a job whose failure may not recur (so up to 3 attempts).
DEFAULT_RETRIES = 2
#: Exceptions that may not recur on another attempt (anything else is deterministic).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, MemoryError)
RAY_INSTALL_HINT = "pip install -e '.[ray]'"


class BackendUnavailable(ImportError):
    """The chosen backend's package is not installed (the message says how to install it)."""


def require_ray():
    """The ``ray`` module, or :class:`BackendUnavailable` with the install command."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(
            f"--backend ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from None
    return ray


# ---------------------------------------------------------------------------- progress & failures
@dataclass
class Status:
    """What a progress callback is told besides the finished job's result."""

    done: int  #: jobs finished, succeeded or failed for good
    total: int
    failed: int  #: jobs failed for good so far
    retries: int  #: failed attempts that were retried so far
    elapsed_s: float
    event: str  #: "done", "failed" or "retry"
    name: str  #: the job this event is about
    error: str | None = None  #: its error ("failed", "retry")

    @property
    def eta_s(self) -> float | None:
        """Time left at the average rate so far (None before the first finished job)."""
        if self.done == 0:
            return None
        return self.elapsed_s / self.done * (self.total - self.done)

    def summary(self) -> str:
        """``3 failed, 1 retried, ETA 12 s`` (only the parts that apply)."""
        parts = [f"{self.failed} failed"] if self.failed else []
        parts += [f"{self.retries} retried"] if self.retries else []
        eta = self.eta_s
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {_duration(eta)}")
        return ", ".join(parts)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


ProgressFn = Callable[[int, int, Any, Status], None]


@dataclass(frozen=True)
class Failure:
    """A job that failed on every attempt."""

    index: int  #: its position in the input
    name: str
    error: str  #: the last attempt's error, ``Type: message``
    attempts: int


class TaskFailures(RuntimeError):
    """Some jobs failed on every attempt; ``failures`` names them, ``results`` has the rest."""

    def __init__(self, failures: Sequence[Failure], results: list, what: str = "task"):
        self.failures = list(failures)
        self.results = results
        self.what = what
        lines = [f"{len(self.failures)} of {len(results)} {what}s failed:"]
        lines += [f"  {f.name}: {f.error} ({f.attempts} attempt{'s' * (f.attempts > 1)})"
                  for f in self.failures]
        super().__init__("\n".join(lines))


class _WorkerDied(Exception):
    """A Ray worker died on every attempt (its message is the whole error text)."""


def _cause(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError wraps the task's exception
    return cause if isinstance(cause, BaseException) else e


def is_retryable(e: BaseException) -> bool:
    """Whether another attempt might succeed: a dead worker or a transient error, not a bug.

    Jobs here are deterministic given their input, so an exception they raise (a bad config,
    a shape mismatch, a ValueError) would be raised again; only the environment can change
    (a worker killed, a connection dropped, memory short).
    """
    if isinstance(e, (BrokenProcessPool, _WorkerDied)):
        return True
    e = _cause(e)
    return isinstance(e, TRANSIENT_ERRORS) or getattr(e, "retryable", False) is True


def _error_text(e: BaseException) -> str:
    if isinstance(e, BrokenProcessPool):
        return "worker process died (BrokenProcessPool)"
    if isinstance(e, _WorkerDied):
        return str(e)
    e = _cause(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".rstrip(": ")


class _Tracker:
    """Results, attempts and failures of one batch of jobs, and the progress callback."""

    def __init__(self, names: Sequence[str], progress: ProgressFn | None,
                 retryable: Callable[[BaseException], bool] = is_retryable):
        self.names = list(names)
        self.retryable = retryable
        self.results: list = [None] * len(names)
        self.attempts = [0] * len(names)
        self.failures: list[Failure] = []
        self.retries = 0
        self.done = 0
        self.progress = progress
        self.t0 = time.perf_counter()

    def _emit(self, result, event: str, i: int, error: str | None = None) -> None:
        if self.progress:
            st = Status(self.done, len(self.names), len(self.failures), self.retries,
                        time.perf_counter() - self.t0, event, self.names[i], error)
            self.progress(self.done, len(self.names), result, st)

    def ok(self, i: int, result) -> None:
        self.results[i] = result
        self.done += 1
        self._emit(result, "done", i)

    def failed_attempt(self, i: int, e: BaseException, allowed: int) -> bool:
        """Count a failed attempt of job i; True if it may run again (``allowed`` retries of a
        failure that may not recur)."""
        self.attempts[i] += 1
        err = _error_text(e)
        if self.attempts[i] <= allowed and self.retryable(e):
            self.retries += 1
            self._emit(None, "retry", i, err)
            return True
        self.failures.append(Failure(i, self.names[i], err, self.attempts[i]))
        self.done += 1
        self._emit(None, "failed", i, err)
        return False

    def finish(self, what: str) -> list:
        if self.failures:
            raise TaskFailures(sorted(self.failures, key=lambda f: f.index), self.results, what)
        return self.results


# ---------------------------------------------------------------------------- local backend
def _worker_init() -> None:
    # One thread per worker: the machine's cores are shared by the workers.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)


def _run_in_process(fn, jobs, tr: _Tracker, retries: int) -> None:
    for i, job in enumerate(jobs):
        while True:
            try:
                tr.ok(i, fn(job))
                break
            except Exception as e:
                if not tr.failed_attempt(i, e, retries):
                    break


def _run_pool(fn, jobs, tr: _Tracker, workers: int, retries: int) -> None:
    todo = deque(range(len(jobs)))
    while todo:
        suspects: list[int] = []  # in flight when a worker died: which one killed it is unknown
        with _pool(workers) as pool:
            inflight: dict = {}
            broken = False
            while inflight or (todo and not broken):
                # At most `workers` jobs submitted at a time, so all of them are running and
                # a broken pool implicates only those.
                while todo and not broken and len(inflight) < workers:
                    i = todo.popleft()
                    try:
                        inflight[pool.submit(fn, jobs[i])] = i
                    except BrokenProcessPool:
                        todo.appendleft(i)
                        broken = True
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = inflight.pop(fut)
                    try:
                        tr.ok(i, fut.result())
                    except BrokenProcessPool:
                        suspects.append(i)
                        broken = True
                    except Exception as e:
                        if tr.failed_attempt(i, e, retries):
                            todo.append(i)
        for i in sorted(suspects):
            _run_isolated(fn, jobs[i], i, tr, retries)


def _run_isolated(fn, job, i: int, tr: _Tracker, retries: int) -> None:
    """Re-run a job that was in flight when a worker died, alone in a fresh process.

    The crash in the shared pool counts as its first attempt only if it dies again here (an
    innocent bystander just finishes); then it has ``retries + 1`` attempts in all, as elsewhere.
    """
    first = True
    while True:
        try:
            with _pool(1) as pool:
                result = pool.submit(fn, job).result()
            tr.ok(i, result)
            return
        except Exception as e:
            if first and isinstance(e, BrokenProcessPool):
                # The pool crash was this job's doing after all: that was its first attempt.
                if not tr.failed_attempt(i, e, retries):
                    return
            first = False
            if not tr.failed_attempt(i, e, retries):
                return


# ---------------------------------------------------------------------------- ray backend
@contextmanager
def ray_session(workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """Ray connected for the duration: the running one, the cluster at `address`, or a new local one.

    A Ray this function starts or connects to is shut down on exit; one that was already
    initialized in this process is left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw = {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=int(workers or os.cpu_count() or 1), include_dashboard=False, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(fn, jobs, tr: _Tracker, workers, address, retries: int, what: str) -> None:
    with ray_session(workers, address) as ray:
        # System failures (the worker process or its node died): Ray re-runs the task itself.
        # Exceptions raised by `fn`: re-submitted below if they may not recur (is_retryable).
        remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=False)(fn)

        def submit(i: int):
            name = re.sub(r"\s+", " ", f"{what} {i}: {tr.names[i]}")[:120]
            return remote.options(name=name).remote(jobs[i])

        pending = {submit(i): i for i in range(len(jobs))}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    tr.ok(i, ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    if tr.failed_attempt(i, e, retries):
                        pending[submit(i)] = i
                except ray.exceptions.RayError as e:  # died again after Ray's own retries
                    tr.attempts[i] = retries
                    tr.failed_attempt(i, _WorkerDied(
                        f"{type(e).__name__}: the worker process died ({retries + 1} times)"), retries)


# ---------------------------------------------------------------------------- entry points
def run_tasks(
    fn: Callable[[Any], Any],
    jobs: Sequence[Any],
    names: Sequence[str] | None = None,
    backend: str = "local",
    workers: int | None = 1,
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
    retries: int = DEFAULT_RETRIES,
    what: str = "task",
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> list:
    """``[fn(job) for job in jobs]`` on `backend`, in input order (see the module docstring).

    `fn` and the jobs must pickle (a module-level function of an importable module). `names`
    name the jobs in progress output and failures (default: ``what #i``). `retryable` decides
    which failures get another attempt (default :func:`is_retryable`). Raises
    :class:`TaskFailures` if some job failed on every attempt, :class:`BackendUnavailable` if
    the backend's package is missing, ValueError for an unknown backend.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    jobs = list(jobs)
    names = list(names) if names is not None else [f"{what} #{i}" for i in range(len(jobs))]
    if len(names) != len(jobs):
        raise ValueError("one name per job")
    retries = max(0, int(retries))
    tr = _Tracker(names, progress, retryable)
    if not jobs:
        return []
    if backend == "ray":
        _run_ray(fn, jobs, tr, workers, ray_address, retries, what)
    else:
        n = max(1, min(int(workers or 1), len(jobs)))
        if n == 1:
            _run_in_process(fn, jobs, tr, retries)
        else:
            _run_pool(fn, jobs, tr, n, retries)
    return tr.finish(what)
