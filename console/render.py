"""Server-rendered pages: Jinja2 templates shipped with the daemon, autoescaped, no external CDN."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    html = _env.get_template(template).render(request=request, **context)
    resp = web.Response(text=html, content_type="text/html", charset="utf-8", status=status)
    # Staff pages carry reporters' names and phones: never kept by a shared cache, framed by another site (the
    # CSP's frame-ancestors for browsers that ignore X-Frame-Options) or read as another type.
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
                                               " frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"
    return resp
