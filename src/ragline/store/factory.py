"""Build the configured record store: SQLite under ``data_dir`` by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ragline.config import Settings, StoreSettings
from ragline.store.base import RecordStore, StoreError

DEFAULT_FILE = "records.sqlite"


def is_postgres(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme in ("postgresql", "postgres")


def check_installed(settings: Settings | StoreSettings) -> None:
    """Raise MissingDependency unless the libraries of the configured store can be imported.

    Cheap, and opens nothing: ``ragline serve`` calls it before starting, so that a missing extra
    is one line at start-up rather than a traceback from the app's lifespan.
    """
    store = settings.store if isinstance(settings, Settings) else settings
    if is_postgres(store.url):
        from ragline.store.postgres import require_driver

        require_driver()


def build_store(settings: Settings | StoreSettings, data_dir: Path | None = None) -> RecordStore:
    """The store named by ``store.url`` (not opened yet: ``await store.open()``).

    No URL: ``<data_dir>/records.sqlite``. ``sqlite:///relative/path`` or ``sqlite:////absolute/path``:
    that file. ``postgresql://user:password@host:5432/db``: PostgreSQL (the ``postgres`` extra).
    """
    if isinstance(settings, Settings):
        store, data_dir = settings.store, settings.data_dir
    else:
        store = settings
    url = store.url
    if url is None:
        if data_dir is None:
            raise StoreError("the embedded record store needs a data_dir")
        from ragline.store.sqlite import SQLiteStore

        return SQLiteStore(Path(data_dir) / DEFAULT_FILE, busy_timeout_s=store.connect_timeout_s)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from ragline.store.sqlite import SQLiteStore

        path = unquote(urlsplit(url).path)[1:]  # sqlite:///rel -> rel, sqlite:////abs -> /abs
        if not path:
            raise StoreError(
                "store.url sqlite:/// needs a file path, e.g. sqlite:////srv/ragline/records.sqlite"
            )
        return SQLiteStore(Path(path), busy_timeout_s=store.connect_timeout_s)
    if is_postgres(url):
        from ragline.store.postgres import PostgresStore

        return PostgresStore(
            url, pool_min=store.pool_min, pool_max=store.pool_max, connect_timeout_s=store.connect_timeout_s
        )
    raise StoreError(f"store.url: unsupported scheme {scheme!r}; use postgresql://... or sqlite:///...")
