"""One pydantic schema per file format of ``agents/``, used both to write and to read.

=====================  ==================================================  =====================
format                 files                                               schema
=====================  ==================================================  =====================
suites                 ``configs/suites.yaml``                             :class:`SuitesFile`
hyperparameters        ``configs/ppo*.yaml``, a run's ``hyperparams.yaml``  :class:`HyperparamsFile`
sweeps                 ``configs/sweeps/*.yaml``                           :class:`SweepFile`
leaderboard            ``leaderboard.json``                                :class:`LeaderboardFile`
run record             a run's ``args.json``                               :class:`RunRecord`
=====================  ==================================================  =====================

All are strict: an unknown key, a boolean where a number is expected or a number out of range
is an error naming the file and the key path (:func:`load`). YAML files are read with
:func:`gridenv.core.strict_yaml.load_yaml` (a duplicate key is an error too).
``python -m gridenv schemas [NAME]`` prints their JSON Schemas (registered in
:mod:`gridenv.schemas`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

from pydantic import (BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator,
                      model_validator)

from gridenv.core.strict_yaml import StrictYAMLError, format_validation_error, load_yaml_file, read_text

__all__ = [
    "SchemaError", "SuiteEntry", "SeedRange", "SuitesFile", "Normalize", "HyperparamEntry",
    "HyperparamsFile", "SweepVariant", "SweepFile", "LeaderboardFile", "RunRecord",
    "load", "format_validation_error", "HYPERPARAM_KEYS",
]

#: What a number must be: finite, and never a boolean (strict mode).
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class SchemaError(ValueError):
    """A file that does not follow its schema (the message names the file and the key path)."""


M = TypeVar("M", bound=BaseModel)


def load(model: type[M], path: str | os.PathLike) -> M:
    """Read a YAML or JSON file into `model`; :class:`SchemaError` naming file and key path."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            raw = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise SchemaError(f"{path}: invalid JSON: {err}") from None
        except StrictYAMLError as err:  # not UTF-8
            raise SchemaError(str(err)) from None
    else:
        raw = load_yaml_file(path)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SchemaError(format_validation_error(err, str(path))) from None


# ---------------------------------------------------------------------------- suites
class SeedRange(BaseModel):
    """``{start: S, count: N}``: seeds S, S+1, ..., S+N-1."""

    model_config = _STRICT
    start: NonNegInt
    count: PositiveInt

    def seeds(self) -> list[int]:
        return list(range(self.start, self.start + self.count))


class SuiteEntry(BaseModel):
    """A benchmark suite: scenarios x seeds, with config overrides for every scenario."""

    model_config = _STRICT
    description: str = ""
    scenarios: list[str] = Field(min_length=1, description="scenario names, env ids or YAML paths")
    seeds: Union[Annotated[list[NonNegInt], Field(min_length=1)], SeedRange]
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="deep-merged into every scenario")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v):
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    def seed_list(self) -> list[int]:
        return self.seeds.seeds() if isinstance(self.seeds, SeedRange) else list(self.seeds)


class SuitesFile(RootModel[dict[str, SuiteEntry]]):
    """``configs/suites.yaml``: suite name -> suite."""


# ---------------------------------------------------------------------------- hyperparameters
_SCHEDULE = r"lin_[0-9.eE+-]+"
Schedule = Annotated[str, Field(pattern=_SCHEDULE, description="'lin_<x>': linear decay from x to 0")]
PositiveFloat = Annotated[float, Field(gt=0)]


class Normalize(BaseModel):
    """VecNormalize settings."""

    model_config = _STRICT
    obs: bool = True
    reward: bool = True
    clip_obs: PositiveFloat = 10.0
    clip_reward: PositiveFloat = 10.0


class NetArch(BaseModel):
    model_config = _STRICT
    pi: list[PositiveInt]
    vf: list[PositiveInt]


class HyperparamEntry(BaseModel):
    """One entry of a hyperparameter file: run settings and (Maskable)PPO arguments, all optional."""

    model_config = _STRICT
    # run settings
    n_envs: Optional[PositiveInt] = None
    total_timesteps: Optional[PositiveInt] = None
    normalize: Optional[Normalize] = None
    env_config: Optional[dict[str, Any]] = Field(
        None, description="deep-merged into the scenario for the training envs only")
    eval_episodes: Optional[PositiveInt] = None
    eval_seeds_start: Optional[NonNegInt] = None
    # vectorized envs (agents/vec_env.py): dummy (SB3 DummyVecEnv), native (in-process
    # GridVectorEnv), subproc (vec_workers processes) or hybrid
    vec_backend: Optional[Literal["dummy", "native", "subproc", "hybrid"]] = None
    vec_workers: Optional[PositiveInt] = None
    # PPO / MaskablePPO constructor arguments
    n_steps: Optional[PositiveInt] = None
    batch_size: Optional[PositiveInt] = None
    n_epochs: Optional[PositiveInt] = None
    learning_rate: Optional[Union[PositiveFloat, Schedule]] = None
    gamma: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    gae_lambda: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    ent_coef: Optional[Annotated[float, Field(ge=0)]] = None
    vf_coef: Optional[Annotated[float, Field(ge=0)]] = None
    clip_range: Optional[Union[PositiveFloat, Schedule]] = None
    max_grad_norm: Optional[PositiveFloat] = None
    target_kl: Optional[PositiveFloat] = None
    normalize_advantage: Optional[bool] = None
    # policy: "mlp" (SB3's MlpPolicy, net_arch) or "site_scoring" (agents/site_policy.py)
    policy: Optional[Literal["mlp", "site_scoring"]] = None
    site_hidden: Optional[list[PositiveInt]] = None
    critic_hidden: Optional[list[PositiveInt]] = None
    level_from_site: Optional[bool] = None  # site_scoring: the batch-level head reads the chosen site's features
    # policy_kwargs
    net_arch: Optional[Union[list[PositiveInt], NetArch]] = None
    activation_fn: Optional[Literal["tanh", "relu"]] = None
    ortho_init: Optional[bool] = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(f"unknown hyperparameter {unknown[0]!r} "
                                 f"(allowed: {', '.join(sorted(cls.model_fields))})")
        return data

    @field_validator("learning_rate", "clip_range", mode="before")
    @classmethod
    def _rate(cls, v):
        ok = (isinstance(v, str) and re.fullmatch(_SCHEDULE, v)) or v is None or (
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
        if not ok:
            raise ValueError(f"must be a positive number or 'lin_<number>', got {v!r}")
        return v

    def as_dict(self) -> dict:
        """The keys the file gave, as plain data (None stays None only where given)."""
        return self.model_dump(exclude_unset=True)


#: The keys a hyperparameter entry may hold.
HYPERPARAM_KEYS = tuple(HyperparamEntry.model_fields)


class HyperparamsFile(RootModel[dict[str, Optional[HyperparamEntry]]]):
    """``configs/ppo.yaml``: a ``default`` entry, overridden per scenario name or env id."""

    @model_validator(mode="after")
    def _has_default(self):
        if "default" not in self.root:
            raise ValueError("expected a mapping with a 'default:' entry")
        return self

    def entry(self, key: str) -> dict:
        e = self.root.get(key)
        return e.as_dict() if e is not None else {}


# ---------------------------------------------------------------------------- sweeps
_NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"


class SweepVariant(HyperparamEntry):
    """Hyperparameter overrides with an optional name (letters, digits, ``._+-``)."""

    name: Optional[Annotated[str, Field(pattern=_NAME)]] = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            return super()._known_keys({k: v for k, v in data.items() if k != "name"}) | (
                {"name": data["name"]} if "name" in data else {})
        return data


class SweepFile(BaseModel):
    """``configs/sweeps/*.yaml``: hyperparameter variants and/or a grid (every combination)."""

    model_config = _STRICT
    description: str = ""
    variants: Optional[Annotated[list[SweepVariant], Field(min_length=1)]] = None
    grid: Optional[dict[str, Annotated[list[Any], Field(min_length=1)]]] = Field(
        None, description="hyperparameter -> non-empty list of values")

    @model_validator(mode="after")
    def _check(self):
        if self.variants is None and self.grid is None:
            raise ValueError("expected 'variants' and/or 'grid'")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("grid: map hyperparameters to non-empty lists of values")
            for key in self.grid:
                if key not in HyperparamEntry.model_fields:
                    raise ValueError(f"grid: unknown hyperparameter {key!r} "
                                     f"(allowed: {', '.join(HYPERPARAM_KEYS)})")
            for key, values in self.grid.items():
                for v in values:  # each value must be valid for its key
                    try:
                        HyperparamEntry.model_validate({key: v})
                    except ValidationError as err:
                        raise ValueError(format_validation_error(err, f"grid.{key}")) from None
        return self


# ---------------------------------------------------------------------------- leaderboard
Num = Optional[float]  # null stands for a missing value or NaN


class _Lax(BaseModel):
    """Leaderboard parts: written by this code, so only unknown keys and types are checked."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LbSuite(_Lax):
    name: str
    description: str
    scenarios: list[str]
    seeds: list[int]
    overrides: dict[str, Any]
    scenario_files: dict[str, str] = Field(default_factory=dict,
                                           description="scenario name -> YAML path, for files")


class LbBootstrap(_Lax):
    resamples: int
    confidence: float
    seed: int
    method: Literal["percentile"]
    aggregate: str


class LbNormalization(_Lax):
    random_reward: float
    best_heuristic: str
    best_heuristic_reward: float
    used_in_score: bool


class LbPolicy(_Lax):
    rank: int
    name: str
    spec: str
    kind: Literal["heuristic", "file"]
    iqm_normalized_score: Num
    iqm_ci95: Optional[tuple[float, float]]
    mean_normalized_score: Num
    mean_reward: Num
    episodes: int


class LbResult(_Lax):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # + one column per RESULT_METRICS
    policy: str
    scenario: str
    episodes: int
    reward_mean: float
    reward_ci95: tuple[float, float]
    normalized_score_mean: Num


class LbRewardTerms(_Lax):
    goodput_value_usd: float
    energy_cost_usd: float
    gpu_cost_usd: float


class LbEpisode(_Lax):
    policy: str
    scenario: str
    seed: int
    reward: float
    decisions: int
    wall_s: float
    reward_terms: LbRewardTerms
    metrics: dict[str, Union[int, float, None]]


class LbFailure(_Lax):
    """An episode that failed (after its retries, if any): not in the statistics."""

    policy: str
    scenario: str
    seed: int
    error: str
    attempts: int


class LbSkipped(_Lax):
    """A policy x scenario not run: the policy's interface does not fit the scenario."""

    policy: str
    scenario: str
    reason: str


class LeaderboardFile(_Lax):
    """``leaderboard.json`` (see :mod:`agents.evaluation` for how the numbers are made)."""

    schema_version: Literal[2]
    created_utc: str
    gridenv_version: str
    suite: LbSuite
    bootstrap: LbBootstrap
    normalization: dict[str, LbNormalization]
    policies: list[LbPolicy] = Field(description="ranked, best IQM first")
    results: list[LbResult] = Field(description="one row per policy x scenario that ran")
    episodes: list[LbEpisode] = Field(description="one row per finished episode")
    crn_consistent: bool = Field(description="every policy saw the same arrivals per seed")
    complete: bool = Field(description="no episode failed")
    failures: list[LbFailure] = Field(default_factory=list)
    skipped: list[LbSkipped] = Field(default_factory=list)


# ---------------------------------------------------------------------------- run record
class RunRecord(BaseModel):
    """A training run's ``args.json``: what was run, and every command that ran it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    args: dict[str, Any] = Field(description="train.py's arguments (agents.arguments.TrainArgs)")
    scenario: str
    env_id: str
    scenario_file: Optional[str] = Field(None, description="the YAML path, for a scenario file")
    n_envs: PositiveInt
    hyperparams: dict[str, Any] = Field(description="the merged hyperparameter entry")
    eval_seeds: list[NonNegInt]
    commands: list[str]
    interface: Optional[dict[str, Any]] = Field(
        None, description="the observation interface record (gridenv.core.interface), checked on load")
    migrated: Optional[dict[str, Any]] = Field(
        None, description="the slots-1 -> slots-2 migration (agents.migrate at commit 33e60bc)")
    migrations: Optional[list[dict[str, Any]]] = Field(
        None, description="appended by agents.migrate: from/to interface versions, by, verification")
    init_from: Optional[str] = Field(
        None, description="--init-from: the model whose weights the run started from")
    warm_start: Optional[dict[str, Any]] = Field(
        None, description="--warm-start: the heuristic cloned before PPO, on how many decisions, how well")

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict) -> dict:
        from agents.arguments import TrainArgs

        unknown = sorted(set(v) - set(TrainArgs.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown train.py arguments {unknown}")
        return v

    @field_validator("hyperparams")
    @classmethod
    def _hp(cls, v: dict) -> dict:
        HyperparamEntry.model_validate(v)
        return v


def schema_name_ok(name: str) -> bool:  # used by campaign for variant names
    return re.fullmatch(_NAME, name) is not None
