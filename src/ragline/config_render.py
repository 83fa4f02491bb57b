"""The settings as text: the commented example file, and the effective settings with secrets masked.

``ragline.example.yaml`` is generated from the settings model by ``example_yaml()``
(``ragline config example``), so it lists every setting with its real default and the
description written next to the field in ``config.py``. ``effective_yaml()`` is what
``ragline config show`` prints: file + environment + defaults, secrets masked.
"""

from __future__ import annotations

import json
import re
import textwrap
import types
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ragline.config import Settings

MASK = "***"
_WIDTH = 100

_HEADER = """\
# ragline settings: every setting with its default. Copy this file, keep what you change,
# and pass it with `ragline --config ragline.yaml ...` (or set RAGLINE_CONFIG=ragline.yaml).
# Environment variables override this file: RAGLINE_ANSWER__TOP_K=5 sets answer.top_k.
# An unknown or misspelt key is refused at start-up. docs/CONFIGURATION.md explains each setting.
# Generated from the settings model by `ragline config example`; do not edit by hand.
"""

#: Defaults that depend on the machine: shown as a comment, not as a value.
_MACHINE_DEFAULTS = {"data_dir": "$XDG_DATA_HOME/ragline, or ~/.local/share/ragline"}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _choices(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return [c for arg in get_args(annotation) for c in _choices(arg)]
    return []


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, SecretStr):
        value = MASK
    text = json.dumps(value) if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
    return text.strip().removesuffix("...").strip()


def _comment(text: str, indent: str) -> Iterator[str]:
    for line in textwrap.wrap(" ".join(text.split()), _WIDTH - len(indent) - 2):
        yield f"{indent}# {line}"


def _describe(info: FieldInfo) -> str:
    text = (info.description or "").strip()
    choices = _choices(info.annotation)
    if choices:
        text = f"{text} One of: {' | '.join(str(c) for c in choices)}.".strip()
    return text


def _default(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _render_model(model: type[BaseModel], indent: str, commented: bool = False) -> Iterator[str]:
    for name, info in model.model_fields.items():
        yield from _render_field(name, info, indent, commented)


def _render_field(name: str, info: FieldInfo, indent: str, commented: bool) -> Iterator[str]:
    """One setting: its description as a comment, then ``key: default`` (sections nested).

    ``commented``: ``indent`` already holds a ``#`` (the fields of a list or dict entry, shown
    commented out).
    """
    yield from _comment(_describe(info), indent)
    nested = _model_of(info.annotation)
    default = _default(info)
    if name in _MACHINE_DEFAULTS:
        yield f"{indent}# {name}: {_MACHINE_DEFAULTS[name]}"
    elif default is PydanticUndefined:
        yield f"{indent}{name}:  # required"
    elif isinstance(default, BaseModel):
        yield f"{indent}{name}:"
        yield from _render_model(type(default), indent + "  ", commented)
    elif nested is not None and isinstance(default, list | dict) and not default:
        # an empty list/dict of sub-settings: the value, then one commented-out entry's fields
        yield f"{indent}{name}: {'[]' if isinstance(default, list) else '{}'}"
        inner = indent if commented else f"{indent}# "
        if isinstance(default, list):
            yield f"{inner}{name}:  (each entry has these fields)"
            yield f"{inner}  -"
        else:
            yield f"{inner}{name}:  (each entry, under its name, has these fields)"
            yield f"{inner}  NAME:"
        yield from _render_model(nested, inner + "    ", commented=True)
    else:
        yield f"{indent}{name}: {_scalar(default)}"


def example_yaml() -> str:
    """The commented example settings file (``ragline.example.yaml``)."""
    lines = [_HEADER.rstrip("\n")]
    for name, info in Settings.model_fields.items():
        lines.append("")
        lines.extend(_render_field(name, info, "", commented=False))
    return "\n".join(lines) + "\n"


#: Query parameters and libpq ``key=value`` words that hold a secret, compared in lower case with
#: ``-`` read as ``_``: these names exactly, or any name containing one of ``_SECRET_PARTS``.
_SECRET_PARAMS = frozenset({"key", "pass", "pwd", "auth", "sig", "signature", "credential", "credentials"})
_SECRET_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey", "access_key", "private_key")
#: A libpq connection string's ``password=...`` (a value quoted in '...' may hold spaces).
_DSN_SECRET = re.compile(r"(?i)\b(password|passwd|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)")


def _is_secret_param(name: str) -> bool:
    name = unquote_plus(name).strip().lower().replace("-", "_")
    return name in _SECRET_PARAMS or any(part in name for part in _SECRET_PARTS)


def _mask_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        pairs.append(f"{name}={MASK}" if eq and _is_secret_param(name) else pair)
    return "&".join(pairs)


def _mask_url(url: str) -> str:
    """The URL with its user/password part and the values of secret-looking query parameters masked.

    Works on the URL's text (no port is parsed): a URL the settings would refuse still prints.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _mask_query(parts.query) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_dsn(dsn: str) -> str:
    """A libpq ``key=value`` connection string (``host=db password=...``) with its password masked."""
    return _DSN_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", dsn)


_SECRET_NAMES = ("api_key", "password", "secret", "token_value")


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if value is not None and any(s in key for s in _SECRET_NAMES) and not key.endswith("_env"):
        return MASK
    if isinstance(value, str) and "://" in value:
        return _mask_url(value)
    if isinstance(value, str) and (key == "url" or key.endswith("_url")) and "=" in value:
        return _mask_dsn(value)
    return value


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (file + environment + defaults), every secret masked."""
    data = settings.model_dump(mode="json")
    return dict(_masked(data))


def effective_yaml(settings: Settings) -> str:
    return yaml.safe_dump(effective_settings(settings), sort_keys=False, allow_unicode=True)
