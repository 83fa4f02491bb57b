"""A fault-injecting OpenAI-compatible upstream for the gateway tests, run as its own process.

    python tests/fault_upstream.py --port 9000

Every path is served under an *instance* prefix, so one process stands in for several
upstreams: ``/{instance}/v1/chat/completions`` and ``/{instance}/v1/models``. Answers name
the instance ("hello from <instance>") and echo the request's model id.

Behaviour is set per instance through the admin API (JSON bodies):

- ``POST /admin/faults {"instance": "a", "faults": [FAULT, ...], "default": FAULT}``:
  each request takes the first queued fault (a fault with ``"count": n`` serves n
  requests, ``-1`` forever); with none queued, ``default`` applies (normal answers).
  FAULT = {"mode": "ok" | "status" | "stall" | "reset" | "die", ...}:
  ``ok``: normal answer after ``delay`` s, streamed as ``tokens`` chunks ``token_delay`` s apart;
  ``status``: HTTP ``status`` with an OpenAI error body and optional ``retry_after`` (s);
  ``stall``: sleep ``delay`` s before the first byte of a non-stream answer / the first
  event of a stream (headers already sent);
  ``reset``: stream ``after`` token chunks, then drop the connection mid-body;
  ``die``: SIGKILL this whole process while the request is open;
  ``reply``: answer ``answer`` (a JSON body) as it is, or stream ``chunks`` (each one event) then
  ``[DONE]``.
- ``POST /admin/health {"instance": "a", "ok": false}``: /models answers 503 while false.
- ``GET /admin/stats``: per instance ``requests`` (chat calls), ``completed``,
  ``cancelled`` (the client went away mid-stream), ``probes``, ``last_body``.
- ``POST /admin/reset``: forget faults, health flags and stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Fault = dict[str, Any]


class Upstreams:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.queues: dict[str, list[Fault]] = defaultdict(list)
        self.defaults: dict[str, Fault] = {}
        self.health: dict[str, bool] = {}
        self.stats: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"requests": 0, "completed": 0, "cancelled": 0, "probes": 0, "last_body": None}
        )

    def next_fault(self, instance: str) -> Fault:
        queue = self.queues[instance]
        if queue:
            fault = queue[0]
            count = int(fault.get("count", 1))
            if count > 0:
                fault["count"] = count - 1
                if count == 1:
                    queue.pop(0)
            return fault
        return self.defaults.get(instance, {"mode": "ok"})


STATE = Upstreams()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    type_ = (
        "rate_limit_error"
        if status == 429
        else ("server_error" if status >= 500 else "invalid_request_error")
    )
    body = {"error": {"message": message, "type": type_, "param": None, "code": f"fault_{status}"}}
    return JSONResponse(body, status_code=status, headers=headers)


async def chat(request: Request) -> Response:
    instance = request.path_params.get("instance", "default")
    body = await request.json()
    stats = STATE.stats[instance]
    stats["requests"] += 1
    stats["last_body"] = body
    fault = STATE.next_fault(instance)
    mode = fault.get("mode", "ok")
    if mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "status":
        status = int(fault.get("status", 500))
        headers = {"retry-after": str(fault["retry_after"])} if "retry_after" in fault else None
        return _error(status, f"injected {status} from {instance}", headers)
    if mode == "reply":
        stats["completed"] += 1
        if not body.get("stream"):
            return JSONResponse(fault["answer"])
        events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in fault["chunks"]]
        return Response(b"".join(events) + b"data: [DONE]\n\n", media_type="text/event-stream")
    text = f"hello from {instance}"
    model = body.get("model", "")
    if not body.get("stream"):
        await asyncio.sleep(float(fault.get("delay", 0.0)))
        stats["completed"] += 1
        return JSONResponse(
            {
                "id": "chatcmpl-fault",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        )
    return StreamingResponse(_stream(instance, model, body, fault, mode), media_type="text/event-stream")


async def _stream(
    instance: str, model: str, body: dict[str, Any], fault: Fault, mode: str
) -> AsyncIterator[bytes]:
    stats = STATE.stats[instance]
    created = int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    done = False
    try:
        if mode == "stall":
            await asyncio.sleep(float(fault.get("delay", 3600.0)))
        yield event({"role": "assistant", "content": ""})
        n = int(fault.get("tokens", 3))
        words = [f"w{i} " for i in range(n - 1)] + [f"hello from {instance}"]
        for i, word in enumerate(words):
            if mode == "reset" and i >= int(fault.get("after", 1)):
                raise ConnectionResetError("injected reset")  # uvicorn drops the connection mid-body
            await asyncio.sleep(float(fault.get("token_delay", 0.0)))
            yield event({"content": word})
        if mode == "reset":
            raise ConnectionResetError("injected reset")
        yield event({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
            yield (
                b"data: "
                + json.dumps(
                    {
                        "id": "chatcmpl-fault",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                ).encode()
                + b"\n\n"
            )
        yield b"data: [DONE]\n\n"
        done = True
        stats["completed"] += 1
    finally:
        if not done and mode != "reset":
            stats["cancelled"] += 1


async def models(request: Request) -> Response:
    instance = request.path_params.get("instance", "default")
    STATE.stats[instance]["probes"] += 1
    if not STATE.health.get(instance, True):
        return _error(503, f"{instance} is unhealthy")
    return JSONResponse(
        {"object": "list", "data": [{"id": instance, "object": "model", "owned_by": "fault"}]}
    )


async def set_faults(request: Request) -> Response:
    spec = await request.json()
    instance = spec["instance"]
    STATE.queues[instance] = [dict(f) for f in spec.get("faults", [])]
    if "default" in spec:
        STATE.defaults[instance] = dict(spec["default"])
    return JSONResponse({"ok": True})


async def set_health(request: Request) -> Response:
    spec = await request.json()
    STATE.health[spec["instance"]] = bool(spec["ok"])
    return JSONResponse({"ok": True})


async def stats(_: Request) -> Response:
    return JSONResponse(STATE.stats)


async def reset(_: Request) -> Response:
    STATE.reset()
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/admin/faults", set_faults, methods=["POST"]),
        Route("/admin/health", set_health, methods=["POST"]),
        Route("/admin/stats", stats, methods=["GET"]),
        Route("/admin/reset", reset, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/{instance}/v1/chat/completions", chat, methods=["POST"]),
        Route("/{instance}/v1/models", models, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
