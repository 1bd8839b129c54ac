"""ASGI middleware: a request id on every request (and its log records), one access
log line per request, and a size limit on request bodies."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from api.logs import bind

access_log = logging.getLogger("td3.access")
REQUEST_ID_HEADER = b"x-request-id"
# a client's own request id is kept when it is short and plain (it ends up in logs)
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")


class RequestId:
    """Uses the client's `X-Request-ID` (if plain) or a new one; binds it to the log
    records of the request, answers it in the `X-Request-ID` header, and logs the
    request on `td3.access` (method, path without its query string, status, time;
    with the request and tenant ids)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if _SAFE_ID.match(given) else secrets.token_hex(8)

        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                ]
            await send(message)

        start = time.perf_counter()
        with bind(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access_log.info(
                    "%s %s %d %.1f ms",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - start) * 1000,
                )


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Requests with a body over `limit` bytes answer 413 (declared length or bytes
    as they arrive), except the routes in `exempt` ((method, path) pairs: uploads,
    which have their own, larger limit)."""

    def __init__(self, app: ASGIApp, *, limit: int, exempt: frozenset[tuple[str, str]]):
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen, over, answered = 0, False, False

        async def counted_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _TooLarge
            return message

        async def checked_send(message: Message) -> None:
            # the app may turn the aborted read into its own error (FastAPI: 400);
            # the client gets the 413 instead
            nonlocal answered
            if not over:
                await send(message)
            elif not answered:
                answered = True
                await self._refuse(send)

        try:
            await self.app(scope, counted_receive, checked_send)
        except _TooLarge:
            if not answered:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                "payload_too_large", f"the request body exceeds the limit of {self.limit} bytes"
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
