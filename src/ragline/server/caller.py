"""Who is calling a route: the access decision and the tenant's view of the collections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request
from starlette.types import Scope

from ragline.engine import Engine
from ragline.server.access_mw import RequestAccess, request_access
from ragline.server.tenancy import Tenancy


@dataclass(frozen=True, slots=True)
class Caller:
    access: RequestAccess | None
    """None only in an app served without the access middleware."""
    tenancy: Tenancy

    @property
    def tenant(self) -> str:
        return self.tenancy.tenant

    @property
    def key_id(self) -> str | None:
        return self.access.principal.key_id if self.access is not None else None


def caller_of(engine: Engine) -> Callable[[Scope], Caller]:
    default = engine.settings.auth.default_tenant

    def of(scope: Scope) -> Caller:
        ra = request_access(scope)
        tenant = ra.principal.tenant if ra is not None else default
        return Caller(ra, Tenancy(engine, tenant, default))

    return of


def current_caller(request: Request) -> Caller:
    """A FastAPI dependency (``CallerDep``): the caller of this request, as the app's state sees it."""
    of: Callable[[Scope], Caller] = request.app.state.ragline.caller
    return of(request.scope)


CallerDep = Annotated[Caller, Depends(current_caller)]
