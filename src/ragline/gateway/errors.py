"""The gateway's exceptions: what went wrong with an upstream, and what the client is told.

Two layers. ``UpstreamError`` and its subclasses describe one failed attempt at one
deployment; each says whether retrying it is allowed (``retryable``) and which metric
kind it counts as. The router turns a run of those into one of the request-level errors
(``NoDeploymentAvailable``, ``DeadlineExceeded``, ``StreamInterrupted``) or passes an
upstream's own 4xx through. The server maps them to HTTP statuses in one place.
"""

from __future__ import annotations

import re
from typing import Any

from ragline.errors import RaglineError


class GatewayError(RaglineError):
    """Base of every error the gateway raises."""


# -- one attempt at one deployment -------------------------------------------------------


class UpstreamError(GatewayError):
    """One failed attempt. ``str(e)`` is what a client may read: the deployment and the kind of
    failure, never the upstream's address, credentials or the transport's exception; ``detail``
    (redacted) is for the log."""

    #: Label value of ragline_upstream_errors_total{kind}.
    kind = "connect"
    #: May the same request be sent again (to this or another deployment of the group)?
    retryable = False
    #: Does the failure say something about the deployment's health (breaker, passive health)?
    counts_as_failure = True
    #: What happened, as the client reads it after the deployment's name.
    outcome = "failed"

    def __init__(self, deployment: str, failure: str, detail: str | None = None) -> None:
        super().__init__(f"deployment '{deployment}' {self.outcome} ({failure})")
        self.deployment = deployment
        #: The kind of failure, in a few words (safe to show).
        self.failure = failure
        #: What the transport or the upstream said, for the log only (URL credentials redacted).
        self.detail = redact(detail) if detail else failure


class UpstreamConnectError(UpstreamError):
    """The connection could not be made (refused, DNS, TLS, connect timeout)."""

    kind = "connect"
    retryable = True
    outcome = "unreachable"


class UpstreamDisconnected(UpstreamError):
    """The connection broke before anything reached the client (safe to send again)."""

    kind = "stream_reset"
    retryable = True


class UpstreamTimeout(UpstreamError):
    """No first token or no complete answer in time. Not retried: the next attempt would likely stall too."""

    kind = "timeout"
    outcome = "timed out"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not an OpenAI-shaped response."""

    kind = "status_5xx"
    retryable = True


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error status (429 and 5xx are retryable).

    ``message`` is the upstream's own error message: a 4xx (the request's fault) is passed
    through to the client with it; a 5xx is reported as its status only.
    """

    def __init__(
        self,
        deployment: str,
        status: int,
        error: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        err = error or {}
        message = str(err.get("message") or f"upstream returned HTTP {status}")
        if status == 429:
            self.outcome = "rate limited"
        elif status < 500:
            self.outcome = "refused the request"
        super().__init__(deployment, f"HTTP {status}", f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.type = str(err.get("type") or ("invalid_request_error" if status < 500 else "server_error"))
        self.param = err.get("param") if isinstance(err.get("param"), str) else None
        code = err.get("code")
        self.code = str(code) if code is not None else None
        self.retry_after = retry_after
        self.retryable = status == 429 or status >= 500
        # A 4xx is the request's fault, not the deployment's; 429 is load, handled by Retry-After.
        self.counts_as_failure = status >= 500
        self.kind = "status_429" if status == 429 else ("status_5xx" if status >= 500 else "status_4xx")


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it (``scheme://user:password@``) masked."""
    return _USERINFO.sub(r"\1***@", text)


# -- the request as a whole ----------------------------------------------------------------


class NoDeploymentAvailable(GatewayError):
    """Every deployment of the model and of its fallbacks is down, open or failed."""

    def __init__(self, model: str, reasons: list[str]) -> None:
        detail = "; ".join(reasons[-6:]) if reasons else "no deployment is configured"
        super().__init__(
            f"no deployment of model '{model}' (or its fallbacks) could serve the request: {detail}"
        )
        self.model = model
        self.reasons = reasons


class DeadlineExceeded(GatewayError):
    """The per-request deadline passed before an answer."""

    def __init__(self, model: str, seconds: float) -> None:
        super().__init__(f"model '{model}' did not answer within the request deadline of {seconds:g} s")
        self.model = model
        self.seconds = seconds


class StreamInterrupted(GatewayError):
    """The upstream failed after tokens were already sent: the stream ends with an error, not a retry."""

    def __init__(self, model: str, cause: UpstreamError) -> None:
        super().__init__(f"the stream from model '{model}' was interrupted: {cause}")
        self.model = model
        self.cause = cause
