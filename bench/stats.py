"""Percentiles and the tallies every latency run reports."""

from __future__ import annotations

import math


def percentile(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(us: float) -> float:
    return us / 1000


def latency_summary(latencies_us: list[int]) -> dict:
    return {
        "n": len(latencies_us),
        "p50_ms": ms(percentile(latencies_us, 50)),
        "p90_ms": ms(percentile(latencies_us, 90)),
        "p99_ms": ms(percentile(latencies_us, 99)),
        "max_ms": ms(max(latencies_us)) if latencies_us else math.nan,
    }


def tally(streams: list[dict], expected_deltas: int) -> dict:
    """Problems seen by the readers: missing deltas, seq gaps, resyncs, streams that did not end well."""
    return {
        "streams": len(streams),
        "missing_deltas": sum(max(0, expected_deltas - len(s["stamps"])) for s in streams),
        "gaps": sum(s["gaps"] for s in streams),
        "resyncs": sum(s["resyncs"] for s in streams),
        "unfinished": sum(not s["finished"] for s in streams),
        "errors": sorted({s["error"] for s in streams if s["error"]}),
    }


def problems(t: dict, *, failed_connects: int = 0, failed_posts: int = 0) -> list[str]:
    """Human-readable problems of a tally; empty when the run was clean."""
    out = []
    for key in ("missing_deltas", "gaps", "resyncs", "unfinished"):
        if t[key]:
            out.append(f"{t[key]} {key.replace('_', ' ')}")
    out += [f"stream error: {e}" for e in t["errors"]]
    if failed_connects:
        out.append(f"{failed_connects} failed connects")
    if failed_posts:
        out.append(f"{failed_posts} failed POSTs")
    return out


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
