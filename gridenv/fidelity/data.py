"""The measured-benchmark file (``benchmarks.yaml``): sources, workloads and rows, validated.

A row is one public benchmark run: the hardware and model, the server flags that shape batching,
the arrival process and lengths, and what was measured. ``use`` says whether the row may be used
to fit the load-dependent terms of a software stack (``fit``) or only to check them
(``holdout``); the split is part of the data and fixed before fitting.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.perf import DEFAULT_SOFTWARE_STACK, SOFTWARE_STACKS
from gridenv.core.scenario import in_catalog
from gridenv.core.strict_yaml import StrictYAMLError, format_validation_error, load_yaml, read_text

__all__ = [
    "BENCHMARKS_PATH", "QUANTILES", "Source", "Host", "Workload", "ServerFlags", "RowWorkload",
    "Measured", "BenchmarkRow", "BenchmarkFile", "draw_lengths", "load_benchmarks",
]

BENCHMARKS_PATH = Path(__file__).with_name("benchmarks.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where rows come from, under what terms, and what the runs were."""

    repository: str
    url: str
    license: str
    software: str
    workload: str
    #: How the source's tool computed its metrics. ``benchmark_serving``: vLLM's
    #: benchmark_serving.py (TPOT = (latency - TTFT) / (output tokens - 1) per request, then
    #: mean and median). ``inference_perf``: kubernetes-sigs/inference-perf, whose own TPOT
    #: divides by streamed chunks, not tokens; the file's TPOTs are derived from its latency,
    #: TTFT and output-length statistics, (mean latency - mean TTFT) / (mean output - 1) and the
    #: same of the medians, and the replay computes them the same way.
    metrics: Literal["benchmark_serving", "inference_perf"] = "benchmark_serving"


class Host(_Strict):
    """The machine a set of runs used: its CPU runs vLLM's API server, scheduler and output
    processing, so the software stack's CPU-side terms depend on it."""

    description: str
    #: The reference host: the CPU-side terms of a fitted stack are this host's.
    reference: bool = False
    #: CPU-side time (ReplicaPerf c_iter_s, c_per_seq_s, c_admit_s) relative to the reference
    #: host. Fitted with the stack on the host's fit rows (python -m gridenv.fidelity.fit);
    #: 1.0 for the reference host and for a host without fit rows (unknown, not fitted).
    cpu_scale: float = Field(1.0, gt=0)


#: Quantile keys of a length distribution, with their probabilities (inference-perf's reports).
QUANTILES = {"min": 0.0, "p1": 0.01, "p5": 0.05, "p10": 0.10, "p25": 0.25, "median": 0.50,
             "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99, "max": 1.0}


class Workload(_Strict):
    """Per-request prompt and output lengths: in request order, read from a cited result file
    (``input_tokens``, ``output_tokens``), or, where the source reports only their distribution,
    its quantiles (``input_quantiles``, ``output_quantiles``: ``QUANTILES`` keys -> tokens), from
    which ``BenchmarkFile.lengths`` draws them."""

    source: str
    path: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    input_tokens: list[int] | None = Field(None, min_length=1)
    output_tokens: list[int] | None = Field(None, min_length=1)
    input_quantiles: dict[str, float] | None = None
    output_quantiles: dict[str, float] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> "Workload":
        lists = (self.input_tokens is not None, self.output_tokens is not None)
        quants = (self.input_quantiles is not None, self.output_quantiles is not None)
        if not (all(lists) and not any(quants)) and not (all(quants) and not any(lists)):
            raise ValueError("a workload gives input_tokens and output_tokens (per request), or "
                             "input_quantiles and output_quantiles (a distribution), not a mix")
        if self.input_quantiles is not None:
            for name, q in (("input_quantiles", self.input_quantiles),
                            ("output_quantiles", self.output_quantiles)):
                if set(q) != set(QUANTILES):
                    raise ValueError(f"{name}: expected the keys {list(QUANTILES)}, got {list(q)}")
                values = [q[k] for k in QUANTILES]
                if not all(np.isfinite(values)) or any(b < a for a, b in zip(values, values[1:])):
                    raise ValueError(f"{name}: values must be finite and non-decreasing from min to max")
            if self.input_quantiles["min"] < 1 or self.output_quantiles["min"] < 0:
                raise ValueError("prompt lengths must be >= 1 and output lengths >= 0")
            return self
        if len(self.input_tokens) != len(self.output_tokens):
            raise ValueError(
                f"input_tokens ({len(self.input_tokens)}) and output_tokens "
                f"({len(self.output_tokens)}) must have one entry per request"
            )
        if min(self.input_tokens) < 1 or min(self.output_tokens) < 0:
            raise ValueError("prompt lengths must be >= 1 and output lengths >= 0")
        return self

    @property
    def per_request(self) -> bool:
        return self.input_tokens is not None


def draw_lengths(quantiles: dict[str, float], n: int, rng: np.random.Generator) -> list[int]:
    """`n` lengths with the given quantiles: the inverse of the piecewise-linear CDF through
    them at the mid-points (i + 0.5) / n, rounded, in an order drawn from `rng`."""
    probs = list(QUANTILES.values())
    values = [quantiles[k] for k in QUANTILES]
    x = np.rint(np.interp((np.arange(n) + 0.5) / n, probs, values)).astype(int)
    return rng.permutation(x).tolist()


class ServerFlags(_Strict):
    """The vLLM server settings that decide batching."""

    #: Engine scheduler (gridenv.core.schedulers): "vllm-v0" prefill-first whole prompts,
    #: "vllm-v1" chunked prefill mixed with decodes. Used where the engine has schedulers.
    scheduler: Literal["vllm-v0", "vllm-v1"] = "vllm-v1"
    max_num_seqs: int = Field(ge=1)
    max_num_batched_tokens: int = Field(ge=1)
    #: Decode steps per scheduling round (vLLM multi-step); tokens reach the client in chunks.
    num_scheduler_steps: int = Field(1, ge=1)
    #: The engine steps in its own process (vLLM V1's engine core, 0.8+), so it starts on the
    #: first requests of a burst while the API server is still taking the rest in; vLLM 0.6 ran
    #: the engine loop in the API server's process and took a burst in whole first.
    engine_core_process: bool = False


class RowWorkload(_Strict):
    """The row's arrival process and which requests of a named workload it sent."""

    name: str
    n_requests: int = Field(ge=1)
    #: burst: all at t = 0. poisson: benchmark_serving.py's exponential gaps at rate_rps.
    #: constant: inference-perf's ConstantLoadTimer, n_requests exponential gaps rescaled to sum
    #: to duration_s (the first request after the first gap). closed: concurrency requests in
    #: flight, the next sent when one completes.
    arrival: Literal["burst", "poisson", "constant", "closed"]
    rate_rps: float | None = Field(None, gt=0)
    duration_s: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    seed: int = 0
    #: This run's own output lengths (first n_requests), when they differ from the workload's.
    output_tokens: list[int] | None = None
    #: The same server had just served these same prompts (an earlier run of the same suite)
    #: with prefix caching on: their full KV blocks are in its prefix cache when this run starts.
    prefix_cache_warm: bool = False

    @model_validator(mode="after")
    def _arrival_params(self) -> "RowWorkload":
        if self.arrival == "poisson" and self.rate_rps is None:
            raise ValueError("arrival 'poisson' needs rate_rps")
        if self.arrival == "closed" and self.concurrency is None:
            raise ValueError("arrival 'closed' needs concurrency")
        if self.arrival == "constant" and self.duration_s is None:
            raise ValueError("arrival 'constant' needs duration_s")
        if self.output_tokens is not None and len(self.output_tokens) != self.n_requests:
            raise ValueError(
                f"output_tokens has {len(self.output_tokens)} entries, n_requests is "
                f"{self.n_requests}"
            )
        if self.output_tokens is not None and min(self.output_tokens) < 0:  # as Workload's
            raise ValueError(f"output lengths must be >= 0, got {min(self.output_tokens)}")
        return self


class Measured(_Strict):
    """What the benchmark reported. Times in ms; rates per second of benchmark duration."""

    duration_s: float | None = Field(None, gt=0)
    output_tokens: int | None = Field(None, ge=0)
    request_throughput_rps: float = Field(gt=0)
    output_throughput_tps: float = Field(gt=0)
    ttft_mean_ms: float = Field(gt=0)
    ttft_median_ms: float = Field(gt=0)
    tpot_mean_ms: float = Field(gt=0)
    tpot_median_ms: float = Field(gt=0)


class BenchmarkRow(_Strict):
    """One measured benchmark run."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    use: Literal["fit", "holdout"]
    #: light: requests rarely wait; moderate: a batch of tens of requests, queues short;
    #: saturated: the server's maximum batch or a burst, requests queue.
    load: Literal["light", "moderate", "saturated"]
    source: str
    host: str
    path: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    gpu: str
    gpu_memory_gb: float | None = Field(None, gt=0)
    #: The GPU variant's memory bandwidth (datasheet), when it differs from the catalog GPU's
    #: (A100-SXM4-40GB: 1,555 GB/s against the 80 GB part's 2,039).
    gpu_memory_bandwidth_gbps: float | None = Field(None, gt=0)
    model: str
    model_note: str | None = None
    tp: int = Field(ge=1)
    #: The software stack (gridenv.core.perf.SOFTWARE_STACKS) that models this row's server:
    #: its ``use: fit`` rows are what ``python -m gridenv.fidelity.fit --stack`` fits it on, and
    #: ``python -m gridenv.fidelity`` replays the row with it unless --stack names another.
    stack: str = DEFAULT_SOFTWARE_STACK
    server: ServerFlags
    workload: RowWorkload
    workload_note: str | None = None
    #: Metrics the replay cannot be compared on, each with the reason (left out of summaries).
    not_comparable: dict[str, str] = Field(default_factory=dict)
    measured: Measured

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        return in_catalog(v, GPUS, "gpu")

    @field_validator("not_comparable")
    @classmethod
    def _known_metrics(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(Measured.model_fields))
        if unknown:
            raise ValueError(f"not_comparable names unknown metrics {unknown}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return in_catalog(v, MODELS, "model")

    @field_validator("stack")
    @classmethod
    def _known_stack(cls, v: str) -> str:
        return in_catalog(v, SOFTWARE_STACKS, "stack")


class BenchmarkFile(_Strict):
    """The whole file; cross-references (row -> source, workload) are checked."""

    version: Literal[1]
    sources: dict[str, Source]
    hosts: dict[str, Host]
    workloads: dict[str, Workload]
    rows: list[BenchmarkRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> "BenchmarkFile":
        ids = [r.id for r in self.rows]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate row ids: {dup}")
        refs = [h for h, v in self.hosts.items() if v.reference]
        if len(refs) != 1:
            raise ValueError(f"exactly one host must be the reference, got {refs}")
        if self.hosts[refs[0]].cpu_scale != 1.0:
            raise ValueError(f"reference host {refs[0]!r} must have cpu_scale 1.0")
        for name, w in self.workloads.items():
            if w.source not in self.sources:
                raise ValueError(f"workload {name!r}: unknown source {w.source!r}")
        for r in self.rows:
            if r.source not in self.sources:
                raise ValueError(f"row {r.id!r}: unknown source {r.source!r}")
            if r.host not in self.hosts:
                raise ValueError(f"row {r.id!r}: unknown host {r.host!r}; known: {sorted(self.hosts)}")
            w = self.workloads.get(r.workload.name)
            if w is None:
                raise ValueError(f"row {r.id!r}: unknown workload {r.workload.name!r}")
            if not w.per_request and r.workload.output_tokens is not None:
                raise ValueError(f"row {r.id!r}: output_tokens need a per-request workload")
            if w.per_request and r.workload.n_requests > len(w.input_tokens):
                raise ValueError(
                    f"row {r.id!r}: n_requests {r.workload.n_requests} > the "
                    f"{len(w.input_tokens)} requests of workload {r.workload.name!r}"
                )
        return self

    @cached_property
    def by_id(self) -> dict[str, BenchmarkRow]:
        return {r.id: r for r in self.rows}

    def lengths(self, row: BenchmarkRow) -> tuple[list[int], list[int]]:
        """(prompt tokens, output tokens) of each request the row sent, in order."""
        w = self.workloads[row.workload.name]
        n = row.workload.n_requests
        if not w.per_request:  # drawn from the distribution, seeded by the row
            rng = np.random.default_rng(row.workload.seed)
            return draw_lengths(w.input_quantiles, n, rng), draw_lengths(w.output_quantiles, n, rng)
        outs = row.workload.output_tokens or w.output_tokens[:n]
        return list(w.input_tokens[:n]), list(outs)


def load_benchmarks(path: str | Path = BENCHMARKS_PATH) -> BenchmarkFile:
    """Read and validate a benchmark file; errors (one line) name the file and the offending
    field. The YAML is read strictly (gridenv.core.strict_yaml: no duplicate keys)."""
    path = Path(path)
    try:
        raw = load_yaml(read_text(path), str(path))[0]
    except OSError as e:
        raise ValueError(f"{path}: cannot read benchmark file: {e}") from e
    except StrictYAMLError as e:  # not UTF-8, not YAML, a duplicate key: names file and line
        raise ValueError(str(e)) from None
    try:
        return BenchmarkFile.model_validate(raw)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, str(path))) from None
