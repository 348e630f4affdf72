"""Serving an exported routing policy: the runtime, an HTTP service and a latency bench.

* :mod:`gridenv.router.runtime` -- :class:`RouterPolicy` (numpy + onnxruntime only): load
  ``policy.onnx`` + ``policy.json`` and turn a JSON snapshot into a decision.
* :mod:`gridenv.router.server` -- ``python -m gridenv.router serve --policy DIR --port N``:
  ``POST /v1/route``, ``POST /v1/score``, ``GET /healthz``, ``GET /openapi.json`` (starlette + uvicorn).
* :mod:`gridenv.router.schemas` -- the pydantic models of the request and answer bodies.
* :mod:`gridenv.router.bench` -- ``python -m gridenv.router bench --policy DIR``: decision
  latency in process and over HTTP.

Export a trained agent first with ``python -m agents.export RUN --out DIR``. Nothing is
imported here, so ``import gridenv.router`` stays cheap.
"""

__all__ = ["runtime", "schemas", "server", "bench"]
