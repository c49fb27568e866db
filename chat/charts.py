"""The usage page's charts: plain rows in, inline SVG (and an HTML legend) out.

Pure functions, no database and no JavaScript. The markup carries classes
only, no colours: ``static/chat/admin-charts.css`` paints them, so the charts
follow the admin's light and dark themes and pass a CSP of ``style-src
'self'``. Every name that reaches the markup (models, users) is escaped here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from html import escape

from django.utils.safestring import SafeString, mark_safe

MEASURES = ("tokens", "cost")
# Series colours are CSS classes chart-series-0..9; more models reuse them in order.
PALETTE_SIZE = 10
TOP_USERS = 10
UNKNOWN_USER = "(unknown user)"

# The drawing is laid out in these viewBox units; the CSS scales it to the page.
DAILY_WIDTH, DAILY_HEIGHT = 600, 280
USERS_WIDTH, USERS_LABEL_WIDTH, USERS_NAME_CHARS = 420, 130, 18
ROW_HEIGHT = 26
FONT_WIDTH = 7.2  # average advance of a 12-unit sans-serif character, to size the margins


def daily_chart(
    rows: list[dict], *, start: date, end: date, measure: str = "tokens", currency: str = "", id: str = "usage-daily"
) -> SafeString:
    """A bar per day from ``start`` to ``end`` (inclusive), stacked by model, with its legend.

    ``rows``: ``{"day": date, "model": str, "tokens": int, "cost": Decimal|None}``;
    rows outside the range are ignored, a ``None`` cost counts as nothing and
    the legend says which models had unpriced usage. Requires ``start <= end``.
    """
    _check_measure(measure)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    stacks: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    totals: dict[str, Decimal] = defaultdict(Decimal)
    unpriced: set[str] = set()
    for row in rows:
        if not start <= row["day"] <= end:
            continue
        model = row["model"] or "(no model)"
        value = row[measure]
        if value is None:
            unpriced.add(model)
            value = 0
        stacks[row["day"]][model] += Decimal(value)
        totals[model] += Decimal(value)
    # Largest first: the legend reads top-down and the biggest series sits on the axis.
    models = sorted(totals, key=lambda m: (-totals[m], m))
    series = {model: n % PALETTE_SIZE for n, model in enumerate(models)}
    unit = _unit(measure, currency)
    title = f"{_capital(unit)} per day by model, {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    grand = sum(totals.values(), Decimal(0))
    if not grand:
        desc = _nothing(measure, unpriced)
        legend = _legend(models, series, totals, unpriced, measure)
        return _figure(id, _empty_svg(id, "chart-daily", title, desc, DAILY_WIDTH), legend)

    day_totals = {day: sum(stacks[day].values(), Decimal(0)) for day in days}
    busiest = max(days, key=lambda day: (day_totals[day], -day.toordinal()))
    desc = (
        f"{_amount(grand, measure, currency)} in total. "
        + "; ".join(f"{m}: {_fmt(totals[m], measure)}" for m in models)
        + f". Busiest day {busiest:%Y-%m-%d} with {_amount(day_totals[busiest], measure, currency)}."
        + (f" No price for some usage of {', '.join(sorted(unpriced))}." if unpriced else "")
    )
    ticks = _ticks(max(day_totals.values()))
    labels = _tick_labels(ticks, measure)
    left = 16 + max(len(label) for label in labels) * FONT_WIDTH + 8
    top, bottom, right = 12, 52, 12
    plot_w, plot_h = DAILY_WIDTH - left - right, DAILY_HEIGHT - top - bottom
    base = top + plot_h

    def y(value) -> float:
        return base - float(value) / float(ticks[-1]) * plot_h

    parts = [_y_grid(ticks, labels, y, left, DAILY_WIDTH - right)]
    slot = plot_w / len(days)
    gap = min(slot * 0.2, 6) if slot > 3 else 0
    bars = []
    for n, day in enumerate(days):
        x = left + n * slot + gap / 2
        height_so_far = Decimal(0)
        for model in models:
            value = stacks[day].get(model)
            if not value:
                continue
            y_top, y_bottom = y(height_so_far + value), y(height_so_far)
            height_so_far += value
            bars.append(
                f'<rect class="chart-series-{series[model]}" x="{x:.2f}" y="{y_top:.2f}" width="{slot - gap:.2f}" '
                f'height="{y_bottom - y_top:.2f}"><title>{day:%Y-%m-%d} {escape(model)}: '
                f"{escape(_amount(value, measure, currency))}</title></rect>"
            )
    parts.append(f'<g class="chart-bars">{"".join(bars)}</g>')
    # At most one date label per 64 units, so they never overlap.
    every = max(1, math.ceil(64 / slot))
    x_labels = [
        f'<text class="chart-label" x="{left + (n + 0.5) * slot:.2f}" y="{base + 18}" text-anchor="middle">'
        f"{day:%b} {day.day}</text>"
        for n, day in enumerate(days)
        if n % every == 0
    ]
    parts.append(f'<line class="chart-axis" x1="{left}" y1="{base}" x2="{DAILY_WIDTH - right}" y2="{base}"/>')
    parts.append("".join(x_labels))
    parts.append(
        f'<text class="chart-axis-title" x="{left + plot_w / 2:.2f}" y="{DAILY_HEIGHT - 8}" text-anchor="middle">'
        "Day</text>"
        f'<text class="chart-axis-title" transform="rotate(-90)" x="{-(top + plot_h / 2):.2f}" y="14" '
        f'text-anchor="middle">{escape(_capital(unit))}</text>'
    )
    svg = _svg(id, "chart-daily", title, desc, DAILY_WIDTH, DAILY_HEIGHT, "".join(parts))
    return _figure(id, svg, _legend(models, series, totals, unpriced, measure))


def top_users_chart(
    rows: list[dict], *, measure: str = "tokens", currency: str = "", limit: int = TOP_USERS, id: str = "usage-users"
) -> SafeString:
    """A horizontal bar per user for the ``limit`` users who used most, largest first.

    ``rows``: ``{"user": str|None, "tokens": int, "cost": Decimal|None}``, one
    per user (rows of the same user are added up); a ``None`` cost is drawn as
    nothing and labelled "no price".
    """
    _check_measure(measure)
    totals: dict[str, Decimal] = defaultdict(Decimal)
    unpriced: set[str] = set()
    for row in rows:
        user = row["user"] or UNKNOWN_USER
        if row[measure] is None:
            unpriced.add(user)
        totals[user] += Decimal(row[measure] or 0)
    users = sorted(totals, key=lambda u: (-totals[u], u))
    shown, hidden = users[:limit], users[limit:]
    unit = _unit(measure, currency)
    title = f"Top users by {unit}"
    if not any(totals[u] for u in shown):
        desc = _nothing(measure, unpriced)
        return _figure(id, _empty_svg(id, "chart-users", title, desc, USERS_WIDTH), "")

    desc = "; ".join(f"{u}: {_value_label(u, totals, unpriced, measure)}" for u in shown) + "."
    if hidden:
        desc += f" {len(hidden)} more {'user' if len(hidden) == 1 else 'users'} not shown."
    ticks = _ticks(totals[shown[0]])
    labels = _tick_labels(ticks, measure)
    left, right, top = USERS_LABEL_WIDTH, 24 + max(len(label) for label in labels) * FONT_WIDTH / 2, 8
    value_room = 12 + max(len(_value_label(u, totals, unpriced, measure)) for u in shown) * FONT_WIDTH
    plot_w = USERS_WIDTH - left - right - value_room
    base = top + ROW_HEIGHT * len(shown)
    height = base + 48

    def x(value) -> float:
        return left + float(value) / float(ticks[-1]) * plot_w

    grid = []
    # Every other tick is labelled when the labels would touch.
    every = 2 if max(map(len, labels)) * FONT_WIDTH + 10 > x(ticks[1]) - x(ticks[0]) else 1
    for n, (tick, label) in enumerate(zip(ticks, labels, strict=True)):
        grid.append(f'<line class="chart-grid" x1="{x(tick):.2f}" y1="{top}" x2="{x(tick):.2f}" y2="{base}"/>')
        if n % every == 0:
            grid.append(
                f'<text class="chart-label" x="{x(tick):.2f}" y="{base + 16}" text-anchor="middle">{label}</text>'
            )
    bars = []
    for n, user in enumerate(shown):
        y = top + n * ROW_HEIGHT
        name = user if len(user) <= USERS_NAME_CHARS else user[: USERS_NAME_CHARS - 1] + "…"
        value_label = _value_label(user, totals, unpriced, measure)
        amount = value_label if value_label == "no price" else _amount(totals[user], measure, currency)
        bars.append(
            f'<text class="chart-label" x="{left - 8}" y="{y + ROW_HEIGHT / 2 + 4:.2f}" text-anchor="end">'
            f"<title>{escape(user)}</title>{escape(name)}</text>"
            f'<rect class="chart-series-0" x="{left}" y="{y + 4}" width="{x(totals[user]) - left:.2f}" '
            f'height="{ROW_HEIGHT - 8}"><title>{escape(user)}: {escape(amount)}</title></rect>'
            f'<text class="chart-value" x="{x(totals[user]) + 6:.2f}" y="{y + ROW_HEIGHT / 2 + 4:.2f}">'
            f"{value_label}</text>"
        )
    body = (
        "".join(grid)
        + f'<g class="chart-bars">{"".join(bars)}</g>'
        + f'<line class="chart-axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>'
        + f'<text class="chart-axis-title" x="{left + plot_w / 2:.2f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(_capital(unit))}</text>"
    )
    svg = _svg(id, "chart-users", title, desc, USERS_WIDTH, height, body)
    note = (
        f'<p class="chart-note">{len(hidden)} more {"user" if len(hidden) == 1 else "users"} not shown.</p>'
        if hidden
        else ""
    )
    return _figure(id, svg, note)


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, not {measure!r}")


def _unit(measure: str, currency: str) -> str:
    """The axis's name: "tokens", or "cost" with its currency."""
    if measure == "tokens":
        return "tokens"
    return f"cost ({currency})" if currency else "cost"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _amount(value, measure: str, currency: str) -> str:
    """A number as a sentence says it: "1,234 tokens", "0.25 USD"."""
    suffix = "tokens" if measure == "tokens" else currency
    return f"{_fmt(value, measure)} {suffix}".rstrip()


def _fmt(value, measure: str) -> str:
    """Thousands separators; cost with 2 decimals, or 2 significant digits for small amounts (up to 6 places)."""
    value = Decimal(value)
    if measure == "tokens":
        return f"{int(value):,}"
    places = max(2, min(6, 1 - math.floor(math.log10(abs(value))))) if value else 2
    # Half up, as money is rounded on an invoice (format() alone rounds half to even).
    return f"{value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP):,.{places}f}"


def _value_label(user: str, totals, unpriced: set[str], measure: str) -> str:
    if user in unpriced and not totals[user]:
        return "no price"
    return _fmt(totals[user], measure)


def _nothing(measure: str, unpriced: set[str]) -> str:
    if measure == "cost" and unpriced:
        return "No priced usage in this range."
    return "No usage in this range."


def _ticks(top: Decimal, count: int = 5) -> list[Decimal]:
    """Round axis values from 0 to at least ``top``: steps of 1, 2 or 5 times a power of ten."""
    top = Decimal(top)
    raw = top / count
    power = Decimal(10) ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [Decimal(0)]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def _tick_labels(ticks: list[Decimal], measure: str) -> list[str]:
    """Axis labels that all show as many decimals as the step needs (at least 2 for money)."""
    if measure == "tokens":
        return [f"{int(t):,}" for t in ticks]
    places = max(2, -ticks[1].normalize().as_tuple().exponent)
    return [f"{t:,.{places}f}" for t in ticks]


def _y_grid(ticks, labels, y, left: float, right: float) -> str:
    return "".join(
        f'<line class="chart-grid" x1="{left}" y1="{y(tick):.2f}" x2="{right}" y2="{y(tick):.2f}"/>'
        f'<text class="chart-label" x="{left - 6}" y="{y(tick) + 4:.2f}" text-anchor="end">{label}</text>'
        for tick, label in zip(ticks, labels, strict=True)
    )


def _svg(id: str, kind: str, title: str, desc: str, width: float, height: float, body: str) -> str:
    # role="img" with a label makes one image of the drawing for assistive technology; the <desc>
    # holds the numbers a sighted reader gets from the bars.
    return (
        f'<svg class="usage-chart-svg {kind}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{escape(title)}" aria-describedby="{escape(id)}-desc" viewBox="0 0 {width} {height:.0f}" '
        f'width="{width}" height="{height:.0f}">'
        f'<title>{escape(title)}</title><desc id="{escape(id)}-desc">{escape(desc)}</desc>{body}</svg>'
    )


def _empty_svg(id: str, kind: str, title: str, desc: str, width: float, height: float = 100) -> str:
    text = f'<text class="chart-empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">{escape(desc)}</text>'
    return _svg(id, kind, title, desc, width, height, text)


def _legend(models: list[str], series: dict[str, int], totals, unpriced: set[str], measure: str) -> str:
    if not models:
        return ""
    items = []
    for model in models:
        note = ""
        if model in unpriced:
            note = " (no price)" if not totals[model] else " (partly unpriced)"
        items.append(
            f'<li><span class="chart-swatch chart-series-{series[model]}" aria-hidden="true"></span>'
            f'{escape(model)} <span class="chart-legend-value">{_fmt(totals[model], measure)}{note}</span></li>'
        )
    return f'<ul class="chart-legend" aria-label="Legend">{"".join(items)}</ul>'


def _figure(id: str, svg: str, after: str) -> SafeString:
    # Every interpolated name above went through escape(); numbers and dates are formatted here.
    return mark_safe(
        f'<figure class="usage-chart" id="{escape(id)}"><div class="chart-scroll">{svg}</div>{after}</figure>'
    )
