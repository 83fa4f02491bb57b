"""A collection on disk: its index, its document registry and its write lock.

Layout: ``<data_dir>/collections/<name>/{shard/, registry.sqlite, lock}``; ``shard/`` is the
embedded index's (``index.kind: edge``); with ``qdrant`` the points live in Qdrant.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from pathlib import Path
from typing import IO

from ragline.config import Settings
from ragline.errors import (
    CollectionBusy,
    CollectionNotFound,
    CollectionUnavailable,
    ConfigError,
    DocumentNotFound,
)
from ragline.index.base import VectorIndex
from ragline.index.factory import open_index
from ragline.ingest.registry import DocRecord, PendingChange, Registry

_PUBLIC = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
TENANT_SEP = "~"
"""Between a tenant's name and its collection's in the stored name (``acme~docs``): a character no
collection name a client sends may hold, so two tenants' names can never meet. The default
tenant's collections are stored under their own names (the embedded single-user layout)."""
_PUBLIC_NAME = re.compile(_PUBLIC)
_NAME = re.compile(rf"(?:[a-z0-9][a-z0-9_.\-]{{0,62}}{TENANT_SEP})?{_PUBLIC}")


def validate_public_name(name: str) -> str:
    """A collection name as a client sends it (never a tenant's prefix)."""
    return _valid(name, _PUBLIC_NAME)


def validate_name(name: str) -> str:
    """A stored collection name: a client's name, under a tenant's prefix unless it is the default's."""
    return _valid(name, _NAME)


def _valid(name: str, pattern: re.Pattern[str]) -> str:
    # fullmatch: with match and "$", a trailing newline passed ("$" matches before a final "\n")
    if not isinstance(name, str) or not pattern.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name


def collections_root(settings: Settings) -> Path:
    return settings.data_dir / "collections"


def list_collections(settings: Settings) -> list[str]:
    root = collections_root(settings)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / "registry.sqlite").exists()
    )


def collection_exists(settings: Settings, name: str) -> bool:
    """Whether ``name`` is an existing collection (False for a name that is not a valid one)."""
    if not _NAME.fullmatch(name):
        return False
    return (collections_root(settings) / name / "registry.sqlite").exists()


class Collection:
    """Opened with an exclusive lock: one process writes a collection at a time."""

    def __init__(self, settings: Settings, name: str, dim: int, embedder_name: str, *, create: bool) -> None:
        self.name = validate_name(name)
        self.path = collections_root(settings) / name
        if not (self.path / "registry.sqlite").exists() and not create:
            raise CollectionNotFound(f"collection {name!r} does not exist (ingest something into it first)")
        self.path.mkdir(parents=True, exist_ok=True)
        # Whatever fails below (a busy lock, another embedder, no file descriptor left for the
        # index), everything opened so far is closed again: a failed open takes nothing with it.
        self._lock_file: IO[str] | None = None
        self._registry: Registry | None = None
        self._index: VectorIndex | None = None
        try:
            self._open(settings, dim, embedder_name)
        except BaseException:
            self._release()
            raise

    def _open(self, settings: Settings, dim: int, embedder_name: str) -> None:
        name = self.name
        self._lock_file = open(self.path / "lock", "w")  # noqa: SIM115 - held for the lifetime
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CollectionBusy(
                f"collection {name!r} is in use by another ragline process; wait for it to finish"
            ) from None
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self._registry = Registry(self.path / "registry.sqlite")
        stored = self.registry.get_meta("embedder")
        if stored is None:
            self.registry.set_meta("embedder", json.dumps({"name": embedder_name, "dim": dim}))
        else:
            info = json.loads(stored)
            if info["name"] != embedder_name or info["dim"] != dim:
                raise ConfigError(
                    f"collection {name!r} was built with embedder {info['name']} (dim {info['dim']}); "
                    f"the configured one is {embedder_name} (dim {dim}). Use another collection or re-ingest."
                )
        kind = settings.index.kind
        built_on = self.registry.get_meta("index") or "edge"  # collections made before the setting: edge
        if stored is None:
            self.registry.set_meta("index", kind)
        elif built_on != kind:
            raise ConfigError(
                f"collection {name!r} lives in the {built_on} index; the configured one is {kind} "
                "(index.kind). Use another collection or re-ingest."
            )
        self._index = open_index(settings, name, self.path, dim)
        # Readers (search) and the writer (ingest/delete) of this process.
        self.write_lock = threading.Lock()
        self.recovered = self.recover()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise CollectionUnavailable(f"collection {self.name!r} is closed")
        return self._registry

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            raise CollectionUnavailable(f"collection {self.name!r} is closed")
        return self._index

    @property
    def closed(self) -> bool:
        return self._lock_file is None

    def recover(self) -> int:
        """Settle changes a crash left half-done; returns how many were settled."""
        pending = self.registry.pending()
        for change in pending:
            new_ids = list(change.new_ids)
            present = self.index.existing(new_ids) if new_ids else set()
            if len(present) == len(set(new_ids)):
                # every new chunk is there: finish the change
                stale = [i for i in change.old_ids if i not in set(new_ids)]
                self.index.delete(stale)
                self.index.flush()
                self.registry.commit([change])
            else:
                # incomplete: remove what was written; the old version (if any) is untouched
                self.index.delete(sorted(present - set(change.old_ids)))
                self.index.flush()
                self.registry.abandon([change.doc_id])
        return len(pending)

    def delete_document(self, doc_id: str) -> DocRecord:
        with self.write_lock:
            record = self.registry.get(doc_id)
            if record is None:
                raise DocumentNotFound(f"no document {doc_id!r} in collection {self.name!r}")
            change = PendingChange(doc_id, None, [], record.chunk_ids)
            self.registry.begin([change])
            self.index.delete(record.chunk_ids)
            self.index.flush()
            self.registry.commit([change])
            return record

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        """Close the index, the registry and the lock file, whichever are open (idempotent)."""
        index, registry, lock_file = self._index, self._registry, self._lock_file
        self._index = self._registry = self._lock_file = None
        try:
            if index is not None:
                index.close()
        finally:
            try:
                if registry is not None:
                    registry.close()
            finally:
                if lock_file is not None:
                    lock_file.close()
