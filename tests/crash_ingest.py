"""Ingest (or delete) with ragline and SIGKILL this very process at a chosen point; see test_crash.py.

    python tests/crash_ingest.py --die after:upsert:3 corpus.jsonl
    python tests/crash_ingest.py --die before:commit:2 corpus.jsonl
    python tests/crash_ingest.py --die before:commit:1 --delete DOC_ID

``--die WHEN:STEP:N`` kills the process with SIGKILL just before / just after the N-th call of STEP
in this run: ``begin`` / ``commit`` (the registry journal), ``upsert`` / ``delete`` / ``flush``
(the index). The components are the real ones; only the moment of the kill is chosen. Nothing is
flushed or closed on the way out. Settings come from RAGLINE_* variables, as for the CLI.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from ragline import Engine
from ragline.index.edge import EdgeIndex
from ragline.ingest.registry import Registry

STEPS: dict[str, tuple[type, str]] = {
    "begin": (Registry, "begin"),
    "commit": (Registry, "commit"),
    "upsert": (EdgeIndex, "upsert"),
    "delete": (EdgeIndex, "delete"),
    "flush": (EdgeIndex, "flush"),
}


def arm(spec: str) -> None:
    when, step, n = spec.split(":")
    cls, name = STEPS[step]
    original = getattr(cls, name)
    target = int(n)
    calls = 0

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if when == "before" and calls == target:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(self, *args, **kwargs)
        if when == "after" and calls == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(cls, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--die", required=True, help="before|after:STEP:N")
    ap.add_argument("--delete", help="delete this document instead of ingesting")
    args = ap.parse_args()
    with Engine() as engine:
        engine.collection(create=True)  # open (and recover) before arming, so recovery is not counted
        arm(args.die)
        if args.delete:
            engine.delete(args.delete)
        else:
            engine.ingest(args.paths)
    print("finished without reaching the kill point", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
    main()
