"""Errors the API returns, each with its HTTP status and OpenAI error type."""

from __future__ import annotations


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class BadRequest(APIError):
    pass


class ModelNotFound(APIError):
    status = 404
    code_default = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist", param="model", code="model_not_found")


class NotFound(APIError):
    status = 404


class ContextTooLong(APIError):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages", code="context_length_exceeded")


class PayloadTooLarge(APIError):
    status = 413


class Conflict(APIError):
    status = 409


class TooManyRequests(APIError):
    """429 with a Retry-After header (a queue or a per-key cap is full)."""

    status = 429
    type = "rate_limit_error"

    def __init__(
        self, message: str, *, retry_after: float, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"


class GatewayTimeout(APIError):
    status = 504
    type = "timeout_error"


class UpstreamFailed(APIError):
    """An upstream's own error answer, passed through with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = type_
