"""Scatter labels of clustered policies do not overlap (agents.report.dodge_labels)."""

from __future__ import annotations

from agents.report import dodge_labels


def test_clustered_labels_are_pushed_apart_and_lone_ones_stay():
    xs = [6.1, 6.1, 6.1, 2.7]
    ys = [0.790, 0.800, 0.819, 0.824]  # p2c, llm-d, jsq close together; one far to the left
    yr = max(ys) - min(ys)
    out = dodge_labels(xs, ys, xr=3.4, yr=yr, min_gap_frac=0.1)
    near = sorted(out[:3])
    assert all(b - a >= 0.1 * yr - 1e-12 for a, b in zip(near, near[1:]))
    assert out[0] == ys[0]  # the lowest of the cluster keeps its place
    assert out[3] == ys[3]  # a point far away in x is not moved
