"""The usage charts: what the SVG says (stacks, labels, legend), escaping, and the edge cases of a range."""

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from django.utils import timezone

from chat.charts import PALETTE_SIZE, daily_chart, top_users_chart

SVG = "{http://www.w3.org/2000/svg}"
D1, D2, D3 = date(2025, 3, 10), date(2025, 3, 11), date(2025, 3, 12)


def parse(markup) -> ET.Element:
    """The figure as XML: fails on anything a hostile name could have broken."""
    return ET.fromstring(str(markup))


def svg_of(figure: ET.Element) -> ET.Element:
    return figure.find(f".//{SVG}svg")


def bars(figure: ET.Element) -> list[tuple[str, float, float, str]]:
    """(class, y, height, tooltip) of every bar segment, in drawing order."""
    return [
        (rect.get("class"), float(rect.get("y")), float(rect.get("height")), rect.find(f"{SVG}title").text)
        for rect in svg_of(figure).iter(f"{SVG}rect")
    ]


def legend(figure: ET.Element) -> list[str]:
    return ["".join(item.itertext()) for item in figure.iter("li")]


def texts(figure: ET.Element) -> list[str]:
    return [t.text for t in svg_of(figure).iter(f"{SVG}text") if t.text]


def row(day, model, tokens, cost=None):
    return {"day": day, "model": model, "tokens": tokens, "cost": cost}


def test_daily_chart_stacks_models_per_day_and_sums_them():
    figure = parse(
        daily_chart(
            [row(D1, "gpt-x", 1200), row(D1, "qwen", 300), row(D2, "gpt-x", 800), row(D2, "gpt-x", 100)],
            start=D1,
            end=D3,
        )
    )

    svg = svg_of(figure)
    assert svg.get("role") == "img"
    assert svg.get("aria-label") == "Tokens per day by model, 2025-03-10 to 2025-03-12"
    assert svg.find(f"{SVG}title").text == svg.get("aria-label")
    assert svg.find(f"{SVG}desc").text == (
        "2,400 tokens in total. gpt-x: 2,100; qwen: 300. Busiest day 2025-03-10 with 1,500 tokens."
    )
    # Largest model first, on the axis; the two gpt-x rows of day 2 are one segment.
    segments = bars(figure)
    assert [(cls, tip) for cls, _, _, tip in segments] == [
        ("chart-series-0", "2025-03-10 gpt-x: 1,200 tokens"),
        ("chart-series-1", "2025-03-10 qwen: 300 tokens"),
        ("chart-series-0", "2025-03-11 gpt-x: 900 tokens"),
    ]
    # Stacked: qwen sits on top of gpt-x, and the heights keep the proportions of the values.
    (_, y0, h0, _), (_, y1, h1, _), (_, _, h2, _) = segments
    assert y1 + h1 == pytest.approx(y0, abs=0.01)
    assert h1 / h0 == pytest.approx(300 / 1200, abs=0.001) and h2 / h0 == pytest.approx(900 / 1200, abs=0.001)
    assert legend(figure) == ["gpt-x 2,100", "qwen 300"]
    # Every day of the range has its label, the empty 12th included; the axis counts with separators.
    labels = texts(figure)
    assert ["Mar 10", "Mar 11", "Mar 12"] == [t for t in labels if t.startswith("Mar")]
    assert "1,500" in labels and "Tokens" in labels and "Day" in labels


def test_hostile_model_and_user_names_are_escaped():
    hostile = '<script>alert("x")</script>&"\''
    daily = str(daily_chart([row(D1, hostile, 5)], start=D1, end=D1))
    users = str(top_users_chart([{"user": hostile, "tokens": 5, "cost": None}]))

    for markup in (daily, users):
        assert "<script>" not in markup
        figure = parse(markup)  # well-formed: nothing broke out of its attribute or element
        assert hostile in "".join(figure.itertext())
    assert legend(parse(daily)) == [f"{hostile} 5"]


def test_empty_range_says_so_without_bars():
    figure = parse(daily_chart([], start=D1, end=D3))

    assert bars(figure) == [] and legend(figure) == []
    assert svg_of(figure).get("role") == "img"
    assert texts(figure) == ["No usage in this range."]
    assert texts(parse(top_users_chart([]))) == ["No usage in this range."]
    # Rows outside the range do not count.
    assert bars(parse(daily_chart([row(date(2025, 1, 1), "gpt-x", 9)], start=D1, end=D3))) == []


def test_one_day():
    figure = parse(daily_chart([row(D2, "gpt-x", 7)], start=D2, end=D2))

    assert [tip for *_, tip in bars(figure)] == ["2025-03-11 gpt-x: 7 tokens"]
    assert [t for t in texts(figure) if t.startswith("Mar")] == ["Mar 11"]


def test_many_models_reuse_the_palette_in_order():
    models = [f"model-{n:02}" for n in range(PALETTE_SIZE + 3)]
    # Descending totals, so the legend order is the list's order.
    figure = parse(daily_chart([row(D1, m, 1000 - n) for n, m in enumerate(models)], start=D1, end=D1))

    classes = [cls for cls, *_ in bars(figure)]
    assert classes == [f"chart-series-{n % PALETTE_SIZE}" for n in range(len(models))]
    assert classes[PALETTE_SIZE] == "chart-series-0"
    swatches = [span.get("class") for span in figure.iter("span") if "chart-swatch" in span.get("class")]
    assert swatches == [f"chart-swatch {cls}" for cls in classes]


def test_cost_mode_counts_none_as_unpriced():
    rows = [
        row(D1, "gpt-x", 1000, Decimal("0.0125")),
        row(D1, "local", 5000, None),
        row(D2, "gpt-x", 10, None),
        row(D2, "gpt-x", 2000, Decimal("1234.5")),
    ]
    figure = parse(daily_chart(rows, start=D1, end=D2, measure="cost", currency="USD"))

    assert svg_of(figure).get("aria-label") == "Cost (USD) per day by model, 2025-03-10 to 2025-03-11"
    assert [tip for *_, tip in bars(figure)] == ["2025-03-10 gpt-x: 0.013 USD", "2025-03-11 gpt-x: 1,234.50 USD"]
    assert legend(figure) == ["gpt-x 1,234.51 (partly unpriced)", "local 0.00 (no price)"]
    assert "No price for some usage of gpt-x, local." in svg_of(figure).find(f"{SVG}desc").text
    assert "Cost (USD)" in texts(figure)

    nothing_priced = parse(daily_chart([row(D1, "local", 5000, None)], start=D1, end=D1, measure="cost"))
    assert bars(nothing_priced) == []
    assert texts(nothing_priced) == ["No priced usage in this range."]
    assert legend(nothing_priced) == ["local 0.00 (no price)"]


def test_top_users_largest_first_with_the_rest_counted():
    rows = [{"user": f"user{n}", "tokens": n * 100, "cost": None} for n in range(1, 13)]
    rows.append({"user": None, "tokens": 50, "cost": None})
    figure = parse(top_users_chart(rows, limit=3))

    assert [tip for *_, tip in bars(figure)] == ["user12: 1,200 tokens", "user11: 1,100 tokens", "user10: 1,000 tokens"]
    widths = [float(r.get("width")) for r in svg_of(figure).iter(f"{SVG}rect")]
    assert widths[1] / widths[0] == pytest.approx(1100 / 1200, abs=0.001)  # drawn to 0.01 units
    assert "10 more users not shown." in "".join(figure.itertext())

    cost = parse(
        top_users_chart(
            [{"user": "ann", "tokens": 1, "cost": Decimal("2.5")}, {"user": "bob", "tokens": 9, "cost": None}],
            measure="cost",
            currency="EUR",
        )
    )
    assert [tip for *_, tip in bars(cost)] == ["ann: 2.50 EUR", "bob: no price"]


def test_unknown_measure_is_refused():
    with pytest.raises(ValueError, match="measure"):
        daily_chart([], start=D1, end=D1, measure="words")


def test_long_ranges_thin_out_the_date_labels():
    figure = parse(daily_chart([row(D1, "gpt-x", 1)], start=date(2025, 1, 1), end=date(2025, 12, 31)))

    dates = [t for t in texts(figure) if re.fullmatch(r"[A-Z][a-z]{2} \d+", t)]
    assert 5 <= len(dates) <= 12


# --- on the usage page ----------------------------------------------------------------

USAGE = "/admin/chat/message/usage/"


def ledger_row(name, model, tokens, cost, *, day):
    from chat.models import UsageEntry

    at = timezone.make_aware(datetime.combine(day, time(12)))
    return UsageEntry.objects.create(
        message_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        requested_by_name=name,
        model=model,
        status="complete",
        total_tokens=tokens,
        cost=cost,
        currency="USD" if cost is not None else "",
        created_at=at,
    )


@pytest.mark.django_db
def test_the_usage_page_draws_both_charts_from_the_ledger(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123", email=""))
    ledger_row("ann", "gpt-x", 1500, Decimal("0.50"), day=D1)
    ledger_row("bob", "<i>local</i>", 700, None, day=D2)

    response = client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-12"})

    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/static/chat/admin-charts.css"' in html
    daily, users = parse(response.context["daily_chart"]), parse(response.context["top_users_chart"])
    assert str(response.context["daily_chart"]) in html and str(response.context["top_users_chart"]) in html
    assert [tip for *_, tip in bars(daily)] == ["2025-03-10 gpt-x: 1,500 tokens", "2025-03-11 <i>local</i>: 700 tokens"]
    assert "<i>local</i>" not in html and "&lt;i&gt;local&lt;/i&gt;" in html
    assert [tip for *_, tip in bars(users)] == ["ann: 1,500 tokens", "bob: 700 tokens"]
    assert "measure=cost" in html

    cost = client.get(USAGE, {"start": "2025-03-10", "end": "2025-03-12", "measure": "cost"})
    assert cost.status_code == 200
    assert [tip for *_, tip in bars(parse(cost.context["daily_chart"]))] == ["2025-03-10 gpt-x: 0.50 USD"]
    assert legend(parse(cost.context["daily_chart"])) == ["gpt-x 0.50", "<i>local</i> 0.00 (no price)"]

    refused = client.get(USAGE, {"measure": "words"})
    assert refused.status_code == 400
    assert "Charts show: Select a valid choice. words is not one of the available choices." in (
        refused.content.decode()
    )
