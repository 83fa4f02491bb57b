"""Versioned schema migrations for both stores, with yoyo-migrations.

The migrations are SQL files in ``migrations/<dialect>/`` (``0001.access.sql``, ...), applied in
order, each in its own transaction, and recorded in yoyo's ``_yoyo_migration`` table. Callers hold
a lock that dies with its process while migrating (PostgreSQL: an advisory lock; SQLite: ``flock``
on a side file) rather than yoyo's lock row, which a crashed process would leave behind.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Literal

from ragline.store.base import StoreError

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]


def migrate(yoyo_url: str, dialect: Dialect) -> list[str]:
    """Apply the migrations not yet applied to the database at ``yoyo_url``; return their ids.

    Raises StoreError when the database holds migrations this ragline does not know (it was
    migrated by a newer version).
    """
    from yoyo import get_backend, read_migrations

    with resources.as_file(resources.files("ragline.store") / "migrations" / dialect) as folder:
        migrations = read_migrations(str(folder))
        backend = get_backend(yoyo_url)
        try:
            known = {m.hash for m in migrations}
            unknown = [h for h in backend.get_applied_migration_hashes() if h not in known]
            if unknown:
                raise StoreError(
                    f"the record store's schema has {len(unknown)} migration(s) this ragline does not "
                    "know: it was upgraded by a newer ragline; run that version"
                )
            todo = backend.to_apply(migrations)
            if todo:
                log.info("migrating the record store: %s", ", ".join(m.id for m in todo))
                backend.apply_migrations(todo)
            return [str(m.id) for m in todo]
        finally:
            backend.connection.close()


def applied(yoyo_url: str) -> list[str]:
    """The ids of the migrations applied to the database, in the order applied."""
    from yoyo import get_backend

    backend = get_backend(yoyo_url)
    try:
        rows = backend.execute(
            "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc, migration_id"
        ).fetchall()
        return [str(r[0]) for r in rows]
    finally:
        backend.connection.close()
