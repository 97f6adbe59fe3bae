"""ASGI middleware of the serving app: input guards answered before the body is parsed, honest OpenAPI."""

from __future__ import annotations

import json

PREDICT_PATHS = ("/predict",)


async def send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class JsonOnly:
    """415 for a ``/predict`` body that is not JSON (BentoML would try multipart and fail with a 500)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in PREDICT_PATHS and scope["method"] == "POST":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"application/json")
            if content_type.split(b";")[0].strip().lower() != b"application/json":
                return await send_json(
                    send,
                    415,
                    {
                        "error": f"send JSON with Content-Type: application/json, not {content_type.decode(errors='replace')!r}"
                    },
                )
        return await self.app(scope, receive, send)


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


def patch_openapi(spec: dict) -> dict:
    """Make BentoML's generated OpenAPI match what the service really answers.

    BentoML documents a validation error's ``detail`` as a string but sends pydantic's
    list of ``{loc, msg, type}``; and it cannot know about our 413 and 503 answers.
    """
    detail = {
        "title": "Error Detail",
        "anyOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}},
                },
            },
        ],
    }
    for schema in spec.get("components", {}).get("schemas", {}).values():
        if isinstance(schema, dict) and "detail" in schema.get("properties", {}):
            schema["properties"]["detail"] = detail
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidArgument"}}}}
    for path in PREDICT_PATHS:
        responses = spec.get("paths", {}).get(path, {}).get("post", {}).get("responses")
        if responses is not None:
            responses.setdefault("413", {"description": "Request body too large", **error})
            responses.setdefault("415", {"description": "Body is not application/json", **error})
            responses.setdefault("503", {"description": "No model loaded yet (run `sandbox train`)", **error})
    return spec


class OpenAPIFix:
    """Rewrites ``GET /docs.json`` through ``patch_openapi``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            return await self.app(scope, receive, send)
        start, chunks = {}, []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            return await send_json(send, start.get("status", 500), {"error": "OpenAPI document unavailable"})
        await send_json(send, 200, patch_openapi(json.loads(b"".join(chunks))))
