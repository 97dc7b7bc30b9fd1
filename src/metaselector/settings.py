"""Declared settings: each one's type and range written once, next to its default, and checked
when a configuration is read, before any work (in the manner of scikit-learn's parameter
constraints). A settings class is a dataclass whose fields are made with `setting(...)`.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """lo <= x <= hi (either end may be None, or open)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: float) -> str | None:
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high or (isinstance(value, float) and not math.isfinite(value)):
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts) or "finite"


@dataclass(frozen=True)
class Options:
    values: tuple[str, ...]

    def check(self, value: str) -> str | None:
        return None if value in self.values else f"must be one of {', '.join(self.values)}"


POSITIVE = Interval(0, None, lo_open=True)
AT_LEAST_ONE = Interval(1)
NON_NEGATIVE = Interval(0)
FRACTION_OPEN = Interval(0, 1, lo_open=True, hi_open=True)  # strictly between 0 and 1


def setting(default, check: Interval | Options | None = None, non_empty: bool = False):
    """A settings field; lists are copied per instance. `check` applies to a list's items."""
    metadata = {"check": check, "non_empty": non_empty}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _type_error(value, expected: type) -> bool:
    if expected is bool:
        return not isinstance(value, bool)
    if expected is int:
        return isinstance(value, bool) or not isinstance(value, int)
    if expected is float:
        return isinstance(value, bool) or not isinstance(value, (int, float))
    return not isinstance(value, expected)


def _check_value(name: str, value, hint, meta: dict, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`: unset is None (TOML has no null)
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_value(name, value, hint, meta, where)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: setting '{name}' must be a list of {item_type.__name__}, got {value!r}")
        if meta.get("non_empty") and not value:
            raise ConfigError(f"{where}: setting '{name}' must not be empty")
        return [_check_value(f"{name}[{i}]", v, item_type, meta, where) for i, v in enumerate(value)]
    if _type_error(value, hint):
        raise ConfigError(f"{where}: setting '{name}' must be {hint.__name__}, got {value!r}")
    check = meta.get("check")
    problem = check.check(value) if check is not None else None
    if problem:
        raise ConfigError(f"{where}: setting '{name}' {problem}, got {value!r}")
    return float(value) if hint is float else value


def build(cls, values: dict, where: str, prefix: str = "", moved: dict[str, str] | None = None):
    """An instance of the settings dataclass `cls` from `values` (a TOML table), every value
    type- and range-checked; nested settings classes are read from sub-tables."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            hint = f" (now {moved[prefix + key]})" if moved and prefix + key in moved else ""
            raise ConfigError(f"{where}: unknown setting '{prefix}{key}'{hint}")
        hint = hints[key]
        if is_dataclass(hint):
            out[key] = build(hint, value, where, f"{prefix}{key}.", moved)
        elif typing.get_origin(hint) is dict:  # a table of tables, e.g. [model_settings.MF]
            _, item = typing.get_args(hint)
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{prefix}{key}] must be a table, got {value!r}")
            out[key] = {name: build(item, table, where, f"{prefix}{key}.{name}.", moved)
                        for name, table in value.items()}
        else:
            out[key] = _check_value(prefix + key, value, hint, dict(known[key].metadata), where)
    return cls(**out)


def validate(instance, where: str) -> None:
    """Check every field of a settings instance built in code (the same rules as `build`)."""
    hints = typing.get_type_hints(type(instance))
    for f in fields(instance):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            validate(value, where)
        elif isinstance(value, dict):
            for item in value.values():
                if is_dataclass(item):
                    validate(item, where)
        elif f.default is not MISSING or f.default_factory is not MISSING:
            _check_value(f.name, value, hints[f.name], dict(f.metadata), where)


def merge(base: dict, override: dict) -> dict:
    """`override` laid over `base`, tables merged key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
