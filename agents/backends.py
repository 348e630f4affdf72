"""Where the work runs: worker processes on this machine (``local``) or a Ray cluster (``ray``).

Two kinds of independent jobs scale out here:

* benchmark episodes, :func:`run_episodes` (``evaluate.py --backend``): one job per
  (policy, scenario, seed); each is deterministic given its :class:`~agents.evaluation.EpisodeSpec`,
  so the numbers are the same whichever backend and however many workers run them;
* training runs, :func:`train_runs` (``train.py --seeds/--sweep/--backend``): one job per
  (seed, hyperparameter variant), each its own run directory, then one leaderboard of all of
  them against the heuristics.

Backends (:func:`run_tasks`, results always in input order):

``local``
    ``workers`` = 1 runs the jobs one after another in this process. More workers: a pool of
    spawned processes with at most ``workers`` jobs in flight. A job that raises is retried up
    to ``retries`` times. A worker process that dies (segfault, OOM kill, ``os._exit``) breaks
    the pool (``BrokenProcessPool``) without saying which job killed it, so the jobs that were
    in flight are re-run one at a time, each in a fresh process: a job that dies there is the
    culprit and is retried up to ``retries`` times, the others simply finish.
``ray``
    every job is a Ray task (``num_cpus=1``) on the cluster at ``ray_address`` (``auto``,
    ``ray://host:10001``, or the ``RAY_ADDRESS`` environment variable), or on a local Ray
    started for the run with ``num_cpus = workers`` (default: every core) and shut down after
    it; a Ray already initialized in this process (``ray.init`` by the caller) is used as it is.
    A task whose worker dies is re-run by Ray (``max_retries=retries``); a task that raises is
    re-submitted here, up to ``retries`` times, so every retry shows in the progress output.

A job that still fails is never dropped: :class:`TaskFailures` (a ``RuntimeError``) lists every
failed job by name (for episodes: policy, scenario, seed) with its last error, after all other
jobs have finished; its ``results`` holds what did finish (``None`` for the failed ones).

Progress: ``progress(done, total, result, status)`` is called after every finished job
(``result`` is its return value, ``None`` if it failed for good) and on every retry (``done``
unchanged, ``result`` None); :class:`Status` carries the failure and retry counts, elapsed time,
an estimate of the time left, and the name and error of the job concerned.

Ray is optional (``pip install -e '.[ray]'``); it is imported only when the ``ray`` backend is
used, and :func:`require_ray` turns its absence into :class:`BackendUnavailable` (an
``ImportError`` whose message says how to install it).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS", "DEFAULT_RETRIES", "RAY_INSTALL_HINT", "BackendUnavailable", "Status", "Failure",
    "TaskFailures", "require_ray", "ray_session", "run_tasks", "run_episodes", "episode_name",
    "load_sweep", "train_runs",
]

BACKENDS = ("local", "ray")
#: Re-runs of a failed job before it is reported as failed (so up to 3 attempts).
DEFAULT_RETRIES = 2
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


def _error_text(e: BaseException) -> str:
    if isinstance(e, BrokenProcessPool):
        return "worker process died (BrokenProcessPool)"
    if isinstance(e, _WorkerDied):
        return str(e)
    cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError wraps the task's exception
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".rstrip(": ")


class _Tracker:
    """Results, attempts and failures of one batch of jobs, and the progress callback."""

    def __init__(self, names: Sequence[str], progress: ProgressFn | None):
        self.names = list(names)
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
        """Count a failed attempt of job i; True if it may run again (``allowed`` retries)."""
        self.attempts[i] += 1
        err = _error_text(e)
        if self.attempts[i] <= allowed:
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
        # Exceptions raised by `fn`: re-submitted below, so they are counted and shown.
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
) -> list:
    """``[fn(job) for job in jobs]`` on `backend`, in input order (see the module docstring).

    `fn` and the jobs must pickle (a module-level function of an importable module). `names`
    name the jobs in progress output and failures (default: ``what #i``). Raises
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
    tr = _Tracker(names, progress)
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


def episode_name(ep) -> str:
    """How failures and progress name an episode: policy, scenario, seed."""
    return f"policy {ep.policy!r} on {ep.scenario} seed {ep.seed}"


def run_episodes(
    jobs: Sequence,
    backend: str = "local",
    workers: int | None = 1,
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
    retries: int = DEFAULT_RETRIES,
) -> list[dict]:
    """Run :class:`~agents.evaluation.EpisodeSpec` jobs; the episode records, in input order."""
    from agents.evaluation import run_episode

    return run_tasks(run_episode, jobs, [episode_name(ep) for ep in jobs], backend, workers,
                     ray_address, progress, retries, what="episode")


# ---------------------------------------------------------------------------- training runs
#: train.py options that choose how runs are spread; a single run never sees them.
_MULTI_RUN_FIELDS = ("seeds", "sweep", "backend", "workers", "ray_address")


@dataclass(frozen=True)
class Variant:
    """One point of a sweep: a name (part of the run directory) and hyperparameter overrides."""

    name: str
    overrides: dict = field(default_factory=dict, hash=False)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return "-".join(f"{k}{_fmt(x)}" for k, x in v.items())
    return str(v)


def _variant_name(overrides: dict) -> str:
    return "_".join(f"{k}{_fmt(v)}" for k, v in overrides.items())


_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def load_sweep(path: str | os.PathLike) -> list[Variant]:
    """The variants of a sweep file (``configs/sweeps/*.yaml``).

    Keys: ``description`` (optional), ``variants`` (a list of mappings of hyperparameter
    overrides, each with an optional ``name``) and/or ``grid`` (a mapping of hyperparameter to a
    list of values: every combination). With both, every variant is combined with every grid
    point. Names (given, or made from the overrides, e.g. ``learning_rate0.0001_ent_coef0.01``)
    must be unique and may hold only letters, digits and ``._+-``. The overrides are checked
    against the hyperparameter schema when the runs are set up.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not (set(raw) & {"variants", "grid"}):
        raise ValueError(f"{path}: expected a mapping with 'variants' and/or 'grid'")
    unknown = set(raw) - {"description", "variants", "grid"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (allowed: description, variants, grid)")
    base: list[tuple[str | None, dict]] = [(None, {})]
    if "variants" in raw:
        if not isinstance(raw["variants"], list) or not raw["variants"] \
                or not all(isinstance(v, dict) for v in raw["variants"]):
            raise ValueError(f"{path}: 'variants' must be a non-empty list of mappings")
        base = [(None if v.get("name") is None else str(v["name"]),
                 {k: x for k, x in v.items() if k != "name"}) for v in raw["variants"]]
    points: list[dict] = [{}]
    if "grid" in raw:
        grid = raw["grid"]
        if not isinstance(grid, dict) or not grid \
                or not all(isinstance(v, list) and v for v in grid.values()):
            raise ValueError(f"{path}: 'grid' must map hyperparameters to non-empty lists of values")
        points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    out = []
    for (name, over), point in itertools.product(base, points):
        parts = [p for p in (name or _variant_name(over), _variant_name(point)) if p]
        vname = re.sub(r"[^A-Za-z0-9._+-]", "", "_".join(parts))
        if not _NAME_OK.fullmatch(vname or "-"):
            raise ValueError(f"{path}: variant {over | point} has no usable name; give it a 'name'")
        out.append(Variant(vname, {**over, **point}))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate variant names {dup}")
    return out


def _int_list(text: str, flag: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or min(vals) < 0 or len(set(vals)) != len(vals):
        raise ValueError(f"{flag}: expected distinct comma-separated non-negative integers, got {text!r}")
    return vals


def _load_script(script: str):
    """train.py as a module (it is a script, not part of a package; cached per process)."""
    import importlib.util

    name = "_gridenv_train_script"
    mod = sys.modules.get(name)
    if mod is None or getattr(mod, "__file__", None) != str(script):
        spec = importlib.util.spec_from_file_location(name, script)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


@dataclass(frozen=True)
class _TrainJob:
    script: str  #: path of train.py
    args: dict  #: its Args, as a dict
    explicit: tuple  #: the fields given explicitly
    command: str  #: the equivalent command line, recorded in args.json


def _train_task(job: _TrainJob) -> dict:
    """One training run (in a worker process or a Ray task); its JSON-able summary."""
    mod = _load_script(job.script)
    args = mod.Args(**job.args)
    explicit = set(job.explicit)
    run_dir = Path(args.run_dir)
    if not (args.resume or args.overwrite) and ((run_dir / "args.json").exists()
                                                or (run_dir / "checkpoints").exists()):
        # The driver refused run directories that already held a run, so this is a retry of
        # ours: continue from its last checkpoint, or start over if it has none yet.
        from agents.training import latest_checkpoint

        if latest_checkpoint(run_dir / "checkpoints") is not None:
            args.resume = True
            explicit |= {"resume"}
        else:
            args.overwrite = True
    res = mod.train(args, explicit, job.command)
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}
    out["resumed_from"] = str(res["resumed_from"].model) if res.get("resumed_from") else None
    return out


def _argv(args, fields: Sequence[str]) -> list[str]:
    """Command-line flags reproducing the given fields of train.py's Args."""
    defaults = {f.name: f.default for f in type(args).__dataclass_fields__.values()}
    out: list[str] = []
    for name in fields:
        v, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(v, bool):
            if v != defaults[name]:
                out.append(flag if v else "--no-" + name.replace("_", "-"))
        elif v is not None:
            out += [flag, str(v)]
    return out


def _command(args, fields: Sequence[str]) -> str:
    import shlex

    return shlex.join(["python", "train.py", *_argv(args, sorted(fields))])


def _best_model(run_dir: Path) -> Path:
    best = run_dir / "best_model" / "best_model.zip"
    return best if best.is_file() else run_dir / "model.zip"


def train_runs(args, explicit: set, command: str, script: str | os.PathLike) -> dict:
    """``train.py`` with ``--seeds``, ``--sweep`` or ``--backend ray``: several runs, one leaderboard.

    One run per seed (``--seeds``, default ``--seed``) and sweep variant, each a job of
    :func:`run_tasks` that calls ``train.train`` with its own run directory
    ``<root>/<scenario>_<algo>_s<seed>[_<variant>]`` (``root`` = ``--run-dir``, default
    ``runs``), where a variant's merged hyperparameters are written as ``hyperparams.yaml``.
    Then (unless ``--no-eval-leaderboard``) every run's best model and the heuristics are
    evaluated together on the first ``--leaderboard-seeds`` seeds of ``--leaderboard-suite``,
    with the same backend, into ``<root>/leaderboard_<scenario>_<algo>[_<sweep>]/`` (with
    ``runs.json`` and the runs' learning curves). A run that failed on every attempt is listed
    by name and the process exits with status 1, after the others are evaluated.

    Without ``--seeds``/``--sweep`` (``--backend ray`` alone) the single run is one Ray task,
    exactly as ``train.py`` would run it here, its own leaderboard included.

    On a multi-node cluster, the run directories must be on a file system every node shares
    (each task writes where it runs; the leaderboard reads the models by path).
    """
    import yaml

    from agents import training as T
    from agents.evaluation import evaluate, get_suite, parse_policies, print_progress
    from agents.heuristics import heuristic_names

    if args.backend not in BACKENDS:
        raise T.ConfigError(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    if args.backend == "ray":
        require_ray()
    if args.workers is not None and args.workers < 1:
        raise T.ConfigError("--workers must be at least 1")
    script = str(Path(script).resolve())
    plain = {"backend": "local", "seeds": None, "sweep": None, "workers": None, "ray_address": None}
    single_fields = [f for f in explicit if f not in _MULTI_RUN_FIELDS]
    say = print if args.verbose else (lambda *a, **k: None)

    if not (args.seeds or args.sweep):  # one run, on a Ray worker
        child = replace(args, **plain, progress_bar=False)
        job = _TrainJob(script, vars(child), tuple(single_fields), _command(child, single_fields))
        name = child.run_dir or f"{T.resolve_scenario(child.scenario)[0]}_{child.algo}_s{child.seed}"
        [res] = run_tasks(_train_task, [job], [f"run {name}"], args.backend, args.workers,
                          args.ray_address, what="training run")
        return res

    try:
        seeds = _int_list(args.seeds, "--seeds") if args.seeds else [args.seed]
        variants = load_sweep(args.sweep) if args.sweep else [Variant("", {})]
    except (ValueError, FileNotFoundError) as e:
        raise T.ConfigError(str(e)) from None
    scenario, _ = T.resolve_scenario(args.scenario)
    if args.algo not in T.ALGOS:
        raise T.ConfigError(f"unknown algo {args.algo!r}: choose one of {', '.join(T.ALGOS)}")
    root = Path(args.run_dir or "runs")
    hp_path = Path(args.hyperparams)
    if not hp_path.is_absolute() and not hp_path.exists():
        hp_path = Path(script).parent / hp_path
    base_hp = T.load_hyperparams(hp_path, scenario)

    jobs, names, dirs, meta = [], [], [], []
    for v, seed in itertools.product(variants, seeds):
        run_dir = root / (f"{scenario}_{args.algo}_s{seed}" + (f"_{v.name}" if v.name else ""))
        holds_run = (run_dir / "args.json").exists() or (run_dir / "checkpoints").exists()
        if holds_run and not (args.resume or args.overwrite):
            raise T.ConfigError(f"{run_dir} already holds a run: pass --resume to continue the runs, "
                                "--overwrite to replace them, or another --run-dir")
        hyperparams = args.hyperparams
        if v.overrides:
            from gridenv.core.scenario import deep_merge

            merged = deep_merge(base_hp, v.overrides)
            T._check_entry(merged, f"{args.sweep}: variant {v.name}")
            run_dir.mkdir(parents=True, exist_ok=True)
            hyperparams = str(run_dir / "hyperparams.yaml")
            Path(hyperparams).write_text(
                f"# {hp_path} for {scenario}, with the overrides of variant {v.name} of {args.sweep}\n"
                + yaml.safe_dump({"default": merged}, sort_keys=False))
        child = replace(args, **plain, seed=seed, run_dir=str(run_dir), hyperparams=hyperparams,
                        no_eval_leaderboard=True,
                        progress_bar=args.progress_bar and args.backend == "local" and (args.workers or 1) == 1)
        fields = sorted(set(single_fields) | {"seed", "run_dir", "hyperparams", "no_eval_leaderboard",
                                              "progress_bar"})
        jobs.append(_TrainJob(script, vars(child), tuple(fields), _command(child, fields)))
        names.append(f"run {run_dir.name}")
        dirs.append(run_dir)
        meta.append({"name": run_dir.name, "run_dir": str(run_dir), "seed": seed, "variant": v.name or None,
                     "overrides": v.overrides})

    group = f"leaderboard_{scenario}_{args.algo}" + (f"_{Path(args.sweep).stem}" if args.sweep else "")
    out = root / group
    where = (f"Ray ({args.ray_address or os.environ.get('RAY_ADDRESS') or 'local'})"
             if args.backend == "ray" else f"{args.workers or 1} local worker(s)")
    say(f"{len(jobs)} training runs ({len(variants)} variant(s) x seeds {seeds}) on {where} -> {root}")

    def progress(done, total, res, st: Status):
        if st.event == "done":
            say(f"[{done}/{total}] {st.name} done: {res['timesteps']} steps in {res['train_seconds']:.0f} s"
                + (f" ({st.summary()})" if st.summary() else ""), flush=True)
        else:
            print(f"[{done}/{total}] {st.name} {'FAILED' if st.event == 'failed' else 'failed, retrying'}: "
                  f"{st.error}", file=sys.stderr, flush=True)

    failures: list[Failure] = []
    session = ray_session(args.workers, args.ray_address) if args.backend == "ray" else nullcontext()
    with session:
        try:
            results = run_tasks(_train_task, jobs, names, args.backend, args.workers, args.ray_address,
                                progress, what="training run")
        except TaskFailures as e:
            results, failures = e.results, e.failures
        for m, res in zip(meta, results):
            m.update(failed=res is None, **({k: res[k] for k in ("timesteps", "train_seconds", "steps_per_s")}
                                            if res else {}))
        ok = [d for d, res in zip(dirs, results) if res is not None]
        leaderboard = None
        if ok and not args.no_eval_leaderboard:
            suite = get_suite(args.leaderboard_suite, scenarios=[scenario])
            suite = replace(suite, seeds=suite.seeds[:args.leaderboard_seeds])
            specs = [*heuristic_names(), *(f"{d.name}={_best_model(d).resolve()}" for d in ok)]
            say(f"leaderboard: {len(ok)} runs vs heuristics on {scenario}, seeds "
                f"{list(suite.seeds)} -> {out}")
            lb = evaluate(suite, parse_policies(specs), backend=args.backend, workers=args.workers or 1,
                          ray_address=args.ray_address, progress=print_progress if args.verbose else None)
            from agents import report

            report.write_leaderboard(lb, out)
            for d in ok:  # the runs' TensorBoard logs side by side, for one learning-curve plot
                if (d / "tb").is_dir():
                    shutil.copytree(d / "tb", out / "tb" / d.name, dirs_exist_ok=True)
            if (out / "tb").is_dir():
                report.plot_learning_curves(out / "tb", out / "learning_curves.png")
            print(report.leaderboard_markdown(lb).split("\n## ")[0].rstrip())
            leaderboard = out / "leaderboard.json"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": command, "scenario": scenario, "algo": args.algo, "seeds": seeds,
               "sweep": args.sweep, "backend": args.backend, "runs": meta,
               "failures": [{"name": f.name, "error": f.error, "attempts": f.attempts} for f in failures],
               "leaderboard": str(leaderboard) if leaderboard else None}
    (out / "runs.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        print(f"train.py: {TaskFailures(failures, results, 'training run')}", file=sys.stderr)
        raise SystemExit(1)
    return {**summary, "run_dirs": [str(d) for d in dirs]}
