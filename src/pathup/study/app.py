"""The rater study web app: FastAPI serving a plain HTML + JavaScript page and a small JSON API.

Every ``/api`` route needs the rater's token as ``Authorization: Bearer <token>``; the check runs
before routing, so a request without a valid token gets 401 whatever it asks for. The API never
names a class or tells real from synthetic; it serves only the signed-in rater's own list and scores.

Routes:
  GET  /                      the rating page (static/index.html)
  GET  /api/progress          {name, state, rated, total}
  GET  /api/next              the first image of the rater's order without a score (or done: true)
  GET  /api/queue             the rater's whole order with their scores (null where not rated)
  GET  /api/my-ratings        the rater's own scores
  GET  /api/images/{id}       the image bytes
  POST /api/rating            {"image_id": str, "score": 1..10}; upsert; 409 once the study is closed
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from pathup.errors import OptionError
from pathup.study.db import MAX_SCORE, MIN_SCORE, Rater, StudyClosedError, StudyDB, UnknownImageError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png"}
SCORE_MESSAGE = f"score must be a whole number from {MIN_SCORE} (synthetic) to {MAX_SCORE} (real)"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


MAX_BODY_BYTES = 16 * 1024  # a rating is about 60 bytes of JSON; anything larger is refused with 413


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before the app reads them: a declared
    Content-Length is checked up front, a chunked body is counted as it arrives (at most
    ``max_bytes + 1`` bytes are ever held)."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = True
            if too_large:
                await self._refuse(scope, receive, send)
                return
        if declared is None and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (GET)
            return
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        data = b"".join(body)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        response = _error(413, f"request body too large (at most {self.max_bytes} bytes)")
        response.headers.update(SECURITY_HEADERS)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


class RatingIn(BaseModel):
    """Body of ``POST /api/rating``."""

    image_id: str = Field(min_length=1, max_length=64)
    score: StrictInt


def _error(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def current_rater(request: Request) -> Rater:
    """The rater that the auth middleware attached to the request."""
    return request.state.rater


def create_app(db_path: str | Path) -> FastAPI:
    """The study app for one database; every request reads the database, so a restart loses nothing."""
    db = StudyDB(db_path)
    app = FastAPI(title="PathUp rater study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db = db

    @app.middleware("http")
    async def auth_and_headers(request: Request, call_next: Any) -> Response:
        if request.url.path == "/api" or request.url.path.startswith("/api/"):
            token = _bearer_token(request)
            rater = await run_in_threadpool(db.rater_for_token, token) if token else None
            if rater is None:
                response: Response = _error(401, "missing or invalid token: send 'Authorization: Bearer <your token>'",
                                            **{"WWW-Authenticate": "Bearer"})
            else:
                request.state.rater = rater
                response = await call_next(request)
            response.headers.setdefault("Cache-Control", "no-store")
        else:
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for err in errors:
            loc = err.get("loc", ())
            if loc and loc[-1] == "score":
                got = f", got {err['input']!r}" if "input" in err and err.get("type") != "missing" else ""
                return _error(422, SCORE_MESSAGE + got)
        parts = []
        for e in errors:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return _error(422, 'expected a JSON body {"image_id": "...", "score": 1..10}; ' + "; ".join(parts))

    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)  # outermost: before auth and routing

    # -- pages ---------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # -- API -----------------------------------------------------------------------------------------
    def progress_of(rater: Rater) -> dict:
        queue = db.queue(rater.id)
        rated = sum(1 for q in queue if q["score"] is not None)
        return {"name": rater.name, "state": db.state, "rated": rated, "total": len(queue)}

    @app.get("/api/progress")
    def progress(rater: Rater = Depends(current_rater)) -> dict:
        return progress_of(rater)

    @app.get("/api/next")
    def next_image(rater: Rater = Depends(current_rater)) -> dict:
        queue = db.queue(rater.id)
        rated = sum(1 for q in queue if q["score"] is not None)
        base = {"state": db.state, "rated": rated, "total": len(queue)}
        for item in queue:
            if item["score"] is None:
                return {**base, "done": False, "image_id": item["image_id"], "position": item["position"],
                        "score": None, "url": f"/api/images/{item['image_id']}"}
        return {**base, "done": True, "image_id": None, "position": None, "score": None, "url": None}

    @app.get("/api/queue")
    def queue(rater: Rater = Depends(current_rater)) -> dict:
        return {"state": db.state, "items": db.queue(rater.id)}

    @app.get("/api/my-ratings")
    def my_ratings(rater: Rater = Depends(current_rater)) -> dict:
        return {"name": rater.name, "ratings": db.rater_ratings(rater.id)}

    @app.get("/api/images/{image_id}")
    def image(image_id: str, rater: Rater = Depends(current_rater)) -> Response:
        if len(image_id) > 64 or not db.in_queue(rater.id, image_id):
            return _error(404, f"unknown image id {image_id!r}")
        path = db.image_file(image_id)
        try:
            data = path.read_bytes()
        except OSError:
            log.error("study image file missing: %s", path)
            return _error(500, "image file missing on the server")
        # No ETag / Last-Modified: the headers of every image are identical, whatever its source.
        return Response(data, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.post("/api/rating")
    def rate(body: RatingIn, rater: Rater = Depends(current_rater)) -> JSONResponse:
        if not MIN_SCORE <= body.score <= MAX_SCORE:
            return _error(422, f"{SCORE_MESSAGE}, got {body.score}")
        try:
            updated = db.rate(rater.id, body.image_id, body.score)
        except StudyClosedError as err:
            return _error(409, str(err))
        except UnknownImageError as err:
            return _error(404, str(err))
        return JSONResponse({"image_id": body.image_id, "score": body.score, "updated": updated,
                             **progress_of(rater)})

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Connection limits of the server (a rater sends a few small requests a minute): a request must arrive
# whole (headers and body) within REQUEST_TIMEOUT_S of its first byte, or of the connection, or the
# connection is closed (uvicorn has no header timeout: a client trickling header bytes kept its connection
# open for ever); at most MAX_CONNECTIONS are open at once (more are closed on arrival); from
# MAX_CONCURRENT requests in progress on, uvicorn answers 503; an idle kept-alive connection closes after
# KEEP_ALIVE_S; request headers are at most MAX_HEADER_BYTES.
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 100
MAX_CONCURRENT = 64
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024


def _protocol_class():
    """uvicorn's h11 protocol with a whole-request timeout and a cap on open connections."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LimitedH11Protocol(H11Protocol):
        _request_timer = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                log.warning("refused a connection from %s: %d open (the limit)", self.client, MAX_CONNECTIONS)
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._request_timer is None:
                self._request_timer = self.loop.call_later(REQUEST_TIMEOUT_S, self._timed_out)

        def _disarm(self) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def _timed_out(self) -> None:
            self._request_timer = None
            if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # the request has not arrived whole
                log.info("closed a connection from %s: no whole request within %.0f s", self.client,
                         REQUEST_TIMEOUT_S)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state == h11.IDLE:
                self._arm()  # the first bytes of a request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return LimitedH11Protocol


def server_config(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    """The ``uvicorn.Config`` of the study server, with the connection limits above."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_protocol_class(),
                          timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONCURRENT,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def serve(db_path: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the study app with uvicorn (blocking). Bind to a public address only behind HTTPS."""
    import uvicorn

    app = create_app(db_path)
    if not is_loopback(host):
        log.warning("serving on %s without TLS: tokens travel in clear text; put the app behind an HTTPS "
                    "reverse proxy", host)
    if not 0 <= port <= 65535:
        raise OptionError("port", f"must be 0..65535, got {port}")
    uvicorn.Server(server_config(app, host, port)).run()
