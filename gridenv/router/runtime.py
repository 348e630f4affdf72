"""Router runtime: load an exported policy and turn a JSON snapshot into a routing decision.

    from gridenv.router.runtime import RouterPolicy
    policy = RouterPolicy.load("exported/metro")      # policy.onnx + policy.json
    policy.decide({"endpoints": [...], "request": {...}})
    # {"endpoint": "edge-north", "shed": False, "batch_level": 1, "max_batch_size": 32,
    #  "scores": {"edge-north": 0.91, ...}, "shed_score": 0.0, "site_index": 0, "action": [0, 1]}

Imports numpy, onnxruntime and ``gridenv.core`` (snapshot, interface) only: no torch, no stable-baselines3,
no gymnasium of its own (``import gridenv`` registers the Gymnasium ids when gymnasium happens
to be installed; the runtime does not need it).

Loading verifies ``policy.json`` against ``policy.onnx`` and against this gridenv: format
version, the SHA-256 of ``policy.onnx``, the observation interface (``interface``: version, content
hash and declaration; it must be what ``gridenv.core.interface`` declares now for these statics
and mode, so a changed encoder is refused with a message naming the feature or vocabulary that
differs), the feature spec derived from it, the observation size, the number of sites and the graph's input/output shapes. Any mismatch
raises :class:`PolicyFileError` with one line naming what differs.

The JSON snapshot (``POST /v1/route`` body)::

    {"endpoints": [{"name": "edge-north", "waiting": 3, "running": 12, "kv_util": 0.41,
                    "rtt_ms": 6.0, "energy_price_usd_per_kwh": 0.18, "up": true,
                    "batch_level": 1}, ...],
     "request": {"prompt_tokens": 812, "slo_class": "chat", "origin": "north",
                 "model": "llama-3-8b", "residency": false,
                 "ttft_slo_s": 0.25, "tpot_slo_s": 0.1},
     "hour_utc": 14.5}

The endpoint and request fields, with unit and valid range, are declared in
``gridenv.core.interface`` (``SITE_SIGNALS``, ``REQUEST_FIELDS``, ``HOUR_FIELD``); the endpoint
parser and :func:`snapshot_to_json` are derived from ``SITE_SIGNALS``.

* ``endpoints``: one object per site, matched by ``name``; every site of the policy must be
  present (extra keys are ignored). ``waiting`` (requests sent, not yet running) and ``running``
  are numbers >= 0; ``kv_util`` in [0, 1]; ``rtt_ms`` (from the request's origin) and
  ``energy_price_usd_per_kwh`` >= 0; ``up`` a boolean; ``batch_level`` (optional, default the
  scenario's initial level) an index into the policy's ``batch_levels``.
* ``request``: ``prompt_tokens`` an integer >= 1; ``slo_class`` one of chat, code,
  summarization; ``origin`` a region name; ``model`` a model name; ``residency`` a boolean (the
  request must stay in its origin region); ``ttft_slo_s`` / ``tpot_slo_s`` optional (>= 1e-9 s),
  defaulting to the per-class SLOs of the scenario the policy was trained on (policy.json);
  ``block_hashes`` optional, the prompt's block hashes in order (a list of at most 8,192
  integers in [-2^63, 2^64) or strings of 1-128 characters, no more than the prompt has
  blocks) and ``block_size_tokens`` (tokens per hash, default 128).
* Per endpoint, optional: ``prefix_cached_frac`` (precise, from KV events),
  ``prefix_indexed_frac`` (approximate, a router-side index) in [0, 1], and
  ``queued_prompt_tokens`` >= 0; absent means 0, except that with a prefix index
  (:class:`gridenv.router.prefix.RouterPrefixIndex`, passed to :meth:`RouterPolicy.decide`)
  and block hashes, an endpoint without them gets the index's fraction for both.
* ``hour_utc`` optional, in [0, 24): the time of day; default the current UTC time.

The decision path (one call: tens of microseconds, so its costs are counted): the endpoints are
checked by a parser generated at load from the same checks (the generic loop runs only to name
the field at fault), the snapshot is derived by ``gridenv.core.snapshot.snapshot_from_lists``
and encoded by the declared interface, and the graph runs in a second ONNX Runtime session with
its batch dimension fixed to 1 (used only when it matches the general one bit for bit at load).

A field that is missing or invalid raises :class:`SnapshotError` whose message starts with the
field's path: ``endpoints[2].kv_util: expected a number in [0, 1], got 1.7``.

The decision: ``endpoint`` (site name, or null when shedding), ``shed``, ``batch_level`` (index)
and ``max_batch_size`` (the batch size it stands for; ignored when shedding), ``scores`` (per
site: the policy's probability of choosing it, the softmax over the masked site logits, in
[0, 1], infeasible sites 0), ``shed_score`` (the shed slot's probability; scores + shed_score sum
to 1), ``site_index`` (the env's site slot; ``max_sites`` = shed) and ``action`` (the env
action ``[site_index, batch_level]``). The decision is the argmax, exactly the action
``MaskablePPO.predict(..., deterministic=True)`` takes on the same snapshot.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from gridenv.core.interface import (
    REQUEST_FIELDS,
    SITE_SIGNALS,
    SLO_CLASSES,
    InterfaceMismatchError,
    check_compatible,
    make_interface,
)
from gridenv.core.snapshot import RequestView, RouterSnapshot, SiteStatics, make_snapshot, snapshot_from_lists
from gridenv.router.policy_file import PolicyFile, first_error
from gridenv.router.prefix import (
    DEFAULT_BLOCK_SIZE_TOKENS,
    HASH_INT_MAX,
    HASH_INT_MIN,
    MAX_HASH_CHARS,
    RouterPrefixIndex,
)

__all__ = [
    "RouterPolicy", "PolicyFileError", "SnapshotError", "snapshot_to_json",
    "FORMAT_VERSION", "POLICY_JSON", "POLICY_ONNX", "CONTRACT_KEY", "contract_sha256",
]

#: policy.json format read and written by this version (2: adds the interface record).
FORMAT_VERSION = 2
POLICY_JSON = "policy.json"
POLICY_ONNX = "policy.onnx"
#: ONNX metadata key holding the SHA-256 of the policy.json sections the graph is bound to.
CONTRACT_KEY = "gridenv.contract_sha256"
CONTRACT_SECTIONS = ("scenario", "observation", "statics", "action", "request_defaults", "interface")

_FMAX = sys.float_info.max  # bounds checks: NaN and +-inf fail `lo <= v <= _FMAX`
#: Smallest SLO (s) a request may carry; the message states it (1e-300 is > 0, yet refused).
_MIN_SLO_S = 1e-9
_SLO_WHAT = f"a number >= {_MIN_SLO_S:g} (seconds)"
#: Site signals a request's block hashes can stand in for (filled from the service's prefix
#: index for an endpoint that does not send them).
_PREFIX_SIGNALS = ("prefix_cached_frac", "prefix_indexed_frac")
_REQUEST = {s.name: s for s in REQUEST_FIELDS}
MAX_BLOCK_HASHES = int(_REQUEST["block_hashes"].maximum)
MAX_BLOCK_SIZE_TOKENS = int(_REQUEST["block_size_tokens"].maximum)
_HASHES_WHAT = (f"a list of at most {MAX_BLOCK_HASHES} hashes (integers in [-2^63, 2^64) or strings of "
                f"1-{MAX_HASH_CHARS} characters)")
_PER_SITE = ("site_region", "site_model", "is_edge", "replicas", "max_waiting", "kv_capacity_tokens",
             "prefill_mem_s", "prefill_tok_s", "prefill_attn_s", "prefill_fixed_s", "prefill_lin_s")


class PolicyFileError(ValueError):
    """An exported policy that this runtime refuses (the message says what does not match)."""


class SnapshotError(ValueError):
    """An invalid JSON snapshot; the message starts with the path of the field at fault."""


def _typename(v) -> str:
    return "null" if v is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                     list: "list", dict: "object"}.get(type(v), type(v).__name__)


def _show(v) -> str:
    s = json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else _typename(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _number(obj: dict, key: str, where: str, lo: float, hi: float, what: str) -> float:
    try:
        v = obj[key]
    except KeyError:
        raise SnapshotError(f"{where}.{key}: missing (expected {what})") from None
    t = type(v)
    if (t is float or t is int) and lo <= v <= hi:
        return v
    raise SnapshotError(f"{where}.{key}: expected {what}, got {_show(v)}")


def _boolean(obj: dict, key: str, where: str) -> bool:
    try:
        v = obj[key]
    except KeyError:
        raise SnapshotError(f"{where}.{key}: missing (expected true or false)") from None
    if type(v) is not bool:
        raise SnapshotError(f"{where}.{key}: expected true or false, got {_show(v)}")
    return v


def _choice(obj: dict, key: str, where: str, index: dict, what: str) -> int:
    try:
        v = obj[key]
    except KeyError:
        raise SnapshotError(f"{where}.{key}: missing (expected {what})") from None
    i = index.get(v) if type(v) is str else None
    if i is None:
        raise SnapshotError(f"{where}.{key}: expected {what}, got {_show(v)}")
    return i


def snapshot_to_json(snap: RouterSnapshot) -> dict:
    """The JSON form of a snapshot (what a router sends to ``POST /v1/route``)."""
    st, req = snap.statics, snap.request
    conv = {"number": float, "boolean": bool, "integer": int}
    cols = [(sig.name, conv[sig.type], getattr(snap, sig.name)) for sig in SITE_SIGNALS]
    endpoints = [{"name": st.site_names[i], **{k: f(v[i]) for k, f, v in cols}} for i in range(st.n_sites)]
    return {
        "endpoints": endpoints,
        "request": {"prompt_tokens": int(req.prompt_tokens), "slo_class": SLO_CLASSES[req.slo_class],
                    "origin": st.region_names[req.origin], "model": st.model_names[req.model],
                    "residency": bool(req.residency), "ttft_slo_s": float(req.ttft_slo_s),
                    "tpot_slo_s": float(req.tpot_slo_s)},
        "hour_utc": float(snap.hour_utc),
    }


def _block_size(req: dict) -> int:
    b = req.get("block_size_tokens")
    if b is None:
        return DEFAULT_BLOCK_SIZE_TOKENS
    if type(b) is not int or not 1 <= b <= MAX_BLOCK_SIZE_TOKENS:
        raise SnapshotError(f"request.block_size_tokens: expected an integer in [1, {MAX_BLOCK_SIZE_TOKENS}], "
                            f"got {_show(b)}")
    return b


def _block_hashes(req: dict, prompt_tokens: int) -> tuple[tuple, int]:
    """(the request's block-hash chain, tokens per hash), validated; raises SnapshotError."""
    hs = req["block_hashes"]
    if type(hs) is not list or len(hs) > MAX_BLOCK_HASHES:
        got = f"a list of {len(hs)}" if type(hs) is list else _show(hs)
        raise SnapshotError(f"request.block_hashes: expected {_HASHES_WHAT}, got {got}")
    if hs:
        kinds = set(map(type, hs))
        if kinds == {int}:
            ok = HASH_INT_MIN <= min(hs) and max(hs) <= HASH_INT_MAX
        elif kinds == {str}:
            lengths = list(map(len, hs))
            ok = 1 <= min(lengths) and max(lengths) <= MAX_HASH_CHARS
        else:
            ok = kinds <= {int, str}
        if not ok or len(kinds) > 1:
            for i, h in enumerate(hs):
                t = type(h)
                if not ((t is int and HASH_INT_MIN <= h <= HASH_INT_MAX)
                        or (t is str and 1 <= len(h) <= MAX_HASH_CHARS)):
                    raise SnapshotError(f"request.block_hashes[{i}]: expected an integer in [-2^63, 2^64) or "
                                        f"a string of 1-{MAX_HASH_CHARS} characters, got {_show(h)}")
    block = _block_size(req)
    if (len(hs) - 1) * block >= prompt_tokens:
        most = -(-prompt_tokens // block)
        raise SnapshotError(f"request.block_hashes: {len(hs)} hashes of {block} tokens are more than the "
                            f"prompt's {prompt_tokens} tokens have (at most {most})")
    return tuple(hs), block


def _compile_endpoints_parser(checks: list, site_index: dict, n_sites: int):
    """A generated function ``parse(eps, cols) -> bool`` that validates the endpoint objects and
    fills `cols` (one list per signal, pre-filled with the defaults), for the decision's hot path.

    It accepts exactly what the generic loop of :meth:`RouterPolicy._parse_endpoints` accepts
    (the same type and range test per signal, unrolled: no per-signal dispatch or call), and
    converts the numbers to float as :func:`make_snapshot` does. It returns False at the first
    problem without saying which: the caller then runs the generic loop, which raises the error
    naming the field (tests/router/test_runtime.py checks the two agree)."""
    ns = {"_index": site_index, "_n": n_sites, "_float": float, "_int": int, "_bool": bool, "_dict": dict,
          "_str": str, "_type": type}
    lines = ["def parse(eps, cols):",
             "    if len(eps) != _n:",
             "        return False",
             "    " + ", ".join(f"c{k}" for k in range(len(checks))) + ", = cols",
             "    seen = set()",
             "    for ep in eps:",
             "        if _type(ep) is not _dict:",
             "            return False",
             "        name = ep.get('name')",
             "        j = _index.get(name) if _type(name) is _str else None",
             "        if j is None or j in seen:",
             "            return False",
             "        seen.add(j)",
             "        get = ep.get"]
    for k, (key, kind, _, lo, hi, _) in enumerate(checks):
        ns[f"lo{k}"], ns[f"hi{k}"] = lo, hi
        if kind == "number":
            lines += [f"        v = get({key!r})", "        t = _type(v)",
                      f"        if not ((t is _float or t is _int) and lo{k} <= v <= hi{k}):",
                      "            return False", f"        c{k}[j] = _float(v)"]
        elif kind in ("optional number", "prefix number"):
            lines += [f"        v = get({key!r})", "        if v is not None:", "            t = _type(v)",
                      f"            if not ((t is _float or t is _int) and lo{k} <= v <= hi{k}):",
                      "                return False", f"            c{k}[j] = _float(v)"]
        elif kind == "boolean":
            lines += [f"        v = get({key!r})", "        if _type(v) is not _bool:", "            return False",
                      f"        c{k}[j] = v"]
        elif kind == "index":
            lines += [f"        v = get({key!r})", "        if v is not None:",
                      f"            if _type(v) is not _int or not lo{k} <= v <= hi{k}:",
                      "                return False", f"            c{k}[j] = v"]
        else:  # pragma: no cover - a new kind of signal needs its parser here
            raise PolicyFileError(f"runtime cannot parse site signal {key!r} of kind {kind!r}")
    lines.append("    return len(seen) == _n")
    exec(compile("\n".join(lines) + "\n", "<router endpoints parser>", "exec"), ns)  # noqa: S102
    return ns["parse"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def contract_sha256(meta: dict) -> str:
    """SHA-256 of the canonical JSON of the policy.json sections a graph is exported for."""
    part = {k: meta.get(k) for k in CONTRACT_SECTIONS}
    return _sha256(json.dumps(part, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())


def _get(meta: dict, dotted: str):
    cur = meta
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise PolicyFileError(f"{POLICY_JSON}: missing field {dotted!r}")
        cur = cur[part]
    return cur


class RouterPolicy:
    """An exported routing policy, ready to decide (thread-safe; use :meth:`load`)."""

    def __init__(self, meta: dict, onnx_bytes: bytes, path: Path, intra_op_threads: int = 1) -> None:
        self.path = Path(path)
        self.meta = meta
        try:
            self._setup(meta, onnx_bytes, intra_op_threads)
        except PolicyFileError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError, IndexError) as err:  # odd JSON types
            raise PolicyFileError(f"{POLICY_JSON}: malformed ({type(err).__name__}: {err})") from None

    def _setup(self, meta: dict, onnx_bytes: bytes, intra_op_threads: int) -> None:
        self._verify_meta(meta, onnx_bytes)
        st = self.statics
        self.site_names: tuple[str, ...] = st.site_names
        self.max_sites = st.max_sites
        self.n_sites = st.n_sites
        self.batch_levels = tuple(int(b) for b in st.batch_levels)
        self.n_levels = len(self.batch_levels)
        self.obs_size = self.interface.obs_size
        self.scenario: str = meta["scenario"]["name"]
        self.env_id: str = meta["scenario"]["env_id"]
        self.sha256: str = meta["onnx"]["sha256"]
        self.initial_batch_level = int(meta["action"].get("initial_batch_level", 0))
        self._site_index = {n: i for i, n in enumerate(st.site_names)}
        self._region_index = {n: i for i, n in enumerate(st.region_names)}
        self._model_index = {n: i for i, n in enumerate(st.model_names)}
        self._class_index = {n: i for i, n in enumerate(SLO_CLASSES)}
        slos = meta["request_defaults"]["slo_s"]
        self._slo = [(float(slos[c]["ttft_s"]), float(slos[c]["tpot_s"])) for c in SLO_CLASSES]
        self._regions_what = f"a region name ({', '.join(st.region_names)})"
        self._models_what = f"a model name ({', '.join(st.model_names)})"
        self._classes_what = f"an SLO class ({', '.join(SLO_CLASSES)})"
        self._level_what = f"an integer batch level index in [0, {self.n_levels - 1}]"  # 2.0 is refused
        self._signal_checks = []  # (name, kind, default, lo, hi, what) per SITE_SIGNALS entry
        for sig in SITE_SIGNALS:
            if sig.type == "number":
                hi = _FMAX if sig.maximum is None else sig.maximum
                what = (f"a number >= {sig.minimum:g}" if sig.maximum is None
                        else f"a number in [{sig.minimum:g}, {sig.maximum:g}]")
                kind = ("number" if sig.required else
                        "prefix number" if sig.name in _PREFIX_SIGNALS else "optional number")
                self._signal_checks.append((sig.name, kind, None if kind == "prefix number" else 0.0,
                                            sig.minimum, hi, what))
            elif sig.type == "boolean":
                self._signal_checks.append((sig.name, "boolean", False, None, None, "true or false"))
            elif sig.name == "batch_level":
                self._signal_checks.append((sig.name, "index", self.initial_batch_level, 0, self.n_levels - 1,
                                            self._level_what))
            else:  # pragma: no cover - a new kind of signal needs its parser here
                raise PolicyFileError(f"runtime cannot parse site signal {sig.name!r} of type {sig.type!r}")
        self._prefix_cols = [k for k, c in enumerate(self._signal_checks) if c[1] == "prefix number"]
        self._defaults_lookup = [c[2] for c in self._signal_checks]
        self._defaults = [0.0 if c[1] == "prefix number" else c[2] for c in self._signal_checks]
        self._parse_endpoints_fast = _compile_endpoints_parser(self._signal_checks, self._site_index, self.n_sites)
        self._session = self._make_session(onnx_bytes, intra_op_threads)
        self._decide_run, self.decision_session = self._make_decision_runner(onnx_bytes, intra_op_threads)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, intra_op_threads: int = 1) -> "RouterPolicy":
        """Load ``path/policy.json`` + ``path/policy.onnx`` (or a ``.onnx`` / ``.json`` path in it).

        Raises PolicyFileError when the files are missing, do not belong together, or do not
        match this gridenv's encoder.
        """
        p = Path(path).expanduser()
        if p.is_file() and p.suffix in (".onnx", ".json"):
            p = p.parent
        if not p.is_dir():
            raise PolicyFileError(f"{p}: no such policy directory (expected {POLICY_JSON} + {POLICY_ONNX})")
        jpath, opath = p / POLICY_JSON, p / POLICY_ONNX
        for f in (jpath, opath):
            if not f.is_file():
                raise PolicyFileError(f"{f}: missing (an exported policy is {POLICY_JSON} + {POLICY_ONNX}; "
                                      "export one with python -m agents.export)")
        try:
            meta = json.loads(jpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PolicyFileError(f"{jpath}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise PolicyFileError(f"{jpath}: expected a JSON object")
        return cls(meta, opath.read_bytes(), p, intra_op_threads)

    def _verify_meta(self, meta: dict, onnx_bytes: bytes) -> None:
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise PolicyFileError(f"{POLICY_JSON}: format_version {version!r}, this runtime reads "
                                  f"{FORMAT_VERSION}: re-export the policy with this gridenv")
        try:  # shape and types: the one policy.json schema (gridenv.router.policy_file)
            PolicyFile.model_validate(meta)
        except ValidationError as err:
            raise PolicyFileError(f"{POLICY_JSON}: {first_error(err)}") from None
        want = _get(meta, "onnx.sha256")
        got = _sha256(onnx_bytes)
        if got != want:
            raise PolicyFileError(f"{POLICY_ONNX} does not match {POLICY_JSON}: sha256 {got[:16]}... != "
                                  f"{str(want)[:16]}... (modified, or not exported together)")
        sd = _get(meta, "statics")
        try:
            st = SiteStatics.from_dict(sd)
        except (TypeError, ValueError) as err:
            raise PolicyFileError(f"{POLICY_JSON}: statics: {err}") from None
        n = len(st.site_names)
        for k in _PER_SITE:
            if len(getattr(st, k)) != n:
                raise PolicyFileError(f"{POLICY_JSON}: statics.{k} has {len(getattr(st, k))} entries for "
                                      f"{n} sites")
        if not 1 <= n <= st.max_sites:
            raise PolicyFileError(f"{POLICY_JSON}: {n} sites for max_sites {st.max_sites}")
        if len(set(st.site_names)) != n:
            raise PolicyFileError(f"{POLICY_JSON}: statics.site_names has duplicates")
        if not st.batch_levels:
            raise PolicyFileError(f"{POLICY_JSON}: statics.batch_levels is empty")
        if any(not 0 <= r < len(st.region_names) for r in st.site_region):
            raise PolicyFileError(f"{POLICY_JSON}: statics.site_region refers to an unknown region")
        if any(not 0 <= m < len(st.model_names) for m in st.site_model):
            raise PolicyFileError(f"{POLICY_JSON}: statics.site_model refers to an unknown model")
        # The encoder: the recorded interface must be what this gridenv declares now.
        record = _get(meta, "interface")
        mode = _get(meta, "interface.interface.mode")
        try:
            # statics edited by hand (a batch level of 2**63, a max_waiting of 0) must fail here with
            # the file named, not as an overflow or a divide-by-zero warning in the encoder
            with np.errstate(divide="raise", over="raise", invalid="raise"):
                iface = make_interface(st, mode)
        except ArithmeticError as err:  # OverflowError, FloatingPointError, ZeroDivisionError
            raise PolicyFileError(f"{POLICY_JSON}: statics: the observation encoder cannot scale them "
                                  f"({type(err).__name__}: {err}); edited after export?") from None
        except ValueError as err:
            raise PolicyFileError(f"{POLICY_JSON}: interface.interface.mode: {err}") from None
        try:
            check_compatible(record, iface, what=POLICY_JSON)
        except InterfaceMismatchError as err:
            raise PolicyFileError(f"{err} (re-export the policy with this gridenv)") from None
        spec_file = _get(meta, "observation.features")
        if spec_file != iface.feature_spec():
            raise PolicyFileError(f"{POLICY_JSON}: observation.features is not the feature spec of its "
                                  f"interface {iface.version!r} (edited?)")
        size = _get(meta, "observation.size")
        if size != iface.obs_size:
            raise PolicyFileError(f"{POLICY_JSON}: observation.size {size}, the interface has "
                                  f"{iface.obs_size}")
        self.interface = iface
        act = _get(meta, "action")
        if not isinstance(act, dict):
            raise PolicyFileError(f"{POLICY_JSON}: action: expected an object")
        lvl = act.get("initial_batch_level", 0)
        if type(lvl) is not int or not 0 <= lvl < len(st.batch_levels):
            raise PolicyFileError(f"{POLICY_JSON}: action.initial_batch_level {lvl!r} is not a batch level index")
        checks = {
            "max_sites": st.max_sites, "n_sites": n, "shed_index": st.max_sites,
            "site_slots": list(st.site_names), "batch_levels": [int(b) for b in st.batch_levels],
        }
        for k, v in checks.items():
            if act.get(k) != v:
                raise PolicyFileError(f"{POLICY_JSON}: action.{k} is {act.get(k)!r}, statics say {v!r} "
                                      f"(number of sites or levels does not match)")
        slos = _get(meta, "request_defaults.slo_s")
        for c in SLO_CLASSES:
            e = slos.get(c) if isinstance(slos, dict) else None
            if not (isinstance(e, dict) and all(isinstance(e.get(k), (int, float)) and e.get(k) > 0
                                                for k in ("ttft_s", "tpot_s"))):
                raise PolicyFileError(f"{POLICY_JSON}: request_defaults.slo_s.{c}: expected "
                                      "{ttft_s, tpot_s} > 0")
        for k in ("scenario.name", "scenario.env_id"):
            _get(meta, k)
        self.statics = st

    @staticmethod
    def _session_options(threads: int, batch_dims: tuple = ()):
        import onnxruntime as ort

        so = ort.SessionOptions()
        for dim in batch_dims:  # a batch of one: ONNX Runtime folds the graph's shape arithmetic
            so.add_free_dimension_override_by_name(dim, 1)
        so.intra_op_num_threads = max(int(threads), 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def _make_session(self, onnx_bytes: bytes, threads: int):
        import onnxruntime as ort

        so = self._session_options(threads)
        try:
            sess = ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise PolicyFileError(f"{POLICY_ONNX}: ONNX Runtime cannot load it ({err})") from None
        n_site, n_mask = self.statics.max_sites + 1, self.statics.max_sites + 1 + len(self.statics.batch_levels)
        n_obs = self.interface.obs_size
        ins = {i.name: i.shape for i in sess.get_inputs()}
        outs = {o.name: o.shape for o in sess.get_outputs()}
        expect_in = {"obs": n_obs, "action_mask": n_mask}
        expect_out = {"logits": n_mask, "site_scores": n_site, "site": None, "batch_level": None}
        for name, width in expect_in.items():
            if name not in ins or len(ins[name]) != 2 or ins[name][1] != width:
                raise PolicyFileError(f"{POLICY_ONNX}: input {name!r} has shape {ins.get(name)}, policy.json "
                                      f"needs [batch, {width}] ({self.statics.n_sites} sites, max_sites "
                                      f"{self.statics.max_sites})")
        for name, width in expect_out.items():
            if name not in outs or (width is not None and (len(outs[name]) != 2 or outs[name][1] != width)):
                raise PolicyFileError(f"{POLICY_ONNX}: output {name!r} has shape {outs.get(name)}, "
                                      f"policy.json needs [batch, {width}]")
        bound = sess.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY)
        if bound != contract_sha256(self.meta):
            raise PolicyFileError(f"{POLICY_JSON} was edited after export: its scenario/observation/statics/"
                                  f"action/request_defaults do not hash to what {POLICY_ONNX} was exported "
                                  f"for ({CONTRACT_KEY} {str(bound)[:16]}...)")
        self._out_names = ["logits", "site_scores", "site", "batch_level"]
        return sess

    #: Outputs a decision reads (the masked logits are for :meth:`run`).
    _DECISION_OUTPUTS = ["site_scores", "site", "batch_level"]

    def _make_decision_runner(self, onnx_bytes: bytes, threads: int, n_probes: int = 64):
        """(run(obs_row, mask_row) -> (site_scores, site, batch_level), which session it uses).

        One decision is a batch of one: a second session with the graph's batch dimension fixed
        to 1 lets ONNX Runtime fold the shape arithmetic away (fewer nodes per call), and it is
        called without the Python wrapper's per-call feed validation (the feed is built here,
        its names checked at load). It is used only if it gives the general session's outputs
        bit for bit on `n_probes` random inputs; otherwise decisions use the general session."""
        import onnxruntime as ort

        general = self._session
        names = self._DECISION_OUTPUTS

        def runner(sess):
            call = getattr(sess, "_sess", None)  # onnxruntime's C++ session under its wrapper
            if call is not None and hasattr(call, "run"):
                run = call.run
                return lambda obs, mask: run(names, {"obs": obs.reshape(1, -1), "action_mask": mask.reshape(1, -1)},
                                             None)
            return lambda obs, mask: sess.run(names, {"obs": obs.reshape(1, -1), "action_mask": mask.reshape(1, -1)})

        dims = tuple(sorted({i.shape[0] for i in general.get_inputs() if isinstance(i.shape[0], str)}))
        if not dims:
            return runner(general), "general"
        try:
            one = ort.InferenceSession(onnx_bytes, sess_options=self._session_options(threads, dims),
                                       providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - keep the general session
            return runner(general), "general"
        fast = runner(one)
        rng = np.random.default_rng(0)
        n_mask = self.max_sites + 1 + self.n_levels
        for _ in range(n_probes):
            obs = (rng.random(self.obs_size) * 2.0 - 0.5).astype(np.float32)
            mask = rng.random(n_mask) < 0.7
            mask[self.max_sites] = mask[-1] = True
            ref = general.run(names, {"obs": obs.reshape(1, -1), "action_mask": mask.reshape(1, -1)})
            got = fast(obs, mask)
            if not all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, ref)):
                return runner(general), "general"
        return fast, "batch-1"

    # ------------------------------------------------------------------ snapshots
    def snapshot_from_json(self, data, prefix_index: RouterPrefixIndex | None = None) -> RouterSnapshot:
        """A RouterSnapshot from the JSON form (see the module docstring); raises SnapshotError.

        With `prefix_index` and block hashes in the request, the endpoints that send no
        ``prefix_indexed_frac`` / ``prefix_cached_frac`` get the index's fraction (nothing is
        recorded: :meth:`decide` records)."""
        return self._parse(data, prefix_index)[0]

    def _parse(self, data, prefix_index: RouterPrefixIndex | None):
        """(snapshot, the request's block-hash chain or None)."""
        if type(data) is not dict:
            raise SnapshotError(f"body: expected a JSON object with endpoints and request, got {_typename(data)}")
        eps = data.get("endpoints")
        if type(eps) is not list:
            raise SnapshotError("endpoints: missing" if eps is None else
                                f"endpoints: expected a list of endpoint objects, got {_typename(eps)}")
        n = self.n_sites
        # One column per declared live signal (gridenv.core.interface.SITE_SIGNALS, in
        # make_snapshot's order), filled per endpoint by the signal's type and range.
        req = data.get("request")
        hashed = prefix_index is not None and type(req) is dict and req.get("block_hashes") is not None
        # without an index lookup an absent prefix fraction is 0; with one, None marks it absent
        defaults = self._defaults_lookup if hashed else self._defaults
        cols = [[default] * n for default in defaults]
        fast = self._parse_endpoints_fast(eps, cols)
        if not fast:  # the generic loop: raises the error naming the field
            cols = [[default] * n for default in defaults]
            self._parse_endpoints(eps, cols)
        if type(req) is not dict:
            raise SnapshotError("request: missing" if req is None else
                                f"request: expected an object, got {_typename(req)}")
        try:
            pt = req["prompt_tokens"]
        except KeyError:
            raise SnapshotError("request.prompt_tokens: missing (expected an integer >= 1)") from None
        if type(pt) is float and pt.is_integer():
            pt = int(pt)
        if type(pt) is not int or pt < 1:
            raise SnapshotError(f"request.prompt_tokens: expected an integer >= 1, got {_show(pt)}")
        cls = _choice(req, "slo_class", "request", self._class_index, self._classes_what)
        origin = _choice(req, "origin", "request", self._region_index, self._regions_what)
        model = _choice(req, "model", "request", self._model_index, self._models_what)
        residency = _boolean(req, "residency", "request")
        ttft, tpot = self._slo[cls]
        if req.get("ttft_slo_s") is not None:
            ttft = _number(req, "ttft_slo_s", "request", _MIN_SLO_S, _FMAX, _SLO_WHAT)
        if req.get("tpot_slo_s") is not None:
            tpot = _number(req, "tpot_slo_s", "request", _MIN_SLO_S, _FMAX, _SLO_WHAT)
        hour = data.get("hour_utc")
        if hour is None:
            hour = (time.time() % 86400.0) / 3600.0
        elif not ((type(hour) is float or type(hour) is int) and 0.0 <= hour < 24.0):
            raise SnapshotError(f"hour_utc: expected a number in [0, 24), got {_show(hour)}")
        chain = None
        fill = None
        if req.get("block_hashes") is not None:
            chain, block = _block_hashes(req, pt)
            if prefix_index is not None and chain:
                fill = prefix_index.fractions(chain, block, pt)
        elif req.get("block_size_tokens") is not None:
            _block_size(req)
        if hashed:  # endpoints that did not send the value: the index's (0 for an empty chain)
            for k in self._prefix_cols:
                col = cols[k]
                for j in range(n):
                    if col[j] is None:
                        col[j] = 0.0 if fill is None else fill[j]
        view = RequestView(pt, cls, origin, model, residency, float(ttft), float(tpot))
        if fast:  # numbers already floats, one per site: make_snapshot's derivation minus its conversion
            return snapshot_from_lists(self.statics, view, hour, *cols), chain
        return make_snapshot(self.statics, view, hour, *cols), chain

    def _parse_endpoints(self, eps: list, cols: list) -> None:
        """Validate the endpoint objects into `cols`, one signal at a time (the generic form of
        the generated parser); raises SnapshotError naming the field at fault."""
        n = self.n_sites
        seen = [False] * n
        index = self._site_index
        checks = self._signal_checks
        for i, ep in enumerate(eps):
            where = f"endpoints[{i}]"
            if type(ep) is not dict:
                raise SnapshotError(f"{where}: expected an endpoint object, got {_typename(ep)}")
            name = ep.get("name")
            j = index.get(name) if type(name) is str else None
            if j is None:
                if "name" not in ep:
                    raise SnapshotError(f"{where}.name: missing")
                raise SnapshotError(f"{where}.name: unknown endpoint {_show(name)}; this policy routes "
                                    f"between {', '.join(self.site_names)}")
            if seen[j]:
                raise SnapshotError(f"{where}.name: duplicate endpoint {name!r}")
            seen[j] = True
            for k, (key, kind, _, lo, hi, what) in enumerate(checks):
                if kind == "number":
                    cols[k][j] = _number(ep, key, where, lo, hi, what)
                elif kind == "optional number" or kind == "prefix number":  # absent/null: the default
                    if ep.get(key) is not None:
                        cols[k][j] = _number(ep, key, where, lo, hi, what)
                elif kind == "boolean":
                    cols[k][j] = _boolean(ep, key, where)
                else:  # an optional index (batch_level)
                    b = ep.get(key)
                    if b is not None:
                        if type(b) is not int or not lo <= b <= hi:
                            raise SnapshotError(f"{where}.{key}: expected {what}, got {_show(b)}")
                        cols[k][j] = b
        if not all(seen):
            missing = [self.site_names[k] for k in range(n) if not seen[k]]
            raise SnapshotError(f"endpoints: missing {', '.join(missing)} (every site of the policy "
                                "must be present)")

    def check_snapshot(self, snap: RouterSnapshot) -> None:
        """Raise ValueError when `snap` comes from other sites than the policy's."""
        st = snap.statics
        if st is not self.statics and (st.site_names != self.site_names or st.max_sites != self.max_sites
                                       or st.region_names != self.statics.region_names
                                       or st.model_names != self.statics.model_names):
            raise ValueError(f"snapshot of sites {list(st.site_names)} (max_sites {st.max_sites}), the policy "
                             f"routes between {list(self.site_names)} (max_sites {self.max_sites})")

    # ------------------------------------------------------------------ inference
    def run(self, obs: np.ndarray, mask: np.ndarray):
        """Raw graph outputs for a batch: (logits, site_scores, site, batch_level)."""
        obs = np.asarray(obs, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        if obs.ndim == 1:
            obs, mask = obs.reshape(1, -1), mask.reshape(1, -1)
        return self._session.run(self._out_names, {"obs": obs, "action_mask": mask})

    def _decision(self, outs) -> dict:
        """The decision dict from the graph's (site_scores, site, batch_level)."""
        scores, site, level = outs
        s = int(site[0])
        b = int(level[0])
        row = scores[0].tolist()
        shed = s >= self.n_sites  # shed slot (padding slots are masked, never chosen)
        return {
            "endpoint": None if shed else self.site_names[s],
            "shed": shed,
            "batch_level": b,
            "max_batch_size": self.batch_levels[b],
            "scores": dict(zip(self.site_names, row)),
            "shed_score": row[self.max_sites],
            "site_index": s,
            "action": [s, b],
        }

    def decide_snapshot(self, snap: RouterSnapshot, obs: np.ndarray | None = None) -> dict:
        """The decision for an in-process RouterSnapshot (`obs`: its ``encode``, if at hand)."""
        if obs is None:
            obs = self.interface.encode(snap)
        return self._decision(self._decide_run(obs, self.interface.action_mask(snap)))

    def decide(self, data, prefix_index: RouterPrefixIndex | None = None) -> dict:
        """The decision for a JSON snapshot (a parsed dict); raises SnapshotError.

        With `prefix_index` (the service's :class:`~gridenv.router.prefix.RouterPrefixIndex`)
        and ``request.block_hashes``: the index fills the prefix fractions the caller did not
        send, and records the hashes at the chosen endpoint (not when shedding)."""
        snap, chain = self._parse(data, prefix_index)
        d = self._decision(self._decide_run(self.interface.encode(snap), self.interface.action_mask(snap)))
        if chain and prefix_index is not None and not d["shed"]:
            prefix_index.record(d["site_index"], chain)
        return d

    def new_prefix_index(self, capacity_entries: int | None = None) -> RouterPrefixIndex:
        """An empty prefix index for this policy's endpoints (default bound: their KV capacity)."""
        return RouterPrefixIndex.for_statics(self.statics, capacity_entries)

    def score(self, data, prefix_index: RouterPrefixIndex | None = None) -> dict:
        """llm-d scorer style: a score in [0, 1] per endpoint, plus the best one and shed share
        (with `prefix_index`, the hashes are recorded at ``best``, as a max-score picker sends it)."""
        d = self.decide(data, prefix_index)
        return {"scores": d["scores"], "shed_score": d["shed_score"], "best": d["endpoint"],
                "shed": d["shed"], "batch_level": d["batch_level"], "max_batch_size": d["max_batch_size"]}

    def health(self) -> dict:
        return {
            "status": "ok", "policy_sha256": self.sha256, "format_version": FORMAT_VERSION,
            "scenario": self.scenario, "env_id": self.env_id, "sites": list(self.site_names),
            "max_sites": self.max_sites, "batch_levels": list(self.batch_levels),
            "obs_size": self.obs_size, "path": str(self.path),
            "interface_version": self.interface.version, "interface_hash": self.interface.content_hash,
            "decision_session": self.decision_session,
        }

    def __repr__(self) -> str:
        return (f"RouterPolicy({str(self.path)!r}, scenario={self.scenario!r}, sites={len(self.site_names)}, "
                f"sha256={self.sha256[:12]}...)")
