"""``python -m gridenv.router``: serve, check or query an exported routing policy.

    python -m gridenv.router serve  --policy DIR [--port 8090] [--host 127.0.0.1] [--verbose]
    python -m gridenv.router check  --policy DIR            # verify policy.json + policy.onnx
    python -m gridenv.router decide --policy DIR [FILE]     # one decision for a JSON snapshot
                                                            # (FILE or stdin)

A policy that fails verification, or an invalid snapshot, prints one ``error: ...`` line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gridenv.router", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="HTTP service: POST /v1/route, POST /v1/score, GET /healthz")
    s.add_argument("--policy", required=True, metavar="DIR", help="exported policy directory")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s; the "
                   "service has no authentication, expose it deliberately)")
    s.add_argument("--port", type=int, default=8090, help="port (default %(default)s; 0: any free port)")
    s.add_argument("--verbose", action="store_true", help="log every request")
    c = sub.add_parser("check", help="verify an exported policy and print its summary")
    c.add_argument("--policy", required=True, metavar="DIR")
    d = sub.add_parser("decide", help="print the decision for one JSON snapshot")
    d.add_argument("--policy", required=True, metavar="DIR")
    d.add_argument("file", nargs="?", help="JSON snapshot file (default: stdin)")
    args = ap.parse_args(argv)

    from gridenv.router.runtime import PolicyFileError, RouterPolicy, SnapshotError

    try:
        if args.cmd == "serve":
            from gridenv.router.server import serve

            serve(args.policy, host=args.host, port=args.port, verbose=args.verbose)
            return 0
        policy = RouterPolicy.load(args.policy)
        if args.cmd == "check":
            print(json.dumps(policy.health(), indent=2))
            return 0
        text = open(args.file).read() if args.file else sys.stdin.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SnapshotError(f"invalid JSON: {err}") from None
        print(json.dumps(policy.decide(data), indent=2))
        return 0
    except (PolicyFileError, SnapshotError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
