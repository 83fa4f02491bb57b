"""Optional features import their libraries lazily, and say which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ragline.errors import MissingDependency


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise MissingDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: not ours to rename
        raise MissingDependency(
            f"{feature} needs the '{module}' package, which is not installed: pip install 'ragline[{extra}]'"
        ) from e
