"""YAML for profiles: ``yaml.SafeLoader`` (no Python objects) that also refuses duplicate keys.

PyYAML keeps the last of two equal keys without a word, so a profile that says ``attacks:``
twice would silently lose the first list; here that is an error naming both lines. It also reads
numbers like ``3e-2`` as floats, as YAML 1.2 does (PyYAML's YAML 1.1 rules need ``3.0e-2`` and would
hand ``eps: 3e-2`` over as a string).
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key that appears twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: explicit keys may override it
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key (a list or mapping): the profile check refuses it
            continue
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse ``text`` like ``yaml.safe_load``, refusing duplicate mapping keys.

    Raises:
        yaml.YAMLError: invalid YAML or a duplicate key (its ``problem_mark`` says where).
    """
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
