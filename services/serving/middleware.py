"""ASGI middleware of the serving app: a body-size limit answered before the body is parsed."""

from __future__ import annotations

import json

PREDICT_PATHS = ("/predict",)


async def send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """413 when the declared or the streamed body exceeds ``max_bytes`` (BentoML has no limit of its own)."""

    def __init__(self, app, max_bytes: int = 1_048_576):
        self.app, self.max_bytes = app, max_bytes

    def too_large(self) -> dict:
        return {
            "error": f"request body exceeds {self.max_bytes} bytes; send fewer rows per request "
            "(or raise SANDBOX_SERVING_MAX_BODY_BYTES)"
        }

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, self.too_large())

        # No (honest) Content-Length: read the stream up to the limit before the app sees it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await send_json(send, 413, self.too_large())
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
