"""Line charts as hand-written SVG, for docs/bench/*.svg (no plotting library needed).

``line_chart`` draws axes with ticks, a polyline with markers per series,
optional horizontal reference lines (targets) and a legend under the plot.
Log scales suit the bench: viewers and generations grow by decades, and
latencies and CPU per delta span two or three orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# Colours that stay apart for colour-blind readers (Okabe-Ito), and the baseline's grey.
BLUE, ORANGE, GREEN, PURPLE, RED, GREY = "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#7f7f7f"
DASHED = "6 4"
DOTTED = "2 3"


@dataclass
class Series:
    """One line: ``points`` are (x, y); a y of None or NaN breaks the line there."""

    label: str
    points: list[tuple[float, float | None]]
    color: str = BLUE
    dash: str = ""
    markers: bool = True
    hollow: frozenset = frozenset()  # x values drawn as open circles (e.g. a step that failed)


@dataclass
class Reference:
    """A horizontal line across the plot, such as a target."""

    label: str
    y: float
    color: str = RED
    dash: str = DOTTED


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    references: list[Reference] = field(default_factory=list)
    log_x: bool = True
    log_y: bool = True
    x_ticks: list[float] | None = None  # default: the points' x values on a log axis, round numbers on a linear one
    note: str = ""  # one line under the legend


WIDTH, PLOT_HEIGHT = 720, 360
LEFT, RIGHT, TOP = 78, 24, 44
LEGEND_ROW = 20


def _finite(value) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks between low and high; only the decades when that would be crowded."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for factor in (1, 2, 5):
            value = factor * 10**exponent
            if low <= value * 1.0001 and value <= high * 1.0001:
                ticks.append(value)
    if len(ticks) > 9:
        ticks = [t for t in ticks if math.isclose(10 ** round(math.log10(t)), t)]
    return ticks


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


class _Axis:
    def __init__(self, low: float, high: float, log: bool, start: float, length: float, reverse: bool):
        if log:
            low, high = max(low, 1e-9), max(high, low * 1.0001)
            # Round out to the next 1-2-5 value so the ends carry a tick.
            low = max(v for v in (1, 2, 5, 10) if v <= low / 10 ** math.floor(math.log10(low))) * 10 ** math.floor(
                math.log10(low)
            )
            top = 10 ** math.floor(math.log10(high))
            high = min(v * top for v in (1, 2, 5, 10) if v * top >= high * 0.9999)
        else:
            step = _nice_step(high - min(low, 0) or 1)
            low = math.floor(min(low, 0) / step) * step
            high = math.ceil(high / step) * step
        self.low, self.high, self.log = low, high, log
        self.start, self.length, self.reverse = start, length, reverse

    def __call__(self, value: float) -> float:
        if self.log:
            share = (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        else:
            share = (value - self.low) / ((self.high - self.low) or 1)
        return self.start + (self.length * (1 - share) if self.reverse else self.length * share)

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.low, self.high)
        step = _nice_step(self.high - self.low)
        count = round((self.high - self.low) / step)
        return [self.low + i * step for i in range(count + 1)]


def line_chart(chart: Chart) -> str:
    """The SVG document of ``chart`` (a white background, so it reads in dark themes too)."""
    xs = [x for s in chart.series for x, y in s.points if _finite(y)]
    ys = [y for s in chart.series for _, y in s.points if _finite(y)] + [r.y for r in chart.references]
    if chart.log_y:
        ys = [y for y in ys if y > 0]
    if not xs or not ys:
        xs, ys = xs or [1, 10], ys or [1, 10]
    legend_items = [*chart.series, *chart.references]
    # Three legend entries a row when their labels are short, else two.
    per_row = 3 if max(len(item.label) for item in legend_items) <= 26 else 2
    legend_rows = math.ceil(len(legend_items) / per_row)
    height = TOP + PLOT_HEIGHT + 56 + (legend_rows + bool(chart.note)) * LEGEND_ROW + 8
    plot_width = WIDTH - LEFT - RIGHT
    x = _Axis(min(xs), max(xs), chart.log_x, LEFT, plot_width, reverse=False)
    y = _Axis(min(ys), max(ys), chart.log_y, TOP, PLOT_HEIGHT, reverse=True)
    bottom = TOP + PLOT_HEIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"'
        ' font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{escape(chart.title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2:.1f}" y="24" text-anchor="middle" font-size="15" font-weight="bold"'
        f' fill="#222">{escape(chart.title)}</text>',
    ]
    # Grid and tick labels.
    for value in y.ticks():
        pos = y(value)
        out.append(f'<line x1="{LEFT}" y1="{pos:.1f}" x2="{LEFT + plot_width}" y2="{pos:.1f}" stroke="#e4e4e4"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{pos + 4:.1f}" text-anchor="end" fill="#333">{escape(_label(value))}</text>'
        )
    x_ticks = chart.x_ticks or (sorted(set(xs)) if chart.log_x else x.ticks())
    for value in x_ticks:
        pos = x(value)
        out.append(f'<line x1="{pos:.1f}" y1="{TOP}" x2="{pos:.1f}" y2="{bottom}" stroke="#eeeeee"/>')
        out.append(f'<line x1="{pos:.1f}" y1="{bottom}" x2="{pos:.1f}" y2="{bottom + 5}" stroke="#333"/>')
        out.append(f'<text x="{pos:.1f}" y="{bottom + 19}" text-anchor="middle" fill="#333">{_label(value)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{PLOT_HEIGHT}" fill="none" stroke="#333"/>')
    scale_note = lambda log: " (log scale)" if log else ""  # noqa: E731
    out.append(
        f'<text x="{LEFT + plot_width / 2:.1f}" y="{bottom + 40}" text-anchor="middle" fill="#222">'
        f"{escape(chart.x_label + scale_note(chart.log_x))}</text>"
    )
    middle = TOP + PLOT_HEIGHT / 2
    out.append(
        f'<text x="18" y="{middle:.1f}" text-anchor="middle" fill="#222" transform="rotate(-90 18 {middle:.1f})">'
        f"{escape(chart.y_label + scale_note(chart.log_y))}</text>"
    )
    # References under the data, so a line that crosses a target stays visible.
    for ref in chart.references:
        if chart.log_y and ref.y <= 0:
            continue
        pos = y(ref.y)
        out.append(
            f'<line x1="{LEFT}" y1="{pos:.1f}" x2="{LEFT + plot_width}" y2="{pos:.1f}" stroke="{ref.color}"'
            f' stroke-width="1.5" stroke-dasharray="{ref.dash}"/>'
        )
    for s in chart.series:
        for run in _runs(s.points, chart.log_y):
            coords = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in run)
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
            if s.markers:
                out += [_marker(x(px), y(py), s.color, px in s.hollow) for px, py in run]
    # Legend, under the axis label.
    top = bottom + 58
    column = plot_width / per_row
    for i, item in enumerate(legend_items):
        lx = LEFT + (i % per_row) * column
        ly = top + (i // per_row) * LEGEND_ROW
        dash = f' stroke-dasharray="{item.dash}"' if item.dash else ""
        width = 1.5 if isinstance(item, Reference) else 2
        out.append(
            f'<line x1="{lx:.1f}" y1="{ly:.1f}" x2="{lx + 26:.1f}" y2="{ly:.1f}" stroke="{item.color}"'
            f' stroke-width="{width}"{dash}/>'
        )
        if isinstance(item, Series) and item.markers:
            out.append(f'<circle cx="{lx + 13:.1f}" cy="{ly:.1f}" r="3" fill="{item.color}"/>')
        out.append(f'<text x="{lx + 32:.1f}" y="{ly + 4:.1f}" fill="#222">{escape(item.label)}</text>')
    if chart.note:
        out.append(f'<text x="{LEFT}" y="{top + legend_rows * LEGEND_ROW + 2}" fill="#555">{escape(chart.note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _marker(cx: float, cy: float, color: str, hollow: bool) -> str:
    if hollow:
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="#ffffff" stroke="{color}" stroke-width="2"/>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{color}"/>'


def _runs(points, log_y: bool) -> list[list[tuple[float, float]]]:
    """The series split at missing values (and at values a log axis cannot show)."""
    runs, current = [], []
    for px, py in points:
        if _finite(py) and (py > 0 or not log_y):
            current.append((px, py))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs
