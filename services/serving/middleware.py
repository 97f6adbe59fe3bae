"""What only serving needs in front of BentoML: its OpenAPI made honest.

The input guards (body limit, JSON only) are the services' shared ones, in services/common.py.
"""

from __future__ import annotations

import json

from services.common import send_json

PREDICT_PATHS = ("/predict",)


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
