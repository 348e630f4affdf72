"""Merge leaderboards evaluated piece by piece (one scenario or one policy per run) into one.

A full evaluation (23 heuristics x 9 scenarios x 10 seeds) takes hours on two cores, so it is
run in pieces; :func:`merge_leaderboards` reads their ``leaderboard.json`` files, collects the
per-episode records and recomputes the whole leaderboard with
:func:`agents.evaluation.aggregate`: normalization by ``random`` and the best heuristic per
scenario *of the merged set*, IQM with a stratified bootstrap CI. ``evaluate.py --merge``
writes it with the same report files as an evaluation.

The inputs are read in sorted path order, so the command-line order changes nothing: the
merged suite has the scenarios in order of first appearance in that order, every input's
seeds (sorted), and the policies in order of first appearance. Refused (:class:`MergeError`,
one line naming the files): a file that is missing, not JSON or not a leaderboard; the same
(policy, scenario, seed) with different numbers in two files (identical duplicates are kept
once); policies covering different seeds of one scenario (normalized scores and paired
comparisons need common random numbers); a scenario without ``random`` episodes (the 0 of
the normalized score); inputs whose suites differ in overrides, in a scenario's YAML file or
in a policy's spec. Inputs of different gridenv versions are merged, with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from agents.evaluation import REFERENCE_POLICY, PolicyEntry, Suite, aggregate
from agents.schemas import LeaderboardFile, load
from agents.stats import DEFAULT_RESAMPLES

__all__ = ["MergeError", "merge_leaderboards", "read_inputs"]

#: Episode fields that the episode's seed determines (``wall_s`` is the machine's, not compared).
_EPISODE_KEYS = ("reward", "decisions", "reward_terms", "metrics")


class MergeError(ValueError):
    """Leaderboards that cannot be merged into one (the message names the files)."""


def read_inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, dict]]:
    """``(name as given, leaderboard dict)`` per input, validated, in sorted path order.

    A directory stands for its ``leaderboard.json``. Missing files, invalid JSON and schema
    violations raise (FileNotFoundError / :class:`agents.schemas.SchemaError`) naming the file
    and the key path.
    """
    if not paths:
        raise MergeError("--merge: give at least one leaderboard.json")
    files: dict[str, str] = {}  # resolved path -> as given
    for p in paths:
        path = Path(p) / "leaderboard.json" if Path(p).is_dir() else Path(p)
        key = str(path.resolve())
        if key in files:
            raise MergeError(f"{p}: given twice (as {files[key]})")
        files[key] = str(p)
    out = []
    for key in sorted(files):
        path = Path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{files[key]}: no such file")
        if path.suffix != ".json":  # schemas.load would read it as YAML
            raise MergeError(f"{files[key]}: expected a leaderboard .json file")
        out.append((files[key], load(LeaderboardFile, path).model_dump(mode="json")))
    return out


def _same_everywhere(inputs, what: str, get) -> object:
    """The value `get(lb)` of every input, which must be the same in all."""
    first_name, first = inputs[0][0], get(inputs[0][1])
    for name, lb in inputs[1:]:
        if get(lb) != first:
            raise MergeError(f"{first_name} and {name} differ in {what} ({first!r} vs {get(lb)!r}): "
                             "their episodes are not of the same benchmark")
    return first


def _episodes(inputs) -> list[dict]:
    """Every episode record once (the first file's, in input order)."""
    records: dict[tuple, dict] = {}
    source: dict[tuple, str] = {}
    for name, lb in inputs:
        for ep in lb["episodes"]:
            key = (ep["policy"], ep["scenario"], ep["seed"])
            if key not in records:
                records[key], source[key] = ep, name
                continue
            old = records[key]
            differs = [k for k in _EPISODE_KEYS if old[k] != ep[k]]
            if differs:
                what = (f"reward {old['reward']!r} in {source[key]} but {ep['reward']!r} in {name}"
                        if "reward" in differs else
                        f"same reward but different {', '.join(differs)} in {source[key]} and {name}")
                raise MergeError(f"policy {key[0]!r} on {key[1]} seed {key[2]}: {what}; "
                                 "rerun one of them or leave one file out")
    return list(records.values())


def _check_seed_sets(records: list[dict], scenarios: Sequence[str], labels: Sequence[str],
                     failed: dict[tuple, str]) -> None:
    """Every policy with episodes on a scenario has the same seeds there (`failed`: episode
    key -> the file listing it as failed, to say why a seed is missing)."""
    seeds: dict[str, dict[str, set[int]]] = {}
    for r in records:
        seeds.setdefault(r["scenario"], {}).setdefault(r["policy"], set()).add(r["seed"])
    for sc in scenarios:
        have = seeds.get(sc, {})
        union = set().union(*have.values()) if have else set()
        for label in labels:
            if label in have and have[label] != union:
                missing = sorted(union - have[label])
                others = [p for p in labels if p in have and have[p] & set(missing)]
                why = sorted({failed[k] for s in missing if (k := (label, sc, s)) in failed})
                raise MergeError(
                    f"scenario {sc}: policy {label!r} lacks seeds {missing} that "
                    f"{', '.join(repr(p) for p in others)} {'has' if len(others) == 1 else 'have'} "
                    "(normalized scores and paired comparisons need every policy on the same seeds; "
                    f"evaluate {label!r} on them, or merge without them)"
                    + (f"; they failed in {', '.join(why)}" if why else ""))


def merge_leaderboards(
    paths: Sequence[str | os.PathLike], resamples: int = DEFAULT_RESAMPLES,
) -> tuple[dict, list[str]]:
    """The leaderboard of all episodes of the `paths` (``leaderboard.json`` files or their
    directories), and warnings to show (different gridenv versions).

    Raises :class:`MergeError` (a ValueError) or FileNotFoundError naming the file(s) when
    the inputs cannot be merged (see the module docstring).
    """
    inputs = read_inputs(paths)
    overrides = _same_everywhere(inputs, "suite overrides", lambda lb: lb["suite"]["overrides"])
    warnings = []
    versions = sorted({lb["gridenv_version"] for _, lb in inputs})
    if len(versions) > 1:
        by = {v: [n for n, lb in inputs if lb["gridenv_version"] == v] for v in versions}
        warnings.append("merging leaderboards of different gridenv versions: " + "; ".join(
            f"{v} ({', '.join(by[v])})" for v in versions) + "; their numbers may not be comparable")

    scenarios: list[str] = []
    scenario_files: dict[str, str] = {}
    file_of: dict[str, str] = {}  # scenario -> the input its YAML path came from
    spec: dict[str, tuple[str, str]] = {}  # label -> (spec, file)
    labels: list[str] = []
    for name, lb in inputs:
        s = lb["suite"]
        for sc in s["scenarios"]:
            if sc not in scenarios:
                scenarios.append(sc)
        for sc, f in s["scenario_files"].items():
            file_of.setdefault(sc, name)
            if scenario_files.setdefault(sc, f) != f:
                raise MergeError(f"scenario {sc} is the file {scenario_files[sc]} in {file_of[sc]} "
                                 f"but {f} in {name}: not the same scenario")
        # the evaluation's policy order: results (and episodes) follow it; the ranking does not
        ordered = [r["policy"] for r in lb["results"]] + [e["policy"] for e in lb["episodes"]]
        kinds = {p["name"]: p["spec"] for p in lb["policies"]}
        for e in lb["episodes"]:  # a file evaluate.py wrote always passes; an edited one may not
            if e["policy"] not in kinds:
                raise MergeError(f"{name}: episodes.policy {e['policy']!r} is not in its policies")
            if e["scenario"] not in s["scenarios"]:
                raise MergeError(f"{name}: episodes.scenario {e['scenario']!r} is not in its suite.scenarios")
        for label in [*ordered, *kinds]:
            if label not in labels:
                labels.append(label)
        for label, sp in kinds.items():
            old = spec.setdefault(label, (sp, name))
            if old[0] != sp:
                raise MergeError(f"policy {label!r} is {old[0]!r} in {old[1]} but {sp!r} in {name}; "
                                 "label one of them differently (label=spec)")

    records = _episodes(inputs)
    failed = {}
    for name, lb in inputs:
        for f in lb["failures"]:
            failed.setdefault((f["policy"], f["scenario"], f["seed"]), name)
    _check_seed_sets(records, scenarios, labels, failed)
    for sc in scenarios:
        if not any(r["scenario"] == sc and spec[r["policy"]][0] == REFERENCE_POLICY for r in records):
            where = [n for n, lb in inputs if sc in lb["suite"]["scenarios"]]
            raise MergeError(f"scenario {sc}: no {REFERENCE_POLICY!r} episodes in {', '.join(where)} "
                             f"({REFERENCE_POLICY} is the 0 of the normalized score; evaluate.py "
                             f"adds it to every run)")

    done = {(r["policy"], r["scenario"], r["seed"]) for r in records}
    ran = {(r["policy"], r["scenario"]) for r in records}
    failures, skipped = {}, {}
    for _, lb in inputs:  # what no input has: still failed, still skipped
        for f in lb["failures"]:
            key = (f["policy"], f["scenario"], f["seed"])
            if key not in done:
                failures.setdefault(key, f)
        for s in lb["skipped"]:
            if (s["policy"], s["scenario"]) not in ran:
                skipped.setdefault((s["policy"], s["scenario"]), s)
    order = {x: i for i, x in enumerate(labels)}, {x: i for i, x in enumerate(scenarios)}

    def rank(key):
        return (order[0].get(key[0], len(order[0])), key[0], order[1].get(key[1], len(order[1])), key[1:])

    seeds = tuple(sorted({r["seed"] for r in records}
                         | {s for _, lb in inputs for s in lb["suite"]["seeds"]}))
    names = ", ".join(f"{n} (suite {lb['suite']['name']})" for n, lb in inputs)
    suite_names = list(dict.fromkeys(lb["suite"]["name"] for _, lb in inputs))
    suite = Suite(f"merge of {'+'.join(suite_names)}", f"merge of {len(inputs)} leaderboards: {names}",
                  tuple(scenarios), seeds, overrides, scenario_files)
    policies = [PolicyEntry(label, spec[label][0]) for label in labels]
    lb = aggregate(records, policies, suite, resamples=resamples,
                   failures=[failures[k] for k in sorted(failures, key=rank)],
                   skipped=[skipped[k] for k in sorted(skipped, key=rank)])
    return lb, warnings
