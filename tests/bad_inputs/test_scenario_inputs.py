"""Bad scenario YAML files: each fails with one ScenarioError naming the field, the value and the
line (strict YAML, strict types, finite numbers, shares, settings the options would ignore)."""

from __future__ import annotations

import re

import pytest

from gridenv.core.scenario import ScenarioError, load_scenario


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# (id, edit of TINY_YAML, fragments the one-line message must contain)
CASES = [
    ("duplicate-top-level-key", lambda t: t + "horizon_s: 40\n",
     ["duplicate key 'horizon_s'", "line 26", "line 2"]),
    ("duplicate-nested-key", lambda t: edit(t, "  rate_rps: 5\n", "  rate_rps: 5\n  rate_rps: 40\n"),
     ["duplicate key 'workload.rate_rps'", "line 16", "first given on line 15"]),
    ("duplicate-flow-key", lambda t: edit(t, "{median: 500}", "{median: 500, median: 600}"),
     ["duplicate key 'workload.classes.chat.prompt_tokens.median'", "line 19"]),
    ("bool-rate", lambda t: edit(t, "rate_rps: 5", "rate_rps: true"),
     ["workload.rate_rps", "True", "boolean is not a number", "line 15"]),
    ("bool-yes-replicas", lambda t: edit(t, "gpu: L4, replicas: 1", "gpu: L4, replicas: yes"),
     ["sites.0.replicas", "True", "line 7"]),
    ("string-horizon", lambda t: edit(t, "horizon_s: 20", "horizon_s: '20'"),
     ["horizon_s", "'20'", "line 2"]),
    ("fractional-replicas", lambda t: edit(t, "H100, replicas: 1", "H100, replicas: 1.5"),
     ["sites.1.replicas", "1.5", "line 8"]),
    ("inf-horizon", lambda t: edit(t, "horizon_s: 20", "horizon_s: .inf"),
     ["horizon_s", "finite", "inf", "line 2"]),
    ("nan-rate", lambda t: edit(t, "rate_rps: 5", "rate_rps: .nan"),
     ["workload.rate_rps", "finite", "nan", "line 15"]),
    ("minus-inf-rtt", lambda t: edit(t, "north: [5, 30]", "north: [5, -.inf]"),
     ["network.rtt_ms.north.1", "-inf", "line 11"]),
    ("nan-gpu-price", lambda t: edit(t, "gpu_usd_per_h: 3.0", "gpu_usd_per_h: .NaN"),
     ["sites.1.gpu_usd_per_h", "nan", "line 8"]),
    ("nan-population", lambda t: edit(t, "population: 0.5", "population: .nan"),
     ["regions.1.population", "nan", "line 5"]),
    ("class-shares-over-1", lambda t: edit(t, "share: 0.3", "share: 0.4"),
     ["workload.classes", "class shares must sum to 1", "chat: 0.7", "code: 0.4"]),
    ("class-shares-under-1", lambda t: edit(t, "share: 0.7", "share: 0.5"),
     ["class shares must sum to 1", "0.8"]),
    ("model-shares-as-weights", lambda t: edit(t, "{llama-3-8b: 1.0}", "{llama-3-8b: 3}"),
     ["workload.models", "model shares must sum to 1", "llama-3-8b: 3"]),
    ("trace-with-poisson", lambda t: edit(t, "  rate_rps: 5\n", "  rate_rps: 5\n  trace: {path: tiny.yaml}\n"),
     ["workload.trace", "ignored with arrivals 'poisson'", "line 16"]),
    ("cv-with-poisson", lambda t: edit(t, "  rate_rps: 5\n", "  rate_rps: 5\n  cv: 4.0\n"),
     ["workload.cv", "4.0", "ignored with arrivals 'poisson'", "line 16"]),
    ("mmpp-with-gamma", lambda t: edit(t, "arrivals: poisson\n", "arrivals: gamma\n  mmpp_mean_sojourn_s: 10\n"),
     ["workload.mmpp_mean_sojourn_s", "ignored with arrivals 'gamma'", "line 15"]),
    ("rate-with-trace", lambda t: edit(t, "arrivals: poisson", "arrivals: trace\n  trace: {path: tiny.yaml}"),
     ["workload.rate_rps", "ignored with arrivals 'trace'"]),
    ("zero-mmpp-factor", lambda t: edit(t, "arrivals: poisson", "arrivals: mmpp\n  mmpp_rate_factors: [0, 2]"),
     ["workload.mmpp_rate_factors.0", "must be > 0", "line 15"]),
    ("empty-mmpp-factors", lambda t: edit(t, "arrivals: poisson", "arrivals: mmpp\n  mmpp_rate_factors: []"),
     ["workload.mmpp_rate_factors", "at least 1"]),
    ("too-many-requests", lambda t: edit(t, "rate_rps: 5", "rate_rps: 1.0e+9"),
     ["workload.rate_rps", "requests per episode", "10,000,000"]),
    ("number-read-as-text", lambda t: edit(t, "rate_rps: 5", "rate_rps: 1e3"),
     ["workload.rate_rps", "'1e3'", "write 1.0e+9", "line 15"]),
    ("unknown-key", lambda t: t + "colour: red\n", ["colour", "Extra inputs are not permitted", "'red'", "line 26"]),
    ("zero-ttft-slo", lambda t: edit(t, "      share: 0.3\n", "      share: 0.3\n      ttft_slo_s: 0\n"),
     ["workload.classes.code.ttft_slo_s", "greater than 0", "line 23"]),
    ("merge-key", lambda t: t + "economics:\n  <<: {input_value_usd_per_mtok: 1}\n", ["merge keys", "line 27"]),
    ("not-yaml", lambda t: edit(t, "north: [5, 30]", "north: [5, 30"), ["not valid YAML", "line"]),
    ("empty-file", lambda t: "", ["top level must be a mapping", "NoneType"]),
    ("top-level-list", lambda t: "- 1\n- 2\n", ["top level must be a mapping", "list"]),
]


@pytest.mark.parametrize("mutate, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_scenario_file_is_one_clear_error(tiny_yaml, tiny_text, mutate, fragments,
                                              tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the trace cases name tiny.yaml as a (relative) trace path
    path = tiny_yaml(mutate(tiny_text))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert path.name in msg  # the source
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_the_tiny_scenario_itself_is_valid(tiny_yaml) -> None:
    sc = load_scenario(tiny_yaml())
    assert sc.workload.rate_rps == 5.0 and [r.population for r in sc.regions] == [1.0, 0.5]


def test_population_is_a_weight_not_a_share(tiny_yaml, tiny_text) -> None:
    """Documented choice: populations are weights (1.0 and 0.5 above sum to 1.5)."""
    sc = load_scenario(tiny_yaml(edit(tiny_text, "population: 0.5", "population: 3")))
    assert sc.regions[1].population == 3.0


def test_reported_line_is_the_offending_line(tiny_yaml, tiny_text) -> None:
    text = edit(tiny_text, "rate_rps: 5", "rate_rps: false")
    with pytest.raises(ScenarioError) as err:
        load_scenario(tiny_yaml(text))
    line = int(re.search(r"\(line (\d+)\)", str(err.value)).group(1))
    assert text.splitlines()[line - 1].strip() == "rate_rps: false"


def test_a_file_that_is_not_utf8_names_the_file_and_line(tiny_text, tmp_path) -> None:
    """A binary file, or one saved in Latin-1, was a bare "'utf-8' codec can't decode byte 0xe9
    in position 52" naming neither the file nor the line."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(tiny_text.replace("kind: edge", "kind: \xe9dge", 1).encode("latin-1"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in (str(path), "line 7", "not UTF-8"):
        assert fragment in msg, (fragment, msg)
