"""A request-body size limit, enforced before the body is read whole (ASGI middleware)."""

from __future__ import annotations

import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


UPLOAD_PATH = re.compile(r"^/models/[^/]+/versions/?$")
"""Artifact uploads, which have a limit of their own."""


class BodyLimit:
    """413 for a declared Content-Length over the limit; a streamed body that grows past it raises BodyTooLarge."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and UPLOAD_PATH.match(scope["path"])
        # Multipart framing around the artifact and its spec needs a little room beyond the artifact's limit.
        limit = self.max_upload_bytes + (1 << 20) if upload else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            key = "error" if scope["path"].startswith("/v2/") else "detail"  # each protocol its own error format
            if not declared.isdigit():
                await _reply(send, 400, key, "malformed Content-Length header")
                return
            if int(declared) > limit:
                await _reply(send, 413, key, f"request body of {int(declared)} bytes exceeds the limit of {limit}")
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _reply(send: Send, status: int, key: str, detail: str) -> None:
    body = orjson.dumps({key: detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
