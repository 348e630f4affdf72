"""Scenario schema: one YAML file per scenario in ``configs/scenarios/``, validated by pydantic.

A bad scenario fails with one :class:`ScenarioError` that names the source, the field at fault,
the value and where it came from (``metro.yaml: sites.2.gpu: unknown GPU 'B200'; known: [...],
got 'B200' (line 19)``, or ``(override)`` for a key given in ``overrides`` / ``config={...}``).

Validation rules, applied to files, dicts and overrides alike:

* **Strict YAML** (:mod:`gridenv.core.strict_yaml`): a key given twice in one mapping is an
  error naming both lines (plain PyYAML keeps the last one silently).
* **Strict types**: booleans are not numbers (``rate_rps: true`` is an error), strings are not
  numbers, a fractional number is not an integer.
* **Finite numbers only**: ``nan``, ``inf``, ``.inf`` are rejected in every field.
* **Shares sum to 1**: the SLO class ``share`` values and the ``workload.models`` shares must
  each sum to 1 within 1e-6; nothing is rescaled. Region ``population`` is the one field that
  is a *weight*: origins are drawn in proportion to it, any positive values.
* **No ignored settings**: a setting the chosen options would not read is an error: ``trace``
  without ``arrivals: trace``; ``cv`` without ``gamma``; ``mmpp_*`` without ``mmpp``;
  ``rate_rps`` or ``diurnal.amplitude``/``peak_hour`` with ``arrivals: trace`` (the trace sets
  the rate); a value equal to the default does not count (so ``model_dump()`` round-trips). An override that switches
  ``workload.arrivals`` drops the base file's settings of the old arrival process (so
  ``config={"workload": {"arrivals": "trace", "trace": {...}}}`` works on any scenario), while
  anything the override itself gives is checked.
* **Relative paths** (``workload.trace.path``) resolve against the current working directory;
  when no file is there and the scenario was loaded from a YAML file, against that file's
  folder (so a scenario file and the trace beside it work from any directory). The file must
  exist.
* **Bounded episodes**: the expected number of requests per episode
  (``rate_rps * (1 + amplitude) * horizon_s``) must not exceed :data:`MAX_REQUESTS_PER_EPISODE`.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.interface import MODES, SLO_CLASSES
from gridenv.core.strict_yaml import StrictYAMLError, line_of, load_yaml, read_text
from gridenv.core.traces import MOONCAKE_BLOCK_TOKENS, suffix_format

__all__ = [
    "Scenario", "ScenarioError", "load_scenario", "scenario_dir", "scenario_file", "scenario_names",
    "SLO_CLASSES", "DEFAULT_SLOS", "DEFAULT_TIMEOUTS_S", "deep_merge", "MAX_REQUESTS_PER_EPISODE",
    "SHARE_TOLERANCE",
]

#: DistServe artifact SLOs (physics.md section 6): (TTFT s, TPOT s).
DEFAULT_SLOS: dict[str, tuple[float, float]] = {
    "chat": (0.25, 0.10),
    "code": (0.125, 0.20),
    "summarization": (15.0, 0.15),
}

#: A value per local hour (24 numbers) or one constant.
HourlySeries = Union[float, list[float]]


#: Expected requests per episode above which a scenario is refused (memory: ~100 B per request).
MAX_REQUESTS_PER_EPISODE = 10_000_000

#: |sum of shares - 1| allowed for SLO class shares and model shares.
SHARE_TOLERANCE = 1e-6

#: Workload keys and the arrival processes that read them.
_SYNTHETIC = ("poisson", "gamma", "mmpp")
_ARRIVAL_KEYS: dict[str, tuple[str, ...]] = {
    "rate_rps": _SYNTHETIC,
    "cv": ("gamma",),
    "mmpp_rate_factors": ("mmpp",),
    "mmpp_mean_sojourn_s": ("mmpp",),
    "trace": ("trace",),
}
#: Diurnal keys read only by the synthetic processes (trace replay keeps the trace's timing).
_DIURNAL_SYNTHETIC_KEYS = ("amplitude", "peak_hour")


class ScenarioError(ValueError):
    """A scenario file or override that does not validate."""


class _FieldError(ValueError):
    """A validator's error about a sub-field: `path` (relative to the validated model) and value."""

    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)


class _Strict(BaseModel):
    # strict: no bool -> number, no str -> number, no 2.5 -> int; allow_inf_nan: finite floats only.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: Largest token count a scenario may give (a prompt, a shared prefix, a length bound): 16.7M,
#: far beyond any model's context window (those are masked by the catalog's limits); larger
#: values overflowed int64 sums. MAX_SHARED_GROUPS bounds a sharing's popularity table.
MAX_TOKENS = 1 << 24
MAX_SHARED_GROUPS = 1_000_000
#: Replicas (serving engines) a site may have: the simulator holds each one, so 2**63 of them
#: hung the env's construction (found by setting each value of three scenarios to 2**63).
MAX_REPLICAS_PER_SITE = 4096
#: Site slots (``actions.max_sites``) a scenario may ask for: the observation holds 15-19
#: floats per slot, so 10**9 slots failed with numpy's MemoryError (56 GiB) and 2**62 with
#: "Maximum allowed dimension exceeded" when the env was built.
MAX_SITE_SLOTS = 4096


def in_catalog(name: str, catalog: dict, what: str) -> str:
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
    population: float = Field(
        gt=0, le=1e12,
        description="relative weight of the demand (any positive numbers; origins are drawn in proportion)",
    )
    utc_offset_h: float = Field(0.0, ge=-12, le=14, description="time zone, hours from UTC")


class Site(_Strict):
    name: str
    region: str
    kind: Literal["edge", "core"]
    gpu: str
    tp: int = Field(1, ge=1, le=16, description="GPUs per replica (tensor parallel)")
    replicas: int = Field(ge=1, le=MAX_REPLICAS_PER_SITE, description="serving engines at the site")
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
        return in_catalog(v, GPUS, "GPU")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return in_catalog(v, MODELS, "model")

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
    sigma: float = Field(0.8, ge=0, le=10, description="log-space spread (at most 10, a factor e^10 per standard deviation: beyond that the draws overflow to the clip)")
    min: int = Field(1, ge=1, le=MAX_TOKENS)
    max: int = Field(8192, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _order(self) -> "LengthDist":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max})")
        return self

    def sample(self, rng, n: int):
        """`n` token counts (int64) drawn from `rng` (a numpy Generator)."""
        import numpy as np

        x = np.exp(np.log(self.median) + self.sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), self.min, self.max).astype(np.int64)


class PrefixSharing(_Strict):
    """How the requests of a class share prompt prefixes (what a prefix cache can reuse).

    ``system_prompt``: each request belongs to one of ``count`` applications and its prompt is
    the application's ``tokens``-token system prompt followed by its own text (the class's
    ``prompt_tokens``). ``documents``: the prompt is one of ``count`` documents of ``tokens``
    tokens (RAG), then the question. ``multi_turn``: conversations of ``turns_mean`` turns on
    average (geometric); turn k's prompt is turn k-1's prompt, its answer and new user text (the
    class's ``prompt_tokens``), and arrives an exponential think time (mean ``think_time_s``)
    after turn k-1 arrived (arrivals are drawn up front: they do not depend on the policy).
    With ``context_tokens`` > 0 every conversation starts with one of ``count`` shared contexts
    of that many tokens (a coding agent's repository context, a long system prompt), drawn
    per conversation. ``zipf_s`` skews the popularity of applications, documents or contexts
    (0: uniform).
    """

    kind: Literal["system_prompt", "documents", "multi_turn"]
    count: int = Field(8, ge=1, le=MAX_SHARED_GROUPS,
                       description="applications (system_prompt), documents, or shared contexts (multi_turn)")
    tokens: int = Field(1024, ge=1, le=MAX_TOKENS, description="shared prefix length, tokens")
    zipf_s: float = Field(0.0, ge=0, le=10, description="popularity skew of applications/documents/contexts (at most 10: beyond, all but the first have weight 0)")
    turns_mean: float = Field(4.0, ge=1, description="multi_turn: mean turns per conversation")
    think_time_s: float = Field(30.0, gt=0, description="multi_turn: mean time between turns")
    context_tokens: int = Field(
        0, ge=0, le=MAX_TOKENS, description="multi_turn: shared context heading every conversation, tokens (0: none)")

    @model_validator(mode="after")
    def _context_only_multi_turn(self) -> "PrefixSharing":
        if self.context_tokens and self.kind != "multi_turn":
            raise _FieldError(("context_tokens",), f"context_tokens ({self.context_tokens}) is read by "
                              f"kind 'multi_turn' only, not {self.kind!r}; use tokens for a shared prefix")
        return self


#: Client timeouts per class (s): the first token must arrive within the first figure (a
#: client's read timeout on a stream that has not started), the whole response within the second
#: (the OpenAI Python client's default request timeout is 600 s).
DEFAULT_TIMEOUTS_S: dict[str, tuple[float, float]] = {
    "chat": (30.0, 600.0),
    "code": (30.0, 600.0),
    "summarization": (120.0, 600.0),
}


class SLOClass(_Strict):
    share: float = Field(ge=0, le=1, description="share of requests; the shares of all classes sum to 1")
    prompt_tokens: LengthDist
    output_tokens: LengthDist
    ttft_slo_s: float | None = Field(None, gt=0, description="default: DistServe's")
    tpot_slo_s: float | None = Field(None, gt=0, description="default: DistServe's")
    timeout_s: float | None = Field(None, gt=0, description="client gives up without a first token; default DEFAULT_TIMEOUTS_S")
    e2e_timeout_s: float | None = Field(None, gt=0, description="client gives up on an unfinished response; default 600 s")
    prefix: PrefixSharing | None = Field(None, description="shared prompt prefixes (prefix caching)")


class Diurnal(_Strict):
    amplitude: float = Field(0.0, ge=0, lt=1, description="rate swings by +-amplitude over a day")
    peak_hour: float = Field(14.0, ge=0, lt=24, description="local hour of peak demand")
    period_s: float = Field(86400.0, gt=0, description="length of a 'day' (compress it for short episodes)")
    start_hour_utc: float = Field(0.0, ge=0, lt=24, description="UTC hour at simulated t = 0")


#: Validation-context key of the folder of the scenario file being loaded (relative trace paths).
SCENARIO_FOLDER_KEY = "scenario_folder"


class TraceReplay(_Strict):
    path: str = Field(description="trace file; a relative path is relative to the working directory, "
                      "else to the scenario file's folder")
    format: Literal["azure", "mooncake"] | None = None
    rate_scale: float = Field(1.0, gt=0, description="arrival rate multiplier (timestamps / scale)")
    loop: bool = Field(False, description="restart the trace when it ends before the horizon")
    slo_class: str | None = Field(None, description="class of every request; default: drawn by share")

    @field_validator("path")
    @classmethod
    def _existing_file(cls, v: str, info: ValidationInfo) -> str:
        """Resolve against the working directory, else (relative path not found there) against
        the folder of the scenario file being loaded (``load_scenario`` passes it in the
        validation context); require the file."""
        p = Path(v).expanduser()
        if p.is_absolute():
            tried = [p.resolve()]
        else:
            tried = [(Path.cwd() / p).resolve()]
            base = (info.context or {}).get(SCENARIO_FOLDER_KEY)
            if base is not None:
                tried.append((Path(base) / p).resolve())
        for resolved in tried:
            if resolved.is_file():
                return str(resolved)
        raise ValueError(f"trace file {v!r} not found (looked at {' and '.join(map(str, tried))}; "
                         "relative paths resolve against the working directory, then the "
                         "scenario file's folder)")


class Workload(_Strict):
    arrivals: Literal["poisson", "gamma", "mmpp", "trace"] = "poisson"
    rate_rps: float = Field(10.0, gt=0, description="mean total arrival rate, requests/s (synthetic arrivals)")
    cv: float = Field(1.0, gt=0, description="inter-arrival coefficient of variation (gamma)")
    mmpp_rate_factors: list[float] = Field(
        default_factory=lambda: [0.5, 3.0], min_length=1,
        description="MMPP: rate of each hidden state, as multiples of rate_rps",
    )
    mmpp_mean_sojourn_s: float = Field(30.0, gt=0)
    diurnal: Diurnal = Diurnal()
    classes: dict[str, SLOClass]
    models: dict[str, float] = Field(description="share of requests needing each model; shares sum to 1")
    residency_share: float = Field(0.0, ge=0, le=1, description="share that must stay in region")
    trace: TraceReplay | None = None

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: dict[str, SLOClass]) -> dict[str, SLOClass]:
        for name in v:
            if name not in SLO_CLASSES:
                raise ValueError(f"unknown SLO class {name!r}; known: {list(SLO_CLASSES)}")
        _sum_to_one({k: c.share for k, c in v.items()}, "share", "class shares")
        return v

    @field_validator("mmpp_rate_factors")
    @classmethod
    def _positive_factors(cls, v: list[float]) -> list[float]:
        for i, x in enumerate(v):
            if x <= 0:
                raise _FieldError((i,), f"MMPP rate factors must be > 0, got {x!r}")
        return v

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            try:
                in_catalog(name, MODELS, "model")
            except ValueError as e:
                raise _FieldError((name,), str(e)) from None
            if share < 0:
                raise _FieldError((name,), f"share of {name!r} must be >= 0, got {share!r}")
        _sum_to_one(v, None, "model shares")
        return v

    @model_validator(mode="after")
    def _trace_given(self) -> "Workload":
        if self.arrivals == "trace" and self.trace is None:
            raise ValueError("arrivals: 'trace' needs a 'trace' section")
        for key, readers in _ARRIVAL_KEYS.items():
            if _given(self, key) and self.arrivals not in readers:
                raise _FieldError((key,), _ignored_msg(key, getattr(self, key), self.arrivals, readers))
        if "diurnal" in self.model_fields_set:
            if self.arrivals == "trace":
                for key in _DIURNAL_SYNTHETIC_KEYS:
                    if _given(self.diurnal, key):
                        raise _FieldError(("diurnal", key), _ignored_msg(
                            f"diurnal.{key}", getattr(self.diurnal, key), self.arrivals, _SYNTHETIC))
        return self


def _given(model: BaseModel, key: str) -> bool:
    """`key` was given with a value other than its default (a ``model_dump()`` round trip
    writes every default, which must not count as a setting)."""
    if key not in model.model_fields_set:
        return False
    field = type(model).model_fields[key]
    return getattr(model, key) != field.get_default(call_default_factory=True)


def _ignored_msg(key: str, value: Any, arrivals: str, readers: tuple[str, ...]) -> str:
    shown = repr(value) if not isinstance(value, BaseModel) else "a section"
    return (f"{key} ({shown}) is ignored with arrivals {arrivals!r}: only "
            f"{' / '.join(readers)} arrivals read it; remove it or change arrivals")


def _sum_to_one(shares: dict[str, float], attr: str | None, what: str) -> None:
    """Shares must sum to 1 (within SHARE_TOLERANCE): nothing is rescaled behind the user's back."""
    total = math.fsum(shares.values())
    if abs(total - 1.0) > SHARE_TOLERANCE:
        listed = ", ".join(f"{k}: {v!r}" for k, v in shares.items())
        raise ValueError(f"{what} must sum to 1 (within {SHARE_TOLERANCE:g}), got {total!r} ({listed})")


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


#: Largest batch level (running sequences per replica) a scenario may offer; vLLM's
#: --max-num-seqs defaults to 256-1024, so this only refuses values no engine runs.
MAX_BATCH_LEVEL = 65536


class Actions(_Strict):
    batch_levels: list[int] = Field(default_factory=lambda: [8, 32, 128])
    max_sites: int | None = Field(None, ge=1, le=MAX_SITE_SLOTS, description="site slots (padding); default: #sites")
    invalid_action: Literal["shed", "raise"] = "shed"
    initial_batch_level: int = Field(1, ge=0)

    @field_validator("batch_levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v) or sorted(set(v)) != v:
            raise ValueError("batch_levels must be a non-empty increasing list of positive ints")
        if v[-1] > MAX_BATCH_LEVEL:  # a running-sequence limit; larger ones overflow the features
            raise ValueError(f"batch_levels: {v[-1]} is above the largest batch level supported, {MAX_BATCH_LEVEL}")
        return v


class Engine(_Strict):
    """The serving engine of every replica (gridenv.core.engine, gridenv.core.schedulers)."""

    scheduler: str = Field("vllm-v1", description="iteration scheduler (gridenv.core.schedulers.SCHEDULERS)")
    block_size_tokens: int = Field(16, ge=1, le=512, description="KV block (page) size, tokens")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="vllm-v1 token budget per iteration; default: vLLM's for the GPU")
    prefix_caching: bool = Field(True, description="reuse cached KV blocks of shared prompt prefixes")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        from gridenv.core.schedulers import SCHEDULERS

        return in_catalog(v, SCHEDULERS, "scheduler")


class Observation(_Strict):
    mode: Literal[MODES] = Field("slots", description="observation layout (gridenv.core.interface): "
                                 "slots (fixed site slots, region/model one-hots) or relative "
                                 "(topology-agnostic per-site features)")


class Scenario(_Strict):
    name: str
    description: str = ""
    horizon_s: float = Field(gt=0, description="simulated seconds per episode")
    software_stack: str = "vllm-0.6"
    max_prefill_tokens: int = Field(8192, ge=1, description="vllm-v0: prompt tokens per prefill iteration")
    engine: Engine = Engine()
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
                raise _FieldError(("sites", i, "region"), f"unknown region {s.region!r}; known: {regions}")
        for key, matrix in (("rtt_ms", self.network.rtt_ms),):
            if set(matrix) != set(regions):
                raise _FieldError(("network", key),
                                  f"rows {sorted(matrix)} do not match regions {sorted(regions)}")
            for r, row in matrix.items():
                if len(row) != len(sites):
                    raise _FieldError(("network", key, r),
                                      f"{len(row)} values for {len(sites)} sites {sites}")
                for j, x in enumerate(row):
                    if x < 0:
                        raise _FieldError(("network", key, r, j),
                                          f"values must be >= 0, got {x!r} (site {sites[j]!r})")
        for i, o in enumerate(self.faults.outages):
            if o.site not in sites:
                raise _FieldError(("faults", "outages", i, "site"), f"unknown site {o.site!r}; known: {sites}")
        for i, d in enumerate(self.faults.degraded_links):
            if d.site not in sites:
                raise _FieldError(("faults", "degraded_links", i, "site"), f"unknown site {d.site!r}; known: {sites}")
            if d.region not in regions:
                raise _FieldError(("faults", "degraded_links", i, "region"),
                                  f"unknown region {d.region!r}; known: {regions}")
        if self.faults.random and self.faults.random.sites:
            for i, s in enumerate(self.faults.random.sites):
                if s not in sites:
                    raise _FieldError(("faults", "random", "sites", i), f"unknown site {s!r}; known: {sites}")
        if self.actions.max_sites is not None and self.actions.max_sites < len(sites):
            raise _FieldError(("actions", "max_sites"),
                              f"max_sites ({self.actions.max_sites}) < number of sites ({len(sites)})")
        if self.actions.initial_batch_level >= len(self.actions.batch_levels):
            raise _FieldError(("actions", "initial_batch_level"),
                              f"initial_batch_level {self.actions.initial_batch_level} is not an index of "
                              f"batch_levels {self.actions.batch_levels}")
        served = {s.model for s in self.sites}
        for m, share in self.workload.models.items():
            if share > 0 and m not in served:
                raise _FieldError(("workload", "models", m), f"no site serves {m!r} (sites serve {sorted(served)})")
        if self.workload.trace and self.workload.trace.slo_class not in (None, *self.workload.classes):
            raise _FieldError(("workload", "trace", "slo_class"),
                              f"{self.workload.trace.slo_class!r} is not a class of this workload "
                              f"{list(self.workload.classes)}")
        w = self.workload
        tr = w.trace
        if tr is not None and self.engine.prefix_caching:
            fmt = tr.format or suffix_format(tr.path)  # None: the loader names the unknown suffix
            bs = self.engine.block_size_tokens
            if fmt == "mooncake" and MOONCAKE_BLOCK_TOKENS % bs:
                raise _FieldError(("engine", "block_size_tokens"),
                                  f"{bs} does not divide the {MOONCAKE_BLOCK_TOKENS}-token blocks a Mooncake "
                                  f"trace's hash_ids name (use a divisor such as 16 or 32, or "
                                  f"engine.prefix_caching: false)")
        if w.arrivals != "trace":
            expected = w.rate_rps * (1.0 + w.diurnal.amplitude) * self.horizon_s
            if expected > MAX_REQUESTS_PER_EPISODE:
                raise _FieldError(("workload", "rate_rps"),
                                  f"rate_rps {w.rate_rps!r} x horizon_s {self.horizon_s!r} means about "
                                  f"{expected:.3g} requests per episode; the limit is "
                                  f"{MAX_REQUESTS_PER_EPISODE:,} (memory)")
        return self

    @field_validator("software_stack")
    @classmethod
    def _known_stack(cls, v: str) -> str:
        from gridenv.core.perf import SOFTWARE_STACKS

        return in_catalog(v, SOFTWARE_STACKS, "software_stack")

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    @property
    def max_sites(self) -> int:
        return self.actions.max_sites or len(self.sites)

    def timeouts_of(self, cls: str) -> tuple[float, float]:
        """(first-token timeout s, whole-response timeout s) of a class's clients."""
        c = self.workload.classes[cls]
        d_first, d_e2e = DEFAULT_TIMEOUTS_S[cls]
        return (c.timeout_s or d_first, c.e2e_timeout_s or d_e2e)

    def slo_of(self, cls: str) -> tuple[float, float]:
        c = self.workload.classes[cls]
        d_ttft, d_tpot = DEFAULT_SLOS[cls]
        return (c.ttft_slo_s or d_ttft, c.tpot_slo_s or d_tpot)


def _unique(names: list[str], what: str) -> None:
    seen = set()
    for i, n in enumerate(names):
        if n in seen:
            raise _FieldError((what, i, "name"), f"{what}: duplicate name {n!r}")
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


def _from_overrides(overrides: dict, loc: tuple) -> bool:
    """Whether the value at `loc` came from `overrides` (deep_merge replaces all but mappings)."""
    data: Any = overrides
    for key in loc:
        if not isinstance(data, dict):
            return True  # a list or value the override put there wholesale
        if key not in data:
            return False
        data = data[key]
    return True


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_error(err: ValidationError, where: str, lines: dict, overrides: dict | None) -> str:
    """One line: ``<where>: <key path>: <problem>, got <value> (line N | override)`` per error."""
    parts = []
    seen: set[tuple] = set()
    for e in err.errors():
        # Drop union branch tags (``float``, ``list[float]``) from the location.
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in ("float", "int", "str"))))
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            loc = loc + cause.path
        if loc in seen:  # one line per field (a union reports each branch)
            continue
        seen.add(loc)
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("value_error", "missing", "assertion_error") and not isinstance(cause, _FieldError):
            msg += f", got {_show(e['input'])}"
            if e["type"] in ("float_type", "int_type") and isinstance(e["input"], bool):
                msg += " (a boolean is not a number)"
            elif e["type"] in ("float_type", "int_type") and isinstance(e["input"], str) and _numeric(e["input"]):
                msg += " (a string; YAML reads 1e9 as text: write 1.0e+9, and no quotes)"
        if overrides is not None and _from_overrides(overrides, loc):
            src = "override"
        else:
            line = line_of(lines, loc)
            src = f"line {line}" if line is not None else None
        parts.append(f"{path}: {msg}" + (f" ({src})" if src else ""))
    return f"{where}: " + "; ".join(parts)


def _switch_arrivals(base: dict, overrides: dict) -> dict:
    """Drop the base's settings of its old arrival process when `overrides` switch the process."""
    new = (overrides.get("workload") or {}).get("arrivals") if isinstance(overrides.get("workload"), dict) else None
    work = base.get("workload")
    if not isinstance(new, str) or not isinstance(work, dict) or work.get("arrivals", "poisson") == new:
        return base
    work = {k: v for k, v in work.items() if k not in _ARRIVAL_KEYS or new in _ARRIVAL_KEYS[k]}
    if new == "trace" and isinstance(work.get("diurnal"), dict):
        work["diurnal"] = {k: v for k, v in work["diurnal"].items() if k not in _DIURNAL_SYNTHETIC_KEYS}
    return {**base, "workload": work}


def scenario_file(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a built-in scenario name (``metro``) or of a scenario path; ScenarioError
    when there is none."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = scenario_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ScenarioError(f"unknown scenario {str(name_or_path)!r}; known: {scenario_names()}")
    if not path.exists():
        raise ScenarioError(f"scenario file {path} not found")
    return path


def load_scenario(name_or_path: str | os.PathLike | dict, overrides: dict | None = None) -> Scenario:
    """Load a scenario by name (``metro``), path, or dict, deep-merging ``overrides`` on top.

    Errors (:class:`ScenarioError`) name the source, the key path, the value, and the YAML line
    or ``(override)``. See the module docstring for the rules.
    """
    lines: dict = {}
    context: dict = {}
    if isinstance(name_or_path, dict):
        raw, where = dict(name_or_path), "scenario dict"
    else:
        path = scenario_file(name_or_path)
        try:
            raw, lines = load_yaml(read_text(path), source=str(path))
        except StrictYAMLError as e:
            raise ScenarioError(str(e)) from None
        if not isinstance(raw, dict):
            raise ScenarioError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
        where = str(path)
        raw.setdefault("source", str(path))
        context[SCENARIO_FOLDER_KEY] = str(path.resolve().parent)
    if overrides is not None and not isinstance(overrides, dict):
        raise ScenarioError(f"{where}: overrides must be a mapping of scenario keys, got {_show(overrides)}")
    if overrides:
        raw = deep_merge(_switch_arrivals(raw, overrides), overrides)
        where += " with overrides"
    try:
        return Scenario.model_validate(raw, context=context)
    except ValidationError as e:
        raise ScenarioError(_format_error(e, where, lines, overrides)) from None
