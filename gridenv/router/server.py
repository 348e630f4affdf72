"""HTTP service for an exported routing policy: a starlette app served by uvicorn.

    python -m gridenv.router serve --policy exported/metro --port 8090 [--host 127.0.0.1] [--workers 2]

Needs the ``[router]`` extra (``pip install -e '.[router]'``: onnxruntime, starlette, uvicorn
with httptools and uvloop). Endpoints (JSON in, JSON out, HTTP/1.1 keep-alive):

``POST /v1/route``
    Body: :class:`gridenv.router.schemas.RouteRequest` (a snapshot of the endpoints and the
    request). Answer: :class:`~gridenv.router.schemas.RouteDecision`.
``POST /v1/score``
    Same body; llm-d scorer style answer :class:`~gridenv.router.schemas.ScoreAnswer`.
``GET /healthz``
    ``{"status": "ok", "policy_sha256", "scenario", "env_id", "sites", ..., "prefix_index": {...}}``
    (the prefix index's entries and bound per endpoint, in the worker that answers).
``GET /openapi.json``
    The OpenAPI 3.1 document, with the bodies' JSON Schemas narrowed to the served policy.

Every error is JSON :class:`~gridenv.router.schemas.ErrorAnswer` ``{"error": "<field>: <what is
wrong>", "errors": [{"loc", "msg", "type"}, ...]}``: 400 for a body that is empty, not JSON (also:
nested deeper than the parser's limit), or does not match the schema or the policy (wrong type,
out of range, non-finite, unknown field, unknown endpoint/region/model); 408 when the body does
not arrive within ``body_timeout_s`` (e.g. shorter than its Content-Length); 413 for a body over
``max_body_bytes`` (checked on Content-Length before reading, and while reading a chunked body);
404 / 405 for an unknown path / wrong method; 500 (logged) if the policy itself fails. The body
is read with a size cap before parsing, and parsed by pydantic-core (bounded nesting), so no
body can exhaust the stack or hang a worker. The service binds 127.0.0.1 unless told otherwise:
it has no authentication.

Prefix index: a body with ``request.block_hashes`` is matched against the service's own
approximate index (:mod:`gridenv.router.prefix`), which fills ``prefix_indexed_frac`` (and,
when the caller sends no precise value, ``prefix_cached_frac``) for the endpoints that do not
carry them, and records the hashes at the endpoint the answer names (``/v1/route``: the
decision; ``/v1/score``: ``best``). Its bound per endpoint is ``prefix_index_entries`` (default:
the endpoint's KV capacity in 128-token entries). Each worker process keeps its own index.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from gridenv.router.runtime import RouterPolicy, SnapshotError
from gridenv.router.schemas import format_errors, openapi_document, parse_route_body, summary

__all__ = ["create_app", "app_from_env", "serve", "start_in_thread", "RunningServer", "bind_socket",
           "MAX_BODY_BYTES", "BODY_TIMEOUT_S"]

#: Largest accepted request body (a snapshot of 100 endpoints is about 20 kB).
MAX_BODY_BYTES = 256 * 1024
#: Seconds a request body may take to arrive completely.
BODY_TIMEOUT_S = 10.0
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 60

_ENV_POLICY = "GRIDENV_ROUTER_POLICY"
_ENV_MAX_BODY = "GRIDENV_ROUTER_MAX_BODY_BYTES"
_ENV_BODY_TIMEOUT = "GRIDENV_ROUTER_BODY_TIMEOUT_S"
_ENV_INDEX_ENTRIES = "GRIDENV_ROUTER_PREFIX_INDEX_ENTRIES"

log = logging.getLogger("gridenv.router")


class BodyError(Exception):
    """A request that is answered with an error before its body is parsed."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def _json(payload, status: int = 200, close: bool = False, headers: dict | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    h = dict(headers or {})
    if close:
        h["Connection"] = "close"  # uvicorn closes the connection after this answer
    return Response(body, status_code=status, media_type="application/json", headers=h)


def _error(status: int, message: str, errors: list | None = None, close: bool = False,
           headers: dict | None = None) -> Response:
    return _json({"error": message, "errors": errors or []}, status, close=close, headers=headers)


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body, read with a size cap and a deadline; raises BodyError."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise BodyError(400, f"invalid Content-Length {cl[:40]!r}", close=True)
        if int(cl) > max_bytes:
            raise BodyError(413, f"body of {cl} bytes is over the limit of {max_bytes} bytes", close=True)
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout_s):  # asyncio.timeout is 3.11+
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = msg.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BodyError(413, f"body is over the limit of {max_bytes} bytes", close=True)
                    chunks.append(chunk)
                if not msg.get("more_body", False):
                    break
    except TimeoutError:
        want = f" of {cl}" if cl is not None else ""
        raise BodyError(408, f"body incomplete after {timeout_s:g} s: got {size}{want} bytes",
                        close=True) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(policy: RouterPolicy | str, max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout_s: float = BODY_TIMEOUT_S, prefix_index_entries: int | None = None) -> Starlette:
    """The ASGI app serving `policy` (a RouterPolicy or a policy directory), with its own prefix
    index (`prefix_index_entries` per endpoint; None: each endpoint's KV capacity in entries)."""
    if not isinstance(policy, RouterPolicy):
        policy = RouterPolicy.load(policy)
    index = policy.new_prefix_index(prefix_index_entries)
    health = policy.health()
    st = policy.statics
    info = {**health, "regions": list(st.region_names),
            "models": sorted({st.model_names[m] for m in st.site_model})}
    openapi = openapi_document(info, max_body_bytes)

    async def body_of(request: Request):
        """The validated body as the runtime's dict, or an error Response."""
        try:
            raw = await _read_body(request, max_body_bytes, body_timeout_s)
        except BodyError as err:
            return _error(err.status, err.message, [{"loc": "body", "msg": err.message, "type": "body"}],
                          close=err.close)
        if not raw.strip():
            msg = 'empty body: expected a JSON object {"endpoints": [...], "request": {...}}'
            return _error(400, msg, [{"loc": "body", "msg": msg, "type": "missing"}])
        try:
            return parse_route_body(raw)
        except ValidationError as err:
            errors = format_errors(err)
            return _error(400, summary(errors), errors)

    def decide(fn, data) -> Response:
        try:
            return _json(fn(data, index))
        except SnapshotError as err:  # policy-specific: endpoint names, regions, models, levels
            msg = str(err)
            loc = msg.split(":", 1)[0]
            return _error(400, msg, [{"loc": loc, "msg": msg[len(loc) + 2:], "type": "policy"}])

    async def route(request: Request) -> Response:
        data = await body_of(request)
        return data if isinstance(data, Response) else decide(policy.decide, data)

    async def score(request: Request) -> Response:
        data = await body_of(request)
        return data if isinstance(data, Response) else decide(policy.score, data)

    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client closed its connection mid-body: nobody to answer (uvicorn drops this)
        return _error(400, "client disconnected before the body was complete")

    async def healthz(request: Request) -> Response:
        return _json({**health, "prefix_index": index.stats()})

    async def openapi_json(request: Request) -> Response:
        return _json(openapi)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            msg = f"unknown path {path!r}; endpoints: POST /v1/route, POST /v1/score, GET /healthz, GET /openapi.json"
        elif exc.status_code == 405:  # starlette lists the methods from a set: give a stable order
            allow = ", ".join(sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()))
            exc.headers = {**(exc.headers or {}), "Allow": allow}
            msg = f"{request.method} {path}: method not allowed, use {allow}"
        else:
            msg = str(exc.detail)
        return _error(exc.status_code, msg, [{"loc": "path", "msg": msg, "type": str(exc.status_code)}],
                      headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
        msg = f"internal error: {type(exc).__name__}: {exc}"
        return _error(500, msg, [{"loc": "policy", "msg": msg, "type": "internal"}])

    app = Starlette(
        routes=[
            Route("/v1/route", route, methods=["POST"]),
            Route("/v1/score", score, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, ClientDisconnect: client_gone, Exception: internal_error},
    )
    app.state.policy = policy
    app.state.prefix_index = index
    app.state.openapi = openapi
    return app


def app_from_env() -> Starlette:
    """App factory for uvicorn worker processes: the policy directory is in $GRIDENV_ROUTER_POLICY."""
    entries = os.environ.get(_ENV_INDEX_ENTRIES)
    return create_app(os.environ[_ENV_POLICY], int(os.environ.get(_ENV_MAX_BODY, MAX_BODY_BYTES)),
                      float(os.environ.get(_ENV_BODY_TIMEOUT, BODY_TIMEOUT_S)),
                      int(entries) if entries else None)


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: any free port), shared by every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app, workers: int = 1, verbose: bool = False, **kw):
    import uvicorn

    return uvicorn.Config(app, workers=workers, log_level="info" if verbose else "warning",
                          access_log=verbose, timeout_keep_alive=KEEP_ALIVE_S, lifespan="off",
                          server_header=False, date_header=True, **kw)


@dataclass
class RunningServer:
    """A server running in a thread of this process (tests, notebooks); ``stop()`` ends it."""

    server: object
    thread: threading.Thread
    url: str
    policy: RouterPolicy
    prefix_index: object = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.rsplit("//", 1)[1].rsplit(":", 1)
        return host.strip("[]"), int(port)

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_in_thread(policy: RouterPolicy | str, host: str = "127.0.0.1", port: int = 0,
                    max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S,
                    prefix_index_entries: int | None = None) -> RunningServer:
    """Serve in a daemon thread with uvicorn (one event loop); waits until it accepts connections."""
    import uvicorn

    app = create_app(policy, max_body_bytes, body_timeout_s, prefix_index_entries)
    sock = bind_socket(host, port)
    server = uvicorn.Server(_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gridenv-router", daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    if not server.started:
        raise RuntimeError("the router service did not start")
    return RunningServer(server, thread, _url(sock), app.state.policy, app.state.prefix_index)


def serve(policy_dir: str, host: str = "127.0.0.1", port: int = 8090, workers: int = 1, verbose: bool = False,
          max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S,
          prefix_index_entries: int | None = None) -> None:
    """Load the policy and serve until interrupted (prints ``listening on URL`` first).

    The policy is loaded (and verified) here first, so a broken one fails before binding; with
    ``workers > 1`` each uvicorn worker process loads it again and they share one socket (and
    each keeps its own prefix index).
    """
    import uvicorn

    policy = RouterPolicy.load(policy_dir)
    caps = policy.new_prefix_index(prefix_index_entries).capacity_entries
    sock = bind_socket(host, port)
    print(f"gridenv router: policy {policy.path} (scenario {policy.scenario}, {len(policy.site_names)} sites, "
          f"sha256 {policy.sha256[:12]}...), {workers} worker{'s' if workers > 1 else ''}, prefix index "
          f"{min(caps)}-{max(caps)} entries per endpoint{' per worker' if workers > 1 else ''}", flush=True)
    print(f"listening on {_url(sock)}", flush=True)
    try:
        if workers == 1:
            uvicorn.Server(_config(create_app(policy, max_body_bytes, body_timeout_s, prefix_index_entries),
                                   verbose=verbose)).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            os.environ.update({_ENV_POLICY: str(policy.path), _ENV_MAX_BODY: str(max_body_bytes),
                               _ENV_BODY_TIMEOUT: repr(body_timeout_s),
                               _ENV_INDEX_ENTRIES: "" if prefix_index_entries is None else str(prefix_index_entries)})
            config = _config("gridenv.router.server:app_from_env", workers=workers, verbose=verbose, factory=True)
            Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        print("gridenv router: stopped", file=sys.stderr, flush=True)
