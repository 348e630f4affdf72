"""Strict YAML for configuration files: duplicate keys are an error, and every key's line is kept.

PyYAML's ``safe_load`` silently keeps the last of two equal keys in a mapping (``rate_rps: 10``
then ``rate_rps: 40`` loads as 40 without a word). :func:`load_yaml` composes the document with
a :class:`yaml.SafeLoader`, walks the node tree once to reject duplicate keys (naming both lines)
and to record the line of every key path, then constructs the usual Python objects.

    data, lines = load_yaml(text, source="metro.yaml")
    lines[("workload", "rate_rps")]  # -> 35 (1-based)

Key paths use the YAML keys and, for sequences, integer indices (``("sites", 2, "gpu")``), the
same shape as pydantic's error locations, so a validation error can be traced to its line.

JSON has the same trap (``json.loads`` keeps the last of two equal keys): :func:`unique_keys` is
the ``object_pairs_hook`` that turns it into :class:`DuplicateKeyError` (trace records, router
bodies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["StrictYAMLError", "YAMLFileError", "load_yaml", "load_yaml_file", "read_text", "line_of",
           "format_validation_error", "DuplicateKeyError", "unique_keys"]

#: Key path -> 1-based line of the key (for sequence items: the item's first line).
LineMap = dict[tuple, int]


class StrictYAMLError(ValueError):
    """Malformed YAML or a duplicate key; the message names the source and the line."""


#: The name agents.schemas catches (the same error).
YAMLFileError = StrictYAMLError


def _scalar_key(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    key = loader.construct_object(node, deep=True)
    try:
        hash(key)
    except TypeError:
        raise StrictYAMLError(f"line {node.start_mark.line + 1}: unhashable mapping key") from None
    return key


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, lines: LineMap, source: str) -> None:
    """Record key lines under `path`; raise on a duplicate key (merge keys ``<<`` are refused)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise StrictYAMLError(f"{source} line {line}: YAML merge keys ('<<') are not supported")
            key = _scalar_key(loader, key_node)
            if key in seen:
                shown = ".".join(str(p) for p in (*path, key))
                raise StrictYAMLError(
                    f"{source} line {line}: duplicate key {shown!r} (first given on line {seen[key]})"
                )
            seen[key] = line
            lines[(*path, key)] = line
            _walk(loader, value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(loader, item, (*path, i), lines, source)


def load_yaml(text: str, source: str = "<string>") -> tuple[Any, LineMap]:
    """Parse one YAML document strictly; returns (data, key path -> line). Empty text -> None."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: LineMap = {}
        _walk(loader, node, (), lines, source)
        loader.constructed_objects = {}
        return loader.construct_document(node), lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source} line {mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e)
        raise StrictYAMLError(f"{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()


def line_of(lines: LineMap, path: tuple) -> int | None:
    """Line of `path`, or of its nearest ancestor that has one (a missing field: its parent)."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file; :class:`StrictYAMLError` naming the file and line when it is
    not UTF-8 (a binary file given for a YAML or JSON one), instead of a bare codec error."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise StrictYAMLError(f"{path} line {line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


class DuplicateKeyError(Exception):
    """A JSON object gives a key twice; ``key`` is the key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(text, object_pairs_hook=unique_keys)``: each object as a dict, and
    :class:`DuplicateKeyError` for a key given twice (json would keep the last value in silence)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return out


def load_yaml_file(path: str | os.PathLike) -> Any:
    """The data of a YAML file, strictly (:func:`load_yaml`); FileNotFoundError if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return load_yaml(read_text(path), str(path))[0]


def format_validation_error(err, where: str) -> str:
    """``where: key.path: what is wrong (got value)``, one clause per error of a pydantic
    ValidationError (files validated by agents.schemas, RandomGridSpec.from_dict)."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "union[")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (a typo? see python -m gridenv schemas)"
        got = "" if e["type"] in ("missing", "value_error", "extra_forbidden") \
            or isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        parts.append(f"{loc or '(top level)'}: {msg}{got}")
    return f"{where}: " + "; ".join(dict.fromkeys(parts))
