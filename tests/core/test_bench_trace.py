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
