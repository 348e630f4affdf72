"""Randomized grids and workloads: a seeded generator of scenarios, for training and held-out tests.

``random_scenario(seed)`` returns a scenario *dict* (the same shape as a YAML file in
``configs/scenarios/``, validated by :func:`gridenv.core.scenario.load_scenario`), drawn from
:class:`RandomGridSpec`:

========================= ===================================================================
what                      range (defaults)
========================= ===================================================================
regions                   1-6, each with a time zone; users placed on a plane whose size sets
                          the RTT structure (metro, national, continental, intercontinental)
sites                     1-12, edge (near a region's users, small, L4 / A100 / H100 TP1) or
                          core (fewer, larger: H100 / A100, TP 1-8, several replicas)
models                    Llama-3-8B everywhere; with some probability Llama-3-70B at a few
                          core sites, with its own share of the requests
prices                    $/GPU-h per GPU type +-30%, PUE (edge 1.3-1.8, core 1.08-1.3),
                          hourly energy prices (base 0.04-0.30 $/kWh with a day shape),
                          carbon 50-700 g/kWh
RTT                       region -> site: access latency (edge 2-10 ms, core 8-30 ms) plus
                          distance x the structure's ms per unit; same-region edges are closest
load                      offered load 0.3-1.4 x the grid's estimated capacity (from the
                          roofline model of ``gridenv.core.perf``, at batch 32)
arrivals                  Poisson, Gamma (CV 2-6), MMPP, or trace replay with rate scaling
                          (when ``trace_paths`` are given)
classes                   chat / code / summarization shares (Dirichlet), length medians and
                          SLOs varied around the DistServe defaults
faults                    with some probability random site failures or a scheduled outage
prefix sharing            ``p_sharing`` (default 0: none) of the grids: each class shares
                          prompt prefixes with probability 0.7 (chat and code: conversations,
                          agent sessions over shared contexts or system prompts; summarization:
                          RAG documents), drawn from a second stream on top of the same grid
========================= ===================================================================

Every draw comes from ``np.random.default_rng(seed)``: the same seed gives the same grid, bit
for bit. Generator seeds for held-out evaluation are listed in ``configs/`` and never used in
training (training draws its grid seeds from the environment's own ``np_random``).
"""

from __future__ import annotations

import math
from dataclasses import field

import numpy as np
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.perf import ReplicaPerf, software_stack

__all__ = ["RandomGridSpec", "random_scenario", "estimated_capacity_rps", "RTT_STRUCTURES"]

#: RTT structures: (plane size in units, ms per unit of distance between users and a site).
RTT_STRUCTURES: dict[str, tuple[float, float]] = {
    "metro": (1.0, 6.0),  # one city: cross-town 5-10 ms
    "national": (1.0, 40.0),  # 10-50 ms between regions
    "continental": (1.0, 90.0),  # 30-120 ms
    "intercontinental": (1.0, 220.0),  # 80-300 ms
}

#: $/GPU-hour around which site prices are drawn (+-30%), as in the registered scenarios.
GPU_USD_PER_H: dict[str, float] = {"H100": 3.0, "A100": 1.8, "L4": 0.5}

_BASE_SLOS = {"chat": (0.25, 0.10), "code": (0.125, 0.20), "summarization": (15.0, 0.15)}
_LENGTHS = {  # (prompt median range, output median range, sigma prompt, sigma output)
    "chat": ((200, 1200), (80, 300), 0.9, 0.8),
    "code": ((500, 3000), (12, 60), 0.8, 0.7),
    "summarization": ((1500, 4000), (100, 300), 0.6, 0.6),
}
# A day shape for energy prices: cheap at night, dear in the evening (x of the base price).
_PRICE_SHAPE = np.array([0.75, 0.7, 0.68, 0.68, 0.7, 0.78, 0.9, 1.05, 1.15, 1.15, 1.1, 1.08,
                         1.05, 1.05, 1.08, 1.15, 1.25, 1.35, 1.38, 1.3, 1.12, 0.98, 0.88, 0.8])


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class RandomGridSpec:
    """Ranges the generator draws from (inclusive).

    A pydantic dataclass in strict mode: a field of the wrong type (``"10"`` for a number,
    ``1.5`` for an int, ``True`` for a float, a string for a tuple) or an unknown field raises a
    ValueError naming it, and the checks below name the field and the value."""

    n_regions: tuple[int, int] = (1, 6)
    n_sites: tuple[int, int] = (1, 12)
    max_sites: int = 12  # site slots of the observation; n_sites never exceeds it
    load: tuple[float, float] = (0.3, 1.4)  # offered load / estimated capacity
    horizon_s: float = 120.0
    rtt_structures: tuple[str, ...] = tuple(RTT_STRUCTURES)
    arrivals: tuple[str, ...] = ("poisson", "gamma", "mmpp", "trace")
    trace_paths: tuple[str, ...] = ()  # Azure/Mooncake files for "trace" arrivals
    p_second_model: float = 0.3
    p_faults: float = 0.3
    p_residency: float = 0.3
    p_sharing: float = 0.0  # chance a grid's classes share prompt prefixes (see _sharing)
    batch_levels: tuple[int, ...] = (8, 32, 128)
    observation_mode: str | None = "relative"  # None: leave the scenario default
    extra: dict = field(default_factory=dict)  # deep-merged into every scenario (overrides), last

    @classmethod
    def from_dict(cls, d: dict) -> "RandomGridSpec":
        """From a mapping (JSON, ``--env-config``): lists become tuples, and any error is one line
        naming the field and the value."""
        from pydantic import ValidationError

        from gridenv.core.strict_yaml import format_validation_error

        if not isinstance(d, dict):
            raise ValueError(f"RandomGridSpec: expected a mapping of fields, got {d!r}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except ValidationError as err:
            raise ValueError(format_validation_error(err, "RandomGridSpec")) from None

    def __post_init__(self) -> None:
        lo, hi = self.n_regions
        if not 1 <= lo <= hi:
            raise ValueError(f"n_regions: need 1 <= lo <= hi, got {self.n_regions}")
        lo, hi = self.n_sites
        if not 1 <= lo <= hi <= self.max_sites:
            raise ValueError(f"n_sites: need 1 <= lo <= hi <= max_sites ({self.max_sites}), got {self.n_sites}")
        lo, hi = self.load
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"load: need 0 < lo <= hi < inf, got {self.load}")
        if not (self.horizon_s > 0 and math.isfinite(self.horizon_s)):
            raise ValueError(f"horizon_s must be positive and finite, got {self.horizon_s}")
        for s in self.rtt_structures:
            if s not in RTT_STRUCTURES:
                raise ValueError(f"rtt_structures: unknown {s!r}; known: {list(RTT_STRUCTURES)}")
        known = ("poisson", "gamma", "mmpp", "trace")
        for a in self.arrivals:
            if a not in known:
                raise ValueError(f"arrivals: unknown {a!r}; known: {list(known)}")
        for name in ("p_second_model", "p_faults", "p_residency", "p_sharing"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not self.arrivals or self.arrivals == ("trace",) and not self.trace_paths:
            raise ValueError("arrivals: 'trace' alone needs trace_paths")


# ---------------------------------------------------------------------------- site hardware
_EDGE_HW = (  # (gpu, tp, weight dtype) for Llama-3-8B at the edge
    ("L4", 1, "fp8"), ("L4", 1, "fp8"), ("A100", 1, "bf16"), ("H100", 1, "bf16"), ("H100", 1, "fp8"),
)
_CORE_HW_8B = (("H100", 1, "bf16"), ("H100", 2, "bf16"), ("A100", 1, "bf16"), ("A100", 2, "bf16"))
_CORE_HW_70B = (("H100", 4, "bf16"), ("H100", 2, "fp8"), ("A100", 4, "bf16"), ("A100", 2, "fp8"),
                ("H100", 8, "bf16"))


def _perf(gpu: str, model: str, tp: int, dtype: str, stack: str) -> ReplicaPerf:
    return ReplicaPerf(GPUS[gpu], MODELS[model], tp, dtype, **software_stack(stack))


def replica_capacity_rps(perf: ReplicaPerf, prompt_tokens: float, output_tokens: float,
                         batch: int = 32) -> float:
    """Requests/s one replica sustains at a steady batch (roofline estimate, not a guarantee).

    A request costs its prefill alone plus its output tokens at the decode speed of a batch of
    ``batch`` sequences with contexts of prompt + half the output. Batch is capped by KV."""
    ctx = prompt_tokens + 0.5 * output_tokens
    b = max(1, min(batch, int(perf.kv_capacity_tokens // max(ctx + output_tokens, 1.0))))
    t_dec = perf.iter_time(0.0, 0.0, b, b * ctx)[0]
    service_s = perf.prefill_time_s(prompt_tokens) + output_tokens * t_dec / b
    return 1.0 / service_s


def estimated_capacity_rps(scenario: dict) -> float:
    """Capacity of a scenario dict's grid for its class mix (sum over sites and replicas)."""
    w = scenario["workload"]
    shares = {c: v["share"] for c, v in w["classes"].items()}
    total = sum(shares.values())
    prompt = sum(s * w["classes"][c]["prompt_tokens"]["median"] for c, s in shares.items()) / total
    output = sum(s * w["classes"][c]["output_tokens"]["median"] for c, s in shares.items()) / total
    stack = scenario.get("software_stack", "vllm-2024")
    cap = 0.0
    for s in scenario["sites"]:
        p = _perf(s["gpu"], s["model"], s["tp"], s.get("weight_dtype", "bf16"), stack)
        cap += s["replicas"] * replica_capacity_rps(p, prompt, output)
    return cap


def _trace_rate_rps(path: str) -> float:
    """Mean arrival rate of a trace file (requests per second of its own clock)."""
    from gridenv.core.traces import load_trace

    tr = load_trace(path, None)
    span = float(tr.arrival_s[-1] - tr.arrival_s[0]) if len(tr) > 1 else 0.0
    if not span > 0.0:
        raise ValueError(f"trace {path}: needs at least two distinct timestamps to scale its rate")
    return (len(tr) - 1) / span


def _normalized(x: np.ndarray) -> list[float]:
    """Shares that sum to 1 (the last absorbs rounding)."""
    x = np.asarray(x, dtype=float) / float(np.sum(x))
    out = [round(float(v), 6) for v in x[:-1]]
    out.append(round(1.0 - sum(out), 6))
    return out


def random_scenario(seed: int, spec: RandomGridSpec | None = None) -> dict:
    """One random grid + workload as a scenario dict (deterministic in ``seed``)."""
    spec = spec or RandomGridSpec()
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x6E1D])
    structure = str(rng.choice(spec.rtt_structures))
    size, ms_per_unit = RTT_STRUCTURES[structure]

    # Regions: users at points on a plane; time zones follow the x coordinate beyond metro scale.
    n_reg = int(rng.integers(spec.n_regions[0], spec.n_regions[1] + 1))
    pos = rng.uniform(0.0, size, size=(n_reg, 2))
    if structure == "metro":
        tz = np.full(n_reg, float(rng.integers(-8, 10)))
    else:
        span = {"national": 3, "continental": 8, "intercontinental": 20}[structure]
        tz = np.round(-8 + (pos[:, 0] / size) * span) % 24
        tz = np.where(tz > 14, tz - 24, tz)
    region_names = [f"r{i}" for i in range(n_reg)]
    population = _normalized(rng.uniform(0.3, 1.5, n_reg))
    regions = [{"name": n, "population": p, "utc_offset_h": float(t)}
               for n, p, t in zip(region_names, population, tz)]

    # Sites: at least one per region up to n_sites; edges near their region's users.
    n_sites = int(rng.integers(max(spec.n_sites[0], 1), spec.n_sites[1] + 1))
    second_model = rng.random() < spec.p_second_model and n_sites >= 2
    sites, site_pos, access_ms = [], [], []
    for i in range(n_sites):
        r = i if i < n_reg else int(rng.integers(n_reg))
        kind = "edge" if rng.random() < 0.6 else "core"
        model = "llama-3-8b"
        if second_model and i == n_sites - 1:
            kind, model = "core", "llama-3-70b"
        if kind == "edge":
            gpu, tp, dtype = _EDGE_HW[int(rng.integers(len(_EDGE_HW)))]
            replicas = int(rng.integers(1, 4))
            pue = float(rng.uniform(1.3, 1.8))
            site_pos.append(pos[r] + rng.normal(0.0, 0.02 * size, 2))
            access_ms.append(float(rng.uniform(2.0, 10.0)))
        else:
            hw = _CORE_HW_70B if model == "llama-3-70b" else _CORE_HW_8B
            gpu, tp, dtype = hw[int(rng.integers(len(hw)))]
            replicas = int(rng.integers(1, 4))
            pue = float(rng.uniform(1.08, 1.3))
            site_pos.append(pos[r] + rng.normal(0.0, 0.15 * size, 2))
            access_ms.append(float(rng.uniform(8.0, 30.0)))
        base_price = float(rng.uniform(0.04, 0.30))
        shift = int(round(float(tz[r]))) % 24  # the day shape follows local time
        prices = [round(base_price * float(v), 4) for v in np.roll(_PRICE_SHAPE, shift)]
        sites.append({
            "name": f"{kind}-{i}", "region": region_names[r], "kind": kind, "gpu": gpu, "tp": tp,
            "replicas": replicas, "model": model, "weight_dtype": dtype,
            "gpu_usd_per_h": round(GPU_USD_PER_H[gpu] * float(rng.uniform(0.7, 1.3)), 3),
            "pue": round(pue, 3), "energy_price_usd_per_kwh": prices,
            "carbon_g_per_kwh": round(float(rng.uniform(50.0, 700.0)), 1),
        })
    site_pos = np.asarray(site_pos)
    rtt = {}
    for ri, name in enumerate(region_names):
        d = np.linalg.norm(site_pos - pos[ri], axis=1)
        rtt[name] = [round(a + ms_per_unit * float(x), 2) for a, x in zip(access_ms, d)]

    # Workload: class mix, lengths and SLOs around the defaults.
    classes = {}
    shares = _normalized(rng.dirichlet([2.0, 1.0, 1.0]))
    for (cname, (p_rng, o_rng, sp, so)), share in zip(_LENGTHS.items(), shares):
        ttft, tpot = _BASE_SLOS[cname]
        slo_scale = float(rng.uniform(0.8, 1.6))
        classes[cname] = {
            "share": share,
            "prompt_tokens": {"median": round(float(rng.uniform(*p_rng))), "sigma": sp, "max": 7168},
            "output_tokens": {"median": round(float(rng.uniform(*o_rng))), "sigma": so, "max": 1024},
            "ttft_slo_s": round(ttft * slo_scale + 0.002 * float(np.median(list(rtt.values())[0])), 4),
            "tpot_slo_s": round(tpot * float(rng.uniform(0.8, 1.5)), 4),
        }
    models = {"llama-3-8b": 1.0}
    if second_model:
        s70 = round(float(rng.uniform(0.05, 0.2)), 4)
        models = {"llama-3-8b": round(1.0 - s70, 4), "llama-3-70b": s70}
    # Residency only where every region has a site for every model it may need.
    served = {(s["region"], s["model"]) for s in sites}
    residency_ok = all((r, m) in served for r in region_names for m in models)
    residency = round(float(rng.uniform(0.05, 0.3)), 3) if residency_ok and rng.random() < spec.p_residency else 0.0

    scenario: dict = {
        "name": f"random-{seed}",
        "description": f"generated grid (seed {seed}): {n_reg} regions, {n_sites} sites, {structure} RTTs",
        "horizon_s": float(spec.horizon_s),
        "regions": regions,
        "sites": sites,
        "network": {"rtt_ms": rtt, "api_overhead_ms": 15.0},
        "workload": {
            "classes": classes, "models": models, "residency_share": residency,
            "diurnal": {"amplitude": round(float(rng.uniform(0.0, 0.6)), 3),
                        "peak_hour": 14.0, "period_s": float(spec.horizon_s),
                        "start_hour_utc": float(rng.integers(0, 24))},
        },
        "actions": {"batch_levels": list(spec.batch_levels), "max_sites": spec.max_sites},
    }
    if spec.observation_mode is not None:
        scenario["observation"] = {"mode": spec.observation_mode}

    load = float(rng.uniform(*spec.load))
    rate = max(0.2, load * estimated_capacity_rps(scenario))
    w = scenario["workload"]
    arrivals = [a for a in spec.arrivals if a != "trace" or spec.trace_paths]
    kind = str(rng.choice(arrivals))
    w["arrivals"] = kind
    w["rate_rps"] = round(rate, 4)
    if kind == "gamma":
        w["cv"] = round(float(rng.uniform(2.0, 6.0)), 3)
    elif kind == "mmpp":
        hi = float(rng.uniform(2.0, 4.0))
        w["mmpp_rate_factors"] = [round(float(rng.uniform(0.3, 0.7)), 3), round(hi, 3)]
        w["mmpp_mean_sojourn_s"] = round(float(rng.uniform(10.0, 60.0)), 2)
    elif kind == "trace":
        path = str(rng.choice(spec.trace_paths))
        trace_rps = _trace_rate_rps(path)
        w["trace"] = {"path": path, "loop": True, "rate_scale": round(rate / trace_rps, 6)}
        # A trace brings its own timing: the rate and diurnal shape would be ignored (an error).
        del w["rate_rps"], w["diurnal"]

    if rng.random() < spec.p_faults:
        names = [s["name"] for s in sites]
        if rng.random() < 0.5:
            scenario["faults"] = {"random": {"mtbf_s": round(float(rng.uniform(150, 600)), 1),
                                             "mttr_s": round(float(rng.uniform(10, 60)), 1)},
                                  "max_retries": 1}
        else:
            start = round(float(rng.uniform(0.1, 0.6)) * spec.horizon_s, 1)
            scenario["faults"] = {"outages": [{"site": str(rng.choice(names)), "start_s": start,
                                               "duration_s": round(0.2 * spec.horizon_s, 1)}],
                                  "max_retries": 1}
    if spec.p_sharing > 0.0:
        _sharing(scenario, np.random.default_rng([int(seed), 0x5A4E]), spec.p_sharing)
    if spec.extra:  # the user's overrides, validated with the rest by load_scenario
        from gridenv.core.scenario import deep_merge

        scenario = deep_merge(scenario, spec.extra)
    return scenario


def _sharing(scenario: dict, rng: np.random.Generator, p_sharing: float) -> None:
    """With probability `p_sharing`, give the workload's classes prefix sharing
    (:class:`gridenv.core.scenario.PrefixSharing`), drawn from their own stream so the rest of
    the grid is the one drawn without it. Each class shares with probability 0.7: chat as
    conversations (multi-turn, sometimes over shared contexts) or behind system prompts, code
    as agent sessions over shared repository contexts or behind system prompts, summarization
    over shared documents (RAG). Sizes stay well inside Llama-3-8B's 8k window, and the
    engine uses 64-token KV blocks as the registered cache scenarios do."""
    if rng.random() >= p_sharing:
        return
    scenario["engine"] = {"block_size_tokens": 64}
    for cname, cls in scenario["workload"]["classes"].items():
        if rng.random() >= 0.7:
            continue
        kind = {"chat": ("multi_turn", "system_prompt"), "code": ("multi_turn", "system_prompt"),
                "summarization": ("documents",)}[cname]
        kind = kind[int(rng.integers(len(kind)))]
        zipf = round(float(rng.uniform(0.0, 1.0)), 3)
        if kind == "multi_turn":
            prefix = {"kind": kind, "turns_mean": round(float(rng.uniform(2.0, 5.0)), 2),
                      "think_time_s": round(float(rng.uniform(3.0, 30.0)), 1)}
            if cname == "code" or rng.random() < 0.3:
                prefix |= {"context_tokens": int(rng.integers(1000, 3001)), "count": int(rng.integers(8, 81)),
                           "zipf_s": zipf}
            # a conversation's prompt grows by about (prompt + answer) per turn: keep it short
            cls["prompt_tokens"]["median"] = min(cls["prompt_tokens"]["median"], 400)
            cls["prompt_tokens"]["max"] = min(cls["prompt_tokens"]["max"], 1024)
            cls["output_tokens"]["max"] = min(cls["output_tokens"]["max"], 512)
        elif kind == "system_prompt":
            prefix = {"kind": kind, "count": int(rng.integers(2, 17)), "tokens": int(rng.integers(500, 2001)),
                      "zipf_s": zipf}
            cls["prompt_tokens"]["max"] = min(cls["prompt_tokens"]["max"], 4096)
        else:
            prefix = {"kind": kind, "count": int(rng.integers(20, 601)), "tokens": int(rng.integers(1000, 3001)),
                      "zipf_s": round(float(rng.uniform(0.5, 1.0)), 3)}
            cls["prompt_tokens"]["median"] = min(cls["prompt_tokens"]["median"], 500)  # the question
            cls["prompt_tokens"]["max"] = min(cls["prompt_tokens"]["max"], 2048)
        cls["prefix"] = prefix


def write_scenarios(seeds: list[int], out_dir, spec: RandomGridSpec | None = None,
                    prefix: str = "heldout") -> list:
    """Write ``random_scenario(seed)`` for each seed as ``<out_dir>/<prefix>-<seed>.yaml``."""
    from pathlib import Path

    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        sc = random_scenario(seed, spec)
        sc["name"] = f"{prefix}-{seed}"
        p = out / f"{prefix}-{seed}.yaml"
        flag = "" if prefix == "heldout" else f" --prefix {prefix}"
        header = (f"# Generated by: python -m gridenv.core.random_grid --seeds {seed} --out {out}{flag}\n"
                  f"# (gridenv.core.random_grid.random_scenario({seed}); do not edit by hand)\n")
        p.write_text(header + yaml.safe_dump(sc, sort_keys=False, width=120))
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gridenv.core.random_grid",
                                 description="Write generated grids as scenario YAML files.")
    ap.add_argument("--seeds", required=True, help="comma-separated non-negative generator seeds")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--no-trace", action="store_true", help="never draw trace-replay arrivals")
    ap.add_argument("--prefix", default="heldout",
                    help="file and scenario name prefix: <prefix>-<seed>.yaml (default: heldout)")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds: expected comma-separated integers, got {a.seeds!r}")
    if not seeds or any(s < 0 for s in seeds):
        ap.error(f"--seeds: expected non-negative integers, got {a.seeds!r}")
    for p in write_scenarios(seeds, a.out, RandomGridSpec(arrivals=("poisson", "gamma", "mmpp")), a.prefix):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
