"""Runs last (conftest orders it so): no error body the suite received leaks internals."""

from __future__ import annotations

import error_audit


def test_no_error_body_leaks_internals() -> None:
    found = [(e, what) for e in error_audit.RECORDED for what in error_audit.leaks(e.body)]
    report = "\n".join(
        f"- {e.test}: {e.method} {e.url} -> {e.status} carries {what}: {e.body[:300]!r}" for e, what in found
    )
    assert not found, f"{len(found)} error bodies leak internals:\n{report}"


def test_the_audit_sees_error_bodies_and_catches_leaks() -> None:
    # the patterns fire on the leak the hardening probe found, and stay quiet on a clean error
    probe = (
        "cannot connect to http://user:password@10.1.2.3:8000/v1: "
        "ConnectError: ConnectionRefusedError: [Errno 111]"
    )
    assert set(error_audit.leaks(probe)) >= {
        "URL credentials",
        "an exception class name",
        "an errno",
        "an internal address",
    }
    assert (
        error_audit.leaks('{"error": {"message": "deployment \'a\' is unreachable (connect failed)"}}') == []
    )
