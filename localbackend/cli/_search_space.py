"""Search spaces: from a JSON file and from ``-p name=spec`` options.

A spec is one of ``uniform(0,0.5)``, ``loguniform(1e-4,1e-1)``,
``int(16,256)``, ``choice(sgd,adam)``, or a plain value such as ``10``,
``0.1``, ``true`` or ``adam`` that every trial gets unchanged. In a JSON file
a value is the same spec as a string, an object such as
``{"type": "uniform", "lower": 0, "upper": 0.5}``, or any other JSON value,
which is fixed.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..core._command import OPTION_NAME
from ._common import CliError

_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)
_FUNCTIONS = ("uniform", "loguniform", "int", "choice")
# The start of a spec, ``name(``: with a known name, the rest must be a spec too.
_OPENED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_EXAMPLES = "uniform(0,0.5), loguniform(1e-4,1e-1), int(16,256), choice(sgd,adam) or a plain value"
# PBT's explore step: multiply by one of these, or resample with this probability.
_PERTURB_FACTORS = (0.8, 1.2)
RESAMPLE_PROBABILITY = 0.25


@dataclass(frozen=True)
class Uniform:
    lower: float
    upper: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.lower, self.upper)

    def perturb(self, value: Any, rng: random.Random) -> float:
        if rng.random() < RESAMPLE_PROBABILITY or not isinstance(value, (int, float)):
            return self.sample(rng)
        return min(self.upper, max(self.lower, float(value) * rng.choice(_PERTURB_FACTORS)))

    def spec(self) -> str:
        return f"uniform({self.lower:g},{self.upper:g})"

    def to_json(self) -> dict[str, Any]:
        return {"type": "uniform", "lower": self.lower, "upper": self.upper}


@dataclass(frozen=True)
class LogUniform:
    lower: float
    upper: float

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.lower), math.log(self.upper)))

    def perturb(self, value: Any, rng: random.Random) -> float:
        if rng.random() < RESAMPLE_PROBABILITY or not isinstance(value, (int, float)):
            return self.sample(rng)
        return min(self.upper, max(self.lower, float(value) * rng.choice(_PERTURB_FACTORS)))

    def spec(self) -> str:
        return f"loguniform({self.lower:g},{self.upper:g})"

    def to_json(self) -> dict[str, Any]:
        return {"type": "loguniform", "lower": self.lower, "upper": self.upper}


@dataclass(frozen=True)
class Integer:
    lower: int
    upper: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.lower, self.upper)

    def perturb(self, value: Any, rng: random.Random) -> int:
        if rng.random() < RESAMPLE_PROBABILITY or not isinstance(value, (int, float)):
            return self.sample(rng)
        scaled = round(float(value) * rng.choice(_PERTURB_FACTORS))
        return min(self.upper, max(self.lower, scaled))

    def spec(self) -> str:
        return f"int({self.lower},{self.upper})"

    def to_json(self) -> dict[str, Any]:
        return {"type": "int", "lower": self.lower, "upper": self.upper}


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def perturb(self, value: Any, rng: random.Random) -> Any:
        if rng.random() < RESAMPLE_PROBABILITY:
            return self.sample(rng)
        return value

    def spec(self) -> str:
        return "choice(" + ",".join(str(v) for v in self.values) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


Domain = Union[Uniform, LogUniform, Integer, Choice]
DOMAIN_TYPES = (Uniform, LogUniform, Integer, Choice)


class SearchSpace:
    """Hyperparameters to sample, and values every trial gets unchanged."""

    def __init__(self, entries: Mapping[str, Any]) -> None:
        self.entries: dict[str, Any] = dict(entries)

    @property
    def domains(self) -> dict[str, Domain]:
        return {k: v for k, v in self.entries.items() if isinstance(v, DOMAIN_TYPES)}

    @property
    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.entries.items() if not isinstance(v, DOMAIN_TYPES)}

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {
            name: entry.sample(rng) if isinstance(entry, DOMAIN_TYPES) else entry
            for name, entry in self.entries.items()
        }

    def describe(self) -> str:
        parts = []
        for name, entry in self.entries.items():
            shown = entry.spec() if isinstance(entry, DOMAIN_TYPES) else json.dumps(entry)
            parts.append(f"{name}={shown}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            name: entry.to_json() if isinstance(entry, DOMAIN_TYPES) else {"value": entry}
            for name, entry in self.entries.items()
        }

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> SearchSpace:
        """Rebuild what ``to_json`` wrote (for ``--resume``)."""
        entries: dict[str, Any] = {}
        for name, entry in saved.items():
            if isinstance(entry, dict) and "value" in entry and "type" not in entry:
                entries[name] = entry["value"]
            else:
                entries[name] = _domain_from_object(name, entry, "the saved tuner state")
        return cls(entries)


def build_search_space(
    config_file: str | None, params: Iterable[str], *, option: str = "-p"
) -> SearchSpace:
    """The JSON file's entries, then each ``-p`` option (which wins on a clash)."""
    entries: dict[str, Any] = {}
    if config_file is not None:
        entries.update(load_search_space_file(config_file))
    for param in params:
        name, entry = parse_param(param, option=option)
        entries[name] = entry
    return SearchSpace(entries)


def load_search_space_file(path_text: str) -> dict[str, Any]:
    path = Path(path_text).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"search space file {path_text!r} does not exist; check the path") from None
    except OSError as err:
        raise CliError(f"cannot read search space file {path_text!r}: {err.strerror}") from err
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(
            f"search space file {path_text!r} is not valid JSON (line {err.lineno}, column "
            f"{err.colno}: {err.msg}); it must be an object such as "
            '{"lr": "loguniform(1e-4,1e-1)", "epochs": 10}'
        ) from err
    if not isinstance(raw, dict):
        raise CliError(
            f"search space file {path_text!r} holds a {type(raw).__name__}, not an object; "
            'write it as {"name": spec, ...}, e.g. {"lr": "loguniform(1e-4,1e-1)", "epochs": 10}'
        )
    where = f"search space file {path_text!r}"
    entries: dict[str, Any] = {}
    for name, value in raw.items():
        _check_name(name, where)
        if isinstance(value, str):
            entries[name] = parse_spec(name, value, where)
        elif isinstance(value, dict) and "type" in value:
            entries[name] = _domain_from_object(name, value, where)
        else:
            entries[name] = _check_finite(name, value, where)
    return entries


def parse_param(param: str, *, option: str = "-p") -> tuple[str, Any]:
    """``name=spec`` from the command line."""
    name, sep, spec = param.partition("=")
    name = name.strip()
    if not sep or not name:
        raise CliError(
            f"{option} {param!r} is not name=spec; write e.g. {option} lr=loguniform(1e-4,1e-1) "
            f"or {option} epochs=10"
        )
    where = f"{option} {param!r}"
    _check_name(name, where)
    return name, parse_spec(name, spec, where)


def parse_spec(name: str, spec: str, where: str) -> Any:
    """A domain for ``uniform(...)`` and friends, else the plain value."""
    match = _SPEC.match(spec)
    if match is None:
        opened = _OPENED.match(spec)
        if opened is not None and opened.group(1).lower() in _FUNCTIONS:
            # A spec with a typo is refused, not tuned over as a plain string.
            raise CliError(f"{where}: {opened.group(1).lower()}(...) is not closed in "
                           f"{spec.strip()!r}; use one of {_EXAMPLES}")
        return _plain_value(name, spec.strip(), where)
    function = match.group(1).lower()
    args = [part.strip() for part in match.group(2).split(",")] if match.group(2).strip() else []
    if function not in _FUNCTIONS:
        raise CliError(
            f"{where}: unknown spec {match.group(1)}(...); use one of {_EXAMPLES}"
        )
    if function == "choice":
        if not args or any(not arg for arg in args):
            raise CliError(
                f"{where}: choice needs one or more comma-separated values, e.g. choice(sgd,adam)"
            )
        return Choice(tuple(_plain_value(name, arg, where) for arg in args))
    if len(args) != 2:
        raise CliError(
            f"{where}: {function} needs two numbers, lower and upper, "
            f"e.g. {function}({'16,256' if function == 'int' else '0.001,0.1'})"
        )
    if function == "int":
        low_i, high_i = (_int_arg(arg, function, where) for arg in args)
        return _make_domain(name, function, low_i, high_i, where)
    low, high = (_number_arg(arg, function, where) for arg in args)
    return _make_domain(name, function, low, high, where)


def _make_domain(name: str, function: str, low: float, high: float, where: str) -> Domain:
    if not low < high:
        raise CliError(f"{where}: {function} needs lower < upper, got {low:g} and {high:g}")
    if function == "uniform":
        return Uniform(float(low), float(high))
    if function == "loguniform":
        if low <= 0:
            raise CliError(
                f"{where}: loguniform needs a lower bound > 0, got {low:g}; "
                "use e.g. loguniform(1e-4,1e-1), or uniform for ranges that include 0"
            )
        return LogUniform(float(low), float(high))
    return Integer(int(low), int(high))


def _domain_from_object(name: str, obj: Any, where: str) -> Domain:
    if not isinstance(obj, dict):
        raise CliError(f"{where}: entry {name!r} is not a domain object: {obj!r}")
    kind = obj.get("type")
    try:
        if kind == "choice":
            values = obj["values"]
            if not isinstance(values, list) or not values:
                raise CliError(
                    f'{where}: entry {name!r}: "values" of a choice must be a non-empty list'
                )
            return Choice(tuple(_check_finite(name, v, where) for v in values))
        if kind in ("uniform", "loguniform", "int"):
            low, high = obj["lower"], obj["upper"]
            for bound in (low, high):
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise CliError(
                        f"{where}: entry {name!r}: lower and upper must be numbers, got {bound!r}"
                    )
            if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
                raise CliError(
                    f"{where}: entry {name!r}: int bounds must be whole numbers, got {low!r}, "
                    f"{high!r}"
                )
            return _make_domain(name, str(kind), low, high, f"{where}: entry {name!r}")
    except KeyError as missing:
        raise CliError(
            f"{where}: entry {name!r} of type {kind!r} lacks {missing}; write e.g. "
            '{"type": "uniform", "lower": 0, "upper": 0.5} or {"type": "choice", "values": [1, 2]}'
        ) from None
    raise CliError(
        f"{where}: entry {name!r} has unknown type {kind!r}; use uniform, loguniform, int or choice"
    )


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not OPTION_NAME.fullmatch(name):
        raise CliError(
            f"{where}: {name!r} cannot be an option name of the script; use letters, digits, "
            "'_', '-' and '.', starting with a letter or '_'"
        )


def _plain_value(name: str, text: str, where: str) -> Any:
    """``10`` -> 10, ``0.1`` -> 0.1, ``true`` -> True, ``[1,2]`` -> list, else the string."""
    if text in ("True", "False"):
        return text == "True"
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return _check_finite(name, value, where)


def _check_finite(name: str, value: Any, where: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise CliError(
            f"{where}: {name} = {value!r} is not a finite number; trials cannot receive NaN or "
            "infinity"
        )
    return value


def _number_arg(text: str, function: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"{where}: {function} bound {text!r} is not a number") from None
    if not math.isfinite(value):
        raise CliError(f"{where}: {function} bound {text!r} is not a finite number")
    return value


def _int_arg(text: str, function: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(
            f"{where}: {function} bound {text!r} is not a whole number; use e.g. int(16,256)"
        ) from None
