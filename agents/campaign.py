"""Campaigns: several training runs (seeds x sweep variants) as parallel tasks, one leaderboard.

``train.py --seeds 0,1,2``, ``--sweep configs/sweeps/x.yaml`` or ``--backend ray`` call
:func:`train_runs`: one job of :func:`agents.tasks.run_tasks` per (seed, variant), each
:func:`agents.training.train` in its own run directory, then every run's model and the
heuristics evaluated together (:func:`agents.evaluation.evaluate`).

Sweep files (``configs/sweeps/*.yaml``, :class:`agents.schemas.SweepFile`): ``description``
(optional), ``variants`` (a list of hyperparameter overrides, each with an optional ``name``)
and/or ``grid`` (hyperparameter -> list of values: every combination). With both, every
variant is combined with every grid point. Names (given, or made from the overrides, e.g.
``learning_rate0.0001_ent_coef0.01``) must be unique and hold only letters, digits and
``._+-``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from agents import schemas
from agents.arguments import TrainArgs, UsageError, command_line, int_list
from agents.tasks import Failure, Status, TaskFailures, ray_session, require_ray, run_tasks

__all__ = ["Variant", "load_sweep", "train_runs", "MULTI_RUN_FIELDS"]

#: train.py options that choose how runs are spread; a single run never sees them.
MULTI_RUN_FIELDS = ("seeds", "sweep", "backend", "workers", "ray_address")


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


def load_sweep(path: str | os.PathLike) -> list[Variant]:
    """The variants of a sweep file (see the module docstring); SchemaError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    sweep = schemas.load(schemas.SweepFile, path)
    base: list[tuple[str | None, dict]] = [(None, {})]
    if sweep.variants is not None:
        base = [(v.name, {k: x for k, x in v.as_dict().items() if k != "name"}) for v in sweep.variants]
    points: list[dict] = [{}]
    if sweep.grid is not None:
        points = [dict(zip(sweep.grid, combo)) for combo in itertools.product(*sweep.grid.values())]
    out = []
    for (name, over), point in itertools.product(base, points):
        parts = [p for p in (name or _variant_name(over), _variant_name(point)) if p]
        vname = re.sub(r"[^A-Za-z0-9._+-]", "", "_".join(parts))
        if not schemas.schema_name_ok(vname or "-"):
            raise schemas.SchemaError(f"{path}: variant {over | point} has no usable name; give it a 'name'")
        out.append(Variant(vname, {**over, **point}))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise schemas.SchemaError(f"{path}: duplicate variant names {dup}")
    return out


@dataclass(frozen=True)
class _TrainJob:
    args: dict  #: TrainArgs as a dict
    explicit: tuple  #: the fields given explicitly
    command: str  #: the equivalent command line, recorded in args.json


def _train_task(job: _TrainJob) -> dict:
    """One training run (in a worker process or a Ray task); its JSON-able summary."""
    from agents.runs import latest_checkpoint
    from agents.training import train

    args = TrainArgs(**job.args)
    explicit = set(job.explicit)
    run_dir = Path(args.run_dir)
    if not (args.resume or args.overwrite) and ((run_dir / "args.json").exists()
                                                or (run_dir / "checkpoints").exists()):
        # The driver refused run directories that already held a run, so this is a retry of
        # ours: continue from its last checkpoint, or start over if it has none yet.
        if latest_checkpoint(run_dir / "checkpoints") is not None:
            args.resume = True
            explicit |= {"resume"}
        else:
            args.overwrite = True
    res = train(args, explicit, job.command)
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.items()}
    out["resumed_from"] = str(res["resumed_from"].model) if res.get("resumed_from") else None
    return out


def train_runs(args: TrainArgs, explicit: set, command: str) -> dict:
    """``train.py`` with ``--seeds``, ``--sweep`` or ``--backend ray``: several runs, one leaderboard.

    One run per seed (``--seeds``, default ``--seed``) and sweep variant, each a job of
    :func:`run_tasks` with its own run directory ``<root>/<scenario>_<algo>_s<seed>[_<variant>]``
    (``root`` = ``--run-dir``, default ``runs``), where a variant's merged hyperparameters are
    written as ``hyperparams.yaml``. Then (unless ``--no-eval-leaderboard``) every run's best
    model and the heuristics are evaluated together on the first ``--leaderboard-seeds`` seeds
    of ``--leaderboard-suite``, with the same backend, into
    ``<root>/leaderboard_<scenario>_<algo>[_<sweep>]/`` (with ``runs.json`` and the runs'
    learning curves). A run that failed is listed by name and the process exits with status 1,
    after the others are evaluated.

    Without ``--seeds``/``--sweep`` (``--backend ray`` alone) the single run is one Ray task,
    exactly as ``train.py`` would run it here, its own leaderboard included.

    On a multi-node cluster, the run directories must be on a file system every node shares
    (each task writes where it runs; the leaderboard reads the models by path).
    """
    import yaml

    from agents import training as T
    from agents.evaluation import evaluate, get_suite, parse_policies, print_progress
    from agents.heuristics import heuristic_names
    from agents.runs import resolve_model
    from gridenv.envs.registration import resolve_scenario

    if args.backend == "ray":
        require_ray()
    plain = {"backend": "local", "seeds": None, "sweep": None, "workers": None, "ray_address": None}
    single_fields = [f for f in explicit if f not in MULTI_RUN_FIELDS]
    say = print if args.verbose else (lambda *a, **k: None)
    ref = resolve_scenario(args.scenario)

    if not (args.seeds or args.sweep):  # one run, on a Ray worker
        child = replace(args, **plain, progress_bar=False)
        job = _TrainJob(asdict(child), tuple(single_fields), command_line("train.py", child, single_fields))
        name = child.run_dir or f"{ref.name}_{child.algo}_s{child.seed}"
        [res] = run_tasks(_train_task, [job], [f"run {name}"], args.backend, args.workers,
                          args.ray_address, what="training run")
        return res

    seeds = int_list(args.seeds, "--seeds") if args.seeds else [args.seed]
    variants = load_sweep(args.sweep) if args.sweep else [Variant("", {})]
    root = Path(args.run_dir or "runs")
    T.check_run_flags(args, ref, root)  # before any run starts: the leaderboard comes after them all
    hp_path = T.find_hyperparams(args.hyperparams)
    base_hp = T.load_hyperparams(hp_path, args.scenario)

    jobs, names, dirs, meta = [], [], [], []
    for v, seed in itertools.product(variants, seeds):
        run_dir = root / (f"{ref.name}_{args.algo}_s{seed}" + (f"_{v.name}" if v.name else ""))
        holds_run = (run_dir / "args.json").exists() or (run_dir / "checkpoints").exists()
        if holds_run and not (args.resume or args.overwrite):
            raise UsageError(f"{run_dir} already holds a run: pass --resume to continue the runs, "
                             "--overwrite to replace them, or another --run-dir")
        hyperparams = args.hyperparams
        if v.overrides:
            from gridenv.core.scenario import deep_merge

            merged = deep_merge(base_hp, v.overrides)
            T.check_entry(merged, f"{args.sweep}: variant {v.name}")
            run_dir.mkdir(parents=True, exist_ok=True)
            hyperparams = str(run_dir / "hyperparams.yaml")
            file = schemas.HyperparamsFile.model_validate({"default": merged})  # the schema, on write too
            Path(hyperparams).write_text(
                f"# {hp_path} for {ref.name}, with the overrides of variant {v.name} of {args.sweep}\n"
                + yaml.safe_dump(file.model_dump(exclude_unset=True), sort_keys=False))
        child = replace(args, **plain, seed=seed, run_dir=str(run_dir), hyperparams=hyperparams,
                        no_eval_leaderboard=True,
                        progress_bar=args.progress_bar and args.backend == "local" and (args.workers or 1) == 1)
        fields = sorted(set(single_fields) | {"seed", "run_dir", "hyperparams", "no_eval_leaderboard",
                                              "progress_bar"})
        jobs.append(_TrainJob(asdict(child), tuple(fields), command_line("train.py", child, fields)))
        names.append(f"run {run_dir.name}")
        dirs.append(run_dir)
        meta.append({"name": run_dir.name, "run_dir": str(run_dir), "seed": seed, "variant": v.name or None,
                     "overrides": v.overrides})

    group = f"leaderboard_{ref.name}_{args.algo}" + (f"_{Path(args.sweep).stem}" if args.sweep else "")
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
            suite = get_suite(args.leaderboard_suite, scenarios=[args.scenario])
            suite = replace(suite, seeds=suite.seeds[:args.leaderboard_seeds])
            specs = [*heuristic_names(), *(f"{d.name}={resolve_model(d).run_dir.resolve()}" for d in ok)]
            say(f"leaderboard: {len(ok)} runs vs heuristics on {ref.name}, seeds "
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
    summary = {"command": command, "scenario": ref.name, "algo": args.algo, "seeds": seeds,
               "sweep": args.sweep, "backend": args.backend, "runs": meta,
               "failures": [{"name": f.name, "error": f.error, "attempts": f.attempts} for f in failures],
               "leaderboard": str(leaderboard) if leaderboard else None}
    (out / "runs.json").write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        print(f"train.py: {TaskFailures(failures, results, 'training run')}", file=sys.stderr)
        raise SystemExit(1)
    return {**summary, "run_dirs": [str(d) for d in dirs]}
