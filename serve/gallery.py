"""The gallery page (GET / and /gallery): look at what a generator makes, no build step.

Plain HTML + JS + CSS shipped in the package (serve/gallery_static). The page itself needs no
token and holds no data: it asks for the token once, keeps it in sessionStorage (never in the
URL) and calls the same API as every client, so the API's auth rules apply unchanged.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "gallery_static"


def add_gallery(app: FastAPI, limits: dict) -> None:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    config = {"max_n": limits["max_n"], "min_truncation": limits["min_truncation"],
              "max_truncation": limits["max_truncation"]}

    async def gallery(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        body = (page.replace("{{ROOT}}", html.escape(root, quote=True))
                .replace("{{CONFIG}}", html.escape(json.dumps(config), quote=True)))
        # The page loads only its own assets and talks only to this origin.
        csp = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"
        return HTMLResponse(body, headers={"Content-Security-Policy": csp, "Cache-Control": "no-store",
                                           "Referrer-Policy": "no-referrer"})

    for path in ("/", "/gallery"):
        app.add_api_route(path, gallery, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/gallery/static", StaticFiles(directory=STATIC), name="gallery-static")
