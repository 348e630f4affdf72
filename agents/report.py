"""Turn a leaderboard dict (see :mod:`agents.evaluation`) into files: JSON, CSV, Markdown, PNGs.

Plots use matplotlib's Agg back end (no display). Learning curves read a training run's
TensorBoard event files with tensorboard's ``EventAccumulator`` (imported only when asked).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from agents.evaluation import RESULT_METRICS
from agents.schemas import LeaderboardFile, load

__all__ = [
    "write_leaderboard", "read_leaderboard", "leaderboard_markdown", "plot_rewards", "plot_cost_vs_slo",
    "plot_normalized_scores", "plot_learning_curves", "claims_report", "CLAIMS",
]

#: The product brief's figures checked by ``--report claims``.
CLAIMS = {
    "centralized_rtt_ms": 45.0,
    "edge_rtt_ms": 12.0,
    "efficiency_gain_pct": 30.0,
}


def _f(x, digits: int = 3, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    text = f"{x * scale:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def _g(x, sig: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{sig}g}"


# ---------------------------------------------------------------------------- tables
def leaderboard_markdown(lb: dict) -> str:
    """The leaderboard as Markdown: the aggregate ranking, then one table per scenario."""
    s = lb["suite"]
    b = lb["bootstrap"]
    lines = [
        f"# Leaderboard: suite `{s['name']}`",
        "",
        f"{s['description']}. Scenarios: {', '.join(s['scenarios'])}; seeds: "
        f"{', '.join(map(str, s['seeds']))}" + (f"; overrides: `{json.dumps(s['overrides'])}`"
                                                 if s["overrides"] else "") + ".",
        "",
        "Normalized score per episode: (R - R_random) / (R_best_heuristic - R_random) on its "
        f"scenario; IQM over all episodes with a stratified bootstrap {b['confidence']:.0%} CI "
        f"({b['resamples']} resamples). Rewards in $ per episode with percentile bootstrap CIs."
        + ("" if lb.get("crn_consistent", True) else
           " **Warning: policies did not see identical arrivals for some seeds.**"),
        "",
        "| rank | policy | IQM normalized score [95% CI] | mean normalized score | mean reward $ | episodes |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for p in lb["policies"]:
        ci = p["iqm_ci95"]
        iqm = _f(p["iqm_normalized_score"]) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
        lines.append(f"| {p['rank']} | {p['name']} | {iqm} | {_f(p['mean_normalized_score'])} "
                     f"| {_f(p['mean_reward'])} | {p['episodes']} |")
    if lb.get("skipped"):
        lines += ["", "Not run (the policy's interface does not fit the scenario):", ""]
        lines += [f"- {s['policy']} on {s['scenario']}: {s['reason']}" for s in lb["skipped"]]
    if lb.get("failures"):
        lines += ["", f"**Incomplete: {len(lb['failures'])} episode(s) failed** and are not in the "
                  "statistics:", ""]
        lines += [f"- {f['policy']} on {f['scenario']} seed {f['seed']}: {f['error']} "
                  f"({f['attempts']} attempt{'s' * (f['attempts'] > 1)})" for f in lb["failures"]]
    header = ("| policy | reward $ [95% CI] | norm. score | goodput tok/s | SLO att. "
              "| TTFT p50 / p99 ms | TPOT p50 / p99 ms | RTT ms | shed | energy kWh | cost $ "
              "| $/Mtok | tok/J | CO2 kg |")
    for sc in s["scenarios"]:
        rows = sorted((r for r in lb["results"] if r["scenario"] == sc),
                      key=lambda r: -r["reward_mean"])
        ref = lb["normalization"].get(sc)
        lines += ["", f"## {sc}", ""]
        if ref and ref["used_in_score"]:
            lines += [f"Best heuristic: {ref['best_heuristic']}.", ""]
        elif ref:
            lines += ["No heuristic beats random here: no normalized score, scenario left out "
                      "of the IQM.", ""]
        lines += [header, "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lo, hi = r["reward_ci95"]
            lines.append(
                f"| {r['policy']} | {_f(r['reward_mean'])} [{_f(lo)}, {_f(hi)}] "
                f"| {_f(r['normalized_score_mean'], 2)} | {_f(r['goodput_tokens_per_s'], 0)} "
                f"| {_f(r['slo_attainment'])} "
                f"| {_f(r['ttft_p50_s'], 0, 1e3)} / {_f(r['ttft_p99_s'], 0, 1e3)} "
                f"| {_f(r['tpot_p50_s'], 1, 1e3)} / {_f(r['tpot_p99_s'], 1, 1e3)} "
                f"| {_f(r['network_rtt_mean_ms'], 1)} | {_f(r['shed_frac'])} "
                f"| {_g(r['energy_kwh'])} | {_g(r['cost_usd'])} | {_g(r['usd_per_mtok'])} "
                f"| {_g(r['tokens_per_joule'])} | {_g(r['co2_kg'])} |"
            )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["policy", "scenario", "episodes", "reward_mean", "reward_ci95_low",
               "reward_ci95_high", "normalized_score_mean", *RESULT_METRICS]


def _write_csv(lb: dict, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in lb["results"]:
            row = {**r, "reward_ci95_low": r["reward_ci95"][0], "reward_ci95_high": r["reward_ci95"][1]}
            w.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])


def write_leaderboard(lb: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write leaderboard.{json,csv,md} and the plots into `out_dir`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.json", out / "leaderboard.csv", out / "leaderboard.md"]
    data = LeaderboardFile.model_validate(lb).model_dump(mode="json")  # the schema, on write too
    paths[0].write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    _write_csv(lb, paths[1])
    paths[2].write_text(leaderboard_markdown(lb))
    paths.append(plot_rewards(lb, out / "reward_by_scenario.png"))
    paths.append(plot_cost_vs_slo(lb, out / "cost_vs_slo.png"))
    paths.append(plot_normalized_scores(lb, out / "normalized_score_iqm.png"))
    return paths


def read_leaderboard(path: str | os.PathLike) -> dict:
    """A ``leaderboard.json`` (or the directory holding it), validated against its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "leaderboard.json"
    return load(LeaderboardFile, path).model_dump(mode="json")


# ---------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int):
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    return nrows, ncols


def _save_panels(plt, fig, axes, n_used: int, path: Path) -> Path:
    """Blank the unused panels of a grid figure, save it as PNG and close it."""
    for ax in list(axes.flat)[n_used:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rewards(lb: dict, path: Path) -> Path:
    """Mean episode reward per policy, one panel per scenario, with 95% bootstrap CIs."""
    plt = _plt()
    scen = lb["suite"]["scenarios"]
    order = [p["name"] for p in lb["policies"]]
    nrows, ncols = _grid(len(scen))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 0.35 * len(order) * nrows + 1.5),
                             squeeze=False)
    for ax, sc in zip(axes.flat, scen):
        rows = {r["policy"]: r for r in lb["results"] if r["scenario"] == sc}
        here = [p for p in order if p in rows]  # a skipped or failed policy has no bar
        means = [rows[p]["reward_mean"] for p in here]
        err = [[m - rows[p]["reward_ci95"][0] for p, m in zip(here, means)],
               [rows[p]["reward_ci95"][1] - m for p, m in zip(here, means)]]
        ax.barh(range(len(here)), means, xerr=err, color="tab:blue", alpha=0.8, capsize=3)
        ax.set_yticks(range(len(here)), here)
        ax.invert_yaxis()
        ax.set_title(sc)
        ax.set_xlabel("episode reward ($), 95% CI")
        ax.grid(axis="x", alpha=0.3)
    return _save_panels(plt, fig, axes, len(scen), path)


def dodge_labels(xs, ys, xr: float, yr: float, min_gap_frac: float = 0.055) -> list[float]:
    """Label heights for points (xs, ys): a label starts at its point's height and is pushed up
    until it is at least ``min_gap_frac * yr`` above every label of a point closer than 25% of
    the x range (so labels of clustered points do not overlap)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed: list[tuple[float, float]] = []  # (x, label y)
    out = [0.0] * len(ys)
    for i in order:
        ly = ys[i]
        near = sorted(py for px, py in placed if abs(px - xs[i]) < 0.25 * xr)
        for py in near:  # ascending: push past every near label in the way
            if ly - py < min_gap_frac * yr:
                ly = py + min_gap_frac * yr
        placed.append((xs[i], ly))
        out[i] = ly
    return out


def plot_cost_vs_slo(lb: dict, path: Path) -> Path:
    """Routing cost vs SLO attainment, one point per policy, one panel per scenario."""
    plt = _plt()
    scen = lb["suite"]["scenarios"]
    nrows, ncols = _grid(len(scen))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.8 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    names = [p["name"] for p in lb["policies"]]
    for ax, sc in zip(axes.flat, scen):
        pts = []
        for i, name in enumerate(names):
            r = next((r for r in lb["results"] if r["scenario"] == sc and r["policy"] == name), None)
            if r is None or r["routing_cost_usd"] is None or r["slo_attainment"] is None:
                continue
            ax.scatter(r["routing_cost_usd"], r["slo_attainment"], color=cmap(i % 10), label=name)
            pts.append((name, r["routing_cost_usd"], r["slo_attainment"]))
        if pts:
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            xr, yr = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
            for (name, x, y), ly in zip(pts, dodge_labels(xs, ys, xr, yr)):
                moved = ly != y  # a leader line ties a pushed label to its point
                ax.annotate(name, (x, y), xytext=(x + (0.07 if moved else 0.02) * xr, ly),
                            fontsize=7, va="center", color=cmap(names.index(name) % 10) if moved else "black",
                            arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.4"} if moved else None)
            ax.set_xlim(min(xs) - 0.05 * xr, max(xs) + 0.3 * xr)  # room for the labels
            ax.set_ylim(min(ys) - 0.08 * yr, max(ys) + 0.15 * yr)
        ax.set_title(sc)
        ax.set_xlabel("routing cost $ (dynamic energy + busy GPU)")
        ax.set_ylabel("SLO attainment")
        ax.grid(alpha=0.3)
    return _save_panels(plt, fig, axes, len(scen), path)


def plot_normalized_scores(lb: dict, path: Path) -> Path:
    """IQM of the normalized score per policy with its stratified-bootstrap 95% CI."""
    plt = _plt()
    pol = [p for p in lb["policies"] if p["iqm_normalized_score"] is not None]
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(pol), 1) + 1.2))
    if pol:
        y = range(len(pol))
        m = [p["iqm_normalized_score"] for p in pol]
        err = [[v - p["iqm_ci95"][0] for v, p in zip(m, pol)],
               [p["iqm_ci95"][1] - v for v, p in zip(m, pol)]]
        ax.errorbar(m, y, xerr=err, fmt="o", capsize=3)
        ax.set_yticks(list(y), [p["name"] for p in pol])
        ax.invert_yaxis()
        ax.axvline(0, color="gray", lw=0.8)
        ax.axvline(1, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("IQM normalized score (0 = random, 1 = best heuristic), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Learning-curve tags, most wanted first; other eval/ and gridenv/ tags follow.
_TB_TAGS = ("rollout/ep_rew_mean", "eval/mean_reward", "eval/normalized_score",
            "eval/slo_attainment", "eval/goodput_tokens_per_s", "train/entropy_loss")


def _event_runs(logdir: Path) -> list[Path]:
    return sorted({p.parent for p in logdir.rglob("events.out.tfevents*")})


def plot_learning_curves(logdir: str | os.PathLike, path: Path, max_panels: int = 6) -> Path | None:
    """Scalar curves of every TensorBoard run under `logdir`; None (and a warning) if there are none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = Path(logdir)
    curves: dict[str, dict[str, tuple[list, list]]] = {}  # tag -> run -> (steps, values)
    for run in _event_runs(logdir):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        name = str(run.relative_to(logdir)) if run != logdir else run.name
        for tag in acc.Tags().get("scalars", []):
            ev = acc.Scalars(tag)
            curves.setdefault(tag, {})[name] = ([e.step for e in ev], [e.value for e in ev])
    tags = [t for t in _TB_TAGS if t in curves]
    tags += sorted(t for t in curves if t not in tags and t.split("/")[0] in ("eval", "gridenv", "rollout"))
    tags = tags[:max_panels]
    if not tags:
        print(f"warning: no scalar curves found under {logdir}; no learning-curve plot",
              file=sys.stderr)
        return None
    plt = _plt()
    nrows, ncols = _grid(len(tags))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.3 * nrows), squeeze=False)
    runs = sorted({run for tag in tags for run in curves[tag]})
    color = {run: plt.get_cmap("tab10")(i % 10) for i, run in enumerate(runs)}  # same run, same color
    for ax, tag in zip(axes.flat, tags):
        for run, (steps, vals) in sorted(curves[tag].items()):
            ax.plot(steps, vals, label=run, lw=1.2, color=color[run])
        ax.set_title(tag)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=color[r], label=r) for r in runs]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(runs), 3), fontsize=7)
    fig.tight_layout(rect=(0, 0.04 * math.ceil(len(runs) / 3), 1, 1))
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- claims
def claims_report(lb: dict, policies: list[str] | None = None, central: str = "centralized",
                  edge: str = "distributed-edge") -> tuple[str, dict]:
    """Measured RTT, TTFT and efficiency of `central` vs `edge` beside the brief's figures.

    `policies` (default: all in the leaderboard) are the policies reported, each on both.
    Returns the text to print and a JSON-able dict. Efficiency = goodput tokens per $ and per
    kWh (means over seeds); the change is ``edge / centralized - 1``.
    """
    scen = lb["suite"]["scenarios"]
    if central not in scen or edge not in scen:
        raise ValueError(f"the claims report needs scenarios {central!r} and {edge!r}")
    seeds = len(lb["suite"]["seeds"])
    out: dict = {"claims": CLAIMS, "policies": {}}
    text = [f"Claims check: {central} vs {edge}, {seeds} seeds each "
            f"(brief: RTT {CLAIMS['centralized_rtt_ms']:.0f} ms -> {CLAIMS['edge_rtt_ms']:.0f} ms, "
            f"efficiency +{CLAIMS['efficiency_gain_pct']:.0f}%)"]
    rows = [("mean network RTT (ms)", "network_rtt_mean_ms", 1.0, 1),
            ("TTFT p50 (ms)", "ttft_p50_s", 1e3, 1),
            ("goodput tokens per $", "goodput_tokens_per_usd", 1.0, 0),
            ("goodput tokens per kWh", "goodput_tokens_per_kwh", 1.0, 0),
            ("SLO attainment", "slo_attainment", 1.0, 3)]
    brief = {"network_rtt_mean_ms": f"{CLAIMS['centralized_rtt_ms']:.0f} -> {CLAIMS['edge_rtt_ms']:.0f} ms "
                                    f"({CLAIMS['edge_rtt_ms'] / CLAIMS['centralized_rtt_ms'] - 1:+.0%})",
             "goodput_tokens_per_usd": f"+{CLAIMS['efficiency_gain_pct']:.0f}%",
             "goodput_tokens_per_kwh": f"+{CLAIMS['efficiency_gain_pct']:.0f}%"}
    for pol in policies or [p["name"] for p in lb["policies"]]:
        c = next((r for r in lb["results"] if r["policy"] == pol and r["scenario"] == central), None)
        e = next((r for r in lb["results"] if r["policy"] == pol and r["scenario"] == edge), None)
        if c is None or e is None:
            text += ["", f"policy {pol}: no results on both scenarios"]
            continue
        text += ["", f"policy {pol}:",
                 f"  {'':<24}{central:>14}{edge:>18}{'change':>10}   brief"]
        d = {}
        for label, key, scale, digits in rows:
            cv, ev = c[key], e[key]
            change = (ev / cv - 1.0) if cv and ev is not None else None
            d[key] = {central: cv, edge: ev, "change": change}
            text.append(f"  {label:<24}{_f(cv, digits, scale):>14}{_f(ev, digits, scale):>18}"
                        f"{'n/a' if change is None else f'{change:+.1%}':>10}   {brief.get(key, '')}")
        out["policies"][pol] = d
    return "\n".join(text) + "\n", out
