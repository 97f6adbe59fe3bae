"""What every service answers the same way: body limit (413), JSON only (415), JSON errors, 422s
that say what was wrong, logging, ``/metrics``.

The ASGI guards run before a body is parsed, so they work in front of FastAPI (monitor,
retrainer) and BentoML (serving) alike. Services import this module and nothing of each other.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# FastAPI only where its wiring runs: serving (BentoML) would pay 0.4 s a worker to import it.
if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("sandbox.http")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BODY_METHODS = ("POST", "PUT", "PATCH")


def setup_logging() -> None:
    """INFO to stderr in the services' format, unless the host (uvicorn, BentoML, pytest) configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


# --- error bodies, as answered and as documented in OpenAPI ---------------------------------------------


class ErrorBody(BaseModel):
    """Every refusal: ``error`` says what was wrong and what to do; some add fields of their own."""

    model_config = ConfigDict(extra="allow")
    error: str


class ErrorItem(BaseModel):
    loc: list[str]
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    errors: list[ErrorItem]
    error_count: int


def error_response(status: int, error: str, **extra) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


GUARD_ERRORS = {
    400: "Body could not be decoded (not UTF-8)",
    413: "Body over the size limit",
    415: "Body is not application/json",
    422: "Body or parameters invalid (unparseable JSON included): the reasons; nothing stored",
}


def error_responses(*statuses: int, described: dict[int, str] | None = None) -> dict:
    """OpenAPI ``responses`` for the guards' answers (``statuses``) and a route's own (``described``)."""
    out: dict = {
        s: {"model": ValidationErrorBody if s == 422 else ErrorBody, "description": GUARD_ERRORS[s]}
        for s in statuses
    }
    for status, description in (described or {}).items():
        out[status] = {"model": ErrorBody, "description": description}
    return out


# --- ASGI guards ------------------------------------------------------------------------------------------


async def send_json(send, status: int, payload: dict) -> None:
    """A JSON answer straight from ASGI middleware (before any framework saw the request)."""
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> bytes | None:
    return dict(scope.get("headers") or []).get(name)


class BodySizeLimit:
    """413 when the declared or the streamed body exceeds ``max_bytes``.

    A body with a Content-Length is checked against it (the server refuses more bytes than declared);
    one without (chunked) is read up to the limit before the app sees it, then replayed.
    """

    def __init__(self, app, max_bytes: int, hint: str = "send a smaller body"):
        self.app, self.max_bytes, self.hint = app, max_bytes, hint

    def too_large(self) -> dict:
        return {"error": f"request body exceeds {self.max_bytes} bytes (the limit); {self.hint}"}

    async def refuse(self, scope, send) -> None:
        log.warning("refused %s %s (413): body over %d bytes", scope["method"], scope["path"], self.max_bytes)
        await send_json(send, 413, self.too_large())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                return await self.refuse(scope, send)
            return await self.app(scope, receive, send)

        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self.refuse(scope, send)
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


class JsonOnly:
    """415 for a body that is not ``application/json`` (no header counts as JSON, as curl sends it).

    ``paths``: only these (None: every path). BentoML would try multipart on such a body and fail
    with a 500; FastAPI would answer a puzzling "Input should be a valid dictionary".
    """

    def __init__(self, app, paths: tuple[str, ...] | None = None):
        self.app, self.paths = app, paths

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] == "http"
            and scope["method"] in BODY_METHODS
            and (self.paths is None or scope["path"] in self.paths)
        ):
            content_type = _header(scope, b"content-type") or b"application/json"
            if content_type.split(b";")[0].strip().lower() != b"application/json":
                shown = content_type.decode(errors="replace")[:100]
                log.warning("refused %s %s (415): content type %r", scope["method"], scope["path"], shown)
                return await send_json(
                    send, 415, {"error": f"send JSON with Content-Type: application/json, not {shown!r}"}
                )
        return await self.app(scope, receive, send)


# --- FastAPI wiring ---------------------------------------------------------------------------------------


def describe_errors(errors) -> list[dict]:
    """Validation errors without the offending input (it can be megabytes) but with the JSON decoder's reason."""
    out = []
    for e in errors:
        item = {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg")),
            "type": str(e.get("type")),
        }
        if e.get("type") == "json_invalid" and e.get("ctx", {}).get("error"):
            item["msg"] = f"{item['msg']}: {e['ctx']['error']}"
        out.append(item)
    return out


def guard(app: FastAPI, *, max_body_bytes: int, too_large_hint: str, invalid: str) -> None:
    """The shared guards on a FastAPI app: 413 and 415 before parsing, 422 with the reasons, JSON errors.

    ``invalid`` opens every 422's ``error`` (e.g. "invalid request, nothing stored").
    """
    from fastapi.exceptions import RequestValidationError

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = describe_errors(exc.errors())
        reasons = "; ".join(f"{'.'.join(e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors[:3])
        log.warning("refused %s %s (422): %s", request.method, request.url.path, reasons)
        return error_response(422, f"{invalid}: {reasons}", errors=errors[:20], error_count=len(errors))

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (404, 405, a body that is not UTF-8) in the same shape as ours.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, hint=too_large_hint)
    app.add_middleware(JsonOnly)  # added last, so outermost: a wrong type is refused before the size is read


def add_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """``GET /metrics``: the registry in Prometheus' text format, documented as such."""

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text format",
            }
        },
    )
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
