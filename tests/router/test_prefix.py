"""The exported router with the cache signals: parity with the environment on prefix-sharing
traffic, and the service's own prefix index against the simulator's.

The workload is Metro with shared prefixes in every class (multi-turn chat, a few code system
prompts, a few summarized documents), so the snapshots carry non-zero ``prefix_cached_frac`` /
``prefix_indexed_frac``. The policies: a MaskablePPO trained for a few hundred steps on that
workload (its inputs for the cache signals are not zero) and its ONNX export; and the committed
metro agent (models/metro: best_model.zip + vecnormalize.pkl, exported in the test), which sees
``prefix_cached_frac`` through its TTFT estimate.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("sb3_contrib")

import gymnasium as gym  # noqa: E402

import gridenv  # noqa: E402,F401
from gridenv.core.prefix_index import PrefixIndex  # noqa: E402
from gridenv.router.prefix import DEFAULT_BLOCK_SIZE_TOKENS, RouterPrefixIndex  # noqa: E402
from gridenv.router.runtime import RouterPolicy, SnapshotError, snapshot_to_json  # noqa: E402

METRO = "gridenv/Metro-v1"
SITES = ["edge-north", "edge-south", "edge-east", "edge-west", "core"]
N_SNAPSHOTS = 1000
#: Metro with prefix sharing in every class (built here: no registered cache scenario needed).
CACHE_CONFIG = {"horizon_s": 60, "workload": {"classes": {
    "chat": {"prefix": {"kind": "multi_turn", "turns_mean": 5.0, "think_time_s": 4.0}},
    "code": {"prefix": {"kind": "system_prompt", "count": 4, "tokens": 2048, "zipf_s": 1.0}},
    "summarization": {"prefix": {"kind": "documents", "count": 6, "tokens": 3000, "zipf_s": 1.0}},
}}}


@pytest.fixture(scope="module")
def cache_run(tmp_path_factory):
    """MaskablePPO trained for 384 steps on the prefix-sharing Metro, with VecNormalize."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    run = tmp_path_factory.mktemp("cache_run") / "metro_maskable_ppo_s0"
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(METRO, config=CACHE_CONFIG)]), norm_reward=False)
    model = MaskablePPO("MlpPolicy", venv, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    model.learn(384)
    run.mkdir(parents=True)
    model.save(run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))
    return run


@pytest.fixture(scope="module")
def policy_dir(cache_run, tmp_path_factory):
    from agents.export import export_policy

    out = tmp_path_factory.mktemp("cache_policy") / "metro"
    export_policy(cache_run, out, verify_states=0)
    return out


@pytest.fixture(scope="module")
def policy(policy_dir):
    return RouterPolicy.load(policy_dir)


COMMITTED = Path(__file__).resolve().parents[2] / "models" / "metro"


def _sb3(model_zip: Path, vecnormalize: Path):
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    model = MaskablePPO.load(model_zip, device="cpu")
    vn = VecNormalize.load(str(vecnormalize), DummyVecEnv([lambda: gym.make(METRO)]))
    vn.training = False
    return model, vn


@pytest.fixture(params=["tiny-cache-run", "committed-metro"])
def env_and_exported(request, cache_run, policy, tmp_path):
    """(SB3 model, VecNormalize, exported RouterPolicy): the tiny run trained on prefix-sharing
    traffic, and the committed metro agent (models/metro) exported now (policy.json records the
    sites' statics at export time: an export older than the catalog's last refit predicts TTFT
    with the old prefill terms)."""
    if request.param == "tiny-cache-run":
        return (*_sb3(cache_run / "model.zip", cache_run / "vecnormalize.pkl"), policy)
    if not (COMMITTED / "best_model.zip").is_file():
        pytest.skip("models/metro not present")
    from agents.export import export_policy

    export_policy(COMMITTED, tmp_path / "metro", verify_states=0)
    return (*_sb3(COMMITTED / "best_model.zip", COMMITTED / "vecnormalize.pkl"), RouterPolicy.load(tmp_path / "metro"))


def _without(body: dict, *keys: str) -> dict:
    out = json.loads(json.dumps(body))
    for ep in out["endpoints"]:
        for k in keys:
            ep.pop(k, None)
    return out


# ---------------------------------------------------------------------------- parity
def test_parity_on_1000_recorded_snapshots_with_cache_signals(env_and_exported):
    """1,000 snapshots recorded from the environment (info["snapshot"]) on prefix-sharing traffic,
    sent as JSON: the runtime's decision is MaskablePPO.predict's on the env observation, and
    the JSON encodes to that observation bit for bit. The cache signals are in play: they are
    non-zero in most snapshots and dropping them from the JSON changes the policy's scores."""
    model, vn, policy = env_and_exported
    env = gym.make(METRO, config=CACHE_CONFIG)
    n = cached = indexed = changed = sheds = 0
    seed = 11
    while n < N_SNAPSHOTS:
        obs, info = env.reset(seed=seed)
        seed += 1
        done = False
        while not done and n < N_SNAPSHOTS:
            snap = info["snapshot"]
            ref, _ = model.predict(vn.normalize_obs(obs), action_masks=info["action_mask"], deterministic=True)
            body = json.loads(json.dumps(snapshot_to_json(snap)))  # what a router sends
            assert {"prefix_cached_frac", "prefix_indexed_frac", "queued_prompt_tokens"} <= set(body["endpoints"][0])
            d = policy.decide(body)
            assert d["action"] == np.asarray(ref).tolist(), f"snapshot {n} (seed {seed - 1})"
            snap_j = policy.snapshot_from_json(body)
            obs_j = policy.interface.encode(snap_j)
            np.testing.assert_array_equal(obs_j, obs)
            # decisions run the batch-1 session: the general session's outputs, bit for bit
            for one, general in zip(policy._decide_run(obs_j, policy.interface.action_mask(snap_j)),
                                    policy.run(obs_j, snap_j.action_mask)[1:]):
                assert one.dtype == general.dtype and np.array_equal(one, general), f"snapshot {n}"
            cached += bool(np.any(snap.prefix_cached_frac > 0))
            indexed += bool(np.any(snap.prefix_indexed_frac > 0))
            if cached and n % 10 == 0:  # the signals reach the graph
                blind = policy.decide(_without(body, "prefix_cached_frac", "prefix_indexed_frac"))
                changed += blind["scores"] != d["scores"]
            sheds += d["shed"]
            obs, _, term, trunc, info = env.step(np.array(d["action"]))
            done = term or trunc
            n += 1
    print(f"\nparity: {n} decisions identical to MaskablePPO.predict; snapshots with cached > 0: {cached}, "
          f"indexed > 0: {indexed}; scores changed without the cache signals in {changed} of "
          f"{N_SNAPSHOTS // 10} probes; {sheds} sheds")
    assert n == N_SNAPSHOTS
    assert policy.decision_session == "batch-1"  # the fast session passed its load-time check
    assert cached > N_SNAPSHOTS // 2 and indexed > N_SNAPSHOTS // 2
    assert changed > 0


def _router_body(sim, snap) -> dict:
    """The JSON a router with its own index sends: the precise fractions (from KV events), no
    prefix_indexed_frac, and the prompt's hashes at the simulated router's granularity."""
    body = _without(snapshot_to_json(snap), "prefix_indexed_frac")
    chain = sim._router_chain(sim.pending)
    body["request"]["block_hashes"] = [int(h) for h in chain]
    body["request"]["block_size_tokens"] = sim._index_entry_tokens
    return json.loads(json.dumps(body))


@pytest.mark.parametrize("capacity", [None, 24], ids=["default-bound", "24-entries-evicting"])
def test_service_index_reproduces_the_simulators(policy, capacity):
    """Fed the env's sequence of (block hashes, chosen endpoint), the service's own index gives
    exactly the simulator's prefix_indexed_frac at every decision (with the default bound, the
    simulator's; and with a bound so small that LRU evictions happen on both sides), and the
    decisions made with it are the environment policy's."""
    env = gym.make(METRO, config=CACHE_CONFIG)
    obs, info = env.reset(seed=101)
    sim = env.unwrapped.sim
    assert sim._index_entry_tokens == DEFAULT_BLOCK_SIZE_TOKENS
    index = policy.new_prefix_index(capacity)
    if capacity is None:
        assert index.capacity_entries == sim.prefix_index.capacity_blocks
    else:
        sim.prefix_index = PrefixIndex(sim.n_sites, capacity)
    n = nonzero = full = 0
    done = False
    while not done and n < N_SNAPSHOTS:
        snap = info["snapshot"]
        body = _router_body(sim, snap)
        mine = policy.snapshot_from_json(body, index)
        np.testing.assert_array_equal(mine.prefix_indexed_frac, snap.prefix_indexed_frac, err_msg=f"decision {n}")
        np.testing.assert_array_equal(mine.prefix_cached_frac, snap.prefix_cached_frac)
        d = policy.decide(body, index)  # looks up, decides, records at the chosen endpoint
        assert d == policy.decide_snapshot(snap), f"decision {n}"
        nonzero += bool(np.any(snap.prefix_indexed_frac > 0))
        full += any(index.stats()["entries"][s] == c for s, c in index.stats()["capacity_entries"].items())
        obs, _, term, trunc, info = env.step(np.array(d["action"]))
        done = term or trunc
        n += 1
    print(f"\nindex agreement ({capacity or 'default'} entries): {n} decisions, indexed > 0 in {nonzero}, "
          f"an endpoint at its bound in {full}; {index.stats()['entries']}")
    assert n >= 900 and nonzero > (n // 2 if capacity is None else n // 10)
    if capacity is not None:
        assert full > n // 2  # the small bound evicts all along


# ---------------------------------------------------------------------------- modes and validation
def _body() -> dict:
    return {
        "endpoints": [{"name": s, "waiting": 1, "running": 4, "kv_util": 0.3, "rtt_ms": 10.0 + i,
                       "energy_price_usd_per_kwh": 0.18, "up": True} for i, s in enumerate(SITES)],
        "request": {"prompt_tokens": 1500, "slo_class": "code", "origin": "east", "model": "llama-3-8b",
                    "residency": False, "block_hashes": list(range(1000, 1011))},
        "hour_utc": 10.0,
    }


def test_precise_values_are_used_as_sent_and_the_index_fills_the_rest(policy):
    index = policy.new_prefix_index()
    index.record(2, list(range(1000, 1006)))  # 6 of the 11 hashes were sent to edge-east
    body = _body()
    snap = policy.snapshot_from_json(body, index)
    approx = [0, 0, 6 * 128 / 1500, 0, 0]
    assert snap.prefix_indexed_frac.tolist() == pytest.approx(approx)
    assert snap.prefix_cached_frac.tolist() == pytest.approx(approx)  # no precise value: the index's
    body["endpoints"][2]["prefix_cached_frac"] = 0.1  # precise mode, for one endpoint
    body["endpoints"][0]["prefix_indexed_frac"] = 0.5  # the caller's own index, for another
    snap = policy.snapshot_from_json(body, index)
    assert snap.prefix_cached_frac.tolist() == pytest.approx([0, 0, 0.1, 0, 0])
    assert snap.prefix_indexed_frac.tolist() == pytest.approx([0.5, 0, 6 * 128 / 1500, 0, 0])
    # no index (RouterPolicy.decide alone): hashes validated, fractions 0 unless sent
    snap = policy.snapshot_from_json(_body())
    assert not snap.prefix_indexed_frac.any() and not snap.prefix_cached_frac.any()
    # block_size_tokens scales the fraction, capped at 1
    body = _body()
    body["request"]["block_size_tokens"] = 256
    body["request"]["prompt_tokens"] = 2600
    assert policy.snapshot_from_json(body, index).prefix_indexed_frac[2] == pytest.approx(6 * 256 / 2600)


def test_decide_records_the_chosen_endpoint_and_not_a_shed(policy):
    index = policy.new_prefix_index(64)
    d = policy.decide(_body(), index)
    assert not d["shed"]
    entries = index.stats()["entries"]
    assert entries[d["endpoint"]] == 11 and sum(entries.values()) == 11
    again = policy.snapshot_from_json(_body(), index)
    assert again.prefix_indexed_frac[d["site_index"]] == pytest.approx(11 * 128 / 1500)
    body = _body()
    for ep in body["endpoints"]:
        ep["up"] = False
    body["request"]["block_hashes"] = [7, 8, 9]
    assert policy.decide(body, index)["shed"]
    assert sum(index.stats()["entries"].values()) == 11  # nothing recorded for a shed request
    for _ in range(10):  # the bound holds
        body = _body()
        body["request"]["block_hashes"] = [f"h{i}-{_}" for i in range(11)]
        policy.decide(body, index)
    assert all(v <= 64 for v in index.stats()["entries"].values())


BAD_HASHES = [
    ({"block_hashes": list(range(13))}, r"^request\.block_hashes: 13 hashes of 128 tokens are more than the "
                                        r"prompt's 1500 tokens have \(at most 12\)"),
    ({"block_hashes": [1, 2, True]}, r"^request\.block_hashes\[2\]: expected an integer in \[-2\^63, 2\^64\)"),
    ({"block_hashes": [1, 2.0]}, r"^request\.block_hashes\[1\]: expected an integer"),
    ({"block_hashes": ["a", ""]}, r"^request\.block_hashes\[1\]: .* a string of 1-128 characters, got \"\""),
    ({"block_hashes": ["x" * 129]}, r"^request\.block_hashes\[0\]: "),
    ({"block_hashes": [1 << 64]}, r"^request\.block_hashes\[0\]: "),
    ({"block_hashes": "abc"}, r"^request\.block_hashes: expected a list of at most 8192 hashes"),
    ({"block_hashes": list(range(9000)), "prompt_tokens": 10 ** 7}, r"^request\.block_hashes: expected a list .* "
                                                                     r"got a list of 9000"),
    ({"block_size_tokens": 0}, r"^request\.block_size_tokens: expected an integer in \[1, 1048576\]"),
    ({"block_size_tokens": 64.0}, r"^request\.block_size_tokens: expected an integer"),
]


@pytest.mark.parametrize("change,message", BAD_HASHES, ids=[m[:40] for _, m in BAD_HASHES])
def test_bad_hashes_are_refused_naming_the_field(policy, change, message):
    body = _body()
    body["request"].update(change)
    with pytest.raises(SnapshotError, match=message):
        policy.decide(body, policy.new_prefix_index())
    from pydantic import ValidationError

    from gridenv.router.schemas import format_errors, parse_route_request

    if "more than the prompt" not in message:  # the body schema refuses the same field
        with pytest.raises(ValidationError) as err:
            parse_route_request(json.dumps(body))
        assert format_errors(err.value)[0]["loc"].startswith(message[1:].split(":")[0].replace("\\", "")[:20])


def test_index_is_thread_safe_and_bounded(policy):
    index = policy.new_prefix_index(50)
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(2000):
                chain = [(k * 7919 + i * 31 + j) % 400 for j in range(8)]
                index.fractions(chain, 128, 2000)
                index.record((k + i) % len(SITES), chain)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    st = index.stats()
    assert st["records"] == 8000 and st["lookups"] == 8000
    assert all(0 < v <= 50 for v in st["entries"].values())


def test_default_bound_is_the_kv_capacity_in_entries(policy):
    st = policy.statics
    caps = RouterPrefixIndex.for_statics(st).capacity_entries
    assert caps == [r * c // 128 for r, c in zip(st.replicas, st.kv_capacity_tokens)]
    assert RouterPrefixIndex.for_statics(st, 10).capacity_entries == [10] * len(SITES)


def test_block_size_default_is_the_simulators():
    from gridenv.core.simulator import ROUTER_BLOCK_TOKENS

    assert DEFAULT_BLOCK_SIZE_TOKENS == ROUTER_BLOCK_TOKENS


def test_bench_times_decisions_with_and_without_hashes(capsys):
    """`python -m gridenv.router bench ... --no-http --json`: the four in-process variants; the
    synthetic hashed bodies are valid for the schema and share prefixes (the index matches)."""
    from gridenv.router.__main__ import main
    from gridenv.router.bench import add_block_hashes, synthetic_snapshots
    from gridenv.router.schemas import parse_route_request

    model = COMMITTED / "onnx"
    if not (model / "policy.onnx").is_file():
        pytest.skip("models/metro/onnx not present")
    assert main(["bench", "--policy", str(model), "--no-http", "--inproc-requests", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("in_process", "in_process_hashes", "in_process_validated", "in_process_validated_hashes"):
        assert out[key]["n"] == 50 and 0 < out[key]["p50"] <= out[key]["p99"], key
    assert out["load_avg_1min_before"] >= 0
    policy = RouterPolicy.load(model)
    bodies = add_block_hashes(synthetic_snapshots(policy, 200, seed=0), seed=0)
    index = policy.new_prefix_index()
    hits = 0
    for b in bodies:
        parse_route_request(json.dumps(b))
        hits += any(index.matched(b["request"]["block_hashes"])) if b["request"]["block_hashes"] else 0
        policy.decide(b, index)
    assert hits > 20


def test_prompt_block_hashes_chain_the_prefix(policy):
    """Shared leading blocks give shared leading hashes; a change in block k changes hash k and
    every later one; only full blocks are hashed; and the service matches what was shared."""
    from gridenv.router.prefix import prompt_block_hashes

    system = list(range(5000, 5000 + 512))  # a 512-token system prompt: 4 blocks of 128
    a = prompt_block_hashes(system + list(range(300)))
    b = prompt_block_hashes(system + list(range(1, 301)))
    assert len(a) == len(b) == (512 + 300) // 128 == 6
    assert a[:4] == b[:4] and all(x != y for x, y in zip(a[4:], b[4:]))
    c = prompt_block_hashes([0] + system[1:] + list(range(300)))
    assert all(x != y for x, y in zip(a, c))  # the first block differs: nothing is shared
    assert prompt_block_hashes(list(range(127))) == [] and len(prompt_block_hashes(list(range(16)), 16)) == 1
    assert all(0 <= h < 1 << 63 for h in a) and prompt_block_hashes(system) == a[:4]  # deterministic
    with pytest.raises(ValueError, match="block_size_tokens"):
        prompt_block_hashes(system, 0)
    index = policy.new_prefix_index()
    index.record(1, a)
    body = _body()
    body["request"].update(prompt_tokens=812, block_hashes=b)
    assert policy.snapshot_from_json(body, index).prefix_indexed_frac[1] == pytest.approx(4 * 128 / 812)
