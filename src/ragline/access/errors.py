"""Why a request is refused: a small hierarchy the HTTP layer maps to OpenAI error bodies.

Each carries the status and OpenAI ``code`` it should become; messages name key ids, never keys.
"""

from __future__ import annotations

from ragline.errors import RaglineError


class AccessError(RaglineError):
    """A request was refused by access control."""

    status_code = 403
    code = "permission_denied"
    headers: dict[str, str]

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}


class InvalidKey(AccessError):
    """No key, a malformed or unknown key, or a revoked or expired one (401 ``invalid_api_key``)."""

    status_code = 401
    code = "invalid_api_key"

    def __init__(self, message: str = "Incorrect API key provided.", reason: str = "unknown") -> None:
        super().__init__(message)
        self.reason = reason
        """``missing``, ``malformed``, ``unknown``, ``revoked``, ``expired`` (for logs and metrics)."""


class PermissionDenied(AccessError):
    """The key is valid but may not do this (its role, its model allow-list, a disabled tenant)."""


class TooManyRequests(AccessError):
    """429: retrying later helps; ``retry_after_s`` says when."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, {**(headers or {}), "retry-after": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class RateLimited(TooManyRequests):
    """A requests or tokens rate limit is reached (429 ``rate_limit_exceeded``)."""


class AuthThrottled(TooManyRequests):
    """Too many failed authentications from this client IP (429)."""


class BudgetExceeded(AccessError):
    """The request's maximum cost does not fit in a key's or tenant's budget (429 ``insufficient_quota``)."""

    status_code = 429
    code = "insufficient_quota"


class BadRequest(AccessError):
    """An admin request with an invalid value (a tenant name, a model pattern, a rate, a budget)."""

    status_code = 400
    code = "invalid_value"
