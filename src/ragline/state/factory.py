"""Build the configured shared state: in-process by default, Redis by URL."""

from __future__ import annotations

from ragline.config import Settings, StateSettings
from ragline.state.base import SharedState


def check_installed(settings: Settings | StateSettings) -> None:
    """Raise MissingDependency unless the libraries of the configured state can be imported."""
    s = settings.state if isinstance(settings, Settings) else settings
    if s.url is not None:
        from ragline.state.redis import require_driver

        require_driver()


def build_state(settings: Settings | StateSettings) -> SharedState:
    """The state named by ``state.url`` (not opened yet: ``await state.open()``)."""
    s = settings.state if isinstance(settings, Settings) else settings
    if s.url is None:
        from ragline.state.memory import InProcessState

        return InProcessState()
    from ragline.state.redis import RedisState

    return RedisState(s.url, s.key_prefix)
