"""An OpenAI-compatible server as a deployment (vLLM, llama.cpp server, Ollama, hosted APIs, ragline).

One keep-alive connection pool per deployment (``httpclient.ConnectionPool``), kept for the
process's life: connections are reused across requests (no TCP/TLS handshake on the hot
path) and bounded by ``max_connections``. The request body goes out as the client sent it,
only ``model`` rewritten (the router does that). Timeouts: connect (the pool), time to first
chunk and total (asyncio deadlines, also capped by what is left of the request's own deadline).

Streaming reads the SSE body line by line. Closing the iterator closes the response, which
closes the connection mid-body: the upstream sees the client go away and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from ragline.gateway import codec, httpclient
from ragline.gateway.deployment import DEFAULT_TIMEOUTS, Timeouts
from ragline.gateway.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
    redact,
)
from ragline.gateway.retry import parse_retry_after
from ragline.gateway.sse import SSEDecoder

_DONE = "[DONE]"
log = logging.getLogger("ragline.gateway")
#: Seconds to wait for the end of the body after [DONE].
_DRAIN_S = 0.5


class OpenAIDeployment:
    kind = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_connections: int = 100,
    ) -> None:
        self._name = name
        self._model = model
        self.base_url = base_url.rstrip("/")
        self.timeouts = timeouts
        headers = {"accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        # Upstreams are named explicitly: no proxy variables or other environment lookups apply.
        self._pool = httpclient.ConnectionPool(
            self.base_url, max_connections=max_connections, connect_timeout=timeouts.connect, headers=headers
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    # -- non-streaming -------------------------------------------------------------------

    async def complete(self, body: dict[str, Any], *, budget: float) -> dict[str, Any]:
        limit = min(self.timeouts.total, budget)
        payload = codec.dumps(body)
        try:
            async with asyncio.timeout(limit):
                status, headers, data = await self._pool.fetch(
                    "POST", "chat/completions", payload, content_type="application/json"
                )
        except TimeoutError as e:
            raise UpstreamTimeout(self._name, f"no answer within {limit:.2f} s") from e
        except Exception as e:  # the client's errors, and whatever the transport leaks (see _transport_error)
            raise self._transport_error(e) from e
        if status >= 400:
            raise _status_error(self._name, status, headers, data)
        try:
            result = codec.loads(data)
        except ValueError as e:
            raise UpstreamProtocolError(self._name, "invalid response: not JSON") from e
        if not isinstance(result, dict) or "choices" not in result:
            raise UpstreamProtocolError(self._name, "invalid response: not a chat.completion")
        return result

    # -- streaming -----------------------------------------------------------------------

    async def stream(self, body: dict[str, Any], *, budget: float) -> AsyncGenerator[dict[str, Any], None]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + min(self.timeouts.total, budget)
        first_by = min(end, start + self.timeouts.first_token)
        payload = codec.dumps(body)
        try:
            async with asyncio.timeout_at(first_by):
                response = await self._pool.request(
                    "POST",
                    "chat/completions",
                    payload,
                    content_type="application/json",
                    headers={"accept": "text/event-stream"},
                )
        except TimeoutError as e:
            raise UpstreamTimeout(self._name, f"no response within {first_by - start:.2f} s") from e
        except Exception as e:  # the client's errors, and whatever the transport leaks (see _transport_error)
            raise self._transport_error(e) from e
        try:
            if response.status >= 400:
                try:
                    async with asyncio.timeout_at(end):
                        data = await response.read()
                except (TimeoutError, httpclient.HTTPError) as e:
                    raise UpstreamStatusError(self._name, response.status) from e
                raise _status_error(self._name, response.status, response.headers, data)
            async for chunk in self._events(response, start, first_by, end):
                yield chunk
        finally:
            await response.aclose()

    async def _events(
        self, response: httpclient.Response, start: float, first_by: float, end: float
    ) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        lines = response.aiter_lines()
        started = finished = False
        while True:
            limit = end if started else first_by
            pending: str | None
            try:
                async with asyncio.timeout_at(limit):
                    line = await anext(lines)
            except StopAsyncIteration:
                data = decoder.flush()
                if data is None or data == _DONE:
                    break
                pending = data
            except TimeoutError as e:
                what = "complete stream" if started else "first token"
                raise UpstreamTimeout(self._name, f"no {what} within {limit - start:.2f} s") from e
            except Exception as e:
                raise UpstreamDisconnected(
                    self._name, "stream broken", f"the stream broke: {_reason(e)}"
                ) from e
            else:
                pending = decoder.feed(line)
            if pending is None:
                continue
            if pending == _DONE:
                await _drain(lines)
                return
            try:
                chunk = codec.loads(pending)
            except ValueError as e:
                raise UpstreamProtocolError(self._name, "invalid stream event: not JSON") from e
            if not isinstance(chunk, dict):
                raise UpstreamProtocolError(self._name, "invalid stream event: not a JSON object")
            if "error" in chunk:
                err = chunk["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamDisconnected(
                    self._name, "the stream ended with an error", f"the upstream ended the stream with: {msg}"
                )
            started = True
            finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or ())
            yield chunk
        if not finished:
            raise UpstreamDisconnected(self._name, "the stream ended before the answer was complete")

    # -- health, lifecycle ----------------------------------------------------------------

    async def probe(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                status, _, _ = await self._pool.fetch("GET", "models")
        except TimeoutError as e:
            raise UpstreamTimeout(self._name, f"no answer to the probe within {timeout:.2f} s") from e
        except Exception as e:  # the client's errors, and whatever the transport leaks (see _transport_error)
            raise self._transport_error(e) from e
        if status >= 400:
            raise UpstreamStatusError(self._name, status)

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _transport_error(self, e: Exception) -> UpstreamError:
        """The failure as the client may see it (its kind); the address and the transport's words
        go into ``detail``, for the log only."""
        reason = _reason(e)
        if isinstance(e, httpclient.ConnectError):
            failure = "connect timed out" if isinstance(e.__cause__, TimeoutError) else "connect failed"
            return UpstreamConnectError(self._name, failure, f"cannot connect to {self.base_url}: {reason}")
        if isinstance(e, httpclient.ConnectionLost | OSError):
            return UpstreamDisconnected(
                self._name,
                "connection lost",
                f"connection to {self.base_url} lost before the answer: {reason}",
            )
        if isinstance(e, httpclient.HTTPError):
            return UpstreamProtocolError(self._name, "invalid HTTP response", f"{self.base_url}: {reason}")
        # Not the client's error: the connection died in a way the transport does not wrap (e.g.
        # uvloop's getpeername() on a socket whose peer just vanished). Still a lost connection.
        log.warning("deployment %s: unexpected transport failure: %s", self._name, redact(reason))
        return UpstreamDisconnected(
            self._name, "connection lost", f"connection to {self.base_url} lost: {reason}"
        )


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read the end of the body after [DONE], so the connection goes back to the pool instead of closing."""
    with contextlib.suppress(TimeoutError, httpclient.HTTPError):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in lines:
                pass


def _status_error(name: str, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamStatusError:
    error: dict[str, Any] | None = None
    try:
        payload = codec.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            error = err
        elif isinstance(err, str):
            error = {"message": err}
        elif isinstance(payload.get("detail"), str):
            error = {"message": payload["detail"]}
    return UpstreamStatusError(name, status, error, retry_after=parse_retry_after(headers.get("retry-after")))
