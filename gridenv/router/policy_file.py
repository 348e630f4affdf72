"""The ``policy.json`` schema: one pydantic model, used by ``agents.export`` to write the file
and by :mod:`gridenv.router.runtime` to read it (``PolicyFile.model_json_schema()`` is its JSON
Schema).

Semantic checks that need this gridenv (the ONNX hash, the statics' consistency, the recorded
interface against :mod:`gridenv.core.interface`) are the runtime's; this module checks shape and
types. Imports pydantic only (no torch, no gymnasium).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gridenv.core.interface import MODES

__all__ = ["PolicyFile", "InterfaceRecord", "ObservationSection", "ActionSection", "ScenarioSection",
           "RequestDefaults", "OnnxSection", "KIND", "first_error"]

KIND = "gridenv-router-policy"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TensorSpec(_Strict):
    dtype: str
    shape: list[str | int]
    meaning: str


class OnnxSection(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of policy.onnx")
    opset: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    metadata: dict[str, str]


class SourceSection(BaseModel):
    """Where the exported model came from (informational)."""

    model_config = ConfigDict(extra="allow")
    model: str
    vecnormalize: str
    algo: Literal["maskable_ppo", "ppo"]
    num_timesteps: int
    policy_class: str


class ScenarioSection(_Strict):
    name: str
    env_id: str
    env_config: dict[str, Any]
    source: str


class Normalization(_Strict):
    kind: Literal["VecNormalize", "none"]
    clip_obs: float
    epsilon: float
    formula: str


class ObservationSection(_Strict):
    size: int = Field(ge=1)
    dtype: Literal["float32"]
    encoder: str
    mode: Literal[MODES]
    features: list[dict[str, str]] = Field(description="Interface.feature_spec(): name, unit, scale, source")
    normalization: Normalization


class ActionSection(_Strict):
    type: Literal["MultiDiscrete"]
    nvec: list[int]
    max_sites: int = Field(ge=1)
    n_sites: int = Field(ge=1)
    site_slots: list[str]
    shed_index: int
    batch_levels: list[int]
    initial_batch_level: int = Field(ge=0)
    mask: str


class SLO(_Strict):
    ttft_s: float = Field(gt=0)
    tpot_s: float = Field(gt=0)


class RequestDefaults(_Strict):
    slo_s: dict[str, SLO] = Field(description="per SLO class: the defaults when a request omits its SLOs")


class InterfaceRecord(_Strict):
    """``gridenv.core.interface.Interface.record()``."""

    version: str
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    interface: dict[str, Any]


class PolicyFile(_Strict):
    """``policy.json``: everything a router needs besides ``policy.onnx``."""

    format_version: int
    kind: Literal["gridenv-router-policy"] = KIND
    created_utc: str
    onnx: OnnxSection
    source: SourceSection
    scenario: ScenarioSection
    observation: ObservationSection
    statics: dict[str, Any] = Field(description="gridenv.core.snapshot.SiteStatics.to_dict()")
    action: ActionSection
    request_defaults: RequestDefaults
    interface: InterfaceRecord
    scores: str
    verification: dict[str, Any] | None = None


def first_error(err: ValidationError) -> str:
    """``observation.size: Input should be a valid integer`` from a pydantic error."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "(root)"
    return f"{loc}: {e['msg']}"
