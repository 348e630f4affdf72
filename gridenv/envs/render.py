"""Render modes of GridEnv: a text table (``ansi``) and a matplotlib bar chart (``rgb_array``)."""

from __future__ import annotations

import numpy as np

from gridenv.core.interface import SLO_CLASSES
from gridenv.core.topology import MODEL_NAMES

__all__ = ["ansi", "rgb_array"]


def _rows(env):
    sim = env.sim
    snap = env.snapshot
    for s, spec in enumerate(sim.topology.sites):
        yield {
            "site": spec.name,
            "kind": spec.kind,
            "up": sim.site_down[s] == 0,
            "waiting": sim.site_waiting[s],
            "running": sim.site_running[s],
            "kv": sum(r.kv_used_blocks(sim.now) for r in sim.replicas[s]) / sum(r.pool.total for r in sim.replicas[s]),
            "batch": sim.max_batch[s],
            "ttft_pred_ms": float(snap.ttft_pred_s[s]) * 1e3 if snap is not None else float("nan"),
        }


def ansi(env) -> str:
    sim = env.sim
    m = sim.metrics
    lines = [
        f"t={sim.now:8.2f}s  arrived={m.arrived} completed={m.completed} good={m.good} "
        f"shed={m.shed} failed={m.failed} timed_out={getattr(m, 'timed_out', 0)}",
        f"{'site':<14}{'kind':<6}{'up':<4}{'wait':>6}{'run':>6}{'kv%':>6}{'batch':>6}{'ttft~ms':>9}",
    ]
    for r in _rows(env):
        lines.append(
            f"{r['site']:<14}{r['kind']:<6}{'y' if r['up'] else 'n':<4}{r['waiting']:>6}"
            f"{r['running']:>6}{100 * r['kv']:>6.1f}{r['batch']:>6}{r['ttft_pred_ms']:>9.1f}"
        )
    if sim.pending is not None:
        p = sim.pending
        lines.append(f"request: origin={sim.topology.region_names[p.origin]} prompt={p.prompt_tokens} "
                     f"slo_class={SLO_CLASSES[p.slo_class]} model={MODEL_NAMES[p.model]} "
                     f"residency={p.residency}")
    return "\n".join(lines) + "\n"


def rgb_array(env) -> np.ndarray:
    # Figure + Agg canvas directly: no pyplot global state, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(_rows(env))
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["waiting"] for r in rows], width=0.4, label="waiting")
    ax.bar(x + 0.2, [r["running"] for r in rows], width=0.4, label="running")
    top = max([1] + [max(r["waiting"], r["running"]) for r in rows])
    for i, r in enumerate(rows):
        if not r["up"]:
            ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.15)
        # What a router reads besides the queues: KV use, batch cap, up or down.
        label = f"KV {100 * r['kv']:.0f}%\nbatch {r['batch']}" + ("" if r["up"] else "\nDOWN")
        ax.text(i, top * 1.02, label, ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, top * 1.35)
    ax.set_xticks(x, [r["site"] for r in rows], rotation=20, fontsize=7)
    ax.set_ylabel("requests")
    ax.set_title(f"t = {env.sim.now:.1f} s   good {env.sim.metrics.good} / completed {env.sim.metrics.completed}")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
