"""The table on the terminal, the saved results, and docs/benchmarks.md.

Each scenario's last result is kept in bench/results/<name>.json (ignored
by git), so a run of some scenarios updates their sections of the document
and leaves the others as they were, each section saying when it ran.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .stats import fmt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
QUICK = RESULTS / "quick"  # a --quick run's results and charts, never in the document
DOC = ROOT / "docs" / "benchmarks.md"
PLOTS = ROOT / "docs" / "bench"
BEGIN = "<!-- results: written by `python -m bench`; edit outside these markers -->"
END = "<!-- end of results -->"


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        redis = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "software": ", ".join(
            f"{name} {_version(name)}"
            for name in ("Django", "daphne", "Twisted", "channels", "channels-redis", "redis", "uvicorn", "httptools")
        )
        + f", redis-server {redis.removeprefix('v=')}",
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def save(name: str, result: dict, directory: Path = RESULTS) -> None:
    """Write ``result`` to ``directory``/<name>.json (bench/results/, or its quick/ for a --quick run)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


def load_all(names: list[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _value(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return row.get(f"{key}_label", "")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    digits = 0 if row["unit"] == "writes" else 1
    return fmt(value, digits)


def table_lines(rows: list[dict], markdown: bool) -> list[str]:
    header = ["measure", "unit", "app", "baseline", "added", "target", "verdict"]
    body = []
    for row in rows:
        note = f" ({'; '.join(row['problems'])})" if row.get("problems") else ""
        baseline = _value(row, "baseline")
        if row.get("baseline_label") and row.get("baseline") is not None:
            baseline += f" ({row['baseline_label']})"
        body.append(
            [
                row["measure"],
                row["unit"],
                _value(row, "app"),
                baseline,
                _value(row, "added"),
                row["target"],
                (row["verdict"] + note).strip(),
            ]
        )
    if markdown:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(cells) + " |" for cells in body
        ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]


def print_table(results: dict[str, dict]) -> None:
    rows = [row for result in results.values() for row in result["rows"]]
    print()
    print("\n".join(table_lines(rows, markdown=False)))


def write_plots(name: str, result: dict, modules: dict, directory: Path = PLOTS) -> list[tuple[Path, str]]:
    """Write the scenario's charts (its module's ``plots_of``) into ``directory``; (path, alt text) of each."""
    plots_of = getattr(modules[name], "plots_of", None)
    if plots_of is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, alt, svg in plots_of(result):
        (directory / filename).write_text(svg)
        written.append((directory / filename, alt))
    return written


def _section(name: str, result: dict, modules: dict) -> list[str]:
    doc = (modules[name].__doc__ or "").strip().split("\n", 1)
    out = [f"### {doc[0]}", ""]
    if len(doc) > 1:
        out += [doc[1].strip(), ""]
    out += [f"Ran {result['date']} with `{result['command']}`.", ""]
    for path, alt in write_plots(name, result, modules):
        out += [f"![{alt}]({path.relative_to(DOC.parent)})", ""]
    out += table_lines(result["rows"], markdown=True)
    out += [""] + [f"- {line}" for line in result.get("notes", [])]
    return [*out, ""] if result.get("notes") else out


def _niceness(results: dict[str, dict]) -> str:
    """A sentence on the priority the scenarios shown ran at, when any of them raised it."""
    by_level: dict[int, list[str]] = {}
    for name, result in results.items():
        by_level.setdefault(result.get("niceness", 0), []).append(name)
    if set(by_level) == {0}:
        return ""
    parts = [f"{level} ({', '.join(names)})" for level, names in sorted(by_level.items())]
    return (
        f" The bench and everything it started ran at niceness {'; '.join(parts)}; 0 is the default, below it"
        " ahead of other work on the machine, which each run still records."
    )


def write_doc(results: dict[str, dict], modules: dict) -> None:
    m = machine()
    lines = [
        BEGIN,
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']};"
        f" {m['software']}. Everything on loopback, on the same {m['cores']} cores: the daphne processes, Redis,"
        " the fake provider and the load." + _niceness(results),
        "",
        "Summary (the `added` column is app minus baseline):",
        "",
    ]
    summary = [row for result in results.values() for row in result["rows"] if row.get("summary")]
    lines += table_lines(summary, markdown=True)
    lines.append("")
    for name, result in results.items():
        lines += _section(name, result, modules)
    lines.append(END)
    generated = "\n".join(lines)
    if DOC.exists() and BEGIN in DOC.read_text() and END in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(head + generated + tail)
    else:
        DOC.write_text(TEMPLATE.replace("{results}", generated))


TEMPLATE = """# Benchmarks

`make bench` (or `.venv/bin/python -m bench`) measures the streaming path on
this machine and rewrites the results below, with the charts in
`docs/bench/*.svg`. `python -m bench fanout ttft` runs some of the
scenarios (`fanout ttft capacity writes memory slowreader search uvicorn connections presence`);
`--quick` runs smaller versions (a smoke test, not figures to quote).

Every figure has a baseline measured in the same run with the same client
code: the same load read straight from the fake provider (tests/fakeprovider.py),
so the `added` column is what the app costs on top of the provider and the
load generator. Latencies are from the provider writing a chunk (its
`time.time_ns()` stamp inside the content) to a reader's `data_received`
holding it, on one clock.

{results}

## Findings

(Written by hand after a run: what limits each figure, with evidence.)
"""
