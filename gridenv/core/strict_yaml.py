"""YAML for configuration files: duplicate keys are an error, and errors name file and line.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word; a config where a key
was pasted twice then silently means something else. :func:`load_yaml` refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_yaml", "load_yaml_file", "YAMLFileError"]


class YAMLFileError(ValueError):
    """A file that is not valid YAML, or holds a duplicate key (the message names file and line)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let PyYAML report it
            break
        if duplicate:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, where: str = "<string>") -> Any:
    """Parse `text`; :class:`YAMLFileError` naming `where` and the line on bad YAML or a duplicate key."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise YAMLFileError(f"{where}{line}: {'invalid YAML: ' if 'duplicate' not in problem else ''}{problem}") from None


def load_yaml_file(path: str | os.PathLike) -> Any:
    """:func:`load_yaml` of a file (FileNotFoundError if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return load_yaml(path.read_text(), str(path))
