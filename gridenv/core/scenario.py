"""Scenario schema: one YAML file per scenario in ``configs/scenarios/``, validated by pydantic.

A bad scenario fails with one :class:`ScenarioError` that names the file and the field at fault
(``sites.2.gpu: unknown GPU 'B200'; known: ['A100', 'H100', 'L4']``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.interface import MODES, SLO_CLASSES

__all__ = [
    "Scenario", "ScenarioError", "load_scenario", "scenario_dir", "scenario_names",
    "SLO_CLASSES", "DEFAULT_SLOS", "deep_merge",
]

#: DistServe artifact SLOs (physics.md section 6): (TTFT s, TPOT s).
DEFAULT_SLOS: dict[str, tuple[float, float]] = {
    "chat": (0.25, 0.10),
    "code": (0.125, 0.20),
    "summarization": (15.0, 0.15),
}

#: A value per local hour (24 numbers) or one constant.
HourlySeries = Union[float, list[float]]


class ScenarioError(ValueError):
    """A scenario file or override that does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _in_catalog(name: str, catalog: dict, what: str) -> str:
    """`name` if it is a key of `catalog`, else a ValueError listing the known names."""
    if name not in catalog:
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(catalog)}")
    return name


def _check_series(v: HourlySeries, name: str, lo: float = 0.0) -> HourlySeries:
    vals = v if isinstance(v, list) else [v]
    if isinstance(v, list) and len(v) != 24:
        raise ValueError(f"{name} needs one value or 24 hourly values, got {len(v)}")
    if any(x < lo for x in vals):
        raise ValueError(f"{name} must be >= {lo}")
    return v


class Region(_Strict):
    name: str
    population: float = Field(gt=0, description="relative share of the demand (weight)")
    utc_offset_h: float = Field(0.0, ge=-12, le=14, description="time zone, hours from UTC")


class Site(_Strict):
    name: str
    region: str
    kind: Literal["edge", "core"]
    gpu: str
    tp: int = Field(1, ge=1, le=16, description="GPUs per replica (tensor parallel)")
    replicas: int = Field(ge=1, description="serving engines at the site")
    model: str
    weight_dtype: Literal["bf16", "fp8"] = "bf16"
    gpu_usd_per_h: float = Field(gt=0, description="$ per GPU-hour")
    pue: float = Field(1.2, ge=1.0, le=3.0)
    server_overhead: float = Field(0.4, ge=0.0, le=2.0, description="non-GPU server power / GPU power")
    energy_price_usd_per_kwh: HourlySeries = 0.15
    carbon_g_per_kwh: HourlySeries = 400.0
    max_queue: int = Field(64, ge=1, description="waiting requests per replica before the site is full")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        return _in_catalog(v, GPUS, "GPU")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return _in_catalog(v, MODELS, "model")

    @field_validator("energy_price_usd_per_kwh", "carbon_g_per_kwh")
    @classmethod
    def _series(cls, v: HourlySeries, info) -> HourlySeries:
        return _check_series(v, info.field_name)


class Network(_Strict):
    """Users-to-site network: one RTT per (region, site), used exactly as given.

    Physics notes: about 1 ms of RTT per 100 km of fibre; user to metro edge 5-15 ms, to a
    regional core 20-60 ms, cross-continent 70-150 ms, trans-Pacific 150-250 ms (reference
    physics.md section 5). A request reaches its site half an RTT after the routing decision and
    its tokens reach the user half an RTT after they are produced. There is deliberately no
    bandwidth term: uploading a prompt is ~4 bytes per token of UTF-8 text (about 4 characters
    per token for Llama-3's and GPT-4's BPE tokenizers), so even a 32k-token prompt is ~128 KB,
    0.1 ms over a 10 Gb/s backbone path and 10 ms only over a 100 Mb/s access link, which is the
    same whichever site the router picks. Bandwidth starts to matter when KV state moves between
    sites (kappa * context bytes: 2k tokens of Llama-3-8B = 0.27 GB); add it with that feature.
    """

    rtt_ms: dict[str, list[float]] = Field(
        description="round-trip time from each region's users to each site, in `sites` order"
    )
    api_overhead_ms: float = Field(15.0, ge=0, description="fixed API overhead added to TTFT")


class LengthDist(_Strict):
    """Log-normal token count, clipped to [min, max]."""

    median: float = Field(gt=0)
    sigma: float = Field(0.8, ge=0)
    min: int = Field(1, ge=1)
    max: int = Field(8192, ge=1)

    @model_validator(mode="after")
    def _order(self) -> "LengthDist":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max})")
        return self


class SLOClass(_Strict):
    share: float = Field(ge=0)
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    ttft_slo_s: float | None = Field(None, gt=0, description="default: DistServe's")
    tpot_slo_s: float | None = Field(None, gt=0, description="default: DistServe's")


class Diurnal(_Strict):
    amplitude: float = Field(0.0, ge=0, lt=1, description="rate swings by +-amplitude over a day")
    peak_hour: float = Field(14.0, ge=0, lt=24, description="local hour of peak demand")
    period_s: float = Field(86400.0, gt=0, description="length of a 'day' (compress it for short episodes)")
    start_hour_utc: float = Field(0.0, ge=0, lt=24, description="UTC hour at simulated t = 0")


class TraceReplay(_Strict):
    path: str = Field(description="trace file; relative paths are relative to the scenario file")
    format: Literal["azure", "mooncake"] | None = None
    rate_scale: float = Field(1.0, gt=0, description="arrival rate multiplier (timestamps / scale)")
    loop: bool = Field(False, description="restart the trace when it ends before the horizon")
    slo_class: str | None = Field(None, description="class of every request; default: drawn by share")


class Workload(_Strict):
    arrivals: Literal["poisson", "gamma", "mmpp", "trace"] = "poisson"
    rate_rps: float = Field(10.0, gt=0, description="mean total arrival rate, requests/s")
    cv: float = Field(1.0, gt=0, description="inter-arrival coefficient of variation (gamma)")
    mmpp_rate_factors: list[float] = Field(
        default_factory=lambda: [0.5, 3.0],
        description="MMPP: rate of each hidden state, as multiples of rate_rps",
    )
    mmpp_mean_sojourn_s: float = Field(30.0, gt=0)
    diurnal: Diurnal = Diurnal()
    classes: dict[str, SLOClass]
    models: dict[str, float] = Field(description="share of requests needing each model")
    residency_share: float = Field(0.0, ge=0, le=1, description="share that must stay in region")
    trace: TraceReplay | None = None

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: dict[str, SLOClass]) -> dict[str, SLOClass]:
        for name in v:
            if name not in SLO_CLASSES:
                raise ValueError(f"unknown SLO class {name!r}; known: {list(SLO_CLASSES)}")
        if sum(c.share for c in v.values()) <= 0:
            raise ValueError("class shares must not all be zero")
        return v

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            _in_catalog(name, MODELS, "model")
            if share < 0:
                raise ValueError(f"share of {name!r} must be >= 0")
        if sum(v.values()) <= 0:
            raise ValueError("model shares must not all be zero")
        return v

    @model_validator(mode="after")
    def _trace_given(self) -> "Workload":
        if self.arrivals == "trace" and self.trace is None:
            raise ValueError("arrivals: 'trace' needs a 'trace' section")
        return self


class Outage(_Strict):
    site: str
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class RandomFaults(_Strict):
    mtbf_s: float = Field(gt=0, description="mean time between failures per site")
    mttr_s: float = Field(gt=0, description="mean time to repair")
    sites: list[str] | None = Field(None, description="sites that can fail; default all")


class DegradedLink(_Strict):
    region: str
    site: str
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    rtt_factor: float = Field(
        gt=1.0,
        description="RTT multiplier while degraded; overlapping windows on a link multiply",
    )


class Faults(_Strict):
    outages: list[Outage] = []
    random: RandomFaults | None = None
    degraded_links: list[DegradedLink] = []
    max_retries: int = Field(1, ge=0, description="times a request hit by an outage is re-routed")


class Economics(_Strict):
    input_value_usd_per_mtok: float = Field(0.5, ge=0, description="value of a goodput prompt token")
    output_value_usd_per_mtok: float = Field(2.0, ge=0, description="value of a goodput output token")


class Actions(_Strict):
    batch_levels: list[int] = Field(default_factory=lambda: [8, 32, 128])
    max_sites: int | None = Field(None, ge=1, description="site slots (padding); default: #sites")
    invalid_action: Literal["shed", "raise"] = "shed"
    initial_batch_level: int = Field(1, ge=0)

    @field_validator("batch_levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v) or sorted(set(v)) != v:
            raise ValueError("batch_levels must be a non-empty increasing list of positive ints")
        return v


class Observation(_Strict):
    mode: Literal[MODES] = Field("slots", description="observation layout (gridenv.core.interface): "
                                 "slots (fixed site slots, region/model one-hots) or relative "
                                 "(topology-agnostic per-site features)")


class Scenario(_Strict):
    name: str
    description: str = ""
    horizon_s: float = Field(gt=0, description="simulated seconds per episode")
    software_stack: str = "vllm-2024"
    max_prefill_tokens: int = Field(8192, ge=1, description="prompt tokens per prefill iteration")
    regions: list[Region] = Field(min_length=1)
    sites: list[Site] = Field(min_length=1)
    network: Network
    workload: Workload
    faults: Faults = Faults()
    economics: Economics = Economics()
    actions: Actions = Actions()
    observation: Observation = Observation()
    source: str | None = Field(None, description="file it was loaded from (set by the loader)")

    @model_validator(mode="after")
    def _cross_check(self) -> "Scenario":
        regions = [r.name for r in self.regions]
        sites = [s.name for s in self.sites]
        _unique(regions, "regions")
        _unique(sites, "sites")
        for i, s in enumerate(self.sites):
            if s.region not in regions:
                raise ValueError(f"sites.{i}.region: unknown region {s.region!r}; known: {regions}")
        for key, matrix in (("rtt_ms", self.network.rtt_ms),):
            if set(matrix) != set(regions):
                raise ValueError(
                    f"network.{key}: rows {sorted(matrix)} do not match regions {sorted(regions)}"
                )
            for r, row in matrix.items():
                if len(row) != len(sites):
                    raise ValueError(
                        f"network.{key}.{r}: {len(row)} values for {len(sites)} sites {sites}"
                    )
                if any(x < 0 for x in row):
                    raise ValueError(f"network.{key}.{r}: values must be >= 0")
        for i, o in enumerate(self.faults.outages):
            if o.site not in sites:
                raise ValueError(f"faults.outages.{i}.site: unknown site {o.site!r}; known: {sites}")
        for i, d in enumerate(self.faults.degraded_links):
            if d.site not in sites or d.region not in regions:
                raise ValueError(f"faults.degraded_links.{i}: unknown site or region")
        if self.faults.random and self.faults.random.sites:
            for s in self.faults.random.sites:
                if s not in sites:
                    raise ValueError(f"faults.random.sites: unknown site {s!r}; known: {sites}")
        if self.actions.max_sites is not None and self.actions.max_sites < len(sites):
            raise ValueError(f"actions.max_sites ({self.actions.max_sites}) < number of sites ({len(sites)})")
        if self.actions.initial_batch_level >= len(self.actions.batch_levels):
            raise ValueError("actions.initial_batch_level is not an index of batch_levels")
        served = {s.model for s in self.sites}
        for m, share in self.workload.models.items():
            if share > 0 and m not in served:
                raise ValueError(f"workload.models: no site serves {m!r} (sites serve {sorted(served)})")
        if self.workload.trace and self.workload.trace.slo_class not in (None, *self.workload.classes):
            raise ValueError(f"workload.trace.slo_class: {self.workload.trace.slo_class!r} is not a class of this workload")
        return self

    @field_validator("software_stack")
    @classmethod
    def _known_stack(cls, v: str) -> str:
        from gridenv.core.perf import SOFTWARE_STACKS

        return _in_catalog(v, SOFTWARE_STACKS, "software_stack")

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    @property
    def max_sites(self) -> int:
        return self.actions.max_sites or len(self.sites)

    def slo_of(self, cls: str) -> tuple[float, float]:
        c = self.workload.classes[cls]
        d_ttft, d_tpot = DEFAULT_SLOS[cls]
        return (c.ttft_slo_s or d_ttft, c.tpot_slo_s or d_tpot)


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what}: duplicate name {n!r}")
        seen.add(n)


def scenario_dir() -> Path:
    """``configs/scenarios`` of the checkout (or ``$GRIDENV_SCENARIO_DIR``)."""
    env = os.environ.get("GRIDENV_SCENARIO_DIR")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "configs" / "scenarios"
    if not d.is_dir():
        raise ScenarioError(
            f"scenario folder {d} not found; install gridenv from a checkout (pip install -e .) "
            "or set GRIDENV_SCENARIO_DIR"
        )
    return d


def scenario_names() -> list[str]:
    return sorted(p.stem for p in scenario_dir().glob("*.yaml"))


def deep_merge(base: dict, override: dict) -> dict:
    """`override` merged into a copy of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return f"{where}: " + "; ".join(lines)


def load_scenario(name_or_path: str | os.PathLike | dict, overrides: dict | None = None) -> Scenario:
    """Load a scenario by name (``metro``), path, or dict, deep-merging ``overrides`` on top."""
    if isinstance(name_or_path, dict):
        raw, where, base = dict(name_or_path), "scenario dict", Path.cwd()
    else:
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            path = scenario_dir() / f"{name_or_path}.yaml"
            if not path.exists():
                raise ScenarioError(f"unknown scenario {str(name_or_path)!r}; known: {scenario_names()}")
        if not path.exists():
            raise ScenarioError(f"scenario file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ScenarioError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ScenarioError(f"{path}: top level must be a mapping")
        where, base = str(path), path.parent
        raw.setdefault("source", str(path))
    if overrides:
        raw = deep_merge(raw, overrides)
    trace = (raw.get("workload") or {}).get("trace")
    if isinstance(trace, dict) and isinstance(trace.get("path"), str):
        p = Path(trace["path"])
        if not p.is_absolute():
            raw["workload"]["trace"] = {**trace, "path": str((base / p).resolve())}
    try:
        return Scenario.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(_format_error(e, where)) from None
