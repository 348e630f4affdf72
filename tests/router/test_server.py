"""gridenv.router.server (starlette + uvicorn) over real HTTP on loopback, and the router CLI.

Every server here listens on an ephemeral 127.0.0.1 port and is stopped by its fixture or a
``finally``; every request loop is bounded and every socket has a timeout.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from gridenv.router.bench import _stop  # noqa: E402  (the bench starts and stops the same service)
from gridenv.router.schemas import RouteDecision, RouteRequest, ScoreAnswer  # noqa: E402
from gridenv.router.server import MAX_BODY_BYTES, start_in_thread  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "route_request.json"
METRO_MODEL = ROOT / "models" / "metro" / "onnx"
SITES = ["edge-north", "edge-south", "edge-east", "edge-west", "core"]
BODY_TIMEOUT_S = 1.0
TIMEOUT_S = 10


@pytest.fixture(scope="module")
def policy_dir(tiny_metro_run, tmp_path_factory):
    pytest.importorskip("sb3_contrib")
    from agents.export import export_policy

    out = tmp_path_factory.mktemp("server_policy") / "metro"
    export_policy(tiny_metro_run, out, verify_states=0)
    return out


@pytest.fixture(scope="module")
def server(policy_dir):
    srv = start_in_thread(str(policy_dir), body_timeout_s=BODY_TIMEOUT_S)
    try:
        yield srv
    finally:
        srv.stop()
    assert not srv.thread.is_alive()


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


def _conn(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(*server.address, timeout=TIMEOUT_S)


def _call(server, method: str, path: str, body=None, headers=None, conn=None):
    own = conn is None
    conn = conn or _conn(server)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        if own:
            conn.close()
    return resp.status, (json.loads(data) if data else None), resp


def _raw(server, data: bytes, shutdown_write: bool = False) -> bytes:
    """Send raw bytes on a new connection; everything the server answers until it closes or 5 s."""
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(data)
        if shutdown_write:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, rest = out.partition(b"\r\n\r\n")
                    n = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                         if line.lower().startswith(b"content-length:")]
                    if n and len(rest) >= n[0]:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _assert_alive(server) -> None:
    """A valid request still gets the policy's decision."""
    status, d, _ = _call(server, "POST", "/v1/route", _snapshot())
    assert status == 200, d
    assert d == server.policy.decide(_snapshot())


# ------------------------------------------------------------------ valid requests
def test_route(server):
    status, d, resp = _call(server, "POST", "/v1/route", _snapshot())
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    RouteDecision.model_validate(d)
    assert d["endpoint"] in SITES or d["shed"]
    assert d == server.policy.decide(_snapshot())


def test_score(server):
    status, d, _ = _call(server, "POST", "/v1/score", _snapshot())
    assert status == 200
    ScoreAnswer.model_validate(d)
    assert list(d["scores"]) == SITES and all(0 <= v <= 1 for v in d["scores"].values())
    assert d["best"] == server.policy.decide(_snapshot())["endpoint"]
    assert math.isclose(sum(d["scores"].values()) + d["shed_score"], 1.0, rel_tol=1e-5)


def test_healthz(server):
    status, d, _ = _call(server, "GET", "/healthz")
    assert status == 200
    assert d["status"] == "ok" and d["scenario"] == "metro" and d["sites"] == SITES
    assert d["policy_sha256"] == server.policy.sha256 and len(d["policy_sha256"]) == 64


def test_openapi_has_the_body_schemas(server):
    jsonschema = pytest.importorskip("jsonschema")
    status, doc, resp = _call(server, "GET", "/openapi.json")
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ("RouteRequest", "EndpointState", "RequestInfo", "RouteDecision", "ScoreAnswer", "ErrorAnswer"):
        assert name in schemas, name
    body_ref = doc["paths"]["/v1/route"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/RouteRequest"
    ep = schemas["EndpointState"]
    assert ep["additionalProperties"] is False and ep["properties"]["name"]["enum"] == SITES
    assert ep["properties"]["kv_util"]["minimum"] == 0 and ep["properties"]["kv_util"]["maximum"] == 1
    # the served schema accepts what the service accepts and rejects unknown fields / ranges
    schema = {"$ref": "#/components/schemas/RouteRequest", "components": doc["components"]}
    jsonschema.validate(_snapshot(), schema)
    for mutate in (lambda s: s["endpoints"][0].update(kv_utilization=0.1),
                   lambda s: s["endpoints"][1].update(kv_util=1.5),
                   lambda s: s["endpoints"][2].update(name="edge-moon"),
                   lambda s: s["request"].update(prompt_tokens=0)):
        snap = _snapshot()
        mutate(snap)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(snap, schema)
        status, _, _ = _call(server, "POST", "/v1/route", snap)
        assert status == 400


def test_body_models_follow_the_interface_declarations():
    """Each declared live signal / request field is a body field with the declared type and range."""
    from gridenv.core.interface import HOUR_FIELD, REQUEST_FIELDS, SITE_SIGNALS
    from gridenv.router.schemas import EndpointState, RequestInfo

    assert set(EndpointState.model_fields) == {"name"} | {s.name for s in SITE_SIGNALS}
    assert set(RequestInfo.model_fields) == {s.name for s in REQUEST_FIELDS}
    for model, signals in ((EndpointState, SITE_SIGNALS), (RequestInfo, REQUEST_FIELDS),
                           (RouteRequest, (HOUR_FIELD,))):
        schema = model.model_json_schema()
        for sig in signals:
            prop = schema["properties"][sig.name]
            branch = prop["anyOf"][0] if "anyOf" in prop else prop
            assert branch["type"] == sig.type, sig.name
            assert (sig.name in schema.get("required", [])) == sig.required, sig.name
            if sig.type == "array":  # declared bounds are the length's
                assert (branch["minItems"], branch["maxItems"]) == (sig.minimum, sig.maximum), sig.name
            elif sig.minimum is not None:
                assert branch.get("minimum", branch.get("exclusiveMinimum")) == sig.minimum, sig.name
            if sig.maximum is not None and sig.type != "array":
                assert branch.get("maximum", branch.get("exclusiveMaximum")) == sig.maximum, sig.name
            assert sig.description in prop["description"], sig.name


# ------------------------------------------------------------------ bad bodies
def _mut(fn):
    def make() -> bytes:
        snap = _snapshot()
        fn(snap)
        return json.dumps(snap).encode()
    return make


def _replace(old: str, new: str):
    def make() -> bytes:
        text = json.dumps(_snapshot())
        assert old in text
        return text.replace(old, new, 1).encode()
    return make


def _deep_arrays() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


def _deep_in_field() -> bytes:
    text = json.dumps(_snapshot())
    return text.replace('"kv_util": 0.0', '"kv_util": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000, 1).encode()


BAD_BODIES = {
    # id: (body, the words the message must contain)
    "not_json": (lambda: b"{not json", ["body", "invalid JSON"]),
    "empty": (lambda: b"", ["empty body"]),
    "not_utf8": (lambda: b"\xff\xfe\x00", ["body", "invalid JSON"]),
    "truncated_json": (lambda: json.dumps(_snapshot()).encode()[:-7], ["body", "invalid JSON"]),
    "deep_arrays_100k": (_deep_arrays, ["body", "invalid JSON", "recursion limit"]),
    "deep_objects_in_field": (_deep_in_field, ["body", "invalid JSON", "recursion limit"]),
    "list_body": (lambda: b"[1, 2]", ["body", "expected a JSON object", "a list"]),
    "string_body": (lambda: b'"route me"', ["body", "expected a JSON object", '"route me"']),
    "nan_literal": (_replace('"kv_util": 0.1', '"kv_util": NaN'), ["endpoints[1].kv_util", "finite", "nan"]),
    "infinity_literal": (_replace('"rtt_ms": 6.0', '"rtt_ms": Infinity'), ["endpoints[0].rtt_ms", "finite"]),
    "overflowing_number": (_replace('"waiting": 1', '"waiting": 1e999'), ["endpoints[1].waiting", "finite"]),
    "kv_util_above_1": (_mut(lambda s: s["endpoints"][1].update(kv_util=1.7)),
                        ["endpoints[1].kv_util", "less than or equal to 1", "1.7"]),
    "negative_waiting": (_mut(lambda s: s["endpoints"][3].update(waiting=-2)),
                         ["endpoints[3].waiting", "greater than or equal to 0", "-2"]),
    "negative_rtt": (_mut(lambda s: s["endpoints"][0].update(rtt_ms=-5.0)), ["endpoints[0].rtt_ms", "-5.0"]),
    "negative_price": (_mut(lambda s: s["endpoints"][4].update(energy_price_usd_per_kwh=-0.1)),
                       ["endpoints[4].energy_price_usd_per_kwh", "-0.1"]),
    "bool_as_number": (_mut(lambda s: s["endpoints"][2].update(running=True)),
                       ["endpoints[2].running", "valid number", "true"]),
    "number_as_bool": (_mut(lambda s: s["endpoints"][0].update(up=1)), ["endpoints[0].up", "valid boolean", "1"]),
    "string_as_number": (_mut(lambda s: s["endpoints"][1].update(kv_util="high")),
                         ["endpoints[1].kv_util", "valid number", '"high"']),
    "fractional_tokens": (_mut(lambda s: s["request"].update(prompt_tokens=700.5)),
                          ["request.prompt_tokens", "valid integer", "700.5"]),
    "string_tokens": (_mut(lambda s: s["request"].update(prompt_tokens="700")),
                      ["request.prompt_tokens", "valid integer", '"700"']),
    "zero_tokens": (_mut(lambda s: s["request"].update(prompt_tokens=0)),
                    ["request.prompt_tokens", "greater than or equal to 1", "0"]),
    "unknown_slo_class": (_mut(lambda s: s["request"].update(slo_class="batch")),
                          ["request.slo_class", "'chat'", '"batch"']),
    "zero_ttft_slo": (_mut(lambda s: s["request"].update(ttft_slo_s=0)), ["request.ttft_slo_s", "greater than 0"]),
    "negative_tpot_slo": (_mut(lambda s: s["request"].update(tpot_slo_s=-0.1)),
                          ["request.tpot_slo_s", "greater than 0", "-0.1"]),
    "hour_24": (_mut(lambda s: s.update(hour_utc=24)), ["hour_utc", "less than 24", "24"]),
    "negative_batch_level": (_mut(lambda s: s["endpoints"][0].update(batch_level=-1)),
                             ["endpoints[0].batch_level", "-1"]),
    "batch_level_too_high": (_mut(lambda s: s["endpoints"][0].update(batch_level=7)),
                             ["endpoints[0].batch_level", "7"]),
    "unknown_endpoint_field": (_mut(lambda s: s["endpoints"][2].update(kv_utilization=0.3)),
                               ["endpoints[2].kv_utilization", "unknown field", "kv_util"]),
    "unknown_request_field": (_mut(lambda s: s["request"].update(priority="high")),
                              ["request.priority", "unknown field"]),
    "unknown_top_field": (_mut(lambda s: s.update(snapshot_id=7)), ["snapshot_id", "unknown field"]),
    "missing_request_field": (_mut(lambda s: s["request"].pop("residency")), ["request.residency", "missing"]),
    "missing_endpoints": (_mut(lambda s: s.pop("endpoints")), ["endpoints", "missing"]),
    "empty_endpoints": (_mut(lambda s: s.update(endpoints=[])), ["endpoints", "at least 1"]),
    "endpoint_not_object": (_mut(lambda s: s["endpoints"].__setitem__(1, 5)), ["endpoints[1]", "5"]),
    "null_name": (_mut(lambda s: s["endpoints"][0].update(name=None)), ["endpoints[0].name", "null"]),
    "unknown_endpoint_name": (_mut(lambda s: s["endpoints"][0].update(name="edge-moon")),
                              ["endpoints[0].name", "edge-moon"]),
    "duplicate_endpoint": (_mut(lambda s: s["endpoints"][1].update(name="edge-north")),
                           ["endpoints[1].name", "duplicate", "edge-north"]),
    "missing_site": (_mut(lambda s: s["endpoints"].pop()), ["endpoints", "missing core"]),
    "unknown_origin": (_mut(lambda s: s["request"].update(origin="mars")), ["request.origin", "mars"]),
    "unknown_model": (_mut(lambda s: s["request"].update(model="gpt-9")), ["request.model", "gpt-9"]),
    # the parser kept the last value in silence (routed at 3 h)
    "duplicate_key": (_replace('"hour_utc": ', '"hour_utc": 3, "hour_utc": '), ['"hour_utc" given twice']),
    "duplicate_nested_key": (_replace('"kv_util": 0.1', '"kv_util": 0.9, "kv_util": 0.1'),
                             ['"kv_util" given twice']),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_body_gets_400_naming_the_problem(server, case):
    make, words = BAD_BODIES[case]
    body = make()
    for path in ("/v1/route", "/v1/score"):
        conn = _conn(server)
        try:
            status, d, resp = _call(server, "POST", path, body, conn=conn)
            assert status == 400, (case, d)
            assert resp.getheader("Content-Type") == "application/json"
            assert set(d) == {"error", "errors"} and d["errors"], d
            for w in words:
                assert w in d["error"], (case, w, d["error"])
            # the keep-alive connection still works, and so does a new one
            status, d2, _ = _call(server, "POST", path, _snapshot(), conn=conn)
            assert status == 200, d2
        finally:
            conn.close()
    _assert_alive(server)


def test_error_lists_every_problem(server):
    snap = _snapshot()
    snap["endpoints"][0]["kv_util"] = 2.0
    snap["endpoints"][3]["rtt_ms"] = -1
    snap["request"]["bogus"] = 1
    status, d, _ = _call(server, "POST", "/v1/route", snap)
    assert status == 400
    assert {e["loc"] for e in d["errors"]} == {"endpoints[0].kv_util", "endpoints[3].rtt_ms", "request.bogus"}
    assert "and 2 more problems" in d["error"]


# ------------------------------------------------------------------ size, truncation, HTTP-level errors
def test_oversized_body_is_413(server):
    status, d, resp = _call(server, "POST", "/v1/route", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413 and "over the limit" in d["error"] and str(MAX_BODY_BYTES) in d["error"]
    assert resp.getheader("Connection") == "close"
    # announced as 1 GB and never sent: answered from the header alone
    t0 = time.monotonic()
    out = _raw(server, b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413") and b"1000000000" in out and time.monotonic() - t0 < 5
    # chunked (no Content-Length), growing past the limit
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 2))
    out = _raw(server, b"POST /v1/route HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 413") and b"over the limit" in out
    _assert_alive(server)


def test_chunked_valid_body_is_accepted(server):
    body = json.dumps(_snapshot()).encode()
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:])) + b"0\r\n\r\n"
    out = _raw(server, b"POST /v1/route HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert out.startswith(b"HTTP/1.1 200")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1]) == server.policy.decide(_snapshot())


def test_truncated_body_gets_408_then_service_continues(server):
    body = json.dumps(_snapshot()).encode()
    head = b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100)
    t0 = time.monotonic()
    out = _raw(server, head + body)  # 100 bytes short; the client waits for an answer
    waited = time.monotonic() - t0
    assert out.startswith(b"HTTP/1.1 408"), out[:200]
    answer = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert "body incomplete" in answer["error"] and f"got {len(body)} of {len(body) + 100}" in answer["error"]
    assert BODY_TIMEOUT_S * 0.9 <= waited < BODY_TIMEOUT_S + 4
    _assert_alive(server)


def test_truncated_body_then_client_closes(server):
    body = json.dumps(_snapshot()).encode()
    head = b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100)
    out = _raw(server, head + body, shutdown_write=True)  # EOF mid-body: no request to answer
    assert not out.startswith(b"HTTP/1.1 200")
    _assert_alive(server)


def test_garbage_request_line_and_bad_content_length(server):
    out = _raw(server, b"HELLO\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    out = _raw(server, b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}")
    assert out.startswith(b"HTTP/1.1 400")
    _assert_alive(server)


def test_unknown_path_and_wrong_method(server):
    status, d, _ = _call(server, "GET", "/v2/nothing")
    assert status == 404 and "unknown path '/v2/nothing'" in d["error"]
    status, d, _ = _call(server, "POST", "/nope", _snapshot())
    assert status == 404
    status, d, resp = _call(server, "GET", "/v1/route")
    assert status == 405 and resp.getheader("Allow") == "POST" and "GET /v1/route" in d["error"]
    status, d, resp = _call(server, "POST", "/healthz", b"{}")
    assert status == 405 and "use GET, HEAD" in d["error"] and resp.getheader("Allow") == "GET, HEAD"
    _assert_alive(server)


def test_keep_alive_survives_errors(server):
    conn = _conn(server)
    seq = [("POST", "/v1/route", _snapshot(), 200), ("POST", "/v1/route", b"{bad", 400),
           ("POST", "/v1/route", b"[" * 5000, 400), ("GET", "/nowhere", None, 404),
           ("GET", "/v1/score", None, 405), ("GET", "/healthz", None, 200), ("POST", "/v1/score", _snapshot(), 200)]
    try:
        for method, path, body, want in seq:
            status, _, resp = _call(server, method, path, body, conn=conn)
            assert status == want, (method, path)
            assert resp.getheader("Connection") != "close"
    finally:
        conn.close()


def test_concurrent_clients(server):
    errors: list = []

    def client(k: int) -> None:
        conn = _conn(server)
        try:
            for i in range(25):
                snap = _snapshot()
                snap["request"]["prompt_tokens"] = 100 + 37 * (k * 25 + i)
                bad = i % 5 == 4
                if bad:
                    snap["endpoints"][k % 5]["kv_util"] = -1
                status, d, _ = _call(server, "POST", "/v1/route", snap, conn=conn)
                if bad:
                    if status != 400 or f"endpoints[{k % 5}].kv_util" not in d["error"]:
                        errors.append((status, d))
                elif status != 200 or d != server.policy.decide(snap):
                    errors.append((status, d))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]


# ------------------------------------------------------------------ the committed example, the CLI
def _start_cli_server(policy: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "gridenv.router", "serve", "--policy", str(policy),
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    for _ in range(5):
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            url = line.split()[-1]
            assert url.startswith("http://127.0.0.1:"), url
            port = int(url.rsplit(":", 1)[1])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # workers load the policy after the bind
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
                    c.request("GET", "/healthz")
                    if c.getresponse().status == 200:
                        c.close()
                        return proc, port
                except OSError:
                    time.sleep(0.1)
            break
    _stop(proc)
    raise AssertionError(f"server did not start: {proc.stderr.read()[-2000:]}")




@pytest.mark.skipif(not (METRO_MODEL / "policy.onnx").is_file(), reason="models/metro/onnx not present")
def test_example_request_file_with_the_readme_curl():
    """The README's `curl ... -d @examples/route_request.json` against models/metro/onnx."""
    from gridenv.router.runtime import RouterPolicy

    RouteRequest.model_validate_json(EXAMPLE.read_bytes())  # valid for the schema as committed
    want = RouterPolicy.load(METRO_MODEL).decide(json.loads(EXAMPLE.read_text()))
    readme = (ROOT / "README.md").read_text()
    line = "curl -s -X POST localhost:8090/v1/route -d @examples/route_request.json"
    assert line in readme
    proc, port = _start_cli_server(METRO_MODEL)
    try:
        if shutil.which("curl"):
            cmd = line.replace("localhost:8090", f"localhost:{port}").split()
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
        else:  # curl -d @file strips newlines; send the same bytes
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
            c.request("POST", "/v1/route", EXAMPLE.read_bytes().replace(b"\n", b"").replace(b"\r", b""))
            got = json.loads(c.getresponse().read())
            c.close()
        RouteDecision.model_validate(got)
        assert got == want and got["endpoint"] in SITES
    finally:
        _stop(proc)


@pytest.mark.skipif(not (METRO_MODEL / "policy.onnx").is_file(), reason="models/metro/onnx not present")
def test_example_request_with_block_hashes_with_the_readme_curl():
    """The README's `curl ... -d @examples/route_request_prefix.json`: the service matches the hashes
    against its own index and records them at the endpoint it picks (seen in /healthz); a bad
    hash is a 400 naming the item."""
    from gridenv.router.runtime import RouterPolicy

    example = ROOT / "examples" / "route_request_prefix.json"
    body = json.loads(example.read_text())
    RouteRequest.model_validate_json(example.read_bytes())
    hashes = body["request"]["block_hashes"]
    policy = RouterPolicy.load(METRO_MODEL)
    index = policy.new_prefix_index()
    want = [policy.decide(body, index) for _ in range(2)]  # the same sequence in process
    line = "curl -s -X POST localhost:8090/v1/route -d @examples/route_request_prefix.json"
    assert line in (ROOT / "README.md").read_text()
    proc, port = _start_cli_server(METRO_MODEL)
    try:
        got = []
        for _ in range(2):
            if shutil.which("curl"):
                cmd = line.replace("localhost:8090", f"localhost:{port}").split()
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
                assert r.returncode == 0, r.stderr
                got.append(json.loads(r.stdout))
            else:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
                c.request("POST", "/v1/route", example.read_bytes().replace(b"\n", b""))
                got.append(json.loads(c.getresponse().read()))
                c.close()
        assert got == want and got[0]["endpoint"] in SITES
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        c.request("GET", "/healthz")
        pi = json.loads(c.getresponse().read())["prefix_index"]
        chosen = {g["endpoint"] for g in got}
        assert pi["entries"] == {s: (len(hashes) if s in chosen else 0) for s in SITES}
        assert pi["records"] == 2 and pi["capacity_entries"] == dict(zip(SITES, index.capacity_entries))
        bad = json.loads(json.dumps(body))
        bad["request"]["block_hashes"][3] = 2.5
        c.request("POST", "/v1/route", json.dumps(bad).encode())
        r = c.getresponse()
        err = json.loads(r.read())
        assert r.status == 400 and err["error"].startswith("request.block_hashes[3]: expected an integer"), err
        bad["request"]["block_hashes"] = hashes * 2  # 22 hashes of 128 tokens for a 1,500-token prompt
        c.request("POST", "/v1/route", json.dumps(bad).encode())
        r = c.getresponse()
        err = json.loads(r.read())
        assert r.status == 400 and err["error"].startswith("request.block_hashes: 22 hashes"), err
        c.close()
    finally:
        _stop(proc)


def test_serve_cli_two_workers(policy_dir):
    proc, port = _start_cli_server(policy_dir, "--workers", "2")
    try:
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S) for _ in range(4)]
        for c in conns:
            c.request("POST", "/v1/route", json.dumps(_snapshot()).encode())
            r = c.getresponse()
            assert r.status == 200 and json.loads(r.read())["endpoint"] in SITES + [None]
            c.request("POST", "/v1/route", b'{"endpoints": 1}')
            r = c.getresponse()
            assert r.status == 400 and "endpoints" in json.loads(r.read())["error"]
            c.close()
    finally:
        _stop(proc)
    assert proc.returncode is not None


@pytest.mark.parametrize("argv,words", [
    (["serve", "--policy", "P", "--port", "70000"], ["--port", "70000", "1..65535"]),
    (["serve", "--policy", "P", "--port", "-1"], ["--port", "-1"]),
    (["serve", "--policy", "P", "--port", "http"], ["--port", "'http'"]),
    (["serve", "--policy", "P", "--workers", "0"], ["--workers", "count > 0", "0"]),
    (["serve", "--policy", "P", "--body-timeout-s", "nan"], ["--body-timeout-s", "finite", "nan"]),
    (["serve", "--policy", "P", "--body-timeout-s", "inf"], ["--body-timeout-s", "inf"]),
    (["serve", "--policy", "P", "--max-body-bytes", "0"], ["--max-body-bytes", "0"]),
    (["serve", "--policy", "P", "--prefix-index-entries", "0"], ["--prefix-index-entries", "0"]),
    (["bench", "--policy", "P", "--requests", "0"], ["--requests", "0"]),
    (["bench", "--policy", "P", "--clients", "-8"], ["--clients", "-8"]),
    (["bench", "--policy", "P", "--inproc-requests", "1.5"], ["--inproc-requests", "1.5"]),
    (["bench", "--policy", "P", "--workers", "0"], ["--workers", "0"]),
    (["bench", "--policy", "P", "--seed", "-3"], ["--seed", "-3"]),
])
def test_cli_flags_are_usage_errors(argv, words, capsys):
    from gridenv.router.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def test_cli_missing_or_broken_policy_one_line(policy_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(policy_dir, broken)
    (broken / "policy.json").write_text('{"format_version": 1,')
    for cmd in ("serve", "bench", "check"):
        for pdir, words in ((tmp_path / "nope", ["nope", "no such policy directory"]),
                            (broken, ["policy.json", "not valid JSON"])):
            r = subprocess.run([sys.executable, "-m", "gridenv.router", cmd, "--policy", str(pdir)],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert r.returncode == 2, (cmd, r.stderr)
            err = r.stderr.strip()
            assert len(err.splitlines()) == 1 and err.startswith("error: "), (cmd, err)
            assert all(w in err for w in words), (cmd, err)
    # a flag error from the real entry point: one line, exit 2
    r = subprocess.run([sys.executable, "-m", "gridenv.router", "serve", "--policy", str(policy_dir), "--port",
                        "65536"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "65536" in r.stderr


def test_cli_decide_validates_the_body(policy_dir, tmp_path):
    from gridenv.router.__main__ import main

    good = tmp_path / "good.json"
    good.write_text(json.dumps(_snapshot()))
    assert main(["decide", "--policy", str(policy_dir), str(good)]) == 0
    bad = tmp_path / "bad.json"
    snap = _snapshot()
    snap["endpoints"][2]["kv_util"] = float("nan")
    bad.write_text(json.dumps(snap))  # json.dumps writes NaN
    assert main(["decide", "--policy", str(policy_dir), str(bad)]) == 2


# ------------------------------------------------------------------ the service's dict form of the body
def _both(raw: bytes):
    """(RouteRequest + model_dump, parse_route_body): each a dict or the formatted errors."""
    from pydantic import ValidationError

    from gridenv.router.schemas import format_errors, parse_route_body, parse_route_request

    out = []
    for parse in (lambda b: parse_route_request(b).model_dump(), parse_route_body):
        try:
            out.append(parse(raw))
        except ValidationError as err:
            out.append(format_errors(err))
    return out


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_dict_form_refuses_what_the_models_refuse_with_the_same_errors(case):
    """The service validates bodies into dicts (parse_route_body); the models (RouteRequest) are
    the documented schema: every bad body gets the same errors, in the same order, from both."""
    model, plain = _both(BAD_BODIES[case][0]())
    if isinstance(model, dict):  # policy-level problems (names) pass the schema in both forms
        assert plain == model
    else:
        assert plain == model and model, case


def test_dict_form_of_valid_bodies_is_the_model_dump():
    several = _snapshot()
    several["endpoints"][0].update(prefix_cached_frac=0.5, queued_prompt_tokens=12, batch_level=2)
    several["request"].update(block_hashes=[1, 2, 3], block_size_tokens=64, ttft_slo_s=0.3)
    del several["hour_utc"]
    mixed = json.loads(json.dumps(several))
    mixed["request"]["block_hashes"] = ["ab", "cd"]
    problems = _snapshot()  # several problems at several levels, unknown fields among them
    problems["endpoints"][1].update(zz=1, kv_util=3, aa=2)
    problems["request"].update(q=1, prompt_tokens=0, block_hashes=[1, "", 2.0])
    problems["x"] = 1
    for body in (_snapshot(), several, mixed, EXAMPLE.read_bytes(), problems):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        model, plain = _both(raw)
        assert plain == model
        assert type(plain) is (list if body is problems else dict)
    assert [e["loc"] for e in _both(json.dumps(problems).encode())[1]][:3] == [
        "x", "endpoints[1].zz", "endpoints[1].aa"]  # unknown fields first at each level, as the models
