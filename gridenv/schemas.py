"""Every file format's schema, registered in one place: ``python -m gridenv schemas [NAME]``.

Each entry names a pydantic model by ``"module:attribute"`` (imported only when its schema is
asked for, so the core does not import ``agents`` nor any optional package) and the files that
follow it. A new file format is one line in :data:`SCHEMAS`; its model is the one its reader
and writer validate with.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["SchemaEntry", "SCHEMAS", "schema_model", "json_schema"]


@dataclass(frozen=True)
class SchemaEntry:
    target: str  #: ``package.module:Model``
    files: str  #: which files follow it
    description: str


SCHEMAS: dict[str, SchemaEntry] = {
    "scenario": SchemaEntry("gridenv.core.scenario:Scenario", "configs/scenarios/*.yaml, your scenario files",
                            "a scenario: regions, sites, network, workload, faults, economics, actions"),
    "suites": SchemaEntry("agents.schemas:SuitesFile", "configs/suites.yaml",
                          "benchmark suites: scenarios x seeds, overrides"),
    "hyperparams": SchemaEntry("agents.schemas:HyperparamsFile", "configs/ppo*.yaml, <run>/hyperparams.yaml",
                               "PPO hyperparameters: default entry + per-scenario entries"),
    "sweep": SchemaEntry("agents.schemas:SweepFile", "configs/sweeps/*.yaml",
                         "a training sweep: hyperparameter variants and/or a grid"),
    "leaderboard": SchemaEntry("agents.schemas:LeaderboardFile", "<out>/leaderboard.json",
                               "evaluate.py's leaderboard: ranking, per-scenario results, episodes"),
    "run-args": SchemaEntry("agents.schemas:RunRecord", "runs/<run>/args.json",
                            "a training run's arguments, merged hyperparameters and commands"),
    "policy": SchemaEntry("gridenv.router.policy_file:PolicyFile", "<exported>/policy.json",
                          "an exported policy: interface record, observation, action, sites, SLOs"),
    "route-request": SchemaEntry("gridenv.router.schemas:RouteRequest", "POST /v1/route and /v1/score bodies",
                                 "what the router service is asked: the request and each endpoint's signals"),
    "route-decision": SchemaEntry("gridenv.router.schemas:RouteDecision", "/v1/route answers",
                                  "the router's decision: endpoint or shed, batch level, scores"),
    "score-answer": SchemaEntry("gridenv.router.schemas:ScoreAnswer", "/v1/score answers",
                                "a score in [0, 1] per endpoint (llm-d scorer style)"),
    "error-answer": SchemaEntry("gridenv.router.schemas:ErrorAnswer", "4xx answers of the router service",
                                "what was wrong with a request body, field by field"),
}


def schema_model(name: str):
    """The pydantic model registered as `name` (KeyError if unknown, ImportError if not installed)."""
    entry = SCHEMAS[name]
    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)


def json_schema(name: str) -> dict:
    """The JSON Schema of `name`, with the files it describes."""
    schema = schema_model(name).model_json_schema()
    return {"$comment": f"gridenv schema {name!r} for {SCHEMAS[name].files}", **schema}
