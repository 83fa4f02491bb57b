"""Which collections a tenant sees: its own, under the names it gave them.

A tenant's collection ``docs`` is stored as ``<tenant>~docs`` (``collection.TENANT_SEP``); the
default tenant's under its own name, so the embedded single-user layout (``ragline ingest``, then
``ragline serve``) is the default tenant's. No collection name a client sends can hold the
separator, so no name reaches another tenant's collection, and another tenant's collection is
"not found", never "forbidden": its existence does not leak.
"""

from __future__ import annotations

from ragline.collection import TENANT_SEP, validate_public_name
from ragline.engine import Engine
from ragline.server.errors import BadRequest, NotFound


class Tenancy:
    """One tenant's view of the engine's collections."""

    __slots__ = ("_engine", "_prefix", "tenant")

    def __init__(self, engine: Engine, tenant: str, default_tenant: str) -> None:
        self._engine = engine
        self.tenant = tenant
        self._prefix = "" if tenant == default_tenant else tenant + TENANT_SEP

    def stored(self, name: str, param: str = "collection") -> str:
        """The stored name of this tenant's collection ``name`` (400 for a name no client may use)."""
        try:
            validate_public_name(name)
        except Exception as e:
            raise BadRequest(str(e), param=param) from None
        return self._prefix + name

    def public(self, stored: str) -> str | None:
        """The tenant's name for a stored collection; None when it is another tenant's."""
        if self._prefix:
            return stored[len(self._prefix) :] if stored.startswith(self._prefix) else None
        return None if TENANT_SEP in stored else stored

    def collections(self) -> list[str]:
        """This tenant's collections, by its names (blocking: reads the data directory)."""
        return [p for s in self._engine.collections() if (p := self.public(s)) is not None]

    def existing(self, name: str, param: str = "collection") -> str:
        """The stored name of an existing collection of this tenant's, else 404 (no I/O when the
        collection is open, else one ``stat``)."""
        stored = self.stored(name, param)
        if not self._engine.has_collection(stored):
            raise NotFound(f"collection {name!r} does not exist", param=param)
        return stored

    def default_collection(self) -> str:
        return self._prefix + self._engine.settings.default_collection
