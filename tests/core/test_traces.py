"""Tests for gridenv.core.traces: real Azure files, round trips, malformed input, properties."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridenv.core.traces import (
    Trace,
    TraceError,
    load_azure_csv,
    load_mooncake_jsonl,
    load_trace,
)

SHARED_DIR = Path(__file__).resolve().parents[2].parent / "shared"
AZURE_DIR = SHARED_DIR / "data" / "traces" / "azure_llm_2023"
AZURE_HEADER_LINE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.fixture(scope="module")
def azure_dir() -> Path:
    """The shared Azure trace directory, or skip when this checkout has none."""
    if not (AZURE_DIR / "AzureLLMInferenceTrace_code.csv").is_file():
        pytest.skip(f"Azure LLM 2023 traces not found under {AZURE_DIR} (shared data dir absent)")
    return AZURE_DIR


def _write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def _interarrival_cv(trace: Trace) -> float:
    gaps_s = np.diff(trace.arrival_s)
    return float(gaps_s.std() / gaps_s.mean())


# --------------------------------------------------------------------------------------------
# Real Azure files
# --------------------------------------------------------------------------------------------

# Row counts are data rows. `wc -l` reports one fewer line than the file has, because neither
# file ends with a newline: 8,820 lines (8,819 rows) and 19,367 lines (19,366 rows).
REAL_AZURE_CASES = [
    pytest.param(
        "AzureLLMInferenceTrace_code.csv",
        dict(
            n_rows=8819,
            last_arrival_s=57 * 60 + 15.948056,  # 19:14:19.9280160 - 18:17:03.9799600
            second_arrival_s=0.052,
            first_tokens=(4808, 10),
            last_tokens=(549, 173),
            token_sums=(18_059_974, 245_896),
            cv_range=(5.0, 30.0),  # README/Splitwise: code is very bursty (CV ~13)
        ),
        id="code",
    ),
    pytest.param(
        "AzureLLMInferenceTrace_conv.csv",
        dict(
            n_rows=19366,
            last_arrival_s=58 * 60 + 21.721937,  # 19:14:08.4025270 - 18:15:46.6805900
            second_arrival_s=4.314579,
            first_tokens=(374, 44),
            last_tokens=(197, 183),
            token_sums=(22_361_870, 4_088_665),
            cv_range=(0.5, 3.0),  # close to Poisson (CV ~1)
        ),
        id="conv",
    ),
]


@pytest.mark.parametrize(("file_name", "expected"), REAL_AZURE_CASES)
def test_real_azure_file_loads_end_to_end(azure_dir: Path, file_name: str, expected: dict) -> None:
    trace = load_trace(azure_dir / file_name)

    assert len(trace) == expected["n_rows"]
    assert trace.arrival_s.dtype == np.float64
    assert trace.prompt_tokens.dtype == np.int64 and trace.output_tokens.dtype == np.int64
    assert trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.arrival_s[1] == pytest.approx(expected["second_arrival_s"], abs=1e-9)
    assert trace.duration_s == pytest.approx(expected["last_arrival_s"], abs=1e-6)
    assert 56.0 < trace.duration_s / 60 < 59.0
    assert (int(trace.prompt_tokens[0]), int(trace.output_tokens[0])) == expected["first_tokens"]
    assert (int(trace.prompt_tokens[-1]), int(trace.output_tokens[-1])) == expected["last_tokens"]
    sums = (int(trace.prompt_tokens.sum()), int(trace.output_tokens.sum()))
    assert sums == expected["token_sums"]
    assert trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1
    low, high = expected["cv_range"]
    assert low < _interarrival_cv(trace) < high
    assert trace.hash_ids is None
    assert trace.source == str(azure_dir / file_name)


# --------------------------------------------------------------------------------------------
# Hand-written valid files
# --------------------------------------------------------------------------------------------


def test_azure_out_of_order_rows_are_sorted_stably(tmp_path: Path) -> None:
    text = AZURE_HEADER_LINE + (
        "2023-11-16 18:00:02.0000000,30,3\n"
        "2023-11-16 18:00:00.5000000,10,1\n"
        "2023-11-16 18:00:02.0000000,40,4\n"  # ties with the first row: must stay after it
        "2023-11-16 18:00:01.0000000,20,2\n"
    )
    trace = load_azure_csv(_write(tmp_path, "t.csv", text))
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 0.5, 1.5, 1.5])
    np.testing.assert_array_equal(trace.prompt_tokens, [10, 20, 30, 40])
    np.testing.assert_array_equal(trace.output_tokens, [1, 2, 3, 4])


def test_azure_keeps_sub_microsecond_precision_across_year_boundary(tmp_path: Path) -> None:
    text = AZURE_HEADER_LINE + (
        "2023-12-31 23:59:59.9999999,1,1\n"
        "2024-01-01 00:00:00.0000000,1,1\n"
        "2024-01-01 00:00:00.0000001,1,1\n"
        "2024-03-01 00:00:00,1,1\n"  # 2024 is a leap year; fraction is optional
    )
    trace = load_azure_csv(_write(tmp_path, "t.csv", text))
    expected_s = [0.0, 1e-7, 2e-7, (31 + 29) * 86_400 + 1e-7]  # Jan + leap Feb, then 100 ns
    np.testing.assert_allclose(trace.arrival_s, expected_s, rtol=0, atol=1e-10)


def test_azure_tolerates_crlf_bom_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "\ufeffTIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 18:17:03.9799600,4808,10\r\n"
        "\r\n"
        "2023-11-16 18:17:04.0319600,3180,8\r\n"
        "\r\n"
    )
    trace = load_azure_csv(_write(tmp_path, "t.csv", text))
    assert len(trace) == 2
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.052], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(trace.prompt_tokens, [4808, 3180])


def test_mooncake_round_trip(tmp_path: Path) -> None:
    records = [
        {"timestamp": 1000, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1, 2]},
        {"timestamp": 1000, "input_length": 12, "output_length": 1, "hash_ids": []},
        {"timestamp": 27482, "input_length": 700, "output_length": 9, "hash_ids": [0, 7], "x": 1},
        {"timestamp": 250, "input_length": 5, "output_length": 3, "hash_ids": [46]},
    ]
    lines = [json.dumps(record) for record in records]
    path = _write(tmp_path, "mc.jsonl", lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n  \n")

    trace = load_mooncake_jsonl(path)

    # Stable sort by timestamp: 250, then the two 1000s in file order, then 27482.
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 0.75, 0.75, 27.232])
    np.testing.assert_array_equal(trace.prompt_tokens, [5, 6955, 12, 700])
    np.testing.assert_array_equal(trace.output_tokens, [3, 52, 1, 9])
    assert trace.hash_ids == ((46,), (0, 1, 2), (), (0, 7))
    assert trace.duration_s == pytest.approx(27.232)
    assert trace.source == str(path)


# --------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------

GOOD_AZURE_ROW = "2023-11-16 18:17:03.9799600,4808,10\n"
TS = "2023-11-16 18:17:04.0000000"

BAD_AZURE_CASES = [
    # (id, file text, expected line number, expected field text in message)
    ("bad_header", "TIMESTAMP,Context,GeneratedTokens\n" + GOOD_AZURE_ROW, 1, "header"),
    ("header_too_short", "TIMESTAMP,ContextTokens\n" + GOOD_AZURE_ROW, 1, "header"),
    ("empty_file", "", 1, "header"),
    ("header_only", AZURE_HEADER_LINE, 2, "no data rows"),
    ("garbage_timestamp", "yesterday,5,5\n", 3, "column 'TIMESTAMP'"),
    ("month_13", "2023-13-16 18:17:04.0000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("feb_30", "2023-02-30 18:17:04.0000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("hour_24", "2023-11-16 24:00:00.0000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("minute_60", "2023-11-16 18:60:00.0000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("leap_second", "2023-11-16 23:59:60.0000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("ten_fraction_digits", "2023-11-16 18:17:04.0000000000,5,5\n", 3, "column 'TIMESTAMP'"),
    ("time_zone", "2023-11-16 18:17:04.0000000+00:00,5,5\n", 3, "column 'TIMESTAMP'"),
    ("negative_context", f"{TS},-5,10\n", 3, "column 'ContextTokens'"),
    ("zero_generated", f"{TS},5,0\n", 3, "column 'GeneratedTokens'"),
    ("float_generated", f"{TS},5,12.5\n", 3, "column 'GeneratedTokens'"),
    ("word_context", f"{TS},abc,10\n", 3, "column 'ContextTokens'"),
    ("underscore_context", f"{TS},1_000,10\n", 3, "column 'ContextTokens'"),
    ("empty_generated", f"{TS},5,\n", 3, "column 'GeneratedTokens'"),
    ("too_big", f"{TS},5,{2**63}\n", 3, "column 'GeneratedTokens'"),
    ("missing_column", f"{TS},4808\n", 3, "column 'GeneratedTokens'"),
    ("extra_column", f"{TS},4808,10,7\n", 3, "row"),
    ("csv_syntax", f'"{TS}"x,5,5\n', 3, "row"),
]


@pytest.mark.parametrize(
    ("body", "line_no", "field"),
    [pytest.param(body, line, field, id=cid) for cid, body, line, field in BAD_AZURE_CASES],
)
def test_malformed_azure_raises_trace_error(
    tmp_path: Path, body: str, line_no: int, field: str
) -> None:
    # Cases with a data-row body get the header and one good row in front (data on line 3).
    prefix = "" if line_no <= 2 else AZURE_HEADER_LINE + GOOD_AZURE_ROW
    path = _write(tmp_path, "bad_trace.csv", prefix + body)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"bad_trace.csv line {line_no}: "), message
    assert field in message, message


def test_azure_error_reports_offending_value_and_later_line(tmp_path: Path) -> None:
    body = AZURE_HEADER_LINE + GOOD_AZURE_ROW * 15 + f"{TS},abc,10\n"
    with pytest.raises(TraceError) as info:
        load_azure_csv(_write(tmp_path, "AzureLLMInferenceTrace_code.csv", body))
    assert str(info.value) == (
        "AzureLLMInferenceTrace_code.csv line 17: column 'ContextTokens': "
        "expected a positive integer, got 'abc'"
    )


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    body = (AZURE_HEADER_LINE + GOOD_AZURE_ROW).encode() + b"2023-11-16 18:17:04.0\xff,1,1\n"
    with pytest.raises(TraceError, match=r"^bad\.csv line 3: encoding: "):
        load_azure_csv(_write(tmp_path, "bad.csv", body))


GOOD_MOONCAKE_LINE = (
    '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1, 2]}\n'
)


_DROP = object()  # sentinel: leave this key out of the record


def _mooncake_line(**overrides: object) -> str:
    record: dict[str, object] = {
        "timestamp": 5,
        "input_length": 10,
        "output_length": 2,
        "hash_ids": [3],
    }
    record.update(overrides)
    return json.dumps({key: value for key, value in record.items() if value is not _DROP}) + "\n"

BAD_MOONCAKE_CASES = [
    # (id, text after one good line, expected line number, expected field text in message)
    ("truncated_json", '{"timestamp": 5,\n', 2, "json"),
    ("bad_json_after_blank", '\n{oops}\n', 3, "json"),
    ("not_an_object", "[1, 2, 3]\n", 2, "json"),
    ("missing_output_length", _mooncake_line(output_length=_DROP), 2, "key 'output_length'"),
    ("missing_hash_ids", _mooncake_line(hash_ids=_DROP), 2, "key 'hash_ids'"),
    ("missing_timestamp", _mooncake_line(timestamp=_DROP), 2, "key 'timestamp'"),
    ("negative_input", _mooncake_line(input_length=-3), 2, "key 'input_length'"),
    ("zero_output", _mooncake_line(output_length=0), 2, "key 'output_length'"),
    ("float_timestamp", _mooncake_line(timestamp=1.5), 2, "key 'timestamp'"),
    ("negative_timestamp", _mooncake_line(timestamp=-1), 2, "key 'timestamp'"),
    ("string_input", _mooncake_line(input_length="12"), 2, "key 'input_length'"),
    ("bool_output", _mooncake_line(output_length=True), 2, "key 'output_length'"),
    ("hash_ids_string", _mooncake_line(hash_ids="abc"), 2, "key 'hash_ids'"),
    ("hash_ids_mixed", _mooncake_line(hash_ids=[1, "x"]), 2, "key 'hash_ids'"),
    ("hash_ids_float", _mooncake_line(hash_ids=[1.5]), 2, "key 'hash_ids'"),
    ("timestamp_too_big", _mooncake_line(timestamp=2**63), 2, "key 'timestamp'"),
]


@pytest.mark.parametrize(
    ("body", "line_no", "field"),
    [pytest.param(body, line, field, id=cid) for cid, body, line, field in BAD_MOONCAKE_CASES],
)
def test_malformed_mooncake_raises_trace_error(
    tmp_path: Path, body: str, line_no: int, field: str
) -> None:
    path = _write(tmp_path, "bad_trace.jsonl", GOOD_MOONCAKE_LINE + body)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"bad_trace.jsonl line {line_no}: "), message
    assert field in message, message


@pytest.mark.parametrize("text", ["", "\n\n   \n"], ids=["empty", "blank_lines_only"])
def test_mooncake_without_records_raises(tmp_path: Path, text: str) -> None:
    with pytest.raises(TraceError, match=r"^e\.jsonl line 1: rows: file has no records"):
        load_mooncake_jsonl(_write(tmp_path, "e.jsonl", text))


# --------------------------------------------------------------------------------------------
# Format dispatch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expect_hash_ids"),
    [("a.csv", False), ("A.CSV", False), ("m.jsonl", True), ("m.json", True)],
)
def test_load_trace_picks_format_by_suffix(
    tmp_path: Path, name: str, expect_hash_ids: bool
) -> None:
    text = GOOD_MOONCAKE_LINE if expect_hash_ids else AZURE_HEADER_LINE + GOOD_AZURE_ROW
    trace = load_trace(_write(tmp_path, name, text))
    assert len(trace) == 1
    assert (trace.hash_ids is not None) == expect_hash_ids


def test_load_trace_explicit_fmt_overrides_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path, "trace.txt", GOOD_MOONCAKE_LINE)
    assert load_trace(path, fmt="mooncake").hash_ids == ((1, 2),)
    with pytest.raises(TraceError, match="header"):
        load_trace(path, fmt="azure")


def test_load_trace_unknown_suffix_names_allowed_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "trace.txt", GOOD_MOONCAKE_LINE)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    for word in ("trace.txt", "'.txt'", ".csv", ".jsonl", ".json", "azure", "mooncake"):
        assert word in message, message


def test_load_trace_unknown_fmt_names_allowed_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "trace.csv", AZURE_HEADER_LINE + GOOD_AZURE_ROW)
    with pytest.raises(TraceError, match=r"unknown trace format 'parquet'.*'azure', 'mooncake'"):
        load_trace(path, fmt="parquet")


def test_missing_file_is_os_error_not_trace_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "absent.csv")


# --------------------------------------------------------------------------------------------
# Trace dataclass
# --------------------------------------------------------------------------------------------


def _trace(arrival_s, prompt_tokens, output_tokens, hash_ids=None) -> Trace:
    return Trace(
        arrival_s=np.asarray(arrival_s, dtype=np.float64),
        prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
        output_tokens=np.asarray(output_tokens, dtype=np.int64),
        hash_ids=hash_ids,
        source="<test>",
    )


def test_trace_len_duration_and_read_only_views() -> None:
    arrival_s = np.array([0.0, 1.0, 2.5])
    trace = Trace(
        arrival_s=arrival_s,
        prompt_tokens=np.array([1, 2, 3], dtype=np.int64),
        output_tokens=np.array([4, 5, 6], dtype=np.int64),
        hash_ids=None,
        source="<test>",
    )
    assert len(trace) == 3
    assert trace.duration_s == 2.5
    with pytest.raises(ValueError):
        trace.arrival_s[0] = 1.0
    arrival_s[1] = 1.5  # the caller's own array stays writable
    assert _trace([], [], []).duration_s == 0.0
    assert len(_trace([], [], [])) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(arrival_s=[0.0, 2.0, 1.0], prompt_tokens=[1, 1, 1], output_tokens=[1, 1, 1]),
        dict(arrival_s=[1.0, 2.0], prompt_tokens=[1, 1], output_tokens=[1, 1]),
        dict(arrival_s=[0.0, 1.0], prompt_tokens=[1, 0], output_tokens=[1, 1]),
        dict(arrival_s=[0.0, 1.0], prompt_tokens=[1, 1], output_tokens=[1]),
        dict(arrival_s=[0.0], prompt_tokens=[1], output_tokens=[1], hash_ids=((1,), (2,))),
    ],
    ids=["decreasing", "not_from_zero", "zero_tokens", "length_mismatch", "hash_ids_length"],
)
def test_trace_rejects_broken_invariants(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        _trace(**kwargs)


def test_trace_rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="prompt_tokens"):
        Trace(
            arrival_s=np.zeros(1),
            prompt_tokens=np.ones(1),  # float64, not int64
            output_tokens=np.ones(1, dtype=np.int64),
            hash_ids=None,
            source="<test>",
        )


# --------------------------------------------------------------------------------------------
# Properties: random valid rows parse back to the same numbers
# --------------------------------------------------------------------------------------------

_TOKENS = st.integers(min_value=1, max_value=2**40)
_TEN_DAYS_S = 10 * 86_400


@st.composite
def _azure_rows(draw):
    """(fraction digits, base datetime, rows of (offset in fraction units, ctx, gen))."""
    n_digits = draw(st.integers(min_value=1, max_value=9))
    base = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
    offset_units = st.integers(min_value=0, max_value=_TEN_DAYS_S * 10**n_digits)
    rows = draw(st.lists(st.tuples(offset_units, _TOKENS, _TOKENS), min_size=1, max_size=40))
    return n_digits, base.replace(microsecond=0), rows


def _azure_timestamp(base: datetime, offset_units: int, n_digits: int) -> str:
    whole_s, fraction = divmod(offset_units, 10**n_digits)
    stamp = base + timedelta(seconds=whole_s)
    return f"{stamp:%Y-%m-%d %H:%M:%S}.{fraction:0{n_digits}d}"


@settings(max_examples=60, deadline=None)
@given(_azure_rows())
def test_property_azure_rows_round_trip(case) -> None:
    n_digits, base, rows = case
    lines = [f"{_azure_timestamp(base, off, n_digits)},{ctx},{gen}" for off, ctx, gen in rows]
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # Python's sort is stable
    first_units = rows[order[0]][0]
    with tempfile.TemporaryDirectory() as tmp:
        trace = load_azure_csv(_write(Path(tmp), "p.csv", AZURE_HEADER_LINE + "\n".join(lines)))
    expected_s = [(rows[i][0] - first_units) / 10**n_digits for i in order]
    np.testing.assert_allclose(trace.arrival_s, expected_s, rtol=0, atol=1e-9)
    assert trace.prompt_tokens.tolist() == [rows[i][1] for i in order]
    assert trace.output_tokens.tolist() == [rows[i][2] for i in order]


_MOONCAKE_RECORD = st.fixed_dictionaries(
    {
        "timestamp": st.integers(min_value=0, max_value=2**45),
        "input_length": _TOKENS,
        "output_length": _TOKENS,
        "hash_ids": st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=6),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_MOONCAKE_RECORD, st.booleans()), min_size=1, max_size=40))
def test_property_mooncake_records_round_trip(records_and_blanks) -> None:
    records = [record for record, _ in records_and_blanks]
    text = "".join(
        json.dumps(record) + "\n" + ("\n" if blank_after else "")
        for record, blank_after in records_and_blanks
    )
    order = sorted(range(len(records)), key=lambda i: records[i]["timestamp"])
    first_ms = records[order[0]]["timestamp"]
    with tempfile.TemporaryDirectory() as tmp:
        trace = load_mooncake_jsonl(_write(Path(tmp), "p.jsonl", text))
    expected_s = [(records[i]["timestamp"] - first_ms) / 1000.0 for i in order]
    np.testing.assert_array_equal(trace.arrival_s, expected_s)
    assert trace.prompt_tokens.tolist() == [records[i]["input_length"] for i in order]
    assert trace.output_tokens.tolist() == [records[i]["output_length"] for i in order]
    assert trace.hash_ids == tuple(tuple(records[i]["hash_ids"]) for i in order)
