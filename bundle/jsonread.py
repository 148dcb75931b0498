"""Strict reading of manifest.json values: every error is a `BundleError` naming manifest.json and the
key path ("manifest.json: routers.mf.params.d_model: expected int, got str").

`Node` wraps one JSON object: typed getters by key, and `close()` rejects the keys nobody read. The
manifest parser (`lmroute.bundle.manifest`) and the router kinds' params (`lmroute.bundle.kinds`) both
read through it, so every part of the file reports errors the same way.
"""

from __future__ import annotations

import math
from typing import Any

from lmroute.bundle.errors import BundleError

__all__ = ["MANIFEST_NAME", "Node", "as_float", "as_int", "as_str", "fail", "type_name", "unique_keys"]

MANIFEST_NAME = "manifest.json"


def fail(problem: str) -> BundleError:
    """A BundleError about manifest.json."""
    return BundleError(MANIFEST_NAME, problem)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads`'s object_pairs_hook refusing a key given twice in one object (json keeps the last,
    silently: a reader keeping the first would see another document): ValueError naming the key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key[:80]!r} given twice")
        out[key] = value
    return out


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type (int, float, str, list, object, bool, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    names = {int: "int", float: "float", str: "str", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def as_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise fail(f"{path}: expected str, got {type_name(value)}")
    return value


def as_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{path}: expected int, got {type_name(value)}")
    return value


def as_float(value: Any, path: str) -> float:
    """A finite float; a JSON int is accepted and read as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"{path}: expected float, got {type_name(value)}")
    out = float(value)
    if not math.isfinite(out):
        raise fail(f"{path}: not finite ({value})")
    return out


class Node:
    """A JSON object being read, with its key path for error messages; `close()` rejects unread keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise fail(f"{path or '<root>'}: expected object, got {type_name(data)}")
        self._data: dict[str, Any] = data
        self._path = path
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str) -> Any:
        if name not in self._data:
            raise fail(f"{self.key(name)}: missing")
        self._seen.add(name)
        return self._data[name]

    def keys(self) -> list[str]:
        self._seen.update(self._data)
        return list(self._data)

    def node(self, name: str) -> Node:
        return Node(self.raw(name), self.key(name))

    def str_(self, name: str) -> str:
        return as_str(self.raw(name), self.key(name))

    def int_(self, name: str) -> int:
        return as_int(self.raw(name), self.key(name))

    def float_(self, name: str) -> float:
        return as_float(self.raw(name), self.key(name))

    def bool_(self, name: str) -> bool:
        value = self.raw(name)
        if not isinstance(value, bool):
            raise fail(f"{self.key(name)}: expected bool, got {type_name(value)}")
        return value

    def list_(self, name: str) -> list[Any]:
        value = self.raw(name)
        if not isinstance(value, list):
            raise fail(f"{self.key(name)}: expected list, got {type_name(value)}")
        return value

    def close(self) -> None:
        for name in self._data:
            if name not in self._seen:
                raise fail(f"{self.key(name)}: unknown key")
