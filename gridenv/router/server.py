"""HTTP service for an exported routing policy, on the standard library only.

    python -m gridenv.router serve --policy exported/metro --port 8090 [--host 127.0.0.1]

Endpoints (JSON in, JSON out, HTTP/1.1 keep-alive):

``POST /v1/route``
    Body: a snapshot (see :mod:`gridenv.router.runtime`). Answer: the decision,
    ``{"endpoint", "shed", "batch_level", "max_batch_size", "scores", "shed_score",
    "site_index", "action"}``.
``POST /v1/score``
    Same body; llm-d scorer style answer: ``{"scores": {endpoint: score in [0, 1]},
    "shed_score", "best", "shed", "batch_level", "max_batch_size"}``.
``GET /healthz``
    ``{"status": "ok", "policy_sha256", "scenario", "env_id", "sites", ...}``.

Errors are JSON ``{"error": "..."}``: 400 for a body that is empty, not JSON, or has a missing
or invalid field (the message names it: ``endpoints[2].kv_util: expected a number in [0, 1],
got 1.7``), 404 for an unknown path, 405 for a wrong method, 413 for a body over
``MAX_BODY_BYTES``, 411 for a body without Content-Length. The service binds 127.0.0.1 unless
told otherwise: it has no authentication.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gridenv.router.runtime import RouterPolicy, SnapshotError

__all__ = ["make_server", "serve", "RouterHandler", "MAX_BODY_BYTES"]

#: Largest accepted request body (a snapshot of 100 endpoints is about 20 kB).
MAX_BODY_BYTES = 256 * 1024

_ROUTES = {"/v1/route": "POST", "/v1/score": "POST", "/healthz": "GET"}
_ROUTES_TEXT = "POST /v1/route, POST /v1/score, GET /healthz"


_MAX_LINE = 65536
_DRAIN_LIMIT = 16 * MAX_BODY_BYTES  # larger bodies: answer 413 and close without reading them
_REASONS = {code.value: code.phrase for code in HTTPStatus}
_date_cache = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number")


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class RouterHandler(BaseHTTPRequestHandler):
    """One connection; ``self.server.policy`` is the RouterPolicy.

    The request line and headers are parsed here rather than by ``http.client.parse_headers``
    (the email parser costs more than the decision itself), and each response goes out in one
    write; the rest (connection loop, timeouts) is BaseHTTPRequestHandler's.
    """

    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "gridenv-router/1"
    disable_nagle_algorithm = True
    timeout = 60  # seconds a keep-alive connection may idle (and a body may take to arrive)
    max_header_lines = 100

    # ------------------------------------------------------------------ HTTP plumbing
    def handle_one_request(self) -> None:
        self.command, self.path, self.request_version = None, "", "HTTP/1.1"
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            if len(line) > _MAX_LINE:
                self._error(414, "request line too long", close=True)
                return
            self.requestline = line.decode("latin-1").rstrip("\r\n")
            parts = self.requestline.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self._error(400, f"bad request line {self.requestline[:80]!r}", close=True)
                return
            self.command, self.path, self.request_version = parts
            if self.request_version not in ("HTTP/1.1", "HTTP/1.0"):
                self._error(505, f"HTTP version {self.request_version} not supported", close=True)
                return
            headers: dict[str, str] = {}
            for _ in range(self.max_header_lines + 1):
                h = self.rfile.readline(_MAX_LINE + 1)
                if h in (b"\r\n", b"\n", b""):
                    break
                if len(h) > _MAX_LINE:
                    self._error(431, "header line too long", close=True)
                    return
                key, sep, value = h.decode("latin-1").partition(":")
                if not sep:
                    self._error(400, f"bad header line {h[:80]!r}", close=True)
                    return
                headers[key.strip().lower()] = value.strip()
            else:
                self._error(431, "too many headers", close=True)
                return
            self.headers = headers
            conn = headers.get("connection", "").lower()
            if self.request_version == "HTTP/1.0":
                self.close_connection = conn != "keep-alive"
            else:
                self.close_connection = conn == "close"
            if headers.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            method = self.command
            if method == "POST":
                self.do_POST()
            elif method in ("GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"):
                self._check_route(method)
                if method == "GET" and self._path() == "/healthz":
                    self._send(200, self.server.health())
            else:
                self._error(501, f"method {method!r} not supported", close=True)
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def _send(self, status: int, payload, close: bool = False, headers: dict | None = None) -> None:
        body = _dumps(payload)
        if close:
            self.close_connection = True
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", f"Server: {self.server_version}",
                 f"Date: {_http_date()}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        lines += ["", ""]
        self.wfile.write("\r\n".join(lines).encode("latin-1") + body)  # one write per response
        if getattr(self.server, "verbose", False):
            self.log_message('"%s" %d %d', self.requestline, status, len(body))

    def _error(self, status: int, message: str, close: bool = False, headers: dict | None = None) -> None:
        self._send(status, {"error": message}, close=close, headers=headers)

    def send_error(self, code, message=None, explain=None):  # noqa: D102 - JSON for base-class errors
        try:
            self._error(code, message or _REASONS.get(code, "error"), close=True)
        except OSError:
            pass

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _check_route(self, method: str) -> str | None:
        path = self._path()
        want = _ROUTES.get(path)
        if want is None:
            self._discard_body()
            self._error(404, f"unknown path {path!r}; endpoints: {_ROUTES_TEXT}")
            return None
        if want != method:
            self._discard_body()
            self._error(405, f"{method} {path}: method not allowed, use {want}", headers={"Allow": want})
            return None
        return path

    def _discard_body(self) -> None:
        """Read and drop a small body so the keep-alive connection stays in sync."""
        if self.headers.get("transfer-encoding"):
            self.close_connection = True
            return
        try:
            n = int(self.headers.get("content-length") or 0)
        except ValueError:
            self.close_connection = True
            return
        if 0 < n <= MAX_BODY_BYTES:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def _read_json(self):
        """The parsed body, or None after answering with an error."""
        if self.headers.get("transfer-encoding"):
            self._error(411, "chunked bodies are not supported: send Content-Length", close=True)
            return None
        cl = self.headers.get("content-length")
        if cl is None:
            self._error(411, "Content-Length required (body: a JSON snapshot)", close=True)
            return None
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"invalid Content-Length {cl!r}", close=True)
            return None
        if n > MAX_BODY_BYTES:
            if n <= _DRAIN_LIMIT:  # read it, so the client sees the 413 rather than a reset
                while n > 0:
                    chunk = self.rfile.read(min(65536, n))
                    if not chunk:
                        break
                    n -= len(chunk)
            self._error(413, f"body of {cl} bytes is over the limit of {MAX_BODY_BYTES}", close=True)
            return None
        if n == 0:
            self._error(400, "empty body: expected a JSON snapshot {\"endpoints\": [...], \"request\": {...}}")
            return None
        raw = self.rfile.read(n)
        if len(raw) < n:
            self.close_connection = True
            return None
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            self._error(400, f"invalid JSON: {err}")
            return None

    # ------------------------------------------------------------------ routes
    def do_POST(self) -> None:  # noqa: N802
        path = self._check_route("POST")
        if path is None:
            return
        data = self._read_json()
        if data is None:
            return
        policy: RouterPolicy = self.server.policy
        try:
            result = policy.decide(data) if path == "/v1/route" else policy.score(data)
        except SnapshotError as err:
            self._error(400, str(err))
            return
        except Exception as err:  # noqa: BLE001 - keep serving, report it
            self.log_error("internal error on %s: %r", path, err)
            self._error(500, f"internal error: {type(err).__name__}: {err}")
            return
        self._send(200, result)


class RouterServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the policy (one thread per connection)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: bursts of new connections are not dropped

    def __init__(self, address, policy: RouterPolicy, verbose: bool = False) -> None:
        self.policy = policy
        self.verbose = verbose
        super().__init__(address, RouterHandler)
        self._health = policy.health()

    def health(self) -> dict:
        return self._health

    def handle_error(self, request, client_address) -> None:
        if self.verbose:
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(policy: RouterPolicy | str, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False) -> RouterServer:
    """A bound (not yet serving) server; port 0 picks a free port (see ``server.url``)."""
    if not isinstance(policy, RouterPolicy):
        policy = RouterPolicy.load(policy)
    return RouterServer((host, port), policy, verbose=verbose)


def start_in_thread(policy: RouterPolicy | str, host: str = "127.0.0.1", port: int = 0) -> RouterServer:
    """Serve in a daemon thread (tests, notebooks); stop with ``server.shutdown()``."""
    srv = make_server(policy, host, port)
    threading.Thread(target=srv.serve_forever, name="gridenv-router", daemon=True).start()
    return srv


def serve(policy_dir: str, host: str = "127.0.0.1", port: int = 8090, verbose: bool = False) -> None:
    """Load the policy and serve until interrupted (prints the URL on one line first)."""
    srv = make_server(policy_dir, host, port, verbose)
    p = srv.policy
    print(f"gridenv router: policy {p.path} (scenario {p.scenario}, {len(p.site_names)} sites, "
          f"sha256 {p.sha256[:12]}...)", flush=True)
    print(f"listening on {srv.url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        print("gridenv router: stopped", file=sys.stderr, flush=True)
