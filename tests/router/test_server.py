"""gridenv.router.server over real HTTP on loopback (http.client), and the serve CLI."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("sb3_contrib")

import gymnasium as gym  # noqa: E402

import gridenv  # noqa: E402,F401
from gridenv.router.server import MAX_BODY_BYTES, start_in_thread  # noqa: E402

METRO = "gridenv/Metro-v1"
SITES = ["edge-north", "edge-south", "edge-east", "edge-west", "core"]


@pytest.fixture(scope="module")
def policy_dir(tiny_metro_run, tmp_path_factory):
    from agents.export import export_policy

    out = tmp_path_factory.mktemp("server_policy") / "metro"
    export_policy(tiny_metro_run, out, verify_states=0)
    return out


@pytest.fixture(scope="module")
def server(policy_dir):
    srv = start_in_thread(str(policy_dir))
    yield srv
    srv.shutdown()
    srv.server_close()


def _snapshot() -> dict:
    return {
        "endpoints": [
            {"name": n, "waiting": i, "running": 3 * i, "kv_util": 0.1 * i, "rtt_ms": 6.0 + 8 * i,
             "energy_price_usd_per_kwh": 0.18, "up": True}
            for i, n in enumerate(SITES)
        ],
        "request": {"prompt_tokens": 700, "slo_class": "code", "origin": "east", "model": "llama-3-8b",
                    "residency": False},
        "hour_utc": 9.5,
    }


def _call(server, method: str, path: str, body=None, headers=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    if own:
        conn.close()
    return resp.status, (json.loads(data) if data else None), resp


def test_route(server):
    status, d, resp = _call(server, "POST", "/v1/route", _snapshot())
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    assert d["endpoint"] in SITES or d["shed"]
    assert d == server.policy.decide(_snapshot())


def test_score(server):
    status, d, _ = _call(server, "POST", "/v1/score", _snapshot())
    assert status == 200
    assert list(d["scores"]) == SITES and all(0 <= v <= 1 for v in d["scores"].values())
    assert d["best"] == server.policy.decide(_snapshot())["endpoint"]


def test_healthz(server):
    status, d, _ = _call(server, "GET", "/healthz")
    assert status == 200
    assert d["status"] == "ok" and d["scenario"] == "metro" and d["sites"] == SITES
    assert d["policy_sha256"] == server.policy.sha256 and len(d["policy_sha256"]) == 64


@pytest.mark.parametrize("body,reason", [
    (b"{not json", "invalid JSON"),
    (b"", "empty body"),
    (b"\xff\xfe\x00", "invalid JSON"),
    (b'{"endpoints": NaN}', "invalid JSON"),
    (b"[1, 2]", "body: expected a JSON object"),
    ("missing", "request.residency: missing"),
    ("wrong_type", "endpoints[1].kv_util: expected a number in [0, 1], got \"high\""),
    ("unknown_endpoint", "endpoints[0].name: unknown endpoint \"edge-moon\""),
])
def test_bad_bodies_are_400_with_reason(server, body, reason):
    if isinstance(body, str):
        snap = _snapshot()
        if body == "missing":
            del snap["request"]["residency"]
        elif body == "wrong_type":
            snap["endpoints"][1]["kv_util"] = "high"
        else:
            snap["endpoints"][0]["name"] = "edge-moon"
        body = json.dumps(snap).encode()
    for path in ("/v1/route", "/v1/score"):
        status, d, _ = _call(server, "POST", path, body)
        assert status == 400, d
        assert reason in d["error"], d


def test_too_large_unknown_path_wrong_method(server):
    status, d, resp = _call(server, "POST", "/v1/route", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and "over the limit" in d["error"]
    assert resp.getheader("Connection") == "close"
    import socket

    with socket.create_connection(server.server_address[:2], timeout=10) as s:  # huge: not read
        s.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        assert s.recv(4096).decode().startswith("HTTP/1.1 413")
    status, d, _ = _call(server, "GET", "/v2/nothing")
    assert status == 404 and "unknown path" in d["error"]
    status, d, _ = _call(server, "POST", "/nope", _snapshot())
    assert status == 404
    status, d, resp = _call(server, "GET", "/v1/route")
    assert status == 405 and resp.getheader("Allow") == "POST"
    status, d, _ = _call(server, "POST", "/healthz", b"{}")
    assert status == 405


def test_keep_alive_survives_errors(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    seq = [("POST", "/v1/route", _snapshot(), 200), ("POST", "/v1/route", b"{bad", 400),
           ("GET", "/nowhere", None, 404), ("GET", "/v1/score", None, 405),
           ("GET", "/healthz", None, 200), ("POST", "/v1/score", _snapshot(), 200)]
    for method, path, body, want in seq:
        status, _, _ = _call(server, method, path, body, conn=conn)
        assert status == want, (method, path)
    conn.close()


def test_no_content_length(server):
    import socket

    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(b"POST /v1/route HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 411") and "Content-Length" in head


def test_concurrent_clients(server):
    errors: list = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        for i in range(25):
            snap = _snapshot()
            snap["request"]["prompt_tokens"] = 100 + 37 * (k * 25 + i)
            status, d, _ = _call(server, "POST", "/v1/route", snap, conn=conn)
            if status != 200 or d != server.policy.decide(snap):
                errors.append((status, d))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_serve_cli_subprocess(policy_dir, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gridenv.router", "serve", "--policy", str(policy_dir),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for _ in range(5):
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        assert url and url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["scenario"] == "metro"
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # a policy that fails verification: one error line, exit 2
    r = subprocess.run([sys.executable, "-m", "gridenv.router", "serve", "--policy", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
