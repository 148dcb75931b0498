"""Command-line flags derived from the fields of a frozen config dataclass (`lmroute.export.recipe.Recipe`).

Each field `name` is a flag `--name-with-dashes` whose type comes from the field's annotation and whose
help is the field's `metadata["help"]` (`knob` sets it); with an environment prefix it is also the
variable PREFIX + NAME. A flag beats the variable, the variable beats the field's default, and a value
given nowhere is left out, so the dataclass's own default applies: adding a field adds its flag.

Types: int, float, str, Path; bool (``--name`` / ``--no-name``; the variable takes 1 / 0, true / false,
yes / no, on / off); ``X | None`` (the word ``none`` or an empty string for None); and
``tuple[tuple[str, float], ...]`` (``name=value,name=value``; an empty string for none).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Flag", "add_flags", "flags_of", "format_value", "knob", "parse_pairs", "values_from"]

Pairs = tuple[tuple[str, float], ...]


def knob(default: Any, help: str) -> Any:
    """A dataclass field with a default and a description (the flag's help)."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_pairs(text: str) -> Pairs:
    """``"a=1,b=0.5"`` -> (("a", 1.0), ("b", 0.5)); ``""`` -> ()."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"expected name=value, got {part!r}")
        out.append((name.strip(), number))
    return tuple(out)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else parse(text)

    return parse_or_none


_PARSERS: dict[Any, tuple[Callable[[str], Any], str]] = {
    int: (int, "INT"),
    float: (float, "FLOAT"),
    str: (str, "TEXT"),
    bool: (_parse_bool, "BOOL"),
    Path: (Path, "PATH"),
    Pairs: (parse_pairs, "NAME=VALUE,..."),
}


def format_value(value: Any) -> str:
    """A value as its flag would take it: pairs as ``a=1,b=0.5``, None as ``none``."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(f"{k}={v:g}" for k, v in value) or "''"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Flag:
    """One field of a config dataclass as the command line and the environment see it.

    parse: text -> value (the flag's argument or the variable's text); env: the variable, "" when the
    command reads none; is_bool: the flag is ``--x`` / ``--no-x``."""

    name: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    metavar: str
    is_bool: bool
    default: Any
    help: str


def flags_of(cls: type, *, env_prefix: str | None = None, skip: Collection[str] = ()) -> tuple[Flag, ...]:
    """The flags of the fields of dataclass `cls` (minus `skip`), in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind = hints[f.name]
        optional = False
        args = typing.get_args(kind)
        if isinstance(kind, types.UnionType) and len(args) == 2 and type(None) in args:
            kind, optional = next(a for a in args if a is not type(None)), True
        if kind not in _PARSERS:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {kind}")
        parse, metavar = _PARSERS[kind]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: a flag needs a default")
        out.append(
            Flag(
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                env="" if env_prefix is None else env_prefix + f.name.upper(),
                parse=_optional(parse) if optional else parse,
                metavar=metavar,
                is_bool=kind is bool,
                default=default,
                help=f.metadata.get("help", ""),
            )
        )
    return tuple(out)


def _argparse_type(flag: Flag) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return flag.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    env_prefix: str | None = None,
    skip: Collection[str] = (),
) -> None:
    """One flag per field of `cls` (minus `skip`); each stores under the field's name, None when not given."""
    for flag in flags_of(cls, env_prefix=env_prefix, skip=skip):
        where = f"default {format_value(flag.default)}" + (f"; env {flag.env}" if flag.env else "")
        help_text = f"{flag.help} [{where}]".replace("%", "%%")
        if flag.is_bool:
            parser.add_argument(
                flag.flag, dest=flag.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag.flag,
                dest=flag.name,
                type=_argparse_type(flag),
                default=None,
                metavar=flag.metavar,
                help=help_text,
            )


def values_from(
    args: argparse.Namespace,
    cls: type,
    *,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    skip: Collection[str] = (),
) -> dict[str, Any]:
    """{field: value} of the fields of `cls` given as a flag (first) or a variable (second); fields given
    nowhere are left out. Raises ValueError naming the variable when its text does not parse."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for flag in flags_of(cls, env_prefix=env_prefix, skip=skip):
        value = getattr(args, flag.name, None)
        if value is not None:
            out[flag.name] = value
        elif flag.env and flag.env in env:
            try:
                out[flag.name] = flag.parse(env[flag.env])
            except ValueError as exc:
                raise ValueError(f"{flag.env}: {exc}") from None
    return out
