"""``python -m gridenv.router``: serve, bench, check or query an exported routing policy.

    python -m gridenv.router serve  --policy DIR [--port 8090] [--host 127.0.0.1] [--workers 1]
                                    [--prefix-index-entries N]
    python -m gridenv.router bench  --policy DIR [--requests 4000] [--clients 8] [--workers 1]
    python -m gridenv.router check  --policy DIR            # verify policy.json + policy.onnx
    python -m gridenv.router decide --policy DIR [FILE]     # one decision for a JSON body
                                                            # (FILE or stdin)

A flag out of range (port, counts, durations) is a usage error; a policy that is missing or
fails verification, or an invalid body, prints one ``error: ...`` line. Both exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from gridenv.cli import OneLineParser, nonnegative_int, port, positive_int, positive_seconds

__all__ = ["main", "OneLineParser", "port", "positive_int", "nonnegative_int", "positive_seconds"]


def _add_serve_args(s: argparse.ArgumentParser) -> None:
    from gridenv.router.server import BODY_TIMEOUT_S, MAX_BODY_BYTES

    s.add_argument("--policy", required=True, metavar="DIR", help="exported policy directory")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s; the "
                   "service has no authentication, expose it deliberately)")
    s.add_argument("--port", type=port, default=8090, help="port 1..65535 (default %(default)s; 0: any free port)")
    s.add_argument("--workers", type=positive_int, default=1, help="uvicorn worker processes sharing the "
                   "port (default %(default)s)")
    s.add_argument("--max-body-bytes", type=positive_int, default=MAX_BODY_BYTES,
                   help="larger bodies get 413 (default %(default)s)")
    s.add_argument("--body-timeout-s", type=positive_seconds, default=BODY_TIMEOUT_S,
                   help="a body not complete after this long gets 408 (default %(default)s)")
    s.add_argument("--prefix-index-entries", type=positive_int, default=None, metavar="N",
                   help="block hashes the service's prefix index remembers per endpoint, LRU beyond "
                   "(default: each endpoint's KV capacity in 128-token entries, the simulator's bound; "
                   "one index per worker process)")
    s.add_argument("--verbose", action="store_true", help="log every request")


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m gridenv.router", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_serve_args(sub.add_parser("serve", help="HTTP service: POST /v1/route, POST /v1/score, GET /healthz, "
                                   "GET /openapi.json"))
    from gridenv.router import bench

    bench.add_arguments(sub.add_parser("bench", help="decision latency in process and over HTTP"))
    c = sub.add_parser("check", help="verify an exported policy and print its summary")
    c.add_argument("--policy", required=True, metavar="DIR")
    d = sub.add_parser("decide", help="print the decision for one JSON body")
    d.add_argument("--policy", required=True, metavar="DIR")
    d.add_argument("file", nargs="?", help="JSON body file (default: stdin)")
    args = ap.parse_args(argv)

    if args.cmd == "bench":
        return bench.run(args)

    from gridenv.router.runtime import PolicyFileError, RouterPolicy, SnapshotError
    from gridenv.core.strict_yaml import DuplicateKeyError, unique_keys

    try:
        if args.cmd == "serve":
            from gridenv.router.server import serve

            serve(args.policy, host=args.host, port=args.port, workers=args.workers, verbose=args.verbose,
                  max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout_s,
                  prefix_index_entries=args.prefix_index_entries)
            return 0
        policy = RouterPolicy.load(args.policy)
        if args.cmd == "check":
            print(json.dumps(policy.health(), indent=2))
            return 0
        raw = open(args.file, "rb").read() if args.file else sys.stdin.buffer.read()
        where = f" in {args.file}" if args.file else ""
        try:
            data = json.loads(raw, object_pairs_hook=unique_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # not UTF-8: was a traceback
            raise SnapshotError(f"invalid JSON{where}: {err}") from None
        except DuplicateKeyError as dup:  # json keeps the last value in silence
            raise SnapshotError(f"key {json.dumps(dup.key)} given twice in one JSON object{where}") from None
        print(json.dumps(policy.decide(data), indent=2))  # the runtime's own checks
        return 0
    except (PolicyFileError, SnapshotError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
