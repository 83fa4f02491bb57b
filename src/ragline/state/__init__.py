"""Shared state: rate-limit counters and messages between replicas (in-process or Redis)."""

from ragline.state.base import SharedState, StateError
from ragline.state.factory import build_state
from ragline.state.memory import InProcessState

__all__ = ["InProcessState", "SharedState", "StateError", "build_state"]
