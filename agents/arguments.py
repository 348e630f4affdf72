"""The command-line arguments of ``train.py`` and ``evaluate.py``, parsed with tyro.

Each script's options are the fields of a dataclass here (:class:`TrainArgs`,
:class:`EvalArgs`); tyro turns a field into a flag (``total_timesteps`` -> ``--total-timesteps``,
a bool into ``--flag/--no-flag``) and its docstring into the help text, as in CleanRL. The
classes live in the package (not in the scripts) because multi-run training
(:mod:`agents.campaign`) builds them too, and nothing may import a script.

:func:`parse` also checks the numbers (counts > 0, seeds >= 0, finite values) and turns a bad
one into a usage error: ``train.py: error: --n-envs must be at least 1, got 0`` and exit status
2, no traceback. :func:`run_main` does the same for the user errors a script raises later
(bad config, missing file); ``--debug`` shows the traceback instead.

This module imports neither torch nor the simulator, so ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Sequence

import tyro

__all__ = ["TrainArgs", "EvalArgs", "UsageError", "parse", "explicit_fields", "run_main",
           "argv_for", "int_list", "USER_ERRORS"]

ALGOS = ("maskable_ppo", "ppo")
BACKENDS = ("local", "ray")


def _unset(meaning: str, metavar: str = "STR"):
    """An optional flag whose absence means `meaning` (shown in --help instead of 'None')."""
    return tyro.conf.arg(help_behavior_hint=f"(default: {meaning})", metavar=metavar)


class UsageError(ValueError):
    """A command-line value that cannot be used (exit status 2)."""


@dataclass
class TrainArgs:
    """Train a (Maskable)PPO router on a gridenv scenario."""

    scenario: str = "metro"
    """scenario name (metro), env id (gridenv/Metro-v1) or path of a scenario YAML file"""
    algo: Literal["maskable_ppo", "ppo"] = "maskable_ppo"
    """maskable_ppo (sb3-contrib MaskablePPO, reads env.action_masks()) or ppo (plain PPO; masked sites are shed by the env)"""
    total_timesteps: int = 500_000
    """total env steps (decisions) of the run; with --resume, the target including the steps already done (~2.5 min of training on metro on 2 cores)"""
    seed: int = 0
    """seed of the model and of the training envs' first resets (env i gets seed + i)"""
    n_envs: Annotated[Optional[int], _unset("n_envs of the hyperparameter file", "INT")] = None
    """number of DummyVecEnv sub-envs"""
    run_dir: Annotated[Optional[str], _unset("runs/<scenario>_<algo>_s<seed>; with --seeds or --sweep: runs", "DIR")] = None
    """where checkpoints, models, logs go; with --seeds or --sweep, the parent directory of the runs' directories"""
    resume: bool = False
    """continue the run in --run-dir from its last checkpoint (model, VecNormalize statistics, timestep count, best eval score)"""
    overwrite: bool = False
    """start a fresh run even if --run-dir already holds one (its files are replaced)"""
    warm_start: str = "slo-greedy"
    """imitation warm start: clone this heuristic's (or agents.warm_start.TEACHERS entry's: slo-greedy-lenient, prefix-switch) decisions (site/shed and batch level) into the policy, and fit the critic to their returns, before PPO (avoids the shed-everything collapse; the reward and the optimal policy are unchanged); none: start from a random policy"""
    warm_start_steps: int = 10_000
    """decisions of the heuristic to clone for --warm-start (at most a quarter of --total-timesteps)"""
    warm_start_updates: int = 1500
    """minibatch steps (of 256 decisions) of the behaviour cloning, at least; whole epochs, at most 50 (more demonstrations or more updates: a closer clone)"""
    warm_start_anchor: int = 0
    """after every PPO update, this many minibatch steps (of 256) of the warm start's cloning loss on its demonstrations, so PPO refines the clone instead of drifting from it (0: off); 8 held the generalist's clone at 8.47-8.60 $ on its tuning grids over 800k steps, where plain PPO fell from 8.52 to 7.79 in 400k"""
    warm_start_dagger: int = 0
    """rounds of DAgger after the cloning: the clone drives --warm-start-steps decisions on new episodes, the heuristic labels the states it visits, and the clone is refitted on all demonstrations so far (0: off)"""
    warm_start_level: Annotated[Optional[int], _unset("the heuristic's own: it keeps each site's current level", "INT")] = None
    """batch level index the cloned heuristic requests at every site it picks (0 = the smallest of the scenario's batch_levels); e.g. 2 for 128 on the cache scenarios, where that level beats the initial one for every cache-aware router"""
    warm_start_core_level: Annotated[Optional[int], _unset("--warm-start-level", "INT")] = None
    """batch level index the cloned heuristic requests at core sites (kind: core), --warm-start-level then applying to edge sites only; e.g. 1 at the L4 edges and 2 at the H100 core on coding-agent"""
    init_from: Annotated[Optional[str], _unset("a new policy", "DIR")] = None
    """fine-tune a trained policy: its weights, architecture and statistics (models/generalist, a run directory or a .zip; its observation interface must be the scenario's)"""
    hyperparams: str = "configs/ppo.yaml"
    """rl-zoo3-style YAML: a default: entry overridden by an entry per scenario name or env id (relative paths: the working directory, else the checkout)"""
    env_config: Annotated[Optional[str], _unset("the hyperparameter file's env_config", "JSON")] = None
    """JSON merged over the hyperparameter file's env_config, i.e. into the scenario for training and in-training evaluation, e.g. '{"horizon_s": 60}'"""
    eval_freq: int = 100_000
    """evaluate on fixed seeds every this many env steps (0: no in-training evaluation, no best model)"""
    eval_episodes: Annotated[Optional[int], _unset("eval_episodes of the hyperparameter file", "INT")] = None
    """episodes per in-training evaluation"""
    checkpoint_freq: int = 100_000
    """save a checkpoint (model + VecNormalize) every this many env steps"""
    no_eval_leaderboard: bool = False
    """skip the final evaluation of the trained agent against the heuristics"""
    leaderboard_seeds: int = 3
    """number of episode seeds of the final leaderboard (the first seeds of --leaderboard-suite)"""
    leaderboard_suite: str = "standard"
    """suite of configs/suites.yaml whose seeds and overrides the final leaderboard uses (on --scenario only)"""
    progress_bar: bool = True
    """the training progress bar (--no-progress-bar hides it)"""
    torch_threads: int = 1
    """torch intra-op threads: 1 was faster than 2 for this small MLP on the 2-core machine"""
    update_threads: Annotated[Optional[int], _unset("--torch-threads", "INT")] = None
    """torch threads for the PPO update only (the env worker processes are idle then), --torch-threads again for the rollout; 2 on the 2-core machine made the fast recipe 1.09-1.13x faster (python -m agents.bench_training --variants fast,fast-u2)"""
    device: str = "cpu"
    """torch device"""
    verbose: int = 1
    """0: quiet, 1: progress messages, 2: also SB3's per-rollout tables"""
    seeds: Annotated[Optional[str], _unset("--seed only", "LIST")] = None
    """comma-separated seeds, e.g. 0,1,2: one independent run per seed (and --sweep variant), in <run-dir>/<scenario>_<algo>_s<seed>[_<variant>], then one leaderboard of all of them against the heuristics (agents/campaign.py)"""
    sweep: Annotated[Optional[str], _unset("no sweep", "YAML")] = None
    """sweep YAML (configs/sweeps/): hyperparameter variants merged over --hyperparams; one run per variant and seed"""
    backend: Literal["local", "ray"] = "local"
    """where the runs go: local (this machine: --workers processes, default one run after another) or ray (a Ray task per run, on --ray-address or a local Ray with --workers CPUs; pip install -e '.[ray]')"""
    workers: Annotated[Optional[int], _unset("1 local process; all cores for a local Ray", "INT")] = None
    """runs at once: local processes, or the CPUs of the local Ray"""
    ray_address: Annotated[Optional[str], _unset("$RAY_ADDRESS, else a local Ray for the run", "ADDRESS")] = None
    """Ray cluster for --backend ray: auto, ray://host:10001"""
    debug: bool = False
    """show the full traceback of an error instead of a one-line message"""


@dataclass
class EvalArgs:
    """Evaluate routing policies on a benchmark suite and write the leaderboard."""

    suite: Annotated[Optional[str], _unset("standard; claims with --report claims", "NAME")] = None
    """benchmark suite in the suites file"""
    policies: Annotated[Optional[str], _unset("every heuristic; slo-greedy with --report claims", "LIST")] = None
    """comma-separated policies: heuristic names, run directories, SB3 .zip or ONNX paths, module:Class, each optionally label=spec"""
    out: Annotated[Optional[str], _unset("leaderboards/<suite>", "DIR")] = None
    """output directory"""
    merge: Annotated[Optional[tuple[str, ...]], _unset("run the episodes", "JSON [JSON ...]")] = None
    """leaderboard.json files (or their directories) of earlier runs, e.g. one per scenario: run nothing, merge their episodes into one leaderboard in --out (same files; normalized by random and the best heuristic of the merged set)"""
    workers: int = 2
    """worker processes running episodes (--backend ray without --ray-address: CPUs of the local Ray)"""
    backend: Literal["local", "ray"] = "local"
    """where episodes run: local (worker processes on this machine) or ray (a Ray task each)"""
    ray_address: Annotated[Optional[str], _unset("$RAY_ADDRESS, else a local Ray for the run", "ADDRESS")] = None
    """Ray cluster for --backend ray: auto, ray://host:10001"""
    scenarios: Annotated[Optional[str], _unset("the suite's", "LIST")] = None
    """comma-separated scenarios replacing the suite's: names, env ids or scenario YAML paths"""
    seeds: Annotated[Optional[str], _unset("the suite's", "LIST")] = None
    """comma-separated seeds replacing the suite's"""
    report: Annotated[Optional[Literal["claims"]], _unset("none", "{claims}")] = None
    """extra report: 'claims' checks the brief's edge figures"""
    tb_logdir: Annotated[Optional[str], _unset("no learning curves", "DIR")] = None
    """TensorBoard log directory of a training run: plot its learning curves"""
    suites_file: Annotated[Optional[str], _unset("configs/suites.yaml", "YAML")] = None
    """suites YAML file"""
    resamples: int = 2000
    """bootstrap resamples for the 95% confidence intervals"""
    quiet: bool = False
    """no progress output"""
    debug: bool = False
    """show the full traceback of an error instead of a one-line message"""


# ----------------------------------------------------------------------------- validation
def int_list(text: str, flag: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]: distinct non-negative integers, else :class:`UsageError`."""
    try:
        vals = [int(x) for x in str(text).split(",")]  # an empty item ("1,,2") is an error, not skipped
    except ValueError:
        vals = []
    if not vals or min(vals) < 0 or len(set(vals)) != len(vals):
        raise UsageError(f"{flag}: expected distinct comma-separated non-negative integers, got {text!r}")
    return vals


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(args, name: str, lo: int, none_ok: bool = False) -> None:
    v = getattr(args, name)
    if v is None and none_ok:
        return
    if v is None or v < lo:
        raise UsageError(f"{_flag(name)} must be at least {lo}, got {v}")


def warm_start_name(a: TrainArgs) -> str | None:
    """The --warm-start teacher, or None when it is turned off (none, off or empty)."""
    return None if a.warm_start.lower() in ("none", "off", "") else a.warm_start


def _check_train(a: TrainArgs) -> None:
    for name in ("total_timesteps", "checkpoint_freq", "leaderboard_seeds", "torch_threads"):
        _at_least(a, name, 1)
    for name in ("n_envs", "eval_episodes", "workers", "update_threads"):
        _at_least(a, name, 1, none_ok=True)
    for name in ("seed", "eval_freq"):
        _at_least(a, name, 0)
    if a.verbose not in (0, 1, 2):
        raise UsageError(f"--verbose must be 0, 1 or 2, got {a.verbose}")
    if a.seeds is not None:
        int_list(a.seeds, "--seeds")
    if a.warm_start_steps < 0:
        raise UsageError(f"--warm-start-steps must be at least 0, got {a.warm_start_steps}")
    if a.warm_start_updates < 1:
        raise UsageError(f"--warm-start-updates must be at least 1, got {a.warm_start_updates}")
    # Both need the warm start's clone and demonstrations: a teacher, some steps, a new run.
    cloned = warm_start_name(a) is not None and a.warm_start_steps > 0 and not (a.init_from or a.resume)
    needs = "a --warm-start heuristic with --warm-start-steps > 0, in a new run (not --init-from or --resume)"
    if a.warm_start_dagger < 0:
        raise UsageError(f"--warm-start-dagger must be at least 0, got {a.warm_start_dagger}")
    if a.warm_start_dagger and not cloned:
        raise UsageError(f"--warm-start-dagger refits the warm start's clone: {needs}")
    if a.warm_start_anchor < 0:
        raise UsageError(f"--warm-start-anchor must be at least 0, got {a.warm_start_anchor}")
    if a.warm_start_anchor and not cloned:
        raise UsageError(f"--warm-start-anchor needs the warm start's demonstrations: {needs}")
    if a.warm_start_level is not None and a.warm_start_level < 0:
        raise UsageError(f"--warm-start-level must be a batch level index >= 0, got {a.warm_start_level}")
    if a.warm_start_core_level is not None and a.warm_start_core_level < 0:
        raise UsageError(f"--warm-start-core-level must be a batch level index >= 0, got {a.warm_start_core_level}")
    if a.init_from and a.resume:
        raise UsageError("--init-from starts a new run from a trained policy; --resume continues a run: pass one")
    if a.resume and a.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if a.ray_address and a.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")


#: EvalArgs fields that choose which episodes to run: meaningless with --merge.
_RUN_ONLY = ("suite", "policies", "scenarios", "seeds", "suites_file", "backend", "ray_address", "workers")


def _check_eval(a: EvalArgs) -> None:
    if a.merge is not None:
        if not a.merge:
            raise UsageError("--merge: give the leaderboard.json files to merge")
        if not a.out:
            raise UsageError("--merge needs --out DIR (where the merged leaderboard goes)")
        defaults = {f.name: f.default for f in dataclasses.fields(EvalArgs)}
        for name in _RUN_ONLY:
            if getattr(a, name) != defaults[name]:
                raise UsageError(f"{_flag(name)} does not apply to --merge, which runs no episode "
                                 "(the inputs' episodes are merged as they are)")
    _at_least(a, "workers", 1)
    _at_least(a, "resamples", 1)
    if a.seeds is not None:
        int_list(a.seeds, "--seeds")
    if a.ray_address and a.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")


_CHECKS: dict[type, Callable[[Any], None]] = {TrainArgs: _check_train, EvalArgs: _check_eval}


def validate(args) -> None:
    """:class:`UsageError` naming the flag if a value cannot be used."""
    _CHECKS[type(args)](args)
    for f in dataclasses.fields(args):  # no NaN or inf anywhere
        v = getattr(args, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{_flag(f.name)} must be a finite number, got {v}")


# ----------------------------------------------------------------------------- parsing
def explicit_fields(cls: type, argv: Sequence[str]) -> set[str]:
    """The fields of `cls` given on the command line (``--x v``, ``--x=v``, ``--no-x``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = set()
    for tok in argv:
        if not tok.startswith("--"):
            continue
        name = tok[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names:
            out.add(name)
    return out


def parse(cls: type, argv: Sequence[str] | None, prog: str, description: str | None = None):
    """``(args, explicit)``: tyro-parsed `cls` and the fields given explicitly; exit 2 on a bad value."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(cls, args=argv, prog=prog, description=description,
                    config=(tyro.conf.FlagCreatePairsOff,))
    try:
        validate(args)
    except UsageError as err:
        usage_exit(prog, str(err))
    return args, explicit_fields(cls, argv)


def usage_exit(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


#: Exceptions that mean "the user asked for something that cannot be done" (bad flag, config,
#: file, missing package): one line, exit 2, unless --debug.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ImportError)


def run_main(prog: str, debug: bool, fn: Callable[[], Any]) -> Any:
    """``fn()``, with a user error printed as one ``prog: error: ...`` line and exit status 2.

    With `debug`, the exception propagates (full traceback). A ``KeyboardInterrupt`` exits 130.
    """
    from agents.tasks import TaskFailures

    try:
        return fn()
    except TaskFailures as err:  # jobs that failed: named, one line each, exit 1
        if debug:
            raise
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except USER_ERRORS as err:
        if debug:
            raise
        text = str(err).strip() or type(err).__name__
        usage_exit(prog, text)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def argv_for(args, fields: Sequence[str]) -> list[str]:
    """Command-line flags reproducing the given fields of a TrainArgs/EvalArgs."""
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    out: list[str] = []
    for name in fields:
        v, flag = getattr(args, name), _flag(name)
        if isinstance(v, bool):
            if v != defaults[name]:
                out.append(flag if v else "--no-" + name.replace("_", "-"))
        elif v is not None:
            out += [flag, str(v)]
    return out


def command_line(script: str, args, fields: Sequence[str]) -> str:
    """``python train.py --x 1 ...`` for the given fields (recorded in args.json)."""
    return shlex.join(["python", script, *argv_for(args, sorted(fields))])
