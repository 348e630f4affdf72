"""gridenv.router.runtime: loading checks, JSON snapshot validation, episode parity, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("sb3_contrib")

import gymnasium as gym  # noqa: E402

import gridenv  # noqa: E402,F401
from gridenv.core.snapshot import encode  # noqa: E402
from gridenv.router.runtime import (  # noqa: E402
    FORMAT_VERSION,
    PolicyFileError,
    RouterPolicy,
    SnapshotError,
    snapshot_to_json,
)

METRO = "gridenv/Metro-v1"
SITES = ["edge-north", "edge-south", "edge-east", "edge-west", "core"]


@pytest.fixture(scope="module")
def run_dir(tiny_metro_run):
    return tiny_metro_run


@pytest.fixture(scope="module")
def policy_dir(run_dir, tmp_path_factory):
    from agents.export import export_policy

    out = tmp_path_factory.mktemp("router_policy") / "metro"
    export_policy(run_dir, out, verify_states=0)
    return out


@pytest.fixture(scope="module")
def policy(policy_dir):
    return RouterPolicy.load(policy_dir)


def _snapshot() -> dict:
    return {
        "endpoints": [
            {"name": n, "waiting": i, "running": 3 * i, "kv_util": 0.1 * i, "rtt_ms": 6.0 + 8 * i,
             "energy_price_usd_per_kwh": 0.18 if i < 4 else 0.09, "up": True, "batch_level": 1}
            for i, n in enumerate(SITES)
        ],
        "request": {"prompt_tokens": 700, "slo_class": "chat", "origin": "north", "model": "llama-3-8b",
                    "residency": False},
        "hour_utc": 13.25,
    }


# ---------------------------------------------------------------------------- decisions
def test_decide_shape(policy):
    d = policy.decide(_snapshot())
    assert set(d) >= {"endpoint", "shed", "batch_level", "max_batch_size", "scores", "site_index"}
    assert d["endpoint"] in SITES or (d["endpoint"] is None and d["shed"])
    assert d["max_batch_size"] == [8, 32, 128][d["batch_level"]]
    assert list(d["scores"]) == SITES
    assert all(0.0 <= v <= 1.0 for v in d["scores"].values())
    assert abs(sum(d["scores"].values()) + d["shed_score"] - 1.0) < 1e-5
    assert d["action"] == [d["site_index"], d["batch_level"]]
    # omitted optional fields: batch_level, SLOs, hour (-> now)
    snap = _snapshot()
    del snap["hour_utc"]
    for ep in snap["endpoints"]:
        del ep["batch_level"]
    assert policy.decide(snap)["endpoint"] in SITES + [None]
    assert policy.score(_snapshot())["scores"] == d["scores"]


def test_nothing_feasible_sheds(policy):
    snap = _snapshot()
    for ep in snap["endpoints"]:
        ep["up"] = False
    d = policy.decide(snap)
    assert d["shed"] and d["endpoint"] is None and d["site_index"] == 5
    assert all(v == 0.0 for v in d["scores"].values()) and d["shed_score"] == pytest.approx(1.0)


def test_residency_keeps_request_in_region(policy):
    snap = _snapshot()
    snap["request"].update(residency=True, origin="south")
    d = policy.decide(snap)
    assert d["endpoint"] in ("edge-south", None)
    assert all(v == 0.0 for k, v in d["scores"].items() if k != "edge-south")


def test_episode_parity_with_sb3(run_dir, policy):
    """The runtime fed with the env's own snapshots reproduces a whole episode's decisions, and the
    JSON form of each snapshot encodes to the env's observation bit for bit."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    model = MaskablePPO.load(run_dir / "model.zip", device="cpu")
    vn = VecNormalize.load(str(run_dir / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make(METRO)]))
    vn.training = False
    env = gym.make(METRO, config={"horizon_s": 30})
    obs, info = env.reset(seed=11)
    done, n, sheds, rewards = False, 0, 0, 0.0
    while not done:
        snap = info["snapshot"]
        ref, _ = model.predict(vn.normalize_obs(obs), action_masks=info["action_mask"],
                               deterministic=True)
        d = policy.decide_snapshot(snap)
        assert d["action"] == np.asarray(ref).tolist(), f"decision {n}"
        assert snap.action_mask[d["site_index"]]
        # the JSON path: same observation, same decision; and with the SLOs left to the defaults
        j = snapshot_to_json(snap)
        assert policy.decide(j) == d
        np.testing.assert_array_equal(encode(policy.snapshot_from_json(j)), obs)
        del j["request"]["ttft_slo_s"], j["request"]["tpot_slo_s"]
        np.testing.assert_array_equal(encode(policy.snapshot_from_json(json.loads(json.dumps(j)))), obs)
        sheds += d["shed"]
        obs, r, _, done, info = env.step(np.array(d["action"]))
        rewards += r
        n += 1
    assert n > 300
    print(f"\nepisode parity: {n} decisions identical to MaskablePPO.predict ({sheds} sheds)")


# ---------------------------------------------------------------------------- validation
def _bad(mutate):
    snap = _snapshot()
    mutate(snap)
    return snap


BAD = [
    (lambda s: s["endpoints"][2].update(kv_util=1.7), r"^endpoints\[2\]\.kv_util: expected a number in \[0, 1\]"),
    (lambda s: s["endpoints"][1].pop("waiting"), r"^endpoints\[1\]\.waiting: missing"),
    (lambda s: s["endpoints"][0].update(running="3"), r"^endpoints\[0\]\.running: expected a number >= 0, got \"3\""),
    (lambda s: s["endpoints"][0].update(rtt_ms=-1), r"^endpoints\[0\]\.rtt_ms: expected a number >= 0"),
    (lambda s: s["endpoints"][0].update(waiting=True), r"^endpoints\[0\]\.waiting: expected a number"),
    (lambda s: s["endpoints"][0].update(waiting=float("nan")), r"^endpoints\[0\]\.waiting: expected a number"),
    (lambda s: s["endpoints"][3].update(up="yes"), r"^endpoints\[3\]\.up: expected true or false"),
    (lambda s: s["endpoints"][3].update(batch_level=3), r"^endpoints\[3\]\.batch_level: expected an integer batch level"),
    # was 'expected a batch level index in [0, 2], got 2.0': 2.0 is in [0, 2]; it is not an integer
    (lambda s: s["endpoints"][3].update(batch_level=2.0),
     r"^endpoints\[3\]\.batch_level: expected an integer batch level index in \[0, 2\], got 2.0"),
    (lambda s: s["endpoints"][4].update(name="edge-mars"), r"^endpoints\[4\]\.name: unknown endpoint \"edge-mars\""),
    (lambda s: s["endpoints"][4].pop("name"), r"^endpoints\[4\]\.name: missing"),
    (lambda s: s["endpoints"][4].update(name="edge-north"), r"^endpoints\[4\]\.name: duplicate endpoint"),
    (lambda s: s["endpoints"].pop(), r"^endpoints: missing core"),
    (lambda s: s["endpoints"].append(7), r"^endpoints\[5\]: expected an endpoint object"),
    (lambda s: s.pop("endpoints"), r"^endpoints: missing"),
    (lambda s: s.update(endpoints={}), r"^endpoints: expected a list"),
    (lambda s: s.pop("request"), r"^request: missing"),
    (lambda s: s["request"].update(prompt_tokens=0), r"^request\.prompt_tokens: expected an integer >= 1"),
    (lambda s: s["request"].update(prompt_tokens=12.5), r"^request\.prompt_tokens: expected an integer"),
    (lambda s: s["request"].update(slo_class="batch"), r"^request\.slo_class: expected an SLO class"),
    (lambda s: s["request"].update(origin="mars"), r"^request\.origin: expected a region name"),
    (lambda s: s["request"].update(model="gpt-5"), r"^request\.model: expected a model name"),
    (lambda s: s["request"].pop("residency"), r"^request\.residency: missing"),
    (lambda s: s["request"].update(ttft_slo_s=0), r"^request\.ttft_slo_s: expected a number >= 1e-09"),
    # was 'expected a number > 0, got 1e-300': it is > 0; the bound is 1e-9
    (lambda s: s["request"].update(tpot_slo_s=1e-300), r"^request\.tpot_slo_s: expected a number >= 1e-09 \(seconds\), got 1e-300"),
    (lambda s: s.update(hour_utc=24), r"^hour_utc: expected a number in \[0, 24\)"),
]


@pytest.mark.parametrize("mutate,message", BAD, ids=[m for _, m in BAD])
def test_invalid_snapshot_names_the_field(policy, mutate, message):
    with pytest.raises(SnapshotError, match=message):
        policy.decide(_bad(mutate))


#: Values that are wrong for some signals and right for others (every type, every bound).
_PROBE_VALUES = [None, True, False, -1, -0.5, 0, 0.0, 0.5, 1, 1.0, 1.5, 2, 7, 1e308, 10**400, float("nan"),
                 float("inf"), -float("inf"), "1", [1], {}]


def test_generated_endpoint_parser_agrees_with_the_generic_loop(policy):
    """The hot path validates the endpoints with a generated parser; on a problem the generic
    loop names it. The two must accept exactly the same endpoint objects and fill the same
    values (as make_snapshot would convert them): every signal probed with every kind of value,
    absent, and the names missing, unknown or repeated."""
    from gridenv.core.snapshot import make_snapshot

    n = policy.n_sites
    keys = [c[0] for c in policy._signal_checks]

    def both(eps):
        fast = [[d] * n for d in policy._defaults]
        ok = policy._parse_endpoints_fast(eps, fast)
        slow = [[d] * n for d in policy._defaults]
        try:
            policy._parse_endpoints(eps, slow)
        except SnapshotError:
            slow = None
        return ok, fast, slow

    cases = [_snapshot()["endpoints"]]
    for k in keys:
        for j in (0, n - 1):
            for v in [*_PROBE_VALUES, "absent"]:
                eps = _snapshot()["endpoints"]
                if v == "absent":
                    eps[j].pop(k, None)
                else:
                    eps[j][k] = v
                cases.append(eps)
    for change in (lambda e: e[0].pop("name"), lambda e: e[1].update(name="edge-mars"),
                   lambda e: e[1].update(name=e[0]["name"]), lambda e: e.pop(), lambda e: e.append(7),
                   lambda e: e.__setitem__(2, []), lambda e: e[0].update(name=3), lambda e: e.append(dict(e[0]))):
        eps = _snapshot()["endpoints"]
        change(eps)
        cases.append(eps)
    accepted = 0
    req = policy.snapshot_from_json(_snapshot()).request
    for eps in cases:
        ok, fast, slow = both(eps)
        assert ok == (slow is not None), eps
        if ok:
            accepted += 1
            assert make_snapshot(policy.statics, req, 3.0, *fast) == make_snapshot(policy.statics, req, 3.0, *slow)
            assert all(type(x) is float for c, chk in zip(fast, policy._signal_checks) if "number" in chk[1]
                       for x in c), "numbers are floats, as make_snapshot's conversion gives"
    assert 50 < accepted < len(cases) - 100  # both kinds well represented


def test_not_an_object(policy):
    with pytest.raises(SnapshotError, match="^body: expected a JSON object"):
        policy.decide([1, 2])


# ---------------------------------------------------------------------------- refusals
def _copy(policy_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "p"
    d.mkdir()
    for f in ("policy.onnx", "policy.json"):
        (d / f).write_bytes((policy_dir / f).read_bytes())
    return d


def _edit(d: Path, fn) -> None:
    meta = json.loads((d / "policy.json").read_text())
    fn(meta)
    (d / "policy.json").write_text(json.dumps(meta))


def test_tampered_onnx_refused(policy_dir, tmp_path):
    d = _copy(policy_dir, tmp_path)
    with open(d / "policy.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PolicyFileError, match="policy.onnx does not match policy.json: sha256"):
        RouterPolicy.load(d)


def test_wrong_feature_spec_refused(policy_dir, tmp_path):
    d = _copy(policy_dir, tmp_path)
    _edit(d, lambda m: m["observation"]["features"][5].update(name="site[0].kv_util_v2"))
    with pytest.raises(PolicyFileError, match=r"observation.features is not the feature spec of its interface"):
        RouterPolicy.load(d)


def _rename_site_feature(m: dict) -> None:
    m["interface"]["interface"]["site_features"][5]["name"] = "kv_util_v2"


def _drop_model_vocab_entry(m: dict) -> None:
    m["interface"]["interface"]["vocabularies"]["model"].append("llama-2-70b")


@pytest.mark.parametrize("edit,message", [
    (_rename_site_feature, r"site feature 'kv_util' added .*site feature 'kv_util_v2' removed|"
                           r"site feature 'kv_util_v2' removed .*site feature 'kv_util' added"),
    (_drop_model_vocab_entry, r"vocabulary 'model': entries \['llama-2-70b'\] only in recorded"),
    (lambda m: m["interface"]["interface"].update(version="slots-1"), r"version: recorded 'slots-1', current 'slots-3'"),
])
def test_policy_recorded_under_another_interface_is_refused(policy_dir, tmp_path, edit, message):
    """A policy.json whose interface record differs from this gridenv's names the difference."""
    d = _copy(policy_dir, tmp_path)
    _edit(d, edit)
    with pytest.raises(PolicyFileError, match=message):
        RouterPolicy.load(d)


def _drop_last_site(m: dict) -> None:
    st = m["statics"]
    n = len(st["site_names"])
    for k, v in st.items():
        if isinstance(v, list) and len(v) == n and k != "batch_levels":
            st[k] = v[:-1]


@pytest.mark.parametrize("case", ["n_sites", "site_slots", "max_sites", "statics_ragged", "consistent_edit"])
def test_wrong_number_of_sites_refused(policy_dir, tmp_path, case):
    d = _copy(policy_dir, tmp_path)
    if case == "n_sites":
        _edit(d, lambda m: m["action"].update(n_sites=4))
        msg = "action.n_sites is 4"
    elif case == "site_slots":
        _edit(d, lambda m: m["action"].update(site_slots=SITES[:4]))
        msg = "action.site_slots"
    elif case == "max_sites":  # more slots than the graph has: the spec no longer matches
        _edit(d, lambda m: (m["statics"].update(max_sites=6), m["action"].update(max_sites=6, shed_index=6)))
        msg = r"action max_sites: recorded 5, current 6.*obs_size: recorded \d+, current \d+"
    elif case == "statics_ragged":
        _edit(d, lambda m: m["statics"].update(site_names=SITES[:4]))
        msg = "statics.site_region has 5 entries for 4 sites"
    else:  # a self-consistent policy.json for 4 sites: only the graph's contract hash catches it
        def four(m):
            from gridenv.core.interface import make_interface
            from gridenv.core.snapshot import SiteStatics

            _drop_last_site(m)
            m["action"].update(n_sites=4, site_slots=SITES[:4])
            iface = make_interface(SiteStatics.from_dict(m["statics"]), "slots")
            m["interface"] = iface.record()
            m["observation"]["features"] = iface.feature_spec()
        _edit(d, four)
        msg = "policy.json was edited after export"
    with pytest.raises(PolicyFileError, match=msg):
        RouterPolicy.load(d)


@pytest.mark.parametrize("key, value, problem", [
    ("batch_levels", [8, 32, 2**63], "OverflowError"),  # found by fuzzing policy.json (2026-12-01)
    ("max_waiting", [64, 64, 0, 64, 64], "FloatingPointError"),  # was a divide-by-zero warning
])
def test_statics_the_encoder_cannot_scale_are_refused(policy_dir, tmp_path, key, value, problem):
    d = _copy(policy_dir, tmp_path)
    _edit(d, lambda m: m["statics"].update({key: value}))
    with pytest.raises(PolicyFileError, match=f"policy.json: statics: the observation encoder cannot scale them \\({problem}"):
        RouterPolicy.load(d)


def test_other_refusals(policy_dir, tmp_path):
    d = _copy(policy_dir, tmp_path)
    _edit(d, lambda m: m.update(format_version=99))
    with pytest.raises(PolicyFileError, match="format_version 99"):
        RouterPolicy.load(d)
    _edit(d, lambda m: m.update(format_version=FORMAT_VERSION))
    RouterPolicy.load(d)  # restored
    _edit(d, lambda m: m["request_defaults"]["slo_s"]["chat"].update(ttft_s=9.0))
    with pytest.raises(PolicyFileError, match="edited after export"):
        RouterPolicy.load(d)
    (d / "policy.json").write_text("{not json")
    with pytest.raises(PolicyFileError, match="not valid JSON"):
        RouterPolicy.load(d)
    (d / "policy.json").unlink()
    with pytest.raises(PolicyFileError, match="policy.json: missing"):
        RouterPolicy.load(d)
    with pytest.raises(PolicyFileError, match="no such policy directory"):
        RouterPolicy.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- CLI, imports
def test_cli_check_and_decide(policy_dir, tmp_path, capsys):
    from gridenv.router.__main__ import main

    assert main(["check", "--policy", str(policy_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["sites"] == SITES
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(_snapshot()))
    assert main(["decide", "--policy", str(policy_dir), str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch_size"] in (8, 32, 128)
    f.write_text(json.dumps(_bad(lambda s: s["endpoints"][2].update(kv_util=2))))
    assert main(["decide", "--policy", str(policy_dir), str(f)]) == 2
    assert capsys.readouterr().err.startswith("error: endpoints[2].kv_util: expected a number in [0, 1]")
    f.write_bytes(b'{"endpoints": "\xff"}')  # not UTF-8: was a UnicodeDecodeError traceback
    assert main(["decide", "--policy", str(policy_dir), str(f)]) == 2
    assert capsys.readouterr().err.startswith(f"error: invalid JSON in {f}: 'utf-8' codec can't decode byte 0xff")
    good = json.dumps(_snapshot())
    assert '"residency": ' in good
    f.write_text(good.replace('"residency": ', '"residency": true, "residency": ', 1))  # json keeps the last
    assert main(["decide", "--policy", str(policy_dir), str(f)]) == 2
    assert capsys.readouterr().err == f'error: key "residency" given twice in one JSON object in {f}\n'
    assert main(["check", "--policy", str(tmp_path)]) == 2
    assert "policy.json: missing" in capsys.readouterr().err


def test_runtime_does_not_import_torch(policy_dir):
    code = textwrap.dedent(f"""
        import json, sys
        from gridenv.router.runtime import RouterPolicy
        p = RouterPolicy.load({str(policy_dir)!r})
        d = p.decide(json.loads({json.dumps(json.dumps(_snapshot()))}))
        assert d["endpoint"] in {SITES!r} or d["shed"]
        print(json.dumps({{m: m in sys.modules for m in ("torch", "stable_baselines3", "sb3_contrib",
                                                        "gymnasium")}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert not loaded["torch"] and not loaded["stable_baselines3"] and not loaded["sb3_contrib"], loaded


def test_policy_json_is_written_and_read_through_one_schema(policy_dir, tmp_path):
    from gridenv.router.policy_file import PolicyFile

    text = (policy_dir / "policy.json").read_text()
    model = PolicyFile.model_validate_json(text)
    assert model.model_dump(mode="json") == json.loads(text)  # the writer's own output round-trips
    assert "interface" in PolicyFile.model_json_schema()["properties"]
    d = _copy(policy_dir, tmp_path)
    _edit(d, lambda m: m["observation"].update(size="72"))
    with pytest.raises(PolicyFileError, match=r"^policy.json: observation.size: Input should be a valid integer"):
        RouterPolicy.load(d)
    _edit(d, lambda m: (m["observation"].update(size=72), m.update(extra_section={})))
    with pytest.raises(PolicyFileError, match=r"^policy.json: extra_section: Extra inputs are not permitted"):
        RouterPolicy.load(d)
