"""A loopback stand-in for Caddy's /call/ routes, for the browser test only (never deployed).

    TOKEN_KEY=... python -m tests.browser.page_server --root DIR --port P \
        --route /call/=http://127.0.0.1:8090 [--route /other/call/=http://127.0.0.1:8091 ...] \
        [--public-route /demo/call/=http://127.0.0.1:8092]

For each route prefix it does what the deploy's Caddy does in private mode: serves the built
page (index.html, app.js, app.css) under the prefix, and proxies POST <prefix>token to the
upstream token service's /call/token, replacing the browser's Authorization header with
`Authorization: Bearer $TOKEN_KEY` and appending the peer to X-Forwarded-For. A public route
(Caddy in public demo mode) strips the Authorization header instead of adding the key. Basic auth is
Caddy's job and is tested against the real Caddy, not here. TOKEN_KEY comes from the
environment, never argv. Binds 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

FILES = {"": "index.html", "index.html": "index.html", "app.js": "app.js", "app.css": "app.css"}
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def create_app(root: Path, routes: dict[str, str], token_key: str,
               public: frozenset[str] = frozenset()) -> web.Application:
    app = web.Application()

    async def on_startup(app: web.Application) -> None:
        app["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    async def on_cleanup(app: web.Application) -> None:
        await app["http"].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    for prefix, upstream in routes.items():
        def page(request: web.Request, prefix: str = prefix) -> web.StreamResponse:
            name = FILES.get(request.path[len(prefix):])
            if name is None:
                raise web.HTTPNotFound()
            path = root / name
            return web.Response(body=path.read_bytes(), content_type=TYPES[path.suffix],
                                headers={"Cache-Control": "no-cache"})

        async def token(request: web.Request, upstream: str = upstream, keyed: bool = prefix not in public
                        ) -> web.StreamResponse:
            forwarded = ", ".join(v for v in (request.headers.get("X-Forwarded-For"), request.remote) if v)
            headers = {"Content-Type": request.headers.get("Content-Type", "application/json"),
                       "X-Forwarded-For": forwarded}
            if keyed:
                headers["Authorization"] = f"Bearer {token_key}"
            async with request.app["http"].post(f"{upstream}/call/token", data=await request.read(),
                                                headers=headers) as resp:
                return web.Response(status=resp.status, body=await resp.read(),
                                    content_type=resp.content_type, headers={"Cache-Control": "no-store"})

        app.router.add_get(prefix.rstrip("/"), lambda _r, p=prefix: web.HTTPFound(p))
        app.router.add_get(prefix + "{name:[a-z.]*}", page)
        app.router.add_post(prefix + "token", token)
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="the built page (web/build.py prints it)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--route", action="append", required=True, metavar="PREFIX=UPSTREAM")
    ap.add_argument("--public-route", action="append", default=[], metavar="PREFIX=UPSTREAM",
                    help="a route whose token requests go upstream without the key")
    args = ap.parse_args(argv)
    key = os.environ.get("TOKEN_KEY", "")
    if not key:
        print("error: TOKEN_KEY is not set; the page server adds it to the token requests", file=sys.stderr)
        return 2
    public = dict(r.split("=", 1) for r in args.public_route)
    routes = {**dict(r.split("=", 1) for r in args.route), **public}
    web.run_app(create_app(args.root, routes, key, frozenset(public)), host="127.0.0.1", port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
