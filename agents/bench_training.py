"""End-to-end PPO training speed (env steps per second) of the old and the new env paths.

    python -m agents.bench_training                          # 100k steps per variant, metro
    python -m agents.bench_training --steps 50000 --variants dummy,fast --json bench.json
    python -m agents.bench_training --extra '{"f64": {"hyperparams": "configs/ppo_fast.yaml", "n_envs": 64}}'

Each variant trains MaskablePPO with the site-scoring policy on the scenario (metro by default)
for ``--steps`` env steps from scratch, exactly as ``train.py`` builds it
(``agents.training.make_vec_env`` + VecNormalize, the hyperparameter file's PPO arguments,
``EpisodeMetricsCallback``), without in-training evaluations or checkpoints, and reports
wall time, steps/s, the share spent stepping envs, in the rest of the rollout (policy forward,
buffer) and in the PPO update, and the speed-up over the first variant. Variants run one after
another in this process (``--repeats`` interleaves them; the median is reported), so the ratios
compare like with like on a shared machine; the absolute figures depend on what else runs.

Built-in variants:

* ``dummy``: configs/ppo.yaml as is (DummyVecEnv of 4 Monitor-wrapped GridEnvs): the old path.
* ``native``: the same hyperparameters, envs in one in-process GridVectorEnv.
* ``subproc``: the same hyperparameters, envs in 2 worker processes.
* ``fast``: configs/ppo_fast.yaml (the recipe: 64 envs, hybrid backend, the same update as
  ppo.yaml; see that file for what changed).
* ``fast-b1024``: the fast recipe with 64 steps per env and minibatches of 1,024 (faster, but
  learned much slower per step: not the recipe).

This is a benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: name -> hyperparameter file and overrides (merged over the file's entry for the scenario).
VARIANTS: dict[str, dict] = {
    "dummy": {"hyperparams": "configs/ppo.yaml", "vec_backend": "dummy"},
    "native": {"hyperparams": "configs/ppo.yaml", "vec_backend": "native"},
    "subproc": {"hyperparams": "configs/ppo.yaml", "vec_backend": "subproc"},
    "fast": {"hyperparams": "configs/ppo_fast.yaml"},
    "fast-b1024": {"hyperparams": "configs/ppo_fast.yaml", "n_steps": 64, "batch_size": 1024},
    "fast-u2": {"hyperparams": "configs/ppo_fast.yaml", "update_threads": 2},
}

#: Variant keys that are not hyperparameters.
_RUN_KEYS = {"hyperparams", "torch_threads", "update_threads"}


@dataclass
class Args:
    scenario: str = "metro"
    """scenario name or env id"""
    steps: int = 100_000
    """env steps (decisions) per variant"""
    variants: str = "dummy,native,fast,fast-b1024"
    """comma-separated built-in variants (dummy, native, subproc, fast, fast-b1024) and names of --extra"""
    extra: Optional[str] = None
    """JSON: more variants, name -> {"hyperparams": file, hyperparameter overrides..., "torch_threads": n}"""
    repeats: int = 1
    """run the variant list this many times, interleaved; the median is reported"""
    seed: int = 0
    """seed of the model and the envs"""
    torch_threads: int = 1
    """torch threads (a variant may override it)"""
    json: Optional[str] = None
    """also write the results to this JSON file ('-' for stdout)"""
    quiet: bool = False
    """print only the table"""


def build_model(hp: dict, venv, seed: int):
    """MaskablePPO as train.py builds it from a merged hyperparameter entry (run keys removed)."""
    import torch
    from sb3_contrib import MaskablePPO

    from agents import training as T

    hp = dict(hp)
    policy_kwargs = {
        "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[hp.pop("activation_fn", "tanh")],
        "ortho_init": hp.pop("ortho_init", True),
    }
    net_arch = hp.pop("net_arch", [64, 64])
    site_hidden, critic_hidden = hp.pop("site_hidden", [64, 64]), hp.pop("critic_hidden", [128, 128])
    if hp.pop("policy", "mlp") == "site_scoring":
        from agents.site_policy import MaskableSiteScoringPolicy

        policy = MaskableSiteScoringPolicy
        policy_kwargs.update(site_hidden=site_hidden, critic_hidden=critic_hidden,
                             n_site_features=venv.get_attr("interface")[0].n_site_features)
    else:
        policy = "MlpPolicy"
        policy_kwargs["net_arch"] = net_arch
    for key in ("learning_rate", "clip_range"):
        if isinstance(hp.get(key), str):
            hp[key] = T.linear_schedule(float(hp[key][4:]))
    return MaskablePPO(policy, venv, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs, **hp)


def run_variant(name: str, spec: dict, scenario: str, steps: int, seed: int, torch_threads: int) -> dict:
    """Train one variant for `steps` steps; wall time and its split."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from agents import training as T

    ref = T.resolve_scenario(scenario)
    name_, env_id = ref.name, ref.env_id
    hp_path = Path(spec.get("hyperparams", "configs/ppo.yaml"))
    if not hp_path.is_absolute() and not hp_path.exists():
        hp_path = ROOT / hp_path
    hp = T.load_hyperparams(hp_path, name_)
    overrides = {k: v for k, v in spec.items() if k not in _RUN_KEYS}
    from pydantic import ValidationError

    from agents.schemas import HyperparamEntry, format_validation_error

    try:  # the same schema as the hyperparameter files
        overrides = HyperparamEntry.model_validate(overrides).as_dict()
    except ValidationError as err:
        raise T.HyperparamError(format_validation_error(err, f"variant {name}")) from None
    hp.update(overrides)
    threads = int(spec.get("torch_threads", torch_threads))
    torch.set_num_threads(threads)
    n_envs = hp.pop("n_envs", 4)
    backend = hp.pop("vec_backend", "dummy")
    workers = hp.pop("vec_workers", 2)
    env_config = hp.pop("env_config", None) or None
    normalize = hp.pop("normalize", {})
    for key in ("total_timesteps", "eval_episodes", "eval_seeds_start"):
        hp.pop(key, None)
    setting = {"vec_backend": backend, "n_envs": n_envs, "vec_workers": workers if backend == "subproc" else 0,
               "n_steps": hp.get("n_steps", 2048), "batch_size": hp.get("batch_size", 64),
               "n_epochs": hp.get("n_epochs", 10), "torch_threads": threads}

    venv = T.make_vec_env(env_id, n_envs, seed, hp.get("gamma", 0.99), normalize, env_config,
                          backend=backend, n_workers=workers)
    try:
        model = build_model(hp, venv, seed)
        # Time spent inside the base VecEnv (stepping the envs), patched on the instance.
        inner = venv.venv
        env_s = [0.0]
        orig_async, orig_wait = inner.step_async, inner.step_wait

        def step_async(actions):
            t = time.perf_counter()
            orig_async(actions)
            env_s[0] += time.perf_counter() - t

        def step_wait():
            t = time.perf_counter()
            out = orig_wait()
            env_s[0] += time.perf_counter() - t
            return out

        inner.step_async, inner.step_wait = step_async, step_wait

        class Split(BaseCallback):
            def __init__(self):
                super().__init__()
                self.rollout_s, self._t = 0.0, 0.0

            def _on_rollout_start(self):
                self._t = time.perf_counter()

            def _on_rollout_end(self):
                self.rollout_s += time.perf_counter() - self._t

            def _on_step(self):
                return True

        split = Split()
        t0 = time.perf_counter()
        callbacks = [split, T.EpisodeMetricsCallback()]
        if spec.get("update_threads"):
            callbacks.insert(0, T.UpdateThreadsCallback(int(spec["update_threads"]), threads))
        model.learn(total_timesteps=steps, callback=CallbackList(callbacks))
        wall = time.perf_counter() - t0
        done = int(model.num_timesteps)
    finally:
        venv.close()
    return {
        "variant": name, **setting, "steps": done, "wall_s": wall, "steps_per_s": done / wall,
        "env_s": env_s[0], "policy_s": split.rollout_s - env_s[0], "update_s": wall - split.rollout_s,
    }


def format_table(rows: list[dict]) -> str:
    base = rows[0]["steps_per_s"] if rows else float("nan")
    head = ("variant", "backend", "envs", "n_steps", "batch", "epochs", "thr", "steps/s", "x first",
            "env %", "policy %", "update %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["variant"], r["vec_backend"] + (f"x{r['vec_workers']}" if r["vec_workers"] else ""),
            str(r["n_envs"]), str(r["n_steps"]), str(r["batch_size"]), str(r["n_epochs"]),
            str(r["torch_threads"]), f"{r['steps_per_s']:.0f}", f"{r['steps_per_s'] / base:.2f}",
            f"{100 * r['env_s'] / r['wall_s']:.0f}", f"{100 * r['policy_s'] / r['wall_s']:.0f}",
            f"{100 * r['update_s'] / r['wall_s']:.0f}",
        ]) + " |")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> list[dict]:
    import tyro

    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    variants = dict(VARIANTS)
    if args.extra:
        try:
            extra = json.loads(args.extra)
        except json.JSONDecodeError as err:
            raise SystemExit(f"bench_training: --extra is not valid JSON: {err}")
        if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
            raise SystemExit("bench_training: --extra must map variant names to objects")
        variants.update(extra)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if args.extra:
        names += [n for n in json.loads(args.extra) if n not in names]
    unknown = [n for n in names if n not in variants]
    if unknown or not names:
        raise SystemExit(f"bench_training: unknown variant(s) {unknown}; known: {', '.join(variants)}")
    import os

    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for n in names:
            r = run_variant(n, variants[n], args.scenario, args.steps, args.seed, args.torch_threads)
            runs[n].append(r)
            if not args.quiet:
                print(f"[{rep + 1}/{args.repeats}] {n}: {r['steps_per_s']:.0f} steps/s "
                      f"({r['steps']} steps in {r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    rows = []
    for n in names:
        rs = runs[n]
        med = statistics.median(r["steps_per_s"] for r in rs)
        best = min(rs, key=lambda r: abs(r["steps_per_s"] - med))
        rows.append({**best, "steps_per_s": med, "all_steps_per_s": [r["steps_per_s"] for r in rs]})
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"End-to-end MaskablePPO training on {args.scenario}, {args.steps} steps per variant, "
          f"{os.cpu_count()} CPUs, load average at the end {load[0]:.1f}:")
    print(format_table(rows))
    out = {"scenario": args.scenario, "steps": args.steps, "repeats": args.repeats, "cpus": os.cpu_count(),
           "load_average_end": load, "rows": rows,
           "speedup_vs_first": {r["variant"]: r["steps_per_s"] / rows[0]["steps_per_s"] for r in rows}}
    if args.json == "-":
        print(json.dumps(out, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return rows


if __name__ == "__main__":
    main()
