"""The declared interface: element i of an observation is what feature_spec()[i] declares; the
observation does not depend on the catalog; hash and diff name changes; relative mode is
topology-agnostic. No gymnasium here: snapshots come from the simulator."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from gridenv.core import interface as I
from gridenv.core.interface import (
    InterfaceMismatchError,
    SiteFeature,
    check_compatible,
    local_hour,
    make_interface,
)
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator


def snapshots(scenario: str, n: int = 150, seed: int = 0, config: dict | None = None):
    """`n` snapshots of a simulated episode (random feasible sites, so queues build up)."""
    sim = GridSimulator(load_scenario(scenario, config or {}))
    rng = np.random.default_rng(seed)
    sim.reset(rng)
    out = []
    while len(out) < n and sim.pending is not None:
        snap = sim.snapshot()
        out.append(snap)
        cand = np.flatnonzero(snap.feasible)
        sim.decide(int(rng.choice(cand)) if len(cand) else -1, int(rng.integers(len(snap.statics.batch_levels))))
    return out


def reference_element(iface, snap, i: int) -> float:
    """Element i computed from the declaration alone (source + scaling), not by the encoder."""
    st, req = snap.statics, snap.request
    ns = {"np": np, "math": math, "local_hour": local_hour, "snap": snap, "st": st, "req": req}
    F = iface.n_site_features
    if i < iface.max_sites * F:
        slot, j = divmod(i, F)
        if slot >= st.n_sites:
            return 0.0
        f = iface.site_features[j]
        raw = np.broadcast_to(np.asarray(eval(f.source, ns), dtype=np.float64), (st.n_sites,))[slot]
        div = np.broadcast_to(np.asarray(eval(f.divide_by, ns), dtype=np.float64), (st.n_sites,))[slot]
        return float(min(max(raw / div, 0.0), 1.0))
    k = i - iface.max_sites * F
    for f in iface.request_features:
        width = len(iface.vocabularies[f.vocab]) if f.vocab else 1
        if k < width:
            x = eval(f.source, ns)
            if f.vocab:
                return 1.0 if x == k else 0.0
            return float(eval(f.transform, dict(ns, x=x)))
        k -= width
    raise IndexError(i)


@pytest.mark.parametrize("mode", ["slots", "relative"])
@pytest.mark.parametrize("scenario", ["metro", "continental"])
def test_element_i_is_what_feature_spec_declares(scenario, mode) -> None:
    snaps = snapshots(scenario, 120, config={"actions": {"max_sites": 12}} if scenario == "metro" else None)
    iface = make_interface(snaps[0].statics, mode)
    spec = iface.feature_spec()
    assert len(spec) == iface.obs_size
    seen_nonzero = np.zeros(iface.obs_size, dtype=bool)
    for snap in snaps:
        obs = iface.encode(snap)
        assert obs.shape == (iface.obs_size,) and obs.dtype == np.float32
        ref = np.array([reference_element(iface, snap, i) for i in range(iface.obs_size)])
        bad = np.flatnonzero(~np.isclose(obs, ref, rtol=1e-6, atol=1e-6))
        assert not len(bad), [(spec[i]["name"], obs[i], ref[i]) for i in bad[:5]]
        seen_nonzero |= obs != 0
    # the check is not vacuous: most declared site features took nonzero values
    first = [i for i in range(iface.n_site_features)]
    assert seen_nonzero[first].sum() >= iface.n_site_features - 2


def test_names_in_spec_follow_the_declarations() -> None:
    st = snapshots("continental", 1)[0].statics
    iface = make_interface(st, "slots")
    names = [f["name"] for f in iface.feature_spec()]
    assert names[:2] == ["site[0].present", "site[0].up"]
    assert "request.model=llama-3-70b" in names and "request.model=llama-3-8b" in names
    assert "request.model=llama-2-70b" not in names  # not a model of this scenario
    assert [n for n in names if n.startswith("request.origin=")] == [f"request.origin={r}" for r in st.region_names]


def test_observation_unchanged_when_the_catalog_grows(monkeypatch) -> None:
    from gridenv.core import catalog, topology

    before = snapshots("metro", 60, seed=4)
    obs_before = [make_interface(s.statics, "slots").encode(s) for s in before]
    hash_before = make_interface(before[0].statics, "slots").content_hash
    extra = "aaa-extra-1b"  # sorts first: would shift every model index of a catalog-wide one-hot
    n_models_before = len(catalog.MODELS)
    monkeypatch.setitem(catalog.MODELS, extra, catalog.MODELS["llama-3-8b"])
    names = tuple(sorted(catalog.MODELS))
    monkeypatch.setattr(topology, "MODEL_NAMES", names)
    import gridenv.core.simulator as simulator
    import gridenv.core.workload as workload

    monkeypatch.setattr(workload, "MODEL_NAMES", names)
    monkeypatch.setattr(simulator, "MODEL_NAMES", names)
    after = snapshots("metro", 60, seed=4)
    assert len(obs_before) == len(after) and len(names) == n_models_before + 1
    assert make_interface(after[0].statics, "slots").content_hash == hash_before
    for a, s in zip(obs_before, after):
        np.testing.assert_array_equal(a, make_interface(s.statics, "slots").encode(s))


def test_hash_changes_and_diff_names_the_feature(monkeypatch) -> None:
    st = snapshots("metro", 1)[0].statics
    iface = make_interface(st, "slots")
    rec = iface.record()
    check_compatible(rec, iface)  # itself: fine
    assert iface.diff(iface) == []
    # a changed scaling of one feature
    changed = tuple(replace(f, divide_by="100.0") if f.name == "rtt" else f for f in I.SLOT_SITE_FEATURES)
    monkeypatch.setitem(I._DECLARATIONS, "slots", (changed, I.SLOT_REQUEST_FEATURES))
    other = I.Interface(st, "slots")
    assert other.content_hash != iface.content_hash
    assert other.diff(rec["interface"]) == ["site feature 'rtt': divide_by recorded '200.0', current '100.0'"]
    with pytest.raises(InterfaceMismatchError, match="site feature 'rtt': divide_by"):
        check_compatible(rec, other)
    # an added feature
    added = I.SLOT_SITE_FEATURES + (SiteFeature("prefix_hit", "fraction", "snap.kv_util", "signal", "x"),)
    monkeypatch.setitem(I._DECLARATIONS, "slots", (added, I.SLOT_REQUEST_FEATURES))
    grown = I.Interface(st, "slots")
    assert grown.obs_size == iface.obs_size + st.max_sites
    with pytest.raises(InterfaceMismatchError, match="site feature 'prefix_hit' added"):
        check_compatible(rec, grown)


def test_diff_names_the_vocabulary_entry() -> None:
    st = snapshots("continental", 1)[0].statics
    iface = make_interface(st, "slots")
    fewer = replace(st, model_names=("llama-3-8b",), site_model=tuple(0 for _ in st.site_model))
    d = make_interface(fewer, "slots").diff(iface)
    assert d[0] == "vocabulary 'model': entries ['llama-3-70b'] only in recorded"
    renamed = replace(st, region_names=("americas", "emea", "asia"))
    d = make_interface(renamed, "slots").diff(iface)
    assert any("vocabulary 'region'" in x and "'emea'" in x and "'europe'" in x for x in d)


def test_record_round_trips_and_detects_an_edited_hash() -> None:
    st = snapshots("metro", 1)[0].statics
    iface = make_interface(st, "relative")
    rec = iface.record()
    back = I.Interface.from_dict(rec["interface"])
    assert back.content_hash == iface.content_hash == rec["content_hash"]
    assert back.diff(iface) == []
    rec["content_hash"] = "0" * 64
    with pytest.raises(InterfaceMismatchError, match="edited"):
        check_compatible(rec, iface)
    slots = make_interface(st, "slots")
    with pytest.raises(InterfaceMismatchError, match="mode: recorded 'relative', current 'slots'"):
        check_compatible(iface.record(), slots)


def test_relative_mode_is_topology_agnostic() -> None:
    metro = snapshots("metro", 40, config={"actions": {"max_sites": 8}})
    cont = snapshots("continental", 40)  # 8 sites, 3 regions, 2 models; metro: 5 sites, 4 regions
    a = make_interface(metro[0].statics, "relative")
    b = make_interface(cont[0].statics, "relative")
    assert a.obs_size == b.obs_size
    assert a.content_hash == b.content_hash  # nothing in the declaration names a site, region or model
    # while the slots declarations name the grid (regions, models, sites)
    d = make_interface(metro[0].statics, "slots").diff(make_interface(cont[0].statics, "slots"))
    assert any(x.startswith("vocabulary 'region'") for x in d) and any(x.startswith("action site_slots") for x in d)


def _permute(snap, perm):
    """The same snapshot with its sites listed in another order."""
    from copy import copy

    st = snap.statics
    per_site = [k for k, v in st.to_dict().items() if isinstance(v, (list, tuple)) and len(v) == st.n_sites
                and k != "batch_levels" and k != "region_names"]
    kw = {k: tuple(np.asarray(getattr(st, k), dtype=object)[perm].tolist()) for k in per_site}
    st2 = replace(st, **kw)
    s = copy(snap)
    s.statics = st2
    from gridenv.core.interface import SITE_SIGNALS

    for k in [sig.name for sig in SITE_SIGNALS] + ["feasible", "ttft_pred_s"]:
        setattr(s, k, getattr(snap, k)[perm])
    return s


@pytest.mark.parametrize("mode", ["slots", "relative"])
def test_site_blocks_permute_with_site_order(mode) -> None:
    snaps = snapshots("continental", 30)
    st = snaps[0].statics
    perm = np.random.default_rng(0).permutation(st.n_sites)
    iface = make_interface(st, mode)
    F, n = iface.n_site_features, st.n_sites
    for snap in snaps:
        s2 = _permute(snap, perm)
        a, b = iface.encode(snap), make_interface(s2.statics, mode).encode(s2)
        np.testing.assert_array_equal(b[: n * F].reshape(n, F), a[: n * F].reshape(n, F)[perm])
        np.testing.assert_array_equal(b[iface.max_sites * F:], a[iface.max_sites * F:])


def test_action_mask_layout() -> None:
    snap = snapshots("metro", 5, config={"actions": {"max_sites": 7}})[-1]
    iface = make_interface(snap.statics, "slots")
    m = iface.action_mask(snap)
    assert m.shape == (7 + 1 + 3,)
    np.testing.assert_array_equal(m[:5], snap.feasible)
    assert not m[5:7].any() and m[7:].all()
    assert iface.to_dict()["action"]["shed_index"] == 7 and iface.to_dict()["action"]["nvec"] == [8, 3]


def test_snapshot_pickles_without_the_encoder_caches() -> None:
    import pickle

    snap = snapshots("metro", 3)[-1]
    iface = make_interface(snap.statics, "slots")
    iface.encode(snap)  # fills the caches on the statics
    back = pickle.loads(pickle.dumps(snap))
    assert back == snap and back is not snap
    np.testing.assert_array_equal(make_interface(back.statics, "slots").encode(back), iface.encode(snap))
    assert len(pickle.dumps(snap)) < 20000


def test_router_json_fields_are_declared() -> None:
    names = [s.name for s in I.SITE_SIGNALS]
    assert names == ["waiting", "running", "kv_util", "rtt_ms", "energy_price_usd_per_kwh", "up", "batch_level",
                     "prefix_cached_frac", "prefix_indexed_frac", "queued_prompt_tokens"]
    # every live signal a site feature reads is one the caller sends (or derived by make_snapshot)
    derived = {"feasible", "ttft_pred_s"}
    for f in I.SLOT_SITE_FEATURES + I.RELATIVE_SITE_FEATURES:
        if f.kind == "signal":
            assert f.source.removeprefix("snap.") in set(names) | derived, f.name
    assert {s.name for s in I.REQUEST_FIELDS} >= {"prompt_tokens", "slo_class", "origin", "model", "residency"}


def test_slo_classes_are_defined_once() -> None:
    from gridenv.core import scenario, snapshot

    assert scenario.SLO_CLASSES is I.SLO_CLASSES and snapshot.SLO_CLASSES is I.SLO_CLASSES


def test_site_signals_are_make_snapshots_parameters_in_order() -> None:
    """The router parses (and snapshot_to_json writes) exactly these fields, in this order."""
    import inspect

    from gridenv.core.snapshot import make_snapshot

    params = list(inspect.signature(make_snapshot).parameters)[3:]
    assert params == [s.name for s in I.SITE_SIGNALS]
