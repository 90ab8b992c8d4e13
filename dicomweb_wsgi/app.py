"""The WSGI application: ``make_app(settings)`` builds everything per app (no module globals).

This is the one place where errors become responses: a ``DicomWebError`` becomes its status with a
plain-text reason; anything unexpected is logged and answered with a 500 that reveals nothing.
It also adds the CORS headers and answers CORS preflights, and writes one access-log line per request
(client, user, method, path, status, bytes, duration). Before any handler runs, ``admit`` applies
access control (``auth.py``: 401/403), the read-only setting (405) and the free-space guard (503).
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from .archive import Archive
from .audit import acting_as
from .auth import Authenticator
from .config import Settings, load_settings
from .errors import DicomWebError, MethodNotAllowed, NotFound, ServiceUnavailable
from .http import WRITE_METHODS, Request, Response, iter_file, status_line, supported_methods
from .router import Router
from .storage.base import StorageError, WorkitemStore
from .storage.sqlite_workitems import open_workitem_store

if TYPE_CHECKING:
    from .router import _PathEntry

log = logging.getLogger("dicomweb_wsgi")
access_log = logging.getLogger("dicomweb_wsgi.access")

CORS_ALLOW_HEADERS = "Accept, Authorization, Content-Type, Cache-Control, If-None-Match, Range"
CORS_EXPOSE_HEADERS = "Content-Type, Content-Length, Content-Location, Location, Warning, ETag"


@dataclass
class AppContext:
    """Everything handlers need, built once per app and reached through ``req.ctx``."""

    settings: Settings
    archive: Archive
    router: Router
    workitems: WorkitemStore | None = None  # UPS-RS workitems, subscriptions, event outbox


StartResponse = Callable[..., Any]


class DicomWebApp:
    """The WSGI callable."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.auth = Authenticator(ctx.settings)

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def archive(self) -> Archive:
        return self.ctx.archive

    def close(self) -> None:
        self.ctx.archive.close()
        if self.ctx.workitems is not None:
            self.ctx.workitems.close()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        req = Request(environ, self.ctx)
        try:
            with acting_as(_Actor(req)):
                resp = self.handle(req)
        except DicomWebError as exc:
            resp = error_response(exc)
        except FileNotFoundError as exc:
            # An index row whose blob is gone: a DELETE or a replacing store won the race with this
            # read (or the archive is damaged, which `dicomweb-wsgi check` reports).
            log.warning("blob vanished during %s %s: %s", req.method, req.path, exc)
            resp = error_response(NotFound("the resource was removed while it was being read"))
        except StorageError as exc:
            # The index or the disk is unavailable (locked, read-only, full): the request may succeed later.
            log.error("storage unavailable in %s %s: %s", req.method, req.path, exc)
            resp = error_response(ServiceUnavailable("storage temporarily unavailable; try again later"))
        except Exception:
            log.exception("unexpected error in %s %s", req.method, req.path)
            resp = Response(500, b"internal server error\n", "text/plain; charset=utf-8")
        self.add_cors(req, resp)
        return self.send(req, resp, start_response, started)

    def handle(self, req: Request) -> Response:
        if req.method == "OPTIONS" and self.is_preflight(req):
            return self.preflight(req)
        self.admit(req)
        if req.method == "OPTIONS":
            # PS3.18 §8.9: a plain OPTIONS (the preflight was answered above) is Retrieve Capabilities,
            # on every resource; the route table names its handler under OPTIONS "/".
            found = self.ctx.router.match(req.path)
            if found is not None and "OPTIONS" not in found[0].methods:
                root = self.ctx.router.match("/")
                capabilities = root[0].methods.get("OPTIONS") if root else None
                if capabilities is not None:
                    return capabilities(req)
                resp = Response(204)
                resp.add_header("Allow", ", ".join(self.allowed(found[0])))
                return resp
        try:
            handler, kwargs = self.ctx.router.resolve(req)
        except MethodNotAllowed:
            found = self.ctx.router.match(req.path)
            if not self.settings.read_only or found is None:
                raise
            raise MethodNotAllowed(self.allowed(found[0])) from None  # the router's Allow has the writes
        req.route_kwargs = kwargs
        return handler(req, **kwargs)

    def allowed(self, entry: _PathEntry) -> list[str]:
        """The methods a resource currently supports (``Allow``): none of the writes when read-only."""
        return supported_methods(self.ctx.router.allowed(entry), self.settings.read_only)

    # -- admission: who, read-only, free space -----------------------------------------------------
    def admit(self, req: Request) -> None:
        """Refuse a request before any work: 401/403 by role, 405 when read-only, 503 when the disk is low.

        CORS preflights never get here: browsers send them without credentials.
        """
        principal = self.auth.identify(req.environ)
        if principal.how != "open":
            req.user = principal.name
        self.auth.authorize(principal, req.method, req.path)
        if self.settings.read_only and req.method in WRITE_METHODS:
            found = self.ctx.router.match(req.path)
            if found is None:
                return  # nothing is written: the router answers 404 (or 400 for an unsafe path)
            allowed = self.allowed(found[0])
            only = "; this resource answers only OPTIONS" if allowed == ["OPTIONS"] else ""
            raise MethodNotAllowed(allowed, f"the server is read-only{only}")
        if req.method in ("POST", "PUT") and self.settings.min_free_space:
            self.guard_disk(req)

    def guard_disk(self, req: Request) -> None:
        """503 before a byte is written when the store would leave less than ``min_free_space``."""
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
        except OSError as exc:
            raise ServiceUnavailable(f"cannot check the free space of the data folder: {exc.strerror}") from exc
        needed = self.settings.min_free_space + (req.content_length or 0)
        if free < needed:
            log.error("refusing %s %s: %d bytes free, %d needed", req.method, req.path, free, needed)
            # PS3.18 §10.5.3 / PS3.4 C.4.2.1.4: out of resources (0xA700) is a 503 for the whole request.
            raise ServiceUnavailable(
                f"out of resources (0xA700): {free} bytes free in the data folder; storing this request needs "
                f"{needed} (min_free_space {self.settings.min_free_space} plus the body)")

    # -- CORS ------------------------------------------------------------------------------------
    @staticmethod
    def is_preflight(req: Request) -> bool:
        return bool(req.header("Origin") and req.header("Access-Control-Request-Method"))

    def allowed_origin(self, origin: str | None) -> str | None:
        origins = self.settings.cors_origins
        if not origin or not origins:
            return None
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    def preflight(self, req: Request) -> Response:
        resp = Response(204)
        found = self.ctx.router.match(req.path)
        methods = self.allowed(found[0]) if found else ["GET", "HEAD", "OPTIONS"]
        if self.allowed_origin(req.header("Origin")):
            resp.add_header("Access-Control-Allow-Methods", ", ".join(methods))
            requested = req.header("Access-Control-Request-Headers")
            resp.add_header("Access-Control-Allow-Headers",
                            CORS_ALLOW_HEADERS + (", " + requested if requested else ""))
            resp.add_header("Access-Control-Max-Age", "86400")
        return resp

    def add_cors(self, req: Request, resp: Response) -> None:
        """CORS headers on every response (preflights included), such that an HTTP cache never hands one
        origin's answer to another: with ``*`` the same on every response, Origin or not; with listed
        origins ``Vary: Origin`` on every response (Fetch standard, "CORS protocol and HTTP caches")."""
        origins = self.settings.cors_origins
        if not origins:
            return
        if "*" in origins:
            origin: str | None = "*"
        else:
            resp.add_header("Vary", "Origin")
            origin = self.allowed_origin(req.header("Origin"))
            if origin is None:
                return
        resp.add_header("Access-Control-Allow-Origin", origin)
        resp.add_header("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)

    # -- sending -----------------------------------------------------------------------------
    def send(self, req: Request, resp: Response, start_response: StartResponse, started: float) -> Iterable[bytes]:
        headers = list(resp.headers)
        if resp.content_type and resp.get_header("Content-Type") is None:
            headers.insert(0, ("Content-Type", resp.content_type))
        body: Iterable[bytes]
        length: int | None
        if resp.file is not None:
            length = resp.file_length
            wrapper = req.environ.get("wsgi.file_wrapper")
            if req.method == "HEAD":
                resp.file.close()
                body = []
            elif wrapper is not None and length is not None:
                # Hand waitress its own file wrapper, unwrapped, so it reads the file straight into
                # the socket; the access line is written when it closes the file.
                headers.append(("Content-Length", str(length)))
                start_response(status_line(resp.status), headers)
                return wrapper(_LoggedFile(resp.file, req, resp.status, started, length), 1 << 20)
            else:
                body = iter_file(resp.file, length)
        elif isinstance(resp.body, (bytes, bytearray)):
            length = len(resp.body)
            body = [] if req.method == "HEAD" else [bytes(resp.body)]
        else:
            length = None
            body = resp.body
            if req.method == "HEAD":
                close = getattr(body, "close", None)
                if close:
                    close()
                body = []
        if length is not None and resp.status not in (204, 304):
            headers.append(("Content-Length", str(length)))
        start_response(status_line(resp.status), headers)
        return _Logged(body, req, resp.status, started)


# Characters that would end a log line or a space-separated field: a path arrives percent-decoded
# (``/x%0A1.2.3.4 admin DELETE ...`` would forge a second line), a proxy's user name unchecked.
_LOG_UNSAFE = re.compile("[\x00-\x20\x7f-\xa0\u2028\u2029]")


def log_field(text: str) -> str:
    """``text`` as one field of a log line: control characters, spaces and line separators escaped."""
    if _LOG_UNSAFE.search(text) is None:
        return text
    return _LOG_UNSAFE.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 0x100
                           else "\\u%04x" % ord(m.group()), text)


class _Logged:
    """Wraps a response body to write the access-log line when the server closes it."""

    def __init__(self, body: Iterable[bytes], req: Request, status: int, started: float) -> None:
        self.body = body
        self.req = req
        self.status = status
        self.started = started
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.body:
                self.sent += len(chunk)
                yield chunk
        except Exception:
            # Headers are gone: the client sees a truncated body; the log says why.
            log.exception("error while streaming %s %s", log_field(self.req.method), log_field(self.req.path))
            raise

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
        access_log.info("%s %s %s %s %d %d %.1fms", self.req.environ.get("REMOTE_ADDR", "-"),
                        log_field(self.req.user or "-"), log_field(self.req.method), log_field(self.req.path),
                        self.status, self.sent, (time.perf_counter() - self.started) * 1000)


class _LoggedFile:
    """A response file for ``wsgi.file_wrapper`` that writes the access-log line when closed."""

    def __init__(self, fh: Any, req: Request, status: int, started: float, length: int) -> None:
        self._fh = fh
        self._logged = _Logged([], req, status, started)
        self._logged.sent = length
        self.read = fh.read
        self.seek = fh.seek
        self.tell = fh.tell

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            self._logged.close()


class _Actor:
    """Who a request acts as in audit lines: ``user@client-address`` (the user known after admission)."""

    def __init__(self, req: Request) -> None:
        self.req = req

    def __str__(self) -> str:
        return f"{self.req.user or '-'}@{self.req.environ.get('REMOTE_ADDR', '-')}"


def error_response(exc: DicomWebError) -> Response:
    """The one way an error becomes a response."""
    resp = Response(exc.status, (exc.reason.rstrip() + "\n").encode("utf-8"), "text/plain; charset=utf-8")
    for name, value in exc.headers.items():
        resp.add_header(name, value)
    return resp


def make_app(settings: Settings | Mapping[str, Any] | None = None, **overrides: Any) -> DicomWebApp:
    """Build a complete, independent application (its own archive, router and settings)."""
    from .routes import build_routes

    if not isinstance(settings, Settings):
        values = dict(settings or {})
        values.update(overrides)
        settings = load_settings(values)
    elif overrides:
        settings = load_settings({**settings.__dict__, **overrides})
    archive = Archive.open(settings)
    router = Router(build_routes(settings))
    return DicomWebApp(AppContext(settings, archive, router, open_workitem_store(settings)))


def paste_app_factory(global_config: Mapping[str, Any], **local_conf: Any) -> DicomWebApp:
    """PasteDeploy entry point: ``[app:main] use = egg:dicomweb-wsgi``."""
    return make_app({k: v for k, v in local_conf.items() if k.startswith("dicomweb.")})
