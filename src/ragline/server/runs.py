"""Paused agentic runs, kept in the shared state (this process's memory, or Redis across replicas).

A run waits there for the caller's decision on its pending call until ``answer.agent.run_ttl_s``
passes; a finished run stays readable for as long. Continuing a run takes a claim on it first
(``set_if_absent``), so two decisions on one run, sent at once to two replicas, never both run
its tool: the second gets a 409.
"""

from __future__ import annotations

from ragline.answer.agent import RunState
from ragline.server.errors import APIError
from ragline.state.base import SharedState

KEY = "run:"
#: How long a claim holds when its holder dies mid-step (a step is one model call, a search, a tool).
CLAIM_S = 600.0


class RunBusy(APIError):
    status = 409
    type = "invalid_request_error"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is being continued by another request", code="run_busy")


class RunStore:
    def __init__(self, state: SharedState, ttl_s: float) -> None:
        self._state = state
        self._ttl_s = ttl_s

    async def save(self, run: RunState) -> None:
        await self._state.set(KEY + run.id, run.to_json(), self._ttl_s)

    async def load(self, run_id: str, tenant: str | None) -> RunState | None:
        """The run, if it exists and is this tenant's (another tenant's run is not found)."""
        if not run_id.startswith("run_") or len(run_id) > 64:
            return None
        raw = await self._state.get(KEY + run_id)
        if raw is None:
            return None
        run = RunState.from_json(raw)
        return run if run.tenant == tenant else None

    async def claim(self, run_id: str) -> None:
        if not await self._state.set_if_absent(KEY + run_id + ":claim", b"1", CLAIM_S):
            raise RunBusy(run_id)

    async def release(self, run_id: str) -> None:
        await self._state.delete(KEY + run_id + ":claim")
