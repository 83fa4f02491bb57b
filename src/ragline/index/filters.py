"""Backend-neutral metadata filters and their command-line syntax.

``field=value``   equality (``field=a|b`` matches any of the values)
``field!=value``  must not equal
``field>=v``, ``field>v``, ``field<=v``, ``field<v``  ranges on numbers or ISO dates
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from ragline.errors import InvalidFilter

Op = Literal["eq", "in", "gt", "gte", "lt", "lte"]
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    op: Op
    value: Scalar | tuple[Scalar, ...]

    @property
    def is_datetime(self) -> bool:
        return isinstance(self.value, str) and _parse_datetime(self.value) is not None


@dataclass(slots=True)
class Filter:
    must: list[Condition] = field(default_factory=list)
    must_not: list[Condition] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.must or self.must_not)

    def and_(self, other: Filter | None) -> Filter:
        if not other:
            return Filter(list(self.must), list(self.must_not))
        return Filter([*self.must, *other.must], [*self.must_not, *other.must_not])


_EXPR = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")
_OPS: dict[str, Op] = {">=": "gte", "<=": "lte", ">": "gt", "<": "lt"}


def _parse_datetime(v: str) -> datetime | None:
    if not re.match(r"^\d{4}-\d{2}-\d{2}", v):
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        try:
            d = date.fromisoformat(v)
        except ValueError:
            return None
        return datetime(d.year, d.month, d.day)


def coerce(value: str) -> Scalar:
    """'3' -> 3, '2.5' -> 2.5, 'true' -> True; anything else stays a string."""
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", value):
        return float(value)
    return value


def parse_filters(exprs: list[str] | None) -> Filter:
    flt = Filter()
    for expr in exprs or []:
        m = _EXPR.match(expr)
        if not m or not m.group(3):
            raise InvalidFilter(
                f"cannot parse filter {expr!r}: use field=value, field!=value, field>=value, field<value"
            )
        key, op, raw = m.groups()
        if op in ("=", "!="):
            values = tuple(coerce(v.strip()) for v in raw.split("|")) if "|" in raw else None
            cond = Condition(key, "in", values) if values else Condition(key, "eq", coerce(raw))
            (flt.must if op == "=" else flt.must_not).append(cond)
        else:
            value = coerce(raw)
            if isinstance(value, bool) or (isinstance(value, str) and _parse_datetime(value) is None):
                raise InvalidFilter(f"range filter {expr!r} needs a number or an ISO date (YYYY-MM-DD)")
            flt.must.append(Condition(key, _OPS[op], value))
    return flt


def normalize_datetime(value: str) -> str:
    dt = _parse_datetime(value)
    if dt is None:
        raise InvalidFilter(f"not an ISO date: {value!r}")
    return dt.isoformat()
