"""The long-replay memory benchmark: its synthetic trace is valid Mooncake JSONL of the published
shape, and a short replay reports prefix hits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gridenv.bench_trace import replay, write_synthetic_mooncake
from gridenv.core.traces import load_mooncake_jsonl


def test_synthetic_mooncake_trace_has_the_published_shape(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    n = write_synthetic_mooncake(path, hours=0.05, seed=0)
    trace = load_mooncake_jsonl(path)
    assert len(trace) == n and abs(n / 180.0 - 23_608 / 3600.0) < 0.7  # requests per second
    assert abs(trace.prompt_tokens.mean() / 7_700 - 1) < 0.1
    assert all(len(h) == -(-p // 512) for h, p in zip(trace.hash_ids, trace.prompt_tokens))
    out = replay(str(path), hours=0.05, scenario="centralized", seed=0)
    assert out["requests"] == n and 0.1 < out["prefix_hit_rate"] < 0.9
    assert np.isfinite(out["peak_rss_mb"]) and out["peak_rss_mb"] > 0


import pytest  # noqa: E402

from gridenv.bench_trace import main  # noqa: E402


@pytest.mark.parametrize("argv,message", [
    (["--scenario", "nope"], "--scenario: unknown scenario 'nope'"),
    (["--trace", "/nonexistent/trace.jsonl"], "--trace: no such file"),
    (["--hours", "nan"], "--hours must be positive, got nan"),
    (["--hours", "0"], "--hours must be positive"),
    (["--timeout-s", "-1"], "--timeout-s must be positive"),
])
def test_bad_flags_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_failing_replay_is_reported_not_waited_on(tmp_path, capsys):
    """A trace the loader refuses fails in the child: the parent reports it (exit 1), never hangs."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": "many"}\n')
    assert main(["--trace", str(bad), "--scenario", "centralized", "--timeout-s", "120"]) == 1
    assert "the replay failed" in capsys.readouterr().err


def test_a_registered_scenario_file_replays_by_name(tmp_path):
    """--scenario takes what every command takes: here the registered Mooncake replay by name."""
    path = tmp_path / "trace.jsonl"
    n = write_synthetic_mooncake(path, hours=0.01, seed=1)
    out = replay(str(path), hours=0.01, scenario="mooncake-replay", seed=0)
    assert out["requests"] == n and out["completed"] + out["over_context"] + out["timed_out"] <= n
