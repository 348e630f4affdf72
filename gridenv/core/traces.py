"""Request-trace replay: parse public LLM-serving traces into arrays.

Two formats are supported:

* **Azure LLM inference 2023** (``AzureLLMInferenceTrace_{code,conv}.csv``): a CSV with the
  header ``TIMESTAMP,ContextTokens,GeneratedTokens`` and timestamps such as
  ``2023-11-16 18:17:03.9799600`` (7 fractional digits, no time zone).
* **Mooncake** (JSONL): one JSON object per line with ``timestamp`` (integer milliseconds),
  ``input_length``, ``output_length`` and ``hash_ids`` (prefix-block hashes). Blank lines are
  skipped; keys other than these four are ignored; a key given twice in one record is an error
  (not "last one wins").

Rules shared by both loaders:

* Token counts must be integers >= 1. The two published Azure files contain no zero counts
  (minimum ContextTokens 2, GeneratedTokens 6), so nothing is clamped: a count < 1 is a
  :class:`TraceError`, as is any other malformed value. Messages name the file, the 1-based
  line number and the column or key at fault.
* Timestamps must be non-negative integers (Mooncake ms) or ``YYYY-MM-DD HH:MM:SS.fffffff``
  (Azure); JSON ``NaN``/``Infinity``, fractions, booleans and negative values are a
  :class:`TraceError`, so every arrival time and length is finite.
* Requests are ordered by arrival with a *stable* sort (rows with equal timestamps keep their
  file order): unsorted files are accepted and sorted, not refused. No row is ever dropped.
  The published Azure files are already in order. Looping is defined in
  :mod:`gridenv.core.workload` (any timestamps, including a single row, loop with a finite
  period).
* Arrival times are seconds since the earliest request, so ``arrival_s[0] == 0.0``.
  Azure timestamps are parsed with integer arithmetic (whole seconds + nanoseconds), so the
  100 ns resolution of the files survives into the float64 offsets.
* A missing or unreadable file raises the usual :class:`OSError`, not :class:`TraceError`.

Only the standard library and numpy are used.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import date
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np

from gridenv.core.strict_yaml import DuplicateKeyError, unique_keys

__all__ = [
    "TraceError",
    "Trace",
    "load_azure_csv",
    "load_mooncake_jsonl",
    "load_trace",
    "AZURE_HEADER",
    "MOONCAKE_KEYS",
    "TRACE_FORMATS",
    "MOONCAKE_BLOCK_TOKENS",
    "suffix_format",
]

PathArg = Union[str, "PathLike[str]"]

#: Exact header of the Azure LLM inference 2023 CSV files.
AZURE_HEADER: tuple[str, str, str] = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
#: Keys every Mooncake JSONL record must carry.
MOONCAKE_KEYS: tuple[str, ...] = ("timestamp", "input_length", "output_length", "hash_ids")
#: ``fmt`` values accepted by :func:`load_trace`, and the file suffixes that select each one.
TRACE_FORMATS: dict[str, tuple[str, ...]] = {"azure": (".csv",), "mooncake": (".jsonl", ".json")}
#: Tokens per block named by one of a Mooncake record's ``hash_ids``.
MOONCAKE_BLOCK_TOKENS = 512

_INT64_MAX = int(np.iinfo(np.int64).max)
_SECONDS_PER_DAY = 86_400
_NS_PER_S = 1_000_000_000
_MS_PER_S = 1_000.0
_AZURE_TIMESTAMP_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
)


class TraceError(ValueError):
    """Malformed trace file; message names file, line number and the column/field at fault."""


@dataclass(frozen=True, eq=False)
class Trace:
    """A replayable request trace, one entry per request, ordered by arrival.

    The arrays are stored as read-only views on construction, so a ``Trace`` can be shared
    safely. Construction checks the invariants below and raises ValueError if one fails.
    """

    arrival_s: np.ndarray  # float64, seconds since the first request (first is 0.0), non-decreasing
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    hash_ids: tuple[tuple[int, ...], ...] | None  # Mooncake prefix-block hashes, None for Azure
    source: str  # path it was read from

    def __post_init__(self) -> None:
        for name, dtype in (
            ("arrival_s", np.float64),
            ("prompt_tokens", np.int64),
            ("output_tokens", np.int64),
        ):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
                raise ValueError(f"Trace.{name} must be a 1-D {np.dtype(dtype).name} array")
            read_only = array.view()  # a view, so the caller's own array stays writable
            read_only.setflags(write=False)
            object.__setattr__(self, name, read_only)
        _check_trace_invariants(self)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival (0.0 for fewer than two requests)."""
        return float(self.arrival_s[-1]) if len(self) else 0.0


def _check_trace_invariants(trace: Trace) -> None:
    """Raise ValueError unless the arrays agree in length and obey the documented ranges."""
    n_requests = trace.arrival_s.shape[0]
    if trace.prompt_tokens.shape[0] != n_requests or trace.output_tokens.shape[0] != n_requests:
        raise ValueError("Trace arrays must all have the same length")
    if trace.hash_ids is not None and len(trace.hash_ids) != n_requests:
        raise ValueError("Trace.hash_ids must have one entry per request")
    if n_requests == 0:
        return
    if trace.arrival_s[0] != 0.0 or np.any(np.diff(trace.arrival_s) < 0):
        raise ValueError("Trace.arrival_s must start at 0.0 and be non-decreasing")
    if trace.prompt_tokens.min() < 1 or trace.output_tokens.min() < 1:
        raise ValueError("Trace token counts must be >= 1")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _fail(file_name: str, line_no: int, field: str, problem: str) -> TraceError:
    """Build the uniform error: ``<file> line <n>: <field>: <problem>``."""
    return TraceError(f"{file_name} line {line_no}: {field}: {problem}")


def _read_text(path: Path) -> str:
    """Read a UTF-8 file (a leading BOM is dropped); a decode error names its line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise _fail(path.name, line_no, "encoding", f"not valid UTF-8 ({exc.reason})") from None


def _stable_order(*keys_last_primary: np.ndarray) -> np.ndarray:
    """Indices that sort requests by the keys (last key primary), ties kept in file order."""
    return np.lexsort(keys_last_primary)  # np.lexsort is a stable sort


# --------------------------------------------------------------------------------------------
# Azure CSV
# --------------------------------------------------------------------------------------------


def _parse_count_field(text: str, file_name: str, line_no: int, column: str) -> int:
    """Parse a token count written as plain ASCII digits; it must be >= 1."""
    field = f"column {column!r}"
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise _fail(file_name, line_no, field, f"expected a positive integer, got {text!r}")
    value = int(digits)
    if value < 1:
        raise _fail(file_name, line_no, field, f"expected a positive integer (>= 1), got {text!r}")
    if value > _INT64_MAX:
        raise _fail(file_name, line_no, field, f"value {text!r} does not fit in int64")
    return value


class _AzureTimestampParser:
    """Turn ``YYYY-MM-DD HH:MM:SS[.fffffffff]`` into (whole seconds, nanoseconds).

    Whole seconds count from 0001-01-01 (proleptic Gregorian). The date part is validated by
    :class:`datetime.date` once per distinct date string and cached; time and fraction are
    parsed with integer arithmetic, so up to 9 fractional digits are kept exactly. Leap
    seconds (``:60``) and time-zone suffixes are rejected.
    """

    def __init__(self, file_name: str) -> None:
        self._file_name = file_name
        self._day_start_s: dict[str, int] = {}

    def __call__(self, text: str, line_no: int) -> tuple[int, int]:
        match = _AZURE_TIMESTAMP_RE.fullmatch(text.strip())
        if match is None:
            raise self._bad(text, line_no, "expected 'YYYY-MM-DD HH:MM:SS.fffffff'")
        date_text, hour, minute, second, fraction = match.groups()
        hour_i, minute_i, second_i = int(hour), int(minute), int(second)
        if hour_i > 23 or minute_i > 59 or second_i > 59:
            raise self._bad(text, line_no, "time of day out of range")
        time_of_day_s = hour_i * 3600 + minute_i * 60 + second_i
        whole_s = self._day_start(date_text, text, line_no) + time_of_day_s
        frac_ns = int(fraction.ljust(9, "0")) if fraction else 0
        return whole_s, frac_ns

    def _day_start(self, date_text: str, text: str, line_no: int) -> int:
        day_start_s = self._day_start_s.get(date_text)
        if day_start_s is None:
            try:
                day_start_s = date.fromisoformat(date_text).toordinal() * _SECONDS_PER_DAY
            except ValueError as exc:
                raise self._bad(text, line_no, f"invalid date ({exc})") from None
            self._day_start_s[date_text] = day_start_s
        return day_start_s

    def _bad(self, text: str, line_no: int, problem: str) -> TraceError:
        field = f"column {AZURE_HEADER[0]!r}"
        return _fail(self._file_name, line_no, field, f"{problem}, got {text!r}")


def _check_azure_header(row: list[str] | None, file_name: str) -> None:
    """The first line must be exactly the Azure header."""
    expected = ",".join(AZURE_HEADER)
    if row is None:
        raise _fail(file_name, 1, "header", f"file is empty, expected {expected!r}")
    if tuple(cell.strip() for cell in row) != AZURE_HEADER:
        raise _fail(file_name, 1, "header", f"expected {expected!r}, got {','.join(row)!r}")


def _check_azure_row_width(row: list[str], file_name: str, line_no: int) -> None:
    """A data row must have exactly the three header columns."""
    n_columns = len(AZURE_HEADER)
    if len(row) < n_columns:
        field = f"column {AZURE_HEADER[len(row)]!r}"
        problem = f"missing (row has {len(row)} of {n_columns} columns)"
        raise _fail(file_name, line_no, field, problem)
    if len(row) > n_columns:
        raise _fail(file_name, line_no, "row", f"expected {n_columns} columns, got {len(row)}")


def load_azure_csv(path: PathArg) -> Trace:
    """Load an Azure LLM inference 2023 CSV trace.

    Blank lines are skipped. Rows are ordered by timestamp with a stable sort (the published
    files are already ordered). Raises :class:`TraceError` on any malformed line and when the
    file has no data rows.
    """
    path = Path(path)
    file_name = path.name
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    parse_timestamp = _AzureTimestampParser(file_name)
    whole_s: list[int] = []
    frac_ns: list[int] = []
    prompt_tokens: list[int] = []
    output_tokens: list[int] = []
    try:
        _check_azure_header(next(reader, None), file_name)
        for row in reader:
            line_no = reader.line_num
            if not row:
                continue
            _check_azure_row_width(row, file_name, line_no)
            seconds, nanos = parse_timestamp(row[0], line_no)
            whole_s.append(seconds)
            frac_ns.append(nanos)
            prompt_tokens.append(_parse_count_field(row[1], file_name, line_no, AZURE_HEADER[1]))
            output_tokens.append(_parse_count_field(row[2], file_name, line_no, AZURE_HEADER[2]))
    except csv.Error as exc:
        raise _fail(file_name, reader.line_num, "row", f"CSV syntax error ({exc})") from None
    if not whole_s:
        raise _fail(file_name, reader.line_num + 1, "rows", "file has a header but no data rows")
    return _azure_trace(whole_s, frac_ns, prompt_tokens, output_tokens, str(path))


def _azure_trace(
    whole_s: list[int],
    frac_ns: list[int],
    prompt_tokens: list[int],
    output_tokens: list[int],
    source: str,
) -> Trace:
    """Sort parsed Azure rows by time and convert to seconds since the first request."""
    whole_arr = np.asarray(whole_s, dtype=np.int64)
    frac_arr = np.asarray(frac_ns, dtype=np.int64)
    order = _stable_order(frac_arr, whole_arr)
    whole_arr, frac_arr = whole_arr[order], frac_arr[order]
    # Subtract in integers first: absolute seconds (~6e10) would cost float64 ~1e-5 s.
    arrival_s = (whole_arr - whole_arr[0]).astype(np.float64)
    arrival_s += (frac_arr - frac_arr[0]) / _NS_PER_S
    return Trace(
        arrival_s=arrival_s,
        prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64)[order],
        output_tokens=np.asarray(output_tokens, dtype=np.int64)[order],
        hash_ids=None,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Mooncake JSONL
# --------------------------------------------------------------------------------------------


def _is_json_int(value: Any) -> bool:
    """True for JSON integers (``bool`` is an ``int`` subclass in Python, but not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _json_int(record: dict[str, Any], key: str, minimum: int, file_name: str, line_no: int) -> int:
    """Fetch ``record[key]`` and check it is an integer in ``[minimum, int64 max]``."""
    value = record[key]
    if not _is_json_int(value) or not minimum <= value <= _INT64_MAX:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        problem = f"expected {kind}, got {json.dumps(value)[:80]}"
        raise _fail(file_name, line_no, f"key {key!r}", problem)
    return value


def _json_hash_ids(record: dict[str, Any], file_name: str, line_no: int) -> tuple[int, ...]:
    """Fetch ``record['hash_ids']``: a list of non-negative integers (may be empty)."""
    value = record["hash_ids"]
    if not isinstance(value, list) or not all(
        _is_json_int(h) and 0 <= h <= _INT64_MAX for h in value
    ):
        problem = f"expected a list of non-negative integers, got {json.dumps(value)[:80]}"
        raise _fail(file_name, line_no, "key 'hash_ids'", problem)
    return tuple(value)


def _parse_mooncake_line(
    line: str, file_name: str, line_no: int
) -> tuple[int, int, int, tuple[int, ...]]:
    """Parse one non-blank JSONL line into (timestamp_ms, input, output, hash_ids)."""
    try:
        record = json.loads(line, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
        raise _fail(file_name, line_no, "json", problem) from None
    except DuplicateKeyError as exc:
        raise _fail(file_name, line_no, f"key {exc.key!r}", "given twice in one record") from None
    if not isinstance(record, dict):
        raise _fail(file_name, line_no, "json", f"expected an object, got {type(record).__name__}")
    missing = [key for key in MOONCAKE_KEYS if key not in record]
    if missing:
        raise _fail(file_name, line_no, f"key {missing[0]!r}", "missing")
    return (
        _json_int(record, "timestamp", 0, file_name, line_no),
        _json_int(record, "input_length", 1, file_name, line_no),
        _json_int(record, "output_length", 1, file_name, line_no),
        _json_hash_ids(record, file_name, line_no),
    )


def load_mooncake_jsonl(path: PathArg) -> Trace:
    """Load a Mooncake JSONL trace (``timestamp`` in integer ms).

    Blank (whitespace-only) lines are skipped. Requests are ordered by timestamp with a stable
    sort; ``hash_ids`` follow their requests. Raises :class:`TraceError` on any malformed line
    and when the file has no records.
    """
    path = Path(path)
    file_name = path.name
    rows = [
        _parse_mooncake_line(line, file_name, line_no)
        for line_no, line in enumerate(_read_text(path).split("\n"), start=1)
        if line.strip()
    ]
    if not rows:
        raise _fail(file_name, 1, "rows", "file has no records")
    timestamp_ms = np.asarray([row[0] for row in rows], dtype=np.int64)
    order = _stable_order(timestamp_ms)
    timestamp_ms = timestamp_ms[order]
    return Trace(
        arrival_s=(timestamp_ms - timestamp_ms[0]) / _MS_PER_S,
        prompt_tokens=np.asarray([row[1] for row in rows], dtype=np.int64)[order],
        output_tokens=np.asarray([row[2] for row in rows], dtype=np.int64)[order],
        hash_ids=tuple(rows[i][3] for i in order),
        source=str(path),
    )


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def suffix_format(path: PathArg) -> str | None:
    """The trace format a file's suffix selects (case-insensitive, TRACE_FORMATS), or None."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, suffixes in TRACE_FORMATS.items() if suffix in suffixes), None)


def _format_for_suffix(path: Path) -> str:
    """Pick the trace format from the file suffix; TraceError naming the allowed ones."""
    fmt = suffix_format(path)
    if fmt is not None:
        return fmt
    suffix = path.suffix.lower()
    allowed = ", ".join(f"{s} ({fmt})" for fmt, sfx in TRACE_FORMATS.items() for s in sfx)
    raise TraceError(
        f"{path.name}: cannot tell the trace format from suffix {suffix!r}; "
        f"use one of {allowed}, or pass fmt"
    )


def load_trace(path: PathArg, fmt: str | None = None) -> Trace:
    """Load a trace; ``fmt`` is ``"azure"`` or ``"mooncake"``, or None to decide by suffix.

    Suffixes: ``.csv`` -> azure, ``.jsonl``/``.json`` -> mooncake.
    """
    path = Path(path)
    if fmt is None:
        fmt = _format_for_suffix(path)
    if fmt == "azure":
        return load_azure_csv(path)
    if fmt == "mooncake":
        return load_mooncake_jsonl(path)
    allowed = ", ".join(map(repr, TRACE_FORMATS))
    raise TraceError(f"{path.name}: unknown trace format {fmt!r}; expected one of {allowed}")
