"""The bootstrap admin key: from the environment variable ``RAGLINE_ADMIN_KEY`` or ``auth.admin_key_file``.

It is never stored: it is compared, as a hash, with each presented key, and it acts as an admin
key of ``auth.default_tenant``. Use it to create the first real keys, then keep it secret or drop it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ragline.config import AuthSettings
from ragline.errors import ConfigError

ENV = "RAGLINE_ADMIN_KEY"
MIN_LENGTH = 32


def load_admin_key(settings: AuthSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The bootstrap admin key, or None when neither the variable nor the file gives one."""
    env = os.environ if environ is None else environ
    key = env.get(ENV, "").strip()
    source = f"the environment variable {ENV}"
    if not key and settings.admin_key_file is not None:
        path = settings.admin_key_file
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ConfigError(f"auth.admin_key_file: cannot read {path}: {reason}") from e
        source = f"auth.admin_key_file ({path})"
    if not key:
        return None
    if len(key) < MIN_LENGTH or not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(
            f"the admin key in {source} must be at least {MIN_LENGTH} printable ASCII characters without "
            "spaces; generate one with: openssl rand -hex 32"
        )
    return key
