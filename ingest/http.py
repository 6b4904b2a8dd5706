"""The daemon's HTTP server plumbing: one aiohttp Application, and a middleware that never leaks a trace."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import StorageError
from .faults import ThrottledLog
from .limits import REFUSALS, ClientLimits, Rate, TokenBuckets, limits_middleware

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(request: web.Request, status: int, description: str) -> web.Response:
    # Open311 clients expect their error shape; everyone else gets a plain JSON object.
    if request.path.startswith("/open311/"):
        return web.json_response([{"code": status, "description": description}], status=status)
    return web.json_response({"error": description}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(request, 413, f"body larger than the limit of {exc.max_size} bytes" if hasattr(exc, "max_size")
                      else "body too large")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(request, exc.status, exc.reason)
        raise
    except StorageError:
        resp = _error(request, 503, "temporarily unable to store the request, please retry")
        resp.headers["Retry-After"] = "5"
        return resp
    except ConnectionResetError as exc:
        if request.transport is not None and not request.transport.is_closing():
            return _unhandled(request, exc)  # a connection of ours (a peer we called) was reset, not this client's
        # The client hung up before its body was in (a phone losing its signal mid-upload): its doing, not a fault
        # of ours to log at ERROR with a trace, which pages whoever watches `journalctl -p err`. Nobody reads this.
        # The route, not the path: a reporter's private token is in some (/lookup/<token>/rating).
        _throttled.log(logging.INFO, f"{request.method} {_route(request)}:gone",
                       "client closed the connection during %s %s", request.method, _route(request))
        return _error(request, 400, "connection closed by the client")
    except Exception as exc:
        return _unhandled(request, exc)


async def read_form(request: web.Request) -> Any:
    """`request.post()` for the console's, portal's and reporters' forms. aiohttp looks the Content-Type's charset
    up as a codec (a name it does not know, or bytes that are not UTF-8: LookupError) and refuses a multipart body
    without a usable boundary (ValueError): both were 500s. A 400 now."""
    try:
        return await request.post()
    except LookupError:
        raise web.HTTPBadRequest(reason="the form's charset is not one we can read") from None
    except ValueError:
        raise web.HTTPBadRequest(reason="the form's body is malformed") from None


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


# Paths whose next segment is a credential: a reporter's private lookup/receipt token, a case token. Logged as
# "/lookup/[token]/…" (whoever reads the log must not be able to open a reporter's page); run_daemon's access log too.
PRIVATE_PATH = re.compile(r"^(/lookup|/receipt|/cases|/api/v1/cases)/[^/]+")


def loggable_path(path: str) -> str:
    return PRIVATE_PATH.sub(r"\1/[token]", path)


def _unhandled(request: web.Request, exc: Exception) -> web.Response:
    """Called in the except clause: with its trace the first time, then once a minute per route and error type (a
    client repeating the request that triggers a bug must not flood the log)."""
    _throttled.log(logging.ERROR, f"{request.method} {_route(request)}:{type(exc).__name__}",
                   "unhandled error on %s %s", request.method, loggable_path(request.path), exc_info=True)
    return _error(request, 500, "internal error")


class MalformedRequestLog(logging.Filter):
    """aiohttp logs every request it cannot parse (a bad header, a request line past 8 KB, Content-Length beside
    Transfer-Encoding) at ERROR with a traceback, the client's address and the offending bytes: a header line, the
    request target with its query string. That is the client's fault, not ours; those bytes may be a reporter's
    phone number, a lookup token or Messenger's verify token; and anyone can send such requests in a loop to flood
    the log and page whoever watches `journalctl -p err`. Each is replaced by one warning naming only the kind of
    error, throttled per kind, and counted in /metrics (`http_refusals_total{reason="malformed_request"}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        REFUSALS[("malformed_request", "")] += 1
        _throttled.log(min(record.levelno, logging.WARNING), f"malformed:{type(exc).__name__}",
                       "malformed HTTP request refused with %s (%s)", exc.code, type(exc).__name__)
        return False


MALFORMED_REQUEST_LOG = MalformedRequestLog()


def make_app(max_body_bytes: int, limits: Any = None, now: Callable[[], float] = time.monotonic) -> web.Application:
    """The daemon's Application; with `limits` (config HttpLimits) intake POSTs are rate-limited per client and
    bounded in time (ingest/limits.py)."""
    server_log = logging.getLogger("aiohttp.server")
    if MALFORMED_REQUEST_LOG not in server_log.filters:
        server_log.addFilter(MALFORMED_REQUEST_LOG)
    middlewares: list[Any] = [error_middleware]
    if limits is not None:
        buckets = ClientLimits(
            ip=TokenBuckets(Rate(limits.per_ip_per_minute, limits.per_ip_burst)),
            api_key=TokenBuckets(Rate(limits.per_api_key_per_minute, limits.per_api_key_burst)),
            device=TokenBuckets(Rate(limits.per_device_per_minute, limits.per_device_burst)))
        middlewares.append(limits_middleware(buckets, limits.body_timeout_seconds, now))
    return web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
