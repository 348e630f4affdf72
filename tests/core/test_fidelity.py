"""The fidelity package: measured-benchmark data, the replay harness and its command.

``gridenv/fidelity/benchmarks.yaml`` holds public vLLM serving benchmarks (cited per row);
``python -m gridenv.fidelity`` replays them through the engine. These tests check the data file
and its fit / held-out split, that the harness measures what the engine does (a one-request
replay against the perf model's closed form), and that the fitted stack still reproduces
measured rows, light-load ones, within the issue's targets.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import pytest
import yaml

from gridenv.core.perf import SOFTWARE_STACKS, software_stack
from gridenv.fidelity import fit as fit_mod
from gridenv.fidelity.__main__ import main
from gridenv.fidelity.data import BENCHMARKS_PATH, BenchmarkFile, load_benchmarks
from gridenv.fidelity.replay import replay_row, replica_perf
from gridenv.fidelity.report import TOLERANCES, compare_row

FITTED_STACK = "vllm-0.6"


@pytest.fixture(scope="module")
def bench() -> BenchmarkFile:
    return load_benchmarks()


def _raw() -> dict:
    return yaml.safe_load(BENCHMARKS_PATH.read_text())


# ---------------------------------------------------------------------------------------- data
def test_data_file_validates_and_spans_the_space(bench):
    rows = bench.rows
    assert len(rows) >= 12
    assert {r.model for r in rows} >= {"llama-3-8b", "llama-3-70b"}
    assert {r.gpu for r in rows} >= {"A100", "H100"}
    assert {r.tp for r in rows} >= {1, 4, 8}
    assert {r.load for r in rows} == {"light", "moderate", "saturated"}
    for r in rows:
        assert r.source in bench.sources and len(r.commit) == 40
        prompts, outputs = bench.lengths(r)
        assert len(prompts) == len(outputs) == r.workload.n_requests
    # Both uses cover light and saturated load, for each stack with held-out rows.
    for stack in {r.stack for r in rows}:
        for use in ("fit", "holdout"):
            assert {r.load for r in rows if r.use == use and r.stack == stack} >= {"light", "saturated"}, stack


def test_workload_lengths_match_the_cited_totals(bench):
    """The transcribed per-request lengths add up to the totals the result files report."""
    w8 = bench.workloads["sharegpt-llama3-8b-320"]
    assert sum(w8.input_tokens) == 65578 and sum(w8.output_tokens) == 65331
    assert sum(bench.workloads["sharegpt-llama3-70b-320"].output_tokens) == 56543
    for r in bench.rows:
        if not bench.workloads[r.workload.name].per_request:
            continue  # drawn from quantiles (test_lengths_drawn_from_quantiles_keep_them)
        _, outputs = bench.lengths(r)
        if r.workload.output_tokens is not None:
            # a run's own lengths (10-request rows, the surajssd runs) add up exactly
            assert sum(outputs) == r.measured.output_tokens, r.id
        elif r.measured.output_tokens is not None:
            # the shared 320-request list within 2%
            assert sum(outputs) == pytest.approx(r.measured.output_tokens, rel=0.02), r.id


def test_measured_figures_are_consistent_with_each_other(bench):
    """A transcription check: each row's throughputs equal its token and request counts over
    its duration, as benchmark_serving computes them (to the rounding kept in the file)."""
    for r in bench.rows:
        m = r.measured
        if m.duration_s is None or m.output_tokens is None:
            continue
        assert m.output_throughput_tps == pytest.approx(m.output_tokens / m.duration_s, rel=2e-3), r.id
        assert m.request_throughput_rps == pytest.approx(r.workload.n_requests / m.duration_s,
                                                         rel=2e-3), r.id
        assert m.ttft_mean_ms < 60e3 and m.tpot_median_ms <= m.tpot_mean_ms * 1.05, r.id


def test_split_is_disjoint_and_follows_the_stated_rule(bench):
    fit = {r.id for r in bench.rows if r.use == "fit"}
    hold = {r.id for r in bench.rows if r.use == "holdout"}
    assert fit and hold and not fit & hold
    assert fit | hold == {r.id for r in bench.rows}
    # The rule in the file header: TP2 and TP8 rows and the whole second source are held out.
    for r in bench.rows:
        expected = "holdout" if (r.tp in (2, 8) or r.source == "surajssd-llm-k8s") else "fit"
        assert r.use == expected, r.id
    # Every V1 row (vLLM 0.8+) belongs to the V1 stack, the rest to vllm-0.6, and each stack
    # with held-out rows has fit rows of its own.
    for r in bench.rows:
        v1 = r.source in ("surajssd-llm-k8s", "inference-perf-kubecon-2025")
        assert r.stack == ("vllm-v1-2025" if v1 else "vllm-0.6"), r.id
    for stack in {r.stack for r in bench.rows}:
        assert any(r.use == "fit" for r in bench.rows if r.stack == stack), stack


@pytest.mark.parametrize("path, value, match", [
    (("rows", 0, "gpu"), "B200", "unknown gpu 'B200'"),
    (("rows", 0, "use"), "train", "use"),
    (("rows", 0, "workload", "name"), "nope", "unknown workload 'nope'"),
    (("rows", 1, "id"), "lambda-h100-8b-tp1-n10", "duplicate row ids"),
    (("rows", 0, "not_comparable"), {"ttft_p90_ms": "x"}, "unknown metrics"),
    (("rows", 0, "stack"), "vllm-9", "unknown stack 'vllm-9'"),
    (("rows", 0, "workload", "arrival"), "constant", "arrival 'constant' needs duration_s"),
    (("workloads", "kubecon-8b-b128-stage0", "input_quantiles", "p5"), 500, "non-decreasing"),
    (("workloads", "kubecon-8b-b128-stage0", "output_quantiles", "p5"), float("nan"), "finite"),
    (("workloads", "kubecon-8b-b128-stage0", "output_tokens"), [1, 2], "not a mix"),
    # a row's own output lengths: -1 was replayed (negative throughput, NaN TPOT in the table)
    (("rows", 0, "workload", "output_tokens"), [-1] * 10, "rows.0.workload: output lengths must be >= 0, got -1"),
])
def test_bad_data_is_rejected_with_a_clear_error(tmp_path, path, value, match):
    raw = _raw()
    node = raw
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=match) as err:
        load_benchmarks(p)
    assert "\n" not in str(err.value) and str(p) in str(err.value)  # one line (was pydantic's dump)


def test_unreadable_benchmark_files_are_one_clear_line(tmp_path):
    """python -m gridenv.fidelity --benchmarks FILE printed 'gridenv.fidelity: utf-8' for a
    binary file, and pydantic's multi-line dump (with its URLs) for a wrong structure."""
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe\n")
    listed = tmp_path / "l.yaml"
    listed.write_text("- 1\n- 2\n")
    for p, fragment in ((binary, "line 2: not UTF-8"), (listed, "(top level): Input should be a valid dictionary")):
        with pytest.raises(ValueError) as err:
            load_benchmarks(p)
        msg = str(err.value)
        assert "\n" not in msg and f"{p}" in msg and fragment in msg, msg


# -------------------------------------------------------------------------------------- replay
def _one_request_file(bench, prompt: int, output: int, steps: int) -> tuple[BenchmarkFile, object]:
    raw = _raw()
    raw["workloads"]["one"] = dict(raw["workloads"]["sharegpt-llama3-8b-320"],
                                   input_tokens=[prompt], output_tokens=[output])
    row = dict(raw["rows"][0], id="one", workload={"name": "one", "n_requests": 1,
                                                   "arrival": "burst"})
    row["server"] = dict(row["server"], num_scheduler_steps=steps)
    raw["rows"] = [row]
    b = BenchmarkFile.model_validate(raw)
    return b, b.rows[0]


def test_replay_measures_what_the_engine_does(bench):
    """One request alone: TTFT is the API-server time plus one prefill iteration, TPOT the
    mean decode step of the perf model's closed form."""
    prompt, output = 500, 101
    b, row = _one_request_file(bench, prompt, output, steps=1)
    stack = software_stack(FITTED_STACK)
    perf = replica_perf(row, stack)
    sim = replay_row(b, row, stack)
    ttft = stack["c_admit_s"] + perf.prefill_time_s(prompt)
    assert sim.metrics["ttft_median_ms"] == pytest.approx(1e3 * ttft, rel=1e-9)
    decode_s, _ = perf.decode_segment(1, prompt + 1, output - 1)
    assert sim.metrics["tpot_median_ms"] == pytest.approx(1e3 * decode_s / (output - 1), rel=1e-9)
    assert sim.metrics["output_throughput_tps"] == pytest.approx(output / (ttft + decode_s), rel=1e-9)


def test_multi_step_delivers_tokens_in_chunks(bench):
    """With 10 steps per scheduling round a 3-token answer waits for its whole chunk: its TPOT
    is 10 steps over 2 tokens."""
    single = replay_row(*_one_request_file(bench, 200, 3, steps=1), FITTED_STACK)
    multi = replay_row(*_one_request_file(bench, 200, 3, steps=10), FITTED_STACK)
    assert multi.metrics["tpot_median_ms"] == pytest.approx(5 * single.metrics["tpot_median_ms"], rel=1e-9)
    assert multi.metrics["ttft_median_ms"] == single.metrics["ttft_median_ms"]


def test_empty_completions_count_with_ttft_zero_as_the_benchmark_does(bench):
    row = bench.by_id["lambda-h100-70b-tp4-n10"]
    _, outputs = bench.lengths(row)
    assert outputs.count(0) == 2
    sim = replay_row(bench, row, FITTED_STACK)
    # 8 of 10 requests streamed text: the mean is 8/10 of the mean over those.
    assert sim.metrics["ttft_mean_ms"] < sim.metrics["ttft_median_ms"]


# ------------------------------------------------------------------------- fidelity (accuracy)
@pytest.mark.parametrize("row_id", [
    "lambda-h100-70b-tp4-n10",
    # Held out; its TTFT is 15.0% (median) / 15.1% (mean) low: the H100 TP8 prefill is slower
    # than the model's GEMM + all-reduce terms give (README: Fidelity under load).
    pytest.param("lambda-h100-70b-tp8-n10", marks=pytest.mark.xfail(
        strict=True, reason="held-out TTFT mean -15.1% (documented)")),
    "lambda-a100-70b-tp8-n10",
])
def test_light_load_rows_within_target(bench, row_id):
    """A fit row and held-out rows at light load stay within the issue's targets on every
    metric: a change of the perf model that moves decode or prefill time by more than that
    fails here."""
    res = compare_row(bench, bench.by_id[row_id], FITTED_STACK)
    for m in TOLERANCES:
        assert abs(res["metrics"][m]["error"]) <= TOLERANCES[m], (m, res["metrics"][m])


def test_saturated_rows_within_target_for_throughput(bench):
    """Saturated throughput within 10%: the Lambda fit rows and held-out TP8 / TP2 rows."""
    for rid in ("lambda-a100-8b-tp1-n320", "lambda-h100-8b-tp4-n320", "lambda-h100-8b-tp1-n320",
                "lambda-h100-70b-tp4-n320", "lambda-a100-70b-tp4-n320", "lambda-h100-70b-tp8-n320",
                "lambda-a100-70b-tp8-n320", "lambda-h100-8b-tp2-n320"):
        res = compare_row(bench, bench.by_id[rid], FITTED_STACK)
        assert abs(res["metrics"]["output_throughput_tps"]["error"]) <= 0.10, rid


def test_old_stacks_unchanged():
    """The fitted stack is new; the existing profiles keep their exact values."""
    assert SOFTWARE_STACKS["vllm-2024"] == {"c_iter_s": 1e-3, "c_per_seq_s": 4.4e-6}
    assert "c_admit_s" not in SOFTWARE_STACKS["splitwise-2023"]


# ------------------------------------------------------------------------------------ commands
def test_command_json_on_a_subset():
    ids = ["lambda-h100-8b-tp1-n10", "lambda-h100-70b-tp8-n320"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["--json", "--stack", FITTED_STACK, "--rows", *ids]) == 0
    out = json.loads(buf.getvalue())
    assert [r["id"] for r in out["rows"]] == ids
    assert set(out["summary"]) == {"fit", "holdout"}
    for r in out["rows"]:
        for m, c in r["metrics"].items():
            assert math.isfinite(c["simulated"]) and c["measured"] > 0, (r["id"], m)


def test_command_rejects_unknown_rows_and_stacks(capsys):
    assert main(["--rows", "no-such-row"]) == 2
    assert "unknown row ids ['no-such-row']" in capsys.readouterr().err
    assert main(["--stack", "nope"]) == 2
    assert "unknown software_stack 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("stack, hosts", [("vllm-0.6", {"lambda-a100"}), ("vllm-v1-2025", set())])
def test_fit_objective_reads_fit_rows_only(monkeypatch, stack, hosts):
    seen = []
    real = fit_mod.replay_row

    def spy(bench, row, stack_, **kw):
        seen.append((row.use, row.stack))
        return real(bench, row, stack_, **kw)

    class _Res:
        def __init__(self, x):
            self.x, self.cost = x, 0.0

    def one_eval(fun, x0, **kw):
        fun(x0)
        return _Res(x0)

    import scipy.optimize
    monkeypatch.setattr(fit_mod, "replay_row", spy)
    monkeypatch.setattr(scipy.optimize, "least_squares", one_eval)
    fitted, scales, _ = fit_mod.fit_stack(stack=stack)
    # only the stack's own fit rows: never a held-out row, never another stack's row
    assert seen and set(seen) == {("fit", stack)}
    params, fixed = fit_mod.STACK_FITS[stack]
    assert set(fitted) == {p[0] for p in params} | set(fixed)
    # one CPU scale per host with fit rows other than the stack's reference host (vllm-0.6:
    # the A100 machine; vllm-v1-2025: all its fit rows are on one host, its reference)
    assert set(scales) == hosts


def test_fit_refuses_a_stack_without_fit_rows_or_definition(capsys):
    with pytest.raises(ValueError, match="no fit is defined for stack 'vllm-2024'"):
        fit_mod.fit_stack(stack="vllm-2024")
    assert fit_mod.main(["--stack", "splitwise-2023"]) == 2
    assert "no fit is defined for stack 'splitwise-2023'" in capsys.readouterr().err
